"""A sweep file: its [sweep] settings and its space, checked against the config schema
before any trial runs (no Optuna, no torch)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from trainlab.cli.commands import main
from trainlab.core import config as config_mod
from trainlab.core import sweep
from trainlab.core.config import ConfigError
from trainlab.core.sweep import SweepError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sweep.toml"


def spec_of(text: str, name: str = "s", overrides: tuple[str, ...] = ()) -> sweep.SweepSpec:
    import tomllib

    return sweep.from_dict(tomllib.loads(textwrap.dedent(text)), name, overrides)


SPACE = """
    [model]
    width = 32
    [sweep]
    trials = 5
    [sweep.space]
    "optim.lr" = { low = 1e-4, high = 1e-1, log = true }
    "model.depth" = { low = 2, high = 8 }
    "optim.name" = ["adam", "sgd", "momentum"]
"""


def test_a_sweep_file_is_a_base_config_a_space_and_settings():
    spec = spec_of(SPACE, overrides=("optim.weight_decay=0.01",))
    assert spec.base.model.width == 32 and spec.base.optim.weight_decay == 0.01
    lr, depth, name = spec.space
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-1, True)
    assert (depth.kind, depth.low, depth.high, depth.log) == ("int", 2, 8, False)
    assert name.choices == ("adam", "sgd", "momentum")
    assert (spec.metric, spec.direction, spec.sampler, spec.pruner) == (
        "val_loss", "minimize", "tpe", "median")
    assert spec.trials == 5 and spec.parallel == 1 and spec.report_at == "step"
    assert spec.directory == Path("runs") / "sweeps" / "s"
    assert spec.storage_url.startswith("sqlite:///") and spec.storage_url.endswith(
        "/runs/sweeps/s/study.db")


def test_the_example_sweep_loads_and_names_itself_after_its_file():
    spec = sweep.load(EXAMPLE)
    assert spec.name == "sweep" and spec.trials == 8
    assert [d.key for d in spec.space] == ["optim.lr", "model.depth", "optim.name"]


def test_accuracy_is_maximized_and_a_swept_batch_size_reports_by_epoch():
    spec = spec_of("""
        [sweep]
        metric = "val_accuracy"
        [sweep.space]
        "data.batch_size" = [16, 64]
    """)
    assert spec.direction == "maximize" and spec.report_at == "epoch"


def test_a_sampled_combination_becomes_the_trials_config():
    spec = spec_of("""
        [sweep]
        [sweep.space]
        "optim.lr" = { low = 1e-4, high = 1e-1, log = true }
        "optim.name" = ["adam", "sgd"]
        "data.augment" = [[], ["noise"], ["noise", "flip"]]
        "model.residual" = [true, false]
    """)
    assert spec.dimension("data.augment").choices == ("", "noise", "noise,flip")
    config = spec.trial_config({"optim.lr": 0.003, "optim.name": "sgd",
                                "data.augment": "noise,flip", "model.residual": True})
    assert config.optim.lr == 0.003 and config.optim.name == "sgd"
    assert config.data.augment == ("noise", "flip") and config.model.residual is True
    # An optimizer sampled without an lr brings its own (as a --set of optim.name does).
    assert spec.trial_config({"optim.name": "sgd"}).optim.lr == 0.01


def test_a_combination_the_schema_refuses_is_a_config_error():
    spec = spec_of("""
        [sweep]
        [sweep.space]
        "optim.name" = ["adam", "nesterov"]
        "optim.momentum" = { low = 0.0, high = 0.9 }
    """)
    with pytest.raises(ConfigError, match="nesterov"):
        spec.trial_config({"optim.name": "nesterov", "optim.momentum": 0.0})


def test_parallel_trials_share_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 9)
    spec = spec_of("""
        [sweep]
        parallel = 4
        [sweep.space]
        "optim.lr" = [0.1, 0.01]
    """)
    assert spec.trial_config({"optim.lr": 0.1}).run.threads == 2


def test_a_grid_takes_steps_and_caps_the_trials_at_its_size():
    spec = spec_of("""
        [sweep]
        sampler = "grid"
        trials = 50
        [sweep.space]
        "model.depth" = { low = 1, high = 3 }
        "model.dropout" = { low = 0.0, high = 0.2, step = 0.1 }
        "optim.name" = ["adam", "sgd"]
    """)
    assert spec.dimension("model.dropout").grid() == [0.0, 0.1, 0.2]
    assert spec.dimension("model.depth").grid() == [1, 2, 3]
    assert spec.trials == 18 and "the grid has 18 points" in spec.notes[0]


@pytest.mark.parametrize(("body", "message"), [
    ('"optim.lrr" = [0.1]', "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
    ('"optim.lr" = { low = 0, high = 0.1 }',
     'sweep.space."optim.lr": low 0 is refused: optim.lr = 0.0 is not allowed: expected '
     "a number > 0"),
    ('"model.depth" = { low = 2, high = 2000 }',
     'sweep.space."model.depth": high 2000 is refused'),
    ('"optim.name" = ["adam", "adamm"]',
     "the choice 'adamm' is refused: optim.name = 'adamm' is not allowed"),
    ('"model.activation" = { low = 1, high = 2 }',
     "a range needs a number field; this one takes one of relu"),
    ('"optim.lr" = { low = 0.1, high = 0.01 }', "low (0.1) must be below high (0.01)"),
    ('"init.bias" = { low = -1.0, high = 1.0, log = true }', "a log scale needs low > 0"),
    ('"optim.lr" = { low = 1e-4, high = 1e-1, lg = true }',
     "unknown setting 'lg'; did you mean 'log'?"),
    ('"run.dir" = ["a", "b"]', 'sweep.space."run.dir": cannot be searched'),
    ('"optim.name" = []', "an empty list of choices"),
    ('"model.depth" = { low = 2.5, high = 4 }', "low 2.5 is refused"),
    ('"data.augment" = [["noise", "blur"]]', "'blur' is not allowed"),
])
def test_a_space_the_schema_refuses_is_an_error_naming_it(body: str, message: str):
    with pytest.raises(SweepError) as error:
        spec_of(f"[sweep]\n[sweep.space]\n{body}\n")
    assert message in str(error.value)


@pytest.mark.parametrize(("text", "message"), [
    ("[sweep]\nsampler = 'tp'\n[sweep.space]\n'optim.lr' = [0.1]\n",
     "sweep.sampler = 'tp' is not allowed: expected one of tpe, random, grid, cmaes; "
     "did you mean 'tpe'?"),
    ("[sweep]\ntrials = 0\n[sweep.space]\n'optim.lr' = [0.1]\n", "sweep.trials = 0"),
    ("[sweep]\ntrails = 3\n[sweep.space]\n'optim.lr' = [0.1]\n",
     "unknown setting 'sweep.trails'; did you mean 'trials'?"),
    ("[sweep]\n", "[sweep.space] is missing or empty"),
    ("[model]\ndepth = 3\n", "a sweep file needs a [sweep] table"),
    ("[sweep]\nsampler = 'grid'\n[sweep.space]\n'optim.lr' = { low = 0.1, high = 0.2 }\n",
     "the grid sampler needs a list of choices or a step"),
    ("[data]\nval_fraction = 0.0\n[sweep]\n[sweep.space]\n'optim.lr' = [0.1]\n",
     "needs a validation split"),
    ("[sweep]\nname = 'a/b'\n[sweep.space]\n'optim.lr' = [0.1]\n", "sweep.name = 'a/b'"),
])
def test_bad_settings_are_errors_naming_them(text: str, message: str):
    with pytest.raises(SweepError) as error:
        spec_of(text)
    assert message in str(error.value)


def test_the_base_config_is_checked_as_a_config_file_is():
    with pytest.raises(ConfigError, match=r"did you mean 'model\.depth'"):
        spec_of("[model]\ndeptj = 3\n[sweep]\n[sweep.space]\n'optim.lr' = [0.1]\n")


def test_the_cli_refuses_a_bad_sweep_before_any_trial(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[sweep]\n[sweep.space]\n'optim.lr' = { low = -1, high = 1 }\n")
    assert main(["sweep", str(path), "--headless"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: sweep.space.\"optim.lr\": low -1 is refused" in err
    assert not (tmp_path / "runs").exists()
    assert main(["sweep", str(tmp_path / "missing.toml"), "--headless"]) == 2
    assert "sweep file not found" in capsys.readouterr().err


def test_the_space_is_kept_to_tell_a_changed_sweep():
    a = spec_of(SPACE)
    b = spec_of(SPACE.replace("high = 8", "high = 6"))
    assert a.compared() != b.compared()
    # What is each machine's own may differ between the processes of one sweep.
    c = spec_of(SPACE, overrides=("run.threads=3", "run.dir=elsewhere"))
    assert a.compared() == c.compared()
    assert config_mod.Config().with_value("run.threads", 3).run.threads == 3


def test_a_sweep_opens_the_app_unless_told_to_run_without_it():
    from trainlab.cli.main import _wants_app

    assert _wants_app(["sweep", "s.toml"])
    assert _wants_app(["sweep", "s.toml", "--set", "model.width=8"])
    for flag in ("--headless", "--json", "--show", "--best"):
        assert not _wants_app(["sweep", "s.toml", flag])


def test_the_engine_command_asks_for_headless(tmp_path, capsys):
    assert main(["sweep", str(EXAMPLE)]) == 2
    assert "add --headless or --json" in capsys.readouterr().err
