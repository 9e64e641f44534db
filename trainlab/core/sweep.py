"""A sweep's file: the settings of its ``[sweep]`` table and the search space of its
``[sweep.space]`` table, checked against the config schema before anything runs.

A sweep file is a config file (its sections are the base config every trial starts
from) with one more table::

    [optim]
    name = "adam"

    [sweep]
    metric = "val_loss"          # val_loss, val_accuracy, train_loss or best_val_loss
    sampler = "tpe"              # tpe, random, grid or cmaes
    pruner = "median"            # median, hyperband or none
    trials = 8
    parallel = 1                 # trials training at once on this machine

    [sweep.space]
    "optim.lr" = { low = 1e-4, high = 1e-1, log = true }
    "model.depth" = { low = 2, high = 8 }
    "optim.name" = ["adam", "sgd", "momentum"]

Every key of the space is a config key; a range or a choice that the schema refuses (a
field that does not exist, a bound out of the field's range, a choice that is not one of
its values) is a ``SweepError`` naming it. Optuna runs the search
(``trainlab.core.sweep_study``); this module is plain data and imports neither torch
nor Optuna.
"""

from __future__ import annotations

import math
import os
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainlab.core import config as config_mod
from trainlab.core.config import Config, ConfigError, did_you_mean

METRICS = ("val_loss", "val_accuracy", "train_loss", "best_val_loss")
"""What a trial is judged by: a number every evaluation (``EvalDone``) logs."""
MAXIMIZED = ("val_accuracy",)
"""The metrics where more is better; the others are minimized unless ``direction`` says."""
DIRECTIONS = ("minimize", "maximize")
SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "hyperband", "none")
VALUES = ("last", "best")
REPORT_AT = ("auto", "step", "epoch")
NOT_SWEPT = ("run.dir",)
"""Config keys a space may not hold: every trial's run lands under the base run.dir,
where the sweep's directory and the app find them."""
SWEEPS_DIR = "sweeps"
"""``<run.dir>/sweeps/<name>/``: a sweep's own directory (its study database when the
storage is the default, the best config)."""
STUDY_FILE = "study.db"
"""The default storage: an SQLite file in the sweep's directory."""
TRIAL_META_KEY = "sweep"
"""A trial run's store meta key: which trial of which study it is (study, storage,
trial_id, number) and how it reports (metric, direction, value, report_at, pruner,
prune_startup, prune_warmup); ``trainlab.engine.trial`` reads it."""
BEST_FILE = "best.toml"
"""The best trial's config, written into the sweep's directory after a sweep."""


class SweepError(ConfigError):
    """A sweep file or setting that is not allowed; the message names it and says why."""


