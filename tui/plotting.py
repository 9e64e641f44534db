"""Drawing with plotext: the only module that touches it.

The functions here receive the ``plt`` object of a ``textual_plotext.PlotextPlot`` (or
a standalone ``textual_plotext.plot.Plot``), clear it and draw one whole figure; the
caller builds it. They never see a raw history: every series goes through
:func:`tui.series.decimate` first, so a frame costs the same few milliseconds at a
thousand steps as at a million (plotext itself takes seconds for a million points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from tui.series import Series, decimate

if TYPE_CHECKING:
    from textual_plotext.plot import Plot

TRAIN_COLOR = "cyan+"
VAL_LOSS_COLOR = "orange+"
ACCURACY_COLOR = "green+"
LR_COLOR = "magenta+"
MARKER_COLOR = "gray+"
HISTOGRAM_COLOR = "blue+"

WAITING_TITLE = "waiting for the first steps"


def draw_loss_chart(
    plt: Plot,
    *,
    train: Series,
    val_loss: Series,
    val_accuracy: Series,
    lr: Series,
    markers: Sequence[tuple[int, str]],
    log_y: bool,
    width: int,
    height: int,
) -> None:
    """Clear ``plt`` and draw the loss chart of a run, ``width`` x ``height`` cells.

    Design:

    - left axis, loss: train loss as a line, validation loss as a line of another
      colour (one point per evaluation, so its corners show where evaluations were);
      ``log_y`` puts this axis on a log scale, drawing only the positive values (the
      title says so when there are none, and the axis stays linear);
    - right axis, fixed from 0 to 1: validation accuracy, and the learning rate divided
      by its peak so far (legend ``lr/1.0e-03``). Accuracy and the learning rate differ
      by orders of magnitude, so two raw right-axis curves would flatten one of them;
      relative to its peak the schedule keeps its shape (warmup, decay, a manual
      change) and shares a readable axis. The absolute current value is in the title;
    - title: the current step, train and validation loss, accuracy and learning rate;
    - a vertical line at every marker step (hyperparameter or optimizer changes) with
      its label along the top; where labels would overlap, the newest keeps its label;
    - each series decimated to at most two points per column of ``width``.

    With no loss yet, an empty frame titled "waiting for the first steps". Never
    raises for empty, single-point, NaN-holding or huge series.
    """
    _reset(plt, width, height)
    if not len(train) and not len(val_loss):
        plt.title(WAITING_TITLE)
        return

    # One x range for every series, so that bucket k of each covers the same steps.
    x_range = _x_span(train, val_loss, val_accuracy, lr)
    buckets = max(1, width)  # two points per column: what plotext's hd marker can show
    train_x, train_y = decimate(train.x, train.y, buckets, x_range)
    val_x, val_y = decimate(val_loss.x, val_loss.y, buckets, x_range)
    acc_x, acc_y = decimate(val_accuracy.x, val_accuracy.y, buckets, x_range)
    lr_x, lr_y = decimate(lr.x, lr.y, buckets, x_range)

    log_note = ""
    if log_y:
        # log10 of zero or a negative loss raises inside plotext: draw those out.
        train_x, train_y = _positive(train_x, train_y)
        val_x, val_y = _positive(val_x, val_y)
        if len(train_y) or len(val_y):
            plt.yscale("log")
            log_note = " (log)"
        else:
            log_note = " (log: no positive loss)"

    if len(train_y):
        plt.plot(train_x.tolist(), train_y.tolist(), color=TRAIN_COLOR, label="train")
    if len(val_y):
        plt.plot(val_x.tolist(), val_y.tolist(), color=VAL_LOSS_COLOR, label="val")

    right_axis = False
    if len(acc_y):
        plt.plot(acc_x.tolist(), acc_y.tolist(), yside="right", color=ACCURACY_COLOR, label="acc")
        right_axis = True
    lr_peak = float(lr_y.max()) if len(lr_y) else 0.0
    if lr_peak > 0.0:
        plt.plot(
            lr_x.tolist(),
            (lr_y / lr_peak).tolist(),
            yside="right",
            color=LR_COLOR,
            label=f"lr/{lr_peak:.1e}",
        )
        right_axis = True
    if right_axis:
        plt.ylim(0.0, 1.0, yside="right")

    ticks = _step_ticks(*x_range, max_ticks=max(2, width // 12))
    plt.xticks(ticks, [_short_step(tick) for tick in ticks])
    loss_top = max((float(ys.max()) for ys in (train_y, val_y) if len(ys)), default=None)
    _draw_markers(plt, markers, x_range, loss_top, width)
    plt.title(_fit(_loss_title(train, val_loss, val_accuracy, lr) + log_note, width))


def draw_histogram(
    plt: Plot,
    *,
    lo: float,
    hi: float,
    counts: Sequence[int],
    title: str,
    width: int,
    height: int,
) -> None:
    """Clear ``plt`` and draw ``counts`` of equal bins from ``lo`` to ``hi`` as bars.

    Each bar stands at its bin's centre and the bars touch, as in a histogram. When
    ``lo == hi`` (every value the same) the bins are spread over a unit span around
    that value and the title says so; all-zero counts draw flat bars on a 0..1 count
    axis; no counts (or a non-finite range) an empty frame titled ``title``. Never
    raises.
    """
    _reset(plt, width, height)
    values = [int(count) for count in counts]
    if not values:
        plt.title(_fit(title, width))
        return
    if not (math.isfinite(lo) and math.isfinite(hi)):
        plt.title(_fit(f"{title} (range not finite)", width))
        return
    note = ""
    if hi <= lo:
        note = f" (all {lo:.3g})"
        lo, hi = lo - 0.5, lo + 0.5
    bin_width = (hi - lo) / len(values)
    centres = [lo + (index + 0.5) * bin_width for index in range(len(values))]
    # reset_ticks=False: plotext would otherwise write one x label per bin.
    plt.bar(centres, values, width=1.0, color=HISTOGRAM_COLOR, reset_ticks=False)
    plt.xlim(lo, hi)
    if not any(values):
        plt.ylim(0, 1)  # plotext would centre zero bars on a -1..1 axis
    plt.title(_fit(title + note, width))


def _reset(plt: Plot, width: int, height: int) -> None:
    """Clear every setting and datum of ``plt`` (0.2 ms) and size it ``width`` x ``height``."""
    plt.clf()
    # plotext caps a figure at the size of the terminal it thinks it prints to (80x24
    # under pytest or a pipe); here the widget's size is what counts.
    plt._limit_size(False, False)
    plt.plotsize(width, height)


def _x_span(*series: Series) -> tuple[float, float]:
    """The smallest and largest x over the non-empty series (x is non-decreasing)."""
    filled = [item for item in series if len(item)]
    return min(float(item.x[0]) for item in filled), max(float(item.x[-1]) for item in filled)


def _step_ticks(lo: float, hi: float, *, max_ticks: int) -> list[float]:
    """Round step numbers (1, 2 or 5 times a power of ten apart) between ``lo`` and ``hi``."""
    span = hi - lo
    if span <= 0:
        return [lo]
    # Steps are whole numbers: never less than one apart.
    spacing = max(1.0, 10.0 ** math.floor(math.log10(span / max_ticks)))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if span / (spacing * factor) <= max_ticks:
            spacing *= factor
            break
    first = math.ceil(lo / spacing) * spacing
    return [float(tick) for tick in np.arange(first, hi + spacing * 1e-9, spacing)]


def _short_step(step: float) -> str:
    """``950``, ``5000``, ``12.5k``, ``1.5M``: a step number that fits under a tick."""
    if abs(step) >= 1e6:
        return f"{step / 1e6:g}M"
    if abs(step) >= 1e4:
        return f"{step / 1e3:g}k"
    return f"{step:g}"


def _positive(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Only the points with y > 0 (those a log axis can show)."""
    keep = y > 0
    return x[keep], y[keep]

