"""The only types that cross between the engine and whatever drives it.

Commands are imperatives sent to the engine; events are past-tense facts it emits.
All are frozen dataclasses of plain data (numbers, strings, tuples, nested
dataclasses; never tensors), so they can go through a thread queue, a socket or a
JSON line unchanged. Every command that takes effect is acknowledged by an event;
one that cannot is answered by ``CommandRejected``.

JSON: ``to_dict`` adds ``"event"`` or ``"command"`` set to the class name.
Non-finite floats are written as the strings "NaN", "Infinity" and "-Infinity"
(as the protobuf JSON mapping does, so the output stays valid JSON) and read back
as floats wherever the field holds a number.

Types: ``Event`` is the union of every event class, ``Command`` of every run command
(``SessionCommand``: the socket's own). Code that reacts to events takes an ``Event``
and dispatches with a ``match`` statement over the classes that ends in
``case _: assert_never(event)``, so that a type checker names every dispatcher an event
added here would miss (tests/test_dispatch.py checks the same without one).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, Union

# --- commands -----------------------------------------------------------------


@dataclass(frozen=True)
class Pause:
    """Stop stepping at the next step boundary and wait for commands."""


@dataclass(frozen=True)
class Resume:
    """Continue training after a pause."""


@dataclass(frozen=True)
class Step:
    """While paused: run ``n`` optimizer steps, then pause again.

    The n steps run as a unit: commands sent meanwhile apply after them, in order,
    except a Stop or Pause with no other command waiting before it, which cuts the
    steps short.
    """

    n: int = 1


@dataclass(frozen=True)
class Stop:
    """End the run at the next step boundary (a final evaluation and a checkpoint still
    happen)."""

    why: str = ""
    """Why, for the record (e.g. "SIGTERM", "stopped from the app"); the final
    StateChanged carries it and the run store keeps it."""


@dataclass(frozen=True)
class SetHyper:
    """Change a hot config field (a dotted key such as ``optim.lr``) from the next step."""

    key: str
    value: Any
    note: str = ""
    """Why, for the record (e.g. "fix: exploding_gradients"); HyperChanged carries it."""


@dataclass(frozen=True)
class SaveCheckpoint:
    """Write a checkpoint now; an empty path means the run's own ``checkpoints/``."""

    path: str = ""


@dataclass(frozen=True)
class RequestSnapshot:
    """Measure the next step's per-layer statistics whatever the schedule says."""

    histograms: bool = True


@dataclass(frozen=True)
class FindLr:
    """Run the learning-rate range test on a copy of the model and answer with LrFound.

    The run's weights, optimizer state and data order are untouched: the test trains a
    copy on batches of its own, raising the lr exponentially from ``start`` to ``end``
    over at most ``steps`` steps (it stops early once the loss diverges).
    """

    start: float = 1e-7
    end: float = 10.0
    steps: int = 100


Command: TypeAlias = (Pause | Resume | Step | Stop | SetHyper | SaveCheckpoint
                      | RequestSnapshot | FindLr)
"""Every command the training loop reads (its queue carries these)."""


# --- session commands: between a viewer and the engine's socket, not the loop ------


@dataclass(frozen=True)
class Attach:
    """The first line a client sends on a run's socket (``trainlab.engine.serve``).

    role "control" asks to steer the run: granted when nobody controls it, else the
    client views only (``Attached.role`` says which it got). role "view" never steers.
    """

    role: str = "control"


@dataclass(frozen=True)
class TakeControl:
    """Make this client the run's controller; the previous one becomes a viewer."""


SessionCommand: TypeAlias = Attach | TakeControl
"""Commands between a client and the run's socket, which the socket answers itself."""

# --- events -------------------------------------------------------------------


