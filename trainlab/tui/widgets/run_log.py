"""The run log: changes, checkpoints, warnings and failures with their traceback."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from trainlab.tui.feed import RunView
from trainlab.tui.state import LOG, LogEntry, RunState

LEVEL_STYLE = {"info": "", "warning": "yellow", "error": "bold red"}


class RunLog(RunView, RichLog):
    """Appends the run state's log entries it has not shown yet."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, wrap=True, markup=False, highlight=False)
        self.shown = 0
        self.source: list[LogEntry] | None = None

    def show_run(self, state: RunState, changed: frozenset[str]) -> None:
        """Write the new entries of the run's log."""
        if LOG in changed:
            self.show(state.log)

    def show(self, entries: list[LogEntry]) -> None:
        """Write the entries after the ones already shown; a new run's list starts over."""
        if entries is not self.source:  # a restart: a new log
            self.clear()
            self.source, self.shown = entries, 0
        for entry in entries[self.shown:]:
            line = Text(f"{entry.step:>7}  ", style="dim")
            line.append(entry.text, style=LEVEL_STYLE.get(entry.level, ""))
            self.write(line)
            if entry.traceback:
                self.write(Text(entry.traceback.rstrip(), style="red"))
        self.shown = len(entries)
