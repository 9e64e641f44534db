"""One-key fixes from alerts: which fix ``f`` applies now, applying it (live, or by a
confirmed restart), and the pop-up that says a new alert came.

A live fix sends one SetHyper per change, noted "fix: <kind>" so the run log and the
engine's change log say why; a restart fix starts a new run from the alert's run's
config with the changes. Whatever the user answers applies only to the run the alert
belongs to (``TrainlabApp.run_replaced``).
"""

from __future__ import annotations

import dataclasses

from textual.notifications import Notification, Notify
from textual.widgets import TabbedContent

from trainlab.core import protocol
from trainlab.core.config import ConfigError
from trainlab.core.health import alert_title
from trainlab.tui.controllers.host import AppHost
from trainlab.tui.screens.confirm import ConfirmScreen
from trainlab.tui.screens.fix_picker import FixPicker
from trainlab.tui.state import FIX_NOTE, LOG, RunState
from trainlab.tui.widgets.alerts_panel import AlertsPanel, describe_changes, describe_moved

NOTIFY_SEVERITIES = ("warning", "critical")
"""Alerts that pop up a notification: the run is not learning as it should, and a
problem must never go unseen (docs/field-knowledge.md#never-fail-silently). An info
alert is advice; it waits in the Alerts view and the strip."""
ALERT_NOTIFY_SECONDS = 5.0
"""How long an alert's notification stays: enough to read its two short lines; the
strip (Train view) and the Alerts view keep the alert, so the toast only draws the eye
and must not keep covering the screen (at 80x24 a toast covers its right half)."""


