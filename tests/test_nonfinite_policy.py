"""run.on_nonfinite = skip and rollback (stop and continue are covered in test_loop).

A non-finite loss is injected at chosen steps by a forward hook that turns the model's
output into NaN for that step only, so the weights themselves stay healthy: what
happens next is the policy's doing alone.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from tests.conftest import losses_by_step, of_type, run_loop, tiny_config
from trainlab.core.config import Config, field_info
from trainlab.core.protocol import SetHyper
from trainlab.engine.loop import Trainer
from trainlab.engine.nonfinite import (
    ROLLBACK_KEEP_EVERY,
    ROLLBACK_LR_FACTOR,
    ROLLBACK_MAX,
    SKIP_MAX_IN_A_ROW,
)


@contextmanager
def nan_output(trainer: Trainer) -> Iterator[None]:
    """While inside: the model's output (so the loss) is NaN."""
    handle = trainer.model.register_forward_hook(lambda module, args, out: out * math.nan)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture
def poison(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The steps (1-based) of any run started in the test whose loss is NaN."""
    steps: set[int] = set()
    original = Trainer.train_step

    def train_step(self: Trainer) -> int:
        if self.step + 1 not in steps:
            return original(self)
        with nan_output(self):
            return original(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return steps


def weights(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def final(events: list):
    return of_type(events, "RunFinished")[0]


# --- skip ------------------------------------------------------------------------------


def test_skip_withholds_exactly_the_bad_steps_update():
    trainer = Trainer(tiny_config(run__on_nonfinite="skip"))
    for _ in range(4):
        trainer.train_step()
    before = weights(trainer)
    with nan_output(trainer):
        trainer.train_step()
    assert trainer.nonfinite.update_skipped and trainer.nonfinite.withheld_in_a_row == 1
    assert same(weights(trainer), before)  # the NaN step changed nothing
    trainer.train_step()
    assert not trainer.nonfinite.update_skipped and trainer.nonfinite.withheld_in_a_row == 0
    assert not same(weights(trainer), before)  # the next batch trains as usual


def test_skip_keeps_the_run_going_with_finite_weights(poison):
    poison.update({5, 17, 18})
    events = run_loop(tiny_config(run__on_nonfinite="skip", run__max_steps=40))
    end = final(events)
    assert end.reason == "completed" and end.final.step == 40
    assert math.isfinite(end.final.val_loss)  # evaluated with the final weights
    losses = losses_by_step(events)
    assert {s for s, x in losses.items() if not math.isfinite(x)} == {5, 17, 18}
    warnings = [n.message for n in of_type(events, "Notice") if n.level == "warning"]
    assert [m for m in warnings if "update was skipped" in m] == [
        f"training loss non-finite at step {step}; its update was skipped ({n} in a row, "
        f"the run stops at {SKIP_MAX_IN_A_ROW}) (run.on_nonfinite = skip)"
        for step, n in ((5, 1), (17, 1), (18, 2))
    ]
    # The same NaN steps under continue are applied, and spoil the weights for good.
    events = run_loop(tiny_config(run__on_nonfinite="continue", run__max_steps=40))
    assert not math.isfinite(final(events).final.val_loss)


@pytest.mark.parametrize("policy", ["skip", "rollback"])
def test_withheld_steps_are_left_out_of_the_train_loss_mean(poison, policy):
    poison.update({3, 12})
    config = tiny_config(run__on_nonfinite=policy, run__max_steps=20, run__eval_every=10)
    events = run_loop(config)
    assert final(events).reason == "completed"
    losses = losses_by_step(events)
    evals = of_type(events, "EvalDone")
    assert [e.step for e in evals] == [10, 20]
    # A rollback from bad step B to the state after step G undoes steps G+1..B.
    rollbacks = [tuple(map(int, re.search(r"rollback to step (\d+) .* at step (\d+)",
                                          change.note).groups()))
                 for change in of_type(events, "HyperChanged")]
    assert len(rollbacks) == (2 if policy == "rollback" else 0)
    previous = 0
    for done in evals:
        # Independently: the mean of the steps in the interval whose update was applied
        # (the MetricsBatch losses, minus the poisoned steps the policy withheld and
        # the steps a rollback before this evaluation undid).
        def undone(step: int, end: int = done.step) -> bool:
            return any(good < step <= bad <= end for good, bad in rollbacks)

        applied = [losses[s] for s in range(previous + 1, done.step + 1)
                   if s not in poison and not undone(s)]
        assert math.isfinite(done.train_loss)
        assert done.train_loss == pytest.approx(sum(applied) / len(applied), rel=1e-9)
        previous = done.step
    assert all(not math.isfinite(losses[s]) for s in poison)  # still shown per step


def test_skip_gives_up_after_too_many_in_a_row(poison):
    poison.update(range(5, 5 + SKIP_MAX_IN_A_ROW))
    events = run_loop(tiny_config(run__on_nonfinite="skip", run__max_steps=40))
    end = final(events)
    last_bad = 5 + SKIP_MAX_IN_A_ROW - 1
    assert end.reason == "non_finite" and end.final.step == last_bad
    error = of_type(events, "Notice")[-1]
    assert error.level == "error" and f"{SKIP_MAX_IN_A_ROW} steps in a row" in error.message
    # One fewer in a row, and the run goes on to its end.
    poison.discard(last_bad)
    assert final(run_loop(tiny_config(run__on_nonfinite="skip", run__max_steps=40))
                 ).reason == "completed"


def test_the_policy_is_hot(poison):
    poison.add(5)
    events = run_loop(tiny_config(run__max_steps=20), [SetHyper("run.on_nonfinite", "skip")])
    assert of_type(events, "HyperChanged")[0].new == "skip"
    assert final(events).reason == "completed"  # stop would have ended it at step 5


# --- rollback ----------------------------------------------------------------------


def test_rollback_restores_the_kept_state_and_lowers_the_lr():
    config = tiny_config(run__on_nonfinite="rollback", run__max_steps=200)
    trainer = Trainer(config)
    for _ in range(ROLLBACK_KEEP_EVERY):
        trainer.train_step()
    # The state the next step starts from is the one kept (its loss will be finite).
    kept_weights = weights(trainer)
    kept_moments = [trainer.optimizer.state[p]["exp_avg"].clone()
                    for p in trainer.model.parameters()]
    for _ in range(2):
        trainer.train_step()
    with nan_output(trainer):
        trainer.train_step()
    bad_step = ROLLBACK_KEEP_EVERY + 3
    assert trainer.nonfinite.update_skipped and trainer.step == bad_step
    assert not same(weights(trainer), kept_weights)  # two good steps were taken since

    events, must_stop = trainer.nonfinite.recover(bad_step)
    assert not must_stop
    changed, notice = events
    assert same(weights(trainer), kept_weights)
    moments = [trainer.optimizer.state[p]["exp_avg"] for p in trainer.model.parameters()]
    assert same(moments, kept_moments)
    assert changed.key == "optim.lr" and changed.old == config.optim.lr
    assert changed.rollback  # the flag the app tells a rollback by (not the note's words)
    assert changed.new == pytest.approx(config.optim.lr * ROLLBACK_LR_FACTOR)
    assert changed.note == (f"rollback to step {ROLLBACK_KEEP_EVERY} after a non-finite "
                            f"loss at step {bad_step}")
    assert trainer.changes[-1]["why"] == changed.note  # recorded like any live change
    assert notice.level == "warning" and f"rollback 1 of {ROLLBACK_MAX}" in notice.message

    # The next step runs at the lowered lr; training on does not touch the kept copy,
    # so a second rollback lands on it again.
    trainer.train_step()
    assert trainer.metrics.lrs[-1] == pytest.approx(changed.new)
    with nan_output(trainer):
        trainer.train_step()
    trainer.nonfinite.recover(trainer.step)
    assert same(weights(trainer), kept_weights)


def test_the_good_state_is_refreshed_only_from_finite_steps():
    trainer = Trainer(tiny_config(run__on_nonfinite="rollback", run__max_steps=200))
    trainer.train_step()
    assert trainer.nonfinite.good_state is not None and trainer.nonfinite.good_state.step == 0
    for _ in range(ROLLBACK_KEEP_EVERY - 1):
        trainer.train_step()
    with nan_output(trainer):  # the step that would refresh it is non-finite
        trainer.train_step()
    assert trainer.nonfinite.good_state.step == 0
    # Other policies hold no copy (it costs memory).
    trainer.set_hyper("run.on_nonfinite", "skip")
    trainer.train_step()
    assert trainer.nonfinite.good_state is None


def test_a_rollback_run_recovers_and_goes_on(poison):
    poison.add(10)
    config = tiny_config(run__on_nonfinite="rollback", run__max_steps=30)
    events = run_loop(config)
    assert final(events).reason == "completed"
    (changed,) = of_type(events, "HyperChanged")
    assert changed.step == 10 and changed.new == pytest.approx(config.optim.lr * 0.1)
    assert changed.note == "rollback to step 0 after a non-finite loss at step 10"
    assert math.isfinite(final(events).final.val_loss)


def test_rollback_stops_after_the_max(poison):
    bad = [10 * (k + 1) for k in range(ROLLBACK_MAX + 1)]
    poison.update(bad)
    config = tiny_config(run__on_nonfinite="rollback", run__max_steps=100)
    events = run_loop(config)
    end = final(events)
    assert end.reason == "non_finite" and end.final.step == bad[-1]
    lrs = [c.new for c in of_type(events, "HyperChanged")]
    assert lrs == pytest.approx([config.optim.lr * 0.1 ** (k + 1) for k in range(ROLLBACK_MAX)])
    error = of_type(events, "Notice")[-1]
    assert error.level == "error" and f"after {ROLLBACK_MAX} rollbacks" in error.message


def test_rollback_on_a_diverging_run_lowers_the_lr_until_it_trains():
    # SGD at lr 100 blows up within a few steps; a tenth at a time it comes down to sane.
    config = tiny_config(data__dataset="sine", optim__name="sgd", optim__lr=100.0,
                         run__max_steps=200, run__on_nonfinite="rollback")
    events = run_loop(config)
    changes = of_type(events, "HyperChanged")
    assert 1 <= len(changes) <= ROLLBACK_MAX
    assert all(c.note.startswith("rollback to step ") for c in changes)
    assert final(events).reason == "completed"
    assert math.isfinite(final(events).final.val_loss)


# --- the field's documentation --------------------------------------------------------


def test_the_field_documents_the_policies_and_their_limits():
    spec = field_info("run.on_nonfinite").spec
    assert spec.choices == ("stop", "skip", "rollback", "continue") and spec.hot
    assert f"after {SKIP_MAX_IN_A_ROW} such steps in a row" in spec.doc
    assert f"every {ROLLBACK_KEEP_EVERY} steps" in spec.doc
    assert f"optim.lr by {ROLLBACK_LR_FACTOR:g}" in spec.doc
    assert f"after {ROLLBACK_MAX} rollbacks" in spec.doc
    assert "host-device sync" in spec.doc
    assert Config().run.on_nonfinite == "stop"


# --- a real explosion, instruments on and off ----------------------------------------


@pytest.mark.parametrize("every", [10, 0])
@pytest.mark.parametrize(("policy", "exit_code"), [("stop", 3), ("skip", 3), ("rollback", 0)])
def test_an_exploding_run_ends_as_its_policy_says(every: int, policy: str, exit_code: int,
                                                  tmp_path, capsys) -> None:
    """SGD at lr 50 on spirals: the weights grow past float32's range before the loss
    turns NaN (a histogram of them once crashed the engine); whatever the instruments
    do, the policy decides the end, the exit code says it and a checkpoint is left."""
    from trainlab.cli.commands import main

    code = main(["run", "--headless", "--json", "--set", "data.dataset=spirals",
                 "--set", "optim.name=sgd", "--set", "optim.lr=50",
                 "--set", f"run.on_nonfinite={policy}", "--set", f"stats.every={every}",
                 "--set", "run.max_steps=150", "--set", "run.max_epochs=0",
                 "--set", f"run.dir={tmp_path}"])
    assert code == exit_code
    (run_dir,) = tmp_path.iterdir()
    assert list((run_dir / "checkpoints").glob("step_*.pt"))
    events = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
    assert "EngineFailed" not in events
    assert events[-1] == "RunFinished"
