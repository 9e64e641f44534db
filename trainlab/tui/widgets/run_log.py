"""The run log: changes, checkpoints, warnings and failures with their traceback."""

from __future__ import annotations

from rich.text import Text
from textual.events import Resize
from textual.widgets import RichLog

from trainlab.tui.feed import RunView
from trainlab.tui.state import LOG, LogEntry, RunState

LEVEL_STYLE = {"info": "", "warning": "yellow", "error": "bold red"}


class RunLog(RunView, RichLog):
    """Appends the run state's log entries it has not shown yet, wrapped at its own width.

    RichLog wraps a line once, when it is written, at no less than ``min_width`` (78 by
    default: wider than the side column, whose lines were cut at its edge); so the log
    wraps at any width and writes its entries again when its width changes.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, wrap=True, markup=False, highlight=False, min_width=1)
        self.shown = 0
        self.source: list[LogEntry] | None = None
        self.wrapped_at = 0
        """The content width the lines were wrapped at (0: none written at a size yet)."""

    def show_run(self, state: RunState, changed: frozenset[str]) -> None:
        """Write the new entries of the run's log."""
        if LOG in changed:
            self.show(state.log)

    def show(self, entries: list[LogEntry]) -> None:
        """Write the entries after the ones already shown; a new run's list starts over."""
        if entries is not self.source:  # a restart: a new log
            self.clear()
            self.source, self.shown = entries, 0
        width = self.scrollable_content_region.width
        if not width:  # hidden, or not laid out yet: written when it has a width
            return
        self.wrapped_at = width
        for entry in entries[self.shown:]:
            line = Text(f"{entry.step:>7}  ", style="dim")
            line.append(entry.text, style=LEVEL_STYLE.get(entry.level, ""))
            self.write(line)
            if entry.traceback:
                self.write(Text(entry.traceback.rstrip(), style="red"))
        self.shown = len(entries)

    def on_resize(self, event: Resize) -> None:
        """Write what came while it had no width, everything again at a new width.
        (RichLog's own handler, called after this one, writes what waited for its first
        size.)"""
        if self.source is None or not self.scrollable_content_region.width:
            return
        if self.scrollable_content_region.width != self.wrapped_at:
            self.clear()
            self.shown = 0
        self.show(self.source)
