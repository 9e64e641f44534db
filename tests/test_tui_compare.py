"""The compare screen: runs under a root listed, picked, and compared from their stores.

Run directories are built with ``trainlab.core.store`` from canned events (``tests.fake_engine``):
no training. Expected values are computed here from the events and configs written,
not from ``trainlab.tui.compare``.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from rich.text import Text
from textual.app import App
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from tests.fake_engine import metrics, snapshot, started
from trainlab.core import catalog, engine_lock, protocol, run_status, rundir, store
from trainlab.core.config import Config
from trainlab.tui import compare
from trainlab.tui.screens.compare import (
    DIFFERS_STYLE,
    LIST_GROUP,
    PICKED,
    REFERENCE_STYLE,
    CompareChart,
    CompareScreen,
    RunPicker,
)

PARENT_LR = 1e-3
FORK_LR = 3e-4
STEPS_PER_EPOCH = 23
"""What fake_engine.started says."""


def make_run(root: Path, config: Config, events: list[Any], *, run_id: str | None = None,
             parent: str = "", parent_step: int | None = None, label: str = "") -> str:
    """A run directory under ``root`` that recorded ``events``; its id (``run_id`` when
    given, so that snapshots do not depend on the clock)."""
    path = catalog.new_run(root, config, parent=parent, parent_step=parent_step, label=label)
    if run_id is not None:
        path = path.rename(root / run_id)
        with store.RunStore.open(path, write=True) as runs:
            runs.set_meta(id=run_id)
    with store.RunStore.open(path, write=True) as runs:
        for event in events:
            runs.record(event)
    return path.name


def scaled(batch: protocol.MetricsBatch, factor: float) -> protocol.MetricsBatch:
    """``batch`` with every loss times ``factor`` (a run that learns differently)."""
    return dataclasses.replace(batch, losses=tuple(x * factor for x in batch.losses))


def final(step: int, train: float, val: float, accuracy: float, best: float,
          best_step: int) -> protocol.RunFinished:
    return protocol.RunFinished("completed", protocol.FinalMetrics(
        step, step // STEPS_PER_EPOCH, train, val, accuracy, best, best_step, 12.0))


def parent_events(config: Config) -> list[Any]:
    """A finished 400-step run: evaluations at 200 (the best) and 400."""
    return [
        started(config, 400),
        protocol.StateChanged("running", 0, "started"),
        metrics(1, 200, lr=config.optim.lr),
        protocol.EvalDone(200, 8, 0.50, 0.85, 0.45, 0.50),
        snapshot(200),
        metrics(201, 200, lr=config.optim.lr, epoch=8),
        protocol.EvalDone(400, 17, 0.55, 0.86, 0.30, 0.50),
        protocol.StateChanged("finished", 400, "completed"),
        final(400, 0.30, 0.55, 0.86, 0.50, 200),
    ]


def fork_events(config: Config) -> list[Any]:
    """A fork from step 200 that trains to 400 and does better."""
    return [
        dataclasses.replace(started(config, 400), resumed_from_step=200),
        protocol.StateChanged("running", 200, "resumed"),
        scaled(metrics(201, 200, lr=config.optim.lr, epoch=8), 0.8),
        protocol.EvalDone(300, 13, 0.42, 0.88, 0.35, 0.42),
        protocol.EvalDone(400, 17, 0.40, 0.90, 0.28, 0.40),
        protocol.StateChanged("finished", 400, "completed"),
        final(400, 0.28, 0.40, 0.90, 0.40, 400),
    ]


def other_events(config: Config) -> list[Any]:
    """A crashed run: 100 steps, one evaluation, no end."""
    return [started(config, 400), protocol.StateChanged("running", 0, "started"),
            metrics(1, 100, lr=config.optim.lr), protocol.EvalDone(100, 4, 0.7, 0.6, 0.8, 0.7)]


@dataclasses.dataclass
class Runs:
    """Three runs under one root: a parent, its fork (other lr), an unrelated run."""

    root: Path
    parent: str
    fork: str
    other: str
    configs: dict[str, Config]
    events: dict[str, list[Any]]


def three_runs(root: Path, *, fixed_ids: bool = False) -> Runs:
    parent_config = Config().with_values({"optim.lr": PARENT_LR, "run.max_steps": 400})
    fork_config = parent_config.with_values({"optim.lr": FORK_LR, "optim.weight_decay": 0.01})
    other_config = Config().with_values({"model.width": 32, "run.seed": 7})
    events = {"parent": parent_events(parent_config), "fork": fork_events(fork_config),
              "other": other_events(other_config)}
    ids = {"parent": "20261201-100000-aaaa", "fork": "20261201-100500-bbbb",
           "other": "20261201-090000-cccc"} if fixed_ids else {}
    parent = make_run(root, parent_config, events["parent"], run_id=ids.get("parent"),
                      label="baseline")
    fork = make_run(root, fork_config, events["fork"], run_id=ids.get("fork"), parent=parent,
                    parent_step=200, label="lower lr")
    other = make_run(root, other_config, events["other"], run_id=ids.get("other"))
    return Runs(root, parent, fork, other,
                {parent: parent_config, fork: fork_config, other: other_config},
                {parent: events["parent"], fork: events["fork"], other: events["other"]})


class Host(App[None]):
    """A bare app that opens the compare screen at once (tui/app.py is not needed)."""

    def __init__(self, root: Path, current: str | None, **kwargs: Any) -> None:
        super().__init__()
        self.screen_args = (root, current)
        self.kwargs = kwargs

    def on_mount(self) -> None:
        self.push_screen(CompareScreen(*self.screen_args, **self.kwargs))


def flat(config: Config) -> dict[str, Any]:
    """Dotted key -> value, from the config's TOML dict (not trainlab.tui.compare.flat_config)."""
    return {f"{section}.{name}": value for section, values in config.to_dict().items()
            for name, value in values.items()}


