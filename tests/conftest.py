"""Shared helpers: tiny configs and a way to run the loop without threads."""

from __future__ import annotations

import atexit
import queue
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from trainlab.core.config import Config

RUNS_ROOT = Path(tempfile.mkdtemp(prefix="trainlab-test-runs-"))
"""run.dir of the tests' runs: never the checkout's ./runs."""
atexit.register(shutil.rmtree, RUNS_ROOT, ignore_errors=True)


def tiny_config(**changes: Any) -> Config:
    """A run that trains in well under a second: blobs, one small hidden layer.

    ``changes`` maps dotted keys written with '__' for '.' (optim__lr=0.1).
    """
    base = {
        "data.dataset": "blobs",
        "data.samples": 200,
        "data.batch_size": 32,
        "model.depth": 1,
        "model.width": 16,
        "run.max_steps": 20,
        "run.max_epochs": 0,
        "run.threads": 1,
        "run.dir": str(RUNS_ROOT),
        "run.checkpoint_min_seconds": 0.0,  # a periodic checkpoint whenever one is due
        # Snapshots exactly as stats.every says: next to a tiny step a snapshot is dear,
        # and the default budget (1% of training time) would leave one or two.
        "stats.budget": 0.0,
    }
    base.update({key.replace("__", "."): value for key, value in changes.items()})
    return Config().with_values(base)


def run_loop(config: Config, commands: list[Any] | None = None) -> list[Any]:
    """Run the loop in this thread with a pre-filled command queue; return every event."""
    from trainlab.engine.loop import run

    q: queue.Queue[Any] = queue.Queue()
    for command in commands or []:
        q.put(command)
    events: list[Any] = []
    run(config, q, events.append)
    return events


def of_type(events: list[Any], name: str) -> list[Any]:
    """The events of one class, in order."""
    return [e for e in events if type(e).__name__ == name]


def losses_by_step(events: list[Any]) -> dict[int, float]:
    """Every per-step training loss reported in MetricsBatch events."""
    out: dict[int, float] = {}
    for batch in of_type(events, "MetricsBatch"):
        out.update(zip(batch.steps, batch.losses, strict=True))
    return out


@pytest.fixture(autouse=True)
def _in_a_scratch_directory(tmp_path_factory: pytest.TempPathFactory,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in an empty directory of its own: a run there (the CLI's default
    run.dir is ./runs) never lands in the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    """Tests run single-threaded: faster for tiny models, and deterministic."""
    import torch

    torch.set_num_threads(1)
