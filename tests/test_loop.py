"""The training loop without threads: a pre-filled command queue, events in a list."""

from __future__ import annotations

import dataclasses
import itertools
import math
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import torch

from tests.conftest import losses_by_step, of_type, run_loop, tiny_config
from trainlab.core import protocol
from trainlab.core.protocol import Pause, Resume, SaveCheckpoint, SetHyper, Step, Stop
from trainlab.engine.batches import Batches, steps_per_epoch
from trainlab.engine.checkpoint import Checkpoints, load
from trainlab.engine.data import load_dataset
from trainlab.engine.loop import Trainer
from trainlab.engine.models import build_model


def finished(events: list) -> protocol.RunFinished:
    assert type(events[-1]).__name__ == "RunFinished"
    return events[-1]


def test_loss_falls_and_run_completes():
    events = run_loop(tiny_config(run__max_steps=60, optim__lr=0.01))
    losses = losses_by_step(events)
    assert sorted(losses) == list(range(1, 61))  # every step reported exactly once
    first, last = sum(losses[s] for s in range(1, 6)), sum(losses[s] for s in range(56, 61))
    assert last < 0.5 * first
    end = finished(events)
    assert end.reason == "completed" and end.final.step == 60
    assert of_type(events, "StateChanged")[-1].state == "finished"


def test_event_order_starts_and_ends_right():
    events = run_loop(tiny_config())
    names = [type(e).__name__ for e in events]
    assert names[:2] == ["RunStarted", "StateChanged"]
    assert names[-1] == "RunFinished"
    started = events[0]
    assert started.dataset.train_size + started.dataset.val_size == 200
    assert sum(started.dataset.train_counts) == started.dataset.train_size
    assert started.model.params == sum(layer.params for layer in started.model.layers)


def test_same_seed_same_losses_other_seed_differs():
    a = losses_by_step(run_loop(tiny_config(run__seed=3)))
    b = losses_by_step(run_loop(tiny_config(run__seed=3)))
    c = losses_by_step(run_loop(tiny_config(run__seed=4)))
    assert a == b
    assert a != c


def test_commands_act_at_the_right_step():
    commands = [Pause(), Step(3), SetHyper("optim.lr", 0.5), Step(2), Stop()]
    events = run_loop(tiny_config(optim__lr=0.01, run__max_steps=100), commands)
    changed = of_type(events, "HyperChanged")
    assert [(c.step, c.key, c.old, c.new) for c in changed] == [(3, "optim.lr", 0.01, 0.5)]
    lrs = {}
    for batch in of_type(events, "MetricsBatch"):
        lrs.update(zip(batch.steps, batch.lrs, strict=True))
    assert lrs == {1: 0.01, 2: 0.01, 3: 0.01, 4: 0.5, 5: 0.5}
    paused = [(e.step, e.reason) for e in of_type(events, "StateChanged") if e.state == "paused"]
    assert paused == [(0, "pause requested"), (3, "single step done"), (5, "single step done")]
    end = finished(events)
    assert end.reason == "stopped" and end.final.step == 5


def test_bad_commands_are_rejected_and_the_run_goes_on():
    commands = [
        Step(1),  # not paused
        SetHyper("model.depth", 5),  # cold
        SetHyper("optim.lr", -1.0),  # out of range
        SetHyper("optim.lrr", 0.1),  # unknown
        SetHyper("optim.lr", float("nan")),
    ]
    events = run_loop(tiny_config(), commands)
    rejected = of_type(events, "CommandRejected")
    assert [r.command_type for r in rejected] == ["Step"] + ["SetHyper"] * 4
    assert "while paused" in rejected[0].reason
    assert "model.depth is cold" in rejected[1].reason
    assert "optim.lr = -1.0" in rejected[2].reason and "> 0" in rejected[2].reason
    assert "did you mean 'optim.lr'" in rejected[3].reason
    assert "nan" in rejected[4].reason
    assert not of_type(events, "HyperChanged")
    assert finished(events).reason == "completed"


def test_switching_optimizer_keeps_weights_and_resets_state(tmp_path: Path):
    before, after = tmp_path / "before.pt", tmp_path / "after.pt"
    commands = [
        Pause(), Step(5), SaveCheckpoint(str(before)), SetHyper("optim.name", "sgd"),
        SaveCheckpoint(str(after)), Step(1), Stop(),
    ]
    events = run_loop(tiny_config(optim__name="adam"), commands)
    change = of_type(events, "HyperChanged")[0]
    assert (change.key, change.old, change.new, change.step) == ("optim.name", "adam", "sgd", 5)
    assert "reset" in change.note and not change.rollback  # a user's change, not a rollback
    a, b = load(before), load(after)
    assert a["optimizer_name"] == "adam" and b["optimizer_name"] == "sgd"
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name])
    assert a["optimizer"]["state"]  # Adam had moments
    assert not b["optimizer"]["state"]  # the new SGD starts empty
    assert b["changes"] == [{"step": 5, "key": "optim.name", "old": "adam", "new": "sgd",
                            "why": ""}]
    assert finished(events).final.step == 6


