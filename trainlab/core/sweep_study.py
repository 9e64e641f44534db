"""A sweep's study in Optuna: its storage, sampler and pruner, and its trials read back
as a leaderboard.

Optuna is the search: its samplers pick each trial's values (ask), its pruners judge the
values a trial reports at every evaluation, its storage (an SQLite file in the sweep's
directory by default, or any database URL) holds the study, so a sweep resumes where it
stopped and several processes or machines work on one study. ``optuna-dashboard
STORAGE`` opens the same study.

Each trial keeps in its user attributes where it trains (``run_id``, ``run_dir``, the
``host`` and the pids of the sweep process and of the trial's engine) and, once it ends,
its steps. A trial the sweep gave up (``excluded``: its machine died before it reported,
or it was one trial too many when two processes asked at once) is told failed and does
not count towards ``trials``; a lost trial's values are queued again.

Torch-free: the app reads leaderboards with it. Optuna itself is imported here and only
here (and by the engine's trial runner).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainlab.core import rundir
from trainlab.core.sweep import STUDY_FILE, SweepError, SweepSpec

if TYPE_CHECKING:
    import optuna

SPEC_ATTR = "trainlab_sweep"
"""The study's user attribute holding ``SweepSpec.compared()``: what may not change."""
EXCLUDED_ATTR = "excluded"
"""A failed trial's user attribute that takes it out of the count, with why."""
RETRY_OF_ATTR = "retry_of"
"""A queued trial's user attribute: the number of the lost trial it runs again."""
SQLITE_TIMEOUT_S = 60.0
"""How long an SQLite storage waits for another process's write (the sweep, each
trial's engine, a second sweep process, the app) before it gives up: writes take
milliseconds, but a machine with two busy cores can hold one up for seconds."""
OPEN_TRIES = 5
"""Two processes starting one sweep at once both create its tables; one of them loses
the race and tries again."""

STATES = ("complete", "pruned", "running", "waiting", "failed", "excluded")
"""A trial as the leaderboard says it: Optuna's state, with ``excluded`` for a failed
trial the sweep gave up (not counted)."""


def host_name() -> str:
    """This machine, as the trials it trains are tagged."""
    return socket.gethostname()


def pid_alive(pid: Any) -> bool:
    """Does process ``pid`` (of this machine) live? False for a missing pid."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process has that pid now
        return True
    return True


def _quiet() -> None:
    import optuna

    # Optuna tells every trial's end on stderr; the sweep says it in its own lines.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _prepare_sqlite(path: Path) -> None:
    """The default storage's file: private like a run's, in WAL mode (readers, the app
    among them, do not block the writers)."""
    rundir.private_dirs(path.parent)
    if path.exists():
        return
    rundir.private_file(path, create=True)
    with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)) as db:
        db.execute("PRAGMA journal_mode=WAL")


def storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage at ``url`` (an SQLite one waits for other writers)."""
    import optuna

    _quiet()
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    import optuna

    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler({d.key: d.grid() for d in spec.space},
                                           seed=spec.seed)
    if spec.sampler == "cmaes":
        # CMA-ES searches numbers; choices go to the independent sampler (it warns).
        return optuna.samplers.CmaEsSampler(seed=spec.seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=spec.seed)


def make_pruner(name: str, startup: int = 0, warmup: int = 0) -> optuna.pruners.BasePruner:
    """The pruner ``name``: median (a trial worse than the median of the complete trials
    at the same point stops, once ``startup`` trials are complete and after ``warmup``
    steps or epochs), hyperband (Optuna's defaults), or none."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def pruner_of(spec: SweepSpec) -> optuna.pruners.BasePruner:
    return make_pruner(spec.pruner, spec.prune_startup, spec.prune_warmup)


def distributions(spec: SweepSpec) -> dict[str, Any]:
    """The space as Optuna's distributions, for ``Study.ask``."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for d in spec.space:
        if d.kind == "choice":
            out[d.key] = CategoricalDistribution(d.choices)
        elif d.kind == "int":
            assert d.low is not None and d.high is not None
            out[d.key] = IntDistribution(int(d.low), int(d.high), log=d.log,
                                         step=int(d.step or 1))
        else:
            assert d.low is not None and d.high is not None
            out[d.key] = FloatDistribution(d.low, d.high, log=d.log, step=d.step)
    return out


