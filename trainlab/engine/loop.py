"""The training loop: ``run(config, commands, emit)``, a plain blocking call.

It builds the data, model, objective, optimizer and schedule from the config, then
steps. Commands are drained only at step boundaries, so every change applies to a
whole step and is acknowledged by an event; while paused it blocks on the command
queue (no busy wait). The loop knows nothing of who drives it: a thread beside the
app, a CLI in the main thread, or a test with a pre-filled queue.

With ``checkpoints`` it writes the run's checkpoints (``trainlab.engine.checkpoint``): every
run.checkpoint_every steps or epoch, and at every end; with ``start_from`` it continues
a checkpointed run exactly where it was (``Trainer.restore``).

Costs, per step: no host-device sync. Losses stay on the device in a list and cross
to the host together when a metrics batch is due (at most every
``METRICS_INTERVAL_S``), which is one sync per batch, not one per step. The exception is
run.on_nonfinite = skip or rollback: they read each step's loss before its update.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import math
import os
import queue
import random
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainlab.core import protocol
from trainlab.core.config import Config, ConfigError, field_info
from trainlab.core.config import from_dict as config_from_dict
from trainlab.core.protocol import (
    CheckpointSaved,
    CommandRejected,
    EngineFailed,
    EvalDone,
    FinalMetrics,
    HyperChanged,
    LayerStatsSnapshot,
    MetricsBatch,
    NonFiniteDetected,
    Notice,
    RunFinished,
    RunStarted,
    StateChanged,
)
from trainlab.doctor.detectors import Diagnostics
from trainlab.doctor.lr_find import LrRangeError, check_range, find_lr
from trainlab.engine import checkpoint
from trainlab.engine.checkpoint import Checkpoints
from trainlab.engine.data import augment_batch, load_dataset, validate_augment
from trainlab.engine.init import init_weights
from trainlab.engine.losses import Objective, build_objective
from trainlab.engine.models import build_model, model_summary, set_dropout
from trainlab.engine.optim import (
    OPTIMIZERS,
    LRSchedule,
    build_optimizer,
    set_lr,
    update_hyperparameters,
)
from trainlab.engine.optimizer_step import NonFiniteLoss, make_closure, take_step
from trainlab.engine.stats import Instruments, first_nonfinite
from trainlab.engine.usercode import UserCodeError, raised_in_user_code

Emit = Callable[[Any], None]

METRICS_INTERVAL_S = 0.1
"""At most ~10 metrics events a second, whatever the step rate."""
EVAL_BATCH = 4096
"""Validation runs in chunks of this many samples to bound memory on big sets."""
SKIP_MAX_IN_A_ROW = 10
"""run.on_nonfinite = skip gives up after this many non-finite steps in a row. A corrupt
sample spoils one batch, rarely two in a row; ten in a row means the weights themselves
produce the NaN/inf, and withholding updates leaves them exactly as they are."""
ROLLBACK_KEEP_EVERY = 50
"""run.on_nonfinite = rollback refreshes its good state every this many steps (when that
step's loss is finite, before its update). A copy of the weights and the optimizer state
costs 0.7 of a step of the default digits MLP on a CPU (mostly Python overhead) and 0.3
of one at width 1024 (measured), so every 50 steps it adds 0.6-1.4% to training time,
and a rollback loses at most 50 steps of progress."""
ROLLBACK_LR_FACTOR = 0.1
"""A rollback multiplies optim.lr by this: KNOWLEDGE.md section 4 (inf comes from an LR
too high; roll back with a lower LR). A tenth, not a half: a half often blows up again."""
ROLLBACK_MAX = 3
"""Rollbacks before the run stops: after three the LR is 1/1000 of where it was, and a
run that still turns non-finite has another cause (data, init, a loss that overflows)."""
CHECKPOINT_RETRY_S = 1.0
"""After an automatic checkpoint failed (a full disk), the next periodic one is tried no
sooner than this; each further failure doubles the wait..."""
CHECKPOINT_RETRY_MAX_S = 60.0
"""...up to this: a disk someone frees is used again within a minute, and a disk that
stays full costs one failed write a minute, not one per checkpoint_every steps."""
CHECKPOINT_FORMAT = 1
"""Version of the payload ``Trainer.checkpoint_payload`` writes; ``restore`` reads only it."""
STREAM_KEYS = ("run.seed",)
"""Config keys besides data's cold ones whose change in a fork makes the saved random
streams (data order, augmentation, dropout) meaningless: the fork draws fresh ones."""
SCHEDULE_LENGTH_KEYS = ("data.batch_size", "run.max_steps", "run.max_epochs")
"""Keys that change where the run ends, and so the length the LR schedule spans."""
CHECKPOINT_COUNTERS = (
    "best_val_loss", "best_step", "evals_without_improvement", "last_eval_step",
    "last_val_loss", "last_val_accuracy", "last_train_loss", "interval_loss_sum",
    "interval_loss_count", "losses_since_good_state", "first_nonfinite_step",
    "update_skipped", "withheld_in_a_row", "rollbacks", "epoch_ended",
)
"""The Trainer's counters a checkpoint keeps (plain numbers, a dict of them): what
evaluation, early stopping, the interval's train loss and run.on_nonfinite go on from."""


class Batches:
    """Shuffled mini-batches of training indices, one permutation per epoch.

    The batch size is read on every call, so a live change applies from the next
    step. A last batch of a single sample is folded into the one before it: a
    BatchNorm layer cannot train on one sample.
    """

    def __init__(self, n: int, seed: int, device: torch.device | None = None) -> None:
        self.n = n
        self.device = device or torch.device("cpu")
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self._order = self._permutation()
        self._pos = 0

    def _permutation(self) -> torch.Tensor:
        # Drawn on the CPU (same order on any device), copied once per epoch: indexing
        # with device-resident indices needs no host-to-device copy per step.
        return torch.randperm(self.n, generator=self.generator).to(self.device)

    def steps_left_in_epoch(self, batch_size: int) -> int:
        """Batches still to come in the current epoch at this size."""
        return steps_per_epoch(self.n - self._pos, batch_size)

    def state_dict(self) -> dict[str, Any]:
        """The epoch, this epoch's order, the position in it and the generator's state."""
        return {"epoch": self.epoch, "order": self._order.cpu(), "position": self._pos,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``; ValueError when it is of another data size."""
        order = state["order"]
        if len(order) != self.n:
            raise ValueError(f"the saved data order covers {len(order)} samples, this data "
                             f"has {self.n}")
        self.epoch, self._pos = int(state["epoch"]), int(state["position"])
        self._order = order.to(self.device)
        self.generator.set_state(state["generator"])

    def next(self, batch_size: int) -> tuple[torch.Tensor, bool]:
        """Indices of the next batch, and whether it ends the epoch."""
        remaining = self.n - self._pos
        take = remaining if remaining <= batch_size + (batch_size > 1) else batch_size
        idx = self._order[self._pos : self._pos + take]
        self._pos += take
        if self._pos < self.n:
            return idx, False
        self.epoch += 1
        self._order = self._permutation()
        self._pos = 0
        return idx, True


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Number of batches ``Batches`` yields per epoch for this size."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and batch_size == 1) else 0)


def _usable_cores() -> int:
    """Cores this process may run on (affinity-limited on shared servers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 2


def resolve_device(name: str) -> torch.device:
    """auto picks CUDA when present; an explicit cuda without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"run.device = 'cuda' but no CUDA device is available (torch {torch.__version__}); "
            "use auto or cpu"
        )
    return torch.device(name)


@dataclass(frozen=True)
class GoodState:
    """Copies of the weights and optimizer state that gave a finite loss (for rollback)."""

    step: int
    """Steps taken when they were copied: a rollback resumes from the weights of then."""
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    optimizer_name: str
    """The optimizer the state belongs to (after a live switch it cannot be loaded)."""


class Trainer:
    """The live state of one run: what was built, and the counters.

    Build errors raise from the constructor; ``run`` turns them into events.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.step = 0
        self.changes: list[dict[str, Any]] = []

        run = config.run
        torch.set_num_threads(run.threads or max(1, _usable_cores() - 1))
        self.device = resolve_device(run.device)
        self.on_cpu = self.device.type == "cpu"  # read every step: device.type costs ~7 us cold
        torch.manual_seed(run.seed)

        data = load_dataset(config.data, run.seed)
        validate_augment(config.data, data.is_image, data.input_shape)
        self.data = data
        self._check_batch_size(config.data.batch_size)
        self.objective: Objective = build_objective(
            config.loss.name, data.task, data.num_classes, data.num_targets
        )

        self.model = build_model(config.model, data.input_shape, self.objective.num_outputs)
        init_weights(self.model, config.init, config.model.activation, config.model.arch)
        self.model.to(self.device)
        self._check_model(config)
        self.weights = [p for p in self.model.parameters() if p.requires_grad and p.dim() > 1]
        with torch.enable_grad():  # a Trainer built under no_grad still gets them
            self.grad_accumulators = [p.view_as(p).grad_fn.next_functions[0][0]
                                      for p in self.model.parameters() if p.requires_grad]
        """Each trainable parameter's AccumulateGrad node, kept for the run. Autograd
        caches a parameter's node only while a graph holds it, so a step whose graph is
        gone by the next forward makes all of them anew (and while none exists, torch
        takes its slow path, the GIL included, for every C++ reference an op takes to a
        parameter). A hand-written loop's ``loss`` keeps its last graph alive until the
        next one is built; the engine's step drops its graph, so it keeps the nodes.
        Measured by instruction count (callgrind): 43k fewer a step on the benchmark's
        CNN (of 24.3M), 13k fewer on a 2-layer MLP."""

        self.x_train = data.x_train.to(self.device)
        self.x_val = data.x_val.to(self.device)
        self.t_train = self.objective.targets(data.y_train).to(self.device)
        self.t_val = self.objective.targets(data.y_val).to(self.device)
        self.y_val = data.y_val.to(self.device)

        self.instruments = Instruments(self.model, self.x_train[:2], config.stats)
        self.pending_snapshots: list[LayerStatsSnapshot] = []
        self.last_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.batches = Batches(len(data.x_train), run.seed, self.device)
        self.augment_generator = torch.Generator(self.device).manual_seed(run.seed + 1)
        self.optimizer = build_optimizer(self.model.parameters(), config.optim)
        self.schedule = LRSchedule(config.schedule, self.total_steps())

        self.best_val_loss = math.inf
        self.best_step: int | None = None
        self.evals_without_improvement = 0
        self.last_eval_step: int | None = None
        self.last_val_loss: float | None = None
        self.last_val_accuracy: float | None = None
        self.last_train_loss: float | None = None
        self.pending_losses: list[torch.Tensor] = []
        self.pending_lrs: list[float] = []
        self.pending_epochs: list[int] = []
        """Per pending step, the epoch its batch came from (a batch may cross one)."""
        self.interval_loss_sum = 0.0
        self.interval_loss_count = 0
        self.losses_since_good_state: dict[int, float] = {}
        """run.on_nonfinite = rollback: step -> loss of the flushed steps after the good
        state (at most ROLLBACK_KEEP_EVERY and a flush), which a rollback takes back out
        of the interval's mean."""
        self.withheld_steps: set[int] = set()
        """Steps (counted from 1) whose update skip or rollback withheld or a rollback
        undid, not yet flushed: left out of the interval's mean train loss."""
        self.first_nonfinite_step: int | None = None
        self.update_skipped = False
        """The last step's update was withheld because its loss was not finite."""
        self.withheld_in_a_row = 0
        """Steps in a row, up to the last, whose update was withheld."""
        self.good_state: GoodState | None = None
        """run.on_nonfinite = rollback: the state to go back to (held only under it)."""
        self.rollbacks = 0
        self.epoch_ended = False
        self.resumed_from: int | None = None
        """The step ``restore`` continued from (None: this run started from scratch)."""

    # --- sizes -----------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        """The effective batch size (0 in the config means the full training set)."""
        return self.config.data.batch_size or len(self.x_train)

    def _check_model(self, config: Config) -> None:
        """A model that cannot train on this data fails now, with the reason, not mid-run."""
        source = "model.factory" if config.model.arch == "custom" else "model.arch"
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError(f"{source}: the model has no trainable parameters")
        self.model.eval()
        example = self.data.x_train[:2].to(self.device)
        try:
            with torch.no_grad():
                out = self.model(example)
        except Exception as exc:
            if config.model.arch != "custom":
                raise
            shape = tuple(example.shape)
            raise UserCodeError(f"model.factory {config.model.factory}: the model on a "
                                f"batch of shape {shape}", exc) from exc
        finally:
            self.model.train()
        want = self.objective.num_outputs
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(out), want):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                f"{source}: the model's output is {got} for a batch of 2; the "
                f"{self.objective.name} loss on this data needs (batch, {want})"
            )
        needs_val = [key for key, on in (
            ("reg.early_stop_patience", config.reg.early_stop_patience),
            ("schedule.name = reduce_on_plateau", config.schedule.name == "reduce_on_plateau"),
        ) if on]
        if needs_val and len(self.data.x_val) == 0:
            raise ConfigError(f"{needs_val[0]} needs a validation set, and there is none "
                              "(data.val_fraction is 0): set data.val_fraction > 0")

    def _check_batch_size(self, size: int) -> None:
        n = len(self.data.x_train)
        if size > n:
            raise ConfigError(
                f"data.batch_size = {size} is larger than the {n} training samples: "
                "use at most that, or 0 for the full batch"
            )
        if size == 1 and self.config.model.norm == "batch":
            raise ConfigError(
                "data.batch_size = 1 cannot train BatchNorm (it needs 2+ samples per batch): "
                "use a larger batch or model.norm = layer"
            )

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the training set at the current batch size."""
        return steps_per_epoch(len(self.x_train), self.batch_size)

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

    # --- the work ----------------------------------------------------------------

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

    def train_step(self) -> int:
        """One optimizer step on the next batch; returns its size.

        No host-device sync unless the step is tracked by the instruments (then one).
        """
        cfg = self.config
        epoch = self.batches.epoch  # the batch's epoch, before next() may end it
        idx, self.epoch_ended = self.batches.next(self.batch_size)
        x, target = self.x_train[idx], self.t_train[idx]
        if cfg.data.augment:
            x = augment_batch(x, cfg.data, self.data.is_image, self.augment_generator)
        self.last_batch = (x, target)

        lr = cfg.optim.lr * self.schedule.factor(self.step)
        set_lr(self.optimizer, lr)
        if cfg.stats.every or self.instruments.requested is not None:
            loss = self._watched_step(x, target)
        else:  # instruments off: no clock, no hook, nothing recorded
            loss = self._optimizer_step(x, target, None)
        # The loss of the batch before this step's update (L-BFGS: its first evaluation).
        self.pending_losses.append(loss)
        self.pending_lrs.append(lr)
        self.pending_epochs.append(epoch)
        self.step += 1
        return idx.shape[0]  # not len(idx): Tensor.__len__ is Python, ~9 us a step cold

    def _watched_step(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The optimizer step, timed for the instruments' budget, and tracked when due."""
        instruments = self.instruments
        started = time.perf_counter()
        tracked = instruments.due(self.step + 1)
        with instruments.track(self.step + 1) if tracked else nullcontext() as tracker:
            loss = self._optimizer_step(x, target, tracker)
        instruments.record(time.perf_counter() - started, tracked)
        if tracked and (snapshot := instruments.take()) is not None:
            self.pending_snapshots.append(snapshot)
        return loss

    def _optimizer_step(self, x: torch.Tensor, target: torch.Tensor, tracker: Any) -> torch.Tensor:
        data_losses: list[torch.Tensor] = []
        if self.config.run.on_nonfinite != "rollback":
            self.good_state = None  # its memory is only worth holding under rollback
        closure = make_closure(
            self.model, self.optimizer, self.objective.fn, self.weights, self.config.reg,
            x, target, data_losses,
            after_backward=tracker.after_backward if tracker is not None else None,
            after_first=self._check_first_loss if self.loss_checked_every_step() else None)
        try:
            take_step(self.optimizer, closure)
        except NonFiniteLoss:
            # The weights stay finite and the layer that broke can still be found.
            self.update_skipped = True
            self.withheld_in_a_row += 1
            if self.config.run.on_nonfinite != "stop":
                # skip/rollback train on: the mean is of the steps that trained. Under
                # stop the run ends here, with a non-finite mean (a GPU applies the step).
                self.withheld_steps.add(self.step + 1)
            if self.first_nonfinite_step is None:
                self.first_nonfinite_step = self.step + 1
        else:
            self.update_skipped = False
            self.withheld_in_a_row = 0
        return data_losses[0]

    def _check_first_loss(self, loss: torch.Tensor) -> None:
        """The step's first evaluation, before any update: withhold the update of a
        non-finite loss (one host sync); under rollback keep these weights as the good
        state every ROLLBACK_KEEP_EVERY steps."""
        if not math.isfinite(loss.item()):
            raise NonFiniteLoss  # aborts the step (L-BFGS's too) before it moves
        if self.config.run.on_nonfinite == "rollback" and (
            self.step % ROLLBACK_KEEP_EVERY == 0 or self.good_state is None
        ):
            self._keep_good_state()  # these weights just gave a finite loss

    def loss_checked_every_step(self) -> bool:
        """Is every step's loss read before its update, so a non-finite one is withheld?

        skip and rollback need it. On a CPU reading the loss waits for nothing, so stop
        has it too; on a GPU it is one host-device sync per step, which stop and continue
        do not pay (there the metrics flush finds a non-finite loss, after its update).
        """
        policy = self.config.run.on_nonfinite
        return policy in ("skip", "rollback") or (policy == "stop" and self.on_cpu)

    def _keep_good_state(self) -> None:
        """Copy the weights and the optimizer state (on their device; see ROLLBACK_KEEP_EVERY
        for the cost) as the state a rollback returns to."""
        self.losses_since_good_state = {}
        self.good_state = GoodState(
            step=self.step,
            model={k: v.detach().clone() for k, v in self.model.state_dict().items()},
            optimizer=copy.deepcopy(self.optimizer.state_dict()),
            optimizer_name=self.config.optim.name,
        )

    def roll_back(self, bad_step: int) -> HyperChanged:
        """Restore the good state and multiply optim.lr by ROLLBACK_LR_FACTOR.

        The step counter, the data order and the change log go on: only the weights and
        the optimizer's state go back. Returns the lr change, recorded like any live
        change. Raises ValueError when no good state was kept.
        """
        good = self.good_state
        if good is None:
            raise ValueError("no good state to roll back to")
        self.model.load_state_dict(good.model)  # copies in: the kept state stays intact
        if good.optimizer_name == self.config.optim.name:
            # A copy, because the optimizer updates its state tensors in place.
            self.optimizer.load_state_dict(copy.deepcopy(good.optimizer))
            # The kept param groups hold the hyperparameters of then; the config's rule.
            update_hyperparameters(self.optimizer, self.config.optim)
        else:  # switched live since: its state cannot be loaded, start it empty
            self.optimizer = build_optimizer(self.model.parameters(), self.config.optim)
        self.rollbacks += 1
        self.withheld_in_a_row = 0
        # The steps after the good state are undone: their losses leave the mean too
        # (flushed ones from the interval, pending ones at their flush).
        undone = range(good.step + 1, bad_step + 1)
        for step in undone:
            value = self.losses_since_good_state.pop(step, None)
            if value is not None and step > (self.last_eval_step or 0):  # still in the mean
                self.interval_loss_sum -= value
                self.interval_loss_count -= 1
        self.withheld_steps.update(undone)
        return self.set_hyper("optim.lr", self.config.optim.lr * ROLLBACK_LR_FACTOR,
                              f"rollback to step {good.step} after a non-finite loss at "
                              f"step {bad_step}")

    def recover_from_nonfinite(self, bad_step: int) -> tuple[list[Any], bool]:
        """run.on_nonfinite = skip or rollback, after step ``bad_step`` had its update
        withheld: skip goes on (up to SKIP_MAX_IN_A_ROW in a row), rollback restores the
        good state with a lower lr (up to ROLLBACK_MAX times). Returns the events that
        say what was done, and whether the run must stop.
        """
        policy, step = self.config.run.on_nonfinite, self.step
        said = f"(run.on_nonfinite = {policy})"
        if policy == "skip":
            in_a_row = self.withheld_in_a_row
            if in_a_row >= SKIP_MAX_IN_A_ROW:
                return [Notice(step, "error", f"training loss non-finite for {in_a_row} steps "
                               f"in a row (to step {bad_step}): the weights themselves produce "
                               f"it, and skipping cannot mend them; run stopped {said}")], True
            return [Notice(step, "warning", f"training loss non-finite at step {bad_step}; its "
                           f"update was skipped ({in_a_row} in a row, the run stops at "
                           f"{SKIP_MAX_IN_A_ROW}) {said}")], False
        if policy != "rollback":
            raise ValueError(f"run.on_nonfinite = {policy!r} withholds no step to recover from")
        lr = self.config.optim.lr
        if self.rollbacks >= ROLLBACK_MAX:
            return [Notice(step, "error", f"training loss non-finite at step {bad_step} after "
                           f"{self.rollbacks} rollbacks (optim.lr now {lr:g}): a lower learning "
                           f"rate does not help; run stopped {said}")], True
        if self.good_state is None:
            return [Notice(step, "error", f"training loss non-finite at step {bad_step} before "
                           "any finite loss was seen under rollback: there is no good state "
                           f"to go back to; run stopped {said}")], True
        good_step = self.good_state.step
        changed = self.roll_back(bad_step)
        return [changed, Notice(step, "warning", f"training loss non-finite at step {bad_step}: "
                                f"weights and optimizer state rolled back to step {good_step}, "
                                f"optim.lr {changed.old:g} -> {changed.new:g} (rollback "
                                f"{self.rollbacks} of {ROLLBACK_MAX}) {said}")], False

    def measure(self, x: torch.Tensor, target: torch.Tensor) -> tuple[float, LayerStatsSnapshot]:
        """Loss and per-layer statistics of one forward/backward, without updating.

        Gradients are left as computed (the next step zeroes them). Used by the init
        probe and to find where a non-finite loss came from.
        """
        self.instruments.requested = True  # with histograms
        with self.instruments.track(self.step, update=False) as tracker:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.objective.fn(self.model(x), target)
            loss.backward()
            tracker.after_backward()
        snapshot = self.instruments.take()
        assert snapshot is not None
        return loss.item(), snapshot

    def locate_nonfinite(self, step: int) -> NonFiniteDetected:
        """Which layer turned non-finite first, from a measured pass on the last batch."""
        where = None
        if self.last_batch is not None:
            _, snapshot = self.measure(*self.last_batch)
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
        train_loss = self.interval_train_loss()
        train_loss = math.nan if train_loss is None else train_loss
        self.interval_loss_sum, self.interval_loss_count = 0.0, 0
        self.last_train_loss = train_loss
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

    def interval_train_loss(self) -> float | None:
        """Mean training loss of the steps since the previous evaluation (None if none)."""
        count = self.interval_loss_count
        return self.interval_loss_sum / count if count else None

    def eval_due(self) -> bool:
        """Is an evaluation due after the step just taken (run.eval_every, or epoch end)?"""
        every = self.config.run.eval_every
        due = self.step % every == 0 if every else self.epoch_ended
        return due and self.last_eval_step != self.step

    def start_notices(self) -> list[Notice]:
        """Settings that are allowed but probably not meant, said once at the start."""
        notices = []
        cores, threads = _usable_cores(), self.config.run.threads
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

    def flush_metrics(self, elapsed: float, samples: int) -> MetricsBatch | None:
        """Ship the pending per-step losses; one host-device sync for all of them."""
        if not self.pending_losses:
            return None
        losses = torch.stack(self.pending_losses).tolist()
        first = self.step - len(losses) + 1
        withheld, self.withheld_steps = self.withheld_steps, set()
        for i, value in enumerate(losses):
            if first + i in withheld:
                # Not applied (skip, rollback) and reported by a Notice: its NaN would
                # make the interval's mean NaN and hide the steps that trained.
                continue
            # An applied NaN step (continue) makes the mean NaN: skipping it would hide it.
            self.interval_loss_sum += value
            self.interval_loss_count += 1
            if self.good_state is not None:
                self.losses_since_good_state[first + i] = value
            if not math.isfinite(value) and self.first_nonfinite_step is None:
                self.first_nonfinite_step = first + i
        batch = MetricsBatch(
            steps=tuple(range(first, self.step + 1)),
            losses=tuple(losses),
            lrs=tuple(self.pending_lrs),
            epoch=self.batches.epoch,
            steps_per_sec=len(losses) / elapsed if elapsed > 0 else 0.0,
            samples_per_sec=samples / elapsed if elapsed > 0 else 0.0,
            epochs=tuple(self.pending_epochs),
        )
        self.pending_losses, self.pending_lrs, self.pending_epochs = [], [], []
        return batch

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
        """Everything a new process needs to continue this run exactly (``restore``).

        Model, optimizer (and its name), schedule, step and epoch, the data order with
        the position in it and its generator, the augmentation generator, every RNG
        state (torch, CUDA, numpy, Python's random), the counters behind evaluation,
        early stopping and run.on_nonfinite, the change log and the effective config.
        Plain data and tensors only: it loads with torch.load(weights_only=True).

        Call at a step boundary once the metrics are flushed; raises ValueError when
        per-step losses are still pending (they are not part of the state). The tensors
        are the live ones, not copies: write the payload before the next step.
        """
        if self.pending_losses:
            raise ValueError(f"{len(self.pending_losses)} step loss(es) not yet flushed: "
                             "flush the metrics before taking a checkpoint")
        good = self.good_state
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "epoch": self.batches.epoch,
            "config": self.config.to_dict(),
            "changes": copy.deepcopy(self.changes),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "optimizer_name": self.config.optim.name,
            "schedule": self.schedule.state_dict(),
            "batches": self.batches.state_dict(),
            "rng": {**_global_rng_state(), "augment": self.augment_generator.get_state()},
            "counters": {name: copy.copy(getattr(self, name)) for name in CHECKPOINT_COUNTERS},
            # Under run.on_nonfinite = rollback only: the weights a rollback returns to.
            "good_state": None if good is None else {
                "step": good.step, "model": good.model, "optimizer": good.optimizer,
                "optimizer_name": good.optimizer_name,
            },
        }

    def restore(self, payload: dict[str, Any]) -> list[str]:
        """Continue from ``checkpoint_payload()``'s output; call before the first step.

        With the checkpoint's own effective config (a resume) everything comes back and
        the run goes on as if it had never stopped: on the CPU, bit-identically. With
        another config (a fork) the weights are loaded, and what the change makes
        meaningless is started afresh, each said in the returned notes: another
        optimizer starts with empty state; another run.seed or cold data field draws
        fresh random streams and a fresh data order (the epoch count goes on); another
        run length re-spans the LR schedule. The step counter and the change log always
        go on from the checkpoint's.

        Raises ConfigError when the payload is not a checkpoint this version reads, or
        when its weights do not fit this model (naming the tensor, both shapes and the
        cold changes behind it).
        """
        if self.step:
            raise ValueError(f"restore a checkpoint before the first step (at step {self.step})")
        found = payload.get("format")
        if found != CHECKPOINT_FORMAT:
            raise ConfigError(f"checkpoint format {found!r}: this trainlab reads format "
                              f"{CHECKPOINT_FORMAT} (checkpoints written by trainlab since "
                              "issue 6)")
        saved_config = config_from_dict(payload["config"])
        changed = changed_keys(saved_config, self.config)
        fit_weights(self.model.state_dict(), payload["model"], describe_changes(
            saved_config, self.config, [k for k in changed if not field_info(k).spec.hot]))
        self.model.load_state_dict(payload["model"])
        notes = []
        saved_optimizer = payload["optimizer_name"]
        if saved_optimizer == self.config.optim.name:
            self.optimizer.load_state_dict(payload["optimizer"])
            # The saved param groups hold the values of then; a fork's may differ.
            update_hyperparameters(self.optimizer, self.config.optim)
        else:
            notes.append(f"optim.name = {self.config.optim.name} (the checkpoint's is "
                         f"{saved_optimizer}): the optimizer starts with empty state")

        self.schedule.load_state_dict(payload["schedule"])
        streams = [k for k in changed if k in STREAM_KEYS
                   or (k.startswith("data.") and not field_info(k).spec.hot)]
        try:
            if streams:
                raise ValueError(f"{', '.join(streams)} changed")
            self.batches.load_state_dict(payload["batches"])
        except ValueError as why:
            self.batches.epoch = int(payload["batches"]["epoch"])
            notes.append(f"fresh data order, augmentation and dropout streams from run.seed "
                         f"= {self.config.run.seed} ({why}); the epoch count goes on from "
                         f"{self.batches.epoch}")
        else:
            _set_global_rng_state(payload["rng"])
            self.augment_generator.set_state(payload["rng"]["augment"])

        counters = payload["counters"]
        missing = [name for name in CHECKPOINT_COUNTERS if name not in counters]
        if missing:
            raise ConfigError(f"checkpoint counters {', '.join(missing)} are missing: not a "
                              f"complete format {CHECKPOINT_FORMAT} checkpoint")
        for name in CHECKPOINT_COUNTERS:
            setattr(self, name, copy.copy(counters[name]))
        self.changes = copy.deepcopy(list(payload["changes"]))
        good = payload.get("good_state")
        if good is not None and good["optimizer_name"] == self.config.optim.name and not changed:
            self.good_state = GoodState(good["step"], good["model"], good["optimizer"],
                                        good["optimizer_name"])
        else:
            self.losses_since_good_state = {}  # a new good state is kept at the next step
        self.step = self.resumed_from = int(payload["step"])
        if any(k in changed for k in SCHEDULE_LENGTH_KEYS):
            self.schedule.total_steps = max(1, self.total_steps())
            notes.append(f"the LR schedule now spans {self.schedule.total_steps} steps")
        if inits := [k for k in changed if k.startswith("init.")]:
            notes.append(f"{', '.join(inits)}: no effect, the weights come from the checkpoint")
        return notes

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
            self._check_batch_size(new)
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


