"""The LR range test: the run stays untouched, the curve and suggestion make sense, the
FindLr command and ``trainlab lr-find``."""

from __future__ import annotations

import json
import math
import textwrap
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import losses_by_step, of_type, run_loop, tiny_config
from trainlab.cli.commands import main
from trainlab.core import protocol
from trainlab.core.lr_chart import CHART_COLS, CHART_ROWS, draw_lr_curve
from trainlab.doctor.lr_find import (
    DIVERGENCE_FACTOR,
    MAX_STEPS,
    MIN_STEPS,
    SKIP_START,
    LrRangeError,
    check_range,
    find_lr,
    suggest,
)
from trainlab.engine import loop
from trainlab.engine.loop import Trainer

TINY = ["--set", "data.dataset=blobs", "--set", "data.samples=200", "--set", "model.depth=1",
        "--set", "model.width=16", "--set", "run.threads=1"]


def _everything_the_run_owns(trainer: Trainer) -> dict[str, Any]:
    """Copies of every state the range test must not change."""
    return {
        "weights": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone()
                  for p in trainer.model.parameters()],
        "optimizer": _clone(trainer.optimizer.state_dict()),
        "batch_rng": trainer.batches.generator.get_state(),
        "batch_order": trainer.batches._order.clone(),
        "batch_pos": (trainer.batches._pos, trainer.batches.epoch),
        "augment_rng": trainer.augment_generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "modes": [m.training for m in trainer.model.modules()],
        "step": trainer.step,
    }


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clone(v) for v in value)
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("changes", [
    # Adam with moments, dropout (global RNG), BatchNorm (running stats), augmentation.
    {"model__dropout": 0.3, "model__norm": "batch", "data__augment": ("noise",),
     "model__depth": 2},
    # L-BFGS: the closure is evaluated several times per step.
    {"optim__name": "lbfgs", "optim__lr": 0.5, "optim__lbfgs_iters": 3, "data__batch_size": 0},
])
def test_the_range_test_leaves_the_run_untouched(changes):
    trainer = Trainer(tiny_config(**changes))
    for _ in range(3):  # optimizer state, a moved batch position, BN statistics
        trainer.train_step()
    before = _everything_the_run_owns(trainer)
    found = find_lr(trainer, 1e-5, 10.0, MIN_STEPS)
    assert found.step == 3 and len(found.lrs) >= SKIP_START
    after = _everything_the_run_owns(trainer)
    assert before.keys() == after.keys()
    for key in before:
        assert _same(before[key], after[key]), key


def test_stats_hooks_never_fire_during_the_test(monkeypatch):
    trainer = Trainer(tiny_config(**{"stats__every": 1}))
    trainer.train_step()
    trainer.instruments.requested = True  # a snapshot is due for the *run's* next step
    calls = []
    from trainlab.engine import stats

    original = stats._Recording.on_activation
    monkeypatch.setattr(stats._Recording, "on_activation",
                        lambda self, *a: (calls.append(1), original(self, *a)))
    find_lr(trainer, 1e-4, 1.0, MIN_STEPS)
    assert calls == []
    assert trainer.instruments.requested is True  # still waiting for the run's own step
    assert trainer.instruments.take() is None


def _capture_trainers(monkeypatch) -> list[Trainer]:
    made: list[Trainer] = []
    original = loop.Trainer.__init__

    def init(self: Trainer, config: Any, *args: Any) -> None:
        original(self, config, *args)
        made.append(self)

    monkeypatch.setattr(loop.Trainer, "__init__", init)
    return made


def test_find_lr_mid_run_leaves_the_weights_bit_identical(monkeypatch):
    made = _capture_trainers(monkeypatch)
    config = tiny_config(**{"model__dropout": 0.2, "data__augment": ("noise",),
                            "run__max_steps": 12})
    # Paused, 5 single steps, then (at step 5) the range test, then on to the end.
    plain = run_loop(config, [protocol.Pause(), protocol.Step(5), protocol.Resume()])
    probed = run_loop(config, [protocol.Pause(), protocol.Step(5),
                               protocol.FindLr(1e-4, 1.0, MIN_STEPS), protocol.Resume()])
    found = of_type(probed, "LrFound")
    assert len(found) == 1 and found[0].step == 5
    assert of_type(probed, "CommandRejected") == []
    assert losses_by_step(plain) == losses_by_step(probed)  # every step, bit for bit
    first, second = (t.model.state_dict() for t in made)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert made[0].step == made[1].step == 12


def test_find_lr_works_while_paused_and_reports_the_step():
    events = run_loop(tiny_config(), [protocol.Pause(), protocol.FindLr(1e-4, 1.0, MIN_STEPS),
                                      protocol.Resume()])
    found = of_type(events, "LrFound")
    assert [f.step for f in found] == [0]
    assert of_type(events, "RunFinished")[0].reason == "completed"


