"""The doctor (d) and the lr finder (L) in the app, with a fake engine and a fake runner."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
import pytest
from textual_plotext.plot import Plot

from tests.conftest import tiny_config
from tests.fake_engine import FakeEngines
from trainlab.core import protocol
from trainlab.core.config import Config
from trainlab.core.exits import EXIT_CHECK_FAILED, EXIT_FAILED
from trainlab.core.lr_chart import LR_CURVE_TOP_FACTOR
from trainlab.tui.app import TrainlabApp
from trainlab.tui.headless import CommandOutput, HeadlessCommandError, run_engine_command
from trainlab.tui.plotting import draw_lr_curve
from trainlab.tui.screens.confirm import ConfirmScreen
from trainlab.tui.screens.doctor import DoctorScreen, parse_doctor_output
from trainlab.tui.screens.help import HelpScreen
from trainlab.tui.screens.lr_find import LrFindScreen, parse_lr_find_output
from trainlab.tui.widgets.config_panel import ConfigPanel, widget_id

CHECKS = [
    {"name": "loss at init", "status": "pass", "detail": "2.31 vs ln 10 = 2.30"},
    {"name": "labels", "status": "warn", "detail": "classes in [0, 9]; counts 1:3 apart"},
    {"name": "overfit one batch", "status": "fail", "detail": "loss 1.9 after 300 steps"},
]


def doctor_output(checks: list[dict[str, str]] = CHECKS,
                  code: int = EXIT_CHECK_FAILED) -> CommandOutput:
    statuses = [c["status"] for c in checks]
    report = {"checks": checks, "passed": statuses.count("pass"),
              "warned": statuses.count("warn"), "failed": statuses.count("fail")}
    return CommandOutput(code, json.dumps(report), "")


class FakeRunner:
    """Answers headless commands with canned output; records what it was asked."""

    def __init__(self, output: CommandOutput) -> None:
        self.output = output
        self.calls: list[tuple[str, Config]] = []

    async def __call__(self, command: str, config: Config) -> CommandOutput:
        self.calls.append((command, config))
        return self.output


def make_app(runner: FakeRunner) -> tuple[TrainlabApp, FakeEngines]:
    engines = FakeEngines()
    return TrainlabApp(Config(), engine_factory=engines, command_runner=runner), engines


async def settle(pilot: Any, times: int = 4) -> None:
    for _ in range(times):
        await pilot.pause()


def text_of(screen: Any, selector: str) -> str:
    return str(screen.query_one(selector).render())


# --- the doctor's output ------------------------------------------------------------


def test_a_report_keeps_every_check_and_counts_them_itself() -> None:
    report = parse_doctor_output(doctor_output())
    assert [(c.name, c.status, c.detail) for c in report.checks] == [
        (c["name"], c["status"], c["detail"]) for c in CHECKS]
    assert report.summary() == "1 passed, 1 warned, 1 failed"


@pytest.mark.parametrize(("output", "words"), [
    (CommandOutput(2, "", "data.batch_size = 0 is not allowed: expected >= 1\n"),
     ["config was refused", "data.batch_size = 0"]),
    # The run could not be built (user code raised): the user's error, not an empty report.
    (CommandOutput(EXIT_FAILED, "", "Traceback ...\nRuntimeError: boom\n"),
     [f"exit code {EXIT_FAILED}", "RuntimeError: boom"]),
    (CommandOutput(0, "", "Traceback ...\nRuntimeError: boom\n"),
     ["not its JSON", "RuntimeError: boom"]),
    (CommandOutput(-9, "", "Traceback ...\nRuntimeError: boom\n"),
     ["exit code -9", "RuntimeError: boom"]),
    (CommandOutput(0, "[1, 2]", ""), ["not one object"]),
    (CommandOutput(0, '{"checks": 3}', ""), ["no list of checks"]),
    (doctor_output([{"name": "x", "status": "ok", "detail": ""}]), ["'x'", "'ok'", "pass"]),
    (doctor_output([{"name": "x", "status": "pass"}]), ["'x'", "detail"]),
])
def test_what_is_not_a_report_says_why(output: CommandOutput, words: list[str]) -> None:
    with pytest.raises(HeadlessCommandError) as error:
        parse_doctor_output(output)
    for word in words:
        assert word in str(error.value)


@pytest.mark.slow
async def test_doctor_key_shows_each_check_with_its_verdict() -> None:
    runner = FakeRunner(doctor_output())
    app, _engines = make_app(runner)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DoctorScreen)
        assert [call[0] for call in runner.calls] == ["doctor"]
        assert runner.calls[0][1] == app.run_state.config  # no edits: the run's config
        shown = [str(widget.render()) for widget in screen.query(".check")]
        assert len(shown) == len(CHECKS)
        for text, check in zip(shown, CHECKS, strict=True):
            assert text.startswith(check["status"].upper())
            assert check["name"] in text and check["detail"] in text
        assert [w.has_class(c["status"]) for w, c in
                zip(screen.query(".check"), CHECKS, strict=True)] == [True] * 3
        summary = text_of(screen, "#doctor-summary")
        assert "1 passed, 1 warned, 1 failed" in summary and "a check failed" in summary
        assert app.run_state.state == "running"  # the run kept going
        await pilot.press("escape")
        assert not isinstance(app.screen, DoctorScreen)


@pytest.mark.slow
async def test_doctor_shows_a_refused_config_plainly() -> None:
    message = "model.depth = 0 is not allowed: expected an integer >= 1"
    app, _engines = make_app(FakeRunner(CommandOutput(2, "", message)))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DoctorScreen)
        assert "no report" in text_of(screen, "#doctor-summary")
        assert message in text_of(screen, "#doctor-error")
        assert not screen.query(".check")


@pytest.mark.slow
async def test_doctor_checks_the_edited_config_when_it_is_valid() -> None:
    runner = FakeRunner(doctor_output(CHECKS[:1], code=0))
    app, _engines = make_app(runner)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        panel = app.query_one(ConfigPanel)
        panel.query_one(f"#{widget_id('model.depth')}").value = "5"
        await settle(pilot)
        await pilot.press("escape", "d")
        await settle(pilot)
        assert runner.calls[-1][1].model.depth == 5
        assert "edited config" in text_of(app.screen, ".report-title")
        await pilot.press("escape")
        panel.query_one(f"#{widget_id('model.depth')}").value = "zero"  # invalid
        await settle(pilot)
        await pilot.press("escape", "d")
        await settle(pilot)
        assert runner.calls[-1][1] == app.run_state.config
        assert "edits are invalid" in text_of(app.screen, ".report-title")


# --- the lr finder --------------------------------------------------------------------


LRS = tuple(float(lr) for lr in np.logspace(-6, 0, 25))
LOSSES = tuple(2.3 - 1.5 * math.exp(-((math.log10(lr) + 2.5) ** 2)) for lr in LRS)


def test_lr_curve_is_drawn_on_log_lr_without_non_finite_points() -> None:
    losses = list(LOSSES)
    losses[-1] = math.inf
    losses[-2] = math.nan
    losses[-3] = 40.0  # diverged: beyond the axis' cap
    plt = Plot()
    draw_lr_curve(plt, lrs=LRS, losses=losses, suggested_lr=1e-3, width=100, height=30)
    (xs, ys), *_vline = [(list(x), list(y)) for x, y in
                         zip(plt.monitor.x, plt.monitor.y, strict=True)]
    assert xs == pytest.approx([math.log10(lr) for lr in LRS[:-2]])
    assert ys == pytest.approx(losses[:-2])
    _low, hi = plt.monitor.ylim[0]
    assert hi == pytest.approx(LR_CURVE_TOP_FACTOR * losses[0])  # 40 would squash the rest
    text = plt.uncolorize(plt.build())
    assert "suggested lr 1.00e-03" in text and "1.0e-03" in text  # title and line label
    assert "1e-6" in text and "1e-1" in text  # the decades the finite points span


def test_lr_curve_without_a_finite_point_or_a_suggestion_draws_a_frame() -> None:
    plt = Plot()
    draw_lr_curve(plt, lrs=(1e-3, 1e-2), losses=(math.nan, math.inf), suggested_lr=None,
                  width=60, height=12)
    text = plt.uncolorize(plt.build())
    assert "no finite loss" in text and "no suggestion" in text


def test_lr_find_output_reads_the_protocols_non_finite_names() -> None:
    report = {"event": "LrFound", "step": 0, "lrs": [1e-4, 1e-3, 1e-2],
              "losses": [2.3, 1.2, "Infinity"], "suggested_lr": 1e-3,
              "reason": "steepest descent"}
    curve = parse_lr_find_output(CommandOutput(0, json.dumps(report), ""))
    assert curve.lrs == (1e-4, 1e-3, 1e-2) and curve.losses[:2] == (2.3, 1.2)
    assert math.isinf(curve.losses[2])
    assert curve.suggested_lr == 1e-3 and curve.reason == "steepest descent"
    with pytest.raises(HeadlessCommandError, match=r"not an LrFound event.*'x'"):
        parse_lr_find_output(CommandOutput(0, json.dumps({**report, "losses": [1, "x", 2]}),
                                           ""))
    with pytest.raises(HeadlessCommandError, match=r"not an LrFound event.*'big'"):
        parse_lr_find_output(CommandOutput(0, json.dumps({**report, "suggested_lr": "big"}),
                                           ""))
    for wrong in ({**report, "lrs": [1e-4]}, {**report, "event": "EvalDone"},
                  {k: v for k, v in report.items() if k != "event"}):
        with pytest.raises(HeadlessCommandError, match="lr-find"):
            parse_lr_find_output(CommandOutput(0, json.dumps(wrong), ""))


@pytest.mark.slow
async def test_lr_key_asks_the_engine_and_a_applies_the_suggestion() -> None:
    runner = FakeRunner(CommandOutput(0, "{}", ""))
    app, engines = make_app(runner)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("L")
        await settle(pilot)
        engine = engines.current
        assert engine.commands == [protocol.FindLr()]
        screen = app.screen
        assert isinstance(screen, LrFindScreen) and screen.waiting
        assert "running the range test" in text_of(screen, "#lr-find-summary")
        assert runner.calls == []  # the run's own engine answers, not a child
        engine.feed(protocol.LrFound(200, LRS, LOSSES, 3e-3, "steepest descent"))
        await settle(pilot)
        assert app.screen is screen and screen.curve is not None
        summary = text_of(screen, "#lr-find-summary")
        assert "3.00e-03" in summary and "steepest descent" in summary
        assert "tested the run's weights at step 200" in summary  # for a new run
        assert "lr range test suggests lr 3.00e-03" in app.run_state.log[-1].text
        await pilot.press("a")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)  # trained weights: asks first
        assert "weights at step 200" in app.screen.question
        await pilot.press("n")
        await settle(pilot)
        assert not any(isinstance(c, protocol.SetHyper) for c in engine.commands)
        await pilot.press("L", "a")  # the same answer again (still at step 200)
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert engine.commands[-1] == protocol.SetHyper("optim.lr", 3e-3, "lr-find")
        assert app.run_state.config.optim.lr == 3e-3  # acknowledged


@pytest.mark.slow
async def test_a_live_test_at_step_0_applies_at_once_rounded_to_3_digits() -> None:
    app, engines = make_app(FakeRunner(CommandOutput(0, "{}", "")))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("L")
        await settle(pilot)
        raw = 0.007054802310718645  # what a user's log showed
        engines.current.feed(protocol.LrFound(0, LRS, LOSSES, raw, "steepest descent"))
        await settle(pilot)
        assert "tested the run's weights" not in text_of(app.screen, "#lr-find-summary")
        await pilot.press("a")
        await settle(pilot)
        assert not isinstance(app.screen, (ConfirmScreen, LrFindScreen))  # no question
        assert engines.current.commands[-1] == protocol.SetHyper("optim.lr", 7.05e-3,
                                                                 "lr-find")


@pytest.mark.slow
async def test_an_answer_after_the_screen_was_closed_does_not_pop_up_again() -> None:
    app, engines = make_app(FakeRunner(CommandOutput(0, "{}", "")))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("L")
        await settle(pilot)
        await pilot.press("escape")
        engines.current.feed(protocol.LrFound(200, LRS, LOSSES, None, "the loss never fell"))
        await settle(pilot)
        assert not isinstance(app.screen, LrFindScreen)  # a notification says it instead
        assert not any(isinstance(c, protocol.SetHyper) for c in engines.current.commands)


@pytest.mark.slow
async def test_a_refused_range_test_says_why() -> None:
    app, engines = make_app(FakeRunner(CommandOutput(0, "{}", "")))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("L")
        await settle(pilot)
        engines.current.feed(protocol.CommandRejected("FindLr", "no data left", 200))
        await settle(pilot)
        assert "no data left" in text_of(app.screen, "#lr-find-summary")


@pytest.mark.slow
async def test_after_the_run_the_lr_finder_tests_the_config_and_a_edits_it() -> None:
    found = protocol.LrFound(0, LRS, LOSSES, 2e-3, "steepest descent")
    runner = FakeRunner(CommandOutput(0, protocol.to_json(found), ""))
    app, engines = make_app(runner)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        engines.current.finish()
        await settle(pilot)
        await pilot.press("L")
        await settle(pilot)
        assert [call[0] for call in runner.calls] == ["lr-find"]
        assert protocol.FindLr() not in engines.current.commands
        assert "2.00e-03" in text_of(app.screen, "#lr-find-summary")
        await pilot.press("enter")
        await settle(pilot)
        panel = app.query_one(ConfigPanel)
        assert panel.edits == {"optim.lr": 2e-3}
        assert panel.query_one(f"#{widget_id('optim.lr')}").value == repr(2e-3)
        await pilot.press("r")
        await settle(pilot, 6)
        assert engines.current.config is not None
        assert engines.current.config.optim.lr == 2e-3  # the next run has it


@pytest.mark.slow
async def test_new_keys_are_in_the_help_and_greyed_out_when_they_cannot_apply() -> None:
    app, _engines = make_app(FakeRunner(CommandOutput(0, "{}", "")))
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        assert app.check_action("doctor", ()) is True
        assert app.check_action("find_lr", ()) is True
        assert app.check_action("lab", ()) is None  # a single run: no lab
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert any("[d]" in t for t in titles) and any("[L]" in t for t in titles)
        assert not any("[i]" in t for t in titles)
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        assert {"d", "L", "i"} <= {keys for keys, _ in app.screen.key_rows}


# --- the real child process -------------------------------------------------------------


async def test_an_unknown_command_is_refused_before_anything_runs() -> None:
    with pytest.raises(ValueError, match=r"'train'.*doctor, lr-find"):
        await run_engine_command("train", Config())


@pytest.mark.slow
async def test_the_real_doctor_reports_every_check_of_a_tiny_config() -> None:
    output = await asyncio.wait_for(run_engine_command("doctor", tiny_config()), 100)
    report = parse_doctor_output(output)
    assert report.checks and {c.status for c in report.checks} <= {"pass", "warn", "fail"}
    assert all(c.name and c.detail for c in report.checks)
    assert output.returncode == (EXIT_CHECK_FAILED if report.count("fail") else 0)
    sent = json.loads(output.stdout)
    assert (sent["passed"], sent["warned"], sent["failed"]) == (
        report.count("pass"), report.count("warn"), report.count("fail"))


@pytest.mark.slow
async def test_the_real_lr_finder_refusing_a_config_says_why() -> None:
    config = Config().with_values({"data.dataset": "/nonexistent/data.csv"})
    output = await asyncio.wait_for(run_engine_command("lr-find", config), 100)
    with pytest.raises(HeadlessCommandError) as error:
        parse_lr_find_output(output)
    assert "config was refused" in str(error.value)
    assert "/nonexistent/data.csv" in str(error.value)


@pytest.mark.slow
async def test_cancelling_a_headless_command_kills_its_child(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[asyncio.subprocess.Process] = []
    spawn = asyncio.create_subprocess_exec

    async def keep(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await spawn(*args, **kwargs)
        spawned.append(process)
        return process

    monkeypatch.setattr(asyncio, "create_subprocess_exec", keep)
    task = asyncio.create_task(run_engine_command("doctor", tiny_config()))
    while not spawned:
        await asyncio.sleep(0.05)
    task.cancel()  # what closing the doctor's screen does to its worker
    with pytest.raises(asyncio.CancelledError):
        await task
    assert spawned[0].returncode == -9  # SIGKILLed, not left running


@pytest.mark.slow
async def test_the_real_engine_answers_the_lr_key_and_a_applies_it() -> None:
    from tests.test_tui_end_to_end import LONG, wait_for
    from trainlab.engine.host import ThreadEngine

    app = TrainlabApp(tiny_config(**LONG), engine_factory=ThreadEngine)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.run_state.state == "running" and app.run_state.step)
        await pilot.press("space")  # paused: the training thread leaves Pilot alone
        await wait_for(pilot, lambda: app.run_state.state == "paused")
        await pilot.press("L")
        await wait_for(pilot, lambda: isinstance(app.screen, LrFindScreen)
                       and not app.screen.waiting)
        screen = app.screen
        assert isinstance(screen, LrFindScreen) and screen.curve is not None, screen.error
        suggested = screen.suggested
        assert suggested is not None and len(screen.curve.lrs) == len(screen.curve.losses)
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))  # trained weights
        await pilot.press("y")
        await wait_for(pilot, lambda: app.run_state.config.optim.lr == suggested)
        assert any("optim.lr" in e.text and "(lr-find)" in e.text for e in app.run_state.log)
        await app.shutdown()
