"""The per-step losses on their way to the host, and the interval's mean train loss.

Each step's loss stays on the device in a list; a flush stacks them and brings them
over together (one host-device sync per flush, at most every ``METRICS_INTERVAL_S``),
as one ``MetricsBatch``. The flushed losses add up to the mean train loss of the
interval since the last evaluation, which each ``EvalDone`` reports; the steps whose
update was withheld (run.on_nonfinite = skip or rollback) stay out of that mean.
"""

from __future__ import annotations

import math
import time

import torch

from trainlab.core.protocol import MetricsBatch
from trainlab.engine.hooks import Hook

METRICS_INTERVAL_S = 0.1
"""At most ~10 metrics events a second, whatever the step rate."""


class StepMetrics(Hook):
    """Pending per-step losses, learning rates and epochs; the training throughput; the
    interval's mean train loss.

    A hook: ``after_step`` keeps the step's loss, ``flush_due`` asks for a flush once
    METRICS_INTERVAL_S have passed. ``record`` gives each step's lr and epoch, which the
    step knows and the hook phases do not carry.
    """

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.lrs: list[float] = []
        self.epochs: list[int] = []
        """Per pending step, the epoch its batch came from (a batch may cross one)."""
        self._next_lr = math.nan
        self._next_epoch = 0
        self._next_size = 0
        self.samples = 0
        """Training samples since the clock last started."""
        self.clock_started = time.monotonic()
        self.interval_loss_sum = 0.0
        self.interval_loss_count = 0
        self.last_train_loss: float | None = None
        """The mean the last evaluation reported."""
        self._excluded: set[int] = set()
        """Pending steps to leave out of the interval's mean (their update was withheld)."""

    def record(self, lr: float, epoch: int, size: int) -> None:
        """The lr, batch epoch and batch size of the step about to finish."""
        self._next_lr, self._next_epoch, self._next_size = lr, epoch, size

    def after_step(self, step: int, loss: torch.Tensor, applied: bool) -> None:
        # The loss of the batch before this step's update (L-BFGS: its first evaluation).
        self.losses.append(loss)
        self.lrs.append(self._next_lr)
        self.epochs.append(self._next_epoch)
        self.samples += self._next_size

    def flush_due(self, step: int) -> bool:
        return time.monotonic() - self.clock_started >= METRICS_INTERVAL_S

    def restart_clock(self) -> None:
        """Throughput counts training only, not pauses, evaluations or range tests."""
        self.clock_started, self.samples = time.monotonic(), 0

    def exclude(self, step: int) -> None:
        """Leave pending step ``step`` out of the interval's mean (its update was withheld
        or undone, and a Notice reports it): its NaN would hide the steps that trained."""
        self._excluded.add(step)

    def uncount(self, value: float) -> None:
        """Take a flushed loss back out of the interval's mean (a rollback undid its step)."""
        self.interval_loss_sum -= value
        self.interval_loss_count -= 1

    def flush(self, step: int, epoch: int) -> tuple[MetricsBatch | None, list[tuple[int, float]]]:
        """The pending losses as a MetricsBatch (None if there are none) and the (step,
        loss) pairs that entered the interval's mean; restarts the clock. One host-device
        sync for all of them."""
        now = time.monotonic()
        elapsed, samples = now - self.clock_started, self.samples
        self.clock_started, self.samples = now, 0
        if not self.losses:
            return None, []
        losses = torch.stack(self.losses).tolist()
        first = step - len(losses) + 1
        excluded, self._excluded = self._excluded, set()
        counted = []
        for i, value in enumerate(losses):
            if first + i in excluded:
                continue
            # An applied NaN step (continue) makes the mean NaN: skipping it would hide it.
            self.interval_loss_sum += value
            self.interval_loss_count += 1
            counted.append((first + i, value))
        batch = MetricsBatch(
            steps=tuple(range(first, step + 1)),
            losses=tuple(losses),
            lrs=tuple(self.lrs),
            epoch=epoch,
            steps_per_sec=len(losses) / elapsed if elapsed > 0 else 0.0,
            samples_per_sec=samples / elapsed if elapsed > 0 else 0.0,
            epochs=tuple(self.epochs),
        )
        self.losses, self.lrs, self.epochs = [], [], []
        return batch, counted

    def interval_mean(self) -> float | None:
        """Mean training loss of the steps since the previous evaluation (None if none)."""
        count = self.interval_loss_count
        return self.interval_loss_sum / count if count else None

    def close_interval(self) -> float:
        """The interval's mean (NaN for none) as an evaluation reports it; a new one starts."""
        mean = self.interval_mean()
        self.last_train_loss = math.nan if mean is None else mean
        self.interval_loss_sum, self.interval_loss_count = 0.0, 0
        return self.last_train_loss
