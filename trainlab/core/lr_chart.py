"""The LR range test's curve drawn as plain text, for ``trainlab lr-find`` in a terminal.

The engine imports no UI library (no rich, plotext or textual), so this is a small
character grid of its own: log(lr) across, the smoothed loss up, the suggestion marked.
ASCII only, so it prints in any terminal and locale.

No torch either: the app's chart (``trainlab.tui.plotting.draw_lr_curve``) takes its loss axis
from :func:`loss_axis_top` here, so the terminal and the app clip the curve alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from trainlab.core.protocol import LrFound

LR_CURVE_TOP_FACTOR = 2.0
"""The loss axis ends at most at this multiple of the loss at the smallest lr.

The range test raises the lr until the loss diverges (it stops past
``trainlab.doctor.lr_find.DIVERGENCE_FACTOR`` x the minimum, or at a non-finite loss),
and that tail would squash the descent the suggestion is read from; twice the starting
loss still shows the turn upwards."""
CHART_ROWS = 15
"""Plot height in lines: enough to see the fall and the rise, short enough for a screen."""
CHART_COLS = 60
"""Plot width in characters: with the axis labels it fits an 80-column terminal."""
CURVE, CLIPPED, SUGGESTION, GUIDE = "*", "^", "o", "|"
"""The curve's points, points above the top of the chart, the suggested lr's point, and
the vertical line through it."""


def _decade_label(exponent: int) -> str:
    return f"1e{exponent}"


def _x_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """(log10 lr, label) at every power of ten in range, else at the two ends."""
    # The slack keeps a range that starts or ends on a power of ten (log10 rounded to
    # -6.999999999) from losing that tick.
    decades = range(math.ceil(lo - 1e-9), math.floor(hi + 1e-9) + 1)
    if len(decades) >= 2:
        return [(float(k), _decade_label(k)) for k in decades]
    return [(lo, f"{10 ** lo:.2g}"), (hi, f"{10 ** hi:.2g}")]


def loss_axis_top(losses: Sequence[float]) -> float:
    """Where the loss axis of a range test's curve ends: the highest loss, or
    ``LR_CURVE_TOP_FACTOR`` times the first one, whichever is lower (the highest when
    the first is not positive). ``losses``: the finite ones, in lr order.

    Raises:
        ValueError: ``losses`` is empty.
    """
    if not losses:
        raise ValueError("loss_axis_top: no loss to scale the axis to")
    highest, first = max(losses), losses[0]
    return min(highest, LR_CURVE_TOP_FACTOR * first) if first > 0 else highest


def draw_lr_curve(found: LrFound, rows: int = CHART_ROWS, cols: int = CHART_COLS) -> str:
    """The curve of ``found`` as ``rows`` lines of ``cols`` columns plus axes and labels."""
    points = [(math.log10(lr), loss) for lr, loss in zip(found.lrs, found.losses, strict=True)
              if lr > 0 and math.isfinite(loss)]
    if not points:
        return "(no finite loss to draw)"
    x_lo, x_hi = min(x for x, _ in points), max(x for x, _ in points)
    y_lo = min(y for _, y in points)
    y_hi = loss_axis_top([y for _, y in points])
    x_span = x_hi - x_lo or 1.0  # one point: any width puts it at the left edge
    y_span = y_hi - y_lo or 1.0

    def cell(x: float, y: float) -> tuple[int, int]:
        return (round((y_hi - min(y, y_hi)) / y_span * (rows - 1)),
                round((x - x_lo) / x_span * (cols - 1)))

    grid = [[" "] * cols for _ in range(rows)]
    if found.suggested_lr is not None:
        guide_col = cell(math.log10(found.suggested_lr), y_lo)[1]
        for row in grid:
            row[guide_col] = GUIDE
    previous: tuple[int, int] | None = None
    for x, y in points:
        r, c = cell(x, y)
        if previous is not None:  # join neighbours so a steep stretch reads as a line
            pr, pc = previous
            gaps = max(abs(r - pr), abs(c - pc))
            for k in range(1, gaps):
                grid[round(pr + (r - pr) * k / gaps)][round(pc + (c - pc) * k / gaps)] = CURVE
        grid[r][c] = CLIPPED if y > y_hi else CURVE
        previous = (r, c)
    if found.suggested_lr is not None:
        x_s = math.log10(found.suggested_lr)
        _, y_s = min(points, key=lambda p: abs(p[0] - x_s))
        r, c = cell(x_s, y_s)
        grid[r][c] = SUGGESTION

    labelled = {0: y_hi, (rows - 1) // 2: y_hi - y_span * ((rows - 1) // 2) / (rows - 1),
                rows - 1: y_lo}
    width = max(len(f"{v:.4g}") for v in labelled.values())
    lines = ["loss (smoothed)"]
    for i, row in enumerate(grid):
        label, edge = (f"{labelled[i]:.4g}", "+") if i in labelled else ("", "|")
        lines.append(f"{label:>{width}} {edge}{''.join(row).rstrip()}")
    ticks = _x_ticks(x_lo, x_hi)
    axis = ["-"] * cols
    labels = [" "] * cols  # a label at the right edge extends the line past the axis
    free_from = 0  # labels never overlap: the next starts after the last one's end
    for x, text in ticks:
        c = cell(x, y_lo)[1]
        axis[c] = "+"
        begin = max(c - len(text) // 2, 0)
        if begin >= free_from:
            labels[begin : begin + len(text)] = text
            free_from = begin + len(text) + 1
    lines.append(f"{'':>{width}} +{''.join(axis)}")
    lines.append(f"{'':>{width}}  {''.join(labels).rstrip()}")
    marked = (f"{SUGGESTION} suggested lr {found.suggested_lr:.2g}"
              if found.suggested_lr is not None else "no suggestion")
    clipped = f", {CLIPPED} above the chart" if any(y > y_hi for _, y in points) else ""
    lines.append(f"{'':>{width}}  learning rate (log scale); {CURVE} loss{clipped}, {marked}")
    return "\n".join(lines)
