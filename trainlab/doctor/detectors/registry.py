"""What the detectors share: the history they read, the context of the run, and the
registry (``@detector``) that says which detector runs on which event. The
``Diagnostics`` fold in this package's ``__init__`` drives them."""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainlab.core.config import Config
from trainlab.core.health import ALERT_TITLES
from trainlab.core.protocol import (
    AlertRaised,
    EvalDone,
    Event,
    LayerStatsSnapshot,
    MetricsBatch,
    NonFiniteDetected,
)

SNAPSHOT_HISTORY = 64
"""Per-layer snapshots kept: enough to see a trend over the last stretch of a run."""
LOSS_HISTORY = 4096
"""Training losses kept (one per step), for the curve detectors' windows."""
EVAL_HISTORY = 64
"""Evaluations kept, the newest: a run that evaluates every step (a small full-batch
model, one step an epoch) makes millions of them, and a list of all of them grew by one
per step while the overfitting detector scanned it whole (5 ms an evaluation at 4,000).
What a detector needs from older ones is folded into ``EvalRecord`` as they arrive; the
run store keeps every evaluation."""
RECENT_USABLE_EVALS = 16
"""Usable evaluations since the last live change that ``EvalRecord`` keeps in full: at
least the overfitting detector's last OVERFIT_EVALS + 1 (a test keeps it so)."""

SNAPSHOT, LOSS, EVAL, NONFINITE = LayerStatsSnapshot, MetricsBatch, EvalDone, NonFiniteDetected
"""What a detector reads: the event class whose arrival runs it (the registry is keyed by
the class, so renaming an event cannot leave a detector waiting on a name)."""
READ_EVENTS: tuple[type[Event], ...] = (SNAPSHOT, LOSS, EVAL, NONFINITE)
"""Every event class a detector may read: ``Diagnostics`` runs the detectors of each
(a test checks that the fold reports each, and that every detector reads one)."""


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
    evals: collections.deque[EvalDone] = field(
        default_factory=lambda: collections.deque(maxlen=EVAL_HISTORY))
    """The last EVAL_HISTORY evaluations, oldest first (fill it with ``add_eval``)."""
    eval_record: EvalRecord = field(default_factory=lambda: EvalRecord(0))
    """The usable evaluations since the last live change, folded (read it through
    ``usable_evals``)."""
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


    def add_eval(self, event: EvalDone) -> None:
        """Fold one evaluation in: kept among the last EVAL_HISTORY, and counted in the
        record of those since the last live change when it came after it."""
        record = self.usable_evals()  # brought up to date before the new one joins
        self.evals.append(event)
        if event.step > self.last_change_step:
            record.add(event)

    def usable_evals(self) -> EvalRecord:
        """The record of the usable evaluations after ``last_change_step``. A live change
        starts a new record, filled from the kept evaluations that came after it: events
        arrive in step order, so at the change there are none yet, and a history edited
        by hand (a test) is recounted from what it holds."""
        if self.eval_record.change_step != self.last_change_step:
            self.eval_record = EvalRecord(self.last_change_step)
            for event in self.evals:
                if event.step > self.last_change_step:
                    self.eval_record.add(event)
        return self.eval_record


@dataclass
class EvalRecord:
    """The usable evaluations (finite validation and training loss) since one live
    change, folded one at a time: how many, the best, the last few. O(1) per evaluation
    and bounded however long the run, where a list of them all was scanned on each."""

    change_step: int
    """``History.last_change_step`` it counts after."""
    count: int = 0
    """Usable evaluations since the change."""
    best: EvalDone | None = None
    """The first of them with the lowest validation loss."""
    best_index: int = 0
    """Its position among them (0: the first after the change)."""
    recent: collections.deque[EvalDone] = field(
        default_factory=lambda: collections.deque(maxlen=RECENT_USABLE_EVALS))
    """The last RECENT_USABLE_EVALS of them, oldest first."""

    def add(self, event: EvalDone) -> None:
        """Count ``event`` if its losses are finite (a NaN says nothing about a trend)."""
        if not (math.isfinite(event.val_loss) and math.isfinite(event.train_loss)):
            return
        if self.best is None or event.val_loss < self.best.val_loss:
            self.best, self.best_index = event, self.count
        self.count += 1
        self.recent.append(event)


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
    minima: collections.deque[tuple[int, float]] = field(default_factory=collections.deque)
    """(start, level) of each kept chunk lower than every later one, oldest first, so
    levels rising: the first is the lowest level kept. A sliding-window minimum, O(1)
    amortized per chunk, where taking the min of every kept level on every metrics batch
    cost more the longer the run (up to LOSS_HISTORY / window levels)."""

    def append(self, start: int, level: float | None) -> None:
        """A new whole chunk, the newest."""
        self.starts.append(start)
        self.levels.append(level)
        if level is not None:
            while self.minima and self.minima[-1][1] >= level:
                self.minima.pop()  # never the lowest again: this one is lower and newer
            self.minima.append((start, level))

    def drop_before(self, step: int) -> None:
        """Forget the chunks that began before ``step`` (gone from the loss history)."""
        while self.starts and self.starts[0] < step:
            start = self.starts.popleft()
            self.levels.popleft()
            if self.minima and self.minima[0][0] == start:
                self.minima.popleft()

    def lowest(self) -> float | None:
        """The lowest level kept (None: no chunk has one)."""
        return self.minima[0][1] if self.minima else None

    def last_known(self, count: int) -> list[float]:
        """The newest ``count`` levels that are not None, oldest first."""
        found: list[float] = []
        for level in reversed(self.levels):
            if level is not None:
                found.append(level)
                if len(found) == count:
                    break
        return found[::-1]


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
DETECTORS: dict[str, tuple[type[Event], Detector]] = {}
"""kind -> (the event class it reads, the detector)."""
QUIET_AFTER: dict[str, tuple[str, ...]] = {}
"""kind -> the kinds whose standing alert already says what it would (the same cause,
the same fix): it is not raised while one of them is, that is until a live change after
it. Registration order decides within one event: a kind registered earlier is judged
first."""


def detector(kind: str, reads: type[Event], quiet_after: tuple[str, ...] = ()
             ) -> Callable[[Detector], Detector]:
    """Register a detector of alert ``kind`` that runs when an event of class ``reads``
    arrives (and not while an alert of a ``quiet_after`` kind stands: ``QUIET_AFTER``)."""

    def register(fn: Detector) -> Detector:
        if kind in DETECTORS:
            raise ValueError(f"two detectors for {kind}")
        if kind not in ALERT_TITLES:  # the app names every alert kind from there
            raise ValueError(f"{kind} has no title in trainlab.core.health.ALERT_TITLES")
        if reads not in READ_EVENTS:
            raise ValueError(f"{kind} reads {reads.__name__}, which no detector reads "
                             f"(READ_EVENTS)")
        DETECTORS[kind] = (reads, fn)
        QUIET_AFTER[kind] = quiet_after
        return fn

    return register
