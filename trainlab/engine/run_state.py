"""A run in progress as a checkpoint payload, and back: what makes resume exact.

``payload(trainer)`` takes everything a new process needs to continue the run (weights,
optimizer, schedule, data order, every RNG, the counters of evaluation, the metrics and
the non-finite policy, the change log, the effective config); ``restore(trainer, ...)``
puts it back before the first step. With another config (a fork) what the change makes
meaningless starts afresh, and each such thing is said.
"""

from __future__ import annotations

import copy
import random
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from trainlab.core.config import Config, ConfigError, field_info
from trainlab.core.config import from_dict as config_from_dict
from trainlab.engine import nonfinite
from trainlab.engine.batches import Batches
from trainlab.engine.metrics import StepMetrics
from trainlab.engine.nonfinite import GoodState, NonFinitePolicy
from trainlab.engine.optim import LRSchedule, update_hyperparameters
from trainlab.engine.precision import Precision

CHECKPOINT_FORMAT = 1
"""Version of the payload ``payload`` writes; ``restore`` reads only it."""
STREAM_KEYS = ("run.seed",)
"""Config keys besides data's cold ones whose change in a fork makes the saved random
streams (data order, augmentation, dropout) meaningless: the fork draws fresh ones."""
SCHEDULE_LENGTH_KEYS = ("data.batch_size", "run.max_steps", "run.max_epochs")
"""Keys that change where the run ends, and so the length the LR schedule spans."""
TRAINER_COUNTERS = (
    "best_val_loss", "best_step", "evals_without_improvement", "last_eval_step",
    "last_val_loss", "last_val_accuracy", "epoch_ended",
)
METRICS_COUNTERS = ("last_train_loss", "interval_loss_sum", "interval_loss_count")
CHECKPOINT_COUNTERS = TRAINER_COUNTERS + METRICS_COUNTERS + nonfinite.COUNTERS
"""The counters a checkpoint keeps (plain numbers, a dict of them), in one flat dict:
what evaluation, early stopping, the interval's train loss and run.on_nonfinite go on
from. The Trainer, its metrics and its non-finite policy each own their share."""


