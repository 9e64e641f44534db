"""Folding protocol events into the app's state, without a screen."""

from __future__ import annotations

import math

import numpy as np

from tests.fake_engine import LAYERS, metrics, opening, snapshot
from trainlab.core import protocol
from trainlab.core.config import Config
from trainlab.tui import health
from trainlab.tui.state import CHART, CONFIG, LOG, STATUS, RunState
from trainlab.tui.state import LAYERS as LAYERS_PART
from trainlab.tui.widgets.layer_table import sparkline
from trainlab.tui.widgets.status_bar import status_text


def folded(events: list) -> RunState:
    state = RunState(Config())
    for event in events:
        state.apply(event)
    return state


def test_metrics_extend_the_loss_and_lr_history_in_order() -> None:
    state = folded([metrics(1, 5, lr=0.1), metrics(6, 3, lr=0.05)])
    assert list(state.train_loss.x) == [1, 2, 3, 4, 5, 6, 7, 8]
    expected = [2.3 * math.exp(-s / 200) + 0.05 for s in range(1, 9)]
    np.testing.assert_allclose(state.train_loss.y, expected, rtol=1e-6)  # float32 storage
    assert list(state.lr_history.y) == [np.float32(0.1)] * 5 + [np.float32(0.05)] * 3
    assert state.step == 8 and state.lr == 0.05


def test_each_event_names_the_parts_it_changes() -> None:
    state = RunState(Config())
    assert state.apply(metrics(1, 2)) == {CHART, STATUS}
    assert state.apply(snapshot(2, histograms=False)) == {LAYERS_PART}
    assert state.apply(protocol.HyperChanged(2, "optim.lr", 1e-3, 2e-3)) >= {CHART, CONFIG}
    assert state.apply(protocol.Notice(2, "warning", "careful")) == {LOG}
    assert state.apply(protocol.Pause()) == set()  # a command is not an event to fold


def test_hyper_change_updates_the_config_and_adds_a_marker() -> None:
    state = folded([metrics(1, 10),
                    protocol.HyperChanged(10, "optim.name", "adam", "sgd", "optimizer state reset"),
                    protocol.HyperChanged(10, "optim.lr", 1e-3, 0.5)])
    assert state.config.optim.name == "sgd" and state.config.optim.lr == 0.5
    # adam at its own lr (1e-3) moves to sgd's own (0.01): the marker says so.
    assert state.markers == [(10, "sgd lr=0.01"), (10, "lr=0.5")]
    assert state.lr == 0.5  # shown before the next metrics batch
    assert "optimizer state reset" in state.log[0].text


def test_an_optimizer_switch_keeps_a_set_lr_and_its_marker_says_only_the_name() -> None:
    state = folded([metrics(1, 10),
                    protocol.HyperChanged(10, "optim.lr", 1e-3, 3e-3),
                    protocol.HyperChanged(12, "optim.name", "adam", "sgd", "lr 0.003 kept")])
    assert state.config.optim.lr == 3e-3
    assert state.markers == [(10, "lr=0.003"), (12, "sgd")]


def test_eval_adds_validation_points_and_accuracy_only_for_classification() -> None:
    state = folded([protocol.EvalDone(10, 1, 0.5, None, 0.6, 0.5),
                    protocol.EvalDone(20, 2, 0.4, 0.8, 0.5, 0.4)])
    assert list(state.val_loss.x) == [10, 20]
    assert list(state.val_accuracy.x) == [20]


def test_snapshots_keep_a_bounded_history_per_layer_and_the_latest_histograms() -> None:
    events = [snapshot(step, histograms=step == 10) for step in range(10, 10 + 40)]
    state = folded(events)
    assert state.snapshot is events[-1]
    assert all(len(h) == 24 for h in state.layer_history.values())
    assert state.layer_history[LAYERS[0]][-1] is events[-1].layers[0]
    step, hist = state.histograms[(LAYERS[1], "grad")]
    assert step == 10 and hist.layer == LAYERS[1]


def test_failure_keeps_the_traceback_and_the_state_word() -> None:
    state = folded([*opening(Config()),
                    protocol.EngineFailed(200, "user_code", "boom", "Traceback...\nboom"),
                    protocol.StateChanged("failed", 200, "boom")])
    assert state.state == "failed" and state.ended and not state.active
    assert state.log[-1].level == "error" and state.log[-1].traceback.endswith("boom")
    assert status_text(state).startswith("[b red]failed[/]")


def test_status_line_names_state_step_epoch_rate_lr_optimizer_device() -> None:
    state = folded(opening(Config()))
    text = status_text(state)
    for part in ("running", "step 200/1,000", "epoch 1", "500 steps/s", "lr 0.001", "adam",
                 "cpu", "acc 90.0%"):
        assert part in text, part


