"""Optimizers and learning-rate schedules, by name.

Each optimizer is a registry entry: the torch class and the constructor arguments it
takes from ``OptimConfig``. torch keeps those same arguments in every param group,
so a live change of momentum, betas or weight decay is the same dictionary written
into the groups again (no special case per optimizer).

Each optimizer's own learning rate and eps (what ``optim.lr = auto`` gives it, and what
optim.lr follows when the optimizer changes) are in ``trainlab.core.config.OPTIMIZER_DEFAULTS``:
the config resolves them without importing torch.

The learning rate is set through ``param_groups`` before every step as
``optim.lr * schedule.factor(step)`` (as nanoGPT does), so a live change of the base
rate and any schedule compose without rebuilding anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from trainlab.core.config import OptimConfig, ScheduleConfig


@dataclass(frozen=True)
class OptimizerEntry:
    """A named optimizer: its torch class and how its arguments come from the config."""

    cls: Callable[..., torch.optim.Optimizer]
    """The torch optimizer class, called as ``cls(params, lr=..., **kwargs(config))``
    (typed as that call: the base class Optimizer takes no lr)."""
    kwargs: Callable[[OptimConfig], dict[str, Any]]
    uses: tuple[str, ...]
    """The optim.* fields it reads besides lr (a change to another is stored, not used)."""
    full_batch: bool = False
    """Methods that assume the exact full-batch gradient."""


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "sgd": OptimizerEntry(
        torch.optim.SGD, lambda c: {"weight_decay": c.weight_decay}, ("weight_decay",)
    ),
    "momentum": OptimizerEntry(
        torch.optim.SGD,
        lambda c: {"momentum": c.momentum, "weight_decay": c.weight_decay},
        ("momentum", "weight_decay"),
    ),
    "nesterov": OptimizerEntry(
        torch.optim.SGD,
        lambda c: {"momentum": c.momentum, "nesterov": True, "weight_decay": c.weight_decay},
        ("momentum", "weight_decay"),
    ),
    "adagrad": OptimizerEntry(
        torch.optim.Adagrad,
        lambda c: {"eps": c.eps, "weight_decay": c.weight_decay},
        ("eps", "weight_decay"),
    ),
    "adadelta": OptimizerEntry(
        torch.optim.Adadelta,
        lambda c: {"eps": c.eps, "weight_decay": c.weight_decay},
        ("eps", "weight_decay"),
    ),
    "rmsprop": OptimizerEntry(
        torch.optim.RMSprop,
        lambda c: {"alpha": c.alpha, "eps": c.eps, "weight_decay": c.weight_decay},
        ("alpha", "eps", "weight_decay"),
    ),
    "adam": OptimizerEntry(
        torch.optim.Adam,
        lambda c: {"betas": (c.beta1, c.beta2), "eps": c.eps, "weight_decay": c.weight_decay},
        ("beta1", "beta2", "eps", "weight_decay"),
    ),
    "adamw": OptimizerEntry(
        torch.optim.AdamW,
        lambda c: {"betas": (c.beta1, c.beta2), "eps": c.eps, "weight_decay": c.weight_decay},
        ("beta1", "beta2", "eps", "weight_decay"),
    ),
    "nadam": OptimizerEntry(
        torch.optim.NAdam,
        lambda c: {"betas": (c.beta1, c.beta2), "eps": c.eps, "weight_decay": c.weight_decay},
        ("beta1", "beta2", "eps", "weight_decay"),
    ),
    "rprop": OptimizerEntry(torch.optim.Rprop, lambda c: {}, (), full_batch=True),
    # With a strong-Wolfe line search, as L-BFGS is meant to run: without one a step of
    # lr 1 can overshoot and diverge, and whether it did depended on the BLAS kernels
    # (the optimizers lab's L-BFGS run reached 1.5e12 on one machine, 0.013 on another;
    # with the line search 0.013 on both).
    "lbfgs": OptimizerEntry(
        torch.optim.LBFGS,
        lambda c: {"max_iter": c.lbfgs_iters, "line_search_fn": "strong_wolfe"},
        ("lbfgs_iters",),
        full_batch=True,
    ),
}


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: OptimConfig
) -> torch.optim.Optimizer:
    """A fresh optimizer (empty state) of kind ``cfg.name`` over ``params``."""
    entry = OPTIMIZERS[cfg.name]
    return entry.cls(list(params), lr=cfg.lr, **entry.kwargs(cfg))


def update_hyperparameters(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> None:
    """Write ``cfg``'s values into every param group (state such as moments is kept)."""
    values = OPTIMIZERS[cfg.name].kwargs(cfg)
    for group in optimizer.param_groups:
        group.update(values)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every param group (cheap: a dict write per group)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


