"""Runs side by side: what the compare screen reads from their stores, and their differences.

The compare screen (``trainlab.tui.screens.compare``) lists the runs under a run root, and for
the ones picked shows their loss curves on one chart, their configs in one table (a
column per run, a row per key that differs) and how far each got. This module does
the reading and the arithmetic: each run's store is opened read-only through
``trainlab.core.store``'s query helpers (any number of readers, a live engine included), and
a run whose store or config cannot be read comes back with the reason instead of
raising. No widgets here, and no torch: the rules are tested without a screen.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainlab.core import config as config_mod
from trainlab.core import protocol, run_status, rundir, store
from trainlab.core.config import Config
from trainlab.tui.series import Series

MISSING = "—"
"""What a cell shows where a run has no value (no evaluation yet, an unreadable config)."""
LOSS_DIGITS = 4
"""Significant digits of a loss in the tables: enough to tell close runs apart."""
NOTE_CHARS = 60
"""A reason (why a run crashed, why its store cannot be read) is cut to this many
characters in a table cell; the runs pane shows the whole of the highlighted one's."""
NOTED_STATUSES = frozenset({"stopped", "failed", "crashed", "not yours"})
"""Statuses whose reason is worth showing beside the run (why it stopped, failed or
crashed, whose it is); a running or finished run's reason says nothing new."""


@dataclass(frozen=True)
class RunMetrics:
    """How far a run got: its final numbers once it finished, its latest ones before."""

    status: str
    """One of ``trainlab.core.run_status.STATUSES``."""
    step: int
    """The last step: RunFinished's, or the newest recorded one."""
    train_loss: float | None
    """Mean training loss since the evaluation before the end (RunFinished's); before
    the end the latest evaluation's, or the newest step's loss when none was made."""
    val_loss: float | None
    val_accuracy: float | None
    best_val_loss: float | None
    """Lowest finite validation loss of the run."""
    best_step: int | None
    """The step of that evaluation."""
    elapsed_s: float | None
    """Training time (RunFinished's); None while the run has not finished."""


@dataclass
class ComparedRun:
    """One run as the compare screen shows it: read once from its directory."""

    summary: run_status.RunSummary
    config: dict[str, Any] | None = None
    """Dotted key -> the value the run started with; None when config.toml cannot be read."""
    changes: tuple[protocol.HyperChanged, ...] = ()
    """Live changes, in the order they were applied."""
    train: Series = field(default_factory=Series)
    """Training loss by step."""
    val_loss: Series = field(default_factory=Series)
    """Validation loss by step (one point per evaluation)."""
    steps_per_epoch: int | None = None
    """From the run's latest RunStarted: puts its curves in epochs."""
    metrics: RunMetrics | None = None
    """None when the store cannot be read."""
    error: str = ""
    """Why the store or the config could not be read ('' when both were)."""

    @property
    def id(self) -> str:
        """The run id."""
        return self.summary.id


def flat_config(config: Config) -> dict[str, Any]:
    """Every dotted key of ``config`` and its value, in the schema's order."""
    return {info.key: config.get(info.key) for info in config_mod.fields()}


def load_run(summary: run_status.RunSummary) -> ComparedRun:
    """Read the run ``summary`` describes: config, live changes, curves and metrics.

    Never raises for a bad run: a config or a store that cannot be read (missing,
    corrupt, from a newer trainlab, half-written) leaves those parts empty and says
    why in ``error``; the parts that could be read are kept. Another user's run is not
    read at all (``error`` says whose it is).
    """
    run = ComparedRun(summary)
    if summary.status == "not yours":
        run.error = summary.reason  # another user's private run: not read
        return run
    problems = []
    try:
        with store.RunStore.open(summary.path) as runs:
            _read_store(run, runs)
    except Exception as exc:  # someone else's file: whatever is wrong is shown, not raised
        problems.append(_problem(summary, rundir.DB_FILE, exc))
    try:
        run.config = flat_config(rundir.run_config(summary.path))
    except Exception as exc:  # as above: a missing or hand-broken config.toml
        problems.append(_problem(summary, rundir.CONFIG_FILE, exc))
    run.error = "; ".join(problems)
    return run


def _problem(summary: run_status.RunSummary, file: str, exc: Exception) -> str:
    """Why ``file`` of the run cannot be read, without the run's directory in every path
    (the run is known where this shows) and naming the file."""
    text = str(exc).replace(f"{summary.path}{os.sep}", "")
    return text if file in text else f"{file}: {text}"


