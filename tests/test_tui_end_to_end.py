"""The app with the real engines: pause, single steps, a live change, failure, quit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine import protocol
from tests.conftest import tiny_config
from tui.app import TrainlabApp
from tui.bridge import ProcessEngine, ThreadEngine

LONG = {"run__max_steps": 1_000_000, "stats__every": 1}


async def wait_for(pilot: Any, condition: Any, timeout: float = 60.0) -> None:
    """Pump the app until ``condition()`` holds (the engine answers in its own time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("the app did not reach the expected state in time")
        await pilot.pause(0.05)


def engines(kind: str, tmp_path: Path) -> Any:
    if kind == "process":
        return lambda: ProcessEngine(tmp_path / "engine.log")
    return ThreadEngine


def long_run_in_a_process(tmp_path: Path) -> tuple[TrainlabApp, ProcessEngine]:
    """The app on a run that will not end by itself, and the child engine it trains in."""
    engine = ProcessEngine(tmp_path / "engine.log")
    return TrainlabApp(tiny_config(**LONG), engine_factory=lambda: engine), engine


@pytest.mark.parametrize("kind", ["process", "thread"])
async def test_pause_single_steps_and_a_live_lr_change(kind: str, tmp_path: Path) -> None:
    app = TrainlabApp(tiny_config(**LONG), engine_factory=engines(kind, tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        s = app.run_state
        await wait_for(pilot, lambda: s.state == "running" and s.step > 0)
        await pilot.press("space")
        await wait_for(pilot, lambda: app.run_state.state == "paused")
        s = app.run_state
        paused_at = s.step
        await pilot.press("n")
        await wait_for(pilot, lambda: s.step == paused_at + 1 and s.state == "paused")
        await pilot.press("n")
        await wait_for(pilot, lambda: s.step == paused_at + 2)
        assert s.train_loss.x[-1] == paused_at + 2  # the chart has every step
        assert s.snapshot is not None and s.snapshot.step <= paused_at + 2
        lr = s.config.optim.lr
        await pilot.press("plus")
        await wait_for(pilot, lambda: s.config.optim.lr == pytest.approx(2 * lr))
        assert s.markers == [(paused_at + 2, f"lr={2 * lr:.3g}")]
        await pilot.press("q")
        await pilot.pause(0.2)
        await pilot.press("y")
        await wait_for(pilot, lambda: app.return_value is not None, timeout=30)
    assert app.return_value == 0 and app.engine is None


async def test_engine_process_ends_when_the_app_quits(tmp_path: Path) -> None:
    app, engine = long_run_in_a_process(tmp_path)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.run_state.step > 0)
        process = engine._process
        assert process is not None and process.returncode is None
        await app.shutdown()
    assert process.returncode == 0  # it stopped cooperatively, not killed


async def test_bad_user_code_shows_its_traceback_and_the_app_stays_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "broken_model.py"
    module.write_text("def build(input_shape, num_outputs):\n"
                      "    raise RuntimeError('my model is broken')\n")
    monkeypatch.chdir(tmp_path)  # user modules are found in the current directory
    config = tiny_config(model__arch="custom", model__factory="broken_model:build")
    app = TrainlabApp(config, engine_factory=engines("process", tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.run_state.state == "failed")
        failure = app.run_state.failure
        assert failure is not None and failure.kind == "user_code"
        assert "my model is broken" in failure.traceback
        assert app.query_one("#banner").display
        assert app.is_running
        # Fix it in the config and restart: the run trains.
        app.query_one("#field-model-arch").value = "mlp"
        app.query_one("#field-model-factory").value = ""
        await pilot.pause(0.2)
        await pilot.press("r")
        await wait_for(pilot, lambda: app.run_state.step > 0)
        assert app.run_state.config.model.arch == "mlp"
        await app.shutdown()


async def test_leaving_the_app_any_other_way_still_stops_the_engine(tmp_path: Path) -> None:
    app, engine = long_run_in_a_process(tmp_path)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.run_state.step > 0)
        process = engine._process
        assert process is not None
        app.exit()  # e.g. an exception in a widget: no quit dialog, no shutdown() call
        await pilot.pause(0.5)
    await asyncio.wait_for(process.wait(), 30)
    assert process.returncode == 0  # stopped cooperatively, not killed


async def test_a_crashed_engine_process_is_reported(tmp_path: Path) -> None:
    app, engine = long_run_in_a_process(tmp_path)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.run_state.step > 0)
        assert engine._process is not None
        engine._process.kill()
        await wait_for(pilot, lambda: app.run_state.state == "failed")
        failure = app.run_state.failure
        assert failure is not None and "ended unexpectedly" in failure.message
        assert app.is_running
        await app.shutdown()


async def test_garbage_on_the_command_pipe_is_refused_and_training_goes_on(
        tmp_path: Path) -> None:
    app, engine = long_run_in_a_process(tmp_path)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.run_state.step > 0)
        engine._write("this is not json")
        engine._write(protocol.to_json(protocol.StateChanged("running", 0)))
        await wait_for(pilot, lambda: sum(e.level == "warning" for e in app.run_state.log) >= 2)
        step = app.run_state.step
        await wait_for(pilot, lambda: app.run_state.step > step)
        assert app.run_state.state == "running"
        await app.shutdown()


def test_a_crash_report_carries_the_end_of_the_engine_log(tmp_path: Path) -> None:
    from tui.bridge import LOG_TAIL_BYTES

    log = tmp_path / "engine.log"
    log.write_text("x" * 10_000 + "\nTraceback (most recent call last):\nMemoryError\n")
    tail = ProcessEngine(log)._log_tail()
    assert tail.endswith("MemoryError\n") and len(tail.encode()) == LOG_TAIL_BYTES
    assert ProcessEngine(tmp_path / "missing.log")._log_tail() == ""
