"""The trainlab app: a live run you can see and steer from the keyboard.

The app owns one engine (``tui.bridge``) at a time. A single pump drains every event
waiting in the engine's queue per wake-up, folds the batch into ``RunState`` and then
refreshes only the parts of the screen the batch changed; the charts redraw on their
own timers. Every key sends a protocol command and shows nothing until the engine
acknowledges it (the run log and the status bar show what the engine did).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from engine import protocol
from engine.config import OPTIMIZERS, Config, ConfigError
from tui import state as parts
from tui.bridge import Engine, ProcessEngine
from tui.screens.confirm import ChoiceScreen, ConfirmScreen
from tui.screens.help import HelpScreen
from tui.state import RunState
from tui.widgets.config_panel import ConfigPanel
from tui.widgets.histogram_view import HistogramView
from tui.widgets.layer_table import LayerTable
from tui.widgets.loss_chart import LossChart
from tui.widgets.run_log import RunLog
from tui.widgets.signal_view import SignalView
from tui.widgets.status_bar import StatusBar

WIDE_COLUMNS = 160
"""From this width on, the Train view also shows the signal view and the run log."""
NARROW_COLUMNS = 100
"""Below this width, the Layers view stacks the signal view over the histogram."""
DEFAULT_CLIP_NORM = 1.0
"""What the clipping key turns on when the run has never clipped: max gradient norm 1."""
HISTOGRAM_QUANTITIES = ("weight", "grad", "act")

_log_numbers = itertools.count(1)


def default_engine_factory() -> Engine:
    """A child-process engine whose output goes to a log file of its own."""
    folder = Path(tempfile.gettempdir()) / "trainlab"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return ProcessEngine(folder / f"engine-{stamp}-{os.getpid()}-{next(_log_numbers)}.log")


class TrainlabApp(App[int]):
    """Train ``config`` at once; see and steer the run; restart it with edits."""

    CSS_PATH = "app.tcss"
    TITLE = "trainlab"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "toggle_pause", "Pause"),
        Binding("n", "step", "Step"),
        Binding("plus,equals_sign", "scale_lr(2.0)", "LR×2", key_display="+"),
        Binding("minus", "scale_lr(0.5)", "LR÷2", key_display="-"),
        Binding("o", "next_optimizer", "Optim"),
        Binding("O", "pick_optimizer", "Pick optimizer", show=False),
        Binding("c", "toggle_clip", "Clip"),
        Binding("s", "save_checkpoint", "Save"),
        Binding("r", "restart", "Restart"),
        Binding("l", "toggle_log_scale", "Log y", show=False),
        Binding("h", "next_histogram", "Histogram kind", show=False),
        Binding("1", "view('train')", "Train", show=False),
        Binding("2", "view('layers')", "Layers", show=False),
        Binding("3", "view('config')", "Config", show=False),
        Binding("4", "view('log')", "Log", show=False),
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    ACTION_HELP: ClassVar[dict[str, tuple[str, str]]] = {
        # action -> (keys as the help screen shows them, what it does)
        "toggle_pause": ("space", "pause or resume training"),
        "step": ("n", "train one step (while paused)"),
        "scale_lr(2.0)": ("+", "double the learning rate"),
        "scale_lr(0.5)": ("-", "halve the learning rate (an exact value: Config view)"),
        "next_optimizer": ("o", "next optimizer (weights kept, optimizer state reset)"),
        "pick_optimizer": ("O", "pick the optimizer from a list"),
        "toggle_clip": ("c", "gradient clipping on/off (max norm; set it in Config)"),
        "save_checkpoint": ("s", "save a checkpoint"),
        "restart": ("r", "restart: a new run with the edited config"),
        "toggle_log_scale": ("l", "log scale for the loss chart"),
        "next_histogram": ("h", "histogram of weights / gradients / activations"),
        "view('train')": ("1", "Train view: loss chart and layer table"),
        "view('layers')": ("2", "Layers view: layer table, signal view, histograms"),
        "view('config')": ("3", "Config view (Escape leaves a field)"),
        "view('log')": ("4", "Log view"),
        "help": ("? / F1", "this help"),
        "quit": ("q", "quit (asks first while training runs)"),
    }

    def __init__(self, config: Config, *,
                 engine_factory: Callable[[], Engine] = default_engine_factory) -> None:
        super().__init__()
        self.engine_factory = engine_factory
        self.engine: Engine | None = None
        self.run_state = RunState(config)
        self.histogram_quantity = HISTOGRAM_QUANTITIES[0]
        self.selected_layer: str | None = None
        self.last_clip_norm = config.reg.clip_norm or DEFAULT_CLIP_NORM
        self._pump_task: asyncio.Task[None] | None = None
        self._starting = False
        self._quitting = False
        self.pending: dict[str, Any] = {}
        """Live changes sent but not yet acknowledged: relative keys (+, o, c) pressed
        again before the engine answered build on these, not on the old value."""

    # --- layout ----------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="≋")
        yield Static(id="banner")
        with TabbedContent(initial="train", id="views"):
            with TabPane("Train [1]", id="train"), Horizontal():
                with Vertical(id="train-main"):
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
        yield StatusBar(id="status")
        # The palette (ctrl+p) is on the help screen: at 80 columns the keys need the room.
        yield Footer(compact=True, show_command_palette=False)

    async def on_mount(self) -> None:
        self.sub_title = "starting the engine"
        self._apply_width(self.size.width)
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
                await self.engine.stop()
            self.run_state = RunState(config)
            self.pending.clear()
            self.selected_layer = None
            self.engine = self.engine_factory()
            log_path = getattr(self.engine, "log_path", None)
            if log_path is not None:
                self.run_state.say("info", f"engine output goes to {log_path}")
            chart = self.query_one(LossChart)
            s = self.run_state
            chart.show(s.train_loss, s.val_loss, s.val_accuracy, s.lr_history, s.markers)
            self.query_one(ConfigPanel).reset(config)
            self.query_one(HistogramView).show_histogram(None, step=0)
            try:
                await self.engine.start(config)
            except OSError as exc:  # e.g. no python executable: say so, stay up
                for event in protocol.failure_events("internal",
                                                     f"could not start the engine: {exc}"):
                    s.apply(event)
            self._refresh(set(parts.ALL_PARTS))
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
                    self._settle_pending(event)
                self._refresh(changed)
            except Exception as exc:  # never let one bad event freeze the screen
                self.run_state.say("error", f"the app could not show an event: "
                                   f"{type(exc).__name__}: {exc}")
                self.notify(str(exc), title="Display error", severity="error")

    def _settle_pending(self, event: Any) -> None:
        """Forget a sent live change once the engine has answered it."""
        if isinstance(event, protocol.HyperChanged) and self.pending.get(event.key) == event.new:
            del self.pending[event.key]
        elif isinstance(event, protocol.CommandRejected) and event.command_type == "SetHyper":
            self.pending.clear()  # the rejection does not say which: start from the run's
        elif isinstance(event, protocol.RunFinished):
            self.pending.clear()

    def current(self, key: str) -> Any:
        """A live field's value as the keys see it: what was last sent, else the run's."""
        return self.pending.get(key, self.run_state.config.get(key))

    def set_hyper(self, key: str, value: Any) -> None:
        """Send a live change and remember it until it is acknowledged."""
        self.pending[key] = value
        self.send(protocol.SetHyper(key, value))

    def _refresh(self, changed: set[str]) -> None:
        """Redraw the parts of the screen that ``changed`` names."""
        s = self.run_state
        if parts.CHART in changed:
            self.query_one(LossChart).mark_dirty()
        if parts.LAYERS in changed:
            for table in self.query(LayerTable):
                table.show(s)
            for view in self.query(SignalView):
                view.show(s.snapshot)
            if self.selected_layer is None:
                self.selected_layer = self.query_one("#layers-full", LayerTable).selected_layer
                changed.add(parts.HISTOGRAM)
        if parts.HISTOGRAM in changed:
            self._show_histogram()
        if parts.LOG in changed:
            for log in self.query(RunLog):
                log.show(s.log)
        if parts.CONFIG in changed:
            self.query_one(ConfigPanel).sync(s.config)
        if parts.STATUS in changed:
            self.query_one(StatusBar).show(s)
            if self.sub_title != s.state:  # a new state: other keys make sense now
                self._show_banner()
                self.sub_title = s.state
                self.refresh_bindings()

    def _show_banner(self) -> None:
        banner = self.query_one("#banner", Static)
        s = self.run_state
        if s.state == "failed":
            message = s.failure.message if s.failure else (
                s.nonfinite.message if s.nonfinite else s.reason)
            where = "; the traceback is in the log (4)" if s.failure and s.failure.traceback \
                else "; details in the log (4)"
            banner.update(f"[b]failed[/b]: {message}\nEdit the config (3) and restart "
                          f"(r){where}.")
            banner.display = True
        else:
            banner.display = False

    def _show_histogram(self) -> None:
        layer = self.selected_layer
        entry = self.run_state.histograms.get((layer or "", self.histogram_quantity))
        view = self.query_one(HistogramView)
        if entry is None:
            view.show_histogram(None, step=self.run_state.step)
        else:
            view.show_histogram(entry[1], step=entry[0])

    def send(self, command: Any) -> None:
        """Send a command to the engine; its acknowledgement updates the screen."""
        if self.engine is not None:
            self.engine.send(command)

    # --- actions -----------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Disable (greyed out in the footer) what makes no sense in the run's state."""
        state = self.run_state.state
        if action == "toggle_pause":
            return state in ("running", "paused") or None
        if action == "step":
            return state == "paused" or None
        if action in ("scale_lr", "next_optimizer", "pick_optimizer", "toggle_clip",
                      "save_checkpoint"):
            return self.run_state.active or None
        if action == "restart":
            return not self._starting or None
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
        current = self.current("optim.name")
        choice = await self.push_screen_wait(
            ChoiceScreen("Optimizer (weights kept, optimizer state reset)",
                         list(OPTIMIZERS), current))
        if choice and choice != current and self.run_state.active:
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
            edits = ", ".join(panel.edits) or "no edits"
            question = f"Stop this run at step {self.run_state.step} and start a new one " \
                       f"({edits})?"
            if not await self.push_screen_wait(ConfirmScreen(question)):
                return
        await self._start_run(config)
        self.action_view("train")

    def action_toggle_log_scale(self) -> None:
        """Log or linear loss axis."""
        chart = self.query_one(LossChart)
        chart.log_y = not chart.log_y

    def action_next_histogram(self) -> None:
        """Cycle the histogram between weights, gradients and activations."""
        i = HISTOGRAM_QUANTITIES.index(self.histogram_quantity)
        self.histogram_quantity = HISTOGRAM_QUANTITIES[(i + 1) % len(HISTOGRAM_QUANTITIES)]
        self._show_histogram()

    def action_view(self, view: str) -> None:
        """Show one of the views: train, layers, config, log."""
        self.query_one(TabbedContent).active = view

    def action_help(self) -> None:
        """The help screen: keys and views."""
        self.push_screen(HelpScreen(list(self.ACTION_HELP.values())))

    @work(group="quit")
    async def action_quit(self) -> None:
        """Quit; while training runs, ask first and stop the run cleanly."""
        if self._quitting:  # ctrl+q is a priority binding: it reaches us past a dialog
            return
        self._quitting = True
        try:
            if self.run_state.active:
                question = f"Training is {self.run_state.state} (step " \
                           f"{self.run_state.step}). Stop it and quit?"
                if not await self.push_screen_wait(ConfirmScreen(question)):
                    return
            await self.shutdown()
            self.exit(0)
        finally:
            self._quitting = False

    async def shutdown(self) -> None:
        """Stop the pump and the engine (cooperatively: the step in flight finishes)."""
        engine, self.engine = self.engine, None
        try:
            await self._stop_pump()
        finally:
            if engine is not None:
                await engine.stop()

    async def on_unmount(self) -> None:
        # Any other way out (e.g. the terminal closing): still stop the engine.
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
        if event.row_key is not None and event.row_key.value is not None:
            self.selected_layer = str(event.row_key.value)
            self._show_histogram()

    # --- help and the command palette ----------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every enabled action of the app, by name, in the command palette."""
        yield from super().get_system_commands(screen)
        for action, (keys, description) in self.ACTION_HELP.items():
            if self.check_action(action.partition("(")[0], ()) is not True:
                continue
            title = description[0].upper() + description[1:]
            yield SystemCommand(f"{title} [{keys}]", f"key: {keys}",
                                lambda a=action: self.run_action(a))
