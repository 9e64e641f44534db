"""The trainlab app: a live run you can see and steer from the keyboard.

The app owns one engine (``trainlab.tui.bridge``) at a time, through its lifecycle
(``trainlab.tui.controllers.engine``). Its pump hands over every event waiting per
wake-up; the app folds the batch into ``RunState``, routes each event to the flows that
react to it (``trainlab.tui.controllers``: fixes, the lr finder, labs), then publishes
one ``RunStateChanged`` naming the parts the batch changed (``trainlab.tui.feed``): each
widget redraws its own part, and the charts on their own timers. Every key sends a
protocol command and shows nothing until the engine acknowledges it (the run log and
the status bar show what the engine did). The help screen and the command palette are
written from ``BINDINGS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, assert_never

from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, OptionList, TabbedContent, TabPane

from trainlab.core import protocol
from trainlab.core.config import OPTIMIZERS, Config, ConfigError
from trainlab.core.protocol import (
    Event,
)
from trainlab.tui.bridge import Engine, ServedEngine
from trainlab.tui.controllers.engine import EngineLifecycle
from trainlab.tui.controllers.fixes import Fixes
from trainlab.tui.controllers.labs import Labs
from trainlab.tui.controllers.lr_finder import LrFinder
from trainlab.tui.controllers.sweeps import Sweeps
from trainlab.tui.feed import StateFeed
from trainlab.tui.headless import CommandRunner, run_engine_command
from trainlab.tui.lab_session import LabSession
from trainlab.tui.screens.compare import CompareScreen
from trainlab.tui.screens.confirm import ChoiceScreen
from trainlab.tui.screens.doctor import DoctorScreen
from trainlab.tui.screens.help import HelpScreen, key_help
from trainlab.tui.state import ALERTS, STATUS, RunState
from trainlab.tui.sweep_session import SweepSession
from trainlab.tui.widgets.alerts_panel import AlertsPanel, AlertStrip
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
                tooltip="Config view (Enter edits a field, Enter applies, Escape cancels)"),
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
                 lab: LabSession | None = None,
                 sweep: SweepSession | None = None) -> None:
        super().__init__()
        self.command_runner = command_runner
        """Runs the engine's headless doctor and lr-find on a config (tests use a fake)."""
        self.run_state = RunState(config)
        self.state_feed = StateFeed()
        """The widgets that show the run subscribe here (``trainlab.tui.feed``)."""
        self.lifecycle = EngineLifecycle(self, engine_factory)
        self.fixes = Fixes(self)
        self.lr_finder = LrFinder(self)
        self.labs = Labs(self, lab)
        self.sweeps = Sweeps(self, sweep)
        self.last_clip_norm = config.reg.clip_norm or DEFAULT_CLIP_NORM

    @property
    def engine(self) -> Engine | None:
        """The engine of the run shown (None before the first start and after quitting)."""
        return self.lifecycle.engine

    @property
    def detached_run(self) -> str:
        """The run the app left training when it quit (the command line says so)."""
        return self.lifecycle.detached_run

    # --- layout ----------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="≋")
        yield FailureBanner(id="banner")
        with TabbedContent(initial="train", id="views"):
            with TabPane("Train [1]", id="train"), Horizontal():
                with Vertical(id="train-main"):
                    yield AlertStrip(self.fixes.fixes_now, id="alert-strip")
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
        if self.labs.waiting:  # its screen first; Enter starts it
            self.labs.show_waiting()
            return
        if self.sweeps.session is not None:  # its leaderboard first; Enter shows a trial
            self.sweeps.show_waiting()
            return
        await self.lifecycle.start(self.run_state.config)

    def on_resize(self, event: Any) -> None:
        self._apply_width(event.size.width)

    def _apply_width(self, width: int) -> None:
        self.screen.set_class(width >= WIDE_COLUMNS, "wide")
        self.screen.set_class(width < NARROW_COLUMNS, "narrow")

    async def on_unmount(self) -> None:
        # Any other way out (e.g. the terminal closing): leave the engine the same way.
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop the pump and leave the engine (``EngineLifecycle.shutdown``)."""
        await self.lifecycle.shutdown()

    # --- events in ------------------------------------------------------------------

    def fold(self, batch: list[Event], engine: Engine) -> None:
        """Fold ``batch`` into the run state, react to each event, then tell the widgets
        once what the whole batch changed. An attached ``engine`` replays its run's
        history first: its events are live only after its ``Attached``."""
        changed: set[str] = set()
        for event in batch:
            changed |= self.run_state.apply(event)
            self._react(event, live=not engine.replays_history or bool(self.run_state.client))
        self._refresh(changed)

    def _react(self, event: Event, *, live: bool) -> None:
        """What the app does about an event beyond showing it (``RunState`` folds that):
        a sent live change is settled once answered; the lr finder's answer goes to its
        screen; a lab's finished run starts the next one; a new alert and the range
        test's answer pop up when ``live`` (not the recorded history of a run attached
        to)."""
        match event:
            case protocol.HyperChanged():
                self.lifecycle.acknowledged(event)
            case protocol.CommandRejected():
                if event.command_type == "SetHyper":
                    self.lifecycle.forget_pending()
                elif event.command_type == "SaveCheckpoint" and self.lifecycle.saves_asked:
                    self.lifecycle.saves_asked -= 1
                    self.notify(f"checkpoint not saved: {event.reason}", severity="warning",
                                timeout=5)
                elif event.command_type == "FindLr":
                    self.lr_finder.failed(f"the engine refused the range test: {event.reason}")
            case protocol.LrFound():
                if live:  # a recorded answer is in the run state (L shows it), not news
                    self.lr_finder.found(event)
            case protocol.RunStarted():
                self.labs.show_curves()  # by epoch: now the run's steps per epoch are known
            case protocol.RunFinished():
                self.lifecycle.forget_pending()
                self.lr_finder.failed("the run ended before the range test answered; press "
                                      "L again to test the config instead")
                self.labs.run_finished(event)
            case protocol.AlertRaised():
                if live:
                    self.fixes.notify(event)
            case protocol.CheckpointSaved():
                if self.lifecycle.saves_asked:  # the answer to s (the log has every save)
                    self.lifecycle.saves_asked -= 1
                    self.notify(f"checkpoint saved (step {event.step:,})", timeout=4)
            case (protocol.MetricsBatch() | protocol.EvalDone() | protocol.StateChanged()
                  | protocol.Notice() | protocol.EngineFailed()
                  | protocol.LayerStatsSnapshot() | protocol.NonFiniteDetected()
                  | protocol.Attached() | protocol.ControlChanged()):
                pass  # shown from the run state alone
            case _:
                assert_never(event)

    def refresh_parts(self, changed: set[str]) -> None:
        """Tell the widgets that ``changed`` parts of the run state changed."""
        self._refresh(changed)

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

    # --- commands out -----------------------------------------------------------------

    def send(self, command: protocol.Command | protocol.SessionCommand) -> None:
        """Send a command to the engine; its acknowledgement updates the screen."""
        self.lifecycle.send(command)

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

    def checked_config(self) -> tuple[Config, str]:
        """The config the doctor and the headless lr finder test, and which one it is:
        the config panel's edited config when it is valid, else the run's."""
        panel = self.query_one(ConfigPanel)
        try:
            config = panel.edited_config()
        except ConfigError as exc:
            return self.run_state.config, f"the run's config (the edits are invalid: {exc})"
        return config, "the edited config" if panel.edits else "the run's config"

    def fixes_now(self, alert: protocol.AlertRaised) -> list[tuple[int, protocol.Fix]]:
        """The fixes of ``alert`` that can apply now (``Fixes.fixes_now``)."""
        return self.fixes.fixes_now(alert)

    # --- actions -----------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Disable (greyed out in the footer) what makes no sense in the run's state."""
        if action in STEERING_ACTIONS and self.run_state.role == "view":
            return None  # another client steers this run (on_key says so)
        return self._possible(action)

    def _possible(self, action: str) -> bool | None:
        """``check_action`` but for the role: what a controlling app could do now."""
        s = self.run_state
        if action == "take_control":
            return (s.role == "view" and s.active) or None
        if action == "stop_run":
            return s.active or None
        if action == "toggle_pause":
            return s.state in ("running", "paused") or None
        if action == "step":
            return s.state == "paused" or None
        if action in ("scale_lr", "next_optimizer", "pick_optimizer", "toggle_clip",
                      "save_checkpoint"):
            return s.active or None
        if action == "restart":
            return not self.lifecycle.restart_under_way or None
        if action == "find_lr":
            return self.lr_finder.can_find() or None
        if action == "lab":
            return (self.labs.lab is not None or self.sweeps.session is not None) or None
        if action == "fix":
            return self.fixes.can_fix() or None
        return True

    def on_key(self, event: events.Key) -> None:
        """A viewer's steering key is disabled; say why and which key takes control,
        rather than nothing (a key an Input or a binding took never comes here)."""
        s = self.run_state
        if s.role != "view" or not s.active or len(self.screen_stack) > 1:
            return
        action = self._bound_action(event.key)
        if action in STEERING_ACTIONS and self._possible(action) is True:
            take = next(b.key_display or b.key for b in self._own_bindings()
                        if b.action == "take_control")
            self.notify(f"view only: press {take} to take control", severity="warning",
                        timeout=4)

    def _own_bindings(self) -> list[Binding]:
        """The app's key bindings (``BINDINGS``)."""
        return [b for b in self.BINDINGS if isinstance(b, Binding)]

    def _bound_action(self, key: str) -> str | None:
        """The action (without its arguments) that ``key`` is bound to, if any."""
        for binding in self._own_bindings():
            if key in (k.strip() for k in binding.key.split(",")):
                return binding.action.partition("(")[0]
        return None

    def action_toggle_pause(self) -> None:
        """Pause a running run, resume a paused one."""
        self.send(protocol.Resume() if self.run_state.state == "paused" else protocol.Pause())

    def action_step(self) -> None:
        """One training step while paused."""
        self.send(protocol.Step(1))

    def action_scale_lr(self, factor: float) -> None:
        """Multiply the learning rate by ``factor`` from the next step."""
        lifecycle = self.lifecycle
        lifecycle.set_hyper("optim.lr", lifecycle.current("optim.lr") * factor)

    def action_next_optimizer(self) -> None:
        """Switch to the next optimizer in the registry's order."""
        names = list(OPTIMIZERS)
        current = self.lifecycle.current("optim.name")
        self.lifecycle.set_hyper("optim.name", names[(names.index(current) + 1) % len(names)])

    @work
    async def action_pick_optimizer(self) -> None:
        """Choose the optimizer from a list."""
        state, current = self.run_state, self.lifecycle.current("optim.name")
        choice = await self.push_screen_wait(
            ChoiceScreen("Optimizer (weights kept, optimizer state reset)",
                         list(OPTIMIZERS), current))
        if not choice or choice == current or self.run_replaced(state, f"optimizer {choice}"):
            return
        if self.run_state.active:
            self.lifecycle.set_hyper("optim.name", choice)

    def action_toggle_clip(self) -> None:
        """Gradient-norm clipping off, or back on at the last value used."""
        clip = self.lifecycle.current("reg.clip_norm")
        if clip:
            self.last_clip_norm = clip
        self.lifecycle.set_hyper("reg.clip_norm", 0.0 if clip else self.last_clip_norm)

    def action_save_checkpoint(self) -> None:
        """Save a checkpoint at the next step boundary (a notification says when)."""
        self.lifecycle.saves_asked += 1
        self.send(protocol.SaveCheckpoint())

    def action_stop_run(self) -> None:
        """Stop the run for good, after asking (``EngineLifecycle.stop_run``)."""
        self.lifecycle.stop_run()

    def action_take_control(self) -> None:
        """Steer a run another client controls; that one becomes a viewer."""
        self.send(protocol.TakeControl())

    def action_restart(self) -> None:
        """A new run with the config panel's edits (``EngineLifecycle.restart``)."""
        self.lifecycle.restart()

    def action_fix(self) -> None:
        """Apply a fix of the selected alert (``Fixes.fix``)."""
        self.fixes.fix()

    def action_doctor(self) -> None:
        """The pre-flight checklist on the edited config, in a child process."""
        config, about = self.checked_config()
        runner = self.command_runner
        self.push_screen(DoctorScreen(lambda: runner("doctor", config), about))

    def action_find_lr(self) -> None:
        """The lr range test (``LrFinder.find``)."""
        self.lr_finder.find()

    def action_lab(self) -> None:
        """The lab's screen (``Labs.open``), or the sweep's (``Sweeps.open``)."""
        if self.sweeps.session is not None:
            self.sweeps.open()
        else:
            self.labs.open()

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

    def action_quit(self) -> None:  # type: ignore[override]  # a worker: it may ask first
        """Quit (``EngineLifecycle.quit``): a run in its own process trains on."""
        self.lifecycle.quit()

    # --- messages from the widgets -------------------------------------------------

    @on(ConfigPanel.HotEdited)
    def _hot_edit(self, event: ConfigPanel.HotEdited) -> None:
        if self.run_state.ended:
            self.notify(f"{event.key} will apply when you restart (r): this run has "
                        f"{self.run_state.state}.", timeout=5)
        else:  # a starting engine reads it right after its first step boundary
            self.lifecycle.set_hyper(event.key, event.value)

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
            self.fixes.clear_toast()  # it would cover the cards it points to
        elif event.pane.id == "layers":  # arrows move through the layers at once
            self.query_one("#layers-full", LayerTable).focus()
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
