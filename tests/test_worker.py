"""The child-process engine: the protocol over stdin/stdout, and nothing else on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine import protocol
from tests.conftest import tiny_config


def run_worker(lines: list[str], cwd: Path | None = None) -> tuple[list[Any], str, int]:
    """Feed ``lines`` to ``python -m engine.worker``; its events, stderr and exit code."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "engine.worker"], input="\n".join(lines) + "\n",
        capture_output=True, text=True, timeout=120, cwd=cwd or root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    events = [protocol.from_json(line) for line in proc.stdout.splitlines()]
    return events, proc.stderr, proc.returncode


def config_line(**changes: Any) -> str:
    return json.dumps(protocol.encode(tiny_config(**changes).to_dict()))


def test_runs_the_config_and_acknowledges_commands() -> None:
    events, _, code = run_worker([
        config_line(run__max_steps=1000),
        protocol.to_json(protocol.Pause()),
        protocol.to_json(protocol.Step(3)),
        protocol.to_json(protocol.SetHyper("optim.lr", 0.5)),
        protocol.to_json(protocol.Stop()),
    ])
    assert code == 0
    names = [type(e).__name__ for e in events]
    assert names[0] == "RunStarted" and names[-1] == "RunFinished"
    changed = next(e for e in events if isinstance(e, protocol.HyperChanged))
    assert (changed.key, changed.new) == ("optim.lr", 0.5)
    assert events[-1].reason == "stopped"


def test_end_of_input_stops_the_run_cooperatively() -> None:
    # No Stop: the app went away. The run still ends with its final event.
    events, _, code = run_worker([config_line(run__max_steps=10_000_000)])
    assert code == 0
    assert isinstance(events[-1], protocol.RunFinished) and events[-1].reason == "stopped"
    assert events[-1].final.step < 10_000_000


def test_garbage_and_events_on_stdin_are_refused_without_harm() -> None:
    events, _, code = run_worker([
        config_line(run__max_steps=1000),
        "{not json",
        protocol.to_json(protocol.StateChanged("running", 0)),
        protocol.to_json(protocol.Stop()),
    ])
    rejected = [e for e in events if isinstance(e, protocol.CommandRejected)]
    assert [r.command_type for r in rejected] == ["unknown", "StateChanged"]
    assert "{not json" in rejected[0].reason
    assert code == 0 and events[-1].reason == "stopped"


def test_a_bad_config_line_ends_with_a_config_failure() -> None:
    events, _, code = run_worker(['{"optim": {"lr": -1}}'])
    failure = next(e for e in events if isinstance(e, protocol.EngineFailed))
    assert failure.kind == "config" and "optim.lr" in failure.message
    assert events[-1].reason == "failed" and code == 0


def test_prints_from_user_code_go_to_stderr_not_the_event_stream(tmp_path: Path) -> None:
    (tmp_path / "chatty.py").write_text(
        "import torch\n"
        "def build(input_shape, num_outputs):\n"
        "    print('hello from the model')\n"
        "    return torch.nn.Linear(input_shape[0], num_outputs)\n")
    events, stderr, code = run_worker(
        [config_line(model__arch="custom", model__factory="chatty:build"),
         protocol.to_json(protocol.Stop())], cwd=tmp_path)
    assert code == 0 and isinstance(events[0], protocol.RunStarted)  # every line parsed
    assert "hello from the model" in stderr
