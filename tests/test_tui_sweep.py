"""A sweep in the app: the leaderboard screen (live, best first), showing a trial's run
without stopping the one shown before, comparing picked trials, the metric charted
against a field. The leaderboard is canned (no Optuna storage, no engine)."""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable
from textual_plotext.plot import Plot

from tests.fake_engine import FakeEngine, FakeEngines, record_notifications
from trainlab.core import catalog, sweep
from trainlab.core.config import Config
from trainlab.core.sweep_study import TrialRow
from trainlab.tui.app import TrainlabApp
from trainlab.tui.controllers import sweeps as sweeps_controller
from trainlab.tui.plotting import draw_scatter
from trainlab.tui.screens.compare import CompareScreen
from trainlab.tui.screens.sweep import SweepChart, SweepScreen
from trainlab.tui.sweep_session import SweepSession

SWEEP = """
    [run]
    dir = "{root}"
    [sweep]
    name = "lr"
    [sweep.space]
    "optim.lr" = {{ low = 1e-4, high = 1e-1, log = true }}
    "optim.name" = ["adam", "sgd"]
"""


def rows(run_dirs: dict[int, Path] | None = None) -> list[TrialRow]:
    run_dirs = run_dirs or {}

    def row(number: int, state: str, lr: float, name: str, value: float | None,
            steps: int | None) -> TrialRow:
        run_dir = run_dirs.get(number)
        return TrialRow(number, state, {"optim.lr": lr, "optim.name": name}, value, steps, 100,
                        run_dir.name if run_dir else f"run-{number}",
                        str(run_dir) if run_dir else "", "here")

    return [row(2, "complete", 0.01, "adam", 0.2, 100), row(0, "complete", 0.001, "sgd", 0.5, 100),
            row(1, "pruned", 0.0003, "sgd", 1.5, 20), row(3, "running", 0.05, "adam", 0.9, 40)]


def sweep_app(tmp_path: Path, board: list[TrialRow]) -> tuple[TrainlabApp, FakeEngines,
                                                               SweepSession]:
    spec = sweep.from_dict(tomllib.loads(textwrap.dedent(SWEEP.format(root=tmp_path))), "x")
    session = SweepSession(spec, reader=lambda: board, running=lambda: True)
    engines = FakeEngines()
    return TrainlabApp(spec.base, engine_factory=engines, sweep=session), engines, session


def cells(table: DataTable[Any], column: int) -> list[str]:
    return [str(table.get_row_at(i)[column]) for i in range(table.row_count)]


pytestmark = pytest.mark.slow  # the app, driven key by key


async def test_the_sweep_screen_shows_the_leaderboard_and_compares_picked_trials(tmp_path):
    app, engines, _ = sweep_app(tmp_path, rows())
    async with app.run_test(size=(100, 34)) as pilot:
        await pilot.pause(0.3)
        screen = app.screen
        assert isinstance(screen, SweepScreen)
        assert engines.made == []  # nothing trains in the app: the sweep process does
        table = screen.query_one(DataTable)
        assert [str(c.label) for c in table.columns.values()] == [
            " ", "trial", "state", "optim.lr", "optim.name", "val_loss", "steps"]
        assert cells(table, 1) == ["2", "0", "1", "3"]  # best first, as read
        assert cells(table, 6) == ["100", "100", "20/100", "40/100"]
        title = str(screen.query_one("#sweep-title").render())
        assert "4 trials: 2 complete, 1 pruned, 1 running" in title
        assert "best: trial 2, val_loss 0.2" in title and "its process runs" in title
        reads = screen.reads
        await pilot.pause(1.3)
        assert screen.reads > reads  # live: read again every second

        await pilot.press("space", "down", "down", "space")
        assert cells(table, 0)[:3] == ["✓", "", "✓"]
        await pilot.press("C")
        await pilot.pause(0.1)
        assert isinstance(app.screen, CompareScreen)
        assert app.screen.preselected == ("run-2", "run-1")
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert app.screen is screen

        chart = screen.query_one(SweepChart)
        assert chart.key == "optim.lr"
        await pilot.press("p")
        assert chart.key == "optim.name"

        notified = record_notifications(app)
        await pilot.press("enter")  # trial 1 has no run on this machine
        assert app.screen is screen and "trial 1 has no run on this machine" in notified[-1]


async def test_enter_shows_a_trial_and_leaves_the_one_shown_before_training(
        tmp_path, monkeypatch):
    run_dirs = {n: catalog.new_run(tmp_path, Config()) for n in (2, 0)}
    attached: list[FakeEngine] = []

    def served(run_dir: Path) -> FakeEngine:
        engine = FakeEngine()
        engine.run_dir = run_dir  # type: ignore[assignment]
        attached.append(engine)
        return engine

    monkeypatch.setattr(sweeps_controller, "ServedEngine", served)
    app, engines, _ = sweep_app(tmp_path, rows(run_dirs))
    async with app.run_test(size=(100, 34)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("enter")  # the best trial
        await pilot.pause(0.3)
        assert not isinstance(app.screen, SweepScreen)
        assert [e.run_dir for e in attached] == [run_dirs[2]]
        assert app.run_state.run_id == run_dirs[2].name
        await pilot.press("i")  # the leaderboard again
        await pilot.pause(0.2)
        assert isinstance(app.screen, SweepScreen)
        await pilot.press("down", "enter")
        await pilot.pause(0.3)
        assert [e.run_dir for e in attached] == [run_dirs[2], run_dirs[0]]
        first = attached[0]
        assert first.detached and not first.stopped  # the sweep judges it, not the app
        assert engines.made == []


def test_the_chart_draws_a_point_per_trial_with_a_value():
    plot = Plot()
    draw_scatter(plot, points=[(0.001, 0.5, "complete"), (0.01, 0.2, "complete"),
                               (0.05, float("nan"), "running"), (0.0003, 2.0, "pruned")],
                 xlabel="optim.lr", ylabel="val_loss", log_x=True, width=60, height=15)
    drawn = plot.build()
    assert "val_loss against optim.lr" in drawn and "1e-3" not in drawn
    assert "0.001" in drawn and "0.01" in drawn and "(log scale)" in drawn
    draw_scatter(plot, points=[("adam", 0.5, "complete"), ("sgd", 0.2, "pruned")],
                 xlabel="optim.name", ylabel="val_loss", log_x=False, width=60, height=12)
    drawn = plot.build()
    assert "adam" in drawn and "sgd" in drawn
    draw_scatter(plot, points=[], xlabel="optim.lr", ylabel="val_loss", log_x=True,
                 width=60, height=12)
    assert "no trial has a value yet" in plot.build()
