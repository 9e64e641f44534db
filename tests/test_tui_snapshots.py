"""What the screen looks like: SVG snapshots with a fake engine (deterministic events).

Update them after an intended change of the look with ``pytest --snapshot-update``
and look at the report before committing.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fake_engine import FakeEngines, metrics, opening, snapshot
from trainlab.core import protocol
from trainlab.core.config import Config
from trainlab.tui.app import TrainlabApp

# SVG snapshots: each starts the app and draws it.
pytestmark = pytest.mark.slow


def app_with(script: list[Any]) -> TrainlabApp:
    return TrainlabApp(Config(), engine_factory=FakeEngines(script))


def training() -> list[Any]:
    """A run 600 steps in: falling loss, evaluations, an lr change, fresh layer stats."""
    events = opening(Config())
    for epoch, first in enumerate(range(201, 601, 100), start=2):
        events.append(metrics(first, 100, lr=5e-4 if first > 300 else 1e-3, epoch=epoch))
        events.append(protocol.EvalDone(first + 99, epoch, 0.4 - 0.02 * epoch,
                                        0.9 + 0.01 * epoch, 0.3, 0.3))
        if first == 301:
            events.append(protocol.HyperChanged(300, "optim.lr", 1e-3, 5e-4))
    events.append(snapshot(600, scales=(1.0, 0.05, 1e-4), dead=0.2))
    return events


async def settle(pilot: Any) -> None:
    for _ in range(4):
        await pilot.pause()
    await pilot.pause(0.3)  # the chart's redraw timer


def test_main_screen_80x24(snap_compare: Any) -> None:
    assert snap_compare(app_with(training()), terminal_size=(80, 24), run_before=settle)


def test_main_screen_200x60(snap_compare: Any) -> None:
    assert snap_compare(app_with(training()), terminal_size=(200, 60), run_before=settle)


def test_layers_view_80x24(snap_compare: Any) -> None:
    async def layers(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)

    assert snap_compare(app_with(training()), terminal_size=(80, 24), run_before=layers)


def with_alert() -> list[Any]:
    """The training run with a critical saturation alert on the two hidden layers."""
    return [*training(), protocol.AlertRaised(
        580, "saturation", "critical", ("blocks.0.linear", "blocks.1.linear"),
        {"saturated_frac": (0.93, 0.97), "threshold": 0.5},
        "Most tanh units are pinned at -1/+1, where the slope is ~0: almost no gradient "
        "flows back.",
        (protocol.Fix("Xavier init and restart", {"init.scheme": "xavier_normal"},
                      restart=True),
         protocol.Fix("halve the learning rate now", {"optim.lr": 2.5e-4})))]


def test_alert_on_the_main_screen_80x24(snap_compare: Any) -> None:
    assert snap_compare(app_with(with_alert()), terminal_size=(80, 24), run_before=settle)


def test_alerts_view_80x24(snap_compare: Any) -> None:
    async def alerts(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("5")
        await settle(pilot)

    assert snap_compare(app_with(with_alert()), terminal_size=(80, 24), run_before=alerts)


def test_help_screen(snap_compare: Any) -> None:
    async def help_screen(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("question_mark")
        await settle(pilot)

    assert snap_compare(app_with(training()), terminal_size=(100, 40), run_before=help_screen)


def test_error_state(snap_compare: Any) -> None:
    trace = ('Traceback (most recent call last):\n  File "my_model.py", line 7, in build\n'
             '    raise ValueError("input_shape must be 2-D")\nValueError: input_shape must be 2-D')
    script = list(protocol.failure_events(
        "user_code", "model.factory raised ValueError: input_shape must be 2-D", trace))

    async def to_log(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("4")
        await settle(pilot)

    assert snap_compare(app_with(script), terminal_size=(80, 24), run_before=to_log)


def test_doctor_screen_80x24(snap_compare: Any) -> None:
    from tests.test_tui_doctor import FakeRunner, doctor_output

    app = TrainlabApp(Config(), engine_factory=FakeEngines(training()),
                      command_runner=FakeRunner(doctor_output()))

    async def doctor(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=doctor)


def test_lr_find_screen_80x24(snap_compare: Any) -> None:
    from tests.test_tui_doctor import LOSSES, LRS

    engines = FakeEngines(training())
    app = TrainlabApp(Config(), engine_factory=engines)

    async def lr_find(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("L")
        engines.current.feed(protocol.LrFound(600, LRS, LOSSES, 3e-3, "steepest fall"))
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=lr_find)


def test_lab_screen_with_results_80x24(snap_compare: Any) -> None:
    from tests.test_tui_labs import session

    engines = FakeEngines()
    lab = session()
    app = TrainlabApp(lab.runs[0][1], engine_factory=engines, lab=lab)

    async def lab_results(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        engines.current.finish()
        await settle(pilot)
        app.clear_notifications()  # toasts come and go with the clock
        await pilot.press("i")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=lab_results)