def _read_store(run: ComparedRun, runs: store.RunStore) -> None:
    """Fill ``run``'s curves, changes and metrics from its open store."""
    curve = runs.train_curve()
    train = Series()
    train.extend(curve.steps, curve.losses)
    evals = runs.evals()
    val_loss = Series()
    val_loss.extend([e.step for e in evals], [e.val_loss for e in evals])
    starts = [event for _, event in runs.events(types=("RunStarted",))]
    final = runs.final()
    best = runs.best()
    last = evals[-1] if evals else None
    if final is not None:
        step, train_loss = final.step, final.train_loss
        val, accuracy, elapsed = final.val_loss, final.val_accuracy, final.elapsed_s
    else:
        step = max(run.summary.step, curve.steps[-1] if len(curve) else 0)
        train_loss = last.train_loss if last else (curve.losses[-1] if len(curve) else None)
        val = last.val_loss if last else None
        accuracy = last.val_accuracy if last else None
        elapsed = None
    best_val: float | None
    best_step: int | None
    if best is not None:
        best_val, best_step = best.val_loss, best.step
    else:
        best_val = final.best_val_loss if final else None
        best_step = final.best_step if final else None
    run.train, run.val_loss = train, val_loss
    run.changes = tuple(runs.changes())
    run.steps_per_epoch = starts[-1].steps_per_epoch if starts else None
    run.metrics = RunMetrics(run.summary.status, step, train_loss, val, accuracy, best_val,
                             best_step, elapsed)


def note(run: ComparedRun) -> str:
    """What to say beside ``run``: why it could not be read, else why it stopped,
    failed or crashed; '' for a healthy run."""
    if run.error:
        return run.error
    return run.summary.reason if run.summary.status in NOTED_STATUSES else ""


# --- which runs ----------------------------------------------------------------------


def family(summaries: Iterable[run_status.RunSummary], run_id: str) -> list[str]:
    """``run_id``, its parent and its forks (the runs one would compare it with), in
    the order of ``summaries``; [] when ``run_id`` is not among them."""
    listed = list(summaries)
    by_id = {s.id: s for s in listed}
    if run_id not in by_id:
        return []
    parent = by_id[run_id].parent
    keep = {run_id, parent} | {s.id for s in listed if s.parent == run_id}
    return [s.id for s in listed if s.id in keep]


def short_names(ids: Sequence[str]) -> dict[str, str]:
    """Run id -> a shorter name for headers and legends: the ``YYYYmmdd-`` date the
    ids all share is left out (``211606-ab12``); ids of different days stay whole."""
    dates = {run_id.split("-", 1)[0] for run_id in ids}
    if len(dates) == 1 and all(run_id.count("-") >= 2 for run_id in ids):
        return {run_id: run_id.split("-", 1)[1] for run_id in ids}
    return {run_id: run_id for run_id in ids}


# --- the config table ------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigRow:
    """One config key across the compared runs."""

    key: str
    cells: tuple[str, ...]
    """The value of each run (live changes after an arrow), ``MISSING`` where unknown."""
    differs: bool
    """The runs do not all agree on this key (start value or live changes)."""
    unlike_first: tuple[bool, ...]
    """Per run: its value is not the first readable run's (the cells to highlight)."""


def _setting(value: Any) -> str:
    try:
        return config_mod.format_setting(value)
    except TypeError:  # a value no field has (an old store's change): show it as it is
        return repr(value)


def _effective(run: ComparedRun, key: str) -> tuple[Any, tuple[tuple[int, Any], ...]] | None:
    """(start value, live changes as (step, new)) of ``key`` in ``run``; None unknown."""
    if run.config is None or key not in run.config:
        return None
    changes = tuple((c.step, c.new) for c in run.changes if c.key == key)
    return run.config[key], changes


def config_cell(run: ComparedRun, key: str) -> str:
    """``0.001``, or ``0.001 → 0.0005 @300`` after a live change (``… →`` for several)."""
    value = _effective(run, key)
    if value is None:
        return MISSING
    start, changes = value
    if not changes:
        return _setting(start)
    step, new = changes[-1]
    between = " → …" if len(changes) > 1 else ""
    return f"{_setting(start)}{between} → {_setting(new)} @{step}"


