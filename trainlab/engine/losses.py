"""The training objective: a loss matched to the task, and how targets are shaped for it.

Labels are stored once per dataset (class indices, or float targets for regression);
an ``Objective`` says how many outputs the model needs, turns labels into what its
loss compares the outputs with (e.g. one-hot for MSE on classes), and turns outputs
back into predicted classes for accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainlab.core.config import ConfigError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Objective:
    """A loss ready to use: ``fn(outputs, targets(labels))``."""

    name: str
    num_outputs: int
    fn: Callable[[Tensor, Tensor], Tensor]
    targets: Callable[[Tensor], Tensor]
    predict: Callable[[Tensor], Tensor] | None
    """Outputs -> class indices; None for regression (no accuracy)."""


REGRESSION_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "smooth_l1": F.smooth_l1_loss,
}
CLASSIFICATION_LOSSES = ("cross_entropy", "bce_with_logits", *REGRESSION_LOSSES)


def _one_hot(num_classes: int) -> Callable[[Tensor], Tensor]:
    return lambda labels: F.one_hot(labels, num_classes).float()


def build_objective(name: str, task: str, num_classes: int, num_targets: int) -> Objective:
    """The objective for loss ``name`` ('auto' picks by task) on a dataset's labels."""
    if name == "auto":
        name = "cross_entropy" if task == "classification" else "mse"
    if task == "regression":
        if name not in REGRESSION_LOSSES:
            raise ConfigError(
                f"loss.name = {name!r} needs class labels, but the dataset is a regression "
                f"task: use one of {', '.join(REGRESSION_LOSSES)}"
            )
        return Objective(name, num_targets, REGRESSION_LOSSES[name], lambda y: y, None)
    argmax = lambda out: out.argmax(dim=1)  # noqa: E731
    if name == "cross_entropy":
        return Objective(name, num_classes, F.cross_entropy, lambda y: y, argmax)
    if name == "bce_with_logits" and num_classes == 2:
        # One logit for two classes: the textbook sigmoid + BCE set-up.
        return Objective(
            name,
            1,
            F.binary_cross_entropy_with_logits,
            lambda y: y.float().unsqueeze(1),
            lambda out: (out[:, 0] > 0).long(),
        )
    if name == "bce_with_logits":
        # One-vs-rest: one sigmoid per class against one-hot targets.
        fn = F.binary_cross_entropy_with_logits
        return Objective(name, num_classes, fn, _one_hot(num_classes), argmax)
    return Objective(name, num_classes, REGRESSION_LOSSES[name], _one_hot(num_classes), argmax)