def _global_rng_state() -> dict[str, Any]:
    """torch's, every CUDA device's, numpy's and Python's RNG states, as plain data."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        # Only when CUDA is in use: asking would initialise it otherwise.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def _set_global_rng_state(state: dict[str, Any]) -> None:
    """Undo ``_global_rng_state``: set every RNG it saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:  # another machine: the devices it had are not these
            torch.cuda.set_rng_state(state["cuda"][0])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def changed_keys(before: Config, after: Config) -> list[str]:
    """The dotted keys whose values differ between two configs, in schema order."""
    old, new = before.to_dict(), after.to_dict()
    return [f"{section}.{name}" for section, values in new.items()
            for name, value in values.items() if old[section][name] != value]


def describe_changes(before: Config, after: Config, keys: list[str]) -> str:
    """``model.width = 32 (was 16), ...`` for ``keys``."""
    return ", ".join(f"{k} = {after.get(k)!r} (was {before.get(k)!r})" for k in keys)


def fit_weights(model_state: dict[str, torch.Tensor], saved: dict[str, torch.Tensor],
                because: str = "") -> None:
    """Raise ConfigError unless ``saved`` (a checkpoint's weights) has exactly the
    tensors of ``model_state``, shape for shape.

    The message names the first tensor that does not fit, both shapes, and
    ``because``: the cold changes that made the new model (``describe_changes``).
    """
    def shape(t: torch.Tensor) -> str:
        return f"({', '.join(map(str, t.shape))}{',' if t.dim() == 1 else ''})"

    misfit = None
    for name, tensor in model_state.items():
        if name not in saved:
            misfit = f"the new model has {name} {shape(tensor)}, which the checkpoint lacks"
        elif saved[name].shape != tensor.shape:
            misfit = (f"{name} is {shape(saved[name])} in the checkpoint and "
                      f"{shape(tensor)} in the new model")
        if misfit:
            break
    extra = [name for name in saved if name not in model_state]
    if misfit is None and extra:
        misfit = (f"the checkpoint has {extra[0]} {shape(saved[extra[0]])}, which the new "
                  "model lacks")
    if misfit:
        cause = because or "the model"
        raise ConfigError(f"{cause} does not fit the checkpoint's weights: {misfit}. A fork "
                          "starts from those weights, so their shapes cannot change: start a "
                          "new run for that")


