"""A sweep's screen: the leaderboard, live, and the metric against one searched field.

Opened when the app starts on a sweep (``trainlab sweep SWEEP.toml``) and again with
``i``. The leaderboard (trial, state, the sampled values, the metric, steps; best first)
is read from the study's storage once a second on a worker thread. Enter shows the
highlighted trial's run in the app (its engine is left training when another is
shown), space picks trials and ``C`` compares the picked ones (or the highlighted one
and the best) on the compare screen; ``p`` moves the chart below to the next field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult, RenderResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from trainlab.core.sweep_study import TrialRow, best_row, format_params, totals
from trainlab.core.text import format_number
from trainlab.tui.plotting import draw_scatter
from trainlab.tui.screens.compare import CompareScreen
from trainlab.tui.sweep_session import SweepSession

REFRESH_S = 1.0
"""How often the leaderboard is read from the study's storage."""
STATE_STYLES = {"complete": "green", "pruned": "yellow", "running": "bold cyan",
                "waiting": "dim", "failed": "red", "excluded": "dim red"}


def steps_text(row: TrialRow) -> str:
    if row.steps is None:
        return "-"
    if row.total_steps and row.steps < row.total_steps:
        return f"{row.steps}/{row.total_steps}"
    return str(row.steps)


class SweepChart(PlotextPlot):
    """The sweep's metric against one searched field, a point per trial."""

    def __init__(self, session: SweepSession, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.session = session
        self.key = session.keys[0]

    def render(self) -> RenderResult:
        spec = self.session.spec
        points: list[tuple[float | str, float, str]] = []
        for row in self.session.rows:
            value = row.params.get(self.key)
            if value is not None and row.value is not None and math.isfinite(row.value) \
                    and row.state in ("complete", "pruned", "running"):
                points.append((value if isinstance(value, int | float)
                               and not isinstance(value, bool) else str(value),
                               row.value, row.state))
        draw_scatter(self.plt, points=points, xlabel=self.key, ylabel=spec.metric,
                     log_x=self.key in self.session.log_scaled,
                     width=self.size.width, height=self.size.height)
        return super().render()


class SweepScreen(ModalScreen[Path | None]):
    """The leaderboard; dismissed with the run directory of the trial to show (None:
    back to the run shown before)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "show_trial", "Show trial"),
        Binding("space", "pick", "Pick"),
        Binding("C", "compare", "Compare"),
        Binding("p", "next_field", "Next field"),
        Binding("escape,i", "close", "Back"),
    ]

    def __init__(self, session: SweepSession) -> None:
        super().__init__()
        self.session = session
        self.picked: list[int] = []
        """Trial numbers picked for the compare screen, in the order picked."""
        self.reads = 0

    def compose(self) -> ComposeResult:
        with Vertical(id="sweep-dialog"):
            yield Static(id="sweep-title")
            table: DataTable[Text | str] = DataTable(id="sweep-table", cursor_type="row",
                                                     zebra_stripes=True)
            yield table
            yield SweepChart(self.session, id="sweep-chart")
            yield Static("[b]Enter[/b] show the trial · [b]space[/b] pick · [b]C[/b] compare "
                         "· [b]p[/b] next field · [b]Escape[/b] back · [b]q[/b] quit",
                         id="sweep-keys")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        spec = self.session.spec
        table.add_columns(" ", "trial", "state", *self.session.keys, spec.metric, "steps")
        table.focus()
        self._show()
        self.refresh_rows()
        self.set_interval(REFRESH_S, self.refresh_rows)

    @work(thread=True, exclusive=True, group="sweep-read")
    def refresh_rows(self) -> None:
        """Read the leaderboard (a thread: the storage may take a while), then show it."""
        self.session.read()
        self.app.call_from_thread(self._show)

    def _show(self) -> None:
        self.reads += 1
        session, spec = self.session, self.session.spec
        rows = session.rows
        summary = totals(rows).describe() if rows else "no trial yet"
        process = "its process runs" if session.running() else "no sweep process runs here"
        title = Text.assemble(("Sweep ", "bold"), (spec.name, "bold"),
                              f" · {spec.metric} ({spec.direction}) · {summary} · {process}")
        if session.error:
            title.append(f"\n{session.error}", "red")
        elif best := best_row(rows):
            title.append(f"\nbest: trial {best.number}, {spec.metric} "
                         f"{format_number(best.value)}")
        self.query_one("#sweep-title", Static).update(title)
        table = self.query_one(DataTable)
        highlighted = self._highlighted()
        table.clear()
        for row in rows:
            mark = "✓" if row.number in self.picked else ""
            table.add_row(mark, str(row.number),
                          Text(row.state, STATE_STYLES.get(row.state, "")),
                          *format_params(row.params, session.keys),
                          format_number(row.value), steps_text(row), key=str(row.number))
        if highlighted is not None and session.row(highlighted) is not None:
            table.move_cursor(row=table.get_row_index(str(highlighted)))
        self.query_one(SweepChart).refresh()

    def _highlighted(self) -> int | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return int(row_key.value) if row_key.value is not None else None

    def _highlighted_row(self) -> TrialRow | None:
        number = self._highlighted()
        return self.session.row(number) if number is not None else None

    @on(DataTable.RowSelected)
    def _selected(self) -> None:  # Enter on the table: the table's own binding says so
        self.action_show_trial()

    def action_show_trial(self) -> None:
        """Show the highlighted trial's run in the app."""
        row = self._highlighted_row()
        if row is None:
            return
        if not row.run_dir or not (Path(row.run_dir) / "run.db").exists():
            where = f" (it trained on {row.host})" if row.host else ""
            self.notify(f"trial {row.number} has no run on this machine{where}",
                        severity="warning")
            return
        self.dismiss(Path(row.run_dir))

    def action_pick(self) -> None:
        """Pick or unpick the highlighted trial for comparing."""
        number = self._highlighted()
        if number is None:
            return
        if number in self.picked:
            self.picked.remove(number)
        else:
            self.picked.append(number)
        self._show()

    def action_compare(self) -> None:
        """The compare screen on the picked trials' runs (none picked: the highlighted
        one and the best)."""
        numbers = list(self.picked)
        if not numbers:
            best = best_row(self.session.rows)
            numbers = [n for n in (self._highlighted(), best.number if best else None)
                       if n is not None]
        runs = [r.run_id for n in dict.fromkeys(numbers)
                if (r := self.session.row(n)) is not None and r.run_id]
        if not runs:
            self.notify("no trial with a run to compare yet", severity="warning")
            return
        self.app.push_screen(CompareScreen(self.session.spec.base.run.dir, runs[0],
                                           picked=runs))

    def action_next_field(self) -> None:
        """Chart the metric against the next searched field."""
        chart = self.query_one(SweepChart)
        keys = self.session.keys
        chart.key = keys[(keys.index(chart.key) + 1) % len(keys)]
        chart.refresh()

    def action_close(self) -> None:
        self.dismiss(None)