class Fixes:
    """The alerts' fixes and pop-up."""

    def __init__(self, app: AppHost) -> None:
        self.app = app
        self.alert_toast: Notification | None = None
        """The alert notification on screen, if any: a newer alert replaces it."""

    # --- which fix, now ------------------------------------------------------------

    def alerts_view_showing(self) -> bool:
        """Is the Alerts view the one on screen?"""
        tabs = self.app.query(TabbedContent)  # none yet when bindings are checked at start
        return bool(tabs) and tabs.first().active == "alerts"

    def target(self) -> protocol.AlertRaised | None:
        """The alert ``f`` fixes: the highlighted one in the Alerts view, else the newest."""
        if self.alerts_view_showing():
            return self.app.query_one(AlertsPanel).selected_alert
        alerts = self.app.run_state.alerts
        return alerts[0] if alerts else None

    def can_fix(self) -> bool:
        """Has the alert ``f`` would fix a fix that can apply now?"""
        alert = self.target()
        return alert is not None and bool(self.fixes_now(alert))

    def fixes_now(self, alert: protocol.AlertRaised) -> list[tuple[int, protocol.Fix]]:
        """The fixes of ``alert`` that can apply at this moment, each with its number in
        the alert's card (from 1): a live one while the run trains or is paused, and
        once the run ended as a restart fix (its changes on the next run, through the
        same confirmed restart); a restart one unless a run is starting. None for an
        alert the engine already handled (``RunState.handled``)."""
        s = self.app.run_state
        if s.handled(alert):
            return []
        starting = self.app.lifecycle.starting
        now = []
        for number, fix in enumerate(alert.fixes, start=1):
            if not fix.restart and s.ended:
                fix = dataclasses.replace(fix, restart=True)
            if (not starting) if fix.restart else s.active:
                now.append((number, fix))
        return now

    # --- applying one ----------------------------------------------------------------

    def fix(self) -> None:
        """Apply a fix of the selected alert: the only one, or the one picked from a list."""
        self.app.run_worker(self._fix(), name="action_fix", group="fix")

    async def _fix(self) -> None:
        app = self.app
        state, alert = app.run_state, self.target()
        fixes = self.fixes_now(alert) if alert is not None else []
        if alert is None or not fixes:  # checked before the key acted; the run moves on
            return
        fix = fixes[0][1]
        if len(fixes) > 1:
            picker = FixPicker(f"Fix {alert_title(alert.kind)}: a number or Enter "
                               "(Escape: none)", fixes)
            choice = await app.push_screen_wait(picker)
            if choice is None or app.run_replaced(state, f"fix: {choice}"):
                return
            fix = fixes[picker.choices.index(choice)][1]
        if fix.restart:
            await self._restart_with(state, alert, fix)
        else:
            await self._live(state, alert, fix)

    async def _live(self, state: RunState, alert: protocol.AlertRaised,
                    fix: protocol.Fix) -> None:
        """Send the fix's changes to ``state``'s run; first ask if a key it sets has
        moved since the alert (its values were frozen then: "halve the lr" from a since
        lowered lr would raise it)."""
        app, lifecycle = self.app, self.app.lifecycle
        moved = state.changed_since(alert, fix, lifecycle.current)
        if moved:
            question = describe_moved(moved, fix.changes)
            if not await app.push_screen_wait(ConfirmScreen(question)) \
                    or app.run_replaced(state, f"fix: {fix.label}"):
                return
        if not app.run_state.active:  # it may have ended while a dialog was open
            app.notify(f"{fix.label}: the run has {app.run_state.state}; a live fix needs "
                       f"a running run.", title="Fix not applied", severity="warning")
            return
        for key, value in fix.changes.items():
            lifecycle.set_hyper(key, value, note=f"{FIX_NOTE}{alert.kind}")

    async def _restart_with(self, state: RunState, alert: protocol.AlertRaised,
                            fix: protocol.Fix) -> None:
        """Ask, then train ``state``'s config with the fix's changes in a new run."""
        app, lifecycle = self.app, self.app.lifecycle
        try:
            config = state.config.with_values(fix.changes)
        except ConfigError as exc:
            app.notify(f"The fix for {alert.kind} does not make a valid config: {exc}",
                       title="Cannot apply the fix", severity="error", timeout=8)
            return
        changes = describe_changes(fix.changes)
        if state.active:
            question = f"Restart with {changes}? This run stops at step " \
                       f"{state.step}; a new one starts from its config with " \
                       f"this change ({fix.label})."
        else:
            question = f"Start a new run from this run's config with {changes} " \
                       f"({fix.label})?"
        if moved := state.changed_since(alert, fix, lifecycle.current):
            question += f" Note: {describe_moved(moved)}."
        if not await app.push_screen_wait(ConfirmScreen(question)) or lifecycle.starting \
                or app.run_replaced(state, f"fix: {fix.label}"):
            return
        await lifecycle.start(config)
        app.run_state.say("info", f"restarted to apply the fix for {alert.kind}: "
                          f"{fix.label} ({changes})")
        app.refresh_parts({LOG})
        app.action_view("train")

    # --- the pop-up --------------------------------------------------------------------

    def notify(self, alert: protocol.AlertRaised) -> None:
        """Pop up a new warning or critical alert in two short lines, replacing the
        previous alert's pop-up (one at a time); none while the Alerts view shows: the
        alert is right there, and a pop-up would cover it."""
        if alert.severity not in NOTIFY_SEVERITIES or self.alerts_view_showing():
            return
        self.clear_toast()
        body = []
        if alert.layers:
            more = len(alert.layers) - 1
            body.append(alert.layers[0] + (f" +{more}" if more else ""))
        if self.fixes_now(alert):
            body.append("f fix")
        body.append("5 details")
        toast = Notification(" · ".join(body), f"{alert.severity}: {alert_title(alert.kind)}",
                             "error" if alert.severity == "critical" else "warning",
                             ALERT_NOTIFY_SECONDS, markup=False)  # layer names are no markup
        self.alert_toast = toast
        # App.notify returns nothing to remove the toast by; this is what it posts.
        self.app.post_message(Notify(toast))

    def clear_toast(self) -> None:
        """Remove the alert pop-up on screen, if any (other notifications stay)."""
        toast, self.alert_toast = self.alert_toast, None
        if toast is not None and toast in self.app._notifications:
            self.app._unnotify(toast)  # Textual's own removal of one notification
