"""The learning-rate finder in the app: the range test's curve and its suggestion (key L).

Too small an lr trains slowly, too large a one oscillates or diverges; the range test
(raise the lr exponentially on a copy of the model, watch the loss) shows where the
loss falls fastest (docs/field-knowledge.md#learning-rate). While the run trains the
engine runs the test (``FindLr`` answered by ``LrFound``); after it ended, the engine's
``lr-find`` command runs it on the config. Either way this screen draws the curve,
names the suggestion and applies it with one key.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult, RenderResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static
from textual_plotext import PlotextPlot

from trainlab.core import protocol
from trainlab.tui.headless import CommandOutput, HeadlessCommandError, json_report
from trainlab.tui.plotting import draw_lr_curve

APPLY_NOW = "set optim.lr to it now (marked on the chart)"
"""What applying does while the run trains: a live change, like the lr keys."""
APPLY_AT_RESTART = "put it in the Config view's optim.lr for the next run (r)"
"""What applying does after the run ended: an edit, used when the user restarts."""
RUNNING_TEXT = "running the range test... (a few seconds)"
LR_SIGNIFICANT_DIGITS = 3
"""The suggestion is applied rounded to this many significant digits: the range test
samples the lr about a tenth of a decade apart, so further digits are noise (a log
showed optim.lr = 0.007054802310718645), and 3 digits read back as typed."""


def round_lr(lr: float) -> float:
    """``lr`` to ``LR_SIGNIFICANT_DIGITS`` significant digits (7.0548e-3 -> 7.05e-3)."""
    return float(f"{lr:.{LR_SIGNIFICANT_DIGITS}g}")


def trained_weights_note(step: int) -> str:
    """Why a suggestion from a live test at ``step`` > 0 is not for the running run: the
    range test is meant for fresh weights, and a trained net's loss falls fastest at a
    higher lr than it can keep training at (too large an lr oscillates or diverges)."""
    return (f"This tested the run's weights at step {step:,}, already trained: a trained "
            "net's curve often suggests too high an lr. The suggestion is for a new run "
            "(the classic use); applying it to this run asks first.")


def parse_lr_find_output(output: CommandOutput) -> protocol.LrFound:
    """The result ``lr-find --json`` printed: one ``LrFound`` event, the same the engine
    answers a live ``FindLr`` with (``protocol.from_json`` reads it, non-finite losses
    included).

    Raises:
        HeadlessCommandError: no report (refused config, crash, not JSON), not an
            LrFound event, a field missing or of the wrong type (the message names the
            field), or lrs and losses of different lengths.
    """
    report = json_report(output, "lr-find")
    try:
        found = protocol.from_dict(report)
    except ValueError as exc:
        raise HeadlessCommandError(f"lr-find: not an LrFound event: {exc}") from None
    if not isinstance(found, protocol.LrFound):
        raise HeadlessCommandError(f"lr-find: printed a {type(found).__name__}, not an "
                                   "LrFound event")
    if len(found.lrs) != len(found.losses):
        raise HeadlessCommandError(f"lr-find: {len(found.lrs)} lrs but {len(found.losses)} "
                                   "losses")
    return found


class LrCurveChart(PlotextPlot):
    """The range test's curve (``trainlab.tui.plotting.draw_lr_curve``), drawn when painted."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.curve: protocol.LrFound | None = None

    def show(self, curve: protocol.LrFound) -> None:
        """Draw ``curve`` from now on."""
        self.curve = curve
        self.refresh()

    def render(self) -> RenderResult:
        """Draw at the widget's current size (the curve is small: no caching needed)."""
        curve = self.curve
        draw_lr_curve(self.plt, lrs=curve.lrs if curve else (),
                      losses=curve.losses if curve else (),
                      suggested_lr=curve.suggested_lr if curve else None,
                      width=self.size.width, height=self.size.height)
        return super().render()