def test_the_gradient_accumulators_live_across_steps_as_in_a_hand_written_loop():
    """Autograd caches a parameter's AccumulateGrad node only while a graph holds it. A
    plain loop's last graph lives until the next one is built; the engine's step drops
    its graph, so the Trainer keeps the nodes (and with them a C++ reference to each
    parameter), through a restore and an optimizer switch too."""
    first = Trainer(tiny_config(optim__name="adam"))
    plain = build_model(first.config.model, first.data.input_shape, 3)
    assert all(p._use_count() == 1 for p in plain.parameters())  # only Python holds these
    for _ in range(3):
        first.train_step()
    first.flush()
    trainer = Trainer(tiny_config(optim__name="adam"))
    params = list(trainer.model.parameters())  # Python references: no use count
    trainer.restore(first.checkpoint_payload())
    trainer.train_step()
    trainer.set_hyper("optim.name", "sgd")
    trainer.train_step()
    assert all(a is b for a, b in zip(trainer.model.parameters(), params, strict=True))
    assert all(p._use_count() >= 2 for p in params)  # a node holds each one
    # A new graph reaches the parameters through the nodes the Trainer keeps.
    loss = trainer.model(trainer.x_train[:4]).sum()
    reached, todo = [], [loss.grad_fn]
    while todo:
        node = todo.pop()
        if type(node).__name__ == "AccumulateGrad":
            reached.append(node)
        todo += [n for n, _ in node.next_functions if n is not None]
    assert len(reached) == len(params)
    assert all(any(n is kept for kept in trainer.grad_accumulators) for n in reached)


def test_batch_size_change_applies_to_the_epoch_length():
    # 160 training samples: at 32 an epoch is 5 steps, at 10 it is 16.
    config = tiny_config(run__max_steps=0, run__max_epochs=1)
    assert finished(run_loop(config)).final.step == 5
    events = run_loop(config, [SetHyper("data.batch_size", 10)])
    assert finished(events).final.step == 16
    events = run_loop(config, [SetHyper("data.batch_size", 500)])
    assert "larger than the 160 training samples" in of_type(events, "CommandRejected")[0].reason


def test_full_batch_is_zero_and_lbfgs_trains():
    config = tiny_config(
        data__batch_size=0, optim__name="lbfgs", optim__lr=1.0, run__max_steps=10
    )
    events = run_loop(config)
    assert events[0].steps_per_epoch == 1
    losses = losses_by_step(events)
    assert losses[10] < 0.5 * losses[1]
    assert not [n for n in of_type(events, "Notice") if n.level == "warning"]
    # A mini-batch run with L-BFGS says it expects the full batch.
    warned = of_type(run_loop(tiny_config(optim__name="lbfgs", optim__lr=1.0)), "Notice")
    assert any("expects the full batch" in n.message for n in warned)


def test_dropout_changes_live():
    events = run_loop(tiny_config(model__depth=2), [SetHyper("model.dropout", 0.5)])
    change = of_type(events, "HyperChanged")[0]
    assert change.new == 0.5 and change.note.startswith("2 dropout")


def test_changing_an_unused_hyperparameter_says_so():
    events = run_loop(tiny_config(optim__name="adam"), [SetHyper("optim.momentum", 0.5)])
    assert "adam does not use it" in of_type(events, "HyperChanged")[0].note


def test_a_change_says_why_in_its_acknowledgement_and_in_the_checkpoint(tmp_path: Path):
    path = tmp_path / "c.pt"
    events = run_loop(tiny_config(optim__name="adam"),
                      [SetHyper("optim.momentum", 0.5, "fix: plateau"),
                       SaveCheckpoint(str(path))])
    assert of_type(events, "HyperChanged")[0].note == "fix: plateau; stored; adam does not use it"
    assert load(path)["changes"][0]["why"] == "fix: plateau"


