"""Time to draw the loss chart from a million-step history against a thousand-step one.

Usage::

    python bench/chart.py            # prints both medians and the ratio
    python -m bench.chart            # the same

Long histories are decimated before plotext sees them
(docs/architecture.md#the-app-one-queue-one-pump), so a chart of a million steps should
draw about as fast as one of a thousand (the target here is a ratio of at most 2.0;
plotext alone takes seconds for a million raw points).

What one draw is: :func:`trainlab.tui.plotting.draw_loss_chart` into a standalone
``textual_plotext.plot.Plot`` of 120 x 30 cells, then ``.build()`` (the text a
``PlotextPlot`` would paint), with linear axes and three markers. Each history is a
run of N steps: a train loss every step (noisy exponential decay with a spike),
validation loss and accuracy every N/20 steps, the learning rate every 10 steps
(cosine decay). The two sizes are timed interleaved, one draw of each per
repetition after warm-up draws, so drift in the machine's speed hits both alike; the
ratio is of the medians.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    # Run as a script: make the repository root importable for ``tui``.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual_plotext.plot import Plot

from trainlab.tui.plotting import draw_loss_chart
from trainlab.tui.series import Series

WIDTH, HEIGHT = 120, 30
SMALL_STEPS, LARGE_STEPS = 1_000, 1_000_000
WARMUP, REPEATS = 3, 21


class _History:
    """The four series and the markers of a synthetic run of ``steps`` steps."""

    def __init__(self, steps: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        step = np.arange(steps, dtype=np.float64)
        decay = np.exp(-step / (steps / 5))
        loss = 2.3 * decay + 0.1 + 0.05 * rng.random(steps)
        loss[steps // 3] = 5.0  # a spike min-max decimation must keep
        self.train = Series()
        self.train.extend(step, loss)

        every = max(1, steps // 20)
        evals = step[::every]
        self.val_loss = Series()
        self.val_loss.extend(evals, 2.3 * decay[::every] + 0.15)
        self.val_accuracy = Series()
        self.val_accuracy.extend(evals, 1.0 - 0.9 * decay[::every])

        stats = step[::10]
        self.lr = Series()
        self.lr.extend(stats, 1e-3 * 0.5 * (1.0 + np.cos(np.pi * stats / steps)))
        self.markers = [(steps // 4, "lr 1e-3"), (steps // 2, "wd 0.01"), (3 * steps // 4, "sgd")]

    def draw(self, plt: Plot) -> str:
        """One frame: draw and build, as a paint of the widget does."""
        draw_loss_chart(
            plt,
            train=self.train,
            val_loss=self.val_loss,
            val_accuracy=self.val_accuracy,
            lr=self.lr,
            markers=self.markers,
            log_y=False,
            width=WIDTH,
            height=HEIGHT,
        )
        return plt.build()


def _timed(history: _History, plt: Plot) -> float:
    start = time.perf_counter()
    history.draw(plt)
    return time.perf_counter() - start


def measure(repeats: int = REPEATS) -> tuple[float, float]:
    """Median seconds per frame for the 1k-step and the 1M-step history, interleaved."""
    small, large = _History(SMALL_STEPS), _History(LARGE_STEPS)
    small_plot, large_plot = Plot(), Plot()
    for _ in range(WARMUP):
        small.draw(small_plot)
        large.draw(large_plot)
    small_times: list[float] = []
    large_times: list[float] = []
    for repeat in range(repeats):
        # Alternate which goes first, so neither always runs on a warmer cache.
        pair = [(small, small_plot, small_times), (large, large_plot, large_times)]
        for history, plt, times in pair if repeat % 2 == 0 else reversed(pair):
            times.append(_timed(history, plt))
    return statistics.median(small_times), statistics.median(large_times)


def chart_draw_ratio() -> float:
    """t(1M-step chart) / t(1k-step chart), medians of interleaved frames (target <= 2.0)."""
    small, large = measure()
    return large / small


def main() -> None:
    """Print the two medians and the ratio line that bench/tui.py reads."""
    small, large = measure()
    print(f"chart {WIDTH}x{HEIGHT}, median of {REPEATS} interleaved frames")
    print(f"  {SMALL_STEPS:>9,} steps: {small * 1e3:7.2f} ms")
    print(f"  {LARGE_STEPS:>9,} steps: {large * 1e3:7.2f} ms")
    print(f"chart_1m_vs_1k ratio={large / small:.3f}")


if __name__ == "__main__":
    main()
