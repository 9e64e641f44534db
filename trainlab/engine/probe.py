"""The init probe: build the run, measure one forward/backward, update nothing.

It answers "is this network healthy before it trains?": per layer, whether signals
shrink, explode or saturate with depth, and whether gradients reach the first layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainlab.core.config import Config
from trainlab.core.protocol import LayerStatsSnapshot
from trainlab.engine.loop import Trainer


@dataclass(frozen=True)
class ProbeResult:
    """The loss of the batch and the per-layer statistics of the pass."""

    loss: float
    snapshot: LayerStatsSnapshot
    batch_size: int


def probe(config: Config) -> ProbeResult:
    """Measure ``config``'s freshly initialized model on its first training batch.

    Raises ConfigError or UserCodeError like a run's build does.
    """
    trainer = Trainer(config)
    idx, _ = trainer.batches.next(trainer.batch_size)
    loss, snapshot = trainer.measure(trainer.x_train[idx], trainer.t_train[idx])
    return ProbeResult(loss, snapshot, len(idx))