def test_evaluation_matches_an_independent_computation(tmp_path: Path):
    config = tiny_config(run__max_steps=15, run__eval_every=15)
    path = tmp_path / "end.pt"
    events = run_loop(config, [Pause(), Step(15), SaveCheckpoint(str(path)), Stop()])
    done = next(e for e in of_type(events, "EvalDone") if e.step == 15)
    # Rebuild the model and the data outside the loop and evaluate by hand.
    data = load_dataset(config.data, config.run.seed)
    model = build_model(config.model, data.input_shape, data.num_classes)
    model.load_state_dict(load(path)["model"])
    model.eval()
    with torch.no_grad():
        logits = model(data.x_val)
        loss = torch.nn.functional.cross_entropy(logits, data.y_val).item()
        accuracy = (logits.argmax(1) == data.y_val).float().mean().item()
    assert done.val_loss == pytest.approx(loss, rel=1e-5)
    assert done.val_accuracy == pytest.approx(accuracy)
    # train_loss is the mean of the per-step losses since the previous evaluation.
    losses = losses_by_step(events)
    assert done.train_loss == pytest.approx(sum(losses.values()) / len(losses))


def test_evaluates_once_per_epoch_by_default():
    events = run_loop(tiny_config(run__max_steps=0, run__max_epochs=3))
    assert [e.step for e in of_type(events, "EvalDone")] == [5, 10, 15]
    assert [e.epoch for e in of_type(events, "EvalDone")] == [1, 2, 3]


def test_early_stopping_on_a_flat_validation_loss():
    # A learning rate of 1e-30 changes nothing: every evaluation after the first is no better.
    config = tiny_config(
        optim__name="sgd", optim__lr=1e-30, run__eval_every=1, reg__early_stop_patience=3
    )
    events = run_loop(config)
    end = finished(events)
    assert end.reason == "early_stopped" and end.final.step == 4
    assert end.final.best_step == 1


def test_regression_has_no_accuracy():
    events = run_loop(tiny_config(data__dataset="sine", run__max_steps=10))
    assert events[0].loss == "mse"
    done = of_type(events, "EvalDone")[-1]
    assert done.val_accuracy is None and math.isfinite(done.val_loss)
    assert finished(events).final.val_accuracy is None


def _write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> str:
    name = f"user_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.chdir(tmp_path)
    return name


def test_non_finite_loss_stops_the_run():
    # Plain SGD at lr 100 on a regression blows up within a few steps.
    config = tiny_config(data__dataset="sine", optim__name="sgd", optim__lr=100.0,
                         run__max_steps=200)
    events = run_loop(config)
    losses = losses_by_step(events)
    first_bad = min(step for step, loss in losses.items() if not math.isfinite(loss))
    end = finished(events)
    assert end.reason == "non_finite"
    assert end.final.step < 200
    assert not math.isfinite(end.final.train_loss)  # not the last evaluation's stale mean
    assert of_type(events, "StateChanged")[-1].state == "failed"
    assert f"non-finite at step {first_bad};" in of_type(events, "Notice")[-1].message
    events = run_loop(config.with_value("run.on_nonfinite", "continue"))
    assert finished(events).reason == "completed"
    warnings = [n for n in of_type(events, "Notice") if n.level == "warning"]
    assert len(warnings) == 1  # said once, not every step


def test_user_model_that_raises_in_forward_is_reported_as_user_code(tmp_path, monkeypatch):
    name = _write_module(tmp_path, monkeypatch, """
        import torch
        class Net(torch.nn.Module):
            def __init__(self, n_in, n_out):
                super().__init__()
                self.fc = torch.nn.Linear(n_in, n_out)
                self.calls = 0
            def forward(self, x):
                self.calls += 1
                if self.calls > 3:
                    raise RuntimeError("my forward broke")
                return self.fc(x)
        def build(input_shape, num_outputs):
            return Net(input_shape[0], num_outputs)
    """)
    events = run_loop(tiny_config(model__arch="custom", model__factory=f"{name}:build"))
    failed = of_type(events, "EngineFailed")[0]
    assert failed.kind == "user_code"
    assert "my forward broke" in failed.message
    assert f"{name}.py" in failed.traceback and 'raise RuntimeError("my forward broke")' in \
        failed.traceback
    assert finished(events).reason == "failed"


def test_user_factory_that_raises_at_build(tmp_path, monkeypatch):
    name = _write_module(tmp_path, monkeypatch, """
        def build(input_shape, num_outputs):
            return 1 / 0
    """)
    events = run_loop(tiny_config(model__arch="custom", model__factory=f"{name}:build"))
    failed = of_type(events, "EngineFailed")[0]
    assert failed.kind == "user_code" and "ZeroDivisionError" in failed.message
    assert "return 1 / 0" in failed.traceback