@dataclass(frozen=True)
class Dimension:
    """One searched config field: a range (``low``..``high``, on a log scale or in
    steps) or a list of choices."""

    key: str
    kind: str
    """float, int or choice."""
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    """As Optuna stores them: numbers, strings and booleans; a list field's value as its
    ``--set`` text (``noise,flip``)."""

    def to_dict(self) -> dict[str, Any]:
        """As the sweep file writes it (and the study keeps it, to tell a changed space)."""
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    def grid(self) -> list[Any]:
        """Every value the grid sampler tries: the choices, or the range in steps."""
        if self.kind == "choice":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        step = self.step if self.step is not None else 1
        count = math.floor((self.high - self.low) / step + 1e-9) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else \
            [round(v, 12) for v in values]

    def config_value(self, value: Any) -> Any:
        """A sampled value as the config field takes it (a list field's text parsed)."""
        info = config_mod.field_info(self.key)
        if typing.get_origin(info.type) is tuple and isinstance(value, str):
            return config_mod.parse_value(self.key, value)
        return value


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: its settings, its space and the base config of its trials."""

    name: str
    base: Config
    space: tuple[Dimension, ...]
    metric: str = "val_loss"
    direction: str = "minimize"
    sampler: str = "tpe"
    pruner: str = "median"
    trials: int = 10
    parallel: int = 1
    storage: str = ""
    """An Optuna storage URL; '' for the default, an SQLite file in the sweep's directory."""
    seed: int | None = None
    value: str = "last"
    report_at: str = "step"
    prune_startup: int = 3
    prune_warmup: int = 0
    notes: tuple[str, ...] = field(default=(), compare=False)
    """What was decided for the user (a grid's size capping trials), to say once."""

    @property
    def directory(self) -> Path:
        """``<run.dir>/sweeps/<name>``: the sweep's own directory."""
        return Path(self.base.run.dir) / SWEEPS_DIR / self.name

    @property
    def storage_url(self) -> str:
        """The Optuna storage: ``storage``, or ``sqlite:///`` the sweep directory's
        study.db (an absolute path, so every process of the sweep finds the same file)."""
        if self.storage:
            return self.storage
        return f"sqlite:///{os.path.abspath(self.directory / STUDY_FILE)}"

    @property
    def uses_default_storage(self) -> bool:
        return not self.storage

    def dimension(self, key: str) -> Dimension:
        return next(d for d in self.space if d.key == key)

    def trial_config(self, params: Mapping[str, Any]) -> Config:
        """The config of the trial that sampled ``params`` (keys of the space).

        Raises:
            ConfigError: the combination breaks a rule across fields (``optim.name =
                'nesterov'`` with a sampled ``optim.momentum = 0``).
        """
        keys = {d.key for d in self.space}
        changes = {key: self.dimension(key).config_value(value)
                   for key, value in params.items() if key in keys}
        config = self.base.with_values(changes)
        if self.base.run.threads == 0 and "run.threads" not in keys and self.parallel > 1:
            # Trials at once share the cores: each gets its part (the default leaves one
            # core free as it does for a single run).
            threads = max(1, ((os.cpu_count() or 1) - 1) // self.parallel)
            config = config.with_value("run.threads", threads)
        return config

    def compared(self) -> dict[str, Any]:
        """What must stay the same for a study to go on (``trainlab sweep`` again, or
        another machine): the metric, its direction, the space and the base config but
        for the fields that are each machine's own (run.dir, run.threads, run.device)."""
        base = self.base.to_dict()
        for key in ("dir", "threads", "device"):
            base["run"].pop(key, None)
        return {"metric": self.metric, "direction": self.direction,
                "space": {d.key: d.to_dict() for d in self.space}, "base": base,
                "report_at": self.report_at, "value": self.value}


# --- reading a sweep file ----------------------------------------------------------------


_SETTINGS: dict[str, tuple[type, tuple[str, ...] | None, int | None]] = {
    # key: (type, choices, lowest allowed)
    "name": (str, None, None),
    "metric": (str, METRICS, None),
    "direction": (str, DIRECTIONS, None),
    "sampler": (str, SAMPLERS, None),
    "pruner": (str, PRUNERS, None),
    "trials": (int, None, 1),
    "parallel": (int, None, 1),
    "storage": (str, None, None),
    "seed": (int, None, 0),
    "value": (str, VALUES, None),
    "report_at": (str, REPORT_AT, None),
    "prune_startup": (int, None, 0),
    "prune_warmup": (int, None, 0),
    "space": (dict, None, None),
}
"""The ``[sweep]`` table's keys: what each must be."""


def _setting(key: str, value: Any) -> Any:
    kind, choices, lowest = _SETTINGS[key]
    where = f"sweep.{key} = {value!r}"
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise SweepError(f"{where} is not allowed: expected an integer")
    if kind is str and not isinstance(value, str):
        raise SweepError(f"{where} is not allowed: expected a string")
    if kind is dict and not isinstance(value, Mapping):
        raise SweepError(f"{where} is not allowed: expected a table of config keys")
    if choices and value not in choices:
        raise SweepError(f"{where} is not allowed: expected one of {', '.join(choices)}"
                         f"{did_you_mean(value, list(choices), list_all=False)}")
    if lowest is not None and value < lowest:
        raise SweepError(f"{where} is not allowed: expected an integer >= {lowest}")
    return value


def _bad(key: str, what: str) -> SweepError:
    return SweepError(f'sweep.space."{key}": {what}')


def _checked(key: str, value: Any, base: Config, what: str) -> Any:
    """``value`` as field ``key`` takes it, alone and in the base config; else why not."""
    try:
        checked = config_mod.check_value(key, value)
        base.with_value(key, checked)
    except ConfigError as exc:
        raise _bad(key, f"{what} {value!r} is refused: {exc}") from None
    return checked


def parse_dimension(key: str, raw: Any, base: Config) -> Dimension:
    """One ``[sweep.space]`` entry, checked against the schema and the base config."""
    try:
        info = config_mod.field_info(key)
    except ConfigError as exc:
        raise SweepError(f"sweep.space: {exc}") from None
    if key in NOT_SWEPT:
        raise _bad(key, "cannot be searched: every trial's run lands under the base "
                   f"{key} (set it in the sweep file)")
    is_list = typing.get_origin(info.type) is tuple
    if isinstance(raw, list):
        if not raw:
            raise _bad(key, "an empty list of choices")
        choices = []
        for value in raw:
            checked = _checked(key, value, base, "the choice")
            choices.append(config_mod.format_setting(checked) if is_list else value)
        if len(set(map(repr, choices))) != len(choices):
            raise _bad(key, f"names a choice twice: {raw!r}")
        return Dimension(key, "choice", choices=tuple(choices))
    if not isinstance(raw, Mapping):
        raise _bad(key, f"{raw!r} is neither a list of choices nor a range "
                   "{ low = ..., high = ... }")
    unknown = set(raw) - {"low", "high", "log", "step"}
    if unknown:
        name = sorted(unknown)[0]
        raise _bad(key, f"unknown setting '{name}'"
                   f"{did_you_mean(name, ['low', 'high', 'log', 'step'])}")
    if info.type not in (int, float):
        allowed = config_mod.describe_allowed(info)
        raise _bad(key, f"a range needs a number field; this one takes {allowed}: give a "
                   "list of choices")
    if "low" not in raw or "high" not in raw:
        raise _bad(key, "a range needs both low and high")
    low = _checked(key, raw["low"], base, "low")
    high = _checked(key, raw["high"], base, "high")
    if not low < high:
        raise _bad(key, f"low ({low!r}) must be below high ({high!r}); a fixed value "
                   "belongs in the config")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise _bad(key, f"log = {log!r}: expected true or false")
    step = raw.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int | float) or step <= 0 \
                or not math.isfinite(step):
            raise _bad(key, f"step = {step!r}: expected a number > 0")
        if info.type is int and not float(step).is_integer():
            raise _bad(key, f"step = {step!r}: {key} is an integer")
        if log and (info.type is float or step != 1):
            raise _bad(key, "log and step do not go together (a log scale has no "
                       "even steps)")
    if log and low <= 0:
        raise _bad(key, f"a log scale needs low > 0 (it is {low!r})")
    if info.type is int:
        return Dimension(key, "int", int(low), int(high), log,
                         int(step) if step is not None else None)
    return Dimension(key, "float", float(low), float(high), log,
                     float(step) if step is not None else None)


