"""The app with the real engines: pause, single steps, a live change, failure, quit,
detach and attach again, a second app viewing."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_config
from trainlab.core import catalog, engine_lock, protocol
from trainlab.engine.host import ThreadEngine
from trainlab.tui.app import TrainlabApp
from trainlab.tui.bridge import ServedEngine, log_tail

# End to end: the app with the real engines, in a thread and in a process of its own.
pytestmark = pytest.mark.slow

LONG = {"run__max_steps": 1_000_000, "stats__every": 1}


async def wait_for(pilot: Any, condition: Any, timeout: float = 60.0) -> None:
    """Pump the app until ``condition()`` holds (the engine answers in its own time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("the app did not reach the expected state in time")
        await pilot.pause(0.05)


def engines(kind: str) -> Any:
    return ServedEngine if kind == "process" else ThreadEngine


def long_run_in_a_process() -> tuple[TrainlabApp, ServedEngine]:
    """The app on a run that will not end by itself, and the engine it trains in."""
    engine = ServedEngine()
    return TrainlabApp(tiny_config(**LONG), engine_factory=lambda: engine), engine


def stop_engine(engine: ServedEngine) -> None:
    """End a detached engine a test left training (SIGTERM: it stops cleanly)."""
    process = engine._process
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)


@pytest.mark.parametrize("kind", ["process", "thread"])
async def test_pause_single_steps_and_a_live_lr_change(kind: str) -> None:
    app = TrainlabApp(tiny_config(**LONG), engine_factory=engines(kind))
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
        engine = app.engine
        await pilot.press("x")  # stop the run: asked first, in either engine
        await pilot.pause(0.2)
        await pilot.press("y")
        await wait_for(pilot, lambda: s.state == "finished", timeout=60)
        assert s.reason == "stopped from the app"
        await pilot.press("q")
        await wait_for(pilot, lambda: app.return_value is not None, timeout=30)
    assert app.return_value == 0 and app.engine is None
    if isinstance(engine, ServedEngine):
        assert engine._process is not None and engine._process.wait(30) == 0
        assert catalog.summarize(engine.run_dir).status == "stopped"


async def test_q_leaves_the_run_training_and_attach_shows_it_again() -> None:
    app, engine = long_run_in_a_process()
    try:
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.run_state.step > 0)
            await pilot.press("q")  # no question: the run goes on without the app
            await wait_for(pilot, lambda: app.return_value is not None, timeout=30)
        run_dir = engine.run_dir
        assert run_dir is not None and app.detached_run == run_dir.name
        left_at = app.run_state.step
        process = engine._process
        assert process is not None and process.poll() is None  # still training
        again = TrainlabApp(tiny_config(**LONG),
                            engine_factory=lambda: ServedEngine(run_dir))
        async with again.run_test() as pilot:
            s = again.run_state
            await wait_for(pilot, lambda: s.step > left_at + 50)
            # The history from the store, the rest live: every step once, in order.
            steps = s.train_loss.x
            assert steps[0] == 1 and (steps[1:] - steps[:-1] == 1).all()
            assert s.role == "control" and s.run_id == run_dir.name

            # A second app views only; t takes control from the first.
            viewer = TrainlabApp(tiny_config(**LONG),
                                 engine_factory=lambda: ServedEngine(run_dir))
            async with viewer.run_test() as view_pilot:
                v = viewer.run_state
                await wait_for(view_pilot, lambda: v.client > 0 and v.step > 0)
                assert v.role == "view"
                assert viewer.check_action("toggle_pause", ()) is None
                await view_pilot.press("space")  # disabled: nothing is sent
                await view_pilot.press("t")
                await wait_for(view_pilot, lambda: v.role == "control")
                await wait_for(pilot, lambda: s.role == "view")
                await view_pilot.press("space")
                await wait_for(view_pilot, lambda: v.state == "paused")
                await wait_for(pilot, lambda: s.state == "paused")  # both see it
                await view_pilot.press("q")
                await wait_for(view_pilot, lambda: viewer.return_value is not None)
            await pilot.press("t")
            await wait_for(pilot, lambda: s.role == "control")
            await pilot.press("x")
            await pilot.pause(0.2)
            await pilot.press("y")
            await wait_for(pilot, lambda: s.state == "finished", timeout=60)
        assert process.wait(60) == 0
        assert catalog.summarize(run_dir).status == "stopped"
    finally:
        stop_engine(engine)


async def test_bad_user_code_shows_its_traceback_and_the_app_stays_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "broken_model.py"
    module.write_text("def build(input_shape, num_outputs):\n"
                      "    raise RuntimeError('my model is broken')\n")
    monkeypatch.chdir(tmp_path)  # user modules are found in the current directory
    config = tiny_config(model__arch="custom", model__factory="broken_model:build")
    app = TrainlabApp(config, engine_factory=engines("process"))
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
        engine = app.engine
        assert isinstance(engine, ServedEngine)
        await engine.stop()
        await app.shutdown()


async def test_leaving_the_app_any_other_way_leaves_the_run_training() -> None:
    app, engine = long_run_in_a_process()
    try:
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.run_state.step > 0)
            process = engine._process
            assert process is not None
            app.exit()  # e.g. an exception in a widget, a closed terminal: no quit dialog
            await pilot.pause(0.5)
        assert process.poll() is None  # it trains on; trainlab attach finds it
        assert engine.run_dir is not None and engine_lock.engine_alive(engine.run_dir)
    finally:
        stop_engine(engine)


async def test_a_crashed_engine_process_is_reported() -> None:
    app, engine = long_run_in_a_process()
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.run_state.step > 0)
        assert engine._process is not None
        engine._process.kill()
        await wait_for(pilot, lambda: app.run_state.state == "failed")
        failure = app.run_state.failure
        assert failure is not None and "ended unexpectedly" in failure.message
        assert app.is_running
        await app.shutdown()


async def test_garbage_on_the_socket_is_refused_and_training_goes_on() -> None:
    app, engine = long_run_in_a_process()
    try:
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: app.run_state.step > 0)
            assert engine._writer is not None
            engine._writer.write(b"this is not json\n")
            engine._writer.write(protocol.to_json(protocol.StateChanged("running", 0)).encode()
                                 + b"\n")
            await wait_for(pilot,
                           lambda: sum(e.level == "warning" for e in app.run_state.log) >= 2)
            step = app.run_state.step
            await wait_for(pilot, lambda: app.run_state.step > step)
            assert app.run_state.state == "running"
            await engine.stop()
            await app.shutdown()
    finally:
        stop_engine(engine)


def test_a_crash_report_carries_the_end_of_the_engine_log(tmp_path: Path) -> None:
    from trainlab.tui.bridge import LOG_TAIL_BYTES

    log = tmp_path / "engine.log"
    log.write_text("x" * 10_000 + "\nTraceback (most recent call last):\nMemoryError\n")
    tail = log_tail(log)
    assert tail.endswith("MemoryError\n") and len(tail.encode()) == LOG_TAIL_BYTES
    assert log_tail(tmp_path / "missing.log") == ""
