"""A sweep in the app: its screen (``i``; first thing when the app opens on a sweep) and
the trial shown, attached to as any run is (``ServedEngine``)."""

from __future__ import annotations

from pathlib import Path

from trainlab.core import rundir
from trainlab.core.config import ConfigError
from trainlab.tui.bridge import ServedEngine
from trainlab.tui.controllers.host import AppHost
from trainlab.tui.screens.sweep import SweepScreen
from trainlab.tui.sweep_session import SweepSession
from trainlab.tui.widgets.status_bar import StatusBar


class Sweeps:
    """The sweep the app shows (none outside ``trainlab sweep``)."""

    def __init__(self, app: AppHost, session: SweepSession | None) -> None:
        self.app = app
        self.session = session

    def show_waiting(self) -> None:
        """No trial shown yet: say so, and open the sweep's screen."""
        assert self.session is not None
        name = self.session.spec.name
        self.app.sub_title = f"sweep {name}: no trial shown (i)"
        self.app.query_one(StatusBar).update(
            f"[b yellow]sweep {name}[/]: i opens its leaderboard, Enter there shows a trial")
        self.open()

    def open(self) -> None:
        """The sweep's screen; Enter there shows a trial."""
        if self.session is not None:
            self.app.push_screen(SweepScreen(self.session), callback=self._closed)

    def _closed(self, run_dir: Path | None) -> None:
        if run_dir is not None:
            self.app.run_worker(self.show_trial(run_dir), name="show_trial",
                                group="restart")

    async def show_trial(self, run_dir: Path) -> None:
        """Show the trial run in ``run_dir``; the run shown before trains on (its engine
        is left, not stopped: the sweep judges it)."""
        app = self.app
        if app.lifecycle.starting:
            return
        try:
            config = rundir.run_config(run_dir)
        except (ConfigError, OSError) as exc:
            app.notify(f"cannot show run {run_dir.name}: {exc}", severity="error")
            return
        await app.lifecycle.start(config, engine=ServedEngine(run_dir), leave=True)
        app.action_view("train")
