"""The trainlab app: a live run you can see and steer from the keyboard.

The app owns one engine (``trainlab.tui.bridge``) at a time. A single pump drains every event
waiting in the engine's queue per wake-up, folds the batch into ``RunState`` and then
refreshes only the parts of the screen the batch changed; the charts redraw on their
own timers. Every key sends a protocol command and shows nothing until the engine
acknowledges it (the run log and the status bar show what the engine did).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, assert_never

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.notifications import Notification, Notify
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, OptionList, TabbedContent, TabPane

from trainlab.core import protocol, rundir
from trainlab.core.config import OPTIMIZERS, Config, ConfigError, format_setting
from trainlab.core.health import alert_title
from trainlab.core.protocol import (
    AlertRaised,
    Attached,
    CheckpointSaved,
    CommandRejected,
    ControlChanged,
    EngineFailed,
    EvalDone,
    Event,
    HyperChanged,
    LayerStatsSnapshot,
    LrFound,
    MetricsBatch,
    NonFiniteDetected,
    Notice,
    RunFinished,
    RunStarted,
    StateChanged,
)
from trainlab.tui.bridge import Engine, ServedEngine
from trainlab.tui.feed import StateFeed
from trainlab.tui.headless import CommandRunner, run_engine_command
from trainlab.tui.lab_session import LabSession
from trainlab.tui.screens.compare import CompareScreen
from trainlab.tui.screens.confirm import ChoiceScreen, ConfirmScreen
from trainlab.tui.screens.doctor import DoctorScreen
from trainlab.tui.screens.fix_picker import FixPicker
from trainlab.tui.screens.help import HelpScreen, key_help
from trainlab.tui.screens.lab import LabScreen
from trainlab.tui.screens.lr_find import (
    APPLY_AT_RESTART,
    APPLY_NOW,
    LrFindScreen,
    trained_weights_note,
)
from trainlab.tui.state import ALERTS, ALL_PARTS, LOG, RUN, STATUS, RunState
from trainlab.tui.widgets.alerts_panel import (
    AlertsPanel,
    AlertStrip,
    describe_changes,
    describe_moved,
)
from trainlab.tui.widgets.config_panel import ConfigPanel
from trainlab.tui.widgets.histogram_view import HistogramView
from trainlab.tui.widgets.layer_table import LayerTable
from trainlab.tui.widgets.loss_chart import LossChart
from trainlab.tui.widgets.run_log import RunLog
from trainlab.tui.widgets.signal_view import SignalView
from trainlab.tui.widgets.status_bar import FailureBanner, StatusBar

WIDE_COLUMNS = 160
"""From this width on, the Train view also shows the signal view and the run log."""
NARROW_COLUMNS = 100
"""Below this width, the Layers view stacks the signal view over the histogram."""
DEFAULT_CLIP_NORM = 1.0
"""What the clipping key turns on when the run has never clipped: max gradient norm 1."""
NOTIFY_SEVERITIES = ("warning", "critical")
"""Alerts that pop up a notification: the run is not learning as it should, and a
problem must never go unseen (docs/field-knowledge.md#never-fail-silently). An info
alert is advice; it waits in the Alerts view and the strip."""
ALERT_NOTIFY_SECONDS = 5.0
"""How long an alert's notification stays: enough to read its two short lines; the
strip (Train view) and the Alerts view keep the alert, so the toast only draws the eye
and must not keep covering the screen (at 80x24 a toast covers its right half)."""
LR_NOTIFY_SECONDS = 10.0
"""How long the lr finder's late answer stays: it is the only place it shows."""

STEERING_ACTIONS = frozenset({
    "toggle_pause", "step", "scale_lr", "next_optimizer", "pick_optimizer", "toggle_clip",
    "save_checkpoint", "stop_run", "fix", "find_lr"})
"""Actions that change the run: a viewer (another client controls the run) has them
disabled until it takes control (t)."""


def default_engine_factory() -> Engine:
    """A new run in a process of its own, which outlives the app (``trainlab.tui.bridge``)."""
    return ServedEngine()


class TrainlabApp(App[int]):
    """Train ``config`` at once; see and steer the run; restart it with edits."""

    CSS_PATH = "app.tcss"
    TITLE = "trainlab"

    # The description is the footer's word; the tooltip is what the help screen and the
    # command palette say the key does (and the footer on hover).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "toggle_pause", "Pause", tooltip="pause or resume training"),
        Binding("n", "step", "Step", tooltip="train one step (while paused)"),
        Binding("plus", "scale_lr(2.0)", "LR×2", key_display="+",
                tooltip="double the learning rate"),
        # = is the + key without shift: the same key, shown (and explained) once.
        Binding("equals_sign", "scale_lr(2.0)", "LR×2", key_display="+", show=False),
        Binding("minus", "scale_lr(0.5)", "LR÷2", key_display="-",
                tooltip="halve the learning rate (an exact value: Config view)"),
        Binding("o", "next_optimizer", "Optim",
                tooltip="next optimizer (weights kept, optimizer state reset)"),
        Binding("O", "pick_optimizer", "Pick optimizer", show=False,
                tooltip="pick the optimizer from a list"),
        Binding("c", "toggle_clip", "Clip",
                tooltip="gradient clipping on/off (max norm; set it in Config)"),
        Binding("s", "save_checkpoint", "Save", tooltip="save a checkpoint"),
        Binding("r", "restart", "Restart", tooltip="restart: a new run with the edited config"),
        Binding("x", "stop_run", "Stop", show=False,
                tooltip="stop the run (asks first; a checkpoint is written)"),
        Binding("t", "take_control", "Take control", show=False,
                tooltip="take control of a run another app steers (viewing only now)"),
        # Not in the footer (80 columns are full): the alert strip shows the key instead.
        Binding("f", "fix", "Fix", show=False,
                tooltip="apply the suggested fix of the newest alert, or the highlighted one"),
        Binding("l", "toggle_log_scale", "Log y", show=False,
                tooltip="log scale for the loss chart"),
        Binding("h", "next_histogram", "Histogram kind", show=False,
                tooltip="histogram of weights / gradients / activations"),
        Binding("1", "view('train')", "Train", show=False,
                tooltip="Train view: loss chart and layer table"),
        Binding("2", "view('layers')", "Layers", show=False,
                tooltip="Layers view: layer table, signal view, histograms"),
        Binding("3", "view('config')", "Config", show=False,
                tooltip="Config view (Escape leaves a field)"),
        Binding("4", "view('log')", "Log", show=False, tooltip="Log view"),
        Binding("5", "view('alerts')", "Alerts", show=False,
                tooltip="Alerts view: the doctor's findings, their evidence and fixes"),
        Binding("d", "doctor", "Doctor", show=False,
                tooltip="pre-flight doctor: the debugging checklist on the edited config"),
        Binding("L", "find_lr", "LR finder", show=False,
                tooltip="lr finder: range test, its curve and suggestion (a applies it)"),
        Binding("i", "lab", "Lab", show=False,
                tooltip="the lab: its explanation, runs and results (r redoes the current "
                        "run)"),
        Binding("C", "compare", "Compare runs", show=False,
                tooltip="compare runs: curves on one chart, configs side by side "
                        "(differences highlighted), final and best metrics"),
        Binding("question_mark,f1", "help", "Help", key_display="?", tooltip="this help"),
        Binding("q", "quit", "Quit",
                tooltip="quit; a run in its own process trains on (trainlab attach)"),
    ]

    def __init__(self, config: Config, *,
                 engine_factory: Callable[[], Engine] = default_engine_factory,
                 command_runner: CommandRunner = run_engine_command,
                 lab: LabSession | None = None) -> None:
        super().__init__()
        self.engine_factory = engine_factory
        self.command_runner = command_runner
        """Runs the engine's headless doctor and lr-find on a config (tests use a fake)."""
        self.lab = lab
        """The lab whose variants this app trains in turn, or None for a single run
        (``config`` is then the lab's first run, shown until the lab starts)."""
        self.lr_screen: LrFindScreen | None = None
        """The open lr finder, which the engine's answer (LrFound) goes to."""
        self.engine: Engine | None = None
        self.run_state = RunState(config)
        self.state_feed = StateFeed()
        """The widgets that show the run subscribe here (``trainlab.tui.feed``)."""
        self.last_clip_norm = config.reg.clip_norm or DEFAULT_CLIP_NORM
        self._pump_task: asyncio.Task[None] | None = None
        self._starting = False
        self._quitting = False
        self.detached_run = ""
        """The run the app left training when it quit (the command line says so)."""
        self.alert_toast: Notification | None = None
        """The alert notification on screen, if any: a newer alert replaces it."""
        self.pending: dict[str, Any] = {}
        """Live changes sent but not yet acknowledged: relative keys (+, o, c) pressed
        again before the engine answered build on these, not on the old value."""

    # --- layout ----------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="≋")
        yield FailureBanner(id="banner")
        with TabbedContent(initial="train", id="views"):
            with TabPane("Train [1]", id="train"), Horizontal():
                with Vertical(id="train-main"):
                    yield AlertStrip(self.fixes_now, id="alert-strip")
                    yield LossChart(id="chart")
                    yield LayerTable(id="layers-train")
                with Vertical(id="train-side"):
                    yield SignalView(id="signal-train")
                    yield RunLog(id="log-side")
            with TabPane("Layers [2]", id="layers"), Vertical():
                yield LayerTable(id="layers-full")
                with Horizontal(id="layers-bottom"):
                    yield SignalView(id="signal-full")
                    yield HistogramView(id="histogram")
            with TabPane("Config [3]", id="config"):
                yield ConfigPanel(self.run_state.config, id="config-panel")
            with TabPane("Log [4]", id="log"):
                yield RunLog(id="log-full")
            with TabPane("Alerts [5]", id="alerts"):
                yield AlertsPanel(id="alerts-panel")
        yield StatusBar(id="status")
        # The palette (ctrl+p) is on the help screen: at 80 columns the keys need the room.
        yield Footer(compact=True, show_command_palette=False)

    async def on_mount(self) -> None:
        self.sub_title = "starting the engine"
        self._apply_width(self.size.width)
        if self.lab is not None and not self.lab.started:  # its screen first; Enter starts it
            self.sub_title = f"lab {self.lab.lab.name}: not started (i)"
            self.query_one(StatusBar).update(
                f"[b yellow]lab {self.lab.lab.name}[/]: not started · i opens it, Enter there "
                "starts it")
            self.action_lab()
            return
        await self._start_run(self.run_state.config)

    def on_resize(self, event: Any) -> None:
        self._apply_width(event.size.width)

    def _apply_width(self, width: int) -> None:
        self.screen.set_class(width >= WIDE_COLUMNS, "wide")
        self.screen.set_class(width < NARROW_COLUMNS, "narrow")

    # --- the engine ------------------------------------------------------------

    async def _start_run(self, config: Config) -> None:
        """Stop the current engine (if any) and train ``config`` in a new one."""
        self._starting = True
        self.refresh_bindings()
        try:
            await self._stop_pump()
            if self.engine is not None:
                # A viewer's restart leaves the run to the client that controls it.
                viewer = self.run_state.role == "view"
                await (self.engine.detach() if viewer else self.engine.stop())
            self.run_state = RunState(config)
            self.pending.clear()
            self.engine = self.engine_factory()
            s = self.run_state
            self._refresh({RUN})  # the screen drops the last run now, not once this one runs
            self._show_lab_curves()
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
            self._refresh(set(ALL_PARTS))
            self._pump_task = asyncio.create_task(self._pump(self.engine))
        finally:
            self._starting = False
            self.refresh_bindings()

    async def _stop_pump(self) -> None:
        """Cancel the pump and wait until it has stopped (whatever it ended with)."""
        task, self._pump_task = self._pump_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})  # not `await task`: that would re-raise its error

    async def _pump(self, engine: Engine) -> None:
        """Apply events in batches: all that waits per wake-up, then one refresh.

        The queue is drained completely at every wake-up, so it only grows while the
        UI loop itself is blocked; consecutive metrics then simply land in one batch.
        """
        while True:
            batch = [await engine.events.get()]
            while not engine.events.empty():
                batch.append(engine.events.get_nowait())
            if not self.is_running:  # the app is closing: its widgets may be gone
                return
            try:
                changed: set[str] = set()
                for event in batch:
                    changed |= self.run_state.apply(event)
                    self._react(event, live=self._live(engine))
                self._refresh(changed)
            except Exception as exc:  # never let one bad event freeze the screen
                self.run_state.say("error", f"the app could not show an event: "
                                   f"{type(exc).__name__}: {exc}")
                self.notify(str(exc), title="Display error", severity="error")

    def _live(self, engine: Engine) -> bool:
        """Are the engine's events live now, not its run's recorded history (which an
        attached engine replays first, up to its ``Attached``)?"""
        return not engine.replays_history or bool(self.run_state.client)

    def current(self, key: str) -> Any:
        """A live field's value as the keys see it: what was last sent, else the run's."""
        return self.pending.get(key, self.run_state.config.get(key))

    def set_hyper(self, key: str, value: Any, note: str = "") -> None:
        """Send a live change and remember it until it is acknowledged; ``note`` says why
        (the engine records it and the acknowledgement carries it to the run log)."""
        self.pending[key] = value
        self.send(protocol.SetHyper(key, value, note))

    def _refresh(self, changed: set[str]) -> None:
        """Publish one RunStateChanged to the widgets; the title and the keys follow the
        run's state and role."""
        s = self.run_state
        changed = set(changed)
        if STATUS in changed:
            title = " · ".join(filter(None, (s.run_id, s.shown_state,
                                             "view only (t)" if s.role == "view" else "")))
            if self.sub_title != title:  # a new state or role: other keys make sense now
                self.sub_title = title
                changed.add(ALERTS)  # which fixes can apply depends on the state
        if ALERTS in changed:
            self.refresh_bindings()  # `f` may act now, or no longer
        self.state_feed.publish(s, changed)

    def _notify_alert(self, alert: protocol.AlertRaised) -> None:
        """Pop up a new warning or critical alert in two short lines, replacing the
        previous alert's pop-up (one at a time); none while the Alerts view shows: the
        alert is right there, and a pop-up would cover it."""
        if alert.severity not in NOTIFY_SEVERITIES or self.alerts_view_showing():
            return
        self._clear_alert_toast()
        body = []
        if alert.layers:
            more = len(alert.layers) - 1
            body.append(alert.layers[0] + (f" +{more}" if more else ""))
        if self.fixes_now(alert):
            body.append("f fix")
        body.append("5 details")
        toast = Notification(" · ".join(body), f"{alert.severity}: {alert_title(alert.kind)}",
                             "error" if alert.severity == "critical" else "warning",
                             ALERT_NOTIFY_SECONDS, markup=False)  # layer names are no markup
        self.alert_toast = toast
        # App.notify returns nothing to remove the toast by; this is what it posts.
        self.post_message(Notify(toast))

    def _clear_alert_toast(self) -> None:
        """Remove the alert pop-up on screen, if any (other notifications stay)."""
        toast, self.alert_toast = self.alert_toast, None
        if toast is not None and toast in self._notifications:
            self._unnotify(toast)  # Textual's own removal of one notification

    def alerts_view_showing(self) -> bool:
        """Is the Alerts view the one on screen?"""
        tabs = self.query(TabbedContent)  # none yet when bindings are checked at start-up
        return bool(tabs) and tabs.first().active == "alerts"

    def send(self, command: Any) -> None:
        """Send a command to the engine; its acknowledgement updates the screen."""
        if self.engine is not None:
            self.engine.send(command)

    def run_replaced(self, state: RunState, what: str) -> bool:
        """Has another run replaced ``state`` while a dialog about it was open? If so,
        say that ``what`` was not applied.

        The pump keeps running under a dialog: in a lab the variant may finish and the
        next one start before the user answers, and a fix, lr or restart meant for the
        old run must not land on the new one (or retrain the old config under the new
        variant's name).
        """
        if self.run_state is state:
            return False
        self.notify(f"The run ended while you chose; nothing applied ({what}).",
                    title="Not applied", severity="warning", timeout=8)
        return True

    # --- actions -----------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Disable (greyed out in the footer) what makes no sense in the run's state."""
        state = self.run_state.state
        if action in STEERING_ACTIONS and self.run_state.role == "view":
            return None  # another client steers this run
        if action == "take_control":
            return (self.run_state.role == "view" and self.run_state.active) or None
        if action == "stop_run":
            return self.run_state.active or None
        if action == "toggle_pause":
            return state in ("running", "paused") or None
        if action == "step":
            return state == "paused" or None
        if action in ("scale_lr", "next_optimizer", "pick_optimizer", "toggle_clip",
                      "save_checkpoint"):
            return self.run_state.active or None
        if action == "restart":
            return not self._starting or None
        if action == "find_lr":  # the run's engine tests it live; after it, the config
            s = self.run_state
            return ((s.active or s.ended or self.engine is None) and not self._starting) or None
        if action == "lab":
            return self.lab is not None or None
        if action == "fix":
            alert = self.fix_target()
            return (alert is not None and bool(self.fixes_now(alert))) or None
        return True

    def action_toggle_pause(self) -> None:
        """Pause a running run, resume a paused one."""
        self.send(protocol.Resume() if self.run_state.state == "paused" else protocol.Pause())

    def action_step(self) -> None:
        """One training step while paused."""
        self.send(protocol.Step(1))

    def action_scale_lr(self, factor: float) -> None:
        """Multiply the learning rate by ``factor`` from the next step."""
        self.set_hyper("optim.lr", self.current("optim.lr") * factor)

    def action_next_optimizer(self) -> None:
        """Switch to the next optimizer in the registry's order."""
        names = list(OPTIMIZERS)
        current = self.current("optim.name")
        self.set_hyper("optim.name", names[(names.index(current) + 1) % len(names)])

    @work
    async def action_pick_optimizer(self) -> None:
        """Choose the optimizer from a list."""
        state, current = self.run_state, self.current("optim.name")
        choice = await self.push_screen_wait(
            ChoiceScreen("Optimizer (weights kept, optimizer state reset)",
                         list(OPTIMIZERS), current))
        if not choice or choice == current or self.run_replaced(state, f"optimizer {choice}"):
            return
        if self.run_state.active:
            self.set_hyper("optim.name", choice)

    def action_toggle_clip(self) -> None:
        """Gradient-norm clipping off, or back on at the last value used."""
        clip = self.current("reg.clip_norm")
        if clip:
            self.last_clip_norm = clip
        self.set_hyper("reg.clip_norm", 0.0 if clip else self.last_clip_norm)

    def action_save_checkpoint(self) -> None:
        """Save a checkpoint at the next step boundary."""
        self.send(protocol.SaveCheckpoint())

    @work(group="stop")
    async def action_stop_run(self) -> None:
        """Stop the run for good (asks first): it finishes its step, evaluates and writes a
        checkpoint; ``trainlab resume`` can go on from there."""
        state = self.run_state
        question = f"Stop run {state.run_id or ''} at step {state.step:,}? It writes a " \
                   "checkpoint; trainlab resume can continue it later."
        if not await self.push_screen_wait(ConfirmScreen(question)) \
                or self.run_replaced(state, "stop"):
            return
        self.send(protocol.Stop("stopped from the app"))

    def action_take_control(self) -> None:
        """Steer a run another client controls; that one becomes a viewer."""
        self.send(protocol.TakeControl())

    @work(group="restart")
    async def action_restart(self) -> None:
        """A new run with the config panel's edits (asks first while training runs)."""
        if self._starting:  # the button bypasses check_action; one start at a time
            return
        panel = self.query_one(ConfigPanel)
        try:
            config = panel.edited_config()
        except ConfigError as exc:
            self.notify(str(exc), title="Cannot restart", severity="error", timeout=8)
            self.action_view("config")
            return
        if self.run_state.active:
            state = self.run_state
            edits = ", ".join(panel.edits) or "no edits"
            question = f"Stop this run at step {self.run_state.step} and start a new one " \
                       f"({edits})?"
            # The edits were read from the panel of this run: the next one resets it.
            if not await self.push_screen_wait(ConfirmScreen(question)) \
                    or self.run_replaced(state, "restart"):
                return
        if self.lab is not None and not self.lab.started:
            self.lab.begin()  # r before Enter: the lab starts, with the edited first run
        await self._start_run(config)
        self.action_view("train")

    def fix_target(self) -> protocol.AlertRaised | None:
        """The alert ``f`` fixes: the highlighted one in the Alerts view, else the newest."""
        if self.alerts_view_showing():
            return self.query_one(AlertsPanel).selected_alert
        return self.run_state.alerts[0] if self.run_state.alerts else None

    def fixes_now(self, alert: protocol.AlertRaised) -> list[tuple[int, protocol.Fix]]:
        """The fixes of ``alert`` that can apply at this moment, each with its number in
        the alert's card (from 1): a live one while the run trains or is paused, and
        once the run ended as a restart fix (its changes on the next run, through the
        same confirmed restart); a restart one unless a run is starting. None for an
        alert the engine already handled (``RunState.handled``)."""
        s = self.run_state
        if s.handled(alert):
            return []
        now = []
        for number, fix in enumerate(alert.fixes, start=1):
            if not fix.restart and s.ended:
                fix = dataclasses.replace(fix, restart=True)
            if (not self._starting) if fix.restart else s.active:
                now.append((number, fix))
        return now

    @work(group="fix")
    async def action_fix(self) -> None:
        """Apply a fix of the selected alert: the only one, or the one picked from a list.

        A live fix sends one SetHyper per change, noted "fix: <kind>" so the run log and
        the engine's change log say why (after asking, if a key it sets moved since the
        alert); a restart fix asks, then starts a new run from this run's config with
        the changes. Whatever the user answers applies only to the run the alert
        belongs to (``run_replaced``).
        """
        state, alert = self.run_state, self.fix_target()
        fixes = self.fixes_now(alert) if alert is not None else []
        if alert is None or not fixes:  # checked before the key acted; the run moves on
            return
        fix = fixes[0][1]
        if len(fixes) > 1:
            picker = FixPicker(f"Fix {alert_title(alert.kind)}: a number or Enter "
                               "(Escape: none)", fixes)
            choice = await self.push_screen_wait(picker)
            if choice is None or self.run_replaced(state, f"fix: {choice}"):
                return
            fix = fixes[picker.choices.index(choice)][1]
        if fix.restart:
            await self._restart_with_fix(state, alert, fix)
        else:
            await self._live_fix(state, alert, fix)

    async def _live_fix(self, state: RunState, alert: protocol.AlertRaised,
                        fix: protocol.Fix) -> None:
        """Send the fix's changes to ``state``'s run; first ask if a key it sets has
        moved since the alert (its values were frozen then: "halve the lr" from a since
        lowered lr would raise it)."""
        moved = state.changed_since(alert, fix, self.current)
        if moved:
            question = describe_moved(moved, fix.changes)
            if not await self.push_screen_wait(ConfirmScreen(question)) \
                    or self.run_replaced(state, f"fix: {fix.label}"):
                return
        if not self.run_state.active:  # it may have ended while a dialog was open
            self.notify(f"{fix.label}: the run has {self.run_state.state}; a live fix needs "
                        f"a running run.", title="Fix not applied", severity="warning")
            return
        for key, value in fix.changes.items():
            self.set_hyper(key, value, note=f"fix: {alert.kind}")

    async def _restart_with_fix(self, state: RunState, alert: protocol.AlertRaised,
                                fix: protocol.Fix) -> None:
        """Ask, then train ``state``'s config with the fix's changes in a new run."""
        try:
            config = state.config.with_values(fix.changes)
        except ConfigError as exc:
            self.notify(f"The fix for {alert.kind} does not make a valid config: {exc}",
                        title="Cannot apply the fix", severity="error", timeout=8)
            return
        changes = describe_changes(fix.changes)
        if state.active:
            question = f"Restart with {changes}? This run stops at step " \
                       f"{state.step}; a new one starts from its config with " \
                       f"this change ({fix.label})."
        else:
            question = f"Start a new run from this run's config with {changes} " \
                       f"({fix.label})?"
        if moved := state.changed_since(alert, fix, self.current):
            question += f" Note: {describe_moved(moved)}."
        if not await self.push_screen_wait(ConfirmScreen(question)) or self._starting \
                or self.run_replaced(state, f"fix: {fix.label}"):
            return
        await self._start_run(config)
        self.run_state.say("info", f"restarted to apply the fix for {alert.kind}: "
                           f"{fix.label} ({changes})")
        self._refresh({LOG})
        self.action_view("train")

    # --- the doctor, the lr finder and labs -------------------------------------------

    def _react(self, event: Event, *, live: bool) -> None:
        """What the app does about an event beyond showing it (``RunState`` folds that):
        a sent live change is settled once answered; the lr finder's answer goes to its
        screen; a lab's finished run starts the next one; a new alert pops up when
        ``live`` (not the recorded history of a run attached to)."""
        match event:
            case HyperChanged():
                if event.key in self.pending and self.pending[event.key] == event.new:
                    del self.pending[event.key]  # answered: keys build on the run's value
            case CommandRejected():
                if event.command_type == "SetHyper":
                    self.pending.clear()  # the rejection does not say which: the run's
                elif event.command_type == "FindLr":
                    self._lr_failed(f"the engine refused the range test: {event.reason}")
            case LrFound():
                self._lr_found(event)
            case RunStarted():
                self._show_lab_curves()  # by epoch: now the run's steps per epoch are known
            case RunFinished():
                self.pending.clear()
                self._lr_failed("the run ended before the range test answered; press L "
                                "again to test the config instead")
                if self.lab is not None and self.lab.started and event.reason != "failed":
                    self._variant_finished(event)
            case AlertRaised():
                if live:
                    self._notify_alert(event)
            case (MetricsBatch() | EvalDone() | StateChanged() | CheckpointSaved() | Notice()
                  | EngineFailed() | LayerStatsSnapshot() | NonFiniteDetected() | Attached()
                  | ControlChanged()):
                pass  # shown from the run state alone
            case _:
                assert_never(event)

    def checked_config(self) -> tuple[Config, str]:
        """The config the doctor and the headless lr finder test, and which one it is:
        the config panel's edited config when it is valid, else the run's."""
        panel = self.query_one(ConfigPanel)
        try:
            config = panel.edited_config()
        except ConfigError as exc:
            return self.run_state.config, f"the run's config (the edits are invalid: {exc})"
        return config, "the edited config" if panel.edits else "the run's config"

    def action_doctor(self) -> None:
        """The pre-flight checklist on the edited config, in a child process."""
        config, about = self.checked_config()
        runner = self.command_runner
        self.push_screen(DoctorScreen(lambda: runner("doctor", config), about))

    def action_find_lr(self) -> None:
        """The lr range test: by the run's engine while it trains, else on the config.

        A live answer already measured at the run's current step (paused, or its screen
        closed before it came) is shown again rather than tested anew: same weights,
        same curve.
        """
        s = self.run_state
        if s.active and s.lr_found is not None and s.lr_found.step == s.step:
            screen = LrFindScreen(APPLY_NOW, self._live_lr_about(s.lr_found.step))
            screen.show_curve(s.lr_found)  # shown once mounted
            self._open_lr_screen(screen)
            return
        if s.active:
            self.send(protocol.FindLr())
            # The engine copies the weights at its next step boundary, not at this step.
            self._open_lr_screen(LrFindScreen(APPLY_NOW, self._live_lr_about(None)))
            return
        config, about = self.checked_config()
        runner = self.command_runner
        self._open_lr_screen(LrFindScreen(APPLY_AT_RESTART, f"{about}, freshly initialized",
                                          job=lambda: runner("lr-find", config)))

    @staticmethod
    def _live_lr_about(step: int | None) -> str:
        where = "the running run" if step is None else f"the run at step {step:,}"
        return f"a copy of {where} (its weights untouched)"

    def _open_lr_screen(self, screen: LrFindScreen) -> None:
        self.lr_screen = screen
        state = self.run_state

        def closed(lr: float | None) -> None:
            if self.lr_screen is screen:
                self.lr_screen = None
            if lr is not None:
                self._apply_found_lr(state, lr, screen.tested_step)

        self.push_screen(screen, callback=closed)

    @work(group="lr")
    async def _apply_found_lr(self, state: RunState, lr: float, tested_step: int) -> None:
        """Apply the range test's ``lr`` to ``state``'s run; when the test copied weights
        trained to ``tested_step`` > 0, ask first (``trained_weights_note``): its
        suggestion is meant for a new run."""
        what = f"optim.lr = {format_setting(lr)}"
        if self.run_replaced(state, what):
            return
        if tested_step > 0 and state.active:
            question = (f"{trained_weights_note(tested_step)} Set {what} on this run now "
                        "anyway?")
            if not await self.push_screen_wait(ConfirmScreen(question)) \
                    or self.run_replaced(state, what):
                return
        self._apply_lr(lr)

    def _lr_found(self, event: protocol.LrFound) -> None:
        """The engine's range test answered: to its waiting screen; once that screen was
        closed, a notification instead (a screen popping up later would cover whatever
        the user does now); the run state keeps the result for ``L``."""
        screen = self.lr_screen
        if screen is not None and screen.job is None and screen.waiting:
            screen.show_curve(event)
            return
        found = f"suggests lr {event.suggested_lr:.2e}" if event.suggested_lr is not None \
            else "has no suggestion"
        self.notify(f"The range test at step {event.step} {found} ({event.reason}). "
                    f"L shows its curve while the run is at step {event.step}; later L "
                    "tests again.", title="LR finder", timeout=LR_NOTIFY_SECONDS,
                    markup=False)

    def _lr_failed(self, message: str) -> None:
        """No answer will come for the waiting live range test: its screen says why."""
        screen = self.lr_screen
        if screen is not None and screen.job is None and screen.waiting:
            screen.show_error(message)

    def _apply_lr(self, lr: float) -> None:
        """The running run's lr now; after the run, the Config view's for the next one."""
        if self.run_state.active:
            self.set_hyper("optim.lr", lr, note="lr-find")
            return
        try:
            self.query_one(ConfigPanel).set_value("optim.lr", lr)
        except ConfigError as exc:
            self.notify(str(exc), title="Cannot use the suggested lr", severity="error")
            return
        self.notify(f"optim.lr = {lr:.2e} is in the Config view (3); it applies when you "
                    "restart (r).", title="LR finder")

    def action_lab(self) -> None:
        """The lab's screen: explanation, runs, results; Enter starts a lab not started."""
        if self.lab is not None:
            self.push_screen(LabScreen(self.lab), callback=self._lab_screen_closed)

    def _lab_screen_closed(self, start: bool | None) -> None:
        if start and self.lab is not None and not self.lab.started:
            self._train_variant(self.lab.begin())

    @work(group="restart")
    async def _train_variant(self, config: Config) -> None:
        """Train the lab's current variant (a worker: the pump may not wait on itself)."""
        lab = self.lab
        if self._starting or lab is None:
            return
        await self._start_run(config)
        self.notify(f"training {lab.current_name} ({lab.index + 1}/{len(lab.runs)})",
                    title=f"Lab {lab.lab.name}")
        self.action_view("train")

    def _variant_finished(self, event: protocol.RunFinished) -> None:
        """Keep the variant's result and curve; go on with the next variant, if any."""
        lab = self.lab
        assert lab is not None
        started = self.run_state.started
        done = lab.current_name
        lab.record(event, self.run_state.train_loss,
                   started.steps_per_epoch if started else None)
        following = lab.advance()
        if following is None:
            self._show_lab_curves()
            self.notify(f"{done} finished ({event.reason}): every run of the lab is on "
                        "the chart; i shows their results side by side.",
                        title=f"Lab {lab.lab.name} complete", timeout=10)
            return
        self.notify(f"{done} finished ({event.reason}).", title=f"Lab {lab.lab.name}")
        self._train_variant(following[1])

    def _show_lab_curves(self) -> None:
        """The finished variants' curves on the chart, with the current run's."""
        lab = self.lab
        if lab is None or not lab.started:
            return
        started = self.run_state.started
        per_epoch = max(1, started.steps_per_epoch) if started is not None else 1
        self.query_one(LossChart).compare(
            lab.overlays(), train_label=lab.current_name,
            steps_per_epoch=per_epoch if lab.by_epoch else None)

    def action_toggle_log_scale(self) -> None:
        """Log or linear loss axis."""
        chart = self.query_one(LossChart)
        chart.log_y = not chart.log_y

    def action_next_histogram(self) -> None:
        """Cycle the histogram between weights, gradients and activations."""
        self.query_one(HistogramView).next_quantity()

    def action_view(self, view: str) -> None:
        """Show one of the views: train, layers, config, log, alerts."""
        self.query_one(TabbedContent).active = view

    def action_compare(self) -> None:
        """The compare screen: the runs beside this one (its run.dir), this run picked
        with its parent and its forks."""
        run_dir = self.engine.run_dir if self.engine is not None else None
        root = run_dir.parent if run_dir is not None else self.run_state.config.run.dir
        self.push_screen(CompareScreen(root, self.run_state.run_id or None))

    def action_help(self) -> None:
        """The help screen: keys and views."""
        self.push_screen(HelpScreen([(keys, text) for _, keys, text in key_help(self.BINDINGS)]))

    @work(group="quit")
    async def action_quit(self) -> None:
        """Quit. A run in its own process trains on (the app detaches from it); one in
        this process (--inline) would end with it, so that asks first."""
        if self._quitting:  # ctrl+q is a priority binding: it reaches us past a dialog
            return
        self._quitting = True
        try:
            engine = self.engine
            if self.run_state.active and engine is not None and not engine.detachable:
                question = f"Training is {self.run_state.state} (step " \
                           f"{self.run_state.step}) in this process. Stop it and quit?"
                if not await self.push_screen_wait(ConfirmScreen(question)):
                    return
            if self.run_state.active and engine is not None and engine.detachable:
                self.detached_run = self.run_state.run_id
            await self.shutdown()
            self.exit(0)
        finally:
            self._quitting = False

    async def shutdown(self) -> None:
        """Stop the pump and leave the engine: a run in its own process trains on, one in
        a thread stops cooperatively (the step in flight finishes)."""
        engine, self.engine = self.engine, None
        try:
            await self._stop_pump()
        finally:
            if engine is not None:
                await engine.detach()

    async def on_unmount(self) -> None:
        # Any other way out (e.g. the terminal closing): leave the engine the same way.
        await self.shutdown()

    # --- messages from the widgets -------------------------------------------------

    @on(ConfigPanel.HotEdited)
    def _hot_edit(self, event: ConfigPanel.HotEdited) -> None:
        if self.run_state.ended:
            self.notify(f"{event.key} will apply when you restart (r): this run has "
                        f"{self.run_state.state}.", timeout=5)
        else:  # a starting engine reads it right after its first step boundary
            self.set_hyper(event.key, event.value)

    @on(ConfigPanel.RestartRequested)
    async def _restart_requested(self) -> None:
        await self.run_action("restart")

    @on(DataTable.RowHighlighted)
    def _layer_selected(self, event: DataTable.RowHighlighted) -> None:
        views = self.query(HistogramView)  # none once the app is closing
        if views and event.row_key is not None and event.row_key.value is not None:
            views.first().select_layer(str(event.row_key.value))

    @on(OptionList.OptionHighlighted, "#alerts-list")
    def _alert_selected(self) -> None:
        self.refresh_bindings()  # `f` acts on the highlighted alert now

    @on(TabbedContent.TabActivated)
    def _view_shown(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "alerts":  # arrows move through the alerts at once
            self.query_one("#alerts-list", OptionList).focus()
            self._clear_alert_toast()  # it would cover the cards it points to
        self.refresh_bindings()  # `f` acts on the newest alert, or the highlighted one

    # --- the command palette ----------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every enabled action of the app, by name, in the command palette."""
        yield from super().get_system_commands(screen)
        for action, keys, description in key_help(self.BINDINGS):
            if self.check_action(action.partition("(")[0], ()) is not True:
                continue
            title = description[0].upper() + description[1:]
            yield SystemCommand(f"{title} [{keys}]", f"key: {keys}",
                                lambda a=action: self.run_action(a))
