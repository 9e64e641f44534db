"""The per-layer instruments as a hook of the loop: which steps they track, and when.

``Instruments`` (``trainlab.engine.stats``) measures; this hook puts it around the steps.
With stats.every = 0 and no snapshot requested a step runs as if it were not there: no
clock, no forward hook, nothing recorded. Otherwise each step is timed (for stats.budget
and the overhead a snapshot reports), and a due one runs with the forward hooks attached,
its gradients read after backward; its snapshot waits for the next flush, so a viewer
gets the losses of those steps first.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager

import torch

from trainlab.core.protocol import LayerStatsSnapshot
from trainlab.engine.hooks import Hook
from trainlab.engine.stats import Instruments, Tracker


class TrackedSteps(Hook):
    """Runs ``instruments`` around each step; ``pending`` holds the snapshots to flush."""

    def __init__(self, instruments: Instruments) -> None:
        self.instruments = instruments
        self.pending: list[LayerStatsSnapshot] = []
        self._started: float | None = None
        """perf_counter at the step's start, when the step is timed."""
        self._tracking: AbstractContextManager[Tracker] | None = None
        self._tracker: Tracker | None = None

    def before_step(self, step: int) -> None:
        instruments = self.instruments
        if not instruments.cfg.every and instruments.requested is None:
            self._started = None  # instruments off: no clock, no hook, nothing recorded
            return
        self._started = time.perf_counter()
        if instruments.due(step):
            self._tracking = instruments.track(step)
            self._tracker = self._tracking.__enter__()

    def after_backward(self, step: int) -> None:
        if self._tracker is not None:
            self._tracker.after_backward()

    def after_step(self, step: int, loss: torch.Tensor, applied: bool) -> None:
        if self._started is None:
            return
        tracked = self._tracking is not None
        if self._tracking is not None:
            self._tracking.__exit__(None, None, None)
            self._tracking = self._tracker = None
        self.instruments.record(time.perf_counter() - self._started, tracked)
        if tracked and (snapshot := self.instruments.take()) is not None:
            self.pending.append(snapshot)

    def take(self) -> list[LayerStatsSnapshot]:
        """The snapshots since the last call, in step order."""
        snapshots, self.pending = self.pending, []
        return snapshots