@dataclass(frozen=True)
class LayerInfo:
    """One leaf module of the model, in forward order."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


@dataclass(frozen=True)
class ModelInfo:
    """What was built: the layers and the parameter count."""

    arch: str
    layers: tuple[LayerInfo, ...]
    params: int


@dataclass(frozen=True)
class DatasetInfo:
    """What the model trains on; class counts show imbalance at a glance."""

    name: str
    task: str
    input_shape: tuple[int, ...]
    num_classes: int
    train_size: int
    val_size: int
    class_names: tuple[str, ...]
    train_counts: tuple[int, ...]
    val_counts: tuple[int, ...]


@dataclass(frozen=True)
class RunStarted:
    """The run is built and about to take its first step."""

    config: dict[str, Any]
    model: ModelInfo
    dataset: DatasetInfo
    loss: str
    device: str
    threads: int
    steps_per_epoch: int
    total_steps: int
    resumed_from_step: int | None = None
    """The step this run continues from, restored from a checkpoint (``trainlab resume``
    or ``fork``): its events go on from step + 1. None for a run from scratch."""
    run_dir: str = ""
    """The run's directory (store, checkpoints, log; its name is the run's id) when it
    is served from one (``trainlab.engine.serve``: every run of the CLI and the app)."""


@dataclass(frozen=True)
class MetricsBatch:
    """Per-step training losses and learning rates since the previous batch."""

    steps: tuple[int, ...]
    losses: tuple[float, ...]
    lrs: tuple[float, ...]
    epoch: int
    """Epochs completed after the batch's last step (what EvalDone.epoch counts too)."""
    steps_per_sec: float
    samples_per_sec: float
    epochs: tuple[int, ...] = ()
    """Per step, the epoch (from 0) its training batch was drawn from: a batch may cross
    an epoch's end. Empty in events recorded before it existed: see ``step_epochs``."""

    def step_epochs(self) -> tuple[int, ...]:
        """The epoch of each step (an older event without ``epochs``: ``epoch`` each)."""
        return self.epochs or (self.epoch,) * len(self.steps)


@dataclass(frozen=True)
class EvalDone:
    """Validation after ``step``; accuracy is None for regression."""

    step: int
    epoch: int
    val_loss: float
    val_accuracy: float | None
    train_loss: float
    """Mean training loss over the steps since the previous evaluation whose update was
    applied (steps withheld by run.on_nonfinite = skip or rollback are left out)."""
    best_val_loss: float


@dataclass(frozen=True)
class StateChanged:
    """The run's state is now ``state``: running, paused, finished or failed."""

    state: str
    step: int
    reason: str = ""


@dataclass(frozen=True)
class HyperChanged:
    """A hot field changed at ``step`` (takes effect from step + 1)."""

    step: int
    key: str
    old: Any
    new: Any
    note: str = ""
    """Why, for the record (the SetHyper's note, or the engine's own words)."""
    rollback: bool = False
    """The engine made this change rolling back after a non-finite loss
    (``run.on_nonfinite = rollback``: the lr cut that comes with the restored weights).
    What tells a rollback (the app marks a non_finite alert handled by it); the note's
    words are for people."""


@dataclass(frozen=True)
class CommandRejected:
    """A command that could not take effect, and why (the run is unaffected)."""

    command_type: str
    """Class name of the rejected command (not 'command': that key tags commands in JSON)."""
    reason: str
    step: int


@dataclass(frozen=True)
class CheckpointSaved:
    """A checkpoint was written (atomically) to ``path``."""

    step: int
    path: str


@dataclass(frozen=True)
class Notice:
    """Something for the run log: level info, warning or error (the run may end)."""

    step: int
    level: str
    message: str


@dataclass(frozen=True)
class EngineFailed:
    """The run could not go on. ``kind``: config (bad input), user_code or internal."""

    step: int
    kind: str
    message: str
    traceback: str = ""


@dataclass(frozen=True)
class LayerStats:
    """One weight layer's health at a tracked step (None: not applicable or not measured).

    Activation figures are taken at the output of the activation that follows the layer
    (``activation`` names its kind; '' means the layer's own output, as for the head).
    """

    name: str
    kind: str
    activation: str
    act_mean: float | None
    act_std: float | None
    act_min: float | None
    act_max: float | None
    saturated_frac: float | None
    """Share of activations pinned near the bounds (tanh, sigmoid, scaled sigmoid only)."""
    dead_frac: float | None
    """Share of units that output 0 for every sample (ReLU only)."""
    zero_frac: float | None
    grad_out_std: float | None
    """Std of the loss gradient w.r.t. the activation: the backward signal."""
    weight_norm: float
    weight_std: float
    grad_norm: float
    grad_std: float
    grad_max: float
    update_ratio: float | None
    """||dW|| / ||W|| of this step, W before the update (healthy around 1e-3); None when
    nothing was updated. Weight figures are the weights this step computed with."""


@dataclass(frozen=True)
class Histogram:
    """Counts in equal bins from ``lo`` to ``hi`` of one quantity of one layer."""

    layer: str
    quantity: str
    """weight, grad or act."""
    lo: float
    hi: float
    counts: tuple[int, ...]


