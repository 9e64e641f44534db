"""The doctor's alerts: the full list (Alerts view) and the strip on the Train view.

Each alert shows its severity (colour and mark), its kind in plain words, the layers,
the message, the evidence numbers and its fixes, numbered. The list is selectable: the
``f`` key applies the fix of the highlighted alert there. The strip is the newest alert
in two lines with the key that fixes it, so a new alert cannot go unnoticed in the
view a user watches while training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from trainlab.core import protocol
from trainlab.core.config import format_setting
from trainlab.core.health import SEVERITIES, alert_title
from trainlab.core.text import format_number
from trainlab.tui.feed import RunView
from trainlab.tui.state import ALERTS, RunState

SEVERITY_STYLE = {"info": "bold cyan", "warning": "bold yellow", "critical": "bold red"}
"""The colour of an alert's severity here, in the strip and in the layer table."""
SEVERITY_MARK = {"info": "●", "warning": "▲", "critical": "✖"}
"""A mark per severity, so an alert reads without colour too (monochrome terminals)."""
HANDLED_STYLE = "bold green"
"""An alert the engine already dealt with (e.g. rolled back): no longer a problem."""
EVIDENCE_SPEC = ".3g"
"""Evidence numbers in 3 significant figures: enough to compare with a threshold."""


def format_value(value: Any, spec: str = EVIDENCE_SPEC) -> str:
    """A number compactly (floats in ``spec``, ints whole), a sequence as [a, b], else str."""
    if isinstance(value, (bool, int, str)):  # ints (counts, steps) whole, not 1e+03
        return str(value)
    if isinstance(value, float):
        return format_number(value, spec)
    if isinstance(value, Sequence):
        return "[" + ", ".join(format_value(v, spec) for v in value) + "]"
    return str(value)


def format_evidence(evidence: Mapping[str, Any]) -> str:
    """The numbers behind a diagnosis on one line: ``name value · name value``."""
    return " · ".join(f"{name} {format_value(value)}" for name, value in evidence.items())


def describe_changes(changes: Mapping[str, Any]) -> str:
    """A fix's config changes as ``key = value, ...`` (the words the app asks with),
    each value written as ``--set`` reads it (``format_setting``): the value the fix
    sets exactly, as the headless fixes print it."""
    return ", ".join(f"{key} = {format_setting(value)}" for key, value in changes.items())


def describe_moved(moved: Mapping[str, tuple[Any, Any]],
                   changes: Mapping[str, Any] | None = None) -> str:
    """The keys of a fix that moved since its alert (key -> (value then, value now)) in
    words; with the fix's ``changes``, the question whether to set them anyway:
    ``optim.lr changed since this alert (was 0.001, now 0.0001); set it to 0.0005
    anyway?``"""
    said = ", ".join(f"{key} changed since this alert (was {format_setting(then)}"
                     f", now {format_setting(now)})"
                     for key, (then, now) in moved.items())
    if changes is None:
        return said
    if len(changes) == 1:
        target = f"it to {format_setting(next(iter(changes.values())))}"
    else:
        target = describe_changes(changes)
    return f"{said}; set {target} anyway?"


def describe_fix(fix: protocol.Fix) -> str:
    """A fix's label and what applying it does: now (live) or with a restart."""
    how = "restart" if fix.restart else "now"
    return f"{fix.label} ({how}: {describe_changes(fix.changes)})"


def severity_label(severity: str) -> Text:
    """The severity's mark and name in its colour."""
    return Text(f"{SEVERITY_MARK[severity]} {severity}", style=SEVERITY_STYLE[severity])


def alert_rows(alert: protocol.AlertRaised) -> list[tuple[str, Text]]:
    """One alert in full as (heading, text) rows: layers, why, evidence, fixes."""
    rows = [("layers", Text(", ".join(alert.layers) if alert.layers else "the whole run")),
            ("why", Text(alert.message))]
    if alert.evidence:
        rows.append(("evidence", Text(format_evidence(alert.evidence))))
    fixes = Text()
    for number, fix in enumerate(alert.fixes, start=1):
        fixes.append("\n" if number > 1 else "")
        fixes.append(f"{number}. ", style="bold")
        fixes.append(describe_fix(fix))
    rows.append(("fixes", fixes if alert.fixes else Text("none to apply with a key",
                                                         style="dim")))
    return rows


def alert_card(alert: protocol.AlertRaised, handled: str | None = None) -> Group:
    """One alert as the Alerts view shows it: a title line over headed rows, whose text
    wraps under itself (not under the headings) in a narrow terminal. ``handled`` (see
    ``RunState.handled``) says how the engine already dealt with it: shown in the title
    line, in green, and no fix is offered then."""
    title = severity_label(alert.severity)
    title.append(f"  {alert_title(alert.kind)}", style="bold")
    title.append(f"  step {alert.step:,}", style="dim")
    if handled:
        title.append(f"  {handled}", style=HANDLED_STYLE)
    rows = Table.grid(padding=(0, 1))
    rows.add_column(style="dim", no_wrap=True)
    rows.add_column()
    for heading, text in alert_rows(alert):
        if handled and heading == "fixes":
            text = Text(f"none now ({handled})", style="dim")
        rows.add_row(f"  {heading}", text)
    return Group(title, rows)


