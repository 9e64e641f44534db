"""The trainlab command: exit codes, messages, the JSON stream, config output."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from trainlab.cli.commands import main
from trainlab.cli.headless import ProgressPrinter
from trainlab.core import protocol
from trainlab.core.config import Config, apply_overrides, format_setting, from_dict, parse_value

TINY = ["--set", "data.dataset=blobs", "--set", "data.samples=200", "--set", "model.depth=1",
        "--set", "model.width=8", "--set", "run.max_epochs=0", "--set", "run.max_steps=30",
        "--set", "run.threads=1"]


def test_config_defaults_is_complete_and_loads_back(capsys):
    assert main(["config", "--defaults"]) == 0
    text = capsys.readouterr().out
    assert from_dict(tomllib.loads(text)) == Config()
    assert "# Base learning rate" in text and "hot" in text and "cold" in text


def test_config_with_overrides_prints_the_effective_config(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("[model]\ndepth = 6\n")
    assert main(["config", str(path), "--set", "optim.lr=0.3"]) == 0
    loaded = from_dict(tomllib.loads(capsys.readouterr().out))
    assert loaded.model.depth == 6 and loaded.optim.lr == 0.3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--headless", "--set", "optim.lr=abc"], "optim.lr = 'abc'"),
        (["run", "--headless", "--set", "optim.lrr=0.1"], "did you mean 'optim.lr'"),
        (["run", "--headless", "--set", "model.activation=rleu"], "did you mean 'relu'"),
        (["run", "missing.toml", "--headless"], "config file not found: missing.toml"),
        (["run", "--headless", "--set", "data.dataset=nope.csv"], "file not found"),
        (["config", "--set", "optim.lr=nan"], "optim.lr = nan"),
        (["run"], "add --headless"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_headless_run_prints_progress_and_exits_0(capsys):
    assert main(["run", "--headless", *TINY]) == 0
    out = capsys.readouterr().out
    assert "data: blobs" in out and "completed: step 30" in out and "val_acc" in out


def test_json_stream_is_one_event_per_line(capsys):
    assert main(["run", "--headless", "--json", *TINY]) == 0
    lines = capsys.readouterr().out.splitlines()
    events = [protocol.from_json(line) for line in lines]
    assert all(json.loads(line)["event"] == type(e).__name__ for line, e in zip(
        lines, events, strict=True))
    assert type(events[0]).__name__ == "RunStarted"
    final = json.loads(lines[-1])
    assert final["event"] == "RunFinished" and final["reason"] == "completed"
    assert {"step", "train_loss", "val_loss", "val_accuracy"} <= set(final["final"])
    assert final["final"]["step"] == 30


def test_json_config_error_is_an_event_too(capsys):
    assert main(["run", "--json", "--set", "model.depth=0"]) == 2
    captured = capsys.readouterr()
    events = [protocol.from_json(line) for line in captured.out.splitlines()]
    # The same ending as a config the engine refuses: failure, state, finish.
    assert [type(e).__name__ for e in events] == ["EngineFailed", "StateChanged", "RunFinished"]
    assert events[0].kind == "config" and events[1].state == "failed"
    assert events[2].reason == "failed"
    assert "model.depth = 0" in captured.err


def test_user_code_error_exits_1_with_its_traceback(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_data_mod.py").write_text(textwrap.dedent("""
        def load():
            raise ValueError("no such table")
    """))
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--headless", "--set", "data.dataset=custom",
            "--set", "data.factory=broken_data_mod:load"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert 'raise ValueError("no such table")' in err
    assert "data.factory broken_data_mod:load raised ValueError: no such table" in err


def test_non_finite_loss_exits_3(capsys):
    argv = ["run", "--headless", *TINY, "--set", "data.dataset=sine", "--set", "optim.name=sgd",
            "--set", "optim.lr=100"]
    assert main(argv) == 3
    assert "non-finite" in capsys.readouterr().err


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainlab.cli", *args]


@pytest.mark.slow
def test_console_script_runs_the_default_experiment_to_90_percent():
    """The README's main job: no config, the digits MLP, >= 90% validation accuracy."""
    proc = subprocess.run(_cli("run", "--headless", "--json"), capture_output=True, text=True,
                          timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr
    final = json.loads(proc.stdout.splitlines()[-1])["final"]
    assert final["val_accuracy"] >= 0.90
    assert final["elapsed_s"] < 60


@pytest.mark.slow
def test_ctrl_c_stops_at_a_step_boundary_and_exits_130():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _cli("run", "--headless", "--json", *TINY, "--set", "run.max_steps=10000000"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stdout is not None
    # Wait until it trains, then interrupt as a user would.
    for line in proc.stdout:
        if '"MetricsBatch"' in line:
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    last = json.loads(out.splitlines()[-1])
    assert last["event"] == "RunFinished" and last["reason"] == "stopped"
    assert last["final"]["val_loss"] is not None  # the final evaluation still ran
    assert "stopping after this step" in err


def test_no_args_prints_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "usage: trainlab" in capsys.readouterr().err


def test_config_file_round_trip_through_the_cli(tmp_path: Path, capsys):
    main(["config", "--defaults"])
    path = tmp_path / "defaults.toml"
    path.write_text(capsys.readouterr().out)
    assert main(["config", str(path)]) == 0
    assert from_dict(tomllib.loads(capsys.readouterr().out)) == Config()


@pytest.mark.slow
def test_a_reader_that_leaves_early_stops_the_run_quietly(tmp_path):
    proc = subprocess.run(f"{sys.executable} -m trainlab.cli run --headless | head -1", shell=True,
                          capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert proc.stdout == f"run {run_dir.name} in runs/{run_dir.name}\n"  # the first line
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    from trainlab.core import catalog
    summary = catalog.summarize(run_dir)
    assert summary.status == "stopped"  # the reader left: stopped at a step boundary


# --- alerts, headless: every fix as --set flags that --set reads back ----------------------

FIXES = (  # one of each field type the detectors' fixes set, with their kind of values
    protocol.Fix("halve the learning rate", {"optim.lr": 0.0015}),
    protocol.Fix("lower lr, restart", {"optim.lr": 3e-05, "init.scheme": "kaiming_normal"},
                 restart=True),
    protocol.Fix("clip", {"reg.clip_norm": 1.0, "optim.weight_decay": 0.0005}),
    protocol.Fix("stop early", {"reg.early_stop_patience": 3, "model.dropout": 0.2}),
    protocol.Fix("residual", {"model.residual": True, "model.norm": "batch"}, restart=True),
    protocol.Fix("augment", {"data.augment": ("noise",)}, restart=True),
    protocol.Fix("more augment", {"data.augment": ("noise", "flip")}, restart=True),
    protocol.Fix("rollback", {"run.on_nonfinite": "rollback", "init.bias": 0.0}),
)


@pytest.mark.parametrize("fix", FIXES, ids=[f.label for f in FIXES])
def test_format_setting_round_trips_through_parse_value(fix: protocol.Fix):
    for key, value in fix.changes.items():
        assert parse_value(key, format_setting(value)) == value


def test_headless_alerts_print_fixes_as_set_flags_that_apply():
    out, err = io.StringIO(), io.StringIO()
    ProgressPrinter(out, err)(protocol.AlertRaised(
        7, "overfitting", "warning", (), {}, "validation loss rising", FIXES))
    lines = [line for line in err.getvalue().splitlines() if "fix:" in line]
    assert len(lines) == len(FIXES)
    for line, fix in zip(lines, FIXES, strict=True):
        assert "next run: --set" in line  # headless, a fix is the next run's flags
        assert ("applies it live with f" in line) == (not fix.restart)
        words = shlex.split(line.partition("next run: ")[2].rstrip(")"))
        assignments = words[1::2]
        assert words[::2] == ["--set"] * len(fix.changes)
        applied = apply_overrides(Config(), assignments)
        for key, value in fix.changes.items():
            section, name = key.split(".")
            assert getattr(getattr(applied, section), name) == value


def test_resume_and_fork_skip_a_checkpoint_whose_pickle_is_refused(capsys):
    import torch

    from trainlab.engine.checkpoint import LAST, LAST_GOOD, Checkpoints

    argv = ["run", "--headless", "--json", *TINY, "--set", "run.checkpoint_every=10",
            "--set", "run.checkpoint_min_seconds=0"]
    assert main(argv) == 0
    started = protocol.from_json(capsys.readouterr().out.splitlines()[0])
    run_dir = Path(started.run_dir)
    checkpoints = Checkpoints(run_dir / "checkpoints")
    assert checkpoints.steps() == [10, 20, 30]
    # Step 30 replaced by a pickled module (weights_only refuses it); last.pt and
    # last_good.pt are the whole step 20.
    for name in (LAST, LAST_GOOD):
        (checkpoints.directory / name).unlink()
        os.link(checkpoints.path_for(20), checkpoints.directory / name)
    checkpoints.path_for(30).unlink()
    torch.save(torch.nn.Linear(2, 2), checkpoints.path_for(30))

    assert main(["fork", run_dir.name, "--from", "30", "--headless"]) == 2
    err = capsys.readouterr().err
    assert "cannot fork" in err and "step_00000030.pt is refused" in err
    assert "Traceback" not in err

    assert main(["fork", run_dir.name, "--headless"]) == 0
    out = capsys.readouterr().out
    assert f"forked from run {run_dir.name} at step 20" in out and "completed: step 30" in out

    assert main(["resume", run_dir.name, "--headless"]) == 0
    out = capsys.readouterr().out
    assert "resumed from last_good.pt (step 20)" in out
    assert "skipped step_00000030.pt: step_00000030.pt is refused" in out
    assert "completed: step 30" in out