@dataclass(frozen=True)
class LayerStatsSnapshot:
    """Per-layer statistics of one tracked step, rows in forward order."""

    step: int
    layers: tuple[LayerStats, ...]
    histograms: tuple[Histogram, ...]
    sample_rows: int
    """Activation statistics use at most this many samples of the batch."""
    overhead: float | None = None
    """Measured share of training time spent on the instruments so far (over the steps
    taken while they were on)."""
    interval: int = 0
    """Steps between scheduled snapshots when this one was taken: stats.every, or a
    multiple of it that stats.budget chose; 0 when the schedule is off (an on-demand
    snapshot with stats.every = 0)."""


@dataclass(frozen=True)
class NonFiniteDetected:
    """The first layer whose values turned NaN or inf (forward order, then backward)."""

    step: int
    layer: str
    where: str
    """activation, gradient, weight, or loss when no layer shows it."""
    message: str


@dataclass(frozen=True)
class FinalMetrics:
    """Where the run ended; metrics are None where there was nothing to measure."""

    step: int
    epoch: int
    train_loss: float | None
    """Mean training loss over the applied steps since the previous evaluation (as in
    EvalDone)."""
    val_loss: float | None
    val_accuracy: float | None
    best_val_loss: float | None
    best_step: int | None
    elapsed_s: float

    @classmethod
    def none_yet(cls, elapsed_s: float = 0.0) -> FinalMetrics:
        """Nothing was trained: no step, no metric."""
        return cls(0, 0, None, None, None, None, None, elapsed_s)


@dataclass(frozen=True)
class RunFinished:
    """The run ended. reason: completed, early_stopped, stopped, non_finite or failed."""

    reason: str
    final: FinalMetrics


@dataclass(frozen=True)
class Fix:
    """One suggested remedy, as config changes (dotted key -> new value).

    ``restart`` False: every key is hot and the changes apply to the running run (one
    SetHyper each). True: the changes need a new run (cold keys), so applying the fix
    restarts with them.
    """

    label: str
    """What the fix does, in a few words ("halve the learning rate now")."""
    changes: dict[str, Any]
    restart: bool = False


@dataclass(frozen=True)
class AlertRaised:
    """A diagnosed training problem. A kind is raised once per run, and again only after
    a live change (``HyperChanged``) that came after it was raised, by what the run
    shows since that change (``trainlab.doctor.detectors``)."""

    step: int
    kind: str
    """vanishing_gradients, exploding_gradients, activation_collapse, saturation,
    dead_units, symmetry, non_finite, divergence, plateau, overfitting, update_ratio,
    slow_lower_layers or slow_learning. Raised once per run, again only after a later live
    change."""
    severity: str
    """info, warning or critical (the run cannot learn as it is)."""
    layers: tuple[str, ...]
    """The affected layers in forward order; empty for whole-run problems (the loss)."""
    evidence: dict[str, Any]
    """The numbers behind the diagnosis: name -> number or tuple of numbers."""
    message: str
    """What is wrong and why, in a sentence or two."""
    fixes: tuple[Fix, ...]


@dataclass(frozen=True)
class LrFound:
    """The result of a learning-rate range test (FindLr, or ``trainlab lr-find``)."""

    step: int
    """The run's step when the test ran (its weights were the starting point)."""
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    """Smoothed training loss at each lr (exponential moving average, bias-corrected)."""
    suggested_lr: float | None
    """Where the smoothed loss falls fastest; None when the curve never falls."""
    reason: str
    """How the suggestion was chosen, or why there is none."""


@dataclass(frozen=True)
class Attached:
    """The socket's answer to Attach: who this client is and where history ends.

    Every event with a store sequence number up to ``last_seq`` is in the run's store
    (committed before this was sent); everything after it arrives on the socket.
    """

    run_id: str
    client: int
    role: str
    """control or view: what this client may do (commands from a viewer are rejected)."""
    last_seq: int


@dataclass(frozen=True)
class ControlChanged:
    """Who controls the run now (a client id; 0 when nobody does), sent to every client."""

    controller: int
    reason: str = ""