# --- schedules ----------------------------------------------------------------

ONE_CYCLE_WARM_FRACTION = 0.3
"""one_cycle: share of the run spent rising (torch's OneCycleLR default)."""
ONE_CYCLE_START_DIV = 25.0
"""one_cycle: the rise starts at lr / 25 (torch's default div_factor)."""
ONE_CYCLE_END_DIV = 1e4
"""one_cycle: the run ends at lr / 1e4."""


def _cosine(start: float, end: float, progress: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _one_cycle(progress: float) -> float:
    if progress < ONE_CYCLE_WARM_FRACTION:
        return _cosine(1.0 / ONE_CYCLE_START_DIV, 1.0, progress / ONE_CYCLE_WARM_FRACTION)
    rest = (progress - ONE_CYCLE_WARM_FRACTION) / (1.0 - ONE_CYCLE_WARM_FRACTION)
    return _cosine(1.0, 1.0 / ONE_CYCLE_END_DIV, rest)


SCHEDULE_FACTORS: dict[str, Callable[[ScheduleConfig, int, float], float]] = {
    "constant": lambda c, step, progress: 1.0,
    "step": lambda c, step, progress: c.gamma ** (step // c.step_size),
    "exponential": lambda c, step, progress: c.gamma**step,
    "cosine": lambda c, step, progress: _cosine(1.0, c.min_factor, progress),
    "one_cycle": lambda c, step, progress: _one_cycle(progress),
}
"""Stateless schedules: (config, step, progress in [0, 1]) -> factor on optim.lr.
reduce_on_plateau depends on validation history and lives in LRSchedule."""


class LRSchedule:
    """The factor on the base learning rate at each step.

    ``factor(step)`` is a pure function of the step (0-based index of the step about
    to be taken) for every schedule except reduce_on_plateau, whose factor drops in
    ``observe`` when validation stops improving. ``total_steps`` may be updated while
    training (a longer run or a new batch size changes it).
    """

    def __init__(self, cfg: ScheduleConfig, total_steps: int) -> None:
        self.cfg = cfg
        self.total_steps = max(1, total_steps)
        self.plateau_factor = 1.0
        self._best = math.inf
        self._bad_evals = 0

    def factor(self, step: int) -> float:
        """Multiplier on optim.lr for ``step``, warmup included."""
        c = self.cfg
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.name == "constant":  # the default, asked every step: no arithmetic
            return 1.0
        # The schedule starts where warmup ends and spans the rest of the run.
        step -= c.warmup_steps
        progress = step / max(1, self.total_steps - c.warmup_steps - 1)
        if c.name == "reduce_on_plateau":
            f = self.plateau_factor
        else:
            f = SCHEDULE_FACTORS[c.name](c, step, progress)
        return f

    def observe(self, val_loss: float) -> bool:
        """Feed a validation loss; True when reduce_on_plateau just decayed the rate."""
        if self.cfg.name != "reduce_on_plateau":
            return False
        if val_loss < self._best:
            self._best, self._bad_evals = val_loss, 0
            return False
        self._bad_evals += 1
        if self._bad_evals < self.cfg.patience:
            return False
        self._bad_evals = 0
        new = max(self.plateau_factor * self.cfg.gamma, self.cfg.min_factor)
        decayed = new < self.plateau_factor
        self.plateau_factor = new
        return decayed

    def state_dict(self) -> dict[str, float | int]:
        """What a checkpoint needs to continue the schedule."""
        return {
            "plateau_factor": self.plateau_factor,
            "best": self._best,
            "bad_evals": self._bad_evals,
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        """Continue from ``state_dict()``'s output (a resumed run); the config stays."""
        self.plateau_factor = float(state["plateau_factor"])
        self._best = float(state["best"])
        self._bad_evals = int(state["bad_evals"])
        self.total_steps = max(1, int(state["total_steps"]))
