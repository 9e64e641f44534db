"""The layer table: one row per weight layer, its health at a glance.

Figures outside the healthy ranges of ``tui.health`` are coloured; the last column is
a sparkline of the layer's gradient norm over recent snapshots (log scale: a gradient
that fades or blows up shows as a slope).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from rich.text import Text
from textual.widgets import DataTable

from engine import protocol
from engine.cli import format_number, format_percent
from tui import health
from tui.state import RunState

SPARK_CHARS = "▁▂▃▄▅▆▇█"
HEALTH_STYLE = {health.OK: "", health.WARN: "yellow", health.BAD: "bold red"}
COLUMNS = ("layer", "act", "mean", "std", "sat%", "dead%", "grad", "upd/w", "grad trend")


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


def layer_cells(row: protocol.LayerStats, history: Iterable[protocol.LayerStats]) -> list:
    """The table cells of one layer: plain text, coloured where out of range."""
    return [
        Text(row.name),
        Text(row.activation or "-"),
        Text(format_number(row.act_mean, ".3g"), justify="right"),
        _cell(format_number(row.act_std, ".3g"), "act_std", row.act_std),
        _cell(format_percent(row.saturated_frac, ""), "saturated_frac", row.saturated_frac),
        _cell(format_percent(row.dead_frac, ""), "dead_frac", row.dead_frac),
        _cell(format_number(row.grad_norm, ".3g"), "grad_norm", row.grad_norm),
        _cell(format_number(row.update_ratio, ".1e"), "update_ratio", row.update_ratio),
        Text(sparkline(h.grad_norm for h in history), style="cyan"),
    ]


class LayerTable(DataTable):
    """Per-layer statistics of the latest snapshot; the selected row picks the layer."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.shown_step: int | None = None

    def on_mount(self) -> None:
        for name in COLUMNS:
            self.add_column(name, key=name)

    @property
    def selected_layer(self) -> str | None:
        """The name of the layer under the cursor, if there are rows."""
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key((self.cursor_row, 0))
        return str(row_key.value)

    def show(self, state: RunState) -> None:
        """Refill from the latest snapshot, keeping the cursor on the same row."""
        snapshot = state.snapshot
        if snapshot is None:
            if self.row_count:
                self.clear()
            self.shown_step = None
            return
        if snapshot.step == self.shown_step:
            return
        self.shown_step = snapshot.step
        names = [row.name for row in snapshot.layers]
        existing = [str(key.value) for key in self.rows]
        if existing == names:  # the common case: update cells in place
            for row in snapshot.layers:
                cells = layer_cells(row, state.layer_history.get(row.name, ()))
                for column, cell in zip(COLUMNS, cells, strict=True):
                    self.update_cell(row.name, column, cell, update_width=True)
            return
        cursor = self.cursor_row
        self.clear()
        for row in snapshot.layers:
            self.add_row(*layer_cells(row, state.layer_history.get(row.name, ())),
                         key=row.name)
        if self.row_count:
            self.move_cursor(row=min(cursor, self.row_count - 1))
