"""A run at a glance (``RunSummary``) and how its status follows from its lock and its
events: running, paused, finished, stopped, failed, crashed, or not yours."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainlab.core import protocol
from trainlab.core.rundir import LOG_FILE

STATUSES = ("running", "paused", "finished", "stopped", "failed", "crashed", "not yours")
"""What ``summarize`` says a run is: running or paused (its engine is alive), finished
(completed or stopped early by rule), stopped (on request or by a signal), failed
(refused, an error, or a non-finite loss), crashed (the engine is gone without a final
event: offer ``trainlab resume``). ``list_runs`` adds "not yours": a run directory
another user owns (private to them: not read, resumed or attached to)."""


@dataclass(frozen=True)
class RunSummary:
    """One run at a glance: what ``trainlab runs`` lists and the app offers to attach."""

    id: str
    path: Path
    status: str
    """One of ``STATUSES``."""
    step: int
    epoch: int
    best_val_loss: float | None
    """Lowest finite validation loss so far; None before the first evaluation."""
    val_accuracy: float | None
    """At the latest evaluation; None before one, or for regression."""
    created_at: float
    """Unix seconds."""
    updated_at: float
    """Unix seconds of the latest recorded event (``created_at`` before any)."""
    parent: str
    """The run id this one was forked from; '' for none."""
    parent_step: int | None
    label: str
    reason: str
    """Why it is in this state, in words (the stop's why, the failure, the crash)."""
    resumable: bool = False
    """Crashed or stopped, and a checkpoint exists: ``trainlab resume`` can continue it."""
    checkpoint_step: int | None = None
    """Where ``trainlab resume`` goes on from, for a resumable run: the step of its
    last_good.pt, told from the numbered file it links to (without reading it). It can
    be short of ``step`` (a checkpoint that could not be written, a full disk); None when
    it cannot be told (last_good.pt is a copy, or missing)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (``trainlab runs --json``): the path as text, non-finite
        numbers as the protocol writes them."""
        data = protocol.encode(self)
        data["path"] = os.fspath(self.path)
        return data


def derive_status(alive: bool, finished: protocol.RunFinished | None,
            state: protocol.StateChanged | None, failure: protocol.EngineFailed | None,
            events: int, pid: Any) -> tuple[str, str]:
    """(status, reason) from the engine's liveness and the run's last events."""
    if finished is not None:
        why = state.reason if state is not None and state.state in ("finished", "failed") \
            else ""
        if finished.reason in ("completed", "early_stopped"):
            return "finished", finished.reason
        if finished.reason == "stopped":
            return "stopped", why or "stopped"
        if finished.reason == "non_finite":
            return "failed", "the loss became non-finite"
        return "failed", failure.message if failure is not None else (why or finished.reason)
    if alive:
        if state is not None and state.state == "paused":
            return "paused", state.reason
        return "running", state.reason if state is not None else "starting"
    engine = f"the engine (pid {pid})" if pid else "the engine"
    if events == 0:
        return "crashed", f"{engine} never recorded an event (see {LOG_FILE})"
    return "crashed", f"{engine} ended without a final event (see {LOG_FILE})"