@pytest.mark.parametrize(("command", "field"), [
    (protocol.FindLr(start=0.0), "FindLr.start"),
    (protocol.FindLr(start=-1e-3), "FindLr.start"),
    (protocol.FindLr(start=math.nan), "FindLr.start"),
    (protocol.FindLr(start=1e-3, end=1e-4), "FindLr.end"),
    (protocol.FindLr(end=math.inf), "FindLr.end"),
    (protocol.FindLr(steps=MIN_STEPS - 1), "FindLr.steps"),
    (protocol.FindLr(steps=MAX_STEPS + 1), "FindLr.steps"),
    (protocol.FindLr(steps=50.0), "FindLr.steps"),  # type: ignore[arg-type]
    (protocol.FindLr(steps=True), "FindLr.steps"),
])
def test_bad_findlr_fields_are_rejected_by_name(command, field):
    events = run_loop(tiny_config(), [command])
    rejected = of_type(events, "CommandRejected")
    assert len(rejected) == 1 and rejected[0].command_type == "FindLr"
    assert rejected[0].reason.startswith(f"{field} = ")
    assert "expected" in rejected[0].reason
    assert of_type(events, "LrFound") == []
    assert of_type(events, "RunFinished")[0].reason == "completed"


def test_a_failing_range_test_is_rejected_and_the_run_goes_on():
    # The model trains, but deepcopy cannot copy it (it holds a lock).
    config = tiny_config(**{"model__arch": "custom",
                            "model__factory": "tests.doctor_user_code:uncopyable_net"})
    events = run_loop(config, [protocol.FindLr()])
    rejected = of_type(events, "CommandRejected")
    assert len(rejected) == 1 and "lr range test failed (TypeError" in rejected[0].reason
    assert of_type(events, "RunFinished")[0].reason == "completed"


def test_the_curve_falls_then_rises_and_the_suggestion_is_sensible():
    trainer = Trainer(tiny_config(**{"optim__name": "sgd"}))
    found = find_lr(trainer, 1e-5, 100.0, 100)
    lrs, losses = np.array(found.lrs), np.array(found.losses)
    # Geometric: a constant ratio between neighbours, from start.
    assert lrs[0] == pytest.approx(1e-5)
    assert np.allclose(lrs[1:] / lrs[:-1], (100.0 / 1e-5) ** (1 / 99))
    lowest = int(np.argmin(losses))
    assert losses[lowest] < 0.7 * losses[0]  # it fell...
    assert losses[-1] > DIVERGENCE_FACTOR * losses[lowest]  # ...then blew up, and it stopped
    assert len(lrs) < 100
    assert found.suggested_lr is not None
    assert lrs[SKIP_START] <= found.suggested_lr <= lrs[lowest]
    # Sensible: plain SGD on well-separated blobs trains at lr 0.01-3.
    assert 1e-2 <= found.suggested_lr <= 3.0
    # And it is one: a short training at the suggestion beats one at 1/100 of it.
    def trained_loss(lr: float) -> float:
        run = Trainer(tiny_config(**{"optim__name": "sgd", "optim__lr": lr}))
        for _ in range(20):
            run.train_step()
        return float(torch.stack(run.metrics.losses[-5:]).mean())
    assert trained_loss(found.suggested_lr) < trained_loss(found.suggested_lr / 100)


def _decay_curve(lrs: np.ndarray, centre: float) -> np.ndarray:
    """A loss falling fastest at lr = centre (a tanh in log10 lr), then blowing up."""
    x = np.log10(lrs)
    return 2.0 - np.tanh(2.0 * (x - math.log10(centre))) + np.where(x > -0.5, 20 * (x + 0.5),
                                                                      0.0)


def test_suggest_finds_the_steepest_fall_of_a_known_curve():
    lrs = np.geomspace(1e-7, 10.0, 100)
    losses = _decay_curve(lrs, 1e-3)
    lr, reason = suggest(tuple(lrs), tuple(losses))
    assert lr is not None
    # Independent: the analytic slope of the tanh is steepest at 1e-3; the grid's point
    # nearest to it is within one step (~0.08 decade) of it.
    assert abs(math.log10(lr) - (-3.0)) <= math.log10(lrs[1] / lrs[0]) + 1e-9
    assert "steepest fall" in reason


def test_suggest_says_why_when_the_curve_never_falls():
    lrs = tuple(np.geomspace(1e-7, 10.0, 60))
    rising = tuple(1.0 + 0.01 * i for i in range(60))
    lr, reason = suggest(lrs, rising)
    assert lr is None and "never falls" in reason
    lr, reason = suggest(lrs[:5], rising[:5])
    assert lr is None and "only 5 points" in reason


