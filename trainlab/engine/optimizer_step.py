"""One optimizer step as the run takes it: the objective, the L1 penalty, gradient
clipping, and the closure every torch optimizer accepts (L-BFGS calls it several times).

The run (``trainlab.engine.loop.Trainer``) and its throwaway copies
(``trainlab.engine.sandbox.Sandbox``:
the LR range test, the doctor's overfit check) both step through here, so a copy
trains exactly as a run step does; ``Precision.step`` (``trainlab.engine.precision``)
then evaluates it and updates. Cost: the closure is built once per step (as a
hand-written loop's would be) and does nothing a plain step does not, except what
the config asks for (L1, clipping, autocast) and the caller's hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from trainlab.core.config import RegConfig
from trainlab.engine.precision import Precision

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLoss(Exception):
    """Raised by a step's first closure evaluation to withhold the step's update (the
    weights stay as they were, so the layer that broke can still be found)."""


def make_closure(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    weights: Sequence[torch.Tensor],
    reg: RegConfig,
    x: torch.Tensor,
    target: torch.Tensor,
    data_losses: list[torch.Tensor],
    *,
    after_backward: Callable[[], None] | None = None,
    after_first: Callable[[torch.Tensor], None] | None = None,
    precision: Precision,
) -> Callable[[], torch.Tensor]:
    """The closure of one step on the batch (``x``, ``target``).

    Each evaluation zeroes the gradients, computes the data loss under ``precision``'s
    autocast and appends it (detached, still on the device) to ``data_losses``, adds
    ``reg.l1`` times the L1 norm of ``weights``, backpropagates through ``precision``
    (fp16: scaled, then unscaled), calls ``after_backward`` (raw gradients, before
    clipping), clips by ``reg.clip_norm`` and ``reg.clip_value``, and on the step's first
    evaluation calls ``after_first`` with the data loss (which may raise NonFiniteLoss to
    withhold the update). Returns the total loss, as optimizers expect.
    """
    l1_weights = list(weights)  # the list torch's _foreach ops take

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = loss_fn(model(x), target)
        data_losses.append(loss.detach())
        total = loss
        if reg.l1:
            total = total + reg.l1 * torch.stack(torch._foreach_norm(l1_weights, 1)).sum()
        precision.backward(total, optimizer)  # fp16: scaled, then unscaled
        if after_backward is not None:
            after_backward()
        if reg.clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), reg.clip_norm, foreach=True)
        if reg.clip_value:
            torch.nn.utils.clip_grad_value_(model.parameters(), reg.clip_value, foreach=True)
        if after_first is not None and len(data_losses) == 1:  # no update has happened yet
            after_first(loss)
        return total

    return closure
