"""The training loop: ``run(config, commands, emit)``, a plain blocking call.

``run`` reads top to bottom: build the run, then at every step boundary apply the
commands, take a step, flush the metrics when due, evaluate when due, ask the hooks
whether the run must end, write a periodic checkpoint, and at the end flush and write
the last checkpoint. Commands are drained only at step boundaries, so every change
applies to a whole step and is acknowledged by an event; while paused the loop blocks
on the command queue (no busy wait). The loop knows nothing of who drives it: a thread
beside the app, a served process, or a test with a pre-filled queue.

What watches or guards the training plugs in through the hook seam
(``trainlab.engine.hooks``): the instruments, the metrics batch, the non-finite policy,
early stopping, the plateau schedule and the checkpoint saver. Building the run is
``trainlab.engine.build``; its checkpoint payload is ``trainlab.engine.run_state``.

Costs, per step: no host-device sync. Losses stay on the device and cross to the host
together when a metrics batch is due (``trainlab.engine.metrics``), which is
one sync per batch, not one per step. The exception is run.on_nonfinite = skip or
rollback: they read each step's loss before its update.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import queue
import time
import traceback
from typing import Any, assert_never

import torch

from trainlab.core import protocol
from trainlab.core.config import Config, ConfigError, field_info
from trainlab.core.protocol import (
    Command,
    CommandRejected,
    Emit,
    EngineFailed,
    EvalDone,
    Event,
    FinalMetrics,
    HyperChanged,
    NonFiniteDetected,
    Notice,
    RunFinished,
    RunStarted,
    StateChanged,
)
from trainlab.doctor.detectors import Diagnostics
from trainlab.doctor.lr_find import LrRangeError, check_range, find_lr
from trainlab.engine import run_state
from trainlab.engine.batches import Batches
from trainlab.engine.build import BuiltRun, check_batch_size, usable_cores
from trainlab.engine.checkpoint import Checkpoints
from trainlab.engine.control import Control, RunCommand
from trainlab.engine.data import augment_batch, validate_augment
from trainlab.engine.hooks import Flushed, Hook, Hooks
from trainlab.engine.metrics import StepMetrics
from trainlab.engine.models import model_summary, set_dropout
from trainlab.engine.nonfinite import NonFinitePolicy
from trainlab.engine.optim import (
    OPTIMIZERS,
    LRSchedule,
    build_optimizer,
    set_lr,
    update_hyperparameters,
)
from trainlab.engine.optimizer_step import NonFiniteLoss, make_closure
from trainlab.engine.precision import ScalerReport
from trainlab.engine.probe import measure
from trainlab.engine.saver import CheckpointSaver
from trainlab.engine.stats import Instruments, first_nonfinite
from trainlab.engine.tracking import TrackedSteps
from trainlab.engine.usercode import UserCodeError, raised_in_user_code

EVAL_BATCH = 4096
"""Validation runs in chunks of this many samples to bound memory on big sets."""


def _discard(event: Event) -> None:
    """The events of a Trainer driven by hand (tests, tools): nobody listens."""


def _grad_accumulator(parameter: torch.Tensor) -> Any:
    """The AccumulateGrad node autograd adds ``parameter``'s gradients with."""
    node = parameter.view_as(parameter).grad_fn  # a view's node leads to the parameter's
    assert node is not None  # requires_grad, under enable_grad: there is one
    return node.next_functions[0][0]