class _Control:
    """What the commands asked for: paused or not, steps left to take, stop."""

    def __init__(self) -> None:
        self.paused = False
        self.step_budget = 0
        self.stop_requested = False
        self.stop_why = ""
        """Stop.why: the reason the final StateChanged gives."""

    @property
    def may_step(self) -> bool:
        return not self.stop_requested and (not self.paused or self.step_budget > 0)


class _Saver:
    """The run's checkpoints: periodic ones, one at every end, and SaveCheckpoint's.

    Each written checkpoint is acknowledged by CheckpointSaved. One that cannot be
    written (a full disk) leaves the previous ones as they were and the run goes on. A
    commanded one is answered by CommandRejected. Automatic ones fail quietly after the
    first: one error Notice names the reason and the previous good checkpoint, periodic
    attempts back off (CHECKPOINT_RETRY_S doubling to CHECKPOINT_RETRY_MAX_S), and one
    info Notice says when a checkpoint is written again. The run's last checkpoint is
    always attempted, and its failure always said: nothing later would mend it.

    Cost of one: a torch.save of the weights, the optimizer state and the data order
    (about half of it serialising, half writing), an fsync, two hard links and a
    directory fsync. Measured on one CPU core: 3.6 ms for the default digits MLP (43 k
    parameters with Adam, 0.6 MB), 48 ms at width 1024 (2.2 M, 26 MB). Digits' epoch
    is short (23 steps, 25 ms and 0.43 s), so a checkpoint per epoch adds 11-14% there;
    it shrinks in proportion as the data set grows (0.1% at 100x the samples).
    """

    def __init__(self, trainer: Trainer, checkpoints: Checkpoints | None, emit: Emit) -> None:
        self.trainer = trainer
        self.checkpoints = checkpoints
        self.emit = emit
        self._saved_at: int | None = None
        """The step of the newest checkpoint in ``checkpoints`` while the state is still
        the one it holds (None once it moved on)."""
        self._periodic_at = -math.inf
        """When the last periodic checkpoint was written: the first one due is always
        written (a run killed in its first minute can still resume), then the floor."""
        self._retry_at = -math.inf
        """No periodic attempt before this, while automatic checkpoints fail."""
        self._failing_since: int | None = None
        """The step of the first failed automatic checkpoint since the last written one."""
        self._failures = 0
        """Automatic checkpoints failed since the last written one."""

    def state_changed(self) -> None:
        """The state moved on without a step (an evaluation, a live change)."""
        self._saved_at = None

    def up_to_date(self) -> bool:
        """Does the newest checkpoint hold the state as it is now?"""
        return self._saved_at == self.trainer.step

    def due(self) -> bool:
        """Is a periodic checkpoint due after the step just taken (run.checkpoint_every,
        0: an epoch end, and run.checkpoint_min_seconds since the last one)? Not when the
        run ends here: its end writes one anyway."""
        if self.checkpoints is None:
            return False
        run, step = self.trainer.config.run, self.trainer.step
        if not (step % run.checkpoint_every == 0 if run.checkpoint_every
                else self.trainer.epoch_ended):
            return False  # most steps end here, before the dearer checks
        now = time.monotonic()
        return (now - self._periodic_at >= run.checkpoint_min_seconds
                and now >= self._retry_at and not self.trainer.finished())

    def _write(self, finite: bool) -> Path:
        assert self.checkpoints is not None
        trainer = self.trainer
        self.checkpoints.keep = trainer.config.run.keep_checkpoints  # hot: may have changed
        finite = finite and trainer.values_finite()
        path = self.checkpoints.save(trainer.checkpoint_payload(), trainer.step, finite)
        self._saved_at = trainer.step
        if self._failing_since is not None:
            self.emit(Notice(trainer.step, "info",
                             f"checkpoints are written again (step {trainer.step}) after "
                             f"{self._failures} failed since step {self._failing_since}"))
            self._failing_since, self._failures, self._retry_at = None, 0, -math.inf
        return path

    def _previous(self) -> str:
        """What a failed write left in place, for its message."""
        good = self.checkpoints.latest_good() if self.checkpoints else None
        if good is None:
            return "there is no earlier good checkpoint"
        step, path = good
        at = f"of step {step}" if step is not None else "before it"
        return f"the previous good checkpoint ({path}, {at}) is intact"

    def automatic(self, *, finite: bool = True, last: bool = False) -> None:
        """A periodic or end-of-run (``last``) checkpoint; ``finite=False`` keeps it out
        of last_good.pt whatever its values (a run stopped for a non-finite loss)."""
        if self.checkpoints is None:
            return
        step = self.trainer.step
        try:
            path = self._write(finite)
        except OSError as exc:
            self._failures += 1
            wait = min(CHECKPOINT_RETRY_MAX_S, CHECKPOINT_RETRY_S * 2 ** (self._failures - 1))
            self._retry_at = time.monotonic() + wait
            if last:
                self.emit(Notice(step, "error", f"the run's last checkpoint (step {step}) "
                                 f"not written ({_os_reason(exc)}); {self._previous()}"))
            elif self._failing_since is None:
                self._failing_since = step
                self.emit(Notice(step, "error",
                                 f"checkpoint of step {step} not written ({_os_reason(exc)}); "
                                 f"{self._previous()}; the run goes on, retrying less often "
                                 f"(at most every {CHECKPOINT_RETRY_MAX_S:g} s), and says so "
                                 "when checkpoints are written again"))
            return
        self.emit(CheckpointSaved(step, str(path)))

    def periodic(self) -> None:
        """The checkpoint ``due`` asked for; the next one waits run.checkpoint_min_seconds."""
        self._periodic_at = time.monotonic()
        self.automatic()

    def command(self, path: str) -> None:
        """SaveCheckpoint: into the run's checkpoints, as ``path`` when given. A run with
        no checkpoint directory (the loop called from Python) takes any path; a served
        run only a file name inside its checkpoints/: commands come over its socket."""
        trainer, name = self.trainer, "SaveCheckpoint"
        if not path and self.checkpoints is None:
            self.emit(CommandRejected(name, "this run has no checkpoint directory (it is not "
                                      "served from a run directory): give a path",
                                      trainer.step))
            return
        if path and self.checkpoints is not None:
            refused = checkpoint_name_refused(path)
            if refused:
                self.emit(CommandRejected(name, f"SaveCheckpoint.path = {path!r}: {refused}",
                                          trainer.step))
                return
            path = str(self.checkpoints.directory / path)
        try:
            if path:
                written = checkpoint.save_atomic(trainer.checkpoint_payload(), path)
            else:
                written = self._write(finite=True)
        except OSError as exc:
            previous = "" if path else f"; {self._previous()}"
            self.emit(CommandRejected(name, f"checkpoint not written ({_os_reason(exc)})"
                                      f"{previous}; the run goes on", trainer.step))
            return
        self.emit(CheckpointSaved(trainer.step, str(written)))


