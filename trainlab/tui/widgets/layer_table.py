"""The layer table: one row per weight layer, its health at a glance.

Figures outside the healthy ranges of ``trainlab.tui.health`` are coloured; the last column is
a sparkline of the layer's gradient norm over recent snapshots (log scale: a gradient
that fades or blows up shows as a slope). The row of a layer that an alert names is
tinted by the alert's severity and its name marked (``trainlab.tui.widgets.alerts_panel``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from rich.style import Style
from rich.text import Text
from textual.coordinate import Coordinate
from textual.widgets import DataTable

from trainlab.core import protocol
from trainlab.core.text import format_number, format_percent
from trainlab.tui import health
from trainlab.tui.feed import RunView
from trainlab.tui.state import LAYERS, RunState
from trainlab.tui.widgets.alerts_panel import SEVERITY_MARK, SEVERITY_STYLE

SPARK_CHARS = "▁▂▃▄▅▆▇█"
HEALTH_STYLE = {health.OK: "", health.WARN: "yellow", health.BAD: "bold red"}
COLUMNS = ("layer", "act", "mean", "std", "sat%", "dead%", "grad", "upd/w", "grad trend")
ALERT_ROW_BACKGROUND = {"info": "on #0f2f4f", "warning": "on #4a3a00", "critical": "on #5a1414"}
"""A tint behind every cell of an alerted layer's row, by the worst severity naming it:
dark enough that the health colours of the figures stay readable on it."""


def sparkline(values: Iterable[float | None], *, log: bool = True) -> str:
    """Block characters scaled between the finite min and max (log10 when ``log``)."""
    points: list[float | None] = []
    for v in values:
        if v is None or not math.isfinite(v) or (log and v <= 0):
            points.append(None)
        else:
            points.append(math.log10(v) if log else v)
    finite = [p for p in points if p is not None]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo
    top = len(SPARK_CHARS) - 1
    return "".join(
        "!" if p is None
        else SPARK_CHARS[round((p - lo) / span * top) if span > 0 else top // 2]
        for p in points
    )


def _cell(text: str, quantity: str, value: float | None) -> Text:
    return Text(text, style=HEALTH_STYLE[health.judge(quantity, value)], justify="right")


def layer_name(name: str, severity: str | None, *, marked: bool) -> Text:
    """The name cell: the alert's mark in its colour before an alerted layer's name;
    ``marked`` (some layer is alerted) keeps the other names aligned with two spaces."""
    if severity is None:
        return Text(f"  {name}" if marked else name)
    text = Text(f"{SEVERITY_MARK[severity]} ", style=SEVERITY_STYLE[severity])
    text.append(name, style="bold")
    return text


def layer_cells(row: protocol.LayerStats, history: Iterable[protocol.LayerStats],
                severity: str | None = None, *, marked: bool = False) -> list:
    """The table cells of one layer: plain text, coloured where out of range; the row
    tinted by ``severity`` when an alert names the layer."""
    cells = [
        layer_name(row.name, severity, marked=marked),
        Text(row.activation or "-"),
        Text(format_number(row.act_mean, ".3g"), justify="right"),
        _cell(format_number(row.act_std, ".3g"), "act_std", row.act_std),
        _cell(format_percent(row.saturated_frac, ""), "saturated_frac", row.saturated_frac),
        _cell(format_percent(row.dead_frac, ""), "dead_frac", row.dead_frac),
        _cell(format_number(row.grad_norm, ".3g"), "grad_norm", row.grad_norm),
        _cell(format_number(row.update_ratio, ".1e"), "update_ratio", row.update_ratio),
        Text(sparkline(h.grad_norm for h in history), style="cyan"),
    ]
    if severity is not None:
        tint = Style.parse(ALERT_ROW_BACKGROUND[severity])
        for cell in cells:  # the base style: the tint fills the cell, not only the text
            cell.style = Style.parse(str(cell.style or "none")) + tint
    return cells


class LayerTable(RunView, DataTable):
    """Per-layer statistics of the latest snapshot; the selected row picks the layer."""

    def __init__(self, *, id: str | None = None) -> None:
        # The cursor's colour wins over an alert's tint: where the cursor is matters when
        # moving through the rows; the alerted row still shows its mark.
        super().__init__(id=id, cursor_type="row", zebra_stripes=True,
                         cursor_background_priority="css")
        self.shown: tuple[int, int] | None = None
        """(snapshot step, number of alerts) last shown: either changing redraws."""

    def on_mount(self) -> None:
        for name in COLUMNS:
            self.add_column(name, key=name)

    @property
    def selected_layer(self) -> str | None:
        """The name of the layer under the cursor, if there are rows."""
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0))
        return str(row_key.value)

    def show_run(self, state: RunState, changed: frozenset[str]) -> None:
        """Refill when the layers (their statistics or alerts) changed."""
        if LAYERS in changed:
            self.show(state)

    def show(self, state: RunState) -> None:
        """Refill from the latest snapshot, keeping the cursor on the same row."""
        snapshot = state.snapshot
        if snapshot is None:
            if self.row_count:
                self.clear()
            self.shown = None
            return
        shown = (snapshot.step, len(state.alerts))
        if shown == self.shown:
            return
        self.shown = shown
        alerted = state.alerted_layers
        marked = any(row.name in alerted for row in snapshot.layers)

        def cells_of(row: protocol.LayerStats) -> list:
            return layer_cells(row, state.layer_history.get(row.name, ()),
                               alerted.get(row.name), marked=marked)

        names = [row.name for row in snapshot.layers]
        existing = [str(key.value) for key in self.rows]
        if existing == names:  # the common case: update cells in place
            for row in snapshot.layers:
                for column, cell in zip(COLUMNS, cells_of(row), strict=True):
                    self.update_cell(row.name, column, cell, update_width=True)
            return
        cursor = self.cursor_row
        self.clear()
        for row in snapshot.layers:
            self.add_row(*cells_of(row), key=row.name)
        if self.row_count:
            self.move_cursor(row=min(cursor, self.row_count - 1))