class Trainer(BuiltRun):
    """The live state of one run: what was built, the step, and the counters.

    Build errors raise from the constructor; ``run`` turns them into events. ``emit``
    receives the events the hooks raise (the non-finite policy, the saver);
    ``checkpoints`` is where the run's own checkpoints go (None: SaveCheckpoint needs a
    path, and nothing else is written).
    """

    def __init__(self, config: Config, emit: Emit = _discard,
                 checkpoints: Checkpoints | None = None) -> None:
        super().__init__(config)
        self.emit = emit
        self.changes: list[dict[str, Any]] = []
        self.weights = [p for p in self.model.parameters() if p.requires_grad and p.dim() > 1]
        """What the L1 penalty covers: weights, not biases."""
        with torch.enable_grad():  # a Trainer built under no_grad still gets them
            self.grad_accumulators = [_grad_accumulator(p) for p in self.model.parameters()
                                      if p.requires_grad]
        """Each trainable parameter's AccumulateGrad node, kept for the run. Autograd
        caches a parameter's node only while a graph holds it, so a step whose graph is
        gone by the next forward makes all of them anew (and while none exists, torch
        takes its slow path, the GIL included, for every C++ reference an op takes to a
        parameter). A hand-written loop's ``loss`` keeps its last graph alive until the
        next one is built; the engine's step drops its graph, so it keeps the nodes.
        Measured by instruction count (callgrind): 43k fewer a step on the benchmark's
        CNN (of 24.3M), 13k fewer on a 2-layer MLP."""

        self.instruments = Instruments(self.model, self.x_train[:2], config.stats)
        self.batches = Batches(len(self.x_train), config.run.seed, self.device)
        self.schedule = LRSchedule(config.schedule, self.total_steps())
        """The lr schedule over the run's length (``total_steps``: from the data order)."""
        self.augment_generator = torch.Generator(self.device).manual_seed(config.run.seed + 1)
        self.last_batch: tuple[torch.Tensor, torch.Tensor] | None = None

        self.best_val_loss = math.inf
        self.best_step: int | None = None
        self.evals_without_improvement = 0
        self.last_eval_step: int | None = None
        self.last_val_loss: float | None = None
        self.last_val_accuracy: float | None = None
        self.epoch_ended = False
        self.resumed_from: int | None = None
        """The step ``restore`` continued from (None: this run started from scratch)."""

        self.tracked = TrackedSteps(self.instruments)
        self.metrics = StepMetrics()
        self.nonfinite = NonFinitePolicy(self)
        self.saver = CheckpointSaver(self, checkpoints)
        self.hooks = Hooks([self.tracked, self.metrics, self.nonfinite, PlateauSchedule(self),
                            EarlyStopping(self), self.saver])
        if self.precision.scaler is not None:
            self.hooks.add(ScalerReport(self.precision, self))
        """In the order they act at each phase: the instruments and the metrics see a
        step before the non-finite policy judges it; the saver acts last, so the
        checkpoint holds what the others did."""

    # --- where the run ends ----------------------------------------------------------

    def total_steps(self) -> int:
        """Where the run ends: the sooner of run.max_steps and run.max_epochs."""
        run = self.config.run
        limits = [run.max_steps] if run.max_steps else []
        if run.max_epochs:
            epochs_after_this = run.max_epochs - self.batches.epoch - 1
            left = self.batches.steps_left_in_epoch(self.batch_size)
            left += max(0, epochs_after_this) * self.steps_per_epoch()
            limits.append(self.step + (left if epochs_after_this >= 0 else 0))
        return min(limits)

    def finished(self) -> bool:
        """Has the run reached run.max_steps or run.max_epochs?"""
        run = self.config.run
        return bool(
            (run.max_steps and self.step >= run.max_steps)
            or (run.max_epochs and self.batches.epoch >= run.max_epochs)
        )

    def started_event(self) -> RunStarted:
        """Everything about the built run that a viewer needs up front."""
        d = self.data
        example = self.x_train[:2]
        layers = tuple(
            protocol.LayerInfo(r.name, r.kind, tuple(r.output_shape), r.params)
            for r in model_summary(self.model, example)
        )
        params = sum(p.numel() for p in self.model.parameters())
        return RunStarted(
            config=self.config.to_dict(),
            model=protocol.ModelInfo(self.config.model.arch, layers, params),
            dataset=protocol.DatasetInfo(
                name=d.name,
                task=d.task,
                input_shape=tuple(d.input_shape),
                num_classes=d.num_classes,
                train_size=len(d.x_train),
                val_size=len(d.x_val),
                class_names=tuple(d.class_names),
                train_counts=tuple(d.class_counts("train")),
                val_counts=tuple(d.class_counts("val")),
            ),
            loss=self.objective.name,
            device=str(self.device),
            threads=torch.get_num_threads(),
            steps_per_epoch=self.steps_per_epoch(),
            total_steps=self.total_steps(),
            resumed_from_step=self.resumed_from,
        )

    # --- the step ----------------------------------------------------------------------

    def train_step(self) -> int:
        """One optimizer step on the next batch, through the hooks; returns its size.

        No host-device sync unless a hook reads the loss (the non-finite policy under
        skip or rollback) or the step is tracked by the instruments (then one).
        """
        cfg, step = self.config, self.step + 1
        epoch = self.batches.epoch  # the batch's epoch, before next() may end it
        idx, self.epoch_ended = self.batches.next(self.batch_size)
        x, target = self.x_train[idx], self.t_train[idx]
        if cfg.data.augment:
            x = augment_batch(x, cfg.data, self.data.is_image, self.augment_generator)
        self.last_batch = (x, target)
        lr = cfg.optim.lr * self.schedule.factor(self.step)
        set_lr(self.optimizer, lr)
        size: int = idx.shape[0]  # not len(idx): Tensor.__len__ is Python, ~9 us a step cold
        self.metrics.record(lr, epoch, size)

        hooks = self.hooks
        hooks.before_step(step)
        data_losses: list[torch.Tensor] = []
        closure = make_closure(
            self.model, self.optimizer, self.objective.fn, self.weights, cfg.reg,
            x, target, data_losses, after_backward=self._after_backward,
            after_first=self._after_loss, precision=self.precision)
        try:
            self.precision.step(self.optimizer, closure)
            applied = True
        except NonFiniteLoss:  # a hook withheld the update
            applied = False
        self.step = step
        hooks.after_step(step, data_losses[0], applied)
        return size

    def _after_loss(self, loss: torch.Tensor) -> None:
        self.hooks.after_loss(self.step + 1, loss)

    def _after_backward(self) -> None:
        self.hooks.after_backward(self.step + 1)

    def flush(self) -> Flushed:
        """Ship the losses and snapshots since the last flush (one host-device sync for
        all the losses): the metrics batch first, so a viewer has the loss before the
        snapshots of its steps; then the hooks see what was flushed."""
        batch, counted = self.metrics.flush(self.step, self.batches.epoch)
        flushed = Flushed(batch, tuple(counted), tuple(self.tracked.take()))
        if batch is not None:
            self.emit(batch)
        for snapshot in flushed.snapshots:
            self.emit(snapshot)
        self.hooks.at_flush(flushed)
        return flushed

    def locate_nonfinite(self, step: int) -> NonFiniteDetected:
        """Which layer turned non-finite first, from a measured pass on the last batch."""
        where = None
        if self.last_batch is not None:
            _, snapshot = measure(self, self.instruments, *self.last_batch, self.step)
            where = first_nonfinite(snapshot)
        if where is None:
            return NonFiniteDetected(step, "", "loss", f"the loss turned non-finite at step "
                                     f"{step}; every layer's values are finite")
        layer, kind = where
        if kind == "weight":
            # An earlier update (with a huge but finite loss) or, on a GPU, this one.
            return NonFiniteDetected(
                step, layer, kind,
                f"the loss turned non-finite at step {step}, when the weights of {layer} "
                "(the first such layer) already were: an update overflowed them. Lower "
                "optim.lr or set reg.clip_norm")
        return NonFiniteDetected(step, layer, kind,
                                 f"{kind} of layer {layer} turned non-finite (step {step})")

    # --- evaluation ----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> EvalDone | None:
        """Validation loss (and accuracy) in eval mode; None without a validation set."""
        n = len(self.x_val)
        if n == 0:
            return None
        self.model.eval()
        try:
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device)
            for start in range(0, n, EVAL_BATCH):
                out = self.model(self.x_val[start : start + EVAL_BATCH])
                t = self.t_val[start : start + EVAL_BATCH]
                loss_sum += self.objective.fn(out, t) * len(out)
                if self.objective.predict is not None:
                    y = self.y_val[start : start + EVAL_BATCH]
                    correct += (self.objective.predict(out) == y).sum()
            val_loss, n_correct = torch.stack([loss_sum / n, correct]).tolist()  # one sync
        finally:
            self.model.train()
        accuracy = n_correct / n if self.objective.predict is not None else None
        train_loss = self.metrics.close_interval()
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_step = val_loss, self.step
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        self.last_eval_step = self.step
        self.last_val_loss, self.last_val_accuracy = val_loss, accuracy
        return EvalDone(
            step=self.step,
            epoch=self.batches.epoch,
            val_loss=val_loss,
            val_accuracy=accuracy,
            train_loss=train_loss,
            best_val_loss=self.best_val_loss,
        )

    def validate(self) -> None:
        """Flush (the evaluation's train_loss covers every step up to here), evaluate,
        emit the result and tell the hooks; the evaluation's time is not throughput."""
        self.flush()
        result = self.evaluate()
        self.metrics.restart_clock()
        if result is not None:
            self.emit(result)
            self.hooks.at_eval(result)

    def eval_due(self) -> bool:
        """Is an evaluation due after the step just taken (run.eval_every, or epoch end)?"""
        every = self.config.run.eval_every
        due = self.step % every == 0 if every else self.epoch_ended
        return due and self.last_eval_step != self.step

    def start_notices(self) -> list[Notice]:
        """Settings that are allowed but probably not meant, said once at the start."""
        notices = []
        cores, threads = usable_cores(), self.config.run.threads
        if threads > cores:
            notices.append(Notice(0, "warning", f"run.threads = {threads} but this process "
                                  f"can use {cores} cores: extra threads slow torch down"))
        warmup, total = self.config.schedule.warmup_steps, self.total_steps()
        if warmup >= total:
            notices.append(Notice(0, "warning", f"schedule.warmup_steps = {warmup} covers the "
                                  f"whole run ({total} steps): the schedule never starts"))
        if notice := self.full_batch_notice():
            notices.append(notice)
        return notices

    def full_batch_notice(self) -> Notice | None:
        """A warning when a full-batch optimizer (L-BFGS, Rprop) gets mini-batches."""
        name = self.config.optim.name
        if not OPTIMIZERS[name].full_batch or self.batch_size == len(self.x_train):
            return None
        return Notice(
            self.step,
            "warning",
            f"optim.name = {name} expects the full batch (data.batch_size = 0); "
            f"it gets batches of {self.batch_size} of {len(self.x_train)}",
        )

    # --- checkpoints ------------------------------------------------------------------

    def values_finite(self) -> bool:
        """Are the weights, buffers and optimizer state all finite (last_good.pt's test)?

        A sum per tensor on its device and one host sync for all: a finite sum means
        every element is finite (a NaN or inf makes the sum NaN or inf). Only a tensor
        whose sum is not finite (or overflowed: finite values beyond ~1e38 in total) is
        checked element by element. About 1 ms for 2 M parameters and Adam's moments on
        one CPU core, a tenth of ``isfinite().all()`` per tensor (measured).
        """
        tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        for state in self.optimizer.state.values():
            tensors += [v for v in state.values()
                        if isinstance(v, torch.Tensor) and v.is_floating_point()]
        sums = torch.stack([t.detach().sum() for t in tensors])
        suspects = (~torch.isfinite(sums)).nonzero().flatten().tolist()  # the one sync
        return all(bool(torch.isfinite(tensors[i]).all()) for i in suspects)

    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything a new process needs to continue this run exactly
        (``trainlab.engine.run_state.payload``)."""
        return run_state.payload(self)

    def restore(self, payload: dict[str, Any]) -> list[str]:
        """Continue from ``checkpoint_payload()``'s output before the first step; returns
        what a fork started afresh (``trainlab.engine.run_state.restore``)."""
        return run_state.restore(self, payload)

    # --- commands ---------------------------------------------------------------------

    def apply(self, command: RunCommand) -> None:
        """Apply a command that changes the run itself, at a step boundary, and emit its
        acknowledgement (the change, or CommandRejected with the reason)."""
        timed_aside = isinstance(command, protocol.FindLr)
        if timed_aside or isinstance(command, protocol.SaveCheckpoint):
            self.flush()  # the range test is timed aside; a checkpoint holds the losses
        self._apply(command)
        if timed_aside:
            self.restart_clock()  # its seconds are not training throughput
        if isinstance(command, protocol.SetHyper | protocol.FindLr):
            self.saver.state_changed()  # a range test draws dropout masks from the global RNG

    def _apply(self, command: RunCommand) -> None:
        def reject(reason: str) -> None:
            self.emit(CommandRejected(type(command).__name__, reason, self.step))

        match command:
            case protocol.SetHyper(key=key, value=value, note=note):
                if not isinstance(key, str):
                    return reject(f"SetHyper.key = {key!r}: expected a dotted key such as "
                                  "optim.lr")
                try:
                    self.emit(self.set_hyper(key, value, str(note)))
                except ConfigError as exc:
                    return reject(str(exc))
                if key in ("optim.name", "data.batch_size") and (
                    notice := self.full_batch_notice()
                ):
                    self.emit(notice)
            case protocol.RequestSnapshot(histograms=histograms):
                self.instruments.requested = histograms  # answered by the snapshot
            case protocol.SaveCheckpoint(path=path):
                if not isinstance(path, str):
                    return reject(f"SaveCheckpoint.path = {path!r}: expected a file path or "
                                  "'' (the run's checkpoints)")
                self.saver.command(path)
            case protocol.FindLr(start=start, end=end, steps=steps):
                try:
                    check_range(start, end, steps)
                except LrRangeError as exc:
                    return reject(f"FindLr.{exc}")
                try:  # a copy trains: whatever fails there, the run itself is as it was
                    self.emit(find_lr(self, start, end, steps))
                except Exception as exc:
                    return reject(f"lr range test failed ({type(exc).__name__}: {exc}); the "
                                  "run goes on")
            case _:
                assert_never(command)
        return None

    def restart_clock(self) -> None:
        """Throughput counts training only, not pauses, evaluations or range tests."""
        self.metrics.restart_clock()

    # --- live changes --------------------------------------------------------------

    def set_hyper(self, key: str, value: Any, why: str = "") -> HyperChanged:
        """Apply a hot field from the next step; raises ConfigError if not allowed.

        ``why`` (e.g. "fix: exploding_gradients") is kept in the change log and leads
        the acknowledgement's note.

        Everything that can fail runs before the new config is kept, so a rejected
        change leaves the run exactly as it was.
        """
        if not field_info(key).spec.hot:
            raise ConfigError(f"{key} is cold: it cannot change while training (restart or fork)")
        old = self.config.get(key)
        new_config = self.config.with_value(key, value)
        new = new_config.get(key)
        note = ""
        if key == "data.batch_size":
            check_batch_size(new_config, len(self.x_train))
        elif key.startswith("data.augment"):
            validate_augment(new_config.data, self.data.is_image, self.data.input_shape)
        elif key == "optim.name":
            # Keep the weights, start the new optimizer from empty state.
            self.optimizer = build_optimizer(self.model.parameters(), new_config.optim)
            # with_value moved optim.lr/eps to the new optimizer's own unless they were set.
            note = "; ".join(filter(None, (new_config.optim.describe_switch(self.config.optim),
                                           "optimizer state reset")))
        elif key.startswith("optim."):
            update_hyperparameters(self.optimizer, new_config.optim)
            entry = OPTIMIZERS[new_config.optim.name]
            if key != "optim.lr" and key.removeprefix("optim.") not in entry.uses:
                note = f"stored; {new_config.optim.name} does not use it"
        elif key == "model.dropout":
            note = f"{set_dropout(self.model, new)} dropout layer(s) set"
        self.config = new_config
        self.instruments.cfg = new_config.stats
        if key in ("data.batch_size", "run.max_steps", "run.max_epochs"):
            self.schedule.total_steps = max(1, self.total_steps())
        self.changes.append({"step": self.step, "key": key, "old": old, "new": new, "why": why})
        return HyperChanged(self.step, key, old, new, "; ".join(filter(None, (why, note))))


class PlateauSchedule(Hook):
    """schedule.name = reduce_on_plateau: each validation loss feeds the schedule, and a
    lowered factor is said."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def at_eval(self, result: EvalDone) -> None:
        trainer = self.trainer
        if trainer.schedule.observe(result.val_loss):
            factor = trainer.schedule.plateau_factor
            trainer.emit(Notice(trainer.step, "info",
                                f"reduce_on_plateau: lr factor now {factor:g}"))


