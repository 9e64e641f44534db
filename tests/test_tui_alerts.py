"""The doctor's alerts in the app: folded into the run state, shown in the strip, the
Alerts view and the layer table, and fixed with one key (live or by a restart)."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import pytest
from rich.console import Console
from rich.style import Style

from tests.fake_engine import LAYERS, FakeEngines, opening, snapshot
from trainlab.core import protocol
from trainlab.core.config import Config
from trainlab.tui.app import TrainlabApp
from trainlab.tui.controllers.fixes import ALERT_NOTIFY_SECONDS
from trainlab.tui.screens.confirm import ChoiceScreen, ConfirmScreen
from trainlab.tui.state import ALERTS, LOG, RunState, alert_title
from trainlab.tui.state import LAYERS as LAYERS_PART
from trainlab.tui.widgets.alerts_panel import (
    SEVERITY_MARK,
    AlertsPanel,
    AlertStrip,
    alert_card,
    describe_changes,
    format_value,
)
from trainlab.tui.widgets.layer_table import ALERT_ROW_BACKGROUND, LayerTable

HALVE_LR = protocol.Fix("halve the learning rate now", {"optim.lr": 5e-4})
CLIP = protocol.Fix("clip gradients at norm 1 now", {"reg.clip_norm": 1.0})
KAIMING = protocol.Fix("Kaiming init and LeakyReLU, restart",
                       {"init.scheme": "kaiming_normal", "model.activation": "leaky_relu"},
                       restart=True)


def alert(kind: str = "saturation", severity: str = "critical",
          layers: tuple[str, ...] = (LAYERS[0],),
          fixes: tuple[protocol.Fix, ...] = (KAIMING,), step: int = 200,
          ) -> protocol.AlertRaised:
    return protocol.AlertRaised(
        step, kind, severity, layers,
        {"saturated_frac": (0.93456, 0.5), "threshold": 0.5, "units": 1000},
        "Most tanh units are pinned at -1/+1 [where the slope is ~0].", fixes)


def make_app() -> tuple[TrainlabApp, FakeEngines]:
    engines = FakeEngines()
    return TrainlabApp(Config(), engine_factory=engines), engines


async def settle(pilot: Any, times: int = 4) -> None:
    """Let the pump apply what the fake engine queued and the screen refresh."""
    for _ in range(times):
        await pilot.pause()


def rendered(renderable: Any, width: int = 100) -> str:
    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(renderable)
    return console.export_text()


def log_text(app: TrainlabApp) -> str:
    return "\n".join(entry.text for entry in app.run_state.log)


# --- the run state ---------------------------------------------------------------------


def test_alerts_fold_newest_first_and_each_layer_keeps_its_worst_severity() -> None:
    state = RunState(Config())
    first = alert("saturation", "warning", (LAYERS[0], LAYERS[1]))
    second = alert("vanishing_gradients", "critical", (LAYERS[1],))
    third = alert("update_ratio", "info", (LAYERS[0], LAYERS[2]))
    for event in (first, second, third):
        assert state.apply(event) == {ALERTS, LAYERS_PART, LOG}
    assert state.alerts == [third, second, first]
    # warning then info on layer 0; warning then critical on layer 1; info only on head
    assert state.alerted_layers == {LAYERS[0]: "warning", LAYERS[1]: "critical",
                                    LAYERS[2]: "info"}


def test_each_alert_is_a_log_line_leveled_by_severity_with_message_and_fixes() -> None:
    state = RunState(Config())
    for severity in ("info", "warning", "critical"):
        state.apply(alert(severity=severity, fixes=(HALVE_LR, CLIP), step=42))
    assert [e.level for e in state.log] == ["info", "warning", "error"]
    entry = state.log[-1]
    assert entry.step == 42
    assert alert_title("saturation") in entry.text and LAYERS[0] in entry.text
    assert "pinned at -1/+1" in entry.text
    assert "1) halve the learning rate now" in entry.text
    assert "2) clip gradients at norm 1 now" in entry.text


def test_an_alert_with_an_unknown_severity_is_refused_naming_it() -> None:
    state = RunState(Config())
    with pytest.raises(ValueError, match=r"AlertRaised.severity 'fatal'.*critical"):
        state.apply(alert(severity="fatal"))
    assert state.alerts == [] and state.alerted_layers == {} and state.log == []


def test_evidence_and_changes_are_formatted_compactly() -> None:
    assert format_value(0.93456) == format(0.93456, ".3g")
    assert format_value(1000) == "1000"  # a count stays whole, not 1e+03
    assert format_value((0.93456, 1e-7)) == f"[{0.93456:.3g}, {1e-7:.3g}]"
    assert describe_changes(KAIMING.changes) == \
        "init.scheme = kaiming_normal, model.activation = leaky_relu"
    card = rendered(alert_card(alert(fixes=(HALVE_LR, KAIMING))))
    assert "saturated_frac [0.935, 0.5]" in card and "units 1000" in card
    assert "1. halve the learning rate now (now: optim.lr = 0.0005)" in card
    assert "2. Kaiming init and LeakyReLU, restart (restart: init.scheme" in card


# --- the app -----------------------------------------------------------------------------


def toasts(app: TrainlabApp) -> list[tuple[str, str, str, float]]:
    """The notifications on screen as (title, message, severity, timeout)."""
    return [(n.title, n.message, n.severity, n.timeout) for n in app._notifications]


@pytest.mark.slow
async def test_an_attached_run_pops_up_its_live_alerts_not_its_recorded_ones() -> None:
    # An attached engine replays the run's history first, then Attached, then live events.
    engines = FakeEngines([*opening(Config()), alert("saturation"),
                           protocol.Attached("run-1", 1, "control", 7)], replays_history=True)
    app = TrainlabApp(Config(), engine_factory=engines)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.run_state.alerts and app.query_one(AlertStrip).display  # it is shown
        assert toasts(app) == []  # but the past does not pop up
        engines.current.feed(alert("dead_units", "warning"))
        await settle(pilot)
        assert [t[0] for t in toasts(app)] == [f"warning: {alert_title('dead_units')}"]


@pytest.mark.slow
async def test_a_new_alert_shows_in_the_strip_the_alerts_view_and_a_notification() -> None:
    app, engines = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        strip = app.query_one(AlertStrip)
        assert not strip.display  # nothing to show yet
        raised = alert(fixes=(HALVE_LR, CLIP))
        engines.current.feed(raised)
        await settle(pilot)
        assert strip.display and strip.has_class("-critical")
        text = str(strip.render())
        assert alert_title("saturation") in text and LAYERS[0] in text
        assert "f fix: pick one of 2 (1, 2)" in text
        # Short: severity and kind as the title, one line of where and which keys.
        assert toasts(app) == [(f"critical: {alert_title('saturation')}",
                                f"{LAYERS[0]} · f fix · 5 details", "error",
                                ALERT_NOTIFY_SECONDS)]
        assert ALERT_NOTIFY_SECONDS <= 5
        engines.current.feed(alert("plateau", "info", (), fixes=()))
        await settle(pilot)
        assert len(toasts(app)) == 1  # an info alert waits in the view, no pop-up
        app.notify("something else")  # another kind of notification is left alone
        engines.current.feed(alert("dead_units", "warning", (LAYERS[0], LAYERS[1]), fixes=()))
        await settle(pilot)
        shown = toasts(app)  # the newer alert replaces the older one's pop-up
        assert [t[:3] for t in shown if t[0] != ""] == [
            (f"warning: {alert_title('dead_units')}", f"{LAYERS[0]} +1 · 5 details",
             "warning")]
        assert len(shown) == 2
        await pilot.press("5")
        await settle(pilot)
        assert app.query_one("#views").active == "alerts"
        assert [t[0] for t in toasts(app)] == [""]  # the alert pop-up left with the view
        engines.current.feed(alert("exploding_gradients", fixes=(HALVE_LR,)))
        await settle(pilot)
        assert [t[0] for t in toasts(app)] == [""]  # none over the cards themselves
        panel = app.query_one(AlertsPanel)
        assert panel.query_one("#alerts-list").option_count == 4
        assert panel.selected_alert is app.run_state.alerts[0]  # the newest, highlighted
        await pilot.press("down", "down", "down")
        assert panel.selected_alert is raised


@pytest.mark.slow
async def test_the_alerted_layer_is_marked_and_tinted_in_both_layer_tables() -> None:
    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        engines.current.feed(alert(severity="warning", layers=(LAYERS[1],)))
        await settle(pilot)
        for table_id in ("#layers-train", "#layers-full"):
            table = app.query_one(table_id, LayerTable)
            name = table.get_cell(LAYERS[1], "layer")
            assert name.plain == f"{SEVERITY_MARK['warning']} {LAYERS[1]}"
            tint = Style.parse(ALERT_ROW_BACKGROUND["warning"]).bgcolor
            for column in ("layer", "std", "grad"):
                assert Style.parse(str(table.get_cell(LAYERS[1], column).style)).bgcolor \
                    == tint
            other = table.get_cell(LAYERS[0], "layer")
            assert other.plain == f"  {LAYERS[0]}"  # aligned, not marked
            assert Style.parse(str(other.style)).bgcolor is None
        engines.current.feed(snapshot(300))  # fresh figures keep the highlight
        await settle(pilot)
        table = app.query_one("#layers-train", LayerTable)
        assert table.get_cell(LAYERS[1], "layer").plain.startswith(SEVERITY_MARK["warning"])


@pytest.mark.slow
async def test_f_applies_a_live_fix_noted_with_the_alert_kind() -> None:
    app, engines = make_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        engines.current.feed(alert("exploding_gradients", fixes=(HALVE_LR,)))
        await settle(pilot)
        await pilot.press("f")
        await settle(pilot)
        assert engines.current.commands == [
            protocol.SetHyper("optim.lr", 5e-4, "fix: exploding_gradients")]
        assert app.run_state.config.optim.lr == 5e-4
        assert app.run_state.markers[-1] == (200, "lr=0.0005")
        assert "optim.lr: 0.001 -> 0.0005 (fix: exploding_gradients)" in log_text(app)


@pytest.mark.slow
async def test_the_strip_says_a_fix_was_applied_until_the_next_alert() -> None:
    # Issue 19: after f the strip still offered the key, as if nothing had happened.
    app, engines = make_app()
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        strip = app.query_one(AlertStrip)
        engines.current.feed(alert("exploding_gradients", fixes=(HALVE_LR, CLIP)))
        await settle(pilot)
        assert "press 5 for details" in str(strip.render())
        await pilot.press("f", "2")  # the picker: clip gradients
        await settle(pilot)
        text = str(strip.render())
        assert "fix applied: reg.clip_norm = 1.0 (" \
               f"{alert_title('exploding_gradients')})" in text, text
        assert "f fix" not in text
        engines.current.feed(alert("dead_units", "warning", fixes=(HALVE_LR,)))
        await settle(pilot)
        text = str(strip.render())
        assert "fix applied" not in text and "f fix: halve the learning rate" in text
        assert "press 5 for details, 2 in all" in text


@pytest.mark.slow
async def test_with_two_fixes_f_offers_a_list_and_sends_the_one_picked() -> None:
    app, engines = make_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        engines.current.feed(alert("exploding_gradients", fixes=(HALVE_LR, CLIP)))
        await settle(pilot)
        await pilot.press("f")
        await settle(pilot)
        assert isinstance(app.screen, ChoiceScreen)
        await pilot.press("escape")  # none picked: nothing sent
        await settle(pilot)
        assert engines.current.commands == []
        await pilot.press("f")
        await settle(pilot)
        await pilot.press("down", "enter")
        await settle(pilot)
        assert engines.current.commands == [
            protocol.SetHyper("reg.clip_norm", 1.0, "fix: exploding_gradients")]


@pytest.mark.slow
async def test_a_restart_fix_asks_then_trains_this_runs_config_with_the_changes() -> None:
    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("plus")  # a live change before the fix: the new run keeps it
        await settle(pilot)
        engines.current.feed(alert(fixes=(KAIMING,)))
        await settle(pilot)
        await pilot.press("f")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        question = app.screen.question
        assert "init.scheme = kaiming_normal, model.activation = leaky_relu" in question
        assert "stops at step 200" in question
        await pilot.press("n")
        await settle(pilot)
        assert len(engines.made) == 1 and not engines.current.stopped
        await pilot.press("f", "y")
        await settle(pilot, 8)
        assert len(engines.made) == 2 and engines.made[0].stopped
        expected = Config().with_values({"optim.lr": 2e-3, "init.scheme": "kaiming_normal",
                                         "model.activation": "leaky_relu"})
        assert engines.current.config == expected
        assert "restarted to apply the fix for saturation" in log_text(app)
        assert app.run_state.alerts == [] and not app.query_one(AlertStrip).display


def test_an_alert_keeps_the_runs_values_of_its_fix_keys_from_when_it_was_raised() -> None:
    state = RunState(Config())
    raised = alert(fixes=(HALVE_LR, CLIP))
    state.apply(raised)
    assert state.values_at_alert[id(raised)] == {"optim.lr": Config().optim.lr,
                                                 "reg.clip_norm": Config().reg.clip_norm}
    state.apply(protocol.HyperChanged(210, "optim.lr", Config().optim.lr, 1e-4))
    assert state.changed_since(raised, HALVE_LR, state.config.get) == {
        "optim.lr": (Config().optim.lr, 1e-4)}
    assert state.changed_since(raised, CLIP, state.config.get) == {}


@pytest.mark.slow
async def test_a_live_fix_whose_key_moved_since_the_alert_asks_first() -> None:
    app, engines = make_app()
    async with app.run_test() as pilot:
        await settle(pilot)
        engines.current.feed(alert("exploding_gradients", fixes=(HALVE_LR,)))
        await settle(pilot)
        await pilot.press("minus", "minus")  # 1e-3 -> 2.5e-4: "halve" to 5e-4 would raise it
        await settle(pilot)
        lowered = Config().optim.lr / 4
        await pilot.press("f")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert app.screen.question == (
            f"optim.lr changed since this alert (was {Config().optim.lr:.4g}, now "
            f"{lowered:.4g}); set it to {5e-4:.4g} anyway?")
        await pilot.press("n")
        await settle(pilot)
        assert app.run_state.config.optim.lr == lowered
        await pilot.press("f")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert engines.current.commands[-1] == \
            protocol.SetHyper("optim.lr", 5e-4, "fix: exploding_gradients")


@pytest.mark.slow
async def test_f_is_disabled_without_an_alert_and_offers_live_fixes_as_restarts_after_the_run(
        ) -> None:
    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.check_action("fix", ()) is None
        await pilot.press("f")
        assert engines.current.commands == []
        engines.current.feed(alert(fixes=(HALVE_LR,)))
        await settle(pilot)
        assert app.check_action("fix", ()) is True
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert any(t.startswith("Apply the suggested fix") for t in titles)
        engines.current.finish()  # the live fix now applies to the next run
        await settle(pilot)
        assert app.check_action("fix", ()) is True
        assert "f fix: halve the learning rate now (restart: optim.lr = 0.0005)" in \
            str(app.query_one(AlertStrip).render())
        await pilot.press("f")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert app.screen.question.startswith("Start a new run from this run's config with "
                                              "optim.lr = 0.0005")
        await pilot.press("y")
        await settle(pilot, 8)
        assert engines.made[0].commands == []  # nothing sent to the ended run
        assert len(engines.made) == 2 and engines.current.config == Config().with_value(
            "optim.lr", 5e-4)


@pytest.mark.slow
async def test_after_the_run_the_picker_numbers_fixes_as_the_card_and_takes_number_keys(
        ) -> None:
    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        engines.current.feed(alert(fixes=(HALVE_LR, CLIP, KAIMING)))
        await settle(pilot)
        engines.current.finish()
        await settle(pilot)
        assert "f fix: pick one of 3 (1, 2, 3)" in str(app.query_one(AlertStrip).render())
        await pilot.press("f")
        await settle(pilot)
        assert isinstance(app.screen, ChoiceScreen)
        card = rendered(alert_card(app.run_state.alerts[0]))
        for choice in app.screen.choices:  # "2. clip ..." is fix 2 of the card too
            number, _, label = choice.partition(". ")
            assert f"{number}. {label.split(' (')[0]}" in card
        await pilot.press("2")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen) and "reg.clip_norm = 1.0" in \
            app.screen.question
        await pilot.press("y")
        await settle(pilot, 8)
        assert len(engines.made) == 2 and engines.current.config.reg.clip_norm == 1.0


@pytest.mark.slow
async def test_a_rollback_after_a_non_finite_alert_marks_it_handled_with_no_fix() -> None:
    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        fresh = protocol.Fix("restart from fresh weights with half the lr",
                             {"optim.lr": 5e-4}, restart=True)
        nonfinite = alert("non_finite", fixes=(fresh,), step=150)
        engines.current.feed(nonfinite)
        await settle(pilot)
        assert app.check_action("fix", ()) is True
        lr = Config().optim.lr
        note = "rollback to step 100 after a non-finite loss at step 160"
        # The note alone is for people: only the event's rollback flag marks a rollback.
        engines.current.feed(protocol.HyperChanged(155, "optim.lr", lr, lr, note))
        await settle(pilot)
        assert app.run_state.handled(nonfinite) is None
        engines.current.feed(protocol.HyperChanged(160, "optim.lr", lr, lr / 10, note,
                                                   rollback=True))
        await settle(pilot)
        said = f"handled: rolled back at step 160, lr {lr:.3g} -> {lr / 10:.3g}"
        assert app.run_state.handled(nonfinite) == said
        assert said in str(app.query_one(AlertStrip).render())
        assert app.check_action("fix", ()) is None
        await pilot.press("f")
        await settle(pilot)
        assert len(engines.made) == 1 and not isinstance(app.screen, ConfirmScreen)
        await pilot.press("5")
        await settle(pilot)
        card = rendered(app.query_one(AlertsPanel).query_one("#alerts-list")
                        .get_option_at_index(0).prompt, width=200)
        assert said in card and "1. restart from fresh weights" not in card
        # A later non_finite alert, after the rollback, is not handled by it.
        assert RunState(Config()).handled(nonfinite) is None
        later = alert("non_finite", fixes=(fresh,), step=170)
        assert app.run_state.handled(later) is None


@pytest.mark.slow
async def test_in_the_alerts_view_f_fixes_the_highlighted_alert() -> None:
    app, engines = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        engines.current.feed(alert("exploding_gradients", fixes=(HALVE_LR,), step=150))
        engines.current.feed(alert("update_ratio", "warning", fixes=(CLIP,)))
        await settle(pilot)
        await pilot.press("5")
        await settle(pilot)
        await pilot.press("down", "f")  # the older alert, not the newest
        await settle(pilot)
        assert engines.current.commands == [
            protocol.SetHyper("optim.lr", 5e-4, "fix: exploding_gradients")]


@pytest.mark.slow
async def test_attaching_replays_no_old_range_test_notification() -> None:
    # Like its alerts, a run's recorded range-test answer is history: kept for L, no toast.
    found = protocol.LrFound(150, (1e-5, 1e-3, 1e-1), (2.3, 1.0, 9.0), 1e-3, "steepest descent")
    engines = FakeEngines([*opening(Config()), found,
                           protocol.Attached("run-1", 1, "control", 9)], replays_history=True)
    app = TrainlabApp(Config(), engine_factory=engines)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.run_state.lr_found == found
        assert toasts(app) == []
        live = dataclasses.replace(found, step=250)
        engines.current.feed(live)  # a live answer still pops up
        await settle(pilot)
        assert [t[0] for t in toasts(app)] == ["LR finder"]
