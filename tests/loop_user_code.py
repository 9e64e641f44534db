"""User code for the loop's failure tests, named in configs as ``tests.loop_user_code:NAME``."""

from __future__ import annotations

import math

import torch
from torch import nn

FAIL_AT_CALL = 57
"""The training forward (grad on, train mode) that raises: mid metrics interval."""


class _FailsLater(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 16),
                                 nn.ReLU(), nn.Linear(16, num_outputs))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == FAIL_AT_CALL:
                raise ValueError(f"boom in training forward {self.calls}")
        return self.net(x)


def fails_later(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """An MLP whose FAIL_AT_CALL-th training forward raises ValueError."""
    return _FailsLater(input_shape, num_outputs)