def test_bad_input_is_a_config_failure_not_a_crash(tmp_path):
    events = run_loop(tiny_config(data__dataset=str(tmp_path / "missing.csv")))
    failed = of_type(events, "EngineFailed")[0]
    assert failed.kind == "config" and "not found" in failed.message
    assert finished(events).reason == "failed"
    events = run_loop(tiny_config(data__batch_size=1000))
    assert "data.batch_size = 1000" in of_type(events, "EngineFailed")[0].message
    events = run_loop(tiny_config(model__arch="cnn"))
    assert of_type(events, "EngineFailed")[0].kind == "config"


def test_checkpoint_is_atomic_and_loads_weights_only(tmp_path: Path):
    target = tmp_path / "ck" / "a.pt"
    events = run_loop(tiny_config(), [SaveCheckpoint(str(target))])
    saved = of_type(events, "CheckpointSaved")[0]
    assert saved.path == str(target) and saved.step == 0
    payload = torch.load(target, weights_only=True)
    assert {"model", "optimizer", "schedule", "rng", "step", "config", "changes"} <= set(payload)
    assert list(target.parent.iterdir()) == [target]  # no temporary file left behind
    # An unwritable target is refused, and the run is unaffected.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    events = run_loop(tiny_config(), [SaveCheckpoint(str(blocker / "sub" / "b.pt"))])
    assert "checkpoint not written" in of_type(events, "CommandRejected")[0].reason
    assert finished(events).reason == "completed"


def _run_with_checkpoints(config, directory: Path, commands: list | None = None) -> list:
    """Like run_loop, with the run's checkpoints in ``directory``."""
    import queue

    from trainlab.engine.loop import run

    q: queue.Queue = queue.Queue()
    for command in commands or []:
        q.put(command)
    events: list = []
    run(config, q, events.append, checkpoints=Checkpoints(directory))
    return events


def test_checkpoints_every_epoch_rotated_and_one_at_the_end(tmp_path: Path):
    # 160 training samples at 32: an epoch is 5 steps.
    config = tiny_config(run__max_steps=0, run__max_epochs=3, run__keep_checkpoints=2)
    events = _run_with_checkpoints(config, tmp_path)
    saved = of_type(events, "CheckpointSaved")
    # Epoch ends 5 and 10; the run ends at 15 (one checkpoint there, not two).
    assert [(c.step, Path(c.path).name) for c in saved] == [
        (5, "step_00000005.pt"), (10, "step_00000010.pt"), (15, "step_00000015.pt")]
    assert Checkpoints(tmp_path).steps() == [10, 15]  # run.keep_checkpoints
    first_eval = of_type(events, "EvalDone")[0]
    assert load(tmp_path / "last.pt")["step"] == 15
    # Each is written after its step's evaluation: the counters include it.
    ten = load(tmp_path / "step_00000010.pt")
    assert ten["counters"]["last_eval_step"] == 10
    assert ten["counters"]["best_val_loss"] <= first_eval.val_loss
    # Every checkpoint_every steps instead; the events order the save after its step.
    events = _run_with_checkpoints(tiny_config(run__max_steps=10, run__checkpoint_every=4),
                                   tmp_path / "every4")
    assert [c.step for c in of_type(events, "CheckpointSaved")] == [4, 8, 10]
    names = [type(e).__name__ for e in events]
    assert names.index("CheckpointSaved") > names.index("MetricsBatch")