def failure_events(kind: str, message: str, traceback: str = "",
                   step: int = 0) -> tuple[EngineFailed, StateChanged, RunFinished]:
    """How a run ends when it fails before a trainer could report metrics: one shape
    for the loop's refusals, the CLI's, the detached engine's and a dead engine's."""
    return (EngineFailed(step, kind, message, traceback),
            StateChanged("failed", step, message),
            RunFinished("failed", FinalMetrics.none_yet()))


Event: TypeAlias = (
    RunStarted
    | MetricsBatch
    | EvalDone
    | StateChanged
    | HyperChanged
    | CommandRejected
    | CheckpointSaved
    | Notice
    | EngineFailed
    | RunFinished
    | LayerStatsSnapshot
    | NonFiniteDetected
    | AlertRaised
    | LrFound
    | Attached
    | ControlChanged
)
"""Every event: what the engine (or its socket) emits, what the app and the store fold."""

Emit: TypeAlias = Callable[[Event], None]
"""Where events go: a queue's put, the store's recorder, a printer, the app's bridge."""

EVENT_TYPES: tuple[type, ...] = typing.get_args(Event)
"""The classes of ``Event``, in its order (for isinstance and for tests)."""

COMMANDS: dict[str, type] = {
    cls.__name__: cls for cls in (*typing.get_args(Command), *typing.get_args(SessionCommand))
}
EVENTS: dict[str, type] = {cls.__name__: cls for cls in EVENT_TYPES}


def is_event(message: Any) -> typing.TypeGuard[Event]:
    """Is ``message`` one of the protocol's events (not a command, not anything else)?"""
    return isinstance(message, EVENT_TYPES)


def is_command(message: Any) -> bool:
    """Is ``message`` one of the protocol's run commands (not a session command, not an
    event, not anything else)?"""
    return isinstance(message, typing.get_args(Command))


def is_session_command(message: Any) -> bool:
    """Is ``message`` a session command (Attach, TakeControl), which the socket handles?"""
    return isinstance(message, typing.get_args(SessionCommand))

# --- JSON-safe dicts ------------------------------------------------------------

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode(value: Any) -> Any:
    """A JSON-safe copy of ``value``: dataclasses as dicts, tuples as lists, non-finite
    floats as "NaN", "Infinity" and "-Infinity"."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    return value


def _decode(value: Any, hint: Any) -> Any:
    """Rebuild ``value`` as the type ``hint`` describes (tuples, floats, dataclasses)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        if isinstance(value, str) and value in _NONFINITE:
            return _NONFINITE[value]
        if isinstance(value, list):
            return tuple(_decode(v, Any) for v in value)
        return value
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _decode(value, options[0])
    if hint is float:
        return _NONFINITE[value] if isinstance(value, str) else float(value)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return tuple(_decode(v, item) for v in value)
    if origin is dict:
        item = typing.get_args(hint)[1]
        return {k: _decode(v, item) for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value)
    return value


def _build(cls: type, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(sorted(unknown))}")
    values = {}
    for key, value in data.items():
        try:
            values[key] = _decode(value, hints[key])
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"{cls.__name__}.{key} = {value!r}: {exc}") from None
    try:
        return cls(**values)
    except TypeError as exc:  # e.g. a required field missing
        raise ValueError(f"{cls.__name__}: {exc}") from None


def to_dict(message: Any) -> dict[str, Any]:
    """A JSON-safe dict of a command or event, tagged with its class name."""
    name = type(message).__name__
    tag = "event" if name in EVENTS else "command" if name in COMMANDS else None
    if tag is None:
        raise TypeError(f"{name} is not a protocol message")
    return {tag: name, **encode(message)}


def from_dict(data: dict[str, Any]) -> Any:
    """The command or event that ``to_dict`` produced; ValueError on anything else."""
    if not isinstance(data, dict):
        raise ValueError(f"a message is a JSON object with an 'event' or 'command' field, "
                         f"not a {type(data).__name__}")
    data = dict(data)
    if "event" in data:
        registry, name = EVENTS, data.pop("event")
    elif "command" in data:
        registry, name = COMMANDS, data.pop("command")
    else:
        raise ValueError("a message needs an 'event' or 'command' field")
    if name not in registry:
        raise ValueError(f"unknown message type {name!r}")
    return _build(registry[name], data)


def to_json(message: Any) -> str:
    """One line of strict JSON (no NaN literals)."""
    return json.dumps(to_dict(message), allow_nan=False, separators=(",", ":"))


def from_json(line: str) -> Any:
    """Parse a line written by ``to_json``."""
    return from_dict(json.loads(line))
