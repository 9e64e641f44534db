"""The live doctor: detectors that turn the run's event stream into diagnoses.

Every detector is a pure function ``(history, context) -> AlertRaised | None`` over
what the run has emitted so far, registered under its kind with ``@detector``.
``Diagnostics.observe`` folds each event the loop emits into a ``History`` and runs
the detectors that read that kind of event. An alert of a kind is raised once, and may
be raised again only after a live change (a fix, a key, a rollback: a ``HyperChanged``)
that came after it: once ``History.last_change_step`` is past the step of the history
when it was raised, and then only by an alert whose own step is past that change (what
the run shows since the change, not what it showed before; an init-time finding such as
symmetry, dated at step 1, is not raised again).
Layer detectors live in ``diagnostics.layers`` (per-layer statistics), curve detectors
in ``diagnostics.curves`` (losses and evaluations).

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
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.config import Config
from engine.protocol import (
    AlertRaised,
    EvalDone,
    HyperChanged,
    LayerStatsSnapshot,
    MetricsBatch,
    NonFiniteDetected,
    RunStarted,
)

SNAPSHOT_HISTORY = 64
"""Per-layer snapshots kept: enough to see a trend over the last stretch of a run."""
LOSS_HISTORY = 4096
"""Training losses kept (one per step), for the curve detectors' windows."""

SNAPSHOT, LOSS, EVAL, NONFINITE = "snapshot", "loss", "eval", "nonfinite"
"""What a detector reads: it runs when an event of that kind arrived."""


@dataclass
class History:
    """What the run has shown so far, as plain numbers."""

    snapshots: collections.deque[LayerStatsSnapshot] = field(
        default_factory=lambda: collections.deque(maxlen=SNAPSHOT_HISTORY))
    first_snapshot: LayerStatsSnapshot | None = None
    """The run's first snapshot: the network as initialized when statistics are taken
    from step 1 (the loop measures step 1 whenever stats.every > 0); None while there is
    none, as in a run with stats.every = 0."""
    steps: list[int] = field(default_factory=list)
    """The steps of the last LOSS_HISTORY losses, oldest first. Lists trimmed as batches
    arrive, not deques: the detectors slice them on every batch, and a deque would have
    to be copied whole first (~30 us for 4096 steps and losses)."""
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    first_loss: float | None = None
    """The first finite training loss: the loss at init."""
    evals: list[EvalDone] = field(default_factory=list)
    nonfinite: NonFiniteDetected | None = None
    step: int = 0
    last_change_step: int = 0
    """Step of the last live change: curve detectors judge only what came after it."""
    memo: dict[Any, Any] = field(default_factory=dict)
    """Figures several detectors read from the same event (cleared on every event)."""
    chunks: dict[int, ChunkLevels] = field(default_factory=dict)
    """Window size -> the loss levels of the whole chunks of that many steps since the
    last live change, kept across events: a chunk's losses never change once it is
    complete (``diagnostics.curves`` fills it)."""


@dataclass
class ChunkLevels:
    """The levels of whole chunks of one window size since one live change."""

    change_step: int
    """``History.last_change_step`` they were computed after (another one starts afresh)."""
    starts: collections.deque[int] = field(default_factory=collections.deque)
    """Each chunk's first step, oldest first."""
    levels: collections.deque[float | None] = field(default_factory=collections.deque)
    """Each chunk's level (None: mostly non-finite), in the order of ``starts``."""
    next_step: int = 0
    """The first step not yet looked at: where the next batch's scan starts."""


@dataclass
class Context:
    """What the detectors know about the run besides its history."""

    config: Config
    """The run's config, live changes folded in (fixes read the current lr from it)."""
    task: str = "classification"
    num_classes: int = 0
    loss: str = ""
    """The objective's name: cross_entropy, bce_with_logits, mse, ..."""


Detector = Callable[[History, Context], AlertRaised | None]
DETECTORS: dict[str, tuple[str, Detector]] = {}
"""kind -> (what it reads, the detector)."""


def detector(kind: str, reads: str) -> Callable[[Detector], Detector]:
    """Register a detector of alert ``kind`` that runs when a ``reads`` event arrives."""

    def register(fn: Detector) -> Detector:
        if kind in DETECTORS:
            raise ValueError(f"two detectors for {kind}")
        DETECTORS[kind] = (reads, fn)
        return fn

    return register


class Diagnostics:
    """Feed it every event of a run; it returns the alerts they newly raise."""

    def __init__(self, config: Config) -> None:
        self.history = History()
        self.context = Context(config)
        self.raised: dict[str, int] = {}
        """kind -> the history's step when it was last raised."""

    def observe(self, event: Any) -> list[AlertRaised]:
        """Fold ``event`` into the history; the alerts it raises (a kind once, again
        only after a later live change: see the module's docstring)."""
        reads = self._fold(event)
        if reads is None:
            return []
        h = self.history
        h.memo.clear()
        alerts = []
        for kind, (kind_reads, detect) in DETECTORS.items():
            raised_at = self.raised.get(kind)
            if kind_reads != reads or (raised_at is not None
                                       and h.last_change_step <= raised_at):
                continue
            alert = detect(h, self.context)
            if alert is None or (raised_at is not None and alert.step <= h.last_change_step):
                continue
            self.raised[kind] = max(h.step, alert.step)
            alerts.append(alert)
        return alerts

    def _fold(self, event: Any) -> str | None:
        h, ctx = self.history, self.context
        if isinstance(event, RunStarted):
            ctx.task, ctx.num_classes = event.dataset.task, event.dataset.num_classes
            ctx.loss = event.loss
            return None
        if isinstance(event, HyperChanged):
            ctx.config = ctx.config.with_value(event.key, event.new)
            h.last_change_step = event.step
            return None
        if isinstance(event, MetricsBatch):
            if not event.steps:
                return None
            for kept, new in ((h.steps, event.steps), (h.losses, event.losses),
                              (h.lrs, event.lrs)):
                kept.extend(new)
                del kept[:-LOSS_HISTORY]  # a memmove of at most 4096 pointers
            h.step = event.steps[-1]
            if h.first_loss is None:
                h.first_loss = next((x for x in event.losses if math.isfinite(x)), None)
            return LOSS
        if isinstance(event, LayerStatsSnapshot):
            if h.first_snapshot is None:
                h.first_snapshot = event
            h.snapshots.append(event)
            return SNAPSHOT
        if isinstance(event, EvalDone):
            h.evals.append(event)
            return EVAL
        if isinstance(event, NonFiniteDetected):
            h.nonfinite = event
            return NONFINITE
        return None


def _load_detectors() -> None:
    # Registration happens on import; the modules import this one for the decorator.
    from engine.diagnostics import curves, layers  # noqa: F401


_load_detectors()