class EarlyStopping(Hook):
    """reg.early_stop_patience: the run ends after that many evaluations without a better
    validation loss (read at every step: the field is hot)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def should_end(self, step: int) -> str | None:
        trainer = self.trainer
        patience = trainer.config.reg.early_stop_patience
        if not patience or trainer.evals_without_improvement < patience:
            return None
        trainer.emit(Notice(step, "info",
                            f"early stop: no better validation loss in {patience} evaluations "
                            f"(best {trainer.best_val_loss:.4g} at step {trainer.best_step})"))
        return "early_stopped"


def run(config: Config, commands: queue.Queue[Command], emit: Emit, *,
        checkpoints: Checkpoints | None = None,
        start_from: dict[str, Any] | None = None) -> RunFinished:
    """Build and train the run described by ``config``; returns the RunFinished it emitted.

    ``commands`` is drained at every step boundary; ``emit`` receives every event.
    Never raises for a bad config or failing user code: those become ``EngineFailed``.

    ``checkpoints``: where the run's own checkpoints go (every run.checkpoint_every
    steps, 0 meaning every epoch end, and one at every end of the run; SaveCheckpoint
    without a path). ``start_from``: a checkpoint payload to continue from, restored
    before the first step (``Trainer.restore``): RunStarted.resumed_from_step gives its
    step, and the events go on from there. A payload that does not fit ``config`` is
    an EngineFailed of kind config.
    """
    started = time.monotonic()
    emit = _diagnosed(emit, Diagnostics(config))
    trainer: Trainer | None = None
    try:
        # Build: the data, the model, everything that trains it, and the hooks.
        trainer = Trainer(config, emit, checkpoints)
        notes = trainer.restore(start_from) if start_from is not None else []
        hooks = trainer.hooks
        control = Control(commands, trainer)
        emit(trainer.started_event())
        how = "started" if start_from is None else f"resumed from step {trainer.step}"
        emit(StateChanged("running", trainer.step, how))
        for note in notes:
            emit(Notice(trainer.step, "info", note))
        for notice in trainer.start_notices():
            emit(notice)

        while True:
            # Commands, at the step boundary (waiting here while paused).
            control.at_boundary()
            if control.stop_requested or trainer.finished():
                if trainer.last_eval_step != trainer.step:
                    trainer.validate()
                trainer.flush()
                # A non-finite loss the last flush found decides how the run ends.
                reason = trainer.nonfinite.should_end(trainer.step) or (
                    "stopped" if control.stop_requested else "completed")
                break
            # One step; then, when due, the metrics, the evaluation and the checkpoint.
            trainer.train_step()
            steps_done = control.spend_step()  # a Step(n) command's last step
            if hooks.flush_due(trainer.step) or steps_done:
                trainer.flush()
            if trainer.eval_due():
                trainer.validate()
            # Only a flush brings losses to the host, so this check costs no sync of its own.
            if ending := hooks.should_end(trainer.step):  # a non-finite loss, early stopping
                reason = ending
                break
            hooks.at_boundary(trainer.step)  # the periodic checkpoint
            if steps_done:
                emit(StateChanged("paused", trainer.step, "single step done"))

        # The end: every end flushes and writes a checkpoint.
        trainer.flush()
        hooks.at_end(reason)
    except Exception as exc:  # bad input, user code, or our own bug: report, never raise
        step = trainer.step if trainer else 0
        if trainer is not None:
            # The losses and snapshots of the steps completed since the last flush go
            # out before the failure is reported (the store would end steps short of it).
            # Best effort: a device that broke may not give them back, and the failure must.
            with contextlib.suppress(Exception):
                trainer.flush()
        emit(describe_failure(exc, step))
        emit(StateChanged("failed", step, str(exc)))
        finished = RunFinished("failed", _final(trainer, started))
        emit(finished)
        return finished
    state = "failed" if reason == "non_finite" else "finished"
    why = control.stop_why if reason == "stopped" and control.stop_why else reason
    emit(StateChanged(state, trainer.step, why))
    finished = RunFinished(reason, _final(trainer, started))
    emit(finished)
    return finished


def _final(trainer: Trainer | None, started: float) -> FinalMetrics:
    if trainer is None:
        return FinalMetrics.none_yet(time.monotonic() - started)
    # The mean over the steps no evaluation has covered yet (a run stopped by a NaN, or
    # one without a validation set), else the last evaluation's: EvalDone's meaning.
    # Steps skip or rollback withheld are in neither (their Notice reports them).
    train_loss = trainer.metrics.interval_mean()
    return FinalMetrics(
        step=trainer.step,
        epoch=trainer.batches.epoch,
        train_loss=trainer.metrics.last_train_loss if train_loss is None else train_loss,
        val_loss=trainer.last_val_loss,
        val_accuracy=trainer.last_val_accuracy,
        best_val_loss=trainer.best_val_loss if trainer.best_step is not None else None,
        best_step=trainer.best_step,
        elapsed_s=time.monotonic() - started,
    )


def describe_failure(exc: BaseException, step: int) -> EngineFailed:
    """Sort an exception into the three kinds the user acts on differently; past step 0
    the message names the last step completed."""
    failure = _failure(exc, step)
    if step:
        failure = dataclasses.replace(
            failure, message=f"{failure.message} (after step {step}, the last completed)")
    return failure


def _failure(exc: BaseException, step: int) -> EngineFailed:
    if isinstance(exc, ConfigError):
        return EngineFailed(step, "config", str(exc))
    if isinstance(exc, UserCodeError):
        return EngineFailed(step, "user_code", str(exc), exc.traceback_text)
    trace = "".join(traceback.format_exception(exc))
    if raised_in_user_code(exc):  # e.g. the user's forward() raised mid-run
        return EngineFailed(step, "user_code", f"user code raised {type(exc).__name__}: {exc}",
                            trace)
    return EngineFailed(step, "internal", f"{type(exc).__name__}: {exc}", trace)


def _diagnosed(emit: Emit, diagnostics: Diagnostics) -> Emit:
    """``emit`` followed by the alerts each event raises (detectors are pure Python over
    the events, no tensor touched; their cost is in ``trainlab.doctor.detectors``)."""

    def emit_and_diagnose(event: Any) -> None:
        emit(event)
        for alert in diagnostics.observe(event):
            emit(alert)

    return emit_and_diagnose
