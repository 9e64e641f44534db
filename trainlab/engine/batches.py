"""Shuffled mini-batches of training indices: the run's data order.

One permutation per epoch, drawn from a generator of the run's own (``run.seed``), so a
seeded run repeats and a checkpoint carries the order and the position in it (resume
goes on mid-epoch with the very next batch).
"""

from __future__ import annotations

from typing import Any

import torch


class Batches:
    """Shuffled mini-batches of training indices, one permutation per epoch.

    The batch size is read on every call, so a live change applies from the next
    step. A last batch of a single sample is folded into the one before it: a
    BatchNorm layer cannot train on one sample.
    """

    def __init__(self, n: int, seed: int, device: torch.device | None = None) -> None:
        self.n = n
        self.device = device or torch.device("cpu")
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self._order = self._permutation()
        self._pos = 0

    def _permutation(self) -> torch.Tensor:
        # Drawn on the CPU (same order on any device), copied once per epoch: indexing
        # with device-resident indices needs no host-to-device copy per step.
        return torch.randperm(self.n, generator=self.generator).to(self.device)

    def steps_left_in_epoch(self, batch_size: int) -> int:
        """Batches still to come in the current epoch at this size."""
        return steps_per_epoch(self.n - self._pos, batch_size)

    def state_dict(self) -> dict[str, Any]:
        """The epoch, this epoch's order, the position in it and the generator's state."""
        return {"epoch": self.epoch, "order": self._order.cpu(), "position": self._pos,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``; ValueError when it is of another data size."""
        order = state["order"]
        if len(order) != self.n:
            raise ValueError(f"the saved data order covers {len(order)} samples, this data "
                             f"has {self.n}")
        self.epoch, self._pos = int(state["epoch"]), int(state["position"])
        self._order = order.to(self.device)
        self.generator.set_state(state["generator"])

    def next(self, batch_size: int) -> tuple[torch.Tensor, bool]:
        """Indices of the next batch, and whether it ends the epoch."""
        remaining = self.n - self._pos
        take = remaining if remaining <= batch_size + (batch_size > 1) else batch_size
        idx = self._order[self._pos : self._pos + take]
        self._pos += take
        if self._pos < self.n:
            return idx, False
        self.epoch += 1
        self._order = self._permutation()
        self._pos = 0
        return idx, True


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Number of batches ``Batches`` yields per epoch for this size."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and batch_size == 1) else 0)
