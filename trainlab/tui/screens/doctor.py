"""The pre-flight doctor in the app: the debugging checklist run on a config (key d).

Before (and while) a run trains, check the loss at init, that one batch can be
overfitted, that every parameter gets a gradient, the inputs and labels, the output
activation against the loss, the batch size, the learning rate
(docs/field-knowledge.md#the-debugging-checklist). The engine's ``doctor`` command does
the checking in a child process; this screen shows its verdicts, each with the numbers
and the explanation, or plainly why there are none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from trainlab.core.doctor_report import FAIL, PASS, WARN, CheckResult, DoctorReport, ReportError
from trainlab.core.exits import EXIT_CHECK_FAILED, EXIT_OK
from trainlab.tui.headless import CommandOutput, HeadlessCommandError, json_report

DOCTOR_EXIT_CODES = (EXIT_OK, EXIT_CHECK_FAILED)
"""``doctor --json`` prints its report when no check failed and when one did; any other
code (a crash building the run, a refused config) comes without one."""
STATUS_STYLE = {PASS: "bold green", WARN: "bold yellow", FAIL: "bold red"}
"""How each verdict is shown."""
RUNNING_TEXT = ("running the checks on a copy, in a process of their own "
                "(a run that is training keeps training)")


def parse_doctor_output(output: CommandOutput) -> DoctorReport:
    """The report ``doctor --json`` printed (``trainlab.core.doctor_report``'s shape).

    The counts on screen are taken from the checks themselves, not from the
    ``passed``/``warned``/``failed`` fields that come with them.

    Raises:
        HeadlessCommandError: no report (refused config, crash, not JSON), or a check
            that is not an object with a string name, a known status and a string
            detail (the message names the check and the field).
    """
    report = json_report(output, "doctor", DOCTOR_EXIT_CODES)
    try:
        return DoctorReport.from_dict(report)
    except ReportError as exc:
        raise HeadlessCommandError(f"doctor: {exc}") from None


def check_text(check: CheckResult) -> Text:
    """A check as the screen shows it: a coloured PASS/WARN/FAIL, its name, its detail.

    Plain ``Text``, not markup: a detail such as ``labels in [0, 9]`` stays as it is.
    """
    text = Text.assemble((f"{check.status.upper():<4}", STATUS_STYLE[check.status]),
                         "  ", (check.name, "bold"))
    for line in check.detail.splitlines() or [""]:
        text.append("\n      " + line)
    return text


class DoctorScreen(ModalScreen[None]):
    """The checklist's verdicts on one config; Escape (or q) closes it.

    ``job`` runs the doctor and returns its output; the screen awaits it in a worker,
    so closing the screen early cancels it (and with it the child process).
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "dismiss", "Close"),
    ]

    def __init__(self, job: Callable[[], Awaitable[CommandOutput]], about: str) -> None:
        super().__init__()
        self.job = job
        self.about = about
        """Which config is checked (the edited one, or the run's), for the title."""
        self.report: DoctorReport | None = None
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="doctor-dialog", classes="report-dialog"):
            yield Static(f"[b]Pre-flight doctor[/b] · {self.about}", classes="report-title")
            yield Static(RUNNING_TEXT, id="doctor-summary")
            yield VerticalScroll(id="doctor-checks")
            yield Static("[dim]Escape: close · arrows / PgUp / PgDn: scroll[/]",
                         classes="report-keys")

    def on_mount(self) -> None:
        self.run_worker(self._run(), exit_on_error=False)

    async def _run(self) -> None:
        try:
            output = await self.job()
        except OSError as exc:
            await self.show_error(f"could not run the doctor: {exc}")
            return
        try:
            report = parse_doctor_output(output)
        except HeadlessCommandError as exc:
            await self.show_error(str(exc))
            return
        await self.show_report(report)

    async def show_report(self, report: DoctorReport) -> None:
        """Show every check and the summary line."""
        self.report = report
        failed, warned = report.count("fail"), report.count("warn")
        verdict = ("[red]a check failed: fix it before training[/]" if failed else
                   "[yellow]worth a look[/]" if warned else "[green]all clear[/]")
        self.query_one("#doctor-summary", Static).update(f"{report.summary()} · {verdict}")
        checks = self.query_one("#doctor-checks", VerticalScroll)
        await checks.mount_all([Static(check_text(check), classes=f"check {check.status}")
                                for check in report.checks])
        checks.focus()

    async def show_error(self, message: str) -> None:
        """No report: say why, as it is (a refused config's message, a crash's end)."""
        self.error = message
        self.query_one("#doctor-summary", Static).update("[b red]no report[/]")
        checks = self.query_one("#doctor-checks", VerticalScroll)
        await checks.mount(Static(Text(message), id="doctor-error"))
        checks.focus()
