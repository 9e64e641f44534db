"""Labs in the app: the explanation screen, variants in turn, their curves on one chart."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
from textual.widgets import DataTable
from textual_plotext.plot import Plot

from tests.fake_engine import FakeEngines, metrics, record_notifications, started
from trainlab.cli import main as cli
from trainlab.cli.lab_runner import RunOutcome, format_comparison
from trainlab.core import protocol
from trainlab.core.config import Config, apply_overrides
from trainlab.core.labs import LABS, RESULT_COLUMNS, Lab, apply_preset, find_lab, result_row
from trainlab.core.presets import PRESETS, Preset
from trainlab.tui.app import TrainlabApp
from trainlab.tui.lab_session import LabSession
from trainlab.tui.plotting import OVERLAY_COLORS, TRAIN_COLOR, VAL_LOSS_COLOR, draw_loss_chart
from trainlab.tui.screens.confirm import ChoiceScreen, ConfirmScreen
from trainlab.tui.screens.lab import LabScreen, run_mark
from trainlab.tui.screens.lr_find import LrFindScreen
from trainlab.tui.series import Series
from trainlab.tui.widgets import loss_chart

EXPLANATION = "Two learning rates on the same net.\nWatch the loss chart."
LAB = Lab("two-lrs", "a small lr against a large one", EXPLANATION, (
    Preset("lr-small", "lr 1e-4: slow", {"optim.lr": 1e-4}),
    Preset("lr-large", "lr 1e-1: fast, then noisy", {"optim.lr": 0.1}),
    Preset("lr-mid", "lr 1e-2", {"optim.lr": 0.01}),
))


def session(lab: Lab = LAB) -> LabSession:
    return LabSession(lab, lab.configs(Config()))


def series(xs: Any, ys: Any) -> Series:
    result = Series()
    result.extend(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float))
    return result


def finished(step: int, train: float = 0.3, val: float = 0.4, acc: float | None = 0.9,
             reason: str = "completed") -> protocol.RunFinished:
    return protocol.RunFinished(reason, protocol.FinalMetrics(
        step, 1, train, val, acc, val - 0.05, step, 1.0))


# --- the session's bookkeeping ----------------------------------------------------------


def test_a_session_walks_the_variants_and_keeps_each_result_and_curve() -> None:
    lab = session()
    assert not lab.started and lab.current_name == "lr-small"
    assert lab.begin().optim.lr == 1e-4
    curve = series(range(1, 11), np.linspace(2.0, 1.0, 10))
    result = lab.record(finished(10), curve, steps_per_epoch=5)
    assert result.name == "lr-small" and result.finished.final.step == 10
    assert lab.overlays() == []  # the finished run is still the one shown
    name, config = lab.advance() or ("", Config())
    assert (name, config.optim.lr) == ("lr-large", 0.1)
    ((label, shown),) = lab.overlays()
    assert label == "lr-small" and shown is curve  # compared by step: the series itself
    lab.advance()
    lab.record(finished(4), series(range(1, 5), [1, 1, 1, 1]), 5)
    assert lab.advance() is None and not lab.complete  # lr-large never finished
    assert [label for label, _ in lab.overlays()] == ["lr-small"]


def test_by_epoch_a_curve_is_put_in_epochs_of_its_own_run() -> None:
    by_epoch = Lab("batches", "s", "e", LAB.variants[:2], compare_by="epoch")
    lab = session(by_epoch)
    lab.begin()
    steps = np.arange(1, 31)
    lab.record(finished(30), series(steps, 1 / steps), steps_per_epoch=12)
    lab.advance()
    ((_, curve),) = lab.overlays()
    np.testing.assert_allclose(curve.x, steps / 12)
    np.testing.assert_allclose(curve.y, (1 / steps).astype(np.float32))


def test_runs_are_marked_done_now_next_and_nothing_for_the_later_ones() -> None:
    four = Lab("four", "s", "e", (*LAB.variants, Preset("lr-tiny", "lr 1e-5", {"optim.lr": 1e-5})))
    lab = session(four)
    assert [run_mark(lab, i)[0] for i in range(4)] == ["next", "", "", ""]  # not started
    lab.begin()
    assert [run_mark(lab, i)[0] for i in range(4)] == ["now", "next", "", ""]
    lab.record(finished(10), series([1], [1]), None)
    lab.advance()
    assert [run_mark(lab, i)[0] for i in range(4)] == ["done", "now", "next", ""]


def test_a_results_row_has_the_headless_columns_seconds_included() -> None:
    event = protocol.RunFinished("early_stopped", protocol.FinalMetrics(
        120, 3, 0.25, 0.5, None, 0.45, 90, 12.34))
    row = result_row("lr-small", event)
    assert dict(zip(RESULT_COLUMNS, row, strict=True)) == {
        "variant": "lr-small", "ended": "early_stopped", "steps": "120",
        "train": "0.25", "val": "0.5", "val_acc": "-", "best_val": "0.45",
        "seconds": "12.3"}
    table = format_comparison([RunOutcome("lr-small", 0, event)]).splitlines()
    assert table[0].split() == list(RESULT_COLUMNS) and table[1].split() == list(row)


def test_a_session_without_runs_is_refused_naming_the_lab() -> None:
    with pytest.raises(ValueError, match="'two-lrs' has no runs"):
        LabSession(LAB, [])


# --- overlays on the loss chart ------------------------------------------------------------


def draw(**kwargs: Any) -> tuple[Plot, list[tuple[list[float], list[float]]], str]:
    plt = Plot()
    args: dict[str, Any] = dict(train=Series(), val_loss=Series(), val_accuracy=Series(),
                                lr=Series(), markers=[], log_y=False, width=100, height=30)
    args.update(kwargs)
    draw_loss_chart(plt, **args)
    signals = [(list(x), list(y)) for x, y in zip(plt.monitor.x, plt.monitor.y, strict=True)]
    return plt, signals, plt.uncolorize(plt.build())


def test_overlays_are_drawn_in_their_own_colours_and_named_in_the_legend() -> None:
    steps = np.arange(1, 101)
    first, second = series(steps, 2 / steps), series(steps, 3 / steps)
    current = series(steps[:40], 1 / steps[:40])
    plt, signals, text = draw(train=current, overlays=[("lr-small", first), ("lr-large", second)],
                              train_label="lr-mid")
    assert signals[0] == (list(first.x), pytest.approx(list(first.y)))
    assert signals[1] == (list(second.x), pytest.approx(list(second.y)))
    assert signals[2] == (list(current.x), pytest.approx(list(current.y)))
    colours = [points[0] for points in plt.monitor.color]  # plotext's colour per point
    assert colours == [*OVERLAY_COLORS[:2], TRAIN_COLOR]
    for label in ("lr-small", "lr-large", "lr-mid"):
        assert label in text
    assert "step 40" in text  # the title is the current run's


def test_every_overlay_colour_is_a_plotext_colour_unlike_the_loss_curves() -> None:
    from plotext._utility import is_color  # plotext swaps an unknown name for its own

    assert all(is_color(colour) for colour in OVERLAY_COLORS)
    assert len(set(OVERLAY_COLORS)) == len(OVERLAY_COLORS)
    assert not {TRAIN_COLOR, VAL_LOSS_COLOR} & set(OVERLAY_COLORS)


def test_by_epoch_the_current_run_and_its_markers_are_put_in_epochs() -> None:
    steps = np.arange(1, 61)
    current = series(steps, 1 / steps)
    overlay = series(np.arange(1, 201) / 50, np.full(200, 0.5))  # 4 epochs of 50 steps
    _, signals, text = draw(train=current, overlays=[("big batch", overlay)],
                            steps_per_epoch=20, markers=[(40, "lr=0.1")])
    np.testing.assert_allclose(signals[1][0], steps / 20)
    assert max(signals[0][0]) == pytest.approx(4.0)
    assert "epoch" in text and "lr=0.1" in text


def test_overlays_alone_draw_while_the_next_run_starts() -> None:
    _, signals, text = draw(overlays=[("done", series([1, 2, 3], [3.0, 2.0, 1.0]))])
    assert len(signals) == 1 and "finished runs" in text


def test_a_huge_overlay_is_decimated_like_the_current_run() -> None:
    steps = np.arange(1, 500_001)
    _, signals, _ = draw(overlays=[("long", series(steps, 1 / steps))], width=80)
    assert len(signals[0][0]) <= 2 * 80


# --- the app ----------------------------------------------------------------------------------


class DrawRecorder:
    """Wraps draw_loss_chart: keeps the keyword arguments of every draw."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, plt: Any, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        draw_loss_chart(plt, **kwargs)