def column(table: DataTable[Any], key: str) -> list[str]:
    return [str(cell) for cell in table.get_column(key)]


def cell(table: DataTable[Any], row: str, column_key: str) -> Text:
    value = table.get_cell(row, column_key)
    assert isinstance(value, Text)
    return value


def run_column(screen: CompareScreen, run_id: str) -> str:
    """The config/metrics tables' column key of ``run_id``."""
    return f"run{[run.id for run in screen.compared].index(run_id)}"


def metric(table: DataTable[Any], row: str, column_key: str) -> str:
    return str(table.get_cell(row, column_key))


async def settle(pilot: Any, group: str | None = None) -> None:
    """Let the screen finish its workers (only those of ``group``, if given), then paint:
    its listing of the runs, then the reading of the compared ones that the listing
    starts."""
    await pilot.pause()
    while pending := [w for w in pilot.app.workers if group in (None, w.group)]:
        await pilot.app.workers.wait_for_complete(pending)
        await pilot.pause()


async def listed(pilot: Any) -> None:
    """Let the screen list the runs (its reading of the compared ones may go on)."""
    await settle(pilot, LIST_GROUP)


async def settled_screen(pilot: Any) -> CompareScreen:
    """The compare screen, once settled (it is the app's current screen)."""
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, CompareScreen)
    return screen


# --- the screen ---------------------------------------------------------------------