def test_check_range_names_the_field():
    check_range(1e-6, 1.0, MIN_STEPS)
    with pytest.raises(LrRangeError) as info:
        check_range(1e-6, 1e-6, MIN_STEPS)
    assert info.value.field == "end" and "end = 1e-06" in str(info.value)


# --- trainlab lr-find -------------------------------------------------------------------


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-strict JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_lr_find_json_is_one_strict_object(capsys):
    assert main(["lr-find", "--json", *TINY, "--steps", "40"]) == 0
    text = capsys.readouterr().out
    payload = _strict(text)
    assert set(payload) == {"event", "step", "lrs", "losses", "suggested_lr", "reason"}
    assert payload["event"] == "LrFound" and payload["step"] == 0
    found = protocol.from_json(text)  # the same event a live FindLr is answered with
    assert isinstance(found, protocol.LrFound) and list(found.lrs) == payload["lrs"]
    assert len(payload["lrs"]) == len(payload["losses"]) <= 40
    assert payload["lrs"][0] == pytest.approx(protocol.FindLr().start)
    assert all(isinstance(v, float) for v in payload["lrs"] + payload["losses"])
    assert payload["suggested_lr"] is None or payload["suggested_lr"] in payload["lrs"]
    assert isinstance(payload["reason"], str) and payload["reason"]


def test_lr_find_draws_the_curve_and_says_how_to_use_it(capsys):
    assert main(["lr-find", *TINY, "--set", "optim.name=sgd", "--start", "1e-5",
                 "--end", "100"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    plot = [line for line in lines if line.rstrip().endswith(("*", "|", "o", "^"))
            and ("|" in line or "+" in line)]
    assert len(plot) >= 10  # the grid's rows
    assert any("o" in line for line in plot)  # the suggestion is marked on the curve
    assert "learning rate (log scale)" in out and "1e-5" in out
    use = next(line for line in lines if line.startswith("use it"))
    assert "trainlab run --set data.dataset=blobs" in use and "--set optim.lr=" in use
    suggested = float(use.rsplit("optim.lr=", 1)[1])
    assert 1e-5 <= suggested <= 100


def test_lr_find_bad_input_exits_2_naming_it(capsys):
    assert main(["lr-find", *TINY, "--start", "0"]) == 2
    assert "--start = 0.0: expected a finite number > 0" in capsys.readouterr().err
    assert main(["lr-find", *TINY, "--steps", "5"]) == 2
    assert f"--steps = 5: expected an integer from {MIN_STEPS}" in capsys.readouterr().err
    assert main(["lr-find", "--set", "model.depth=0"]) == 2
    err = capsys.readouterr().err
    assert "model.depth = 0" in err and "Traceback" not in err


def test_lr_find_user_code_error_exits_1_with_its_traceback(tmp_path, monkeypatch, capsys):
    (tmp_path / "lr_find_broken_net.py").write_text(textwrap.dedent("""
        def build(input_shape, num_outputs):
            raise RuntimeError("no such layer")
    """))
    monkeypatch.chdir(tmp_path)
    argv = ["lr-find", *TINY, "--set", "model.arch=custom",
            "--set", "model.factory=lr_find_broken_net:build"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert 'raise RuntimeError("no such layer")' in err
    assert "model.factory lr_find_broken_net:build raised RuntimeError: no such layer" in err


def test_the_chart_marks_the_suggestion_where_it_belongs():
    lrs = tuple(float(v) for v in np.geomspace(1e-6, 1.0, 61))
    losses = tuple(float(v) for v in _decay_curve(np.array(lrs), 1e-3))
    chart = draw_lr_curve(protocol.LrFound(0, lrs, losses, lrs[30], "test"))
    lines = chart.splitlines()
    edge = lines[1].index("+")  # the top row: its y label, then the axis's edge
    grid = lines[1 : 1 + CHART_ROWS]
    assert all(line[edge] in "+|" for line in grid) and lines[1 + CHART_ROWS][edge] == "+"
    # Independently: 1e-3 is half way along log10 lr from 1e-6 to 1, so its column is
    # the middle one; the suggestion's point sits there, the guide line above and below.
    middle = edge + 1 + round(0.5 * (CHART_COLS - 1))
    column = [line[middle] if len(line) > middle else " " for line in grid]
    assert column.count("o") == 1 and set(column) <= {"o", "|", "*"}
    assert "1e-6" in chart and "1e-3" in chart and "o suggested lr 0.001" in chart
    assert draw_lr_curve(protocol.LrFound(0, (), (), None, "")) == "(no finite loss to draw)"
