"""The loop's hook seam: the fixed points where everything that is not training plugs in.

``trainlab.engine.loop.run`` reads top to bottom: commands, step, flush, evaluate,
checkpoint, end. What watches or guards the training is a ``Hook``: the per-layer
instruments (``tracking.TrackedSteps``), the metrics batch (``metrics.StepMetrics``), the
non-finite policy (``nonfinite.NonFinitePolicy``), early stopping and the plateau
schedule (``loop``), and the checkpoint saver (``saver.CheckpointSaver``). The diagnostics
are not hooks: they observe every event on its way out (``Diagnostics`` behind ``emit``).

A hook defines only the phases it needs; ``Hooks`` calls a phase on the hooks that
define it, in the order they were given, so a phase no hook defines costs nothing and
one that a single hook defines costs one call. The phases, in the order a step meets them:

- ``before_step(step)``: the step about to be taken (counted from 1).
- ``after_loss(step, loss)``: the step's first loss, before any update. Raising
  ``NonFiniteLoss`` here withholds the update (the weights stay as they were).
- ``after_backward(step)``: gradients exist, raw (before clipping).
- ``after_step(step, loss, applied)``: the step is done; ``loss`` is still on the device,
  ``applied`` is False when its update was withheld.
- ``flush_due(step)``: does the hook need the pending losses shipped now?
- ``at_flush(flushed)``: the losses (and snapshots) since the last flush reached the host.
- ``at_eval(result)``: a validation result.
- ``should_end(step)``: after the step's flush and evaluation: a reason to end the run
  (``non_finite``, ``early_stopped``) or None.
- ``at_boundary(step)``: the run goes on past this step (the periodic checkpoint).
- ``at_end(reason)``: the run ends, its metrics flushed (the last checkpoint).

A training loop that is not ours (``trainlab.track`` around a user's own loop) and a
distributed run call the same phases around a step they take themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trainlab.core.protocol import EvalDone, LayerStatsSnapshot, MetricsBatch

PHASES = ("before_step", "after_loss", "after_backward", "after_step", "flush_due",
          "at_flush", "at_eval", "should_end", "at_boundary", "at_end")
"""Every phase of ``Hook``, in the order a step meets them."""


@dataclass(frozen=True)
class Flushed:
    """What one flush brought to the host."""

    batch: MetricsBatch | None
    """The per-step losses since the last flush (None: no step since)."""
    counted: tuple[tuple[int, float], ...]
    """(step, loss) of the steps that entered the interval's mean train loss: every
    flushed step except those whose update was withheld."""
    snapshots: tuple[LayerStatsSnapshot, ...]
    """The per-layer snapshots of the flushed steps, in step order."""


class Hook:
    """Something the loop calls at its fixed points; override the phases you need.

    The defaults are never called: ``Hooks`` only calls the phases a subclass defines.
    """

    def before_step(self, step: int) -> None:
        """The step ``step`` (counted from 1) is about to be taken."""

    def after_loss(self, step: int, loss: torch.Tensor) -> None:
        """The step's first data loss, before any update; may raise NonFiniteLoss."""

    def after_backward(self, step: int) -> None:
        """The step's gradients exist, before clipping."""

    def after_step(self, step: int, loss: torch.Tensor, applied: bool) -> None:
        """The step is done (``applied``: its update happened)."""

    def flush_due(self, step: int) -> bool:
        """Must the pending losses be shipped after this step?"""
        return False

    def at_flush(self, flushed: Flushed) -> None:
        """Losses and snapshots since the last flush reached the host."""

    def at_eval(self, result: EvalDone) -> None:
        """A validation result was emitted."""

    def should_end(self, step: int) -> str | None:
        """A reason to end the run after this step, or None."""
        return None

    def at_boundary(self, step: int) -> None:
        """The run goes on past this step."""

    def at_end(self, reason: str) -> None:
        """The run ends for ``reason``; its metrics are flushed."""


class Hooks:
    """Hooks, called phase by phase in the order given.

    Each phase is a tuple of the bound methods that override ``Hook``'s, made once: a
    call costs one loop over them (none, for a phase no hook defines).
    """

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self._hooks: list[Hook] = []
        self._phases: dict[str, tuple[Callable[..., Any], ...]] = {}
        for hook in hooks:
            self.add(hook)

    def add(self, hook: Hook) -> None:
        """Call ``hook`` too, after the hooks already here."""
        self._hooks.append(hook)
        for phase in PHASES:
            self._phases[phase] = tuple(
                getattr(h, phase) for h in self._hooks
                if getattr(type(h), phase) is not getattr(Hook, phase))

    def before_step(self, step: int) -> None:
        for call in self._phases["before_step"]:
            call(step)

    def after_loss(self, step: int, loss: torch.Tensor) -> None:
        for call in self._phases["after_loss"]:
            call(step, loss)

    def after_backward(self, step: int) -> None:
        for call in self._phases["after_backward"]:
            call(step)

    def after_step(self, step: int, loss: torch.Tensor, applied: bool) -> None:
        for call in self._phases["after_step"]:
            call(step, loss, applied)

    def flush_due(self, step: int) -> bool:
        """Any hook's flush_due (each is asked: a hook may note what it saw)."""
        due = False
        for call in self._phases["flush_due"]:
            due = call(step) or due
        return due

    def at_flush(self, flushed: Flushed) -> None:
        for call in self._phases["at_flush"]:
            call(flushed)

    def at_eval(self, result: EvalDone) -> None:
        for call in self._phases["at_eval"]:
            call(result)

    def should_end(self, step: int) -> str | None:
        """The first hook's reason to end the run, or None."""
        for call in self._phases["should_end"]:
            reason: str | None = call(step)
            if reason:
                return reason
        return None

    def at_boundary(self, step: int) -> None:
        for call in self._phases["at_boundary"]:
            call(step)

    def at_end(self, reason: str) -> None:
        for call in self._phases["at_end"]:
            call(reason)
