"""The init probe: build the run, measure one forward/backward, update nothing.

It answers "is this network healthy before it trains?": per layer, whether signals
shrink, explode or saturate with depth, and whether gradients reach the first layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainlab.core.config import Config
from trainlab.core.protocol import LayerStatsSnapshot
from trainlab.engine.batches import Batches
from trainlab.engine.build import BuiltRun
from trainlab.engine.stats import Instruments


@dataclass(frozen=True)
class ProbeResult:
    """The loss of the batch and the per-layer statistics of the pass."""

    loss: float
    snapshot: LayerStatsSnapshot
    batch_size: int


def measure(run: BuiltRun, instruments: Instruments, x: torch.Tensor, target: torch.Tensor,
            step: int) -> tuple[float, LayerStatsSnapshot]:
    """Loss and per-layer statistics (histograms included) of one forward/backward of
    ``run``'s model on (``x``, ``target``), without updating; the snapshot is labelled
    ``step``.

    Gradients are left as computed (the next step zeroes them). One host sync. Used by
    the init probe and to find where a non-finite loss came from.
    """
    instruments.requested = True  # with histograms
    with instruments.track(step, update=False) as tracker:
        run.optimizer.zero_grad(set_to_none=True)
        with run.precision.autocast():  # the arithmetic of the run's own steps
            loss = run.objective.fn(run.model(x), target)
        loss.backward()
        tracker.after_backward()
    snapshot = instruments.take()
    assert snapshot is not None
    return loss.item(), snapshot


def probe(config: Config) -> ProbeResult:
    """Measure ``config``'s freshly initialized model on its first training batch (the
    batch a run would take first).

    Raises ConfigError or UserCodeError like a run's build does.
    """
    run = BuiltRun(config)
    instruments = Instruments(run.model, run.x_train[:2], config.stats)
    idx, _ = Batches(len(run.x_train), config.run.seed, run.device).next(run.batch_size)
    loss, snapshot = measure(run, instruments, run.x_train[idx], run.t_train[idx], 0)
    return ProbeResult(loss, snapshot, len(idx))
