"""What the app knows about the run: protocol events folded into plain state.

No widgets here, so the folding is tested without a screen. ``RunState.apply`` takes
one event and says which parts of the screen it changed; the app's pump applies a
whole batch of events and then tells the widgets those parts (``trainlab.tui.feed``).
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, assert_never

from trainlab.core import protocol
from trainlab.core.config import Config, ConfigError, format_setting, from_dict
from trainlab.core.health import alert_title, severity_rank
from trainlab.core.protocol import (
    AlertRaised,
    Attached,
    CheckpointSaved,
    CommandRejected,
    ControlChanged,
    EngineFailed,
    EvalDone,
    Event,
    HyperChanged,
    LayerStatsSnapshot,
    LrFound,
    MetricsBatch,
    NonFiniteDetected,
    Notice,
    RunFinished,
    RunStarted,
    StateChanged,
)
from trainlab.tui.series import Series

SPARK_POINTS = 24
"""Snapshots of history kept per layer for the layer table's sparklines."""

# The parts of the screen an event can change (what ``apply`` returns).
CHART, LAYERS, STATUS, LOG, CONFIG, HISTOGRAM = (
    "chart", "layers", "status", "log", "config", "histogram")
ALERTS = "alerts"
"""The alerts strip and panel, and the layer table's alert highlights."""
ALL_PARTS = (CHART, LAYERS, STATUS, LOG, CONFIG, HISTOGRAM, ALERTS)
RUN = "run"
"""Not a part an event changes: a new run replaced the state (a start or restart), so
what shows a run drops the last one's (the chart its series, the config form its edits)."""

FIX_NOTE = "fix: "
"""How a live change sent by a one-key fix is noted ("fix: <alert kind>"): its
acknowledgement says the fix was applied."""
SEVERITY_LOG_LEVEL = {"info": "info", "warning": "warning", "critical": "error"}
"""The run-log level of an alert: a critical one (the run cannot learn as it is) is an
error line, red like a failure."""


@dataclass(frozen=True)
class LogEntry:
    """One line of the run log; failures carry their traceback."""

    step: int
    level: str
    """info, warning or error."""
    text: str
    traceback: str = ""


