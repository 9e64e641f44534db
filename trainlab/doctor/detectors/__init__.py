"""The live doctor: detectors that turn the run's event stream into diagnoses.

Every detector is a pure function ``(history, context) -> AlertRaised | None`` over
what the run has emitted so far, registered under its kind with ``@detector`` and keyed
by the event class it reads. ``Diagnostics.observe`` folds each event the loop emits
into a ``History`` (one ``match`` over every event class) and runs the detectors that
read that class of event. An alert of a kind is raised once, and may
be raised again only after a live change (a fix, a key, a rollback: a ``HyperChanged``)
that came after it: once ``History.last_change_step`` is past the step of the history
when it was raised, and then only by an alert whose own step is past that change (what
the run shows since the change, not what it showed before; an init-time finding such as
symmetry, dated at step 1, is not raised again).
The history and the registry are in ``registry``; layer detectors live in ``layers``
(per-layer statistics), curve detectors in ``curves`` (losses and evaluations).

No torch here: detectors read plain numbers from protocol events and are tested on
hand-built histories. The thresholds are named constants in the detector modules, each
with the reason for its value.

Cost, in the training thread, measured on full histories (4096 losses; 64 snapshots of
a 31-row net, all within the last 50 steps: the worst case for the update-ratio span)
on this project's shared 2-core CPU: about 0.05 ms per metrics batch with warm caches,
0.2 ms inside a run whose steps evict them (``diagnostics.curves`` says how), and 2.3 ms
per snapshot (update_ratio's per-row medians 1.6, shared with slow_lower_layers; the
rest under 0.3 each). Metrics batches come at most 10 times a second and snapshots 4,
so at worst ~1.1% of the training thread; a net of a few layers or a history not yet
full costs a fraction of that.

Length of the run: every container here is bounded (the last LOSS_HISTORY losses,
SNAPSHOT_HISTORY snapshots, EVAL_HISTORY evaluations, a few levels per chunk window, one
entry per alert kind), and what a detector needs from further back is folded in as the
events arrive (the best validation loss since the last change, the lowest chunk level),
so an event costs the same after a million steps as after a thousand: with an
evaluation every step, 4 us per evaluation at 100 past ones and at 100,000 (it was 1.3
ms at 10,000 when the overfitting detector scanned every evaluation), measured by
``bench/diagnostics.py``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypeVar, assert_never

from trainlab.core import protocol
from trainlab.core.config import Config
from trainlab.core.protocol import (
    AlertRaised,
    EvalDone,
    Event,
    LayerStatsSnapshot,
    MetricsBatch,
    NonFiniteDetected,
)
from trainlab.doctor.detectors import curves, layers  # noqa: F401 (they register on import)
from trainlab.doctor.detectors.registry import (
    DETECTORS,
    LOSS_HISTORY,
    QUIET_AFTER,
    Context,
    History,
)

_T = TypeVar("_T")


def _extend_bounded(kept: list[_T], new: Iterable[_T]) -> None:
    """Append ``new`` to ``kept``, then keep only its last LOSS_HISTORY items."""
    kept.extend(new)
    del kept[:-LOSS_HISTORY]  # a memmove of at most 4096 pointers


class Diagnostics:
    """Feed it every event of a run; it returns the alerts they newly raise."""

    def __init__(self, config: Config) -> None:
        self.history = History()
        self.context = Context(config)
        self.raised: dict[str, int] = {}
        """kind -> the history's step when it was last raised."""

    def observe(self, event: Event) -> list[AlertRaised]:
        """Fold ``event`` into the history; the alerts it raises (a kind once, again
        only after a later live change: see the module's docstring)."""
        reads = self._fold(event)
        if reads is None:
            return []
        h = self.history
        h.memo.clear()
        alerts = []
        for kind, (kind_reads, detect) in DETECTORS.items():
            if kind_reads is not reads or self._standing(kind) or any(
                    self._standing(other) for other in QUIET_AFTER[kind]):
                continue
            raised_at = self.raised.get(kind)
            alert = detect(h, self.context)
            if alert is None or (raised_at is not None and alert.step <= h.last_change_step):
                continue
            self.raised[kind] = max(h.step, alert.step)
            alerts.append(alert)
        return alerts

    def _standing(self, kind: str) -> bool:
        """An alert of ``kind`` was raised and no live change has come since."""
        raised_at = self.raised.get(kind)
        return raised_at is not None and self.history.last_change_step <= raised_at

    def _fold(self, event: Event) -> type[Event] | None:
        """Fold ``event`` into the history and the context; the event class whose
        detectors must run now (``registry.READ_EVENTS``), or None."""
        h, ctx = self.history, self.context
        match event:
            case protocol.RunStarted():
                ctx.task, ctx.num_classes = event.dataset.task, event.dataset.num_classes
                ctx.loss = event.loss
                return None
            case protocol.HyperChanged():
                ctx.config = ctx.config.with_value(event.key, event.new)
                h.last_change_step = event.step
                return None
            case protocol.MetricsBatch():
                if not event.steps:
                    return None
                _extend_bounded(h.steps, event.steps)
                _extend_bounded(h.losses, event.losses)
                _extend_bounded(h.lrs, event.lrs)
                h.step = event.steps[-1]
                if h.first_loss is None:
                    h.first_loss = next((x for x in event.losses if math.isfinite(x)), None)
                return MetricsBatch
            case protocol.LayerStatsSnapshot():
                if h.first_snapshot is None:
                    h.first_snapshot = event
                h.snapshots.append(event)
                return LayerStatsSnapshot
            case protocol.EvalDone():
                h.add_eval(event)
                return EvalDone
            case protocol.NonFiniteDetected():
                h.nonfinite = event
                return NonFiniteDetected
            case (protocol.StateChanged() | protocol.CommandRejected()
                  | protocol.CheckpointSaved() | protocol.Notice() | protocol.EngineFailed()
                  | protocol.RunFinished() | protocol.AlertRaised() | protocol.LrFound()
                  | protocol.Attached() | protocol.ControlChanged()):
                return None  # nothing a detector reads
            case _:
                assert_never(event)