def checkpoint_name_refused(name: str) -> str:
    """Why ``name`` cannot be a commanded checkpoint's file name in a run's checkpoints/
    ('' when it can): a plain name, no directory part, none of the run's own files."""
    allowed = "expected a file name such as 'before-lr-change.pt' (no directory: it goes "
    allowed += "into the run's checkpoints/)"
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name or not name.strip():
        return allowed
    if name in (checkpoint.LAST, checkpoint.LAST_GOOD) or checkpoint.STEP_FILE.fullmatch(name):
        return f"{name} is one of the run's own checkpoints; {allowed}"
    if name.endswith(checkpoint.TEMP_SUFFIX):
        return f"{checkpoint.TEMP_SUFFIX} files are checkpoints being written; {allowed}"
    return ""


def _os_reason(exc: OSError) -> str:
    """An OSError in words: its strerror and file where it has them."""
    if exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


def _handle(command: Any, trainer: Trainer, control: _Control, saver: _Saver,
            emit: Emit) -> None:
    """Apply one command at a step boundary and emit its acknowledgement."""
    step = trainer.step
    name = type(command).__name__

    def reject(reason: str) -> None:
        emit(CommandRejected(name, reason, step))

    if isinstance(command, protocol.Pause):
        if control.paused:
            return reject("already paused")
        control.paused, control.step_budget = True, 0
        emit(StateChanged("paused", step, "pause requested"))
    elif isinstance(command, protocol.Resume):
        if not control.paused:
            return reject("not paused")
        control.paused, control.step_budget = False, 0
        emit(StateChanged("running", step, "resumed"))
    elif isinstance(command, protocol.Step):
        if not control.paused:
            return reject("single steps work while paused")
        if not isinstance(command.n, int) or command.n < 1:
            return reject(f"Step.n = {command.n!r}: expected an integer >= 1")
        control.step_budget += command.n
    elif isinstance(command, protocol.Stop):
        control.stop_requested = True
        control.stop_why = str(command.why)
    elif isinstance(command, protocol.SetHyper):
        if not isinstance(command.key, str):
            return reject(f"SetHyper.key = {command.key!r}: expected a dotted key such as optim.lr")
        try:
            emit(trainer.set_hyper(command.key, command.value, str(command.note)))
        except ConfigError as exc:
            return reject(str(exc))
        if command.key in ("optim.name", "data.batch_size") and (
            notice := trainer.full_batch_notice()
        ):
            emit(notice)
    elif isinstance(command, protocol.RequestSnapshot):
        trainer.instruments.requested = command.histograms  # answered by the snapshot
        if control.paused:
            emit(Notice(step, "info", "the snapshot comes with the next step"))
    elif isinstance(command, protocol.SaveCheckpoint):
        if not isinstance(command.path, str):
            return reject(f"SaveCheckpoint.path = {command.path!r}: expected a file path or "
                          "'' (the run's checkpoints)")
        saver.command(command.path)
    elif isinstance(command, protocol.FindLr):
        try:
            check_range(command.start, command.end, command.steps)
        except LrRangeError as exc:
            return reject(f"FindLr.{exc}")
        try:  # a copy trains: whatever fails there, the run itself is as it was
            emit(find_lr(trainer, command.start, command.end, command.steps))
        except Exception as exc:
            return reject(f"lr range test failed ({type(exc).__name__}: {exc}); the run "
                          "goes on")
    else:
        reject(f"unknown command {command!r}")


