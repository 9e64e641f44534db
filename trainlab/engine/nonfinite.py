"""run.on_nonfinite: what a run does when its training loss turns NaN or infinite.

One object, ``NonFinitePolicy``, owns all of it: finding the first non-finite step,
withholding its update (skip, rollback, and stop on a CPU, read before the update),
keeping a good state to return to (rollback), the verdict after each flush (go on, warn,
roll back, or end the run), and locating the layer that broke. It is a hook of the loop
(``trainlab.engine.hooks``):

- ``after_loss``: read the step's loss before its update when the policy needs it (one
  host sync; on a CPU it waits for nothing), withhold a non-finite one, and under
  rollback keep the good state every ROLLBACK_KEEP_EVERY steps;
- ``after_step``: count withheld updates;
- ``at_flush``: find a non-finite loss among the flushed ones (only a flush brings them
  to the host, so this costs no sync of its own) and locate the layer from a snapshot;
- ``should_end``: apply the policy; ``non_finite`` ends the run.

Why these numbers: a loss turns non-finite when an update overflowed the weights
(usually a learning rate too high) or a sample is corrupt. A corrupt sample spoils one
batch, so skipping it is enough; weights that overflow need a lower learning rate from
weights that were still fine, which is a rollback.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from trainlab.core.config import Config
from trainlab.core.protocol import Emit, HyperChanged, NonFiniteDetected, Notice
from trainlab.engine.hooks import Flushed, Hook
from trainlab.engine.metrics import StepMetrics
from trainlab.engine.optim import build_optimizer, update_hyperparameters
from trainlab.engine.optimizer_step import NonFiniteLoss
from trainlab.engine.stats import first_nonfinite

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
"""A rollback multiplies optim.lr by this: an infinite loss comes from an lr too high, so
going back means going back with a lower one. A tenth, not a half: a half often blows
up again."""
ROLLBACK_MAX = 3
"""Rollbacks before the run stops: after three the LR is 1/1000 of where it was, and a
run that still turns non-finite has another cause (data, init, a loss that overflows)."""
COUNTERS = ("losses_since_good_state", "first_nonfinite_step", "update_skipped",
            "withheld_in_a_row", "rollbacks")
"""The policy's state a checkpoint keeps (plain numbers and a dict of them)."""


@dataclass(frozen=True)
class GoodState:
    """Copies of the weights and optimizer state that gave a finite loss (for rollback)."""

    step: int
    """Steps taken when they were copied: a rollback resumes from the weights of then."""
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    optimizer_name: str
    """The optimizer the state belongs to (after a live switch it cannot be loaded)."""


class Guarded(Protocol):
    """What the policy reads and changes of the run it guards (the loop's Trainer)."""

    config: Config
    step: int
    """Steps taken."""
    on_cpu: bool
    model: nn.Module
    optimizer: torch.optim.Optimizer
    """Replaced by a rollback across a live optimizer switch."""
    metrics: StepMetrics
    last_eval_step: int | None
    emit: Emit

    def set_hyper(self, key: str, value: Any, why: str = "") -> HyperChanged:
        """Apply a live change, recorded in the change log."""
        ...

    def locate_nonfinite(self, step: int) -> NonFiniteDetected:
        """Which layer broke first, from a measured pass on the last batch."""
        ...


