"""How the screen hears of the run: one Textual message per folded batch of events.

The app folds every event waiting in the engine's queue into ``RunState``, then
publishes one ``RunStateChanged`` naming the parts of the screen the batch changed
(``trainlab.tui.state``: CHART, LAYERS, ...; RUN when a new run replaced the last).
A widget that shows the run is a ``RunView``: it subscribes to its app's ``StateFeed``
once mounted and redraws its own part in ``show_run``, so the app does not need to know
which widgets show what.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from textual.message import Message
from textual.widget import Widget

from trainlab.tui.state import RunState

if TYPE_CHECKING:
    _ViewBase = Widget
else:  # a mixin at run time: the widget class it is mixed into is the Widget
    _ViewBase = object


class RunStateChanged(Message, bubble=False):
    """A batch of events was folded into ``state``; ``changed`` names the parts of the
    screen it changed. Each subscriber gets its own (it does not bubble)."""

    def __init__(self, state: RunState, changed: frozenset[str]) -> None:
        super().__init__()
        self.state = state
        self.changed = changed


class StateFeed:
    """The widgets subscribed to the run state, in the order they subscribed."""

    def __init__(self) -> None:
        self._views: list[Widget] = []

    def subscribe(self, view: Widget) -> None:
        """Send ``view`` a RunStateChanged after every published batch."""
        if view not in self._views:
            self._views.append(view)

    def unsubscribe(self, view: Widget) -> None:
        """Send ``view`` nothing more."""
        if view in self._views:
            self._views.remove(view)

    def publish(self, state: RunState, changed: set[str] | frozenset[str]) -> None:
        """Tell every subscriber which parts of ``state`` changed (each redraws on its own
        turn: a message, not a call, so one slow widget holds up no other)."""
        parts = frozenset(changed)
        for view in list(self._views):
            view.post_message(RunStateChanged(state, parts))


@runtime_checkable
class FeedHost(Protocol):
    """An app that publishes its run state (``trainlab.tui.app.TrainlabApp``)."""

    state_feed: StateFeed


class RunView(_ViewBase):
    """A widget that shows part of the run: mixed in before its Textual base class, it
    subscribes to its app's feed when mounted (in an app without one, as a test hosting
    the widget alone, it gets nothing) and calls ``show_run`` with each batch."""

    def on_mount(self) -> None:
        # Textual calls every class's on_mount: the widget's own runs as well.
        if isinstance(self.app, FeedHost):
            self.app.state_feed.subscribe(self)

    def on_unmount(self) -> None:
        if isinstance(self.app, FeedHost):
            self.app.state_feed.unsubscribe(self)

    def on_run_state_changed(self, message: RunStateChanged) -> None:
        try:
            self.show_run(message.state, message.changed)
        except Exception as exc:  # one widget's failure must not take the app down
            message.state.say("error", f"the app could not show the run: "
                              f"{type(exc).__name__}: {exc}")
            self.app.notify(str(exc), title="Display error", severity="error")

    def show_run(self, state: RunState, changed: frozenset[str]) -> None:
        """Redraw this widget's part of ``state`` if ``changed`` names it."""
        raise NotImplementedError