async def test_lists_every_run_newest_first_with_parents(tmp_path: Path) -> None:
    runs = three_runs(tmp_path)
    (tmp_path / runs.other / rundir.CHECKPOINT_DIR / "last.pt").write_bytes(b"weights")
    latest = max(s.updated_at for s in catalog.list_runs(tmp_path))
    async with Host(tmp_path, runs.parent, now=lambda: latest + 90).run_test(
            size=(120, 30)) as pilot:
        screen = await settled_screen(pilot)
        table = screen.query_one(RunPicker)
        assert column(table, "age") == ["1m ago"] * 3
        # the highlighted (newest) run in full: crashed, with a checkpoint to resume from
        note = str(screen.query_one("#runs-note", Static).render())
        assert f"{runs.other} crashed" in note
        assert f"trainlab resume {runs.other}" in note.replace("\n", "")
        # other was created last, then fork, then parent: newest first.
        assert [row.value for row in table.rows] == [runs.other, runs.fork, runs.parent]
        names = compare.short_names([runs.other, runs.fork, runs.parent])
        assert column(table, "run") == [names[runs.other], names[runs.fork], names[runs.parent]]
        assert column(table, "status") == ["crashed", "finished", "finished"]
        assert column(table, "step") == ["100", "400", "400"]
        assert column(table, "best") == ["0.7", "0.4", "0.5"]
        assert column(table, "parent") == ["", f"{names[runs.parent]}@200", ""]
        assert column(table, "label") == ["", "lower lr", "baseline"]
        # the crashed run says why; a finished one needs no note
        notes = column(table, "note")
        assert "ended without a final event" in notes[0] and notes[1:] == ["", ""]


@pytest.mark.slow
async def test_the_current_run_its_parent_and_forks_are_picked(tmp_path: Path) -> None:
    runs = three_runs(tmp_path)
    for current in (runs.parent, runs.fork):
        async with Host(tmp_path, current).run_test(size=(120, 30)) as pilot:
            screen = await settled_screen(pilot)
            assert sorted(screen.picked) == sorted([runs.parent, runs.fork])
            # the current run first: the others' differences are shown against it
            assert [run.id for run in screen.compared] == \
                [current, runs.fork if current == runs.parent else runs.parent]
            marks = column(screen.query_one(RunPicker), "pick")
            assert marks == ["", PICKED, PICKED]


async def test_picked_runs_are_preselected_too(tmp_path: Path) -> None:
    runs = three_runs(tmp_path)
    async with Host(tmp_path, None, picked=[runs.other, "20991231-000000-none"]).run_test(
            size=(120, 30)) as pilot:
        screen = await settled_screen(pilot)
        assert screen.picked == [runs.other]  # a run that is not under the root is dropped
        assert [run.id for run in screen.compared] == [runs.other]


@pytest.mark.slow
async def test_the_apps_keys_do_nothing_under_the_screen(tmp_path: Path) -> None:
    runs = three_runs(tmp_path)
    pressed: list[str] = []

    class Steering(Host):
        BINDINGS: ClassVar[list[BindingType]] = [Binding("s", "save", "Save"),
                                                 Binding("n", "save", "Step")]

        def action_save(self) -> None:
            pressed.append("save")

    async with Steering(tmp_path, runs.parent).run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for pane in ("1", "2", "3", "4"):
            await pilot.press(pane, "s", "n")
        assert pressed == []
        await pilot.press("escape", "s")
        assert pressed == ["save"]  # the screen closed: the app has its keys back