def differing_keys(runs: Sequence[ComparedRun]) -> list[str]:
    """The config keys on which the readable runs do not all agree (the value they
    started with, or a live change), in the schema's order. Runs whose config cannot
    be read do not count; fewer than two readable runs differ in nothing."""
    readable = [run for run in runs if run.config is not None]
    if len(readable) < 2:
        return []
    keys = [info.key for info in config_mod.fields()]
    return [key for key in keys
            if len({repr(_effective(run, key)) for run in readable}) > 1]


def config_rows(runs: Sequence[ComparedRun], *, all_keys: bool = False) -> list[ConfigRow]:
    """The config table: a row per differing key, or per key with ``all_keys``."""
    differ = set(differing_keys(runs))
    keys = [info.key for info in config_mod.fields() if all_keys or info.key in differ]
    rows = []
    for key in keys:
        values = [repr(_effective(run, key)) for run in runs]
        first = next((v for run, v in zip(runs, values, strict=True) if run.config is not None),
                     "")
        unlike = tuple(key in differ and run.config is not None and value != first
                       for run, value in zip(runs, values, strict=True))
        rows.append(ConfigRow(key, tuple(config_cell(run, key) for run in runs),
                              key in differ, unlike))
    return rows


# --- the metrics table ------------------------------------------------------------------


@dataclass(frozen=True)
class MetricRow:
    """One metric across the compared runs."""

    name: str
    cells: tuple[str, ...]
    best: frozenset[int]
    """Indexes of the runs with the best value (lowest loss, highest accuracy); empty
    for rows without a better (status, steps) or with fewer than two values."""


METRIC_ROWS = (
    # (row name, RunMetrics field, how to write it, which value is best: min, max or None)
    ("status", "status", "text", None),
    ("final step", "step", "int", None),
    ("train loss", "train_loss", "loss", "min"),
    ("val loss", "val_loss", "loss", "min"),
    ("val accuracy", "val_accuracy", "percent", "max"),
    ("best val loss", "best_val_loss", "loss", "min"),
    ("best at step", "best_step", "int", None),
    ("time", "elapsed_s", "seconds", None),
)
"""The rows of the metrics table, in order."""


def format_number(value: Any, kind: str) -> str:
    """A table cell: a loss to ``LOSS_DIGITS`` digits, a percentage, seconds, a step."""
    if value is None:
        return MISSING
    if kind == "text":
        return str(value)
    if kind == "int":
        return str(int(value))
    if not math.isfinite(value):
        return protocol.encode(float(value))  # NaN, Infinity: what the run really had
    if kind == "percent":
        return f"{value:.1%}"
    if kind == "seconds":
        return f"{value:.0f}s" if value < 600 else f"{value / 60:.0f}m"
    return f"{value:.{LOSS_DIGITS}g}"


def metric_rows(runs: Sequence[ComparedRun]) -> list[MetricRow]:
    """The metrics table: a row per ``METRIC_ROWS`` entry, a cell per run (its status
    from the listing even when its store cannot be read)."""
    rows = []
    for name, attribute, kind, better in METRIC_ROWS:
        values: list[Any] = []
        for run in runs:
            if run.metrics is None:
                values.append(run.summary.status if attribute == "status" else None)
            else:
                values.append(getattr(run.metrics, attribute))
        cells = tuple(format_number(value, kind) for value in values)
        finite = {i: v for i, v in enumerate(values)
                  if isinstance(v, int | float) and math.isfinite(v)}
        best: frozenset[int] = frozenset()
        if better is not None and len(finite) >= 2:
            target = min(finite.values()) if better == "min" else max(finite.values())
            best = frozenset(i for i, v in finite.items() if v == target)
        rows.append(MetricRow(name, cells, best))
    return rows


# --- the chart ----------------------------------------------------------------------------


def curves(runs: Sequence[ComparedRun], names: Mapping[str, str], *, validation: bool,
           by_epoch: bool) -> list[tuple[str, Series]]:
    """``(name, curve)`` of each run to overlay: its training loss, or its validation
    loss with ``validation``; in epochs with ``by_epoch`` (a run that never said its
    steps per epoch stays in steps). Runs without a point are left out."""
    out = []
    for run in runs:
        series = run.val_loss if validation else run.train
        if not len(series):
            continue
        if by_epoch and run.steps_per_epoch:
            in_epochs = Series()
            in_epochs.extend(series.x / run.steps_per_epoch, series.y)
            series = in_epochs
        out.append((names.get(run.id, run.id), series))
    return out
