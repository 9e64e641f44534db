"""What a flow may use of the app that owns it, as Protocols: the flows import this, not
the app, so the app (which imports the flows) and its flows form no circle.

``AppHost`` is the ``TrainlabApp`` as a flow sees it: the run state and the parts it
redraws, the other flows, and the few Textual calls the flows make. Textual's own calls
are typed loosely here (``*args: Any``): they keep Textual's signatures, which change
between its releases, while the app's own members are typed exactly.
"""

from __future__ import annotations

from typing import Any, Protocol

from trainlab.core.config import Config
from trainlab.core.protocol import Command, Event, SessionCommand
from trainlab.tui.bridge import Engine
from trainlab.tui.headless import CommandRunner
from trainlab.tui.lab_session import LabSession
from trainlab.tui.state import RunState


class Lifecycle(Protocol):
    """The engine's lifecycle as the other flows use it (``controllers.engine``)."""

    engine: Engine | None
    starting: bool
    """A start or restart is under way."""

    async def start(self, config: Config, *, engine: Engine | None = None,
                    leave: bool = False) -> None:
        """Stop the current engine, if any, and train ``config`` in a new one (or show
        ``engine``'s run; ``leave``: the current engine trains on)."""
        ...

    def send(self, command: Command | SessionCommand) -> None:
        """Send a command to the engine."""
        ...

    def set_hyper(self, key: str, value: Any, note: str = "") -> None:
        """Send a live change and remember it until it is acknowledged."""
        ...

    def current(self, key: str) -> Any:
        """A live field's value as the keys see it."""
        ...


class LabFlow(Protocol):
    """The lab flow as the others use it (``controllers.labs``)."""

    lab: LabSession | None

    def show_curves(self) -> None:
        """Put the lab's finished runs on the loss chart."""
        ...


class AppHost(Protocol):
    """The app as its flows see it (``trainlab.tui.app.TrainlabApp``)."""

    run_state: RunState
    command_runner: CommandRunner
    sub_title: str

    @property
    def lifecycle(self) -> Lifecycle: ...

    @property
    def labs(self) -> LabFlow: ...

    @property
    def is_running(self) -> bool: ...

    def fold(self, batch: list[Event], engine: Engine) -> None:
        """Fold a batch of events into the run state and redraw what changed."""
        ...

    def refresh_parts(self, changed: set[str]) -> None:
        """Redraw the parts of the screen named in ``changed``."""
        ...

    def run_replaced(self, state: RunState, what: str) -> bool:
        """Has the run ``state`` was taken from been replaced (then say what was dropped)?"""
        ...

    def checked_config(self) -> tuple[Config, str]:
        """The config form's values, validated."""
        ...

    def action_view(self, view: str) -> None:
        """Show one of the views."""
        ...

    # Textual's App, as the flows call it.
    def notify(self, *args: Any, **kwargs: Any) -> Any: ...
    def push_screen(self, *args: Any, **kwargs: Any) -> Any: ...
    async def push_screen_wait(self, *args: Any, **kwargs: Any) -> Any: ...
    def run_worker(self, *args: Any, **kwargs: Any) -> Any: ...
    def query(self, *args: Any, **kwargs: Any) -> Any: ...
    def query_one(self, *args: Any, **kwargs: Any) -> Any: ...
    def refresh_bindings(self, *args: Any, **kwargs: Any) -> Any: ...
    def post_message(self, *args: Any, **kwargs: Any) -> Any: ...
    def exit(self, *args: Any, **kwargs: Any) -> Any: ...
    def _unnotify(self, *args: Any, **kwargs: Any) -> Any: ...
    @property
    def _notifications(self) -> Any: ...