class NonFinitePolicy(Hook):
    """run.on_nonfinite for ``trainer``'s run, with everything it needs to remember.

    The policy is read from the trainer's config at every step: it is hot.
    """

    def __init__(self, trainer: Guarded) -> None:
        self.trainer = trainer
        self.first_nonfinite_step: int | None = None
        """The first step whose loss was not finite and that no verdict has dealt with."""
        self.update_skipped = False
        """The last step's update was withheld because its loss was not finite."""
        self.withheld_in_a_row = 0
        """Steps in a row, up to the last, whose update was withheld."""
        self.good_state: GoodState | None = None
        """run.on_nonfinite = rollback: the state to go back to (held only under it)."""
        self.losses_since_good_state: dict[int, float] = {}
        """rollback: step -> loss of the flushed steps after the good state (at most
        ROLLBACK_KEEP_EVERY and a flush), which a rollback takes back out of the
        interval's mean."""
        self.rollbacks = 0
        self.warned = False
        """run.on_nonfinite = continue said its one warning."""
        self.located = False
        """The layer that broke was reported (once a run)."""

    @property
    def policy(self) -> str:
        return self.trainer.config.run.on_nonfinite

    def reads_every_loss(self) -> bool:
        """Is every step's loss read before its update, so a non-finite one is withheld?

        skip and rollback need it. On a CPU reading the loss waits for nothing, so stop
        has it too; on a GPU it is one host-device sync per step, which stop and continue
        do not pay (there the metrics flush finds a non-finite loss, after its update).
        """
        policy = self.policy
        return policy in ("skip", "rollback") or (policy == "stop" and self.trainer.on_cpu)

    # --- hook phases ------------------------------------------------------------------

    def before_step(self, step: int) -> None:
        if self.good_state is not None and self.policy != "rollback":
            self.good_state = None  # its memory is only worth holding under rollback

    def after_loss(self, step: int, loss: torch.Tensor) -> None:
        """Withhold the update of a non-finite loss (one host sync); under rollback keep
        these weights as the good state every ROLLBACK_KEEP_EVERY steps."""
        if not self.reads_every_loss():
            return
        if not math.isfinite(loss.item()):
            raise NonFiniteLoss  # aborts the step (L-BFGS's too) before it moves
        if self.policy == "rollback" and (
            (step - 1) % ROLLBACK_KEEP_EVERY == 0 or self.good_state is None
        ):
            self.keep_good_state()  # these weights just gave a finite loss

    def after_step(self, step: int, loss: torch.Tensor, applied: bool) -> None:
        if applied:
            self.update_skipped, self.withheld_in_a_row = False, 0
            return
        # The weights stay finite and the layer that broke can still be found.
        self.update_skipped = True
        self.withheld_in_a_row += 1
        if self.policy != "stop":
            # skip/rollback train on: the mean is of the steps that trained. Under stop
            # the run ends here, with a non-finite mean (a GPU applies the step).
            self.trainer.metrics.exclude(step)
        if self.first_nonfinite_step is None:
            self.first_nonfinite_step = step

    def flush_due(self, step: int) -> bool:
        return self.update_skipped  # the verdict needs this step's loss on the host

    def at_flush(self, flushed: Flushed) -> None:
        for step, value in flushed.counted:
            if self.good_state is not None:
                self.losses_since_good_state[step] = value
            if not math.isfinite(value) and self.first_nonfinite_step is None:
                self.first_nonfinite_step = step
        for snapshot in flushed.snapshots:
            where = first_nonfinite(snapshot)
            if where is not None and not self.located:
                self.located = True
                layer, kind = where
                self.trainer.emit(NonFiniteDetected(snapshot.step, layer, kind,
                                                    f"{kind} of layer {layer} turned "
                                                    f"non-finite (step {snapshot.step})"))

    def should_end(self, step: int) -> str | None:
        """Report a non-finite loss and apply the policy: ``non_finite`` when the run
        must stop."""
        bad_step = self.first_nonfinite_step
        if bad_step is None:
            return None
        emit = self.trainer.emit
        if not self.located:
            self.located = True
            emit(self.trainer.locate_nonfinite(bad_step))
        if self.policy == "stop":
            kept = "; its update was not applied" if self.update_skipped else ""
            emit(Notice(step, "error", f"training loss became non-finite at step {bad_step}"
                        f"{kept}; run stopped (run.on_nonfinite = stop)"))
            return "non_finite"
        if self.policy == "continue":
            if not self.warned:
                self.warned = True
                emit(Notice(step, "warning", f"training loss non-finite since step "
                            f"{bad_step}; continuing (run.on_nonfinite = continue)"))
            return None
        # skip and rollback deal with each withheld step, then wait for the next one.
        self.first_nonfinite_step = None
        if not self.update_skipped:
            return None  # applied before the switch to this policy: nothing to withhold
        events, must_stop = self.recover(bad_step)
        for event in events:
            emit(event)
        return "non_finite" if must_stop else None

    # --- skip and rollback ----------------------------------------------------------

    def keep_good_state(self) -> None:
        """Copy the weights and the optimizer state (on their device; see ROLLBACK_KEEP_EVERY
        for the cost) as the state a rollback returns to."""
        trainer = self.trainer
        self.losses_since_good_state = {}
        self.good_state = GoodState(
            step=trainer.step,
            model={k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            optimizer=copy.deepcopy(trainer.optimizer.state_dict()),
            optimizer_name=trainer.config.optim.name,
        )

    def recover(self, bad_step: int) -> tuple[list[HyperChanged | Notice], bool]:
        """skip or rollback, after step ``bad_step`` had its update withheld: skip goes
        on (up to SKIP_MAX_IN_A_ROW in a row), rollback restores the good state with a
        lower lr (up to ROLLBACK_MAX times). Returns the events that say what was done,
        and whether the run must stop.
        """
        policy, step = self.policy, self.trainer.step
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
        lr = self.trainer.config.optim.lr
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

    def roll_back(self, bad_step: int) -> HyperChanged:
        """Restore the good state and multiply optim.lr by ROLLBACK_LR_FACTOR.

        The step counter, the data order and the change log go on: only the weights and
        the optimizer's state go back. Returns the lr change, recorded like any live
        change. Raises ValueError when no good state was kept.
        """
        trainer, good = self.trainer, self.good_state
        if good is None:
            raise ValueError("no good state to roll back to")
        trainer.model.load_state_dict(good.model)  # copies in: the kept state stays intact
        if good.optimizer_name == trainer.config.optim.name:
            # A copy, because the optimizer updates its state tensors in place.
            trainer.optimizer.load_state_dict(copy.deepcopy(good.optimizer))
            # The kept param groups hold the hyperparameters of then; the config's rule.
            update_hyperparameters(trainer.optimizer, trainer.config.optim)
        else:  # switched live since: its state cannot be loaded, start it empty
            trainer.optimizer = build_optimizer(trainer.model.parameters(), trainer.config.optim)
        self.rollbacks += 1
        self.withheld_in_a_row = 0
        # The steps after the good state are undone: their losses leave the mean too
        # (flushed ones from the interval, pending ones at their flush).
        for step in range(good.step + 1, bad_step + 1):
            value = self.losses_since_good_state.pop(step, None)
            if value is not None and step > (trainer.last_eval_step or 0):  # in the mean
                trainer.metrics.uncount(value)
            trainer.metrics.exclude(step)
        changed = trainer.set_hyper("optim.lr", trainer.config.optim.lr * ROLLBACK_LR_FACTOR,
                                    f"rollback to step {good.step} after a non-finite loss "
                                    f"at step {bad_step}")
        return dataclasses.replace(changed, rollback=True)  # the app tells it by this flag

    # --- checkpoints ------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        """The state a checkpoint keeps (COUNTERS; the good state is saved apart)."""
        return {name: copy.copy(getattr(self, name)) for name in COUNTERS}

    def load_counters(self, counters: dict[str, Any]) -> None:
        for name in COUNTERS:
            setattr(self, name, copy.copy(counters[name]))
