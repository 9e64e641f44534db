"""Where a resumed or forked run starts: its config and the checkpoint it continues.

``trainlab resume RUN`` continues a run that crashed or was stopped from its newest
checkpoint that loads and has finite values, with the effective config saved in it
(live changes included), so the run goes on as if it had never stopped.

``trainlab fork RUN [--from STEP] [--set ...]`` starts a new run from one of a run's
checkpoints with an edited config. The weights and the step count go on (the two runs'
curves overlay at the fork step); so do the optimizer state and the random streams
where the edits leave them meaningful (``trainlab.engine.run_state.restore`` says what it
started afresh). A cold edit that changes the shape of a weight cannot fork: that is a
new run.

Both only read the run directory. Whether an engine holds the run, creating the new
run directory and starting the engine are the caller's (``trainlab.engine.serve``, the CLI).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from trainlab.core.config import Config, ConfigError, apply_overrides, field_info
from trainlab.core.config import from_dict as config_from_dict
from trainlab.core.rundir import CHECKPOINT_DIR
from trainlab.engine.checkpoint import CheckpointError, Checkpoints, Loaded
from trainlab.engine.data import load_dataset
from trainlab.engine.losses import build_objective
from trainlab.engine.models import build_model
from trainlab.engine.run_state import changed_keys, describe_changes, fit_weights


class ResumePlan(NamedTuple):
    """What ``trainlab resume`` starts: the checkpoint's effective config, and it."""

    config: Config
    checkpoint: Loaded
    """Its path, payload (for ``loop.run(start_from=...)``) and the files passed over."""


class ForkPlan(NamedTuple):
    """What ``trainlab fork`` starts: the edited config and the checkpoint it continues."""

    config: Config
    payload: dict[str, Any]
    """The checkpoint, for ``loop.run(start_from=...)``."""
    parent: str
    """The parent run's id (its directory's name)."""
    parent_step: int
    """The step of the checkpoint: where the fork's curve branches off the parent's."""
    source: Path
    """The checkpoint file the payload came from (for an engine started in another
    process, which loads it itself)."""


def checkpoints_of(run_dir: str | Path) -> Checkpoints:
    """The checkpoints of the run in ``run_dir``, for reading."""
    return Checkpoints(Path(run_dir) / CHECKPOINT_DIR)


def _saved_config(loaded: Loaded) -> Config:
    try:
        return config_from_dict(loaded.payload["config"])
    except (ConfigError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{loaded.path}: its saved config does not load ({exc})") from None


def _already_over(config: Config, payload: dict[str, Any]) -> str | None:
    """Why a run with this checkpoint would end before its next step, or None."""
    run, step = config.run, payload["step"]
    # A file of another shape must not crash this (restoring it says what is wrong).
    epoch = payload.get("epoch", 0)
    epoch = epoch if isinstance(epoch, int) else 0
    counters = payload.get("counters")
    stale = counters.get("evals_without_improvement", 0) if isinstance(counters, dict) else 0
    stale = stale if isinstance(stale, int) else 0
    if run.max_steps and step >= run.max_steps:
        return f"it reached run.max_steps = {run.max_steps} (step {step})"
    if run.max_epochs and epoch >= run.max_epochs:
        return f"it reached run.max_epochs = {run.max_epochs} (step {step})"
    patience = config.reg.early_stop_patience
    if patience and stale >= patience:
        return (f"it stopped early at step {step} (no better validation loss in "
                f"reg.early_stop_patience = {patience} evaluations)")
    return None


def resume_notes(loaded: Loaded) -> tuple[str, ...]:
    """What a resumed run's log says first: the checkpoint it continues from, and the
    newer ones it passed over, with why."""
    return (f"resumed from {loaded.path.name} (step {loaded.payload['step']})",
            *(f"skipped {skip.path.name}: {skip.reason}" for skip in loaded.skipped))


def fork_note(parent: str, parent_step: int) -> str:
    """What a fork's log says first: where it branched off."""
    return f"forked from run {parent} at step {parent_step}"


def resume_plan(run_dir: str | Path) -> ResumePlan:
    """The config and checkpoint to continue the run in ``run_dir`` from.

    The newest checkpoint that loads and whose values are finite (last_good.pt, or a
    newer numbered file a crash left unlinked); truncated, corrupt and non-finite ones
    are passed over and listed in ``checkpoint.skipped``.

    Raises:
        CheckpointError: the run has no usable checkpoint (every reason named), or
            its newest one is of a run that is over (nothing is left to train: fork it
            with a longer run.max_steps / run.max_epochs instead).
        ConfigError: the checkpoint's config does not load in this trainlab.
    """
    loaded = checkpoints_of(run_dir).load_latest(good=True)
    config = _saved_config(loaded)
    over = _already_over(config, loaded.payload)
    if over:
        raise CheckpointError(f"nothing to resume in {run_dir}: {over}. To train on, fork "
                              f"it with a longer run (trainlab fork {Path(run_dir).name} "
                              "--set run.max_steps=...)")
    return ResumePlan(config, loaded)


def fork_plan(run_dir: str | Path, step: int | None,
              overrides: Sequence[str] | Mapping[str, Any] = ()) -> ForkPlan:
    """The config and checkpoint a fork of the run in ``run_dir`` starts from.

    ``step``: the checkpoint of that step (``--from STEP``), or None for the newest
    finite one. ``overrides``: ``key=value`` texts (``--set``) or a mapping of dotted
    keys to values, applied over the checkpoint's effective config.

    Another optimizer (optim.name) is allowed: the fork starts it with empty state.
    A cold change is checked against the weights now, by building the new model (and
    loading its data for the input shape): cheap for the built-in data sets, and what
    the run's own start would do.

    Raises:
        CheckpointError: no loadable checkpoint of that step (the steps that exist are
            named), or none at all; or the edited run would already be over at that step.
        ConfigError: a bad override, or a cold change that makes the weights not fit:
            the message names the changed parameter, the weight and both shapes.
    """
    checkpoints = checkpoints_of(run_dir)
    loaded = checkpoints.load_at(step) if step is not None else checkpoints.load_latest(
        good=True)
    parent_config = _saved_config(loaded)
    if isinstance(overrides, Mapping):
        config = parent_config.with_values(overrides)
    else:
        config = apply_overrides(parent_config, list(overrides))
    cold = [key for key in changed_keys(parent_config, config) if not field_info(key).spec.hot]
    if cold:
        data = load_dataset(config.data, config.run.seed)
        objective = build_objective(config.loss.name, data.task, data.num_classes,
                                    data.num_targets)
        model = build_model(config.model, data.input_shape, objective.num_outputs)
        fit_weights(model.state_dict(), loaded.payload["model"],
                    describe_changes(parent_config, config, cold))
    over = _already_over(config, loaded.payload)
    if over:
        raise CheckpointError(f"the fork would end before its first step: {over}. Give it a "
                              "longer run (--set run.max_steps=... or run.max_epochs=...)")
    return ForkPlan(config, loaded.payload, Path(run_dir).name, int(loaded.payload["step"]),
                    loaded.path)