@dataclass
class RunState:
    """Everything shown about one run, updated event by event."""

    config: Config
    """The run's config as the engine runs it: hot changes are folded in when acknowledged."""
    state: str = "starting"
    reason: str = ""
    step: int = 0
    epoch: int = 0
    steps_per_sec: float = 0.0
    lr: float | None = None
    started: protocol.RunStarted | None = None
    train_loss: Series = field(default_factory=Series)
    lr_history: Series = field(default_factory=Series)
    val_loss: Series = field(default_factory=Series)
    val_accuracy: Series = field(default_factory=Series)
    markers: list[tuple[int, str]] = field(default_factory=list)
    """(step, label) where a hyperparameter or the optimizer changed: the chart's markers."""
    snapshot: protocol.LayerStatsSnapshot | None = None
    layer_history: dict[str, collections.deque[protocol.LayerStats]] = field(
        default_factory=dict)
    histograms: dict[tuple[str, str], tuple[int, protocol.Histogram]] = field(
        default_factory=dict)
    """(layer, quantity) -> (step, the latest histogram of it)."""
    log: list[LogEntry] = field(default_factory=list)
    failure: protocol.EngineFailed | None = None
    finished: protocol.RunFinished | None = None
    last_eval: protocol.EvalDone | None = None
    nonfinite: protocol.NonFiniteDetected | None = None
    alerts: list[protocol.AlertRaised] = field(default_factory=list)
    """The doctor's alerts, newest first."""
    alerted_layers: dict[str, str] = field(default_factory=dict)
    """Layer name -> the worst severity among the alerts that name it."""
    values_at_alert: dict[int, dict[str, Any]] = field(default_factory=dict)
    """``id(alert)`` -> the run's values of the keys its fixes change, as they were when
    it was raised (events arrive in order, so ``config`` then is the engine's config
    when it diagnosed): a fix's values are frozen then, and the app asks before
    applying one whose keys have moved since (see ``changed_since``)."""
    rollbacks: list[protocol.HyperChanged] = field(default_factory=list)
    """The lr changes the engine made rolling back (``run.on_nonfinite = rollback``:
    ``HyperChanged.rollback``), in order: what marks a non_finite alert handled
    (``handled``)."""
    run_id: str = ""
    """The run's directory name under run.dir (``trainlab attach`` takes it)."""
    client: int = 0
    """This app's client id on the run's socket (0: not attached to one)."""
    role: str = "control"
    """control (this app steers the run) or view (another client does: keys that would
    change the run are disabled until TakeControl)."""
    fix_applied: tuple[int, str, dict[str, Any]] = (-1, "", {})
    """(number of alerts then, the alert's kind, key -> new value) of the last one-key
    fix the engine applied (its ``HyperChanged`` noted "fix: <kind>"): the alert strip
    says so until the next alert (``applied_fix``)."""
    lr_found: protocol.LrFound | None = None
    """The latest answer of the engine's live lr range test, kept so that ``L`` shows it
    again while the run is still at the step it tested."""

    @property
    def active(self) -> bool:
        """Is the engine training or paused (as opposed to starting or ended)?"""
        return self.state in ("running", "paused")

    @property
    def shown_state(self) -> str:
        """The state in one word as the screen shows it: a run that finished because it
        was stopped says stopped (as ``trainlab runs`` does)."""
        if self.state == "finished" and self.finished is not None \
                and self.finished.reason == "stopped":
            return "stopped"
        return self.state

    @property
    def ended(self) -> bool:
        """Has the run finished or failed?"""
        return self.state in ("finished", "failed")

    def changed_since(self, alert: protocol.AlertRaised, fix: protocol.Fix,
                      current: Callable[[str], Any]) -> dict[str, tuple[Any, Any]]:
        """The keys of ``fix`` whose value moved since ``alert`` was raised: key ->
        (value then, value now), where ``current(key)`` says what it is now.

        An alert this state never folded (or a key it could not read then) has no
        baseline and so reports nothing.
        """
        then = self.values_at_alert.get(id(alert), {})
        moved = {}
        for key in fix.changes:
            if key in then and (now := current(key)) != then[key]:
                moved[key] = (then[key], now)
        return moved

    def applied_fix(self) -> str:
        """The one-key fix the engine applied since the newest alert came, in words
        (``fix applied: optim.lr = 0.0005``), or "" when none did."""
        count, kind, changes = self.fix_applied
        if not changes or count != len(self.alerts):
            return ""
        values = ", ".join(f"{key} = {format_setting(value)}" for key, value in changes.items())
        return f"fix applied: {values} ({alert_title(kind)})"

    def handled(self, alert: protocol.AlertRaised) -> str | None:
        """How the engine already dealt with ``alert``, in words, or None: a non_finite
        alert is handled by the first rollback at or after its step (the weights went
        back to finite ones with a lower lr, docs/field-knowledge.md#nan-and-inf), so its
        fixes are no longer offered. Rollbacks and the alert can arrive in either order."""
        if alert.kind != "non_finite":
            return None
        rollback = next((r for r in self.rollbacks if r.step >= alert.step), None)
        if rollback is None:
            return None
        return (f"handled: rolled back at step {rollback.step:,}, lr "
                f"{_short(rollback.old)} -> {_short(rollback.new)}")

    def handled_alerts(self) -> dict[int, str]:
        """``id(alert)`` -> how the engine dealt with it, for the alerts it handled."""
        return {id(a): text for a in self.alerts if (text := self.handled(a))}

    def say(self, level: str, text: str, traceback: str = "", step: int | None = None) -> None:
        """Add a line to the run log (the app's own messages go here too)."""
        self.log.append(LogEntry(self.step if step is None else step, level, text, traceback))

    def apply(self, event: Event) -> set[str]:
        """Fold one event in; returns the parts of the screen it changed. Anything else
        (a command in the wrong queue) changes nothing."""
        if not protocol.is_event(event):
            return set()
        match event:
            case protocol.RunStarted():
                return self._run_started(event)
            case protocol.Attached():
                return self._attached(event)
            case protocol.ControlChanged():
                return self._control_changed(event)
            case protocol.MetricsBatch():
                return self._metrics(event)
            case protocol.EvalDone():
                return self._eval_done(event)
            case protocol.StateChanged():
                return self._state_changed(event)
            case protocol.HyperChanged():
                return self._hyper_changed(event)
            case protocol.CommandRejected():
                return self._command_rejected(event)
            case protocol.CheckpointSaved():
                return self._checkpoint_saved(event)
            case protocol.Notice():
                return self._notice(event)
            case protocol.EngineFailed():
                return self._engine_failed(event)
            case protocol.NonFiniteDetected():
                return self._nonfinite(event)
            case protocol.LrFound():
                return self._lr_found(event)
            case protocol.AlertRaised():
                return self._alert(event)
            case protocol.LayerStatsSnapshot():
                return self._snapshot(event)
            case protocol.RunFinished():
                return self._run_finished(event)
            case _:
                assert_never(event)

    def _run_started(self, e: RunStarted) -> set[str]:
        self.started = e
        if e.resumed_from_step is not None:
            # Resumed from a checkpoint: what an earlier engine recorded past it (before a
            # crash) is trained again, so the curves go back to the checkpoint's step.
            step = e.resumed_from_step
            for series in (self.train_loss, self.lr_history, self.val_loss,
                           self.val_accuracy):
                series.truncate_after(step)
            self.markers = [(at, label) for at, label in self.markers if at <= step]
            self.step = step
            self.say("info", f"continues from the checkpoint of step {step:,}", step=step)
        # The engine's effective config (e.g. resolved paths) is the truth.
        with contextlib.suppress(ConfigError):
            self.config = from_dict(e.config)
        if e.run_dir:
            self.run_id = os.path.basename(e.run_dir)
        d = e.dataset
        self.say("info", f"started: {e.model.arch}, {e.model.params:,} parameters on "
                 f"{d.name} ({d.train_size} train / {d.val_size} val); loss {e.loss}; "
                 f"{e.device}, {e.threads} thread(s); {e.total_steps} steps", step=0)
        return {STATUS, LOG, CONFIG, CHART}

    def _attached(self, e: Attached) -> set[str]:
        self.run_id, self.client, self.role = e.run_id, e.client, e.role
        if e.role == "view":
            self.say("warning", "another client controls this run: viewing only (t takes "
                     "control)")
        return {STATUS, LOG}

    def _control_changed(self, e: ControlChanged) -> set[str]:
        if not self.client:
            return set()
        role = "control" if e.controller == self.client else "view"
        if role != self.role:
            self.role = role
            self.say("info" if role == "control" else "warning",
                     "this app controls the run" if role == "control"
                     else f"viewing only: {e.reason} (t takes control back)")
        return {STATUS, LOG}

    def _metrics(self, e: MetricsBatch) -> set[str]:
        if not e.steps:
            return set()
        self.train_loss.extend(e.steps, e.losses)
        self.lr_history.extend(e.steps, e.lrs)
        self.step, self.epoch = e.steps[-1], e.epoch
        self.steps_per_sec, self.lr = e.steps_per_sec, e.lrs[-1]
        return {CHART, STATUS}

    def _eval_done(self, e: EvalDone) -> set[str]:
        self.last_eval = e
        self.val_loss.append(e.step, e.val_loss)
        if e.val_accuracy is not None:
            self.val_accuracy.append(e.step, e.val_accuracy)
        return {CHART, STATUS}

    def _state_changed(self, e: StateChanged) -> set[str]:
        if e.state != self.state and e.state in ("paused", "running") and e.step > 0:
            self.say("info", f"{e.state} ({e.reason})" if e.reason else e.state, step=e.step)
        self.state, self.reason = e.state, e.reason
        if e.step >= 0:
            self.step = max(self.step, e.step)
        return {STATUS, LOG}

    def _hyper_changed(self, e: HyperChanged) -> set[str]:
        note = f" ({e.note})" if e.note else ""
        self.say("info", f"{e.key}: {e.old!r} -> {e.new!r}{note}", step=e.step)
        lr_before = self.config.optim.lr
        # The same with_value as the engine's: a new optimizer moves lr to its own default
        # unless the user set one.
        self.config = self.config.with_value(e.key, e.new)
        if e.key == "optim.lr":  # shown now, not only from the next metrics batch
            self.lr = e.new
        short = e.key.split(".", 1)[1]
        label = f"{short}={_short(e.new)}"
        if e.key == "optim.name":
            moved = self.config.optim.lr != lr_before
            label = f"{e.new} lr={_short(self.config.optim.lr)}" if moved else f"{e.new}"
            if moved:
                self.lr = self.config.optim.lr
        self.markers.append((e.step, label))
        if e.note.startswith(FIX_NOTE):  # one fix's changes come one by one
            kind = e.note.removeprefix(FIX_NOTE)
            count, kind_then, changes = self.fix_applied
            if count != len(self.alerts) or kind != kind_then:
                changes = {}
            self.fix_applied = (len(self.alerts), kind, {**changes, e.key: e.new})
            return {CHART, STATUS, LOG, CONFIG, ALERTS}
        if e.rollback:
            self.rollbacks.append(e)
            return {CHART, STATUS, LOG, CONFIG, ALERTS}
        return {CHART, STATUS, LOG, CONFIG}

    def _command_rejected(self, e: CommandRejected) -> set[str]:
        self.say("warning", f"{e.command_type} refused: {e.reason}", step=e.step)
        return {LOG}

    def _checkpoint_saved(self, e: CheckpointSaved) -> set[str]:
        self.say("info", f"checkpoint saved: {e.path}", step=e.step)
        return {LOG}

    def _notice(self, e: Notice) -> set[str]:
        self.say(e.level, e.message, step=e.step)
        return {LOG}

    def _engine_failed(self, e: EngineFailed) -> set[str]:
        self.failure = e
        what = {"config": "bad config", "user_code": "error in your code",
                "internal": "the engine failed"}.get(e.kind, e.kind)
        # step -1: the engine died without knowing the step (the app says so for it).
        self.say("error", f"{what}: {e.message}", e.traceback,
                 step=e.step if e.step >= 0 else self.step)
        return {LOG, STATUS}

    def _nonfinite(self, e: NonFiniteDetected) -> set[str]:
        self.nonfinite = e
        self.say("error", f"non-finite values: {e.message}", step=e.step)
        return {LOG, LAYERS}

    def _lr_found(self, e: LrFound) -> set[str]:
        self.lr_found = e
        lr = f"suggests lr {e.suggested_lr:.2e}" if e.suggested_lr is not None \
            else "has no suggestion"
        self.say("info", f"lr range test {lr} ({e.reason})", step=e.step)
        return {LOG}

    def _alert(self, e: AlertRaised) -> set[str]:
        rank = severity_rank(e.severity)  # first: an unknown severity changes nothing
        self.alerts.insert(0, e)  # kept for the run's life, so id(e) stays unique
        then = {}
        for key in {key for fix in e.fixes for key in fix.changes}:
            with contextlib.suppress(ConfigError):  # not a config key: no baseline
                then[key] = self.config.get(key)
        self.values_at_alert[id(e)] = then
        for layer in e.layers:
            shown = self.alerted_layers.get(layer)
            if shown is None or severity_rank(shown) < rank:
                self.alerted_layers[layer] = e.severity
        where = f" in {', '.join(e.layers)}" if e.layers else ""
        fixes = "; ".join(f"{i}) {fix.label}" for i, fix in enumerate(e.fixes, start=1))
        self.say(SEVERITY_LOG_LEVEL[e.severity],
                 f"alert ({e.severity}): {alert_title(e.kind)}{where}: {e.message}"
                 + (f" Fixes: {fixes}" if fixes else ""), step=e.step)
        return {ALERTS, LAYERS, LOG}

    def _snapshot(self, e: LayerStatsSnapshot) -> set[str]:
        self.snapshot = e
        for row in e.layers:
            history = self.layer_history.setdefault(
                row.name, collections.deque(maxlen=SPARK_POINTS))
            history.append(row)
        for hist in e.histograms:
            self.histograms[(hist.layer, hist.quantity)] = (e.step, hist)
        return {LAYERS, HISTOGRAM} if e.histograms else {LAYERS}

    def _run_finished(self, e: RunFinished) -> set[str]:
        self.finished = e
        f = e.final
        if e.reason != "failed":
            acc = (f", val accuracy {100 * f.val_accuracy:.1f}%"
                   if f.val_accuracy is not None else "")
            val = f", val loss {f.val_loss:.4g}" if f.val_loss is not None else ""
            self.say("info", f"{e.reason}: step {f.step}, epoch {f.epoch}{val}{acc} "
                     f"in {f.elapsed_s:.1f} s", step=f.step)
        return {STATUS, LOG}


def _short(value: Any) -> str:
    """A marker label's value: numbers in 3 significant figures."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.3g}"
    return str(value)