def _differences(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What changed between two ``SweepSpec.compared()`` dicts, in words."""
    out = []
    for key in ("metric", "direction", "report_at", "value"):
        if stored.get(key) != now.get(key):
            out.append(f"sweep.{key} {stored.get(key)!r} -> {now.get(key)!r}")
    old_space, new_space = stored.get("space", {}), now.get("space", {})
    for key in sorted(set(old_space) | set(new_space)):
        if old_space.get(key) != new_space.get(key):
            out.append(f'sweep.space."{key}" {old_space.get(key)} -> {new_space.get(key)}')
    old_base, new_base = stored.get("base", {}), now.get("base", {})
    for section in sorted(set(old_base) | set(new_base)):
        old, new = old_base.get(section, {}), new_base.get(section, {})
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                out.append(f"{section}.{name} {old.get(name)!r} -> {new.get(name)!r}")
    return out


def open_study(spec: SweepSpec, *, create: bool = True) -> optuna.Study:
    """The sweep's study: created (holding what may not change) or, when it exists,
    loaded after checking that the metric, space and base config are still its own.

    A seeded sampler draws the same values in every process that opens the study with
    that seed: the one that creates the study keeps the seed (a fresh sweep is
    reproducible), any other (a resumed sweep, a second process) reseeds its sampler
    from the system, so it does not draw the first process's values again.

    Raises:
        SweepError: the study exists with another metric, space or base config; or
            (``create`` False) it does not exist; or its storage cannot be opened.
    """
    import optuna

    if spec.uses_default_storage:
        if not create and not (spec.directory / STUDY_FILE).exists():
            raise SweepError(f"no sweep '{spec.name}' in {spec.directory} yet (trainlab "
                             "sweep SWEEP.toml --headless starts it)")
        _prepare_sqlite(spec.directory / STUDY_FILE)
    wanted = spec.compared()
    last: Exception | None = None
    created = False
    for attempt in range(OPEN_TRIES):
        try:
            store = storage(spec.storage_url)
            try:
                store.get_study_id_from_name(spec.name)
            except KeyError:
                if not create:
                    raise SweepError(f"no sweep '{spec.name}' in {spec.storage_url} yet "
                                     "(trainlab sweep SWEEP.toml --headless starts it)"
                                     ) from None
                with contextlib.suppress(optuna.exceptions.DuplicatedStudyError):
                    study = optuna.create_study(
                        study_name=spec.name, storage=store,
                        direction="maximize" if spec.direction == "maximize" else "minimize",
                        sampler=make_sampler(spec), pruner=pruner_of(spec))
                    study.set_user_attr(SPEC_ATTR, wanted)
                    created = True
            study = optuna.load_study(study_name=spec.name, storage=store,
                                      sampler=make_sampler(spec), pruner=pruner_of(spec))
            break
        except SweepError:
            raise
        except Exception as exc:  # sqlalchemy's OperationalError, a lost creation race
            last = exc
            time.sleep(0.2 * (attempt + 1))
    else:
        raise SweepError(f"cannot open the sweep's storage {spec.storage_url}: {last}")
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:  # made by another process a moment ago: wait for its attribute
        for _ in range(50):
            time.sleep(0.1)
            stored = optuna.load_study(study_name=spec.name, storage=study._storage) \
                .user_attrs.get(SPEC_ATTR)
            if stored is not None:
                break
    if stored is not None and stored != wanted:
        changes = "; ".join(_differences(stored, wanted))
        raise SweepError(f"the sweep '{spec.name}' in {spec.storage_url} was started with "
                         f"another experiment ({changes}): a changed sweep is a new one "
                         "(give it another sweep.name)")
    if not created:
        study.sampler.reseed_rng()
    return study


def teller(study: optuna.Study) -> optuna.Study:
    """The same study with a sampler that does nothing after a trial, to tell trials
    with: the grid sampler stops a study after its last point (``Study.stop``), which
    Optuna refuses outside ``Study.optimize``. Sampling is done at ``ask``, so nothing
    is lost."""
    import optuna

    return optuna.load_study(study_name=study.study_name, storage=study._storage,
                             sampler=optuna.samplers.RandomSampler(), pruner=study.pruner)


def trial_id(trial: optuna.trial.FrozenTrial | optuna.Trial) -> int:
    """The storage's id of ``trial`` (its number counts within the study)."""
    return int(trial._trial_id)


def get_trial(study: optuna.Study, trial: int | optuna.trial.FrozenTrial | optuna.Trial
              ) -> optuna.trial.FrozenTrial:
    """The trial as it stands now (``trial``: it, or its storage id)."""
    return study._storage.get_trial(trial if isinstance(trial, int) else trial_id(trial))


def set_trial_attr(study: optuna.Study, trial: int | optuna.trial.FrozenTrial | optuna.Trial,
                   key: str, value: Any) -> None:
    """Set a user attribute of a trial that is not finished, from any process."""
    study._storage.set_trial_user_attr(trial if isinstance(trial, int) else trial_id(trial),
                                       key, value)


# --- trials as the leaderboard shows them ---------------------------------------------


def trial_state(trial: optuna.trial.FrozenTrial) -> str:
    """One of ``STATES``."""
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL and EXCLUDED_ATTR in trial.user_attrs:
        return "excluded"
    return {TrialState.RUNNING: "running", TrialState.WAITING: "waiting",
            TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(
                trial.state, "failed")


def counted(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards ``trials``: all but the excluded ones."""
    return [t for t in trials if trial_state(t) != "excluded"]


@dataclass(frozen=True)
class TrialRow:
    """One trial on the leaderboard."""

    number: int
    state: str
    """One of ``STATES``."""
    params: dict[str, Any]
    value: float | None
    """The metric: the trial's value once complete (a pruned one's last reported
    value), the latest reported one while it runs."""
    steps: int | None
    """Steps trained: at the end, from the trial's run; while it runs, its latest
    evaluation's step (``report_at`` step) or None."""
    total_steps: int | None
    """Steps the trial would have trained unpruned."""
    run_id: str
    run_dir: str
    host: str
    note: str = ""
    """Why it failed or was excluded; the pruning step."""
    curve: dict[int, float] = field(default_factory=dict, compare=False)
    """Its reported values by step (or epoch)."""

    def to_dict(self) -> dict[str, Any]:
        from trainlab.core import protocol

        out: dict[str, Any] = protocol.encode({k: v for k, v in self.__dict__.items()
                                               if k != "curve"})
        return out


def row(trial: optuna.trial.FrozenTrial) -> TrialRow:
    """``trial`` as a leaderboard row."""
    attrs = trial.user_attrs
    state = trial_state(trial)
    curve = dict(trial.intermediate_values)
    value = trial.value if trial.value is not None else (
        curve[max(curve)] if curve else None)
    if value is not None and not math.isfinite(value):
        value = None if state in ("running", "waiting") else value
    steps = attrs.get("steps")
    if steps is None and state == "running":
        steps = attrs.get("last_step")
    note = str(attrs.get(EXCLUDED_ATTR) or attrs.get("error") or attrs.get("note") or "")
    return TrialRow(
        number=trial.number, state=state, params=dict(trial.params), value=value,
        steps=steps, total_steps=attrs.get("total_steps"), run_id=str(attrs.get("run_id", "")),
        run_dir=str(attrs.get("run_dir", "")), host=str(attrs.get("host", "")), note=note,
        curve=curve)


_ORDER = {"complete": 0, "pruned": 1, "running": 2, "waiting": 3, "failed": 4, "excluded": 5}


def leaderboard(study: optuna.Study) -> list[TrialRow]:
    """Every trial, best first: the complete ones by value, then the pruned ones (by
    their last value: they were judged earlier in training, so they rank apart), then
    those running or queued, then the failed and the excluded."""
    from optuna.study import StudyDirection

    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    rows = [row(t) for t in study.get_trials(deepcopy=False)]

    def key(r: TrialRow) -> tuple[int, float, int]:
        value = r.value if r.value is not None and math.isfinite(r.value) else math.inf
        return (_ORDER[r.state], sign * value if value != math.inf else math.inf, r.number)

    return sorted(rows, key=key)


@dataclass(frozen=True)
class SweepTotals:
    """A sweep in numbers: its trials by state and the steps pruning saved."""

    by_state: dict[str, int]
    steps: int
    """Steps trained by the trials that ended."""
    planned: int
    """What those trials would have trained unpruned."""

    @property
    def saved(self) -> float | None:
        """The share of the planned steps that pruning saved (None before any ended)."""
        return 1.0 - self.steps / self.planned if self.planned else None

    def describe(self) -> str:
        parts = [f"{n} {state}" for state in STATES if (n := self.by_state.get(state))]
        line = f"{sum(self.by_state.values())} trials: {', '.join(parts) or 'none yet'}"
        if self.planned:
            line += (f"; {self.steps:,} of {self.planned:,} steps trained (pruning saved "
                     f"{self.saved:.0%})")
        return line


def totals(rows: Sequence[TrialRow]) -> SweepTotals:
    by_state: dict[str, int] = {}
    steps = planned = 0
    for r in rows:
        by_state[r.state] = by_state.get(r.state, 0) + 1
        if r.state in ("complete", "pruned") and r.steps is not None and r.total_steps:
            steps += r.steps
            planned += max(r.total_steps, r.steps)
    return SweepTotals(by_state, steps, planned)


def best_row(rows: Sequence[TrialRow]) -> TrialRow | None:
    """The best complete trial (``leaderboard`` puts it first); None before one."""
    return next((r for r in rows if r.state == "complete" and r.value is not None), None)


def format_params(params: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """The sampled values in ``keys``' order, as the leaderboard writes them."""
    out = []
    for key in keys:
        value = params.get(key)
        if value is None:
            out.append("-")
        elif isinstance(value, float):
            out.append(f"{value:.3g}")
        else:
            out.append(str(value))
    return out


def leaderboard_table(rows: Sequence[TrialRow], keys: Sequence[str], metric: str,
                      fmt: Callable[[float | None], str]) -> str:
    """The leaderboard as an aligned text table: trial, state, the values, the metric,
    steps."""
    header = ("trial", "state", *keys, metric, "steps", "run")
    table: list[tuple[str, ...]] = [header]
    for r in rows:
        steps = "-" if r.steps is None else (
            f"{r.steps}/{r.total_steps}" if r.total_steps and r.steps < r.total_steps
            else str(r.steps))
        table.append((str(r.number), r.state, *format_params(r.params, keys), fmt(r.value),
                      steps, r.run_id or "-"))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    numeric = set(range(2, len(header) - 1))
    return "\n".join("  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
                     .rstrip() for line in table)