class LrFindScreen(ModalScreen[float | None]):
    """The range test: waiting, then its curve and suggestion, or why there is none.

    ``a`` or Enter dismisses it with the suggested lr (the app applies it); Escape with
    None. With a ``job`` (the headless ``lr-find`` on a config) the screen runs it in
    a worker, so closing early cancels it; without one, the app hands the result
    over with :meth:`show_curve` or :meth:`show_error` when the engine answers.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a,enter", "apply", "Apply the lr"),
        Binding("escape,q", "close", "Close"),
    ]

    def __init__(self, apply_hint: str, about: str,
                 job: Callable[[], Awaitable[CommandOutput]] | None = None) -> None:
        super().__init__()
        self.apply_hint = apply_hint
        """What applying does here: now on the running run, or at the next restart."""
        self.about = about
        """What is tested (the running run's weights, or a config), for the title."""
        self.job = job
        self.curve: protocol.LrFound | None = None
        self.error: str | None = None
        self._composed = False
        """Set on mount: before it, a result is kept and shown on mount."""

    @property
    def tested_step(self) -> int:
        """The step whose weights the live test copied; 0 for fresh weights (step 0, or
        the headless test of a config) and while no curve is in."""
        return self.curve.step if self.curve is not None and self.job is None else 0

    @property
    def waiting(self) -> bool:
        """Is the result still to come?"""
        return self.curve is None and self.error is None

    def compose(self) -> ComposeResult:
        with Vertical(id="lr-find-dialog", classes="report-dialog"):
            yield Static(Text.assemble(("Learning-rate range test", "bold"), " · ", self.about),
                         classes="report-title")
            yield Static(RUNNING_TEXT, id="lr-find-summary")
            yield LrCurveChart(id="lr-find-chart")
            yield Static("[dim]Escape: close[/]", id="lr-find-keys", classes="report-keys")

    def on_mount(self) -> None:
        self._composed = True
        self.query_one(LrCurveChart).display = False
        if self.curve is not None:  # handed over before the screen was shown
            self.show_curve(self.curve)
        elif self.error is not None:
            self.show_error(self.error)
        elif self.job is not None:
            self.run_worker(self._run(self.job), exit_on_error=False)

    async def _run(self, job: Callable[[], Awaitable[CommandOutput]]) -> None:
        try:
            output = await job()
        except OSError as exc:
            self.show_error(f"could not run lr-find: {exc}")
            return
        try:
            curve = parse_lr_find_output(output)
        except HeadlessCommandError as exc:
            self.show_error(str(exc))
            return
        self.show_curve(curve)

    def show_curve(self, curve: protocol.LrFound) -> None:
        """Draw the curve; name the suggestion and the key that applies it (at once, or
        as soon as the screen is shown)."""
        self.curve, self.error = curve, None
        if not self._composed:
            return
        if curve.suggested_lr is None:
            summary = Text.assemble(("no suggestion: ", "bold yellow"), curve.reason)
        else:
            summary = Text.assemble((f"suggested lr {curve.suggested_lr:.2e}", "bold green"),
                                    f" ({curve.reason})")
        if self.tested_step > 0:
            summary.append(f"\n{trained_weights_note(self.tested_step)}", "yellow")
        self.query_one("#lr-find-summary", Static).update(summary)
        chart = self.query_one(LrCurveChart)
        chart.display = True
        chart.show(curve)
        keys = f"a / Enter: {self.apply_hint} · " if curve.suggested_lr is not None else ""
        self.query_one("#lr-find-keys", Static).update(f"[dim]{keys}Escape: close[/]")
        self.refresh_bindings()

    def show_error(self, message: str) -> None:
        """No curve: say why, as it is."""
        self.error = message
        if not self._composed:
            return
        self.query_one("#lr-find-summary", Static).update(
            Text.assemble(("no result: ", "bold red"), message))
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Apply only once there is a suggestion to apply."""
        if action == "apply":
            return self.suggested is not None or None
        return True

    @property
    def suggested(self) -> float | None:
        """The suggested lr (``round_lr``), when the result is in and has one that can be
        applied."""
        lr = self.curve.suggested_lr if self.curve is not None else None
        return round_lr(lr) if lr is not None and math.isfinite(lr) and lr > 0 else None

    def action_apply(self) -> None:
        """Close with the suggested lr, for the app to apply."""
        if self.suggested is not None:
            self.dismiss(self.suggested)

    def action_close(self) -> None:
        """Close without applying anything."""
        self.dismiss(None)
