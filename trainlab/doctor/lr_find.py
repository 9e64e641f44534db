"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates"; fastai's lr_find).

A copy of the model (:class:`trainlab.engine.sandbox.Sandbox`) trains for at most ``steps``
steps, one fresh mini-batch of the run's batch size each, while the learning rate rises
geometrically from ``start`` to ``end``. The loss first barely moves (lr too small),
then falls, then blows up (lr too large). The suggestion is where the smoothed loss
falls fastest against log(lr), before its minimum: where a larger lr still buys the most
progress per step, the usual pick for training (docs/field-knowledge.md#learning-rate).

The run is untouched: its weights, optimizer state, BatchNorm statistics, batch order,
augmentation stream, train/eval mode and the global torch RNG are exactly as before.
Cost: up to ``steps`` extra forward/backward passes at the run's batch size (L-BFGS: up
to ``steps * optim.lbfgs_iters``, since each of its steps evaluates the closure that
often at the step's lr; its recorded loss is the first evaluation, as in the run), plus
one copy of the model and of its optimizer state, and one host sync per step.
"""

from __future__ import annotations

import math

import numpy as np

from trainlab.core.protocol import FindLr, LrFound
from trainlab.engine.build import BuiltRun
from trainlab.engine.sandbox import Sandbox, isolated_rng

DEFAULTS = FindLr()
"""The protocol's defaults (1e-7 to 10 over 100 steps): the CLI and the doctor use them."""
EMA_BETA = 0.98
"""Smoothing of the loss curve (fastai's value): mini-batch losses are noisy, and an
average over the last ~50 steps (1 / (1 - beta)) shows the trend. Bias-corrected, so the
first points are averages of what was seen, not pulled towards 0."""
DIVERGENCE_FACTOR = 4.0
"""Stop once the smoothed loss exceeds 4x its minimum (fastai's rule): the lr is past
the point where training works, and more steps only add the blow-up to the chart."""
SLOPE_SPAN_DECADES = 1.0
"""The fall is measured across one decade of lr centred on each point (less at the ends
of the stretch): a loss that wiggles by a few hundredths from batch to batch, read over
a single step of a 100-step range (~0.08 decade), looks steeper than a real but gentle
fall (a few tenths per decade), so neighbouring points alone pick noise."""
SKIP_START = 10
"""The first 10 points are left out of the suggestion: there the average still covers
only a few batches, and batch-to-batch noise reads as a steep slope."""
MIN_FALL = 0.02
"""A curve whose smoothed loss drops by less than 2% of its value (from the first judged
point to the minimum) has not fallen: averaged over ~50 batches it still wanders by about
1% (batch losses vary by 5-10% of their mean, /sqrt(50)), so a real fall is twice that."""
MIN_STEPS = 20
"""Fewest steps allowed: the skipped start plus enough points to find a slope."""
MAX_STEPS = 1000
"""Most steps allowed: a finer curve than that adds cost (one pass each), not insight."""


class LrRangeError(ValueError):
    """A range-test setting that is not allowed; the message starts with the field."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        super().__init__(f"{field} = {value!r}: expected {allowed}")
        self.field = field


def _finite(value: object) -> float | None:
    """``value`` as a float when it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def check_range(start: object, end: object, steps: object) -> None:
    """Raise LrRangeError naming the first field that is not allowed."""
    low = _finite(start)
    if low is None or low <= 0:
        raise LrRangeError("start", start, "a finite number > 0 (the first learning rate)")
    high = _finite(end)
    if high is None or high <= low:
        raise LrRangeError("end", end, f"a finite number > start ({low:g})")
    if isinstance(steps, bool) or not isinstance(steps, int) or not (
            MIN_STEPS <= steps <= MAX_STEPS):
        raise LrRangeError("steps", steps, f"an integer from {MIN_STEPS} to {MAX_STEPS}")


def lr_sequence(start: float, end: float, steps: int) -> list[float]:
    """``steps`` learning rates from ``start`` to ``end``, evenly spaced in log(lr)."""
    ratio = end / start
    return [start * ratio ** (i / (steps - 1)) for i in range(steps)]


def _slopes(x: list[float], y: list[float]) -> np.ndarray:
    """d y / d x at every point, each over ``SLOPE_SPAN_DECADES`` (x evenly spaced)."""
    step_decades = (x[1] - x[0]) / math.log(10)
    half = max(1, round(SLOPE_SPAN_DECADES / 2 / step_decades))
    last = len(x) - 1
    out = np.empty(len(x))
    for i in range(len(x)):
        lo, hi = max(i - half, 0), min(i + half, last)
        out[i] = (y[hi] - y[lo]) / (x[hi] - x[lo])
    return out


def suggest(lrs: tuple[float, ...], losses: tuple[float, ...]) -> tuple[float | None, str]:
    """The lr where the smoothed loss falls fastest against log(lr), and how it was found
    (None, and why, when the curve never falls).

    Only the stretch from point ``SKIP_START`` to the curve's minimum counts: past the
    minimum the lr is already too high, and a loss that falls back after a blow-up
    (Adam often does) is recovery, not progress.
    """
    finite = [(lr, loss) for lr, loss in zip(lrs, losses, strict=True) if math.isfinite(loss)]
    if len(finite) < SKIP_START + 2:
        return None, (f"only {len(finite)} points before the loss diverged (the first "
                      f"{SKIP_START} are too noisy to judge): start the range lower")
    lowest = min(range(len(finite)), key=lambda i: finite[i][1])
    falling = finite[SKIP_START : lowest + 1]
    top = max((loss for _, loss in falling), default=math.inf)
    if len(falling) < 2 or top - finite[lowest][1] < MIN_FALL * abs(top):
        lo, hi = finite[SKIP_START][0], finite[-1][0]
        return None, (f"the smoothed loss never falls (by {MIN_FALL:.0%} or more) between lr "
                      f"{lo:.2g} and {hi:.2g}: the start is already too high (lower it), or "
                      "the network does not learn at all")
    slopes = _slopes([math.log(lr) for lr, _ in falling], [loss for _, loss in falling])
    best = int(np.argmin(slopes))
    if slopes[best] >= 0:  # a flat stretch down to the minimum: no fall to point at
        return None, (f"the smoothed loss stays flat from lr {falling[0][0]:.2g} to "
                      f"{falling[-1][0]:.2g}: widen the range")
    lr, loss = falling[best]
    per_decade = -slopes[best] * math.log(10)
    return lr, (f"steepest fall of the smoothed loss ({per_decade:.3g} per decade of lr) at "
                f"lr {lr:.2g}, loss {loss:.4g}; lowest loss {finite[lowest][1]:.4g} at lr "
                f"{finite[lowest][0]:.2g}")


def find_lr(run: BuiltRun, start: float = DEFAULTS.start, end: float = DEFAULTS.end,
            steps: int = DEFAULTS.steps) -> LrFound:
    """Run the range test from ``run``'s current weights; the run stays untouched.

    Raises LrRangeError for settings ``check_range`` refuses. Costs up to ``steps``
    forward/backward passes (see the module docstring).
    """
    check_range(start, end, steps)
    lrs: list[float] = []
    smoothed: list[float] = []
    stopped = "reached the end of the range"
    with isolated_rng():
        sandbox = Sandbox(run)
        batches = sandbox.batches(run.batch_size)
        average, best = 0.0, math.inf
        for i, lr in enumerate(lr_sequence(start, end, steps)):
            loss = sandbox.step(*next(batches), lr)
            average = EMA_BETA * average + (1 - EMA_BETA) * loss
            value = average / (1 - EMA_BETA ** (i + 1))
            if not math.isfinite(value):
                stopped = f"stopped at lr {lr:.2g}: the loss turned non-finite"
                break
            lrs.append(lr)
            smoothed.append(value)
            best = min(best, value)
            if value > DIVERGENCE_FACTOR * best:
                stopped = (f"stopped at lr {lr:.2g}: the loss rose above {DIVERGENCE_FACTOR:g}x "
                           f"its minimum {best:.4g}")
                break
    suggested, reason = suggest(tuple(lrs), tuple(smoothed))
    return LrFound(run.step, tuple(lrs), tuple(smoothed), suggested, f"{reason}; {stopped}")