def lab_app(lab: Lab = LAB) -> tuple[TrainlabApp, FakeEngines, LabSession]:
    engines = FakeEngines()
    lab_session = session(lab)
    app = TrainlabApp(lab_session.runs[0][1], engine_factory=engines, lab=lab_session)
    return app, engines, lab_session


async def settle(pilot: Any, times: int = 6) -> None:
    for _ in range(times):
        await pilot.pause()


@pytest.mark.slow
async def test_a_lab_opens_on_its_screen_and_trains_its_variants_in_turn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = DrawRecorder()
    monkeypatch.setattr(loss_chart, "draw_loss_chart", recorder)
    app, engines, lab = lab_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, LabScreen)
        assert engines.made == []  # nothing trains before Enter
        shown = str(screen.query_one("#lab-explanation").render())
        assert shown.split() == EXPLANATION.split()  # every word, re-wrapped to fit
        runs = str(screen.query_one("#lab-runs").render())
        for variant in LAB.variants:
            assert variant.name in runs and variant.summary in runs
        assert app.check_action("lab", ()) is True

        await pilot.press("enter")
        await settle(pilot)
        assert not isinstance(app.screen, LabScreen)
        assert engines.current.config == lab.runs[0][1]
        first_losses = app.run_state.train_loss.y.copy()

        engines.current.finish()
        await settle(pilot)
        assert len(engines.made) == 2 and engines.made[0].stopped
        assert engines.current.config == lab.runs[1][1]
        await pilot.pause(0.4)  # the chart's redraw timer
        drawn = recorder.calls[-1]
        ((label, overlay),) = drawn["overlays"]
        assert label == "lr-small" and drawn["train_label"] == "lr-large"
        np.testing.assert_array_equal(overlay.y, first_losses)
        assert drawn["steps_per_epoch"] is None  # this lab compares by step

        await pilot.press("i")
        await settle(pilot)
        table = app.screen.query_one("#lab-results", DataTable)
        assert [str(c.label) for c in table.columns.values()] == list(RESULT_COLUMNS)
        row = table.get_row_at(0)
        f = engines.made[0]  # FakeEngine.finish: losses 0.3 / 0.4, acc 0.9, 1.0 s
        assert row == ["lr-small", "completed", str(f.step), "0.3", "0.4", "90.0%", "0.4",
                       "1.0"]
        runs = str(app.screen.query_one("#lab-runs").render())
        assert "1. done lr-small" in runs and "2. now  lr-large" in runs
        assert "3. next lr-mid" in runs
        await pilot.press("enter")  # started: Enter only closes
        await settle(pilot)
        assert len(engines.made) == 2 and not isinstance(app.screen, LabScreen)