def _final(trainer: Trainer | None, started: float) -> FinalMetrics:
    if trainer is None:
        return FinalMetrics.none_yet(time.monotonic() - started)
    # The mean over the steps no evaluation has covered yet (a run stopped by a NaN, or
    # one without a validation set), else the last evaluation's: EvalDone's meaning.
    # Steps skip or rollback withheld are in neither (their Notice reports them).
    train_loss = trainer.interval_train_loss()
    return FinalMetrics(
        step=trainer.step,
        epoch=trainer.batches.epoch,
        train_loss=trainer.last_train_loss if train_loss is None else train_loss,
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


PAUSED_WAKE_S = 0.5
"""A paused loop wakes this often with nothing to do: a signal the kernel delivered to
another thread runs its Python handler only when the main thread runs again, and one
blocked in a lock wait without a timeout would never do so (SIGTERM ignored while
paused). Two wake-ups a second cost nothing measurable."""


def _wait_for_command(commands: queue.Queue[Any]) -> Any:
    """The next command, waiting as long as it takes, without a busy loop."""
    while True:
        try:
            return commands.get(timeout=PAUSED_WAKE_S)
        except queue.Empty:
            continue


def run(config: Config, commands: queue.Queue[Any], emit: Emit, *,
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
    trainer: Trainer | None = None
    control = _Control()
    emit = _diagnosed(emit, Diagnostics(config))
    try:
        trainer = Trainer(config)
        notes = trainer.restore(start_from) if start_from is not None else []
        emit(trainer.started_event())
        how = "started" if start_from is None else f"resumed from step {trainer.step}"
        emit(StateChanged("running", trainer.step, how))
        for note in notes:
            emit(Notice(trainer.step, "info", note))
        for notice in trainer.start_notices():
            emit(notice)
        reason = _train(trainer, control, _Saver(trainer, checkpoints, emit), commands, emit)
    except Exception as exc:  # bad input, user code, or our own bug: report, never raise
        step = trainer.step if trainer else 0
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


def _train(trainer: Trainer, control: _Control, saver: _Saver, commands: queue.Queue[Any],
           emit: Emit) -> str:
    """The step loop; returns why it ended, after the checkpoint every end writes."""
    last_flush = time.monotonic()
    samples = 0
    warned_nonfinite = False
    located_nonfinite = False
    deferred: collections.deque[Any] = collections.deque()
    """Commands that arrived during a Step(n): applied once its n steps are done."""

    def flush() -> None:
        """Metrics, then the snapshots of their steps (so a viewer has the loss first)."""
        nonlocal last_flush, samples, located_nonfinite
        now = time.monotonic()
        batch = trainer.flush_metrics(now - last_flush, samples)
        last_flush, samples = now, 0
        if batch is not None:
            emit(batch)
        snapshots, trainer.pending_snapshots = trainer.pending_snapshots, []
        for snapshot in snapshots:
            emit(snapshot)
            where = first_nonfinite(snapshot)
            if where is not None and not located_nonfinite:
                located_nonfinite = True
                layer, kind = where
                emit(NonFiniteDetected(snapshot.step, layer, kind,
                                       f"{kind} of layer {layer} turned non-finite "
                                       f"(step {snapshot.step})"))

    def restart_clock() -> None:
        """Throughput counts training only, not pauses or evaluations."""
        nonlocal last_flush, samples
        last_flush, samples = time.monotonic(), 0

    def handle(command: Any) -> None:
        timed_aside = isinstance(command, protocol.FindLr)
        if timed_aside or isinstance(command, protocol.SaveCheckpoint):
            flush()  # the range test is timed aside; a checkpoint holds the flushed losses
        _handle(command, trainer, control, saver, emit)
        if timed_aside:
            restart_clock()  # its seconds are not training throughput
        if isinstance(command, protocol.SetHyper | protocol.FindLr):
            saver.state_changed()  # a range test draws dropout masks from the global RNG

    def end(reason: str) -> str:
        """Every end writes a checkpoint, unless the newest already holds this state;
        one after a non-finite loss is never "good"."""
        flush()
        if reason == "non_finite" or not saver.up_to_date():
            saver.automatic(finite=reason != "non_finite", last=True)
        return reason

    def evaluate() -> None:
        flush()  # the eval's train_loss covers every step up to here
        saver.state_changed()  # its counters (best, patience) are in a checkpoint
        result = trainer.evaluate()
        restart_clock()
        if result is None:
            return
        emit(result)
        if trainer.schedule.observe(result.val_loss):
            factor = trainer.schedule.plateau_factor
            emit(Notice(trainer.step, "info", f"reduce_on_plateau: lr factor now {factor:g}"))

    def nonfinite_verdict() -> bool:
        """After a flush: report a non-finite loss and apply run.on_nonfinite; True when
        the run must stop."""
        nonlocal warned_nonfinite, located_nonfinite
        bad_step = trainer.first_nonfinite_step
        if bad_step is None:
            return False
        if not located_nonfinite:
            located_nonfinite = True
            emit(trainer.locate_nonfinite(bad_step))
        if trainer.config.run.on_nonfinite == "stop":
            kept = "; its update was not applied" if trainer.update_skipped else ""
            emit(Notice(trainer.step, "error",
                        f"training loss became non-finite at step {bad_step}{kept}; run "
                        "stopped (run.on_nonfinite = stop)"))
            return True
        if trainer.config.run.on_nonfinite == "continue":
            if not warned_nonfinite:
                warned_nonfinite = True
                emit(Notice(trainer.step, "warning",
                            f"training loss non-finite since step {bad_step}; continuing "
                            "(run.on_nonfinite = continue)"))
            return False
        # skip and rollback deal with each withheld step, then wait for the next one.
        trainer.first_nonfinite_step = None
        if not trainer.update_skipped:
            return False  # applied before the switch to this policy: nothing to withhold
        events, must_stop = trainer.recover_from_nonfinite(bad_step)
        for event in events:
            emit(event)
        return must_stop

    try:
        while True:
            # Step boundary. A Step(n) runs its n steps as a unit: other commands wait in
            # `deferred` until they are done, except a Stop or Pause with nothing queued
            # ahead of it, which cuts the steps short (commands still apply in order).
            while not control.stop_requested:
                if control.step_budget > 0:
                    try:
                        command = commands.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(command, protocol.Stop | protocol.Pause) and not deferred:
                        control.step_budget = 0
                        if isinstance(command, protocol.Pause):
                            emit(StateChanged("paused", trainer.step, "steps interrupted"))
                            continue
                        handle(command)
                    else:
                        deferred.append(command)
                    continue
                if deferred:
                    handle(deferred.popleft())
                    continue
                if not control.may_step:
                    if trainer.finished():
                        break  # nothing left to wait for: end the run, paused or not
                    flush()  # everything up to the pause is shown before waiting
                    command = _wait_for_command(commands)
                    restart_clock()
                elif not commands.queue:  # the loop is the only reader: not empty means one
                    # waits. The deque itself, without the queue's lock: a command put during
                    # this look is seen at the next step. (get_nowait's Empty exception cost
                    # ~15 us a step on the CNN, empty()'s lock ~7.)
                    break
                else:
                    command = commands.get_nowait()
                handle(command)
            if control.stop_requested or trainer.finished():
                if trainer.last_eval_step != trainer.step:
                    evaluate()
                flush()
                if nonfinite_verdict():
                    return end("non_finite")
                return end("stopped" if control.stop_requested else "completed")

            samples += trainer.train_step()
            stepping = control.paused  # spending a Step command's budget
            if stepping:
                control.step_budget -= 1
            steps_done = stepping and control.step_budget == 0
            checkpoint_due = saver.due()

            if (steps_done or trainer.update_skipped or checkpoint_due
                    or time.monotonic() - last_flush >= METRICS_INTERVAL_S):
                flush()
            if trainer.eval_due():
                evaluate()
            # Only a flush brings losses to the host, so this check costs no sync of its own.
            if nonfinite_verdict():
                return end("non_finite")
            patience = trainer.config.reg.early_stop_patience
            if patience and trainer.evals_without_improvement >= patience:
                emit(Notice(trainer.step, "info",
                            f"early stop: no better validation loss in {patience} evaluations "
                            f"(best {trainer.best_val_loss:.4g} at step {trainer.best_step})"))
                return end("early_stopped")
            if checkpoint_due:
                saver.periodic()  # after the evaluation of this step: its counters included
            if steps_done:
                emit(StateChanged("paused", trainer.step, "single step done"))
    except Exception:
        # The losses and snapshots of the steps completed since the last flush go out
        # before the failure is reported (the store would end steps short of it). Best
        # effort: a device that broke may not give them back, and the failure must.
        with contextlib.suppress(Exception):
            flush()
        raise