MARKER_EDGE = 12
"""Columns the axes and the right-hand labels take beside the canvas."""


def _draw_markers(
    plt: Plot,
    markers: Sequence[tuple[int, str]],
    x_range: tuple[float, float],
    loss_top: float | None,
    width: int,
) -> None:
    """A vertical line at each marker step and its label along the top of the plot.

    Labels are placed newest first: where two would overlap, the later change (the
    one in effect now) keeps its label.
    """
    lo, hi = x_range
    span = max(hi - lo, 1.0)
    taken: list[tuple[float, float]] = []  # columns covered by the labels drawn so far
    for step, label in reversed(markers):
        plt.vline(step, color=MARKER_COLOR)
        # Approximate column (the canvas is a little narrower than the widget):
        # enough to leave out labels that would overwrite each other.
        column = (step - lo) / span * width
        # Near the right edge (a change made just now) the label ends at its line.
        alignment = "right" if column + len(label) + MARKER_EDGE > width else "left"
        start = column - len(label) if alignment == "right" else column
        end = start + len(label) + 1
        if any(start < other_end and other_start < end for other_start, other_end in taken):
            continue
        taken.append((start, end))
        if loss_top is not None:
            plt.text(label, step, loss_top, color=MARKER_COLOR, alignment=alignment)
        else:
            plt.text(label, step, 1.0, color=MARKER_COLOR, alignment=alignment, yside="right")


def _loss_title(train: Series, val_loss: Series, val_accuracy: Series, lr: Series) -> str:
    """``step 1200 · loss 0.412 · val 0.398 · acc 87.5% · lr 3.0e-04`` from the last points."""
    parts: list[str] = []
    last_train = train.last()
    last_step = max(point[0] for point in (last_train, val_loss.last()) if point is not None)
    parts.append(f"step {last_step:.0f}")
    if last_train is not None:
        parts.append(f"loss {last_train[1]:.4g}")
    if (last_val := val_loss.last()) is not None:
        parts.append(f"val {last_val[1]:.4g}")
    if (last_acc := val_accuracy.last()) is not None:
        parts.append(f"acc {last_acc[1]:.1%}")
    if (last_lr := lr.last()) is not None:
        parts.append(f"lr {last_lr[1]:.2e}")
    return " · ".join(parts)


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, with an ellipsis when cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"
