"""User code for the doctor's and the LR finder's tests: models and datasets with the
classic mistakes, named in configs as ``tests.doctor_user_code:NAME``."""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
from torch import nn


def _mlp(input_shape: tuple[int, ...], num_outputs: int, *last: nn.Module) -> nn.Module:
    """Flatten -> Linear(16) -> ReLU -> Linear(num_outputs) -> ``last``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.ReLU(),
                         nn.Linear(16, num_outputs), *last)


def relu_net_no_activation(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """A plain MLP whose last module is its output layer (nothing after the logits)."""
    return _mlp(input_shape, num_outputs)


def softmax_net(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Ends in Softmax: wrong before cross_entropy, which applies it again."""
    return _mlp(input_shape, num_outputs, nn.Softmax(dim=1))


def log_softmax_net(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Ends in LogSoftmax, then Dropout (which the check must look past)."""
    return _mlp(input_shape, num_outputs, nn.LogSoftmax(dim=1), nn.Dropout(0.0))


def sigmoid_net(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Ends in Sigmoid: wrong before bce_with_logits and on most regression targets."""
    return _mlp(input_shape, num_outputs, nn.Sigmoid())


def relu_net(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Ends in ReLU: on a regression output it cannot produce negative targets."""
    return _mlp(input_shape, num_outputs, nn.ReLU())


class _FunctionalSoftmax(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        self.body = _mlp(input_shape, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.body(x), dim=1)


def functional_softmax_net(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Applies softmax as a function in forward(): no Softmax module to see."""
    return _FunctionalSoftmax(input_shape, num_outputs)


class _Unused(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        self.body = _mlp(input_shape, num_outputs)
        self.forgotten = nn.Linear(4, 4)  # never called in forward()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def unused_parameter_net(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Has a layer forward() never uses: its parameters get no gradient."""
    return _Unused(input_shape, num_outputs)


class _Uncopyable(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        self.body = _mlp(input_shape, num_outputs)
        self.lock = threading.Lock()  # deepcopy cannot copy a lock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def uncopyable_net(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Trains fine but cannot be deep-copied, so the LR range test cannot run on it."""
    return _Uncopyable(input_shape, num_outputs)


IMBALANCED_COUNTS = (300, 30)
"""Samples of class 0 and class 1 in ``imbalanced_classes``."""


def imbalanced_classes() -> tuple[np.ndarray, np.ndarray]:
    """Two separable Gaussian blobs with 10x more samples of class 0."""
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1], IMBALANCED_COUNTS)
    x = rng.normal(0.0, 1.0, (len(y), 2)) + 3.0 * y[:, None]
    return x, y


def class_missing_from_training() -> tuple[np.ndarray, ...]:
    """Class 2 appears only in the validation split."""
    rng = np.random.RandomState(0)
    x_train, y_train = rng.normal(size=(60, 2)), np.arange(60) % 2
    x_val, y_val = rng.normal(size=(30, 2)), np.arange(30) % 3
    return x_train, y_train, x_val, y_val
