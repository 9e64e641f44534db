"""The labs: every run builds, compared runs start alike, each lesson shows, and the CLI."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import signal
from itertools import pairwise
from statistics import geometric_mean
from typing import Any

import pytest
import torch

from tests.conftest import run_loop
from trainlab.cli.commands import build_parser, cmd_run, main
from trainlab.cli.lab_runner import worst_exit_code
from trainlab.core import protocol
from trainlab.core.config import Config, ConfigError
from trainlab.core.exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NON_FINITE
from trainlab.core.labs import LABS, Lab, apply_preset, find_lab
from trainlab.core.presets import PRESETS, Preset
from trainlab.engine.loop import Trainer
from trainlab.engine.probe import probe

# The init lab in miniature: 200 samples, 50 units, 3 steps (the layers stay ten deep).
SMALL_INIT = ["--set", "run.max_steps=3", "--set", "data.samples=200", "--set",
              "data.batch_size=50", "--set", "model.width=50", "--set", "run.threads=1"]


def one_thread(config: Config) -> Config:
    return config.with_value("run.threads", 1)


@pytest.fixture(scope="module")
def trainers() -> dict[str, Trainer]:
    """A freshly built Trainer for every run of every lab, by run name."""
    torch.set_num_threads(1)
    return {name: Trainer(one_thread(config))
            for lab in LABS.values() for name, config in lab.configs(Config())}


# --- the labs as data ------------------------------------------------------------------


@pytest.mark.slow
def test_every_run_of_every_lab_is_a_registered_preset_that_builds(trainers):
    for lab in LABS.values():
        assert lab.variants and lab.compare_by in ("step", "epoch")
        for variant in lab.variants:
            assert PRESETS[variant.name] is variant  # also `--preset VARIANT` on its own
            assert variant.name in trainers
    assert not set(LABS) & set(PRESETS)  # a name means one thing


def test_every_lab_explains_itself_in_lines_that_fit_a_terminal():
    for lab in LABS.values():
        lines = lab.explanation.splitlines()
        assert 8 <= len(lines) <= 16, lab.name
        assert all(len(line) < 80 for line in lines), lab.name
        assert "\n" not in lab.summary and lab.summary


def test_runs_that_share_an_architecture_start_from_identical_weights(trainers):
    groups_per_lab = {}
    for lab in LABS.values():
        by_build: dict[Any, list[str]] = {}
        for name, config in lab.configs(Config()):
            # Dropout has no weights: runs that differ only in its p build the same net.
            key = (dataclasses.replace(config.model, dropout=0.0), config.init,
                   config.run.seed)
            by_build.setdefault(key, []).append(name)
        for names in by_build.values():
            first = trainers[names[0]].model.state_dict()
            for other in names[1:]:
                state = trainers[other].model.state_dict()
                assert state.keys() == first.keys()
                assert all(torch.equal(state[k], first[k]) for k in first), (names[0], other)
        groups_per_lab[lab.name] = len(by_build)
    # The labs that vary no weights compare all their runs from one start.
    assert groups_per_lab["optimizers"] == groups_per_lab["regularization"] == 1
    assert groups_per_lab["batch-size"] == 1


def test_the_depth_labs_nets_share_their_linear_weights(trainers):
    plain, norm, residual = (trainers[name].model.state_dict()
                             for name in ("depth-plain", "depth-batchnorm", "depth-residual"))
    linear = [k for k in plain if ".linear." in k or k.startswith("head.")]
    assert len(linear) == 2 * 31
    for key in linear:
        assert torch.equal(plain[key], norm[key]) and torch.equal(plain[key], residual[key])


def test_overrides_hold_in_every_run_and_a_bad_one_names_its_run():
    runs = LABS["optimizers"].configs(Config(), ["optim.lr=0.5", "run.max_steps=7"])
    assert {config.optim.lr for _, config in runs} == {0.5}  # over each variant's own lr
    assert {config.optim.name for _, config in runs} == {
        "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "nadam", "lbfgs"}
    with pytest.raises(ConfigError, match=r"lab optimizers, run opt-sgd: .*did you mean"):
        LABS["optimizers"].configs(Config(), ["optim.lrr=0.5"])


def test_a_lab_needs_runs_and_a_known_axis():
    run = Preset("r", "one run", {})
    with pytest.raises(ValueError, match="has no runs"):
        Lab("empty", "s", "e", ())
    with pytest.raises(ValueError, match=r"compare_by 'time' .*step, epoch"):
        Lab("timed", "s", "e", (run,), compare_by="time")


def test_a_lab_name_is_not_one_config():
    with pytest.raises(ConfigError) as exc:
        apply_preset(Config(), "optimizers")
    message = str(exc.value)
    assert "'optimizers' is a lab of 8 runs" in message
    assert all(v.name in message for v in LABS["optimizers"].variants)
    with pytest.raises(ConfigError, match="did you mean 'depth'"):
        apply_preset(Config(), "dept")
    assert find_lab("init") is LABS["init"] and find_lab("init-small") is None


# --- the lessons --------------------------------------------------------------------------


def hidden_rows(preset: str) -> list[protocol.LayerStats]:
    """The hidden layers' statistics of the preset's initialized net (the head left out)."""
    rows = probe(one_thread(apply_preset(Config(), preset))).snapshot.layers
    assert rows[-1].name == "head"
    return list(rows[:-1])


@pytest.mark.parametrize(("preset", "weight_variance"), [
    ("init-relu-small", 0.01**2),
    ("init-relu-large", 1.0),
    ("init-relu-xavier", 2 / (500 + 500)),
    ("init-relu-kaiming", 2 / 500),
])
def test_relu_init_scales_the_signal_as_the_variance_argument_says(preset, weight_variance):
    # Var(out) = n_in * g * Var(in) (docs/field-knowledge.md#initialization), and ReLU
    # keeps half of it, so the std changes by sqrt(n_in * g / 2) a layer (0.16, 16, 0.71
    # and 1 here).
    stds = [row.act_std for row in hidden_rows(preset)]
    assert len(stds) == 10
    measured = geometric_mean([later / earlier for earlier, later in pairwise(stds)])
    assert measured == pytest.approx(math.sqrt(500 * weight_variance / 2), rel=0.2)


def test_kaiming_on_tanh_keeps_the_signal_with_few_saturated_units():
    rows = hidden_rows("init-kaiming")
    assert all(0.4 < row.act_std < 0.9 for row in rows)
    assert all(row.saturated_frac < 0.1 for row in rows)


def test_sigmoids_first_layer_gets_orders_of_magnitude_less_gradient_than_relus():
    first = {act: hidden_rows(f"act-{act}")[0].grad_out_std
             for act in ("sigmoid", "tanh", "relu", "leaky-relu")}
    assert first["sigmoid"] < 1e-4 * first["relu"]
    assert first["sigmoid"] < 1e-4 * first["tanh"]
    assert first["leaky-relu"] == pytest.approx(first["relu"], rel=0.5)


def test_a_deep_plain_net_starves_its_first_layer_and_residual_or_batchnorm_feed_it():
    first = {name: hidden_rows(f"depth-{name}")[0].grad_norm
             for name in ("plain", "batchnorm", "residual")}
    assert first["plain"] < 1e-9 * first["residual"]
    assert first["plain"] < 1e-9 * first["batchnorm"]
    assert first["residual"] > 1e-3 and first["batchnorm"] > 1e-3


def test_batch_sizes_take_their_share_of_steps_per_epoch(trainers):
    n = len(trainers["batch-1"].x_train)
    assert n == 240  # the summaries count on it
    steps = {name: trainers[name].steps_per_epoch()
             for name in ("batch-1", "batch-32", "batch-full")}
    assert steps == {"batch-1": n, "batch-32": math.ceil(n / 32), "batch-full": 1}
    assert LABS["batch-size"].compare_by == "epoch"


def test_every_optimizer_gets_the_full_batch(trainers):
    for variant in LABS["optimizers"].variants:
        trainer = trainers[variant.name]
        assert trainer.batch_size == len(trainer.x_train)


def final_val_loss(preset: str, steps: int) -> float:
    config = one_thread(apply_preset(Config(), preset)).with_value("run.max_steps", steps)
    finished = run_loop(config)[-1]
    assert finished.reason == "completed"
    return finished.final.val_loss


def test_lbfgs_and_momentum_outrun_plain_sgd_from_the_same_start():
    sgd = final_val_loss("opt-sgd", 300)
    assert final_val_loss("opt-momentum", 300) < sgd / 2
    assert final_val_loss("opt-lbfgs", 50) < sgd / 4  # in a sixth of the steps


def _evals(events: list[Any]) -> list[protocol.EvalDone]:
    return [e for e in events if isinstance(e, protocol.EvalDone)]


def test_the_unregularized_run_overfits_and_early_stopping_stops_it():
    config = one_thread(apply_preset(Config(), "reg-none")).with_value("run.max_steps", 300)
    evals = _evals(run_loop(config))
    best = min(e.val_loss for e in evals)
    assert evals[-1].train_loss < evals[0].train_loss / 3  # training loss keeps falling
    assert evals[-1].val_loss > 1.5 * best  # while validation loss climbs: overfitting
    early = run_loop(one_thread(apply_preset(Config(), "reg-early-stop")))
    finished = early[-1]
    assert finished.reason == "early_stopped" and finished.final.step < 300


# --- the command line -------------------------------------------------------------------


def test_worst_exit_code_ranks_interrupt_over_failure_over_non_finite():
    assert worst_exit_code([0, EXIT_NON_FINITE, 0]) == EXIT_NON_FINITE
    assert worst_exit_code([EXIT_FAILED, EXIT_NON_FINITE]) == EXIT_FAILED
    assert worst_exit_code([EXIT_BAD_INPUT, EXIT_INTERRUPTED, 0]) == EXIT_INTERRUPTED
    assert worst_exit_code([]) == 0


def test_presets_lists_the_labs_then_the_single_runs(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    gap = lines.index("")
    labs, singles = lines[:gap], lines[gap + 1:]
    assert labs[0].startswith("labs") and singles[0].startswith("single runs")
    assert [line.split()[0] for line in labs[1:]] == list(LABS)
    for line, lab in zip(labs[1:], LABS.values(), strict=True):
        assert f"{len(lab.variants)} runs  {lab.summary}" in line
    assert [line.split()[0] for line in singles[1:]] == list(PRESETS)
    assert all(line.endswith(p.summary) for line, p in zip(singles[1:], PRESETS.values(),
                                                           strict=True))


def test_a_headless_lab_trains_every_run_and_prints_the_comparison(capsys):
    assert main(["run", "--preset", "init", "--headless", *SMALL_INIT]) == 0
    out = capsys.readouterr().out
    variants = LABS["init"].variants
    headers = [line for line in out.splitlines() if line.startswith("== init ")]
    assert headers == [f"== init {i}/4: {v.name} ({v.summary}) =="
                       for i, v in enumerate(variants, 1)]
    assert out.count("completed: step 3,") == 4  # each run's own progress lines
    table = out[out.index("== init: 4 of 4 runs =="):].splitlines()[1:]
    assert table[0].split() == ["variant", "ended", "steps", "train", "val", "val_acc",
                                "best_val", "seconds"]
    assert [row.split()[:3] for row in table[1:]] == [[v.name, "completed", "3"]
                                                     for v in variants]


def test_a_lab_in_json_announces_each_run_before_its_events(capsys):
    assert main(["run", "--preset", "init", "--json", *SMALL_INIT]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    headers = [i for i, line in enumerate(lines) if "lab" in line]
    assert [lines[i] for i in headers] == [
        {"lab": "init", "variant": v.name, "index": i, "of": 4}
        for i, v in enumerate(LABS["init"].variants, 1)]
    for start, end in pairwise([*headers, len(lines)]):
        events = lines[start + 1:end]
        assert all("event" in e for e in events)
        assert events[0]["event"] == "RunStarted" and events[-1]["event"] == "RunFinished"
        assert events[-1]["final"]["step"] == 3


def test_a_bad_override_stops_the_lab_before_any_run(capsys):
    assert main(["run", "--preset", "init", "--headless", "--set", "optim.lrr=1"]) == 2
    captured = capsys.readouterr()
    assert "lab init, run init-small: unknown key 'optim.lrr'" in captured.err
    assert "==" not in captured.out  # nothing trained


def test_a_run_that_fails_makes_the_lab_fail_and_the_others_still_run(capsys):
    # batch 500 of 160 samples: every run is refused when built, and says so in the table.
    argv = ["run", "--preset", "init", "--headless", *SMALL_INIT, "--set",
            "data.batch_size=500"]
    assert main(argv) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.err.count("data.batch_size = 500 is larger") == 4
    assert captured.out.count("  failed  ") == 4


@pytest.mark.parametrize("command", ["config", "probe"])
def test_commands_that_need_one_config_refuse_a_lab(command, capsys):
    assert main([command, "--preset", "depth"]) == 2
    err = capsys.readouterr().err
    assert "'depth' is a lab of 3 runs" in err
    assert "depth-plain, depth-batchnorm, depth-residual" in err


class CtrlCOnFirstStep(io.StringIO):
    """stdout that presses Ctrl-C (a real SIGINT to this process) once a run trains."""

    def write(self, text: str) -> int:
        if text.startswith("step ") and "step " not in self.getvalue():
            os.kill(os.getpid(), signal.SIGINT)  # handled by the run's own handler
        return super().write(text)


def test_ctrl_c_stops_the_current_run_and_the_lab():
    argv = ["run", "--preset", "init", "--headless", *SMALL_INIT,
            "--set", "run.max_steps=10000000"]
    out, err = CtrlCOnFirstStep(), io.StringIO()
    assert cmd_run(build_parser().parse_args(argv), out, err) == EXIT_INTERRUPTED
    printed = out.getvalue()
    assert "stopped: step" in printed and "== init 2/4" not in printed
    assert "== init: 1 of 4 runs ==" in printed
    assert "not run: init-large, init-xavier, init-kaiming" in printed
    assert "stopping after this step" in err.getvalue()