def from_dict(data: Mapping[str, Any], name: str, overrides: Sequence[str] = ()) -> SweepSpec:
    """A sweep from a parsed sweep file: ``[sweep]`` and its space, the rest the base
    config (``overrides``, ``--set`` strings, on top of it)."""
    data = dict(data)
    raw = data.pop("sweep", None)
    if not isinstance(raw, Mapping):
        raise SweepError("a sweep file needs a [sweep] table (with a [sweep.space] table "
                         "of the config fields to search)")
    base = config_mod.apply_overrides(config_mod.from_dict(data), list(overrides))
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _SETTINGS:
            raise SweepError(f"unknown setting 'sweep.{key}'"
                             f"{did_you_mean(key, list(_SETTINGS))}")
        settings[key] = _setting(key, value)
    space_raw = settings.pop("space", None)
    if not space_raw:
        raise SweepError("[sweep.space] is missing or empty: name at least one config "
                         'field to search, e.g. "optim.lr" = { low = 1e-4, high = 1e-1, '
                         "log = true }")
    space = tuple(parse_dimension(key, value, base) for key, value in space_raw.items())
    name = settings.pop("name", name)
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise SweepError(f"sweep.name = {name!r} is not allowed: expected a plain name "
                         "(it names the sweep's directory and its study)")
    metric = settings.get("metric", "val_loss")
    settings.setdefault("direction", "maximize" if metric in MAXIMIZED else "minimize")
    if metric != "train_loss" and base.data.val_fraction == 0 \
            and "data.val_fraction" not in space_raw:
        raise SweepError(f"sweep.metric = {metric!r} needs a validation split: "
                             "data.val_fraction is 0")
    report_at = settings.get("report_at", "auto")
    if report_at == "auto":  # trials are compared at the same point of training
        settings["report_at"] = "epoch" if "data.batch_size" in space_raw else "step"
    notes: list[str] = []
    if settings.get("sampler") == "grid":
        for d in space:
            if d.kind == "float" and d.step is None:
                raise _bad(d.key, "the grid sampler needs a list of choices or a step "
                           "for a float range")
            if d.log:
                raise _bad(d.key, "the grid sampler takes no log scale: give the values "
                           "as a list")
        size = math.prod(len(d.grid()) for d in space)
        if settings.get("trials", size) > size:
            notes.append(f"the grid has {size} points: trials = {size} "
                         f"(not {settings['trials']})")
        settings["trials"] = min(settings.get("trials", size), size)
    return SweepSpec(name=name, base=base, space=space, notes=tuple(notes), **settings)


def load(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read a sweep file; its name is sweep.name, else the file's name without .toml.

    Raises:
        SweepError: the file, its [sweep] table or its space is not allowed.
        ConfigError: its base config (or an override) is not allowed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SweepError(f"sweep file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SweepError(f"cannot read sweep file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path} is not valid TOML: {exc}") from None
    try:
        return from_dict(data, path.stem, overrides)
    except ConfigError as exc:
        raise type(exc)(f"{path}: {exc}") from None
