"""A lab's screen: what it shows and why, its runs, and the results of the finished ones.

Opened when the app starts on a lab (``trainlab --preset LAB``), where Enter starts
it, and again with ``i`` at any time, where it also has a table of the finished
variants: how each ended and the losses it reached, side by side.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from trainlab.core.labs import RESULT_COLUMNS, result_row
from trainlab.tui.lab_session import LabSession


def reflow(text: str) -> str:
    """Paragraphs of hard-wrapped lines as one line each, for the screen to wrap at its
    own width (a lab's explanation is wrapped for 80 columns; the dialog is narrower).

    Blank lines still separate paragraphs, and a line that starts a list item (``-``,
    ``*``) or is indented keeps its own line.
    """
    lines: list[str] = []
    for line in text.splitlines():
        joins = lines and lines[-1] and line.strip() and not line.startswith((" ", "-", "*"))
        if joins:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.rstrip())
    return "\n".join(lines)


def run_mark(session: LabSession, index: int) -> tuple[str, str]:
    """Run ``index``'s place in the lab as (word, style): ``done`` once finished, ``now``
    while it trains, ``next`` for the one run that follows (the first one before the lab
    starts), and no word for the later ones (each "next" would say nothing)."""
    if index in session.results:
        return "done", "green"
    if index == session.index:
        return "now", "bold yellow"
    if index == session.index + 1:
        return "next", "cyan"
    return "", "dim"


def runs_text(session: LabSession) -> Text:
    """The lab's runs in order, each with its summary and whether it is done, training
    now, the next to train, or later."""
    text = Text()
    for index, (name, _config) in enumerate(session.runs):
        mark, style = run_mark(session, index)
        if index:
            text.append("\n")
        text.append(f"{index + 1}. ", "bold")
        text.append(f"{mark:<5}", style)
        text.append(name, "bold")
        if summary := session.summary(name):
            text.append(f"\n         {summary}", "dim")
    return text


def result_rows(session: LabSession) -> list[tuple[str, ...]]:
    """The results table's rows: one per finished variant, in training order, with the
    headless comparison's columns (``trainlab.core.labs.RESULT_COLUMNS``)."""
    return [result_row(r.name, r.finished)
            for r in (session.results[i] for i in sorted(session.results))]


class LabScreen(ModalScreen[bool]):
    """The lab's explanation, runs and results; dismissed with True to start the lab.

    Before the lab starts, Enter starts it; afterwards Enter and Escape both return
    to the run.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "start", "Start the lab"),
        Binding("escape,q,i", "close", "Close"),
    ]

    def __init__(self, session: LabSession) -> None:
        super().__init__()
        self.session = session

    def compose(self) -> ComposeResult:
        lab = self.session.lab
        with Vertical(id="lab-dialog", classes="report-dialog"):
            yield Static(Text.assemble(("Lab: ", "bold"), (lab.name, "bold"), " · ",
                                       lab.summary), classes="report-title")
            with VerticalScroll(id="lab-body"):
                yield Static(Text(reflow(lab.explanation)), id="lab-explanation")
                yield Static(Text("Runs", "bold"), classes="lab-heading")
                yield Static(runs_text(self.session), id="lab-runs")
                rows = result_rows(self.session)
                if rows:
                    yield Static(Text("Results", "bold"), classes="lab-heading")
                    table: DataTable[str] = DataTable(id="lab-results", cursor_type="row",
                                                      zebra_stripes=True)
                    table.add_columns(*RESULT_COLUMNS)
                    table.add_rows(rows)
                    yield table
            yield Static(self._keys_text(), classes="report-keys")

    def _keys_text(self) -> str:
        if not self.session.started:
            count = len(self.session.runs)
            return (f"[b]Enter[/b]: start the lab ({count} runs, one after another, "
                    "compared on one chart) · Escape: close (i reopens)")
        return "[dim]Enter / Escape: back to the run · r redoes the current run only[/]"

    def on_mount(self) -> None:
        self.query_one("#lab-body", VerticalScroll).focus()

    def action_start(self) -> None:
        """Start the lab if it has not started; otherwise just close."""
        self.dismiss(not self.session.started)

    def action_close(self) -> None:
        """Back to the run; nothing starts."""
        self.dismiss(False)