@pytest.mark.slow
async def test_the_last_variant_ends_the_lab_with_every_other_curve_overlaid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = DrawRecorder()
    monkeypatch.setattr(loss_chart, "draw_loss_chart", recorder)
    app, engines, lab = lab_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        for _ in LAB.variants:
            engines.current.finish()
            await settle(pilot)
        assert len(engines.made) == 3 and lab.complete
        await pilot.pause(0.4)
        drawn = recorder.calls[-1]
        assert [label for label, _ in drawn["overlays"]] == ["lr-small", "lr-large"]
        assert drawn["train_label"] == "lr-mid"


@pytest.mark.slow
async def test_r_in_a_lab_restarts_only_the_current_variant() -> None:
    app, engines, lab = lab_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        engines.current.finish()
        await settle(pilot)
        await pilot.press("r")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert len(engines.made) == 3
        assert engines.current.config == lab.runs[1][1]  # the second variant again
        assert lab.index == 1 and list(lab.results) == [0]


@pytest.mark.slow
async def test_a_dialog_answered_after_its_variant_finished_applies_nothing() -> None:
    """The pump runs under a dialog: the next variant starts while the user chooses.
    A fix, an lr or a restart meant for the finished variant must not reach the next."""
    halve = protocol.Fix("halve the learning rate now", {"optim.lr": 5e-5})
    clip = protocol.Fix("clip gradients at norm 1 now", {"reg.clip_norm": 1.0})
    four = Lab("four", "s", "e", (*LAB.variants, Preset("lr-tiny", "lr 1e-5",
                                                        {"optim.lr": 1e-5})))
    app, engines, lab = lab_app(four)
    notified = record_notifications(app)

    def sent_lr_or_clip(engine: Any) -> list[Any]:
        return [c for c in engine.commands if isinstance(c, protocol.SetHyper)]

    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        # 1. the fix picker open while variant 1 finishes
        engines.current.feed(protocol.AlertRaised(200, "exploding_gradients", "critical", (),
                                                  {}, "spikes", (halve, clip)))
        await settle(pilot)
        await pilot.press("f")
        await settle(pilot)
        assert isinstance(app.screen, ChoiceScreen)
        engines.current.finish()
        await settle(pilot)
        assert len(engines.made) == 2  # variant 2 trains under the open list
        await pilot.press("enter")
        await settle(pilot)
        assert sent_lr_or_clip(engines.current) == []
        assert app.run_state.config == lab.runs[1][1]
        assert "the run ended while you chose; nothing applied" in notified[-1].lower()

        # 2. the lr finder's answer applied after variant 2 finished
        await pilot.press("L")
        await settle(pilot)
        engines.current.feed(protocol.LrFound(200, (1e-4, 1e-3, 1e-2), (2.0, 1.0, 3.0),
                                              1e-3, "steepest descent"))
        await settle(pilot)
        assert isinstance(app.screen, LrFindScreen) and app.screen.curve is not None
        engines.current.finish()
        await settle(pilot)
        assert len(engines.made) == 3
        await pilot.press("a")
        await settle(pilot)
        assert sent_lr_or_clip(engines.current) == []
        assert app.run_state.config == lab.runs[2][1]
        assert "nothing applied" in notified[-1]

        # 3. restart (r) confirmed after variant 3 finished: variant 4 keeps training
        await pilot.press("r")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        engines.current.finish()
        await settle(pilot)
        assert len(engines.made) == 4
        await pilot.press("y")
        await settle(pilot)
        assert len(engines.made) == 4 and not engines.current.stopped
        assert lab.index == 3 and sorted(lab.results) == [0, 1, 2]
        assert "nothing applied" in notified[-1]