def test_periodic_checkpoints_keep_run_checkpoint_min_seconds_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A clock that moves 1 s per step (the loop reads it a few times a step, so the
    # clock is driven by the steps' own count): epoch ends every 5 steps, and a floor
    # of 12 s lets only every third epoch end write after the first.
    import trainlab.engine.loop as loop_module
    import trainlab.engine.saver as saver_module

    trainer_steps: list[int] = []
    real_step = loop_module.Trainer.train_step

    def counted_step(self):  # type: ignore[no-untyped-def]
        trainer_steps.append(1)
        return real_step(self)

    class StepClock:
        @staticmethod
        def monotonic() -> float:
            return float(len(trainer_steps))

        perf_counter = staticmethod(time.perf_counter)

    monkeypatch.setattr(loop_module.Trainer, "train_step", counted_step)
    monkeypatch.setattr(saver_module, "time", StepClock)
    config = tiny_config(run__max_steps=0, run__max_epochs=8,
                         run__checkpoint_min_seconds=12.0)
    events = _run_with_checkpoints(config, tmp_path)
    steps = [c.step for c in of_type(events, "CheckpointSaved")]
    # Epoch ends at 5, 10, ..., 35 and the end at 40: the first (5) always writes, 20 is
    # the first 12 s after it, 35 the first 12 s after 20; the end always writes.
    assert steps == [5, 20, 35, 40]


def test_save_checkpoint_without_a_path_goes_to_the_runs_checkpoints(tmp_path: Path):
    events = run_loop(tiny_config(), [SaveCheckpoint()])
    assert "no checkpoint directory" in of_type(events, "CommandRejected")[0].reason
    assert not of_type(events, "CheckpointSaved")
    events = _run_with_checkpoints(tiny_config(run__max_steps=6),
                                   tmp_path, [Pause(), Step(3), SaveCheckpoint(), Stop()])
    saved = of_type(events, "CheckpointSaved")
    assert saved[0].step == 3 and Path(saved[0].path) == tmp_path / "step_00000003.pt"
    assert load(saved[0].path)["step"] == 3


def test_stop_why_is_the_final_reason_and_the_end_writes_a_checkpoint(tmp_path: Path):
    commands = [Pause(), Step(3), SetHyper("optim.lr", 0.05), Stop(why="SIGTERM")]
    events = _run_with_checkpoints(tiny_config(run__max_steps=50), tmp_path, commands)
    final = of_type(events, "StateChanged")[-1]
    assert (final.state, final.step, final.reason) == ("finished", 3, "SIGTERM")
    assert finished(events).reason == "stopped"
    end = of_type(events, "CheckpointSaved")[-1]
    names = [type(e).__name__ for e in events]
    assert names.index("CheckpointSaved") < names.index("RunFinished")
    assert end.step == 3 and load(end.path)["config"]["optim"]["lr"] == 0.05


def test_a_run_stopped_by_a_non_finite_loss_keeps_last_good_at_a_finite_one(tmp_path: Path):
    config = tiny_config(data__dataset="sine", optim__name="sgd", optim__lr=100.0,
                         run__max_steps=200, run__checkpoint_every=1)
    events = _run_with_checkpoints(config, tmp_path)
    assert finished(events).reason == "non_finite"
    end = finished(events).final.step
    last, good = load(tmp_path / "last.pt"), load(tmp_path / "last_good.pt")
    assert last["step"] == end and last["finite"] is False
    assert good["step"] < end and good["finite"] is True
    assert all(torch.isfinite(t).all() for t in good["model"].values())


def _disk_full_from_write(monkeypatch: pytest.MonkeyPatch, first_failing: int) -> None:
    """Checkpoint file writes fail with ENOSPC from the ``first_failing``-th file on."""
    import errno
    import os

    from trainlab.engine import checkpoint

    real_fdopen, opened = os.fdopen, []

    class Full:
        def __init__(self, f) -> None:
            self.f = f

        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.f.close()

    def fdopen(fd, mode):
        opened.append(fd)
        f = real_fdopen(fd, mode)
        return Full(f) if len(opened) >= first_failing else f

    monkeypatch.setattr(checkpoint.os, "fdopen", fdopen)


def test_a_full_disk_is_reported_and_the_run_goes_on(tmp_path: Path, monkeypatch):
    _disk_full_from_write(monkeypatch, first_failing=2)
    commands = [Pause(), Step(7), SaveCheckpoint(), Resume()]
    events = _run_with_checkpoints(tiny_config(run__max_steps=12), tmp_path, commands)
    assert [c.step for c in of_type(events, "CheckpointSaved")] == [5]
    errors = [n for n in of_type(events, "Notice") if n.level == "error"]
    assert [n.step for n in errors] == [10, 12]  # the epoch end and the run's end
    good = tmp_path / "last_good.pt"
    periodic, last = errors
    assert "checkpoint of step 10 not written (No space left on device" in periodic.message
    assert "the run goes on, retrying less often" in periodic.message
    assert "the run's last checkpoint (step 12) not written (No space left on device" \
        in last.message
    for notice in errors:
        assert f"the previous good checkpoint ({good}, of step 5) is intact" in notice.message
    rejected = of_type(events, "CommandRejected")[0]
    assert rejected.command_type == "SaveCheckpoint" and rejected.step == 7
    assert "No space left on device" in rejected.reason and "of step 5" in rejected.reason
    assert finished(events).reason == "completed" and finished(events).final.step == 12
    assert load(tmp_path / "last.pt")["step"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last.pt", "last_good.pt", "step_00000005.pt"]


def test_metrics_are_batched_not_one_event_per_step():
    # Evaluations flush too; with none until the end, only the timer decides.
    events = run_loop(tiny_config(run__max_steps=2000, data__batch_size=8,
                                  run__eval_every=100_000))
    batches = of_type(events, "MetricsBatch")
    elapsed = finished(events).final.elapsed_s
    assert len(batches) <= elapsed / 0.1 + 3  # ~10 a second at most, plus the final flush
    assert sum(len(b.steps) for b in batches) == 2000


def _walk(value: object) -> None:
    assert not isinstance(value, torch.Tensor)
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _walk(getattr(value, f.name))
    elif isinstance(value, (tuple, list)):
        for item in value:
            _walk(item)
    elif isinstance(value, dict):
        for item in value.values():
            _walk(item)
    else:
        assert value is None or isinstance(value, (int, float, str, bool)), type(value)


def test_no_tensor_in_any_event(tmp_path: Path):
    commands = [Pause(), Step(2), SetHyper("optim.lr", 0.1), SaveCheckpoint(str(tmp_path / "c.pt")),
                SetHyper("model.depth", 2), Step(1), Stop()]
    events = run_loop(tiny_config(run__eval_every=1), commands)
    kinds = {type(e).__name__ for e in events}
    assert {"RunStarted", "MetricsBatch", "EvalDone", "HyperChanged", "CheckpointSaved",
            "CommandRejected", "StateChanged", "RunFinished"} <= kinds
    for event in events:
        _walk(event)
        assert protocol.from_json(protocol.to_json(event)) is not None


def test_batches_cover_every_sample_once_per_epoch():
    batches = Batches(101, seed=0)
    seen, ends, sizes = [], 0, []
    while ends < 1:
        idx, end = batches.next(10)
        seen += idx.tolist()
        sizes.append(len(idx))
        ends += end
    assert sorted(seen) == list(range(101))
    assert sizes == [10] * 9 + [11]  # a last batch of 1 folds into the one before
    assert len(sizes) == steps_per_epoch(101, 10)
    assert steps_per_epoch(103, 10) == 11
    assert steps_per_epoch(100, 10) == 10 and steps_per_epoch(5, 1) == 5


def test_nan_in_the_last_steps_still_stops_the_run():
    # Find the step where this run diverges, then end the run exactly there: the
    # non-finite check must also follow the final flush.
    diverging = tiny_config(data__dataset="sine", optim__name="sgd", optim__lr=100.0,
                            run__max_steps=200, run__on_nonfinite="continue")
    losses = losses_by_step(run_loop(diverging))
    first_bad = min(step for step, loss in losses.items() if not math.isfinite(loss))
    config = diverging.with_values({"run.max_steps": first_bad, "run.on_nonfinite": "stop"})
    end = finished(run_loop(config))
    assert end.reason == "non_finite" and end.final.step == first_bad


def test_single_steps_are_batched_into_few_metrics_events():
    events = run_loop(tiny_config(run__max_steps=1500, run__eval_every=100_000),
                      [Pause(), Step(1500)])
    batches = of_type(events, "MetricsBatch")
    assert sum(len(b.steps) for b in batches) == 1500
    assert len(batches) <= finished(events).final.elapsed_s / 0.1 + 3


def test_stop_and_pause_cut_a_long_step_short_but_keep_order():
    events = run_loop(tiny_config(run__max_steps=10_000), [Pause(), Step(10**6), Stop()])
    # Stop was queued behind nothing else, so it cut in before the first of the steps.
    assert finished(events).reason == "stopped" and finished(events).final.step == 0
    commands = [Pause(), Step(10**6), SetHyper("optim.lr", 0.5), Stop()]
    events = run_loop(tiny_config(run__max_steps=50), commands)
    # Stop waited behind the SetHyper, which waited for the steps: the run ran out first.
    assert finished(events).reason == "completed"


def test_a_non_string_key_is_rejected_not_fatal():
    events = run_loop(tiny_config(), [SetHyper(5, 0.1)])  # type: ignore[arg-type]
    assert "expected a dotted key" in of_type(events, "CommandRejected")[0].reason
    assert finished(events).reason == "completed"


def test_a_model_that_cannot_fit_the_data_fails_before_training(tmp_path, monkeypatch):
    name = _write_module(tmp_path, monkeypatch, """
        import torch
        def three_outputs(input_shape, num_outputs):
            return torch.nn.Linear(input_shape[0], 3)
        def no_parameters(input_shape, num_outputs):
            return torch.nn.Flatten()
    """)
    events = run_loop(tiny_config(model__arch="custom", model__factory=f"{name}:three_outputs",
                                  data__classes=4))
    failed = of_type(events, "EngineFailed")[0]
    assert failed.kind == "config" and "model.factory" in failed.message
    assert "(2, 3)" in failed.message and "(batch, 4)" in failed.message
    assert not of_type(events, "MetricsBatch")
    events = run_loop(tiny_config(model__arch="custom", model__factory=f"{name}:no_parameters"))
    assert "no trainable parameters" in of_type(events, "EngineFailed")[0].message


def test_validation_features_need_a_validation_set():
    for key, value in (("reg.early_stop_patience", 2), ("schedule.name", "reduce_on_plateau")):
        config = tiny_config(data__val_fraction=0.0).with_value(key, value)
        failed = of_type(run_loop(config), "EngineFailed")[0]
        assert failed.kind == "config" and "needs a validation set" in failed.message


def test_on_the_cpu_a_non_finite_loss_withholds_its_update():
    from trainlab.engine.loop import Trainer

    trainer = Trainer(tiny_config(data__dataset="sine", optim__name="sgd", optim__lr=100.0))
    before = None
    while not trainer.nonfinite.update_skipped:
        assert trainer.step < 200, "the run never diverged"
        before = [p.detach().clone() for p in trainer.model.parameters()]
        trainer.train_step()
    after = list(trainer.model.parameters())
    assert all(torch.isfinite(p).all() for p in after)  # the last good weights are kept
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert trainer.nonfinite.first_nonfinite_step == trainer.step
    # With on_nonfinite = continue the update is applied as before.
    trainer = Trainer(tiny_config(data__dataset="sine", optim__name="sgd", optim__lr=100.0,
                                  run__on_nonfinite="continue"))
    for _ in range(20):
        trainer.train_step()
    assert not trainer.nonfinite.update_skipped


@pytest.mark.slow
def test_unlikely_settings_are_warned_about_at_the_start():
    events = run_loop(tiny_config(run__threads=1024, schedule__warmup_steps=50,
                                  run__max_steps=20))
    messages = [n.message for n in of_type(events, "Notice") if n.level == "warning"]
    assert any("run.threads = 1024" in m for m in messages)
    assert any("warmup_steps = 50 covers the whole run (20 steps)" in m for m in messages)


def test_nan_steps_make_the_interval_mean_nan_and_final_matches_eval():
    config = tiny_config(data__dataset="sine", optim__name="sgd", optim__lr=100.0,
                         run__on_nonfinite="continue", run__max_steps=20, run__eval_every=10)
    events = run_loop(config)
    evals = of_type(events, "EvalDone")
    assert math.isnan(evals[-1].train_loss)  # NaN steps are not skipped in the mean
    healthy = run_loop(tiny_config(run__eval_every=7))
    # One meaning of train_loss: the final figure is the last evaluation's interval mean.
    assert finished(healthy).final.train_loss == of_type(healthy, "EvalDone")[-1].train_loss


def test_a_built_in_dataset_keeps_its_task_whatever_its_size():
    events = run_loop(tiny_config(data__dataset="spirals", data__classes=500,
                                  data__samples=100, run__max_steps=2))
    assert events[0].dataset.task == "classification" and events[0].loss == "cross_entropy"


def test_a_user_model_that_fails_on_the_data_is_user_code(tmp_path, monkeypatch):
    name = _write_module(tmp_path, monkeypatch, """
        import torch
        def wrong_inputs(input_shape, num_outputs):
            return torch.nn.Sequential(torch.nn.Linear(3, num_outputs))
    """)
    events = run_loop(tiny_config(model__arch="custom", model__factory=f"{name}:wrong_inputs"))
    failed = of_type(events, "EngineFailed")[0]
    assert failed.kind == "user_code" and "batch of shape (2, 2)" in failed.message
    assert "mat1 and mat2" in failed.message


def test_without_a_validation_set_the_final_train_loss_is_the_run_mean():
    events = run_loop(tiny_config(data__val_fraction=0.0, run__max_steps=12))
    losses = losses_by_step(events)
    assert not of_type(events, "EvalDone")
    assert finished(events).final.train_loss == pytest.approx(sum(losses.values()) / 12)


def test_a_user_code_failure_mid_run_records_every_completed_step_first() -> None:
    """The losses of the steps since the last metrics batch reach the stream before the
    failure (the store once ended 9 steps short of RunFinished), and the failure names
    the last completed step."""
    config = tiny_config(model__arch="custom",
                         model__factory="tests.loop_user_code:fails_later",
                         run__max_steps=500, stats__every=0)
    events = run_loop(config)
    (failed,) = of_type(events, "EngineFailed")
    finished = of_type(events, "RunFinished")[-1]
    assert failed.kind == "user_code" and "boom in training forward" in failed.message
    last = finished.final.step
    assert 0 < last < 500
    assert f"after step {last}," in failed.message
    losses = losses_by_step(events)
    assert sorted(losses) == list(range(1, last + 1))
    assert events.index(failed) > max(events.index(b) for b in of_type(events, "MetricsBatch"))


def test_each_step_carries_the_epoch_its_batch_came_from() -> None:
    """200 samples at batch 32 (less the validation share): a batch of metrics crosses
    epoch ends, and each step keeps its own epoch, counted by an independent tally."""
    config = tiny_config(run__max_steps=60, run__eval_every=1000)  # no eval flush
    per_epoch = Trainer(config).steps_per_epoch()
    events = run_loop(config)
    epochs = {}
    for batch in of_type(events, "MetricsBatch"):
        assert len(batch.epochs) == len(batch.steps)
        epochs.update(zip(batch.steps, batch.epochs, strict=True))
    assert epochs == {step: (step - 1) // per_epoch for step in range(1, 61)}
    # The batches really crossed epoch ends (else the old single epoch would pass too).
    assert any(len(set(b.epochs)) > 1 for b in of_type(events, "MetricsBatch"))


def test_a_disk_that_stays_full_is_said_once_retried_less_often_and_its_recovery_said(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoint_every = 1 on a full disk: one error, attempts backing off to at most one
    per CHECKPOINT_RETRY_MAX_S, then one notice when a checkpoint is written again."""
    import errno
    import os
    import types

    from trainlab.engine import saver
    from trainlab.engine.checkpoint import Checkpoints

    clock = [0.0]

    def monotonic() -> float:  # 0.05 s a call: deterministic, whatever the machine
        clock[0] += 0.05
        return clock[0]

    monkeypatch.setattr(saver, "time", types.SimpleNamespace(
        monotonic=monotonic, perf_counter=time.perf_counter))
    full_until_step, attempts = 700, []
    real_save = Checkpoints.save

    def save(self, payload, step, finite):
        attempts.append((step, clock[0]))
        if step < full_until_step:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, payload, step, finite)

    monkeypatch.setattr(Checkpoints, "save", save)
    config = tiny_config(run__max_steps=800, run__checkpoint_every=1,
                         run__checkpoint_min_seconds=0.0, run__eval_every=100_000)
    events = _run_with_checkpoints(config, tmp_path)
    notices = of_type(events, "Notice")
    errors = [n for n in notices if n.level == "error"]
    assert len(errors) == 1 and "not written (No space left on device" in errors[0].message
    failed = [t for step, t in attempts if step < full_until_step]
    waits = [b - a for a, b in itertools.pairwise(failed)]
    # Each wait at least the backoff's (doubling from CHECKPOINT_RETRY_S, capped).
    for k, wait in enumerate(waits):
        assert wait >= min(saver.CHECKPOINT_RETRY_MAX_S, saver.CHECKPOINT_RETRY_S * 2 ** k)
    assert len(failed) < 20  # not one per step (699 due)
    (again,) = [n for n in notices if n.message.startswith("checkpoints are written again")]
    first_written = min(step for step, _ in attempts if step >= full_until_step)
    assert again.step == first_written and again.level == "info"
    assert f"after {len(failed)} failed since step 1" in again.message
    saved = [c.step for c in of_type(events, "CheckpointSaved")]
    assert saved == list(range(first_written, 801))  # every step again once recovered


@pytest.mark.parametrize("path", ["../evil.pt", "../../../../tmp/evil.pt", "/tmp/evil.pt",
                                  "sub/x.pt", "..", ".", " ", "last.pt", "last_good.pt",
                                  "step_00000003.pt", "x.pt.tmp"])
def test_a_served_runs_commanded_checkpoint_stays_in_its_checkpoints(tmp_path: Path,
                                                                     path: str) -> None:
    """SaveCheckpoint arrives over the run's socket: only a plain file name, never one of
    the run's own files, and nothing is written anywhere else."""
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    events = _run_with_checkpoints(tiny_config(run__max_steps=3), checkpoints,
                                   [Pause(), Step(3), SaveCheckpoint(path), Stop()])
    (rejected,) = of_type(events, "CommandRejected")
    assert rejected.reason.startswith(f"SaveCheckpoint.path = {path!r}: ")
    assert "expected a file name" in rejected.reason
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "last.pt", "last_good.pt", "step_00000003.pt"]


def test_a_served_runs_commanded_checkpoint_is_written_under_its_name(tmp_path: Path) -> None:
    events = _run_with_checkpoints(tiny_config(run__max_steps=3), tmp_path,
                                   [Pause(), Step(2), SaveCheckpoint("before-lr.pt"), Stop()])
    saved = of_type(events, "CheckpointSaved")[0]
    assert saved.path == str(tmp_path / "before-lr.pt") and saved.step == 2
    assert load(tmp_path / "before-lr.pt")["step"] == 2