FixesNow = Callable[[protocol.AlertRaised], Sequence[tuple[int, protocol.Fix]]]
"""The fixes of an alert that can apply at this moment, each with its number in the
alert's card (the app decides: which apply depends on the run and on a start)."""


class AlertsPanel(RunView, Vertical):
    """Every alert of the run, newest first; the highlighted one is the one ``f`` fixes."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.alerts: list[protocol.AlertRaised] = []
        self._shown = 0
        self._handled: dict[int, str] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="alerts-hint")
        yield OptionList(id="alerts-list")

    def on_mount(self) -> None:
        self._show_hint()

    def show_run(self, state: RunState, changed: frozenset[str]) -> None:
        """Show the run's alerts when they (or what the engine handled) changed."""
        if ALERTS in changed:
            self.show(state.alerts, state.handled_alerts())

    @property
    def selected_alert(self) -> protocol.AlertRaised | None:
        """The highlighted alert, if there is one."""
        index = self.query_one(OptionList).highlighted
        return self.alerts[index] if index is not None and index < len(self.alerts) else None

    def show(self, alerts: list[protocol.AlertRaised],
             handled: Mapping[int, str] | None = None) -> None:
        """Show ``alerts`` (newest first), keeping the highlight on the same alert;
        ``handled`` maps ``id(alert)`` to how the engine dealt with it."""
        handled = dict(handled or {})
        if alerts is self.alerts and len(alerts) == self._shown and handled == self._handled:
            return
        options = self.query_one(OptionList)
        selected = self.selected_alert
        self.alerts, self._shown, self._handled = alerts, len(alerts), handled
        options.clear_options()
        # Separators (None) are not options: option i is alerts[i].
        content: list[Option | None] = []
        for i, alert in enumerate(alerts):
            if i:
                content.append(None)
            content.append(Option(alert_card(alert, handled.get(id(alert)))))
        options.add_options(content)
        if alerts:
            index = next((i for i, a in enumerate(alerts) if a is selected), 0)
            options.highlighted = index
        self._show_hint()

    def _show_hint(self) -> None:
        hint = self.query_one("#alerts-hint", Static)
        if not self.alerts:
            hint.update("No alerts. The doctor watches the layer statistics and the loss "
                        "while the run trains; what it finds shows here.")
            return
        count = f"{len(self.alerts)} alert{'s' if len(self.alerts) > 1 else ''}"
        hint.update(f"{count}, newest first: ↑/↓ to choose, [b]f[/b] to apply a fix.")


class AlertStrip(RunView, Static):
    """The newest alert in two lines, with the key that fixes it; hidden while none."""

    def __init__(self, fixes_now: FixesNow = lambda alert: (), *,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self.fixes_now = fixes_now
        """Which of an alert's fixes the key can apply now (the app says)."""

    def show_run(self, state: RunState, changed: frozenset[str]) -> None:
        """Show the newest alert when the alerts (or which fixes apply) changed."""
        if ALERTS in changed:
            newest = state.alerts[0] if state.alerts else None
            self.show(state.alerts, self.fixes_now(newest) if newest is not None else [],
                      state.handled(newest) if newest is not None else None,
                      state.applied_fix())

    def show(self, alerts: Sequence[protocol.AlertRaised],
             fixes_now: Sequence[tuple[int, protocol.Fix]],
             handled: str | None = None, applied: str = "") -> None:
        """Show ``alerts[0]``; ``fixes_now`` are its fixes that can apply at this moment,
        each with its number in the Alerts view's card; ``handled`` says how the engine
        already dealt with it (then no fix is offered); ``applied``, the fix the engine
        applied since it came (``RunState.applied_fix``), is said instead of the key."""
        self.display = bool(alerts)
        for severity in SEVERITIES:
            self.set_class(bool(alerts) and alerts[0].severity == severity, f"-{severity}")
        if not alerts:
            return
        alert = alerts[0]
        first = severity_label(alert.severity)
        first.append(f" {alert_title(alert.kind)}", style="bold")
        if alert.layers:
            first.append(f" in {', '.join(alert.layers)}")
        first.append(f" (step {alert.step:,}): ", style="dim")
        first.append(alert.message)
        second = Text()
        if handled:
            second.append(handled, style=HANDLED_STYLE)
        elif applied:
            second.append(applied, style=HANDLED_STYLE)
        elif len(fixes_now) == 1:
            second.append("f", style="bold reverse")
            second.append(f" fix: {describe_fix(fixes_now[0][1])}")
        elif fixes_now:
            second.append("f", style="bold reverse")
            numbers = ", ".join(str(number) for number, _fix in fixes_now)
            second.append(f" fix: pick one of {len(fixes_now)} ({numbers})")
        elif alert.fixes:
            second.append("no fix can apply while the next run starts", style="dim")
        else:
            second.append("no fix to apply with a key", style="dim")
        second.append("   ")
        second.append("press ")
        second.append("5", style="bold reverse")
        more = f", {len(alerts)} in all" if len(alerts) > 1 else ""
        second.append(f" for details{more}")
        # One line each (app.tcss: no wrap, an ellipsis): the Alerts view has the rest.
        self.update(Text("\n").join((first, second)))
