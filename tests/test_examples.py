"""Every example in examples/ runs as its header says: an example that no longer works
is a failing test. A new example needs a runner here (the last test says so)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RUNNERS = {
    # example -> the command its header gives, shortened where a test must be quick
    "sweep.toml": ["sweep", "{path}", "--json", "--set", "run.max_epochs=2"],
}


@pytest.mark.slow
def test_the_sweep_example_runs_every_trial(tmp_path: Path) -> None:
    args = [a.format(path=EXAMPLES / "sweep.toml") for a in RUNNERS["sweep.toml"]]
    done = subprocess.run([sys.executable, "-m", "trainlab.cli", *args, "--set",
                           f"run.dir={tmp_path}"], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    ended = [line for line in lines if line.get("state") in ("complete", "pruned", "failed")]
    assert len(ended) == 8  # the example's trials
    assert {line["state"] for line in ended} <= {"complete", "pruned"}


def test_every_example_has_a_runner() -> None:
    assert sorted(p.name for p in EXAMPLES.iterdir()) == sorted(RUNNERS)
