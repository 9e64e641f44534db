"""The compare screen: runs under the run root, picked and shown side by side.

Four panes: the runs (space picks, Enter compares), the chart (the picked runs'
training or validation loss on one chart), their configs (a column per run, a row per
key that differs, the values unlike the first run's highlighted; ``a`` shows every
key) and their final and best metrics. At 80x24 one pane shows at a time (1-4 switch);
on a large terminal all four share the screen. The reading is ``trainlab.tui.compare``'s: a run
whose store cannot be read is listed with the reason and never breaks the screen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult, RenderResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from trainlab.core import catalog, run_status, rundir
from trainlab.core.text import format_age
from trainlab.tui import compare
from trainlab.tui.plotting import draw_loss_chart
from trainlab.tui.series import Series

WIDE_COLUMNS = 160
"""From this width (and ``WIDE_ROWS`` height) on, the four panes share the screen (the
app's Train view widens at the same width); narrower, the tables would need scrolling
sideways to show three runs."""
WIDE_ROWS = 36
"""Below this height one pane shows at a time, however wide the terminal."""
PANES = ("runs", "chart", "configs", "metrics")
"""The panes in the order keys 1-4 show them."""
PANE_TITLES = {"runs": "Runs", "chart": "Chart", "configs": "Configs", "metrics": "Metrics"}
PICKED = "✓"
"""The mark of a picked run in the runs table."""
KEYS_TEXT = ("1-4 focus a pane · space picks a run · enter compares · v validation/training "
             "loss · e epochs/steps · a every key/differences · l log y · r reload · "
             "escape closes")
"""The keys, on the bottom line of a large terminal."""
KEYS_NARROW = "1-4 pane · space pick · enter compare · v val · e epoch · a keys · l log · esc"
"""The keys in 78 columns (80, less the padding)."""
STATUS_STYLES = {"running": "green", "paused": "yellow", "finished": "", "stopped": "dim",
                 "failed": "red", "crashed": "bold red", "not yours": "dim"}
"""How each status is written in the runs table."""
DIFFERS_STYLE = "bold yellow"
"""A config value unlike the first run's."""
REFERENCE_STYLE = "bold"
"""The first run's value in a row that differs: what the highlighted ones differ from."""
BEST_STYLE = "bold green"
"""The best value of a metric (lowest loss, highest accuracy)."""
ERROR_STYLE = "red"
"""A run whose store or config cannot be read."""
RUN_COLUMNS = (("pick", ""), ("run", "run"), ("status", "status"), ("step", "step"),
               ("best", "best val"), ("parent", "parent"), ("label", "label"),
               ("age", "last event"), ("note", "note"))
"""The runs table's (column key, header)."""
READ_GROUP = "compare-read"
"""The worker group of the reading of the compared runs (one at a time)."""
LIST_GROUP = "compare-list"
"""The worker group of the listing of the runs (one at a time)."""
_EMPTY = Series()
"""No current run: the compare chart draws overlays only."""


class CompareChart(PlotextPlot):
    """The picked runs' loss curves on one chart: ``trainlab.tui.plotting.draw_loss_chart``'s
    overlays (one per run, each its own colour, named in the legend), no current run.

    Drawn in ``render``, and only when what it shows or its size changed.
    """

    log_y: reactive[bool] = reactive(False)
    """Loss axis on a log scale."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.curves: tuple[tuple[str, Series], ...] = ()
        """What the chart shows: ``(run name, curve)`` per overlaid run."""
        self.title = ""
        self.by_epoch = False
        self._version = 0
        self._drawn: tuple[tuple[Any, ...], RenderResult] | None = None

    def show_curves(self, curves: Sequence[tuple[str, Series]], *, title: str,
                    by_epoch: bool) -> None:
        """Chart ``curves`` (in epochs when ``by_epoch``) under ``title``."""
        self.curves = tuple(curves)
        self.title = title
        self.by_epoch = by_epoch
        self._version += 1
        self.refresh()

    def render(self) -> RenderResult:
        """Draw the overlays at the widget's size (the last picture when nothing changed)."""
        key = (self._version, self.size.width, self.size.height, self.log_y)
        if self._drawn is not None and self._drawn[0] == key:
            return self._drawn[1]
        draw_loss_chart(
            self.plt, train=_EMPTY, val_loss=_EMPTY, val_accuracy=_EMPTY, lr=_EMPTY,
            markers=(), log_y=self.log_y, width=self.size.width, height=self.size.height,
            overlays=self.curves,
            # Overlays are already in epochs; 1 step "per epoch" only labels the axis.
            steps_per_epoch=1 if self.by_epoch else None)
        # draw_loss_chart titles overlays without a current run as a lab's; say what this is.
        title = self.title + (" (log)" if self.log_y else "")
        width = max(1, self.size.width)
        self.plt.title(title if len(title) <= width else title[: width - 1] + "…")
        picture = super().render()
        self._drawn = (key, picture)
        return picture


class RunPicker(DataTable[Any]):
    """The runs table: space picks or unpicks the highlighted run, Enter compares."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "pick", "Pick"),
        Binding("enter", "compare", "Compare"),
    ]

    class Toggle(Message):
        """Pick or unpick the run ``run_id``."""

        def __init__(self, run_id: str) -> None:
            super().__init__()
            self.run_id = run_id

    class Compare(Message):
        """Compare the picked runs."""

    def action_pick(self) -> None:
        """Pick or unpick the highlighted run."""
        if self.row_count:
            row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
            if row_key.value is not None:
                self.post_message(self.Toggle(row_key.value))

    def action_compare(self) -> None:
        """Show the picked runs in the other panes."""
        self.post_message(self.Compare())


class CompareScreen(ModalScreen[None]):
    """Pick runs under ``root`` and compare them; ``current`` (a run id) is picked at
    the start with its parent and its forks, and so are the ids in ``picked`` (a lab's
    runs, say). Escape closes.

    ``now`` gives the time "how long ago" counts from (tests fix it).
    """

    DEFAULT_CSS = """
    CompareScreen {
        background: $background;
    }
    #compare-tabs {
        height: 1;
        padding: 0 1;
    }
    #compare-body {
        height: 1fr;
    }
    .compare-pane {
        display: none;
        height: 1fr;
    }
    .compare-pane.-current {
        display: block;
    }
    #runs-table, #configs-table {
        height: 1fr;
    }
    #metrics-table {
        height: auto;
    }
    #runs-note, #configs-caption, #metrics-notes {
        height: auto;
        max-height: 5;
        padding: 0 1;
        color: $text-muted;
    }
    #compare-keys {
        height: 1;
        padding: 0 1;
        color: $text-muted;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    CompareScreen.-wide #compare-tabs {
        display: none;
    }
    CompareScreen.-wide #compare-body {
        layout: grid;
        grid-size: 2 2;
        grid-columns: 3fr 2fr;
        grid-rows: 3fr 2fr;
    }
    CompareScreen.-wide .compare-pane {
        display: block;
        border: round $primary 40%;
    }
    CompareScreen.-wide .compare-pane:focus-within {
        border: round $accent;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Close"),
        *(Binding(str(i), f"pane('{pane}')", PANE_TITLES[pane], show=False)
          for i, pane in enumerate(PANES, start=1)),
        Binding("v", "toggle_validation", "Val/train"),
        Binding("e", "toggle_epochs", "Epochs"),
        Binding("a", "toggle_all_keys", "All keys"),
        Binding("l", "toggle_log", "Log y"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self, root: str | Path, current: str | None = None, *,
                 picked: Iterable[str] = (), now: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.root = Path(root)
        self.current = current
        self.preselected = tuple(picked)
        self.now = now
        self.pane = "runs"
        """The pane shown when one shows at a time."""
        self.summaries: list[run_status.RunSummary] = []
        """The runs under ``root``, newest first."""
        self.picked: list[str] = []
        """The picked run ids, in the order they were picked."""
        self.compared: list[compare.ComparedRun] = []
        """The runs the other panes show (the picked ones at the last compare)."""
        self.names: dict[str, str] = {}
        """Run id -> the shorter name tables and the legend show (``short_names``)."""
        self.validation = False
        """The chart shows validation loss (else training loss)."""
        self.by_epoch = False
        self.all_keys = False
        """The config table shows every key (else only those that differ)."""
        self.list_error = ""
        """Why the runs could not be listed ('' when they were)."""
        self.listing = True
        """The runs are being listed: the runs table is not current yet."""
        self._pick_at_start = True
        """The first listing still has to pick ``current``'s family and ``picked``."""
        self.reading = 0
        """How many runs are being read for the panes (0: none; the panes are current)."""

    def compose(self) -> ComposeResult:
        yield Static(id="compare-tabs")
        with Container(id="compare-body"):
            with Vertical(id="pane-chart", classes="compare-pane"):
                yield CompareChart(id="compare-chart")
            with Vertical(id="pane-runs", classes="compare-pane"):
                yield RunPicker(id="runs-table", cursor_type="row", zebra_stripes=True)
                yield Static(id="runs-note")
            with Vertical(id="pane-configs", classes="compare-pane"):
                yield Static(id="configs-caption")
                yield DataTable(id="configs-table", cursor_type="row", zebra_stripes=True)
            with Vertical(id="pane-metrics", classes="compare-pane"):
                yield DataTable(id="metrics-table", cursor_type="row", zebra_stripes=True)
                yield Static(id="metrics-notes")
        yield Static(KEYS_NARROW, id="compare-keys")

    def on_mount(self) -> None:
        for pane in PANES:
            self.query_one(f"#pane-{pane}").border_title = PANE_TITLES[pane]
        table = self.query_one(RunPicker)
        for key, header in RUN_COLUMNS:
            table.add_column(header, key=key)
        self._apply_size(self.app.size.width, self.app.size.height)
        self.action_pane("runs")
        self._list()

    def on_resize(self, event: events.Resize) -> None:
        self._apply_size(event.size.width, event.size.height)

    def _apply_size(self, width: int, height: int) -> None:
        wide = width >= WIDE_COLUMNS and height >= WIDE_ROWS
        self.set_class(wide, "-wide")
        self.query_one("#compare-keys", Static).update(KEYS_TEXT if wide else KEYS_NARROW)

    @property
    def wide(self) -> bool:
        """All four panes show at once."""
        return self.has_class("-wide")

    # --- the runs ----------------------------------------------------------------

    @work(exclusive=True, group=LIST_GROUP)
    async def _list(self) -> None:
        """List the runs under ``root`` in a thread, then show them and compare the
        picked ones. Each run's summary opens its store (~2 ms here, more on a network
        disk): hundreds of runs would freeze the screen for a second or more."""
        self.listing = True
        self._show_runs_note()
        self.summaries, self.list_error = await asyncio.to_thread(_list_runs, self.root)
        self.listing = False
        if self._pick_at_start:  # kept until a listing lands (a reload may cancel one)
            self._pick_at_start = False
            family = compare.family(self.summaries, self.current or "")
            self.picked = list(dict.fromkeys([*self.preselected, *family]))
        listed = {s.id for s in self.summaries}
        self.picked = [run_id for run_id in self.picked if run_id in listed]
        self.names = compare.short_names([s.id for s in self.summaries])
        self._fill_runs()
        self._compare()
        self.action_pane(self.pane)

    def _fill_runs(self) -> None:
        """The runs table from ``summaries``, keeping the cursor on the same run."""
        table = self.query_one(RunPicker)
        highlighted = self._highlighted()
        table.clear()
        now = self.now()
        for summary in self.summaries:
            table.add_row(*self._run_cells(summary, now), key=summary.id)
        if highlighted is not None and highlighted in {s.id for s in self.summaries}:
            table.move_cursor(row=table.get_row_index(highlighted))
        self._show_runs_note()

    def _run_cells(self, summary: run_status.RunSummary, now: float) -> list[Any]:
        unreadable = summary.reason.startswith(f"{rundir.DB_FILE} unreadable")
        parent = ""
        if summary.parent:
            parent = self.names.get(summary.parent, summary.parent)
            if summary.parent_step is not None:
                parent += f"@{summary.parent_step}"
        note = summary.reason if unreadable or summary.status in compare.NOTED_STATUSES else ""
        return [
            Text(PICKED if summary.id in self.picked else "", "bold green"),
            Text(self.names.get(summary.id, summary.id), ERROR_STYLE if unreadable else ""),
            Text(summary.status, STATUS_STYLES.get(summary.status, "")),
            Text(str(summary.step), justify="right"),
            Text(compare.format_number(summary.best_val_loss, "loss"), justify="right"),
            parent,
            summary.label,
            Text(format_age(now - summary.updated_at), justify="right"),
            Text(_cut(note), ERROR_STYLE if unreadable else "dim"),
        ]

    def _highlighted(self) -> str | None:
        table = self.query_one(RunPicker)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    def _show_runs_note(self) -> None:
        """Under the runs: what went wrong, or the highlighted run in full, and the keys."""
        note = self.query_one("#runs-note", Static)
        if self.listing:
            note.update(Text(f"listing the runs in {self.root}…", "italic"))
            return
        if self.list_error:
            note.update(Text(self.list_error, ERROR_STYLE))
            return
        if not self.summaries:
            note.update(f"no runs in {self.root} yet: each run the app or trainlab run "
                        "--headless starts writes one there (run.dir)")
            return
        count = len(self.picked)
        text = Text(f"{count} picked · space picks, enter compares")
        by_id = {s.id: s for s in self.summaries}
        highlighted = by_id.get(self._highlighted() or "")
        if highlighted is not None:
            text.append(f"\n{highlighted.id} {highlighted.status}", "bold")
            loaded = {run.id: run for run in self.compared}.get(highlighted.id)
            if loaded is not None and loaded.error:
                text.append(f": {loaded.error}", ERROR_STYLE)
            elif highlighted.reason:
                style = ERROR_STYLE if highlighted.status in compare.NOTED_STATUSES else ""
                text.append(f": {highlighted.reason}", style)
            if highlighted.resumable:
                text.append(f" · trainlab resume {highlighted.id} continues it")
        note.update(text)

    @on(DataTable.RowHighlighted, "#runs-table")
    def _runs_highlighted(self) -> None:
        self._show_runs_note()

    @on(RunPicker.Toggle)
    def _toggle(self, message: RunPicker.Toggle) -> None:
        run_id = message.run_id
        if run_id in self.picked:
            self.picked.remove(run_id)
        else:
            self.picked.append(run_id)
        self.query_one(RunPicker).update_cell(
            run_id, "pick", Text(PICKED if run_id in self.picked else "", "bold green"))
        self._show_runs_note()

    @on(RunPicker.Compare)
    def _compare_picked(self) -> None:
        self._compare()
        if not self.wide:
            self.action_pane("chart")

    # --- comparing ---------------------------------------------------------------

    def _compare(self) -> None:
        """Read the picked runs and fill the other panes: the current run first (the
        one the others' differences are shown against), then newest first."""
        by_id = {s.id: s for s in self.summaries}
        order = sorted((s.id for s in self.summaries if s.id in self.picked),
                       key=lambda run_id: run_id != self.current)  # stable: newest first
        self.reading = len(order)
        self._show_tabs()
        self._read([by_id[run_id] for run_id in order])

    @work(exclusive=True, group=READ_GROUP)
    async def _read(self, summaries: list[run_status.RunSummary]) -> None:
        """Read ``summaries``' runs in a thread, then show them. A million-step curve
        takes a second or two to read: the screen keeps answering keys meanwhile, and a
        newer compare cancels this one (its result is dropped)."""
        compared = await asyncio.to_thread(lambda: [compare.load_run(s) for s in summaries])
        self.compared = compared
        self.reading = 0
        self._show_tabs()
        self._show_runs_note()  # the highlighted run's reading error, if it had one
        self._show_chart()
        self._show_configs()
        self._show_metrics()

    def _show_chart(self) -> None:
        chart = self.query_one(CompareChart)
        curves = compare.curves(self.compared, self.names, validation=self.validation,
                                by_epoch=self.by_epoch)
        what = "validation loss" if self.validation else "training loss"
        unit = "epoch" if self.by_epoch else "step"
        if not self.compared:
            title = "no run picked: 1 lists the runs, space picks, enter compares"
        elif not curves:
            title = f"no {what} recorded in the picked runs yet"
        else:
            title = f"{what} of {len(curves)} run{'s' if len(curves) != 1 else ''} by {unit}"
        chart.show_curves(curves, title=title, by_epoch=self.by_epoch)

    def _headers(self) -> list[Text]:
        headers = []
        for run in self.compared:
            name = self.names.get(run.id, run.id)
            label = f" {run.summary.label}" if run.summary.label else ""
            headers.append(Text(name + label, ERROR_STYLE if run.error else "bold"))
        return headers

    def _show_configs(self) -> None:
        table = self.query_one("#configs-table", DataTable)
        table.clear(columns=True)
        caption = self.query_one("#configs-caption", Static)
        if not self.compared:
            caption.update("pick runs (1) to compare their configs")
            return
        table.add_column("key", key="key")
        for index, header in enumerate(self._headers()):
            table.add_column(header, key=f"run{index}")
        # One run differs from nothing: it shows every key it has.
        every = self.all_keys or len(self.compared) < 2
        rows = compare.config_rows(self.compared, all_keys=every)
        differ = sum(row.differs for row in rows)
        for row in rows:
            cells: list[Any] = [Text(row.key, DIFFERS_STYLE if row.differs else "")]
            for index, value in enumerate(row.cells):
                style = ""
                if row.unlike_first[index]:
                    style = DIFFERS_STYLE
                elif row.differs:
                    style = REFERENCE_STYLE
                cells.append(Text(value, style))
            table.add_row(*cells, key=row.key)
        unreadable = [self.names.get(r.id, r.id) for r in self.compared if r.config is None]
        text = Text()
        if len(self.compared) < 2:
            text.append("one run: its config (pick another to see what differs)")
        elif differ:
            text.append(f"{differ} key{'s' if differ != 1 else ''} differ", "bold")
            reference = next(r for r in self.compared if r.config is not None)
            text.append(f"; highlighted: values unlike {self.names.get(reference.id)}'s")
        else:
            text.append("the configs are the same")
        if len(self.compared) >= 2:
            text.append(" · a: only those that differ" if self.all_keys else " · a: every key")
        if unreadable:
            text.append(f"\nconfig unreadable: {', '.join(unreadable)}", ERROR_STYLE)
        caption.update(text)

    def _show_metrics(self) -> None:
        table = self.query_one("#metrics-table", DataTable)
        table.clear(columns=True)
        if not self.compared:
            self.query_one("#metrics-notes", Static).update("pick runs (1) to compare how "
                                                            "far they got")
            return
        table.add_column("", key="metric")
        for index, header in enumerate(self._headers()):
            table.add_column(header, key=f"run{index}")
        for row in compare.metric_rows(self.compared):
            table.add_row(Text(row.name, "bold"),
                          *(Text(cell, BEST_STYLE if i in row.best else "", justify="right")
                            for i, cell in enumerate(row.cells)), key=row.name)
        notes = Text()
        for run in self.compared:
            if note := compare.note(run):
                if notes:
                    notes.append("\n")
                notes.append(f"{self.names.get(run.id, run.id)}: ", "bold")
                notes.append(note, ERROR_STYLE if run.error else "")
        self.query_one("#metrics-notes", Static).update(notes)

    # --- keys --------------------------------------------------------------------

    def action_pane(self, pane: str) -> None:
        """Show ``pane`` (one at a time at 80x24) and focus its table."""
        self.pane = pane
        for name in PANES:
            self.query_one(f"#pane-{name}").set_class(name == pane, "-current")
        self._show_tabs()
        focus = {"runs": "#runs-table", "configs": "#configs-table",
                 "metrics": "#metrics-table"}.get(pane)
        if focus is not None:
            self.query_one(focus).focus()
        else:
            self.set_focus(None)  # the chart has no keys of its own

    def _show_tabs(self) -> None:
        """The pane line: the panes (the shown one stands out) and what is compared."""
        tabs = Text()
        for index, name in enumerate(PANES, start=1):
            tabs.append(f" {index} {PANE_TITLES[name]} ", "bold reverse" if name == self.pane
                        else "")
            tabs.append(" ")
        if self.reading:
            tabs.append(f" reading {self.reading} run{'s' if self.reading != 1 else ''}…",
                        "italic")
        else:
            tabs.append(f" {len(self.compared)} compared", "dim")
        self.query_one("#compare-tabs", Static).update(tabs)

    def action_toggle_validation(self) -> None:
        """Chart validation loss instead of training loss, or back."""
        self.validation = not self.validation
        self._show_chart()

    def action_toggle_epochs(self) -> None:
        """Chart against epochs (runs with different batch sizes) or steps."""
        self.by_epoch = not self.by_epoch
        self._show_chart()

    def action_toggle_log(self) -> None:
        """Loss axis on a log scale, or linear."""
        chart = self.query_one(CompareChart)
        chart.log_y = not chart.log_y

    def action_toggle_all_keys(self) -> None:
        """Every config key, or only those that differ."""
        self.all_keys = not self.all_keys
        self._show_configs()

    def action_reload(self) -> None:
        """List the runs again and re-read the compared ones (running runs move on)."""
        self._list()

    def action_close(self) -> None:
        """Back to the app."""
        self.dismiss(None)


def _list_runs(root: Path) -> tuple[list[run_status.RunSummary], str]:
    """(The runs under ``root``, newest first, ''), or ([], why they cannot be listed)."""
    try:
        return catalog.list_runs(root), ""
    except (OSError, ValueError) as exc:  # the root unreadable: say so, list nothing
        return [], f"cannot list the runs in {root}: {getattr(exc, 'strerror', None) or exc}"


def _cut(text: str) -> str:
    """``text`` cut to ``compare.NOTE_CHARS`` characters, with an ellipsis when cut."""
    limit = compare.NOTE_CHARS
    return text if len(text) <= limit else text[: limit - 1] + "…"
