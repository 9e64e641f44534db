"""The status bar: the run's state in one word, then where it is and how fast."""

from __future__ import annotations

from textual.widgets import Static

from trainlab.tui.feed import RunView
from trainlab.tui.state import STATUS, RunState

STATE_STYLE = {
    "starting": "yellow", "running": "green", "paused": "yellow",
    "finished": "cyan", "stopped": "cyan", "failed": "red",
}


def status_text(state: RunState) -> str:
    """The status line's markup: state, step, epoch, steps/s, lr, optimizer, device."""
    shown = state.shown_state
    style = STATE_STYLE.get(shown, "white")
    parts = [f"[b {style}]{shown}[/]", f"step {state.step:,}"]
    started = state.started
    if started is not None:
        total = started.total_steps
        parts[-1] += f"/{total:,}" if total else ""
        parts.append(f"epoch {state.epoch}")
    if state.state == "running":
        parts.append(f"{state.steps_per_sec:,.0f} steps/s")
    if state.lr is not None:
        parts.append(f"lr {state.lr:.3g}")
    parts.append(state.config.optim.name)
    clip = state.config.reg.clip_norm
    parts.append(f"clip {clip:g}" if clip else "no clip")
    if started is not None:
        parts.append(f"{started.device}")
    if state.last_eval is not None:
        e = state.last_eval
        acc = f" acc {100 * e.val_accuracy:.1f}%" if e.val_accuracy is not None else ""
        parts.append(f"val {e.val_loss:.4g}{acc}")
    return "  ".join(parts)


def failure_text(state: RunState) -> str | None:
    """The banner's markup for a failed run: why, and what to do; None otherwise."""
    if state.state != "failed":
        return None
    message = state.failure.message if state.failure else (
        state.nonfinite.message if state.nonfinite else state.reason)
    where = "; the traceback is in the log (4)" if state.failure and state.failure.traceback \
        else "; details in the log (4)"
    return f"[b]failed[/b]: {message}\nEdit the config (3) and restart (r){where}."


class StatusBar(RunView, Static):
    """One line: running/paused/finished/failed, step, epoch, steps/s, lr, optimizer, device."""

    def show_run(self, state: RunState, changed: frozenset[str]) -> None:
        """Redraw when the run's status changed."""
        if STATUS in changed:
            self.show(state)

    def show(self, state: RunState) -> None:
        """Redraw from the run's state."""
        self.update(status_text(state))


class FailureBanner(RunView, Static):
    """Above everything while the run has failed: why, and how to go on; hidden otherwise."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.shown: str | None = None

    def show_run(self, state: RunState, changed: frozenset[str]) -> None:
        """Show or hide the banner as the run's state says."""
        if STATUS not in changed:
            return
        text = failure_text(state)
        if text is not None and text != self.shown:
            self.update(text)
        self.shown = text
        self.display = text is not None
