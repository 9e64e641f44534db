"""A lab in the app: its screen (``i``; Enter starts a lab not started), its runs trained
one after another, each finished one's result kept and its curve overlaid on the chart.
"""

from __future__ import annotations

from trainlab.core import protocol
from trainlab.core.config import Config
from trainlab.tui.controllers.host import AppHost
from trainlab.tui.lab_session import LabSession
from trainlab.tui.screens.lab import LabScreen
from trainlab.tui.widgets.loss_chart import LossChart
from trainlab.tui.widgets.status_bar import StatusBar


class Labs:
    """The lab whose variants the app trains in turn (none for a single run)."""

    def __init__(self, app: AppHost, lab: LabSession | None) -> None:
        self.app = app
        self.lab = lab
        """The lab, or None for a single run (the app's config is then the lab's first
        run, shown until the lab starts)."""

    @property
    def waiting(self) -> bool:
        """Is there a lab that has not started yet (its screen comes first)?"""
        return self.lab is not None and not self.lab.started

    def show_waiting(self) -> None:
        """Say the lab waits to be started, and open its screen."""
        assert self.lab is not None
        name = self.lab.lab.name
        self.app.sub_title = f"lab {name}: not started (i)"
        self.app.query_one(StatusBar).update(
            f"[b yellow]lab {name}[/]: not started · i opens it, Enter there starts it")
        self.open()

    def open(self) -> None:
        """The lab's screen: explanation, runs, results; Enter starts a lab not started."""
        if self.lab is not None:
            self.app.push_screen(LabScreen(self.lab), callback=self._screen_closed)

    def _screen_closed(self, start: bool | None) -> None:
        if start and self.lab is not None and not self.lab.started:
            self._train_variant(self.lab.begin())

    def _train_variant(self, config: Config) -> None:
        """Train the lab's current variant (a worker: the pump may not wait on itself)."""
        self.app.run_worker(self._train(config), name="_train_variant", group="restart")

    async def _train(self, config: Config) -> None:
        app, lab = self.app, self.lab
        if app.lifecycle.starting or lab is None:
            return
        await app.lifecycle.start(config)
        app.notify(f"training {lab.current_name} ({lab.index + 1}/{len(lab.runs)})",
                   title=f"Lab {lab.lab.name}")
        app.action_view("train")

    def run_finished(self, event: protocol.RunFinished) -> None:
        """Keep the variant's result and curve; go on with the next variant, if any (not
        after a failed run: the user fixes the config and restarts)."""
        lab, app = self.lab, self.app
        if lab is None or not lab.started or event.reason == "failed":
            return
        started = app.run_state.started
        done = lab.current_name
        lab.record(event, app.run_state.train_loss,
                   started.steps_per_epoch if started else None)
        following = lab.advance()
        if following is None:
            self.show_curves()
            app.notify(f"{done} finished ({event.reason}): every run of the lab is on "
                       "the chart; i shows their results side by side.",
                       title=f"Lab {lab.lab.name} complete", timeout=10)
            return
        app.notify(f"{done} finished ({event.reason}).", title=f"Lab {lab.lab.name}")
        self._train_variant(following[1])

    def show_curves(self) -> None:
        """The finished variants' curves on the chart, with the current run's."""
        lab = self.lab
        if lab is None or not lab.started:
            return
        started = self.app.run_state.started
        per_epoch = max(1, started.steps_per_epoch) if started is not None else 1
        self.app.query_one(LossChart).compare(
            lab.overlays(), train_label=lab.current_name,
            steps_per_epoch=per_epoch if lab.by_epoch else None)