class Resumable(Protocol):
    """What a checkpoint holds of a run in progress (the loop's Trainer)."""

    config: Config
    step: int
    """Steps taken."""
    resumed_from: int | None
    changes: list[dict[str, Any]]
    """The change log: every live change with its step and reason."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    precision: Precision
    batches: Batches
    augment_generator: torch.Generator
    metrics: StepMetrics
    nonfinite: NonFinitePolicy
    # TRAINER_COUNTERS:
    best_val_loss: float
    best_step: int | None
    evals_without_improvement: int
    last_eval_step: int | None
    last_val_loss: float | None
    last_val_accuracy: float | None
    epoch_ended: bool

    def total_steps(self) -> int:
        """Where the run ends, from where it is."""
        ...


def _counter_owners(trainer: Resumable) -> list[tuple[object, tuple[str, ...]]]:
    return [(trainer, TRAINER_COUNTERS), (trainer.metrics, METRICS_COUNTERS),
            (trainer.nonfinite, nonfinite.COUNTERS)]


def payload(trainer: Resumable) -> dict[str, Any]:
    """Everything a new process needs to continue ``trainer``'s run exactly (``restore``).

    Model, optimizer (and its name), schedule, step and epoch, the data order with the
    position in it and its generator, the augmentation generator, every RNG state
    (torch, CUDA, numpy, Python's random), the counters behind evaluation, early
    stopping and run.on_nonfinite, the change log and the effective config. Plain data
    and tensors only: it loads with torch.load(weights_only=True).

    Call at a step boundary once the metrics are flushed; raises ValueError when
    per-step losses are still pending (they are not part of the state). The tensors are
    the live ones, not copies: write the payload before the next step.
    """
    if trainer.metrics.losses:
        raise ValueError(f"{len(trainer.metrics.losses)} step loss(es) not yet flushed: "
                         "flush the metrics before taking a checkpoint")
    good = trainer.nonfinite.good_state
    return {
        "format": CHECKPOINT_FORMAT,
        "step": trainer.step,
        "epoch": trainer.batches.epoch,
        "config": trainer.config.to_dict(),
        "changes": copy.deepcopy(trainer.changes),
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "optimizer_name": trainer.config.optim.name,
        "schedule": trainer.schedule.state_dict(),
        "batches": trainer.batches.state_dict(),
        "scaler": trainer.precision.state_dict(),  # run.precision = fp16's loss scale
        "rng": {**global_rng_state(), "augment": trainer.augment_generator.get_state()},
        "counters": {name: copy.copy(getattr(owner, name))
                     for owner, names in _counter_owners(trainer) for name in names},
        # Under run.on_nonfinite = rollback only: the weights a rollback returns to.
        "good_state": None if good is None else {
            "step": good.step, "model": good.model, "optimizer": good.optimizer,
            "optimizer_name": good.optimizer_name,
        },
    }


def restore(trainer: Resumable, payload: dict[str, Any]) -> list[str]:
    """Continue ``trainer``'s run from ``payload()``'s output; call before the first step.

    With the checkpoint's own effective config (a resume) everything comes back and the
    run goes on as if it had never stopped: on the CPU, bit-identically. With another
    config (a fork) the weights are loaded, and what the change makes meaningless is
    started afresh, each said in the returned notes: another optimizer starts with empty
    state; another run.seed or cold data field draws fresh random streams and a fresh
    data order (the epoch count goes on); another run length re-spans the LR schedule.
    The step counter and the change log always go on from the checkpoint's.

    Raises ConfigError when the payload is not a checkpoint this version reads, or when
    its weights do not fit this model (naming the tensor, both shapes and the cold
    changes behind it).
    """
    if trainer.step:
        raise ValueError(f"restore a checkpoint before the first step (at step {trainer.step})")
    found = payload.get("format")
    if found != CHECKPOINT_FORMAT:
        raise ConfigError(f"checkpoint format {found!r}: this trainlab reads format "
                          f"{CHECKPOINT_FORMAT} (checkpoints written by trainlab since "
                          "issue 6)")
    config = trainer.config
    saved_config = config_from_dict(payload["config"])
    changed = changed_keys(saved_config, config)
    fit_weights(trainer.model.state_dict(), payload["model"], describe_changes(
        saved_config, config, [k for k in changed if not field_info(k).spec.hot]))
    trainer.model.load_state_dict(payload["model"])
    notes = []
    saved_optimizer = payload["optimizer_name"]
    if saved_optimizer == config.optim.name:
        trainer.optimizer.load_state_dict(payload["optimizer"])
        # The saved param groups hold the values of then; a fork's may differ.
        update_hyperparameters(trainer.optimizer, config.optim)
    else:
        notes.append(f"optim.name = {config.optim.name} (the checkpoint's is "
                     f"{saved_optimizer}): the optimizer starts with empty state")

    trainer.schedule.load_state_dict(payload["schedule"])
    trainer.precision.load_state_dict(payload.get("scaler") or {})  # none before fp16 was
    streams = [k for k in changed if k in STREAM_KEYS
               or (k.startswith("data.") and not field_info(k).spec.hot)]
    try:
        if streams:
            raise ValueError(f"{', '.join(streams)} changed")
        trainer.batches.load_state_dict(payload["batches"])
    except ValueError as why:
        trainer.batches.epoch = int(payload["batches"]["epoch"])
        notes.append(f"fresh data order, augmentation and dropout streams from run.seed "
                     f"= {config.run.seed} ({why}); the epoch count goes on from "
                     f"{trainer.batches.epoch}")
    else:
        set_global_rng_state(payload["rng"])
        trainer.augment_generator.set_state(payload["rng"]["augment"])

    counters = payload["counters"]
    missing = [name for name in CHECKPOINT_COUNTERS if name not in counters]
    if missing:
        raise ConfigError(f"checkpoint counters {', '.join(missing)} are missing: not a "
                          f"complete format {CHECKPOINT_FORMAT} checkpoint")
    for owner, names in _counter_owners(trainer):
        for name in names:
            setattr(owner, name, copy.copy(counters[name]))
    trainer.changes = copy.deepcopy(list(payload["changes"]))
    policy, good = trainer.nonfinite, payload.get("good_state")
    if good is not None and good["optimizer_name"] == config.optim.name and not changed:
        policy.good_state = GoodState(good["step"], good["model"], good["optimizer"],
                                      good["optimizer_name"])
    else:
        policy.losses_since_good_state = {}  # a new good state is kept at the next step
    trainer.step = trainer.resumed_from = int(payload["step"])
    if any(k in changed for k in SCHEDULE_LENGTH_KEYS):
        trainer.schedule.total_steps = max(1, trainer.total_steps())
        notes.append(f"the LR schedule now spans {trainer.schedule.total_steps} steps")
    if inits := [k for k in changed if k.startswith("init.")]:
        notes.append(f"{', '.join(inits)}: no effect, the weights come from the checkpoint")
    return notes


def global_rng_state() -> dict[str, Any]:
    """torch's, every CUDA device's, numpy's and Python's RNG states, as plain data."""
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # legacy=True: the (name, keys, pos, ...) tuple
    name, keys, pos, has_gauss, cached = state
    return {
        "torch": torch.get_rng_state(),
        # Only when CUDA is in use: asking would initialise it otherwise.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Undo ``global_rng_state``: set every RNG it saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:  # another machine: the devices it had are not these
            torch.cuda.set_rng_state(state["cuda"][0])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def changed_keys(before: Config, after: Config) -> list[str]:
    """The dotted keys whose values differ between two configs, in schema order."""
    old, new = before.to_dict(), after.to_dict()
    return [f"{section}.{name}" for section, values in new.items()
            for name, value in values.items() if old[section][name] != value]


def describe_changes(before: Config, after: Config, keys: list[str]) -> str:
    """``model.width = 32 (was 16), ...`` for ``keys``."""
    return ", ".join(f"{k} = {after.get(k)!r} (was {before.get(k)!r})" for k in keys)


def fit_weights(model_state: dict[str, torch.Tensor], saved: dict[str, torch.Tensor],
                because: str = "") -> None:
    """Raise ConfigError unless ``saved`` (a checkpoint's weights) has exactly the
    tensors of ``model_state``, shape for shape.

    The message names the first tensor that does not fit, both shapes, and
    ``because``: the cold changes that made the new model (``describe_changes``).
    """
    def shape(t: torch.Tensor) -> str:
        return f"({', '.join(map(str, t.shape))}{',' if t.dim() == 1 else ''})"

    misfit = None
    for name, tensor in model_state.items():
        if name not in saved:
            misfit = f"the new model has {name} {shape(tensor)}, which the checkpoint lacks"
        elif saved[name].shape != tensor.shape:
            misfit = (f"{name} is {shape(saved[name])} in the checkpoint and "
                      f"{shape(tensor)} in the new model")
        if misfit:
            break
    extra = [name for name in saved if name not in model_state]
    if misfit is None and extra:
        misfit = (f"the checkpoint has {extra[0]} {shape(saved[extra[0]])}, which the new "
                  "model lacks")
    if misfit:
        cause = because or "the model"
        raise ConfigError(f"{cause} does not fit the checkpoint's weights: {misfit}. A fork "
                          "starts from those weights, so their shapes cannot change: start a "
                          "new run for that")
