"""Drawing with plotext: the only module that touches it.

The functions here receive the ``plt`` object of a ``textual_plotext.PlotextPlot`` (or
a standalone ``textual_plotext.plot.Plot``), clear it and draw one whole figure; the
caller builds it. They never see a raw history: every series goes through
:func:`trainlab.tui.series.decimate` first, so a frame costs the same few milliseconds at a
thousand steps as at a million (plotext itself takes seconds for a million points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from trainlab.core.lr_chart import loss_axis_top
from trainlab.tui.series import Series, decimate

if TYPE_CHECKING:
    from textual_plotext.plot import Plot

TRAIN_COLOR = "cyan+"
VAL_LOSS_COLOR = "orange+"
ACCURACY_COLOR = "green+"
LR_COLOR = "magenta+"
MARKER_COLOR = "gray+"
HISTOGRAM_COLOR = "blue+"
OVERLAY_COLORS = ("blue+", "red+", "white", "red", "blue", "green", "magenta")
"""Finished runs of a lab, in order (seven: the optimizers lab compares eight runs);
none is a colour of the current run's loss curves."""
SUGGESTION_COLOR = "green+"

WAITING_TITLE = "waiting for the first steps"
ENDED_EMPTY_TITLE = "no steps: the run {state} before its first"
"""The empty chart's title once the run ended (``{state}``: failed, stopped...)."""
COMPARING_TITLE = "finished runs; the next one is starting"


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
    overlays: Sequence[tuple[str, Series]] = (),
    train_label: str = "train",
    steps_per_epoch: int | None = None,
    lr_now: float | None = None,
    empty_title: str = WAITING_TITLE,
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
    - each series decimated to at most two points per column of ``width``;
    - ``overlays``: the training loss of finished runs to compare with (a lab's
      earlier variants), each ``(label, series)`` in its own colour and labelled in
      the legend; the current run's training loss is labelled ``train_label``;
    - ``steps_per_epoch``: when given, x is in epochs (step / steps_per_epoch) for
      the current run and its markers, and the overlays must already be in epochs
      (runs with different batch sizes compare by epoch, not by step).

    - ``lr_now``: the run's learning rate now, for the title in place of the last
      plotted one (a live change while paused comes before any step records it).

    With no loss yet (and no overlay), an empty frame titled ``empty_title`` ("waiting
    for the first steps"; the owner says when no steps will come). Never raises for
    empty, single-point, NaN-holding or huge series.
    """
    _reset(plt, width, height)
    overlays = [(label, series) for label, series in overlays if len(series)]
    if not len(train) and not len(val_loss) and not overlays:
        plt.title(_fit(empty_title, width))
        return

    # The current run's x unit, in steps: 1, or its steps per epoch.
    per_x = float(steps_per_epoch) if steps_per_epoch else 1.0
    current = [item for item in (train, val_loss, val_accuracy, lr) if len(item)]
    spans = [(float(item.x[0]) / per_x, float(item.x[-1]) / per_x) for item in current]
    spans += [(float(item.x[0]), float(item.x[-1])) for _, item in overlays]
    # One x range for every series, so that bucket k of each covers the same x.
    x_range = (min(lo for lo, _ in spans), max(hi for _, hi in spans))
    buckets = max(1, width)  # two points per column: what plotext's hd marker can show

    def current_run(series: Series) -> tuple[np.ndarray, np.ndarray]:
        # Decimated in steps over the shared range, then put in the chart's unit.
        xs, ys = decimate(series.x, series.y, buckets, (x_range[0] * per_x, x_range[1] * per_x))
        return xs / per_x, ys

    train_x, train_y = current_run(train)
    val_x, val_y = current_run(val_loss)
    acc_x, acc_y = current_run(val_accuracy)
    lr_x, lr_y = current_run(lr)
    others = [(label, *decimate(item.x, item.y, buckets, x_range)) for label, item in overlays]

    log_note = ""
    if log_y:
        # log10 of zero or a negative loss raises inside plotext: draw those out.
        train_x, train_y = _positive(train_x, train_y)
        val_x, val_y = _positive(val_x, val_y)
        others = [(label, *_positive(xs, ys)) for label, xs, ys in others]
        if len(train_y) or len(val_y) or any(len(ys) for _, _, ys in others):
            plt.yscale("log")
            log_note = " (log)"
        else:
            log_note = " (log: no positive loss)"

    for index, (label, xs, ys) in enumerate(others):
        if len(ys):
            color = OVERLAY_COLORS[index % len(OVERLAY_COLORS)]
            plt.plot(xs.tolist(), ys.tolist(), color=color, label=label)
    if len(train_y):
        plt.plot(train_x.tolist(), train_y.tolist(), color=TRAIN_COLOR, label=train_label)
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
        # plotext annotates yside as a number; it takes "left" or "right" (its docs).
        plt.ylim(0.0, 1.0, yside="right")  # type: ignore[arg-type]

    ticks = _step_ticks(*x_range, max_ticks=max(2, width // 12))
    plt.xticks(ticks, [_short_step(tick) for tick in ticks])
    drawn = [ys for ys in (train_y, val_y, *(o[2] for o in others)) if len(ys)]
    if drawn:
        loss_ticks = _value_ticks(np.concatenate(drawn), log=log_note == " (log)",
                                  count=max(2, height // LOSS_TICK_ROWS))
        plt.yticks(loss_ticks, [_short_value(tick) for tick in loss_ticks])
    if steps_per_epoch:
        plt.xlabel("epoch")
    loss_top = max((float(ys.max()) for ys in (train_y, val_y, *(o[2] for o in others))
                    if len(ys)), default=None)
    in_x = [(step / per_x, label) for step, label in markers]
    _draw_markers(plt, in_x, x_range, loss_top, width)
    title = _loss_title(train, val_loss, val_accuracy, lr, lr_now) \
        if len(train) or len(val_loss) else COMPARING_TITLE
    plt.title(_fit(title + log_note, width))


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


def draw_lr_curve(
    plt: Plot,
    *,
    lrs: Sequence[float],
    losses: Sequence[float],
    suggested_lr: float | None,
    width: int,
    height: int,
) -> None:
    """Clear ``plt`` and draw a learning-rate range test: smoothed loss against lr.

    The x axis is log10(lr) with a tick at each power of ten (labelled ``1e-3``), as
    the test raises the lr exponentially; the loss axis is linear and ends where
    ``trainlab.core.lr_chart.loss_axis_top`` says (the terminal chart's rule). Points with a
    non-positive lr or a non-finite loss are left out. The suggestion, when there is
    one, is a vertical line labelled with its value, also named in the title. No finite
    point at all: an empty frame saying so.

    Raises:
        ValueError: ``lrs`` and ``losses`` differ in length.
    """
    _reset(plt, width, height)
    x = np.asarray(lrs, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if len(x) != len(y):
        raise ValueError(f"draw_lr_curve: {len(x)} lrs but {len(y)} losses")
    keep = (x > 0) & np.isfinite(x) & np.isfinite(y)
    x, y = np.log10(x[keep]), y[keep]
    suggested = f"suggested lr {suggested_lr:.2e}" if suggested_lr else "no suggestion"
    if not len(y):
        plt.title(_fit(f"lr range test: no finite loss; {suggested}", width))
        return
    plt.plot(x.tolist(), y.tolist(), color=TRAIN_COLOR, label="smoothed loss")
    top = loss_axis_top(y.tolist())
    if top > float(y.min()):
        plt.ylim(float(y.min()), top)
    lo, hi = math.floor(float(x.min())), math.ceil(float(x.max()))
    every = max(1, math.ceil((hi - lo + 1) / max(2, width // 8)))  # labels 5 wide
    decades = list(range(lo, hi + 1, every))
    plt.xticks([float(d) for d in decades], [f"1e{d}" for d in decades])
    plt.xlabel("learning rate (log scale)")
    if suggested_lr and suggested_lr > 0 and math.isfinite(suggested_lr):
        at = math.log10(suggested_lr)
        plt.vline(at, color=SUGGESTION_COLOR)
        # Near the right edge the label ends at its line, as a marker's does.
        column = (at - lo) / max(hi - lo, 1e-9) * width
        label = f"{suggested_lr:.1e}"
        alignment: Literal["left", "right"] = (
            "right" if column + len(label) + MARKER_EDGE > width else "left")
        plt.text(label, at, top, color=SUGGESTION_COLOR, alignment=alignment)
    plt.title(_fit(f"lr range test: {suggested}", width))


SCATTER_COLORS = {"complete": "green+", "pruned": "orange+", "running": "cyan+"}
"""A sweep's trials by state in the metric-vs-parameter view."""


def draw_scatter(
    plt: Plot,
    *,
    points: Sequence[tuple[float | str, float, str]],
    xlabel: str,
    ylabel: str,
    log_x: bool,
    width: int,
    height: int,
) -> None:
    """Clear ``plt`` and draw a sweep's metric against one parameter: a point per trial
    ``(value, metric, state)``, coloured by state (``SCATTER_COLORS``). Choices (text
    values) sit at evenly spaced positions labelled with the choice; a log-scaled
    parameter on a log10 axis labelled in its own units. Non-finite metrics are left
    out. Never raises."""
    _reset(plt, width, height)
    kept = [(x, y, state) for x, y, state in points
            if isinstance(y, int | float) and math.isfinite(y)]
    if not kept:
        plt.title(_fit(f"{ylabel} against {xlabel}: no trial has a value yet", width))
        return
    if all(isinstance(x, int | float) and not isinstance(x, bool) for x, _, _ in kept):
        numbers = [float(x) for x, _, _ in kept]
        log = log_x and all(v > 0 for v in numbers)
        xs = [math.log10(v) for v in numbers] if log else numbers
        ticks = _value_ticks(np.asarray(numbers), log=log, count=max(2, width // 12))
        if ticks:
            plt.xticks([math.log10(t) if log else t for t in ticks],
                       [_short_value(t) for t in ticks])
    else:
        labels = sorted({str(x) for x, _, _ in kept})
        xs = [float(labels.index(str(x))) for x, _, _ in kept]
        plt.xticks([float(i) for i in range(len(labels))], labels)
        plt.xlim(-0.5, len(labels) - 0.5)
    for state, color in SCATTER_COLORS.items():
        chosen = [(x, y) for x, (_, y, s) in zip(xs, kept, strict=True) if s == state]
        if chosen:
            plt.scatter([x for x, _ in chosen], [y for _, y in chosen], color=color,
                        label=state, marker="dot")
    plt.xlabel(f"{xlabel}{' (log scale)' if log_x else ''}")
    plt.title(_fit(f"{ylabel} against {xlabel}", width))


def _reset(plt: Plot, width: int, height: int) -> None:
    """Clear every setting and datum of ``plt`` (0.2 ms) and size it ``width`` x ``height``."""
    plt.clf()
    # plotext caps a figure at the size of the terminal it thinks it prints to (80x24
    # under pytest or a pipe); here the widget's size is what counts.
    plt._limit_size(False, False)  # type: ignore[attr-defined]  # private: no public way
    plt.plotsize(width, height)


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


LOSS_TICK_ROWS = 3
"""One loss-axis label every three rows or so, as plotext spaces its own."""


def _value_ticks(values: np.ndarray, *, log: bool, count: int) -> list[float]:
    """Tick values for the loss axis over the finite ``values``: evenly spaced, or on a
    log axis powers of ten where the range spans decades (evenly in log otherwise)."""
    finite = values[np.isfinite(values)]
    if log:
        finite = finite[finite > 0]
    if not len(finite):
        return []
    lo, hi = float(finite.min()), float(finite.max())
    if lo == hi:
        return [lo]
    if not log:
        return [float(v) for v in np.linspace(lo, hi, count)]
    decades = np.arange(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)
    if len(decades) >= 2:
        stride = max(1, math.ceil(len(decades) / count))
        return [float(10.0 ** d) for d in decades[::stride]]
    return [float(v) for v in np.geomspace(lo, hi, count)]


def _short_value(value: float) -> str:
    """``0.25``, ``12.5``, ``3.1e+12``: a loss-axis label of at most ~8 characters
    (plotext writes 1.9e33 in full, 36 columns wide, after a diverged step)."""
    return f"{value:.3g}"


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
    markers: Sequence[tuple[float, str]],
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
        alignment: Literal["left", "right"] = (
            "right" if column + len(label) + MARKER_EDGE > width else "left")
        start = column - len(label) if alignment == "right" else column
        end = start + len(label) + 1
        if any(start < other_end and other_start < end for other_start, other_end in taken):
            continue
        taken.append((start, end))
        if loss_top is not None:
            plt.text(label, step, loss_top, color=MARKER_COLOR, alignment=alignment)
        else:
            plt.text(label, step, 1.0, color=MARKER_COLOR, alignment=alignment, yside="right")


def _loss_title(train: Series, val_loss: Series, val_accuracy: Series, lr: Series,
                lr_now: float | None = None) -> str:
    """``step 1200 · loss 0.412 · val 0.398 · acc 87.5% · lr 3.0e-04`` from the last points
    (the lr: ``lr_now`` when given)."""
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
    if lr_now is None and (last_lr := lr.last()) is not None:
        lr_now = last_lr[1]
    if lr_now is not None:
        parts.append(f"lr {lr_now:.2e}")
    return " · ".join(parts)


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, with an ellipsis when cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"
