"""The learning-rate finder in the app (``L``): the range test by the run's engine while
it trains (on a copy of its weights), else on the config in a child process; its
answer on its screen, or in a notification once that screen was closed; ``a`` applies
the suggestion to the run now, or to the Config view for the next run.
"""

from __future__ import annotations

from trainlab.core import protocol
from trainlab.core.config import ConfigError, format_setting
from trainlab.tui.controllers.host import AppHost
from trainlab.tui.screens.confirm import ConfirmScreen
from trainlab.tui.screens.lr_find import (
    APPLY_AT_RESTART,
    APPLY_NOW,
    LrFindScreen,
    trained_weights_note,
)
from trainlab.tui.state import RunState
from trainlab.tui.widgets.config_panel import ConfigPanel

LR_NOTIFY_SECONDS = 10.0
"""How long the lr finder's late answer stays: it is the only place it shows."""


class LrFinder:
    """The range test's screen, the engine's answer to it, and applying its lr."""

    def __init__(self, app: AppHost) -> None:
        self.app = app
        self.screen: LrFindScreen | None = None
        """The open lr finder, which the engine's answer (LrFound) goes to."""

    def can_find(self) -> bool:
        """The run's engine tests it live; after the run (or before any), the config."""
        s, lifecycle = self.app.run_state, self.app.lifecycle
        return (s.active or s.ended or lifecycle.engine is None) and not lifecycle.starting

    def find(self) -> None:
        """The lr range test: by the run's engine while it trains, else on the config.

        A live answer already measured at the run's current step (paused, or its screen
        closed before it came) is shown again rather than tested anew: same weights,
        same curve.
        """
        app = self.app
        s = app.run_state
        if s.active and s.lr_found is not None and s.lr_found.step == s.step:
            screen = LrFindScreen(APPLY_NOW, self._live_about(s.lr_found.step))
            screen.show_curve(s.lr_found)  # shown once mounted
            self._open(screen)
            return
        if s.active:
            app.lifecycle.send(protocol.FindLr())
            # The engine copies the weights at its next step boundary, not at this step.
            self._open(LrFindScreen(APPLY_NOW, self._live_about(None)))
            return
        config, about = app.checked_config()
        runner = app.command_runner
        self._open(LrFindScreen(APPLY_AT_RESTART, f"{about}, freshly initialized",
                                job=lambda: runner("lr-find", config)))

    @staticmethod
    def _live_about(step: int | None) -> str:
        where = "the running run" if step is None else f"the run at step {step:,}"
        return f"a copy of {where} (its weights untouched)"

    def _open(self, screen: LrFindScreen) -> None:
        self.screen = screen
        state = self.app.run_state

        def closed(lr: float | None) -> None:
            if self.screen is screen:
                self.screen = None
            if lr is not None:
                self.app.run_worker(self._apply_found(state, lr, screen.tested_step),
                                    name="_apply_found_lr", group="lr")

        self.app.push_screen(screen, callback=closed)

    # --- the engine's answer ------------------------------------------------------------

    def found(self, event: protocol.LrFound) -> None:
        """The engine's range test answered: to its waiting screen; once that screen was
        closed, a notification instead (a screen popping up later would cover whatever
        the user does now); the run state keeps the result for ``L``."""
        screen = self.screen
        if screen is not None and screen.job is None and screen.waiting:
            screen.show_curve(event)
            return
        found = f"suggests lr {event.suggested_lr:.2e}" if event.suggested_lr is not None \
            else "has no suggestion"
        self.app.notify(f"The range test at step {event.step} {found} ({event.reason}). "
                        f"L shows its curve while the run is at step {event.step}; later L "
                        "tests again.", title="LR finder", timeout=LR_NOTIFY_SECONDS,
                        markup=False)

    def failed(self, message: str) -> None:
        """No answer will come for the waiting live range test: its screen says why."""
        screen = self.screen
        if screen is not None and screen.job is None and screen.waiting:
            screen.show_error(message)

    # --- applying the lr -------------------------------------------------------------

    async def _apply_found(self, state: RunState, lr: float, tested_step: int) -> None:
        """Apply the range test's ``lr`` to ``state``'s run; when the test copied weights
        trained to ``tested_step`` > 0, ask first (``trained_weights_note``): its
        suggestion is meant for a new run."""
        app = self.app
        what = f"optim.lr = {format_setting(lr)}"
        if app.run_replaced(state, what):
            return
        if tested_step > 0 and state.active:
            question = (f"{trained_weights_note(tested_step)} Set {what} on this run now "
                        "anyway?")
            if not await app.push_screen_wait(ConfirmScreen(question)) \
                    or app.run_replaced(state, what):
                return
        self._apply(lr)

    def _apply(self, lr: float) -> None:
        """The running run's lr now; after the run, the Config view's for the next one."""
        app = self.app
        if app.run_state.active:
            app.lifecycle.set_hyper("optim.lr", lr, note="lr-find")
            return
        try:
            app.query_one(ConfigPanel).set_value("optim.lr", lr)
        except ConfigError as exc:
            app.notify(str(exc), title="Cannot use the suggested lr", severity="error")
            return
        app.notify(f"optim.lr = {lr:.2e} is in the Config view (3); it applies when you "
                   "restart (r).", title="LR finder")