def test_sparkline_is_log_scaled_and_marks_non_finite_values() -> None:
    assert sparkline([1e-3, 1e-2, 1e-1]) == "▁▅█"  # equal steps on a log scale
    assert sparkline([1.0, 2.0, 3.0], log=False) == "▁▅█"
    assert sparkline([1.0, math.nan, 10.0]) == "▁!█"
    assert sparkline([]) == "" and sparkline([None]) == ""
    assert sparkline([5.0, 5.0]) == "▄▄"  # flat: the middle


def test_health_bands() -> None:
    assert health.judge("act_std", 0.5) == health.OK
    assert health.judge("act_std", 0.01) == health.WARN
    assert health.judge("act_std", 1e-5) == health.BAD
    assert health.judge("act_std", 1e4) == health.BAD
    assert health.judge("saturated_frac", 0.3) == health.WARN
    assert health.judge("dead_frac", 0.9) == health.BAD
    assert health.judge("update_ratio", 1e-3) == health.OK
    assert health.judge("update_ratio", 0.5) == health.BAD
    assert health.judge("grad_norm", math.inf) == health.BAD
    assert health.judge("act_mean", 123.0) == health.OK  # no rule: never coloured
    assert health.judge("dead_frac", None) == health.OK


def test_signal_bars_fit_the_snapshot_and_keep_depth_trends_visible() -> None:
    from trainlab.tui.widgets.signal_view import MIN_DECADES, bar, log_range

    low, high = log_range([0.9, 0.3, None, math.nan])
    assert high - low >= MIN_DECADES and low <= math.log10(0.3) and high >= 0
    low, high = log_range([1e-7, 1.0])
    assert (low, high) == (-7.0, 0.0)
    # A 3x step between layers is a visibly different bar on the fitted scale.
    scale = log_range([1.0, 3.0])
    assert len(bar(1.0, 20, scale).plain.strip()) < len(bar(3.0, 20, scale).plain.strip())
    assert bar(math.nan, 20, scale).plain.startswith("!")


def test_the_signal_view_says_which_step_how_often_and_what_watching_costs() -> None:
    import dataclasses

    from rich.console import Console

    from trainlab.tui.widgets.signal_view import signal_table

    def shown(snap: protocol.LayerStatsSnapshot, width: int) -> list[str]:
        console = Console(width=width, record=True)
        console.print(signal_table(snap, width))
        return [line.strip() for line in console.export_text().splitlines()]

    snap = dataclasses.replace(snapshot(1230), overhead=0.0087, interval=40)
    wide = shown(snap, 140)
    # grad std 6e-4 .. act std 1: whole decades around them, 1e-4 to 1e0
    assert wide[-1] == ("step 1,230, every 40 steps · watching: 0.9% of training · "
                        "log scale 1e-4 to 1e0 · activations: first 64 samples")
    narrow = shown(snap, 60)  # the side column: two lines, none wrapped
    assert narrow[-2:] == ["log scale 1e-4 to 1e0 · activations: first 64 samples",
                           "step 1,230, every 40 steps · watching: 0.9% of training"]
    # Before anything was measured, and with the schedule off: no cost, no cadence.
    bare = shown(dataclasses.replace(snap, overhead=None, interval=0), 140)
    assert bare[-1].startswith("step 1,230 · log scale")


def test_a_resumed_run_goes_back_to_its_checkpoint_step() -> None:
    # A crash after step 200 of history, a resume from the checkpoint of step 120: the
    # steps after 120 are trained again, so what the store held past them is dropped.
    import dataclasses

    from tests.fake_engine import started

    history = [*opening(Config(), steps=200), protocol.HyperChanged(150, "optim.lr", 1e-3, 2e-3)]
    resumed = dataclasses.replace(started(Config()), resumed_from_step=120)
    state = folded([*history, resumed, metrics(121, 10)])
    steps = state.train_loss.x
    assert steps.tolist() == [*range(1, 121), *range(121, 131)]
    assert state.val_loss.x.tolist() == []  # the evaluation at step 200 is undone
    assert state.markers == []  # so is the change at step 150
    assert state.step == 130


def test_a_stopped_run_shows_as_stopped_a_completed_one_as_finished() -> None:
    for reason, shown in (("stopped", "stopped"), ("completed", "finished"),
                          ("early_stopped", "finished")):
        final = protocol.FinalMetrics(200, 1, 0.3, 0.4, 0.9, 0.4, 200, 1.0)
        state = folded([*opening(Config()), protocol.StateChanged("finished", 200, reason),
                        protocol.RunFinished(reason, final)])
        assert state.state == "finished" and state.shown_state == shown
        assert status_text(state).startswith(f"[b cyan]{shown}[/]")