@pytest.mark.slow
def test_the_screen_imports_no_torch() -> None:
    code = ("import sys, trainlab.tui.screens.compare, trainlab.tui.compare; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "False"


async def test_config_rows_are_exactly_the_keys_that_differ(tmp_path: Path) -> None:
    runs = three_runs(tmp_path)
    async with Host(tmp_path, runs.parent).run_test(size=(120, 30)) as pilot:
        screen = await settled_screen(pilot)
        table = screen.query_one("#configs-table", DataTable)
        parent, fork = flat(runs.configs[runs.parent]), flat(runs.configs[runs.fork])
        expected = {key for key in parent if parent[key] != fork[key]}
        assert expected == {"optim.lr", "optim.weight_decay"}  # what the fork changed
        assert {row.value for row in table.rows} == expected
        fork_column, parent_column = run_column(screen, runs.fork), run_column(screen, runs.parent)
        assert str(cell(table, "optim.lr", fork_column)) == repr(FORK_LR)
        assert str(cell(table, "optim.lr", parent_column)) == repr(PARENT_LR)
        # The current run (parent) is the reference; the fork's value differs from it.
        assert cell(table, "optim.lr", parent_column).style == REFERENCE_STYLE
        assert cell(table, "optim.lr", fork_column).style == DIFFERS_STYLE
        caption = str(screen.query_one("#configs-caption", Static).render())
        assert "2 keys differ" in caption

        await pilot.press("a")  # every key
        assert len(table.rows) == len(parent)
        assert cell(table, "optim.momentum", fork_column).style == ""
        assert cell(table, "optim.lr", "key").style == DIFFERS_STYLE
        await pilot.press("a")
        assert {row.value for row in table.rows} == expected


async def test_adding_a_third_run_widens_the_differences(tmp_path: Path) -> None:
    runs = three_runs(tmp_path)
    async with Host(tmp_path, runs.parent).run_test(size=(120, 30)) as pilot:
        screen = await settled_screen(pilot)
        await pilot.press("space", "enter")  # the cursor starts on the newest: other
        await settle(pilot)
        assert {run.id for run in screen.compared} == {runs.parent, runs.fork, runs.other}
        configs = [flat(c) for c in runs.configs.values()]
        expected = {key for key in configs[0] if len({repr(c[key]) for c in configs}) > 1}
        assert expected >= {"optim.lr", "optim.weight_decay", "model.width", "run.seed",
                            "run.max_steps"}
        table = screen.query_one("#configs-table", DataTable)
        assert {row.value for row in table.rows} == expected


async def test_metrics_are_the_recorded_final_and_best(tmp_path: Path) -> None:
    runs = three_runs(tmp_path)
    async with Host(tmp_path, runs.parent).run_test(size=(120, 30)) as pilot:
        await listed(pilot)
        await pilot.press("space", "enter")  # pick the crashed run too
        screen = await settled_screen(pilot)
        table = screen.query_one("#metrics-table", DataTable)
        for run_id in (runs.parent, runs.fork):
            ended = next(e for e in runs.events[run_id] if isinstance(e, protocol.RunFinished))
            evals = [e for e in runs.events[run_id] if isinstance(e, protocol.EvalDone)]
            best = min(evals, key=lambda e: e.val_loss)
            col = run_column(screen, run_id)
            assert metric(table, "status", col) == "finished"
            assert metric(table, "final step", col) == str(ended.final.step)
            assert float(metric(table, "train loss", col)) == ended.final.train_loss
            assert float(metric(table, "val loss", col)) == ended.final.val_loss
            assert metric(table, "val accuracy", col) == f"{ended.final.val_accuracy:.1%}"
            assert float(metric(table, "best val loss", col)) == best.val_loss
            assert metric(table, "best at step", col) == str(best.step)
        # The crashed run: its latest evaluation, and why it has no end.
        col = run_column(screen, runs.other)
        assert metric(table, "status", col) == "crashed"
        assert metric(table, "final step", col) == "100"
        assert float(metric(table, "val loss", col)) == 0.7
        assert metric(table, "time", col) == compare.MISSING
        notes = str(screen.query_one("#metrics-notes", Static).render()).splitlines()
        assert len(notes) == 1  # only the crashed run has something to say
        assert notes[0].startswith(f"{screen.names[runs.other]}: ")
        assert "without a final event" in notes[0]
        # The fork's val loss is the best of the three, and marked so.
        assert table.get_cell("val loss", run_column(screen, runs.fork)).style == "bold green"
        assert table.get_cell("val loss", run_column(screen, runs.parent)).style == ""


async def test_the_chart_has_one_overlay_per_picked_run(tmp_path: Path) -> None:
    runs = three_runs(tmp_path)
    async with Host(tmp_path, runs.parent).run_test(size=(120, 30)) as pilot:
        screen = await settled_screen(pilot)
        chart = screen.query_one(CompareChart)
        names = screen.names
        assert [name for name, _ in chart.curves] == [names[runs.parent], names[runs.fork]]
        for (_, series), run_id in zip(chart.curves, (runs.parent, runs.fork), strict=True):
            batches = [e for e in runs.events[run_id] if isinstance(e, protocol.MetricsBatch)]
            steps = [s for b in batches for s in b.steps]
            losses = [x for b in batches for x in b.losses]
            assert series.x.tolist() == steps
            np.testing.assert_allclose(series.y, losses, rtol=1e-6)  # float32 in the chart
        assert chart.curves[1][1].x[0] == 201  # the fork goes on from its parent's step

        await pilot.press("v")  # validation loss
        for (_, series), run_id in zip(chart.curves, (runs.parent, runs.fork), strict=True):
            evals = [e for e in runs.events[run_id] if isinstance(e, protocol.EvalDone)]
            assert series.x.tolist() == [e.step for e in evals]
        assert "validation loss of 2 runs" in chart.title

        await pilot.press("v", "e")  # training loss by epoch
        np.testing.assert_allclose(chart.curves[0][1].x[:3],
                                   np.array([1, 2, 3]) / STEPS_PER_EPOCH)
        assert chart.by_epoch and "by epoch" in chart.title

        # Unpick the fork (second row) and compare: one overlay.
        table = screen.query_one(RunPicker)
        table.focus()
        table.move_cursor(row=table.get_row_index(runs.fork))
        await pilot.press("space", "enter")
        await settle(pilot)
        assert [name for name, _ in chart.curves] == [names[runs.parent]]


async def test_a_live_change_shows_in_the_config_and_makes_a_difference(tmp_path: Path) -> None:
    config = Config().with_values({"optim.lr": PARENT_LR})
    same = make_run(tmp_path, config, parent_events(config))
    changed_events = parent_events(config)
    changed_events.insert(3, protocol.HyperChanged(150, "optim.lr", PARENT_LR, 5e-4))
    changed = make_run(tmp_path, config, changed_events)
    async with Host(tmp_path, same).run_test(size=(120, 30)) as pilot:
        await listed(pilot)
        await pilot.press("space", "enter")  # the cursor is on the newest: changed
        screen = await settled_screen(pilot)
        table = screen.query_one("#configs-table", DataTable)
        assert [row.value for row in table.rows] == ["optim.lr"]
        assert str(table.get_cell("optim.lr", run_column(screen, changed))) == \
            f"{PARENT_LR!r} → 0.0005 @150"
        assert str(table.get_cell("optim.lr", run_column(screen, same))) == repr(PARENT_LR)


async def test_the_screen_answers_keys_while_it_reads(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    runs = three_runs(tmp_path)
    release = threading.Event()
    real_load = compare.load_run

    def slow_load(summary: run_status.RunSummary) -> compare.ComparedRun:
        release.wait(timeout=30)  # a long run's curve, read in the worker's thread
        return real_load(summary)

    monkeypatch.setattr(compare, "load_run", slow_load)
    async with Host(tmp_path, runs.parent).run_test(size=(80, 24)) as pilot:
        await listed(pilot)
        screen = pilot.app.screen
        assert isinstance(screen, CompareScreen)
        assert "reading 2 runs" in str(screen.query_one("#compare-tabs", Static).render())
        await pilot.press("4")  # the keys still work
        assert screen.query_one("#pane-metrics").display and screen.compared == []
        # A newer compare (the crashed run added) replaces the one still reading.
        await pilot.press("1", "space", "enter")
        release.set()
        await settle(pilot)
        assert {run.id for run in screen.compared} == {runs.parent, runs.fork, runs.other}
        assert "3 compared" in str(screen.query_one("#compare-tabs", Static).render())


async def test_the_screen_answers_keys_while_it_lists(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    runs = three_runs(tmp_path)
    release = threading.Event()
    real_list = catalog.list_runs
    listings: list[Path] = []

    def slow_list(root: str | Path) -> list[run_status.RunSummary]:
        listings.append(Path(root))
        release.wait(timeout=30)  # hundreds of runs, or a slow disk, in the worker's thread
        return real_list(root)

    monkeypatch.setattr(catalog, "list_runs", slow_list)
    async with Host(tmp_path, runs.parent).run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = pilot.app.screen
        assert isinstance(screen, CompareScreen)
        note = str(screen.query_one("#runs-note", Static).render())
        assert f"listing the runs in {tmp_path}" in note
        await pilot.press("4")  # the keys work while it lists
        assert screen.query_one("#pane-metrics").display
        await pilot.press("r")  # a reload replaces the first listing: still picks the family
        await pilot.pause()
        assert len(listings) == 2
        release.set()
        await settle(pilot)
        assert [str(k.value) for k in screen.query_one(RunPicker).rows] == \
            [runs.other, runs.fork, runs.parent]
        assert set(screen.picked) == {runs.parent, runs.fork}
        assert {run.id for run in screen.compared} == {runs.parent, runs.fork}
        assert screen.query_one("#pane-metrics").display  # the pane the user chose stays
        assert "listing" not in str(screen.query_one("#runs-note", Static).render())


@pytest.mark.slow
async def test_a_diverged_run_is_drawn_and_its_nan_shown(tmp_path: Path) -> None:
    config = Config()
    healthy = make_run(tmp_path, config, parent_events(config))
    steps = tuple(range(1, 101))
    losses = tuple(2.0 / s if s < 60 else (math.inf if s < 80 else math.nan) for s in steps)
    diverged = make_run(tmp_path, config, [
        started(config), protocol.StateChanged("running", 0, "started"),
        protocol.MetricsBatch(steps, losses, (1e-3,) * 100, 0, 500.0, 1.0),
        protocol.EvalDone(50, 2, 0.9, 0.5, 0.8, 0.9),
        protocol.EvalDone(100, 4, math.nan, 0.1, math.nan, 0.9),
        protocol.StateChanged("failed", 100, "non-finite loss"),
        protocol.RunFinished("non_finite", protocol.FinalMetrics(
            100, 4, math.nan, math.nan, 0.1, 0.9, 50, 3.0))])
    async with Host(tmp_path, healthy, picked=[diverged]).run_test(size=(80, 24)) as pilot:
        screen = await settled_screen(pilot)
        await pilot.press("2")
        chart = screen.query_one(CompareChart)
        for keys in ((), ("l",), ("v",), ("e",), ("l",)):  # log, validation, epochs, linear
            await pilot.press(*keys)
            await settle(pilot)
            assert len(chart.curves) == 2
            assert "loss of 2 runs" in str(chart.render())  # drawn, not raised
        table = screen.query_one("#metrics-table", DataTable)
        col = run_column(screen, diverged)
        assert metric(table, "status", col) == "failed"
        assert metric(table, "train loss", col) == "NaN"
        assert metric(table, "best val loss", col) == "0.9"
        assert metric(table, "best at step", col) == "50"
        assert "non-finite" in str(screen.query_one("#metrics-notes", Static).render())


async def test_unreadable_runs_are_listed_with_the_reason(tmp_path: Path) -> None:
    runs = three_runs(tmp_path)
    broken = tmp_path / "20261130-120000-dead"
    broken.mkdir()
    (broken / rundir.DB_FILE).write_bytes(b"this is not a database" * 100)
    (tmp_path / runs.other / rundir.CONFIG_FILE).unlink()
    async with Host(tmp_path, runs.parent).run_test(size=(120, 30)) as pilot:
        screen = await settled_screen(pilot)
        table = screen.query_one(RunPicker)
        assert broken.name in [row.value for row in table.rows]
        row = table.get_row_index(broken.name)
        assert "unreadable" in str(table.get_row_at(row)[-1])
        # Pick both problem runs and compare: no crash, reasons shown.
        table.move_cursor(row=row)
        await pilot.press("space")
        table.move_cursor(row=table.get_row_index(runs.other))
        await pilot.press("space", "enter")
        await settle(pilot)
        assert {run.id for run in screen.compared} == {runs.parent, runs.fork, runs.other,
                                                       broken.name}
        errors = {run.id: run.error for run in screen.compared}
        assert "cannot use run.db: file is not a database" in errors[broken.name]
        assert errors[runs.other] == "config file not found: config.toml"
        notes = str(screen.query_one("#metrics-notes", Static).render()).replace("\n", "")
        assert f"{screen.names[broken.name]}: {errors[broken.name]}" in notes
        assert f"{screen.names[runs.other]}: {errors[runs.other]}" in notes
        # the highlighted run's whole reason under the runs table
        table.move_cursor(row=table.get_row_index(broken.name))
        await settle(pilot)
        note = str(screen.query_one("#runs-note", Static).render())
        assert errors[broken.name] in note.replace("\n", "")
        configs = screen.query_one("#configs-table", DataTable)
        assert str(configs.get_cell("optim.lr", run_column(screen, runs.other))) == \
            compare.MISSING
        caption = str(screen.query_one("#configs-caption", Static).render())
        assert "config unreadable" in caption
        # The crashed run's curve is still read without its config; the broken one has none.
        chart = screen.query_one(CompareChart)
        assert len(chart.curves) == 3


async def test_a_root_that_cannot_be_listed_says_so(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "runs"
    not_a_dir.write_text("a file")
    async with Host(not_a_dir, None).run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        note = str(pilot.app.screen.query_one("#runs-note", Static).render())
        assert "cannot list the runs" in note and str(not_a_dir) in note


async def test_no_runs_yet(tmp_path: Path) -> None:
    async with Host(tmp_path / "runs", None).run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = pilot.app.screen
        assert "no runs in" in str(screen.query_one("#runs-note", Static).render())
        await pilot.press("enter", "v", "e", "a", "l", "r", "3", "4")  # nothing to break
        await settle(pilot)
        assert screen.query_one(CompareChart).curves == ()


@pytest.mark.slow
async def test_one_pane_at_80x24_and_every_pane_when_large(tmp_path: Path) -> None:
    runs = three_runs(tmp_path)
    async with Host(tmp_path, runs.parent).run_test(size=(80, 24)) as pilot:
        screen = await settled_screen(pilot)
        assert not screen.wide

        def shown() -> list[str]:
            return [pane for pane in ("runs", "chart", "configs", "metrics")
                    if screen.query_one(f"#pane-{pane}").display]

        assert shown() == ["runs"]
        assert screen.focused is screen.query_one(RunPicker)
        await pilot.press("enter")  # compare: on to the chart
        await settle(pilot)
        assert shown() == ["chart"]
        await pilot.press("3")
        assert shown() == ["configs"]
        assert screen.focused is screen.query_one("#configs-table")
        await pilot.press("4")
        assert shown() == ["metrics"]
        await pilot.press("1")
        assert shown() == ["runs"]
        await pilot.press("escape")
        assert not isinstance(pilot.app.screen, CompareScreen)

    async with Host(tmp_path, runs.parent).run_test(size=(200, 60)) as pilot:
        screen = await settled_screen(pilot)
        assert screen.wide
        assert all(screen.query_one(f"#pane-{pane}").display
                   for pane in ("runs", "chart", "configs", "metrics"))
        await pilot.press("enter")  # compare: everything stays in view
        await settle(pilot)
        assert screen.focused is screen.query_one(RunPicker)


async def test_reload_sees_a_run_that_moved_on(tmp_path: Path) -> None:
    config = Config()
    path = catalog.new_run(tmp_path, config)
    with engine_lock.EngineLock(path), store.RunStore.open(path, write=True) as runs:
        runs.record(started(config))
        runs.record(protocol.StateChanged("running", 0, "started"))
        runs.record(metrics(1, 50))
        runs.commit()
        async with Host(tmp_path, path.name).run_test(size=(120, 30)) as pilot:
            screen = await settled_screen(pilot)
            table = screen.query_one(RunPicker)
            assert column(table, "status") == ["running"]
            assert len(screen.query_one(CompareChart).curves[0][1]) == 50
            runs.record(metrics(51, 50))
            runs.commit()
            await pilot.press("r")
            await settle(pilot)
            assert column(table, "step") == ["100"]
            assert len(screen.query_one(CompareChart).curves[0][1]) == 100
            metrics_table = screen.query_one("#metrics-table", DataTable)
            assert metric(metrics_table, "status", "run0") == "running"


# --- trainlab.tui.compare without a screen -----------------------------------------------------


def test_short_names_drop_a_shared_date_only() -> None:
    same_day = ["20261201-100000-aaaa", "20261201-110000-bbbb"]
    assert compare.short_names(same_day) == {same_day[0]: "100000-aaaa",
                                             same_day[1]: "110000-bbbb"}
    two_days = [same_day[0], "20261202-100000-cccc"]
    assert compare.short_names(two_days) == {i: i for i in two_days}
    assert compare.short_names(["my-run", "20261201-100000-aaaa"])["my-run"] == "my-run"


def test_family_is_the_run_its_parent_and_its_forks(tmp_path: Path) -> None:
    def summary(run_id: str, parent: str = "") -> run_status.RunSummary:
        return run_status.RunSummary(run_id, tmp_path / run_id, "finished", 0, 0, None, None, 0.0,
                                0.0, parent, None, "", "")

    listed = [summary("d", "b"), summary("c"), summary("b", "a"), summary("a"),
              summary("e", "a")]
    assert compare.family(listed, "b") == ["d", "b", "a"]
    assert compare.family(listed, "a") == ["b", "a", "e"]
    assert compare.family(listed, "zz") == []


def test_format_number_keeps_what_the_run_had() -> None:
    assert compare.format_number(math.nan, "loss") == "NaN"
    assert compare.format_number(math.inf, "loss") == "Infinity"
    assert compare.format_number(None, "loss") == compare.MISSING
    assert compare.format_number(0.123456, "loss") == "0.1235"
    assert compare.format_number(0.875, "percent") == "87.5%"
    assert compare.format_number(900.0, "seconds") == "15m"


def test_metric_rows_mark_the_best_and_ignore_nan(tmp_path: Path) -> None:
    def run(val: float) -> compare.ComparedRun:
        summary = run_status.RunSummary("r", tmp_path, "finished", 0, 0, None, None, 0.0, 0.0, "",
                                   None, "", "")
        return compare.ComparedRun(summary, metrics=compare.RunMetrics(
            "finished", 10, 1.0, val, 0.5, val, 10, 1.0))

    rows = {row.name: row for row in compare.metric_rows([run(0.3), run(math.nan), run(0.2)])}
    assert rows["val loss"].best == {2}
    assert rows["val loss"].cells[1] == "NaN"
    assert rows["val accuracy"].best == {0, 1, 2}  # all equal: all best
    assert rows["final step"].best == frozenset()


def test_load_run_of_a_missing_directory_says_why(tmp_path: Path) -> None:
    summary = run_status.RunSummary("gone", tmp_path / "gone", "crashed", 0, 0, None, None, 0.0,
                               0.0, "", None, "", "")
    run = compare.load_run(summary)
    assert run.config is None and run.metrics is None
    assert rundir.CONFIG_FILE in run.error and rundir.DB_FILE in run.error
    assert compare.note(run) == run.error


@pytest.mark.parametrize("all_keys", [False, True])
def test_config_rows_of_one_readable_run_differ_in_nothing(tmp_path: Path,
                                                           all_keys: bool) -> None:
    runs = three_runs(tmp_path)
    summaries = {s.id: s for s in catalog.list_runs(tmp_path)}
    one = compare.load_run(summaries[runs.parent])
    broken = compare.ComparedRun(summaries[runs.fork])  # config None: as if unreadable
    assert compare.differing_keys([one, broken]) == []
    rows = compare.config_rows([one, broken], all_keys=all_keys)
    assert len(rows) == (len(flat(runs.configs[runs.parent])) if all_keys else 0)
    assert not any(row.differs or any(row.unlike_first) for row in rows)