@pytest.mark.slow
async def test_a_failed_variant_waits_for_r_instead_of_moving_on() -> None:
    app, engines, lab = lab_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        for event in protocol.failure_events("internal", "boom", step=200):
            engines.current.feed(event)
        await settle(pilot)
        assert len(engines.made) == 1 and lab.results == {}


@pytest.mark.slow
async def test_a_lab_by_epoch_gives_the_chart_the_runs_steps_per_epoch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = DrawRecorder()
    monkeypatch.setattr(loss_chart, "draw_loss_chart", recorder)
    app, engines, _lab = lab_app(Lab("batches", "s", "e", LAB.variants[:2], compare_by="epoch"))
    engines.script = [started(Config()), protocol.StateChanged("running", 0, "started"),
                      metrics(1, 46)]
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        engines.current.finish()
        await settle(pilot)
        await pilot.pause(0.4)
        drawn = recorder.calls[-1]
        per_epoch = started(Config()).steps_per_epoch
        assert drawn["steps_per_epoch"] == per_epoch
        ((_, overlay),) = drawn["overlays"]
        np.testing.assert_allclose(overlay.x, np.arange(1, 47) / per_epoch)


# --- trainlab --preset ---------------------------------------------------------------------


class AppSpy:
    """Stands in for TrainlabApp in trainlab.cli.main: keeps what it was opened with."""

    opened: ClassVar[list[tuple[Config, LabSession | None]]] = []
    detached_run = ""

    def __init__(self, config: Config, *, lab: LabSession | None = None, **_: Any) -> None:
        AppSpy.opened.append((config, lab))

    def run(self) -> int:
        return 0


def test_a_lab_name_opens_the_lab_and_a_preset_name_a_single_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import trainlab.tui.app

    monkeypatch.setattr(trainlab.tui.app, "TrainlabApp", AppSpy)
    AppSpy.opened.clear()
    lab_name = next(iter(LABS))
    preset_name = next(name for name in PRESETS if find_lab(name) is None)
    assert cli.main(["--preset", lab_name, "--set", "run.max_epochs=1"]) == 0
    assert cli.main(["--preset", preset_name]) == 0
    (lab_config, lab), (preset_config, no_lab) = AppSpy.opened
    assert lab is not None and lab.lab is LABS[lab_name]
    expected = [(name, apply_overrides(config, ["run.max_epochs=1"]))
                for name, config in LABS[lab_name].configs(Config())]
    assert lab.runs == expected and lab_config == expected[0][1]
    assert all(config.run.max_epochs == 1 for _, config in lab.runs)  # --set wins
    assert no_lab is None and preset_config == apply_preset(Config(), preset_name)


def test_set_overrides_apply_over_each_variant_only_as_the_headless_lab_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """max_epochs=0 on the defaults alone is refused (no limit left); over the
    optimizers lab's variants, which set max_steps, it is a valid config."""
    import trainlab.tui.app

    monkeypatch.setattr(trainlab.tui.app, "TrainlabApp", AppSpy)
    AppSpy.opened.clear()
    overrides = {"run.max_epochs": 0, "run.max_steps": 5}
    argv = ["--preset", "optimizers"]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={value}"]
    assert cli.main(argv) == 0
    ((config, lab),) = AppSpy.opened
    assert lab is not None
    expected = [(variant.name, Config().with_values(variant.changes).with_values(overrides))
                for variant in LABS["optimizers"].variants]
    assert lab.runs == expected and config == expected[0][1]
    assert {c.run.max_steps for _, c in lab.runs} == {5}
    assert [c.optim.name for _, c in lab.runs] == \
        [v.changes["optim.name"] for v in LABS["optimizers"].variants]
