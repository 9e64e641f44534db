"""run.precision: the arithmetic of a step's forward pass and loss.

- ``fp32``: as the model is (nothing added to the step).
- ``bf16``: the forward pass and the loss under ``torch.autocast`` to bfloat16. bfloat16
  keeps float32's exponent range, so gradients need no scaling; it runs on recent GPUs
  and on CPUs (so it is tested here).
- ``fp16``: autocast to float16, whose range is small: ``torch.amp.GradScaler`` multiplies
  the loss before backward so small gradients do not underflow, divides the gradients
  back before anything reads them (the instruments, clipping), and skips the update of a
  step whose scaled gradients overflowed, halving the scale. Those skips are the
  scaler's, not a non-finite loss: ``scaler_skips`` counts them, read at a flush.

Weights, optimizer state and the per-layer statistics stay float32 whatever the setting:
autocast only changes the dtype ops compute in, and the instruments copy into float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

import torch

from trainlab.core.config import Config, ConfigError
from trainlab.core.protocol import Emit, Notice
from trainlab.engine.hooks import Flushed, Hook

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""run.precision -> the dtype autocast computes in (fp32: no autocast)."""


def check_precision(config: Config) -> None:
    """Raise ConfigError for a precision this run cannot train with."""
    if config.run.precision == "fp16" and config.optim.name == "lbfgs":
        raise ConfigError("run.precision = fp16 cannot train optim.name = lbfgs: the loss "
                          "scaler steps the optimizer once per step, and L-BFGS evaluates "
                          "the loss several times inside its step; use bf16 or fp32")


class Precision:
    """How one model's steps compute: the autocast context, the backward, the update.

    Costs: fp32 nothing; bf16 and fp16 one autocast context per forward; fp16 also one
    scale multiply, one unscale (a _foreach op over the gradients plus an inf check, on
    the device: no host sync) and the scaler's update per step, and one clone of the
    scale per step for ``scaler_skips``.
    """

    def __init__(self, name: str, device: torch.device) -> None:
        self.name = name
        self.device = device
        self.dtype = AUTOCAST_DTYPES.get(name)
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
        self._scales: list[torch.Tensor] = []
        """The scale after each update since the last ``scaler_skips`` (on the device)."""
        self._last_scale: torch.Tensor | None = None

    def autocast(self) -> AbstractContextManager[object]:
        """The context the forward pass and the loss run in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backpropagate ``loss``; with a scaler, scaled, then unscaled in place, so the
        gradients anyone reads next are the true ones."""
        if self.scaler is None:
            loss.backward()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], torch.Tensor]
             ) -> None:
        """Evaluate ``closure`` and update: L-BFGS evaluates it as often as it needs, every
        other optimizer once; with a scaler, the scaler decides whether to update. A
        NonFiniteLoss from the closure propagates before any update."""
        if isinstance(optimizer, torch.optim.LBFGS):
            optimizer.step(closure)
            return
        try:
            closure()
        except BaseException:
            if self.scaler is not None and self._unscaled(optimizer):
                self.scaler.update()  # the withheld step's unscale must not carry over
            raise
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()
        self._scales.append(self.scaler._scale.detach().clone())  # type: ignore[union-attr]

    def _unscaled(self, optimizer: torch.optim.Optimizer) -> bool:
        """Has the scaler unscaled ``optimizer``'s gradients since its last update?"""
        assert self.scaler is not None
        state = self.scaler._per_optimizer_states.get(id(optimizer))
        return bool(state and state.get("found_inf_per_device"))

    def scale(self) -> float | None:
        """The loss scale now (fp16; None otherwise). One host sync."""
        return self.scaler.get_scale() if self.scaler is not None else None

    def scaler_skips(self) -> int:
        """Updates the scaler skipped since the last call (fp16; 0 otherwise): the scale
        halves after a skipped step and never falls otherwise. One host sync for all."""
        if not self._scales:
            return 0
        scales = torch.stack(self._scales)
        before = scales.new_tensor([-1.0]) if self._last_scale is None else \
            self._last_scale.reshape(1)
        history = torch.cat([before, scales.reshape(-1)])
        self._last_scale, self._scales = scales[-1], []
        return int((history[1:] < history[:-1]).sum())

    def state_dict(self) -> dict[str, object]:
        """The scaler's state, for a checkpoint (empty without a scaler)."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Continue from ``state_dict()``'s output."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class Stepped(Protocol):
    """What the report reads of the run (the loop's Trainer)."""

    step: int
    emit: Emit


class ScalerReport(Hook):
    """run.precision = fp16: at each flush, the updates the loss scaler skipped since the
    last one, said apart from non-finite losses (the loss was finite; its float16
    gradients overflowed, and the scaler lowered the scale instead of updating)."""

    def __init__(self, precision: Precision, run: Stepped) -> None:
        self.precision = precision
        self.run = run
        self.skipped = 0
        """Updates skipped by the scaler in the whole run."""

    def at_flush(self, flushed: Flushed) -> None:
        skips = self.precision.scaler_skips()
        if not skips:
            return
        self.skipped += skips
        scale = self.precision.scale()
        self.run.emit(Notice(self.run.step, "info",
                             f"fp16 loss scaler: {skips} update(s) skipped since the last "
                             f"report ({self.skipped} in the run): gradients overflowed "
                             f"float16, so the scale was lowered, now {scale:g} "
                             "(run.precision = fp16; not a non-finite loss)"))
