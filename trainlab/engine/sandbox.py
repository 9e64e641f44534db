"""A throwaway copy of a run's model and optimizer, for experiments beside the run.

The LR range test and the doctor's overfit-one-batch check train a *copy*: a deep copy
of the model (its BatchNorm running statistics and dropout modules included) with a
fresh optimizer of the run's kind and hyperparameters, fed from random generators of
its own. The run's weights, optimizer state, batch order and augmentation stream are
never read for writing, and :func:`isolated_rng` puts the global torch RNG (dropout
draws from it) back as it was, so the run goes on exactly as if nothing had happened.

The copy trains with the run's objective, L1 penalty and gradient clipping through the
same closure as a run step (``trainlab.engine.optimizer_step``). The per-layer statistics
hooks are never on
it: they are attached to the run's model only inside a tracked step, and a copy is
taken at a step boundary, when no hook is attached.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from trainlab.engine.build import BuiltRun
from trainlab.engine.data import augment_batch
from trainlab.engine.optim import build_optimizer, set_lr
from trainlab.engine.optimizer_step import NonFiniteLoss, make_closure
from trainlab.engine.precision import Precision

SEED_OFFSET = 2
"""The copy's batch draws use ``run.seed + 2`` and its augmentation ``run.seed + 3``: the
run's own batch order uses ``run.seed`` and its augmentation ``run.seed + 1``, so no stream
is shared with the run, and the same config gives the same side experiment every time."""


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Run the body, then restore the global torch RNG (the CPU's, and every CUDA
    device's when CUDA is in use), so dropout masks of later run steps are unchanged."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class Sandbox:
    """A deep copy of ``run``'s model with a fresh optimizer of the run's kind.

    Costs one copy of the model's parameters and buffers (and, once it steps, the
    optimizer's state for them); the run's tensors are only read.
    """

    def __init__(self, run: BuiltRun) -> None:
        self.run = run
        self.model = copy.deepcopy(run.model)
        self.optimizer = build_optimizer(self.model.parameters(), run.config.optim)
        self.precision = Precision(run.precision.name, run.device)  # a scaler of its own
        self.weights = [p for p in self.model.parameters() if p.requires_grad and p.dim() > 1]
        """What the L1 penalty covers: weights, not biases (as in the run)."""
        seed = run.config.run.seed + SEED_OFFSET
        self.index_generator = torch.Generator().manual_seed(seed)
        self.augment_generator = torch.Generator(run.device).manual_seed(seed + 1)

    def batches(self, size: int, *, augment: bool = True) -> Iterator[tuple[torch.Tensor,
                                                                         torch.Tensor]]:
        """Endless (inputs, targets) batches of exactly ``size`` training samples.

        One shuffled pass after another (a pass's last, short batch is dropped so every
        step sees the same batch size); augmented as the run's batches are when
        ``augment`` and the config asks for it.
        """
        run = self.run
        n = len(run.x_train)
        if not 1 <= size <= n:
            raise ValueError(f"batch size {size}: expected 1 to {n} (the training samples)")
        data_cfg = run.config.data
        while True:
            order = torch.randperm(n, generator=self.index_generator).to(run.device)
            for start in range(0, n - size + 1, size):
                idx = order[start : start + size]
                x, target = run.x_train[idx], run.t_train[idx]
                if augment and data_cfg.augment:
                    x = augment_batch(x, data_cfg, run.data.is_image, self.augment_generator)
                yield x, target

    def step(self, x: torch.Tensor, target: torch.Tensor, lr: float) -> float:
        """One optimizer step at ``lr``; returns the batch's loss before the update.

        L-BFGS evaluates the closure up to ``optim.lbfgs_iters`` times per step and the
        loss is its first evaluation (as the run reports it). A non-finite loss is
        returned without applying its update. One host sync (reading the loss).
        """
        data_losses: list[torch.Tensor] = []
        first: list[float] = []

        def read_first(loss: torch.Tensor) -> None:
            first.append(loss.item())  # the step's one host sync
            if not math.isfinite(first[0]):
                raise NonFiniteLoss  # withheld, L-BFGS's update too

        closure = make_closure(self.model, self.optimizer, self.run.objective.fn,
                               self.weights, self.run.config.reg, x, target, data_losses,
                               after_first=read_first, precision=self.precision)
        set_lr(self.optimizer, lr)
        with contextlib.suppress(NonFiniteLoss):  # withheld; the caller sees the loss
            self.precision.step(self.optimizer, closure)
        return first[0]
