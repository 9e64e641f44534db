"""``trainlab sweep`` end to end: tiny trials trained by real engines (each a process),
pruned, resumed after an interrupt, and two sweep processes sharing one SQLite study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import optuna
import pytest

from trainlab.cli.commands import main
from trainlab.core import catalog, rundir
from trainlab.core import config as config_mod
from trainlab.core import sweep as sweep_mod

pytestmark = pytest.mark.slow

TINY = """
    [data]
    dataset = "blobs"
    samples = 200
    [model]
    depth = 1
    width = 8
    [run]
    dir = "{root}"
    max_epochs = 0
    max_steps = {steps}
    threads = 1
    checkpoint_min_seconds = 0.0
    {extra}
    [sweep]
    name = "{name}"
    trials = {trials}
    prune_startup = 1
    seed = 1
    [sweep.space]
    "optim.lr" = {{ low = 1e-4, high = 1e-1, log = true }}
    "optim.name" = ["adam", "sgd"]
"""


def sweep_file(tmp_path: Path, *, name: str = "tiny", trials: int = 4, steps: int = 40,
               extra: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(TINY.format(root=tmp_path / "runs", name=name,
                                                trials=trials, steps=steps, extra=extra)))
    return path


def study_of(path: Path) -> optuna.Study:
    spec = sweep_mod.load(path)
    return optuna.load_study(study_name=spec.name, storage=spec.storage_url)


def test_a_sweep_trains_its_trials_as_runs_and_prunes_the_poor_ones(tmp_path, capsys):
    path = sweep_file(tmp_path)
    assert main(["sweep", str(path), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(line["sweep"] == "tiny" for line in lines)
    started = [line for line in lines if line.get("state") == "running"]
    ended = [line for line in lines if "trial" in line and line.get("state") != "running"]
    assert [line["trial"] for line in started] == [0, 1, 2, 3]
    assert sorted(line["trial"] for line in ended) == [0, 1, 2, 3]
    totals = lines[-1]["totals"]
    assert totals["by_state"]["complete"] >= 1 and totals["by_state"].get("pruned", 0) >= 1
    assert totals["steps"] < totals["planned"] == 4 * 40

    # Each trial is a normal run: listed, labelled, its pruning on its record.
    runs = {s.id: s for s in catalog.list_runs(tmp_path / "runs")}
    assert len(runs) == 4
    for line in ended:
        summary = runs[line["run_id"]]
        assert summary.label == f"sweep tiny #{line['trial']}"
        if line["state"] == "pruned":
            assert summary.status == "stopped" and "pruned by sweep tiny" in summary.reason
            assert summary.step == line["steps"] < 40
        else:
            assert summary.status == "finished" and summary.step == 40

    # What optuna-dashboard reads: the study in its storage, with every trial's values.
    study = study_of(path)
    by_number = {t.number: t for t in study.trials}
    for line in ended:
        trial = by_number[line["trial"]]
        assert trial.state.name == line["state"].upper()
        assert trial.params == line["params"]
        assert trial.value == pytest.approx(line["value"])
        assert trial.intermediate_values  # reported at every evaluation
    best = lines[-1]["best"]
    assert study.best_trial.number == best["number"]

    # The best config, to run again: the base with the best trial's values.
    config = config_mod.load(lines[-1]["best_config"])
    assert config.optim.lr == pytest.approx(study.best_params["optim.lr"])
    assert config.optim.name == study.best_params["optim.name"]
    assert config.data.dataset == "blobs"

    assert main(["sweep", str(path), "--show"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith("sweep tiny: 4 trials") and shown[1].split()[0] == "trial"
    assert main(["sweep", str(path), "--best", "-"]) == 0
    printed = config_mod.from_dict(tomllib.loads(capsys.readouterr().out))
    assert printed.optim.lr == config.optim.lr

    # The same command again: the study holds its trials; nothing more trains.
    assert main(["sweep", str(path), "--headless"]) == 0
    assert "goes on: 4 of them there already" in capsys.readouterr().out
    assert len(catalog.list_runs(tmp_path / "runs")) == 4


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainlab.cli", *args]


def _wait_for(predicate, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_an_interrupted_sweep_resumes_its_trials_from_their_checkpoints(tmp_path, capsys):
    path = sweep_file(tmp_path, name="long", trials=2, steps=3000,
                      extra="eval_every = 500")
    proc = subprocess.Popen(_cli("sweep", str(path), "--json"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)

    def training() -> bool:
        try:
            trials = study_of(path).trials
        except Exception:
            return False
        return bool(trials) and trials[0].user_attrs.get("last_step", 0) >= 500

    _wait_for(training)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume from their checkpoints" in err
    first = study_of(path).trials[0]
    assert first.state.name == "RUNNING"  # left for the next sweep to resume
    run_dir = Path(first.user_attrs["run_dir"])
    summary = catalog.summarize(run_dir)
    assert summary.status == "stopped" and summary.resumable
    stopped_at = summary.step
    assert 500 <= stopped_at < 3000

    assert main(["sweep", str(path), "--headless"]) == 0
    out = capsys.readouterr().out
    assert "trial 0 resumes from its checkpoint" in out
    study = study_of(path)
    assert study.trials[0].state.name == "COMPLETE"
    assert study.trials[1].state.name in ("COMPLETE", "PRUNED")
    assert study.trials[0].params != study.trials[1].params  # a resumed seed draws anew
    resumed = study.trials[0]
    assert resumed.user_attrs["steps"] == 3000
    # Reported through both engines: up to the stop, then on from the checkpoint.
    reported = sorted(resumed.intermediate_values)
    assert reported[0] == 500 and reported[-1] == 3000 and stopped_at in reported
    assert catalog.summarize(run_dir).status == "finished"
    assert len(catalog.list_runs(tmp_path / "runs")) == 2  # the same run went on


def test_two_sweep_processes_share_one_study(tmp_path):
    path = sweep_file(tmp_path, name="shared", trials=4)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(_cli("sweep", str(path), "--json"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    study = study_of(path)
    counted = [t for t in study.trials if "excluded" not in t.user_attrs]
    assert len(counted) == 4
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in counted)
    assert len({t.user_attrs["driver_pid"] for t in counted}) == 2  # both worked on it
    # The seeded sampler of the process that did not create the study was reseeded: it
    # did not draw the other's values again.
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 4
    assert len(catalog.list_runs(tmp_path / "runs")) == 4
    assert rundir.is_run_dir(Path(counted[0].user_attrs["run_dir"]))
