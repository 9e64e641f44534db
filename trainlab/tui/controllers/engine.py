"""The engine's lifecycle in the app: start a run (or attach to one, or a fork: whatever
the engine factory makes), restart it with edits, stop it, leave it when the app quits;
the pump that brings its events in; the live changes sent and not yet acknowledged.

The app owns one engine (``trainlab.tui.bridge``) at a time. A single pump drains every
event waiting in the engine's queue per wake-up and hands the batch to the app, which
folds it into ``RunState`` and tells the widgets what changed.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainlab.core import catalog, engine_lock, protocol, rundir, store
from trainlab.core.config import Config, ConfigError
from trainlab.core.protocol import Command, Event, HyperChanged, SessionCommand
from trainlab.core.serving import STOP_GRACE_S
from trainlab.tui.bridge import Engine
from trainlab.tui.controllers.host import AppHost
from trainlab.tui.screens.confirm import ConfirmScreen
from trainlab.tui.state import ALL_PARTS, LOG, RUN, RunState
from trainlab.tui.widgets.config_panel import ConfigPanel
from trainlab.tui.widgets.status_bar import StatusBar

RESTARTING = "restarting…"
"""What the title and the status bar say from the restart key until the new run starts."""


def discard_unstarted(run_dir: Path) -> bool:
    """Remove the run in ``run_dir`` if it never took a step: a run a restart replaced
    before its first step holds nothing to keep (its weights are its config's seed), and
    left behind it would show as a stopped run offered for resume. Waits (a few seconds
    at most) for its engine to exit. Only a stopped or crashed run is removed (what
    ``trainlab runs`` would offer to resume); one still served, failed, of another user,
    with a step, or forked from another is left alone. Returns whether it was removed.
    """
    deadline = time.monotonic() + STOP_GRACE_S
    while engine_lock.engine_alive(run_dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    if not rundir.is_run_dir(run_dir) or rundir.not_yours(run_dir):
        return False
    try:
        summary = catalog.summarize(run_dir)
    except (store.StoreError, OSError):
        return False
    if summary.step > 0 or summary.parent or summary.status not in ("stopped", "crashed"):
        return False  # e.g. a failure stays: its reason and traceback are worth keeping
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()


class EngineLifecycle:
    """Which engine the app talks to, and how it starts, stops and is left."""

    def __init__(self, app: AppHost, factory: Callable[[], Engine]) -> None:
        self.app = app
        self.factory = factory
        self.engine: Engine | None = None
        self.starting = False
        """A run is being started: keys that would start another wait."""
        self.restarting = False
        """The restart key was pressed and its restart (the question, then the start) is
        under way: the key does nothing more until the new run has started."""
        self.pending: dict[str, Any] = {}
        """Live changes sent but not yet acknowledged: relative keys (+, o, c) pressed
        again before the engine answered build on these, not on the old value."""
        self.saves_asked = 0
        """Checkpoints asked for (s) and not yet saved or refused: their CheckpointSaved
        is said where the user looks, the engine's own saves only in the run log."""
        self.detached_run = ""
        """The run the app left training when it quit (the command line says so)."""
        self._pump_task: asyncio.Task[None] | None = None
        self._discards: set[asyncio.Task[None]] = set()
        self._quitting = False

    # --- starting and stopping ---------------------------------------------------

    async def start(self, config: Config, *, engine: Engine | None = None,
                    leave: bool = False) -> None:
        """Stop the current engine (if any) and train ``config`` in a new one: the
        factory's, or ``engine`` (one attached to a run that trains already). ``leave``
        leaves the current engine training instead of stopping it (a sweep's trials)."""
        app = self.app
        self.starting = True
        app.refresh_bindings()
        try:
            await self.stop_pump()
            if self.engine is not None:
                old, old_state = self.engine, app.run_state
                self._say_restarting(old_state)
                # A viewer's restart leaves the run to the client that controls it.
                viewer = old_state.role == "view"
                await (old.detach() if viewer or leave else old.stop())
                self._say_restarting(old_state, stopped=True)
                if not (viewer or leave) and old.run_dir is not None and old_state.step == 0:
                    self._discard_later(old.run_dir)
            app.run_state = s = RunState(config)
            self.pending.clear()
            self.saves_asked = 0
            self.engine = engine if engine is not None else self.factory()
            app.refresh_parts({RUN})  # the screen drops the last run now, not once this one runs
            app.labs.show_curves()
            try:
                await self.engine.start(config)
            except OSError as exc:  # e.g. no python executable, a run.dir we cannot write
                for event in protocol.failure_events("internal",
                                                     f"could not start the engine: {exc}"):
                    s.apply(event)
            run_dir = self.engine.run_dir
            if run_dir is not None:
                s.run_id = s.run_id or run_dir.name
                if self.engine.detachable:
                    s.say("info", f"the engine's output (and your code's prints) go to "
                          f"{run_dir / rundir.LOG_FILE}", step=0)
            app.refresh_parts(set(ALL_PARTS))
            self._pump_task = asyncio.create_task(self._pump(self.engine))
        finally:
            self.starting = False
            app.refresh_bindings()

    def _say_restarting(self, state: RunState, *, stopped: bool = False) -> None:
        """Say at once that a restart is under way (stopping the old engine and starting
        a new one take seconds); the new run's status replaces it."""
        app = self.app
        run = f"run {state.run_id}" if state.run_id else "the run"
        doing = "starting the new run" if stopped else f"stopping {run}"
        app.sub_title = f"{RESTARTING} ({doing})"
        where = "" if stopped else f" at step {state.step:,}"
        for bar in app.query(StatusBar):
            bar.update(f"[b yellow]{RESTARTING}[/]  {doing}{where}")

    def _discard_later(self, run_dir: Path) -> None:
        """Remove ``run_dir`` off the UI's thread if it never took a step
        (``discard_unstarted``), and say so in the new run's log."""
        async def discard() -> None:
            if await asyncio.to_thread(discard_unstarted, run_dir):
                self.app.run_state.say("info", f"run {run_dir.name} was replaced before its "
                                       "first step: removed, nothing to keep")
                self.app.refresh_parts({LOG})
        self._discards.add(task := asyncio.create_task(discard()))
        task.add_done_callback(self._discards.discard)

    @property
    def restart_under_way(self) -> bool:
        """A restart was asked for and its new run has not started yet (or the first run
        is still starting): another restart would stop a run before its first step."""
        return self.restarting or self.starting or (
            self.engine is not None and self.app.run_state.state == "starting")

    def restart(self) -> None:
        """A new run with the config panel's edits (asks first while training runs).
        Pressed again while one is under way, it does nothing."""
        if self.restart_under_way:  # the button bypasses check_action
            return
        self.restarting = True
        self.app.refresh_bindings()
        self.app.run_worker(self._restart(), name="action_restart", group="restart")

    async def _restart(self) -> None:
        try:
            await self._restart_asked()
        finally:
            self.restarting = False
            self.app.refresh_bindings()

    async def _restart_asked(self) -> None:
        app = self.app
        panel = app.query_one(ConfigPanel)
        try:
            config = panel.edited_config()
        except ConfigError as exc:
            app.notify(str(exc), title="Cannot restart", severity="error", timeout=8)
            app.action_view("config")
            return
        if app.run_state.active:
            state = app.run_state
            edits = ", ".join(panel.edits) or "no edits"
            question = f"Stop this run at step {state.step} and start a new one ({edits})?"
            # The edits were read from the panel of this run: the next one resets it.
            if not await app.push_screen_wait(ConfirmScreen(question)) \
                    or app.run_replaced(state, "restart"):
                return
        lab = app.labs.lab
        if lab is not None and not lab.started:
            lab.begin()  # r before Enter: the lab starts, with the edited first run
        await self.start(config)
        app.action_view("train")

    def stop_run(self) -> None:
        """Stop the run for good (asks first): it finishes its step, evaluates and writes
        a checkpoint; ``trainlab resume`` can go on from there."""
        self.app.run_worker(self._stop_run(), name="action_stop_run", group="stop")

    async def _stop_run(self) -> None:
        app = self.app
        state = app.run_state
        # No step in the question: the run trains on while it is asked.
        run = f"run {state.run_id}" if state.run_id else "the run"
        question = f"Stop {run}? It finishes the step it is on, evaluates and writes a " \
                   "checkpoint; trainlab resume can continue it later."
        if not await app.push_screen_wait(ConfirmScreen(question)) \
                or app.run_replaced(state, "stop"):
            return
        self.send(protocol.Stop("stopped from the app"))

    def quit(self) -> None:
        """Quit. A run in its own process trains on (the app detaches from it); one in
        this process (--inline) would end with it, so that asks first."""
        self.app.run_worker(self._quit(), name="action_quit", group="quit")

    async def _quit(self) -> None:
        if self._quitting:  # ctrl+q is a priority binding: it reaches us past a dialog
            return
        app = self.app
        self._quitting = True
        try:
            engine, state = self.engine, app.run_state
            if state.active and engine is not None and not engine.detachable:
                question = "The run is in this process: quitting ends it (at the step " \
                           "it is on). Stop it and quit?"
                if not await app.push_screen_wait(ConfirmScreen(question)):
                    return
            if state.active and engine is not None and engine.detachable:
                self.detached_run = state.run_id
            await self.shutdown()
            app.exit(0)
        finally:
            self._quitting = False

    async def shutdown(self) -> None:
        """Stop the pump and leave the engine: a run in its own process trains on, one in
        a thread stops cooperatively (the step in flight finishes)."""
        engine, self.engine = self.engine, None
        try:
            await self.stop_pump()
        finally:
            if engine is not None:
                await engine.detach()

    # --- the pump --------------------------------------------------------------------

    async def stop_pump(self) -> None:
        """Cancel the pump and wait until it has stopped (whatever it ended with)."""
        task, self._pump_task = self._pump_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})  # not `await task`: that would re-raise its error

    async def _pump(self, engine: Engine) -> None:
        """Hand events to the app in batches: all that waits per wake-up.

        The queue is drained completely at every wake-up, so it only grows while the
        UI loop itself is blocked; consecutive metrics then simply land in one batch.
        """
        app = self.app
        while True:
            batch: list[Event] = [await engine.events.get()]
            while not engine.events.empty():
                batch.append(engine.events.get_nowait())
            if not app.is_running:  # the app is closing: its widgets may be gone
                return
            try:
                app.fold(batch, engine)
            except Exception as exc:  # never let one bad event freeze the screen
                app.run_state.say("error", f"the app could not show an event: "
                                  f"{type(exc).__name__}: {exc}")
                app.notify(str(exc), title="Display error", severity="error")

    # --- commands ----------------------------------------------------------------

    def send(self, command: Command | SessionCommand) -> None:
        """Send a command to the engine; its acknowledgement updates the screen."""
        if self.engine is not None:
            self.engine.send(command)

    def set_hyper(self, key: str, value: Any, note: str = "") -> None:
        """Send a live change and remember it until it is acknowledged; ``note`` says why
        (the engine records it and the acknowledgement carries it to the run log)."""
        self.pending[key] = value
        self.send(protocol.SetHyper(key, value, note))

    def current(self, key: str) -> Any:
        """A live field's value as the keys see it: what was last sent, else the run's."""
        return self.pending.get(key, self.app.run_state.config.get(key))

    def acknowledged(self, event: HyperChanged) -> None:
        """The engine answered a live change: keys build on the run's value again."""
        if event.key in self.pending and self.pending[event.key] == event.new:
            del self.pending[event.key]

    def forget_pending(self) -> None:
        """No answer will come for what was sent (a rejection, which does not say which;
        the run ended): keys build on the run's values."""
        self.pending.clear()
