"""The app with a fake engine: key -> command -> acknowledgement -> what the screen shows."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest
from textual.widgets import Input, Markdown, TabbedContent, TabPane

from tests.fake_engine import (
    LAYERS,
    FakeEngines,
    metrics,
    opening,
    record_notifications,
    snapshot,
)
from trainlab.core import protocol
from trainlab.core.config import OPTIMIZER_DEFAULTS, OPTIMIZERS, Config
from trainlab.tui.app import DEFAULT_CLIP_NORM, TrainlabApp
from trainlab.tui.screens.confirm import ConfirmScreen
from trainlab.tui.screens.help import HelpScreen
from trainlab.tui.widgets.config_panel import ConfigPanel, widget_id
from trainlab.tui.widgets.histogram_view import HistogramView
from trainlab.tui.widgets.layer_table import LayerTable
from trainlab.tui.widgets.loss_chart import LossChart
from trainlab.tui.widgets.run_log import RunLog
from trainlab.tui.widgets.status_bar import StatusBar

# Every test here starts the app (Textual's headless driver): 1.5-5 s each on a CPU.
pytestmark = pytest.mark.slow


def make_app(config: Config | None = None, script: list[Any] | None = None, *,
             detachable: bool = True) -> tuple[TrainlabApp, FakeEngines]:
    engines = FakeEngines(script, detachable=detachable)
    return TrainlabApp(config or Config(), engine_factory=engines), engines


async def settle(pilot: Any, times: int = 3) -> None:
    """Let the pump apply what the fake engine queued and the screen refresh."""
    for _ in range(times):
        await pilot.pause()


def status(app: TrainlabApp) -> str:
    return str(app.query_one(StatusBar).render())


def log_text(app: TrainlabApp) -> str:
    return "\n".join(entry.text for entry in app.run_state.log)


async def test_opening_events_reach_every_panel() -> None:
    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert engines.current.config == Config()
        s = app.run_state
        assert s.state == "running" and s.step == 200
        assert len(s.train_loss) == 200 and s.val_loss.last() == (200, pytest.approx(0.4))
        assert status(app).startswith("running") and "step 200/1,000" in status(app)
        table = app.query_one("#layers-train", LayerTable)
        assert [str(k.value) for k in table.rows] == list(LAYERS)
        assert "started: mlp" in log_text(app)


async def test_space_pauses_and_n_steps_only_while_paused() -> None:
    app, engines = make_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("n")  # running: single-step makes no sense, nothing is sent
        assert engines.current.commands == []
        assert app.check_action("step", ()) is None
        await pilot.press("space")
        await settle(pilot)
        assert engines.current.commands == [protocol.Pause()]
        assert app.run_state.state == "paused" and status(app).startswith("paused")
        await pilot.press("n")
        await settle(pilot)
        assert engines.current.commands[-1] == protocol.Step(1)
        assert app.run_state.step == 201 and app.run_state.state == "paused"
        await pilot.press("space")
        await settle(pilot)
        assert engines.current.commands[-1] == protocol.Resume()
        assert status(app).startswith("running")


async def test_lr_keys_double_and_halve_and_mark_the_chart() -> None:
    app, engines = make_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("plus")
        await settle(pilot)
        assert engines.current.commands == [protocol.SetHyper("optim.lr", 2e-3)]
        assert app.run_state.config.optim.lr == pytest.approx(2e-3)
        assert "lr 0.002" in status(app)
        await pilot.press("minus", "minus")
        await settle(pilot)
        sent = [c.value for c in engines.current.commands]
        assert sent == pytest.approx([2e-3, 1e-3, 5e-4])
        assert app.run_state.markers == [(200, "lr=0.002"), (200, "lr=0.001"),
                                         (200, "lr=0.0005")]
        chart = app.query_one(LossChart)
        await pilot.pause(0.3)  # the chart's redraw timer
        assert "lr=0.0005" in chart.plt.build()


async def test_optimizer_key_cycles_in_registry_order_with_a_marker() -> None:
    app, engines = make_app(Config().with_value("optim.name", OPTIMIZERS[-1]))
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("o")
        await settle(pilot)
        assert engines.current.commands == [protocol.SetHyper("optim.name", OPTIMIZERS[0])]
        # From lbfgs at its own lr to the first optimizer's own: the marker says so.
        own_lr = OPTIMIZER_DEFAULTS[OPTIMIZERS[0]].lr
        assert app.run_state.markers[-1] == (200, f"{OPTIMIZERS[0]} lr={own_lr:g}")
        assert OPTIMIZERS[0] in status(app)


async def test_pick_optimizer_from_the_list() -> None:
    app, engines = make_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("O")
        await settle(pilot)
        await pilot.press("down", "enter")  # adam is current; the next one is adamw
        await settle(pilot)
        names = list(OPTIMIZERS)
        expected = names[names.index("adam") + 1]
        assert engines.current.commands == [protocol.SetHyper("optim.name", expected)]


async def test_clip_key_toggles_between_off_and_the_last_value() -> None:
    app, engines = make_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        values = [c.value for c in engines.current.commands]
        assert values == [DEFAULT_CLIP_NORM, 0.0]
        assert "no clip" in status(app)


async def test_save_key_saves_a_checkpoint_and_logs_its_path() -> None:
    app, engines = make_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        notified = record_notifications(app)
        await pilot.press("s")
        await settle(pilot)
        assert engines.current.commands == [protocol.SaveCheckpoint()]
        assert "checkpoint saved: checkpoints/step_200.pt" in log_text(app)
        # Issue 19: the key's answer where the user looks, not only in the log.
        assert notified == ["checkpoint saved (step 200)"]
        engines.current.feed(protocol.CheckpointSaved(300, "checkpoints/step_300.pt"))
        await settle(pilot)
        assert notified == ["checkpoint saved (step 200)"]  # the engine's own: the log's


async def test_a_finished_run_disables_the_run_actions() -> None:
    app, engines = make_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        engines.current.finish()
        await settle(pilot)
        assert status(app).startswith("finished")
        await pilot.press("space", "plus", "o", "c", "s", "n")
        assert engines.current.commands == []
        for action in ("toggle_pause", "scale_lr", "next_optimizer", "toggle_clip",
                       "save_checkpoint", "step"):
            assert app.check_action(action, ()) is None
        assert app.check_action("restart", ()) is True


async def test_rejected_command_is_logged_as_a_warning() -> None:
    app, _engines = make_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        app.send(protocol.SetHyper("optim.lr", -1.0))
        await settle(pilot)
        entry = app.run_state.log[-1]
        assert entry.level == "warning"
        assert "optim.lr" in entry.text and "-1.0" in entry.text


async def test_config_panel_shows_an_inline_error_naming_field_value_and_range() -> None:
    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("3")
        panel = app.query_one(ConfigPanel)
        box = panel.query_one(f"#{widget_id('optim.lr')}")
        box.focus()
        box.value = "-0.5"
        await settle(pilot)
        message = panel.errors["optim.lr"]
        assert "optim.lr" in message and "-0.5" in message and "> 0" in message
        error = panel.query_one("#error-optim-lr")
        assert error.display and "-0.5" in str(error.render())
        await pilot.press("enter")  # an invalid value is never sent
        assert engines.current.commands == []
        box.value = "0.01"
        await settle(pilot)
        assert "optim.lr" not in panel.errors and not error.display
        await pilot.press("enter")
        await settle(pilot)
        assert engines.current.commands == [protocol.SetHyper("optim.lr", 0.01)]
        assert panel.edits == {}  # acknowledged: the run has it now
        assert app.run_state.config.optim.lr == 0.01


async def test_config_panel_has_a_field_for_every_schema_entry() -> None:
    from trainlab.core.config import fields

    app, _ = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        panel = app.query_one(ConfigPanel)
        for info in fields():
            assert panel.query(f"#{widget_id(info.key)}"), info.key


async def test_cold_edit_and_restart_starts_a_new_engine_with_it() -> None:
    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("3")
        panel = app.query_one(ConfigPanel)
        box = panel.query_one(f"#{widget_id('model.depth')}")
        box.value = "5"
        await settle(pilot)
        assert panel.edits == {"model.depth": 5}
        assert "restart to apply: model.depth" in str(panel.query_one("#config-summary")
                                                          .render())
        await pilot.press("escape")  # leave the field: keys act on the app again
        app.action_restart()
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)  # training runs: ask first
        await pilot.press("y")
        await settle(pilot, 6)
        assert len(engines.made) == 2 and engines.made[0].stopped
        assert engines.current.config is not None
        assert engines.current.config.model.depth == 5
        assert app.run_state.config.model.depth == 5 and panel.edits == {}
        assert box.value == "5"  # the form shows the new run's config
        assert len(app.run_state.train_loss) == 200  # the new run's history only


async def test_restart_refuses_an_invalid_edit_and_keeps_the_run() -> None:
    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        panel = app.query_one(ConfigPanel)
        panel.query_one(f"#{widget_id('model.width')}").value = "0"
        await settle(pilot)
        app.action_restart()
        await settle(pilot)
        assert len(engines.made) == 1 and not engines.current.stopped
        assert app.query_one("#views").active == "config"


async def test_engine_failure_shows_banner_and_traceback_and_restart_recovers() -> None:
    trace = "Traceback (most recent call last):\n  File \"my_model.py\", line 3\nValueError: boom"
    script = list(protocol.failure_events("user_code", "user code raised ValueError: boom",
                                          trace))
    app, engines = make_app(script=script)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        banner = app.query_one("#banner")
        assert banner.display and "boom" in str(banner.render())
        assert status(app).startswith("failed")
        (entry,) = [e for e in app.run_state.log if e.level == "error"]
        assert "boom" in entry.text and entry.traceback == trace
        await pilot.press("4")
        await settle(pilot)
        log = app.query_one("#log-full", RunLog)
        assert any("ValueError: boom" in line.text for line in log.lines)
        engines.script = None  # the next engine trains normally
        await pilot.press("r")
        await settle(pilot, 6)
        assert len(engines.made) == 2 and app.run_state.state == "running"
        assert not banner.display


async def test_quit_leaves_a_run_in_its_own_process_training_without_asking() -> None:
    attached = protocol.Attached("run-1", 1, "control", 9)
    app, engines = make_app(script=[*opening(Config()), attached])
    async with app.run_test() as pilot:
        await settle(pilot)
        assert app.run_state.run_id == "run-1"
        await pilot.press("q")
        await settle(pilot)
        assert not isinstance(app.screen, ConfirmScreen)
    assert engines.current.detached and not engines.current.stopped
    assert app.detached_run == "run-1" and app.return_value == 0


async def test_quit_asks_while_a_run_in_this_process_trains_and_ends_it() -> None:
    app, engines = make_app(detachable=False)
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("q")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await settle(pilot)
        assert app.is_running and not engines.current.detached
        await pilot.press("q")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
    assert engines.current.detached  # a thread engine's detach is its stop
    assert app.return_value == 0 and app.detached_run == ""


async def test_quit_after_the_run_ended_does_not_ask() -> None:
    app, engines = make_app(detachable=False)
    async with app.run_test() as pilot:
        await settle(pilot)
        engines.current.finish()
        await settle(pilot)
        await pilot.press("q")
        await settle(pilot)
        assert not isinstance(app.screen, ConfirmScreen)
        assert engines.current.detached and app.return_value == 0


async def test_x_stops_the_run_after_asking() -> None:
    app, engines = make_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("x")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await settle(pilot)
        assert not any(isinstance(c, protocol.Stop) for c in engines.current.commands)
        await pilot.press("x")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        stops = [c for c in engines.current.commands if isinstance(c, protocol.Stop)]
        assert stops == [protocol.Stop("stopped from the app")]
        assert app.run_state.state == "finished"
        assert app.check_action("stop_run", ()) is None  # nothing left to stop


async def test_a_viewer_cannot_steer_until_it_takes_control() -> None:
    attached = protocol.Attached("run-1", 2, "view", 9)
    app, engines = make_app(script=[*opening(Config()), attached])
    async with app.run_test() as pilot:
        await settle(pilot)
        s = app.run_state
        assert s.role == "view" and "view only" in app.sub_title
        for action in ("toggle_pause", "step", "scale_lr", "toggle_clip", "stop_run",
                       "save_checkpoint"):
            assert app.check_action(action, ()) is None, action
        notified = record_notifications(app)
        await pilot.press("space", "plus", "c")
        await settle(pilot)
        assert engines.current.commands == []  # the keys are disabled: nothing sent
        # Issue 19: but not silently: each says why, and which key takes control.
        assert notified == ["view only: press t to take control"] * 3
        await pilot.press("n", "l")  # n: a controller could not step a running run either
        assert len(notified) == 3
        await pilot.press("t")
        await settle(pilot)
        assert engines.current.commands == [protocol.TakeControl()]
        engines.current.feed(protocol.ControlChanged(2, "client 2 took control"))
        await settle(pilot)
        assert s.role == "control" and "view only" not in app.sub_title
        await pilot.press("space")
        await settle(pilot)
        assert engines.current.commands[-1] == protocol.Pause()
        engines.current.feed(protocol.ControlChanged(5, "client 5 took control"))
        await settle(pilot)
        assert s.role == "view" and app.check_action("toggle_pause", ()) is None


async def test_quit_pressed_twice_shows_one_question_that_still_works() -> None:
    app, engines = make_app(detachable=False)
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("ctrl+q", "ctrl+q")
        await settle(pilot)
        assert sum(isinstance(screen, ConfirmScreen) for screen in app.screen_stack) == 1
        await pilot.press("y")
        await settle(pilot)
        assert engines.current.detached and app.return_value == 0


async def test_keys_pressed_faster_than_the_engine_answers_build_on_each_other() -> None:
    app, engines = make_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        engine = engines.current
        engine.send = engine.commands.append  # an engine that has not answered yet
        await pilot.press("plus", "plus", "o", "o", "c", "c")
        names = list(OPTIMIZERS)
        after_adam = names[names.index("adam") + 1]
        assert engine.commands == [
            protocol.SetHyper("optim.lr", 2e-3), protocol.SetHyper("optim.lr", 4e-3),
            protocol.SetHyper("optim.name", after_adam),
            protocol.SetHyper("optim.name", names[names.index(after_adam) + 1]),
            protocol.SetHyper("reg.clip_norm", DEFAULT_CLIP_NORM),
            protocol.SetHyper("reg.clip_norm", 0.0),
        ]


async def test_an_acknowledged_change_updates_the_form_without_sending_it_again() -> None:
    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("o")
        await settle(pilot)
        await pilot.press("o")
        await settle(pilot, 6)
        names = list(OPTIMIZERS)
        first = names[names.index("adam") + 1]
        second = names[names.index(first) + 1]
        assert engines.current.commands == [protocol.SetHyper("optim.name", first),
                                            protocol.SetHyper("optim.name", second)]
        panel = app.query_one(ConfigPanel)
        assert panel.query_one(f"#{widget_id('optim.name')}").value == second
        assert panel.edits == {} and app.run_state.config.optim.name == second


async def test_help_screen_lists_every_key() -> None:
    app, _ = make_app()
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        shown = {keys for keys, _ in app.screen.key_rows}
        bound = {b.key_display or b.key.split(",")[0] for b in TrainlabApp.BINDINGS}
        assert bound - {"?"} <= shown
        tabs = app.query_one(TabbedContent)
        views = [str(tabs.get_tab(pane.id or "").label) for pane in app.query(TabPane)]
        assert len(views) == 5
        help_text = app.screen.query_one(Markdown).source
        for view in views:  # "Alerts [5]" -> every view is explained under "Views"
            assert f"**{view.split(' [')[0]}**" in help_text, view
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


def test_the_key_help_is_written_from_the_bindings() -> None:
    from textual.binding import Binding

    from trainlab.tui.screens.help import key_help

    bindings = [Binding("plus", "grow", "Grow", key_display="+", tooltip="grow it"),
                Binding("equals_sign", "grow", "Grow", key_display="+", show=False),
                Binding("question_mark,f1", "help", "Help", key_display="?", tooltip="help"),
                Binding("z", "secret", "Secret")]  # no tooltip: not in the help
    assert key_help(bindings) == [("grow", "+", "grow it"), ("help", "? / F1", "help")]
    # Every action of the app has its line, and its palette entry says the same.
    actions = {b.action for b in TrainlabApp.BINDINGS if isinstance(b, Binding)}
    assert {action for action, _, _ in key_help(TrainlabApp.BINDINGS)} == actions


async def test_command_palette_offers_only_the_enabled_actions() -> None:
    app, _engines = make_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert any(t.startswith("Pause or resume") for t in titles)
        assert not any(t.startswith("Train one step") for t in titles)
        await pilot.press("space")
        await settle(pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert any(t.startswith("Train one step") for t in titles)


async def test_layer_table_colours_out_of_range_values() -> None:
    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        engines.current.feed(snapshot(220, scales=(1.0, 1e-4, 0.5), dead=0.6))
        await settle(pilot)
        table = app.query_one("#layers-train", LayerTable)
        std_cell = table.get_cell("blocks.1.linear", "std")
        assert "red" in str(std_cell.style)  # std 1e-4: collapsed
        assert "red" in str(table.get_cell("blocks.0.linear", "dead%").style)
        assert "red" not in str(table.get_cell("blocks.0.linear", "std").style)


async def test_histogram_follows_the_selected_layer_and_quantity() -> None:
    app, _engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        view = app.query_one(HistogramView)
        assert view._histogram is not None
        assert (view._histogram.layer, view._histogram.quantity) == (LAYERS[0], "weight")
        table = app.query_one("#layers-full", LayerTable)
        assert app.focused is table  # issue 19: the arrows move its cursor, no Tab first
        await pilot.press("down")
        await settle(pilot)
        assert view._histogram.layer == LAYERS[1]
        await pilot.press("h")
        assert view._histogram.quantity == "grad"
        await pilot.press("h")  # no activation histograms were sent: say so
        assert view._histogram is None


async def test_pump_applies_a_burst_of_events_with_one_refresh_each_wakeup() -> None:
    script = [*opening(Config(), steps=10)]
    app, engines = make_app(script=script)
    async with app.run_test() as pilot:
        await settle(pilot)
        refreshes = 0
        real_refresh = app._refresh

        def counting_refresh(changed: set[str]) -> None:
            nonlocal refreshes
            refreshes += 1
            real_refresh(changed)

        app._refresh = counting_refresh  # type: ignore[method-assign]
        for first in range(11, 5011, 10):  # 500 events queued while the pump sleeps
            engines.current.feed(metrics(first, 10))
        await settle(pilot)
        assert app.run_state.step == 5010 and len(app.run_state.train_loss) == 5010
        assert engines.current.events.empty()
        assert refreshes <= 2


async def test_the_widgets_that_show_the_run_hear_of_each_batch_once() -> None:
    from trainlab.tui.feed import RunStateChanged

    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        subscribed = {type(view).__name__ for view in app.state_feed._views}
        assert subscribed == {"FailureBanner", "AlertStrip", "LossChart", "LayerTable",
                              "SignalView", "RunLog", "HistogramView", "ConfigPanel",
                              "AlertsPanel", "StatusBar"}
        bar = app.query_one(StatusBar)
        heard: list[frozenset[str]] = []
        real_post = bar.post_message

        def post(message: Any) -> bool:
            if isinstance(message, RunStateChanged):
                heard.append(message.changed)
            return real_post(message)

        bar.post_message = post  # type: ignore[method-assign]
        for first in range(201, 301, 10):  # ten events queued while the pump sleeps
            engines.current.feed(metrics(first, 10))
        await settle(pilot)
        assert heard == [frozenset({"chart", "status"})]
        assert "step 300/" in status(app)


async def test_an_event_the_app_cannot_fold_is_reported_and_the_pump_goes_on() -> None:
    app, engines = make_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        # An acknowledgement with a value the schema refuses: folding it raises.
        engines.current.feed(protocol.HyperChanged(200, "optim.lr", 1e-3, -5.0))
        engines.current.feed(metrics(201, 5))
        await settle(pilot)
        assert any("could not show an event" in e.text for e in app.run_state.log)
        engines.current.feed(metrics(206, 5))
        await settle(pilot)
        assert app.run_state.step == 210
        await pilot.press("q")
        await settle(pilot)
    assert engines.current.detached and app.return_value == 0  # the app still quits


async def test_chart_redraws_at_most_five_times_a_second() -> None:
    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        chart = app.query_one(LossChart)
        before, started = chart.draws, time.monotonic()
        for i in range(40):  # a batch every few ms: far faster than the redraw rate
            engines.current.feed(metrics(201 + 10 * i, 10))
            await pilot.pause(0.005)
        elapsed = time.monotonic() - started
        drawn = chart.draws - before
        assert 1 <= drawn <= math.ceil(elapsed * 5) + 1


async def test_resize_to_wide_shows_the_side_column() -> None:
    app, _ = make_app()
    async with app.run_test(size=(200, 60)) as pilot:
        await settle(pilot)
        assert app.query_one("#train-side").display
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        assert not app.screen.has_class("wide")


async def test_fast_typing_in_a_field_keeps_every_key_and_escape_leaves_it() -> None:
    app, _ = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("3")
        box = app.query_one(f"#{widget_id('model.depth')}")
        box.focus()
        await pilot.press("enter", "end", "backspace", "backspace", "4", "5", "backspace",
                          "7")
        await settle(pilot)
        assert box.value == "47"
        panel = app.query_one(ConfigPanel)
        assert panel.edits == {}  # typed, not yet applied
        await pilot.press("enter")
        await settle(pilot)
        assert panel.edits == {"model.depth": 47}
        await pilot.press("escape", "n", "1")  # keys reach the app again
        assert box.value == "47"
        assert app.query_one("#views").active == "train"


async def test_keys_in_a_focused_field_are_the_apps_until_enter_starts_an_edit() -> None:
    # Issue 19: "1" to leave the view made init.std 0.011; "r" after an edit made 64r.
    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("3")
        panel = app.query_one(ConfigPanel)
        std = panel.query_one(f"#{widget_id('init.std')}", Input)
        std.focus()
        await settle(pilot)
        await pilot.press("1")  # a view key: the view changes, the value does not
        await settle(pilot)
        assert app.query_one("#views").active == "train"
        assert std.value == "0.01" and panel.edits == {} and panel.errors == {}
        await pilot.press("3")
        width = panel.query_one(f"#{widget_id('model.width')}", Input)
        width.focus()
        await pilot.press("backspace", "delete", "ctrl+u", "ctrl+k")  # no edit: no change
        await settle(pilot)
        assert width.value == "128" and not width.has_class("-editing")
        doc = str(panel.query_one("#config-doc").render())
        assert "Enter to edit" in doc
        await pilot.press("enter", "6", "4")  # an edit: the keys type (no view change)
        await settle(pilot)
        assert width.has_class("-editing") and "EDITING" in str(
            panel.query_one("#config-doc").render())
        assert app.query_one("#views").active == "config"
        assert width.value == "64" and panel.edits == {}  # not applied yet
        await pilot.press("enter")
        await settle(pilot)
        assert panel.edits == {"model.width": 64} and not width.has_class("-editing")
        await pilot.press("r")  # restart: it asks; nothing typed
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert width.value == "64"
        await pilot.press("n")
        await settle(pilot)
        await pilot.press("enter", "9", "9", "escape")  # an edit cancelled: as before it
        await settle(pilot)
        assert width.value == "64" and panel.edits == {"model.width": 64}
        await pilot.press("enter", "0", "enter")  # invalid: the edit stays open
        await settle(pilot)
        assert width.has_class("-editing") and "model.width" in panel.errors
        await pilot.press("escape")
        await settle(pilot)
        assert width.value == "64" and panel.errors == {}
        assert panel.edits == {"model.width": 64}
        assert engines.current.commands == []  # a cold field: nothing sent


async def test_restart_says_so_at_once_and_a_second_r_starts_no_other_run(
        tmp_path: Any) -> None:
    # Issue 19: r gave no feedback for seconds, and a second r left an orphan run
    # ("stopped at step 0", offered for resume).
    from trainlab.core import catalog

    app, engines = make_app()
    gate = asyncio.Event()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        first = engines.current

        async def slow_stop() -> None:  # a served engine takes seconds to stop
            first.stopped = True
            await gate.wait()

        first.stop = slow_stop  # type: ignore[method-assign]
        await pilot.press("r")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        assert "restarting" in status(app) and "restarting" in app.sub_title
        assert app.check_action("restart", ()) is None
        await pilot.press("r", "r")  # repeats while it is under way: nothing
        await settle(pilot)
        assert not isinstance(app.screen, ConfirmScreen) and len(engines.made) == 1
        engines.script = []  # the next run stays starting (no event yet)
        gate.set()
        await settle(pilot, 6)
        assert len(engines.made) == 2 and app.run_state.state == "starting"
        assert "restarting" not in status(app)
        await pilot.press("r")  # the new run has not started: r waits
        await settle(pilot)
        assert len(engines.made) == 2 and not engines.current.stopped
        # Had it been stopped before its first step, its directory would be removed.
        second = engines.current
        second.run_dir = catalog.new_run(tmp_path, Config())  # type: ignore[assignment]
        engines.script = None
        second.feed(protocol.StateChanged("failed", 0, "refused"))  # r acts again
        await settle(pilot)
        await pilot.press("r")
        await settle(pilot, 6)
        assert len(engines.made) == 3 and second.stopped
        for _ in range(50):
            if not second.run_dir.exists():
                break
            await pilot.pause(0.05)
        assert not second.run_dir.exists()
        assert "removed, nothing to keep" in log_text(app)


async def test_the_app_opened_bare_trains_its_default_experiment_long_enough() -> None:
    # Issue 19: `trainlab` alone finished in ~3 s (20 epochs) before any key was tried.
    from trainlab.cli.main import APP_MAX_EPOCHS, app_config, build_app_parser

    app, engines = make_app(app_config(build_app_parser().parse_args([])))
    async with app.run_test() as pilot:
        await settle(pilot)
        assert engines.current.config is not None
        assert engines.current.config.run.max_epochs == APP_MAX_EPOCHS


async def test_a_late_lr_answer_is_a_notification_and_l_shows_it_at_that_step() -> None:
    from trainlab.tui.screens.lr_find import LrFindScreen

    app, engines = make_app()
    notified = record_notifications(app)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("space")  # paused at step 200: the weights the test copies stay
        await settle(pilot)
        await pilot.press("L")
        await settle(pilot)
        await pilot.press("escape")
        await settle(pilot)
        answer = protocol.LrFound(200, (1e-4, 1e-3, 1e-2), (2.0, 1.0, 3.0), 3e-3, "steepest")
        engines.current.feed(answer)
        await settle(pilot)
        assert not isinstance(app.screen, LrFindScreen)  # nothing pops up over the run
        assert "3.00e-03" in notified[-1] and "L shows" in notified[-1]
        await pilot.press("L")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, LrFindScreen) and screen.curve == answer
        assert "step 200" in screen.about
        assert engines.current.commands.count(protocol.FindLr()) == 1  # no second test
        await pilot.press("escape")
        await pilot.press("n")  # one step on: the answer is about other weights now
        await settle(pilot)
        await pilot.press("L")
        await settle(pilot)
        assert engines.current.commands.count(protocol.FindLr()) == 2
        assert isinstance(app.screen, LrFindScreen) and app.screen.waiting


LONG_LOG = ("The model is overfitting: over the 12 evaluations since step 400 the validation "
            "loss rose from 0.31 to 0.52 while the training loss kept falling; stop early, "
            "add dropout or weight decay, or use more data")


def _shown(log: RunLog) -> list[str]:
    """The log's rendered lines as drawn: each cut to the log's content width."""
    width = log.scrollable_content_region.width
    return [line.text[:width].rstrip() for line in log.lines]


@pytest.mark.parametrize("size", [(160, 48), (200, 60), (120, 40)])
async def test_the_logs_wrap_a_long_line_inside_their_width(size: tuple[int, int]) -> None:
    # The side column's log cut lines at its right edge (RichLog wraps at 78 columns at
    # least, the column is narrower): words were lost. Every log wraps at its own width.
    notice = protocol.Notice(200, "warning", LONG_LOG)
    app, _ = make_app(script=[*opening(Config()), notice])
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        logs = [app.query_one("#log-side", RunLog)] if size[0] >= 160 else []
        if logs:  # the Train view's side column
            assert logs[0].region.width and logs[0].scrollable_content_region.width < 78
            _assert_wrapped(logs[0])
        await pilot.press("4")  # the Log view
        await settle(pilot)
        _assert_wrapped(app.query_one("#log-full", RunLog))


def _assert_wrapped(log: RunLog) -> None:
    width = log.scrollable_content_region.width
    assert LONG_LOG in " ".join(" ".join(_shown(log)).split()), log.id
    assert all(line.cell_length <= width for line in log.lines), log.id


async def test_the_log_wraps_again_when_the_terminal_resizes() -> None:
    notice = protocol.Notice(200, "warning", LONG_LOG)
    app, _ = make_app(script=[*opening(Config()), notice])
    async with app.run_test(size=(200, 60)) as pilot:
        await settle(pilot)
        await pilot.press("4")
        await settle(pilot)
        await pilot.resize_terminal(70, 24)
        await settle(pilot)
        log = app.query_one("#log-full", RunLog)
        assert log.scrollable_content_region.width < 70
        _assert_wrapped(log)


async def test_the_side_log_shows_what_came_while_another_view_was_up() -> None:
    app, engines = make_app()
    async with app.run_test(size=(200, 60)) as pilot:
        await settle(pilot)
        await pilot.press("4")  # the Train view and its side column hidden
        await settle(pilot)
        engines.current.feed(protocol.Notice(200, "warning", LONG_LOG))
        await settle(pilot)
        await pilot.press("1")
        await settle(pilot)
        side = app.query_one("#log-side", RunLog)
        _assert_wrapped(side)
        assert "started: mlp" in " ".join(_shown(side))  # once, in order
        assert sum("started: mlp" in line for line in _shown(side)) == 1


# --- stale text (issue 19) ---------------------------------------------------------------


async def test_the_chart_title_shows_an_lr_changed_while_paused() -> None:
    app, _ = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("space", "plus")  # paused: no step records the new lr
        await settle(pilot)
        await pilot.pause(0.3)  # the chart's redraw timer
        title = app.query_one(LossChart).plt.build().splitlines()[0]
        assert "lr 2.00e-03" in title and "lr 1.00e-03" not in title


async def test_the_stop_dialog_names_no_step_the_run_has_trained_past() -> None:
    app, engines = make_app(script=[*opening(Config()),
                                    protocol.Attached("run-1", 1, "control", 9)])
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("x")
        await settle(pilot)
        engines.current.feed(metrics(201, 300))  # it trains on while asked
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        question = app.screen.question
        assert "Stop run run-1?" in question and "200" not in question


async def test_a_run_that_failed_before_its_first_step_is_not_waiting_for_it() -> None:
    script = list(protocol.failure_events("config", "bad dataset: boom", ""))
    app, _ = make_app(script=script)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.pause(0.3)
        chart = app.query_one(LossChart).plt.build()
        assert "waiting for the first steps" not in chart
        assert "no steps: the run failed before its first" in chart
