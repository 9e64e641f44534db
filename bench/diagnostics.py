"""Cost of the live doctor per event early in a run and deep into a long one.

Usage::

    python bench/diagnostics.py            # 100 against 100,000 past evaluations
    python bench/diagnostics.py --quick    # smoke run: 100 against 10,000

Every detector must cost O(1) per event, whatever the run's length: a run of millions of
steps with an evaluation every epoch (a small full-batch model evaluates on every step)
must not slow down as its history grows. This feeds two ``Diagnostics`` the same
synthetic healthy run, one for ``--short`` past evaluations and one for ``--long``, then
times ``Diagnostics.observe`` on each kind of event the detectors read, the two
histories interleaved (which goes first alternates), so drift in the machine's speed
hits both alike. It ends with one line per kind, ``<event> ratio=<long/short>`` of the
medians (target <= 1.5).

The run: a 10-class cross-entropy classifier (the default digits experiment's shape),
``--steps-per-eval`` steps per evaluation (one MetricsBatch each), its loss falling from
ln 10 to ~0.05 with mini-batch scatter, the validation loss a little above it; per-layer
snapshots of a 6-layer ReLU MLP with healthy figures. Past evaluations are fed without
snapshots (the snapshot history is bounded, so only its last entries matter), then
``WARM`` rounds with one, so both histories hold a full snapshot window when the timing
starts. No alert is raised in either (a raised kind skips its detector, which would make
the two sides do different work); the script says so if one is.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    # Run as a script: make the repository root importable for ``engine``.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainlab.core.config import Config
from trainlab.core.protocol import EvalDone, LayerStats, LayerStatsSnapshot, MetricsBatch
from trainlab.doctor.detectors import Diagnostics
from trainlab.doctor.detectors.registry import SNAPSHOT_HISTORY

WARM = SNAPSHOT_HISTORY
"""Rounds with a snapshot before the timing: fills both snapshot windows."""
TIMED = 400
"""Timed rounds (one event of each kind per history per round)."""
TARGET = 1.5
"""The long history's median cost may be at most this times the short one's."""


def _row(name: str, activation: str) -> LayerStats:
    """A healthy layer of a Kaiming ReLU MLP in training."""
    return LayerStats(
        name=name, kind="Linear", activation=activation, act_mean=0.3, act_std=0.5,
        act_min=0.0, act_max=3.0, saturated_frac=None,
        dead_frac=0.1 if activation else None, zero_frac=0.1, grad_out_std=1e-3,
        weight_norm=10.0, weight_std=0.1, grad_norm=0.5, grad_std=0.01, grad_max=0.05,
        update_ratio=1e-3)


SNAPSHOT_ROWS = (*(_row(f"blocks.{i}.linear", "ReLU") for i in range(5)), _row("head", ""))


class SyntheticRun:
    """The events of one healthy run, generated round by round from a seed."""

    def __init__(self, steps_per_eval: int, seed: int = 0) -> None:
        self.steps_per_eval = steps_per_eval
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self.evals = 0

    def batch(self) -> MetricsBatch:
        """The next ``steps_per_eval`` steps' losses."""
        first = self.step + 1
        self.step += self.steps_per_eval
        steps = np.arange(first, self.step + 1)
        losses = (0.05 + (math.log(10) - 0.05) * np.exp(-steps / 300.0)) * np.exp(
            0.05 * self.rng.standard_normal(len(steps)))
        return MetricsBatch(tuple(int(s) for s in steps), tuple(float(x) for x in losses),
                            (1e-3,) * len(steps), 1 + self.step // 100, 1000.0, 64000.0)

    def snapshot(self) -> LayerStatsSnapshot:
        """Per-layer statistics at the current step."""
        return LayerStatsSnapshot(self.step, SNAPSHOT_ROWS, (), 64, 0.005, 10)

    def evaluation(self) -> EvalDone:
        """An evaluation at the current step: validation a little above training."""
        self.evals += 1
        train = 0.05 + (math.log(10) - 0.05) * math.exp(-self.step / 300.0)
        val = train * 1.1 + 0.01 * abs(float(self.rng.standard_normal()))
        return EvalDone(self.step, self.step // 100, val, 0.9, train, val)


def build(evals: int, steps_per_eval: int) -> tuple[Diagnostics, SyntheticRun, int]:
    """A Diagnostics fed ``evals`` evaluations of the run (the last WARM with a snapshot);
    also the number of alerts raised while feeding it."""
    diagnostics = Diagnostics(Config())
    context = diagnostics.context
    context.task, context.num_classes, context.loss = "classification", 10, "cross_entropy"
    run = SyntheticRun(steps_per_eval)
    raised = 0
    for i in range(evals):
        raised += len(diagnostics.observe(run.batch()))
        if i == 0 or i >= evals - WARM:
            raised += len(diagnostics.observe(run.snapshot()))
        raised += len(diagnostics.observe(run.evaluation()))
    return diagnostics, run, raised


def _timed(diagnostics: Diagnostics, event: object) -> tuple[float, int]:
    start = time.perf_counter()
    alerts = diagnostics.observe(event)
    return time.perf_counter() - start, len(alerts)


def measure(short: int, long: int, steps_per_eval: int, rounds: int = TIMED
            ) -> tuple[dict[str, tuple[float, float]], dict[str, int], float]:
    """Median seconds per event of each kind, (short history, long history); alerts
    raised per side; seconds it took to build the long history."""
    started = time.perf_counter()
    sides = [build(short, steps_per_eval), build(long, steps_per_eval)]
    build_s = time.perf_counter() - started
    raised = {"short": sides[0][2], "long": sides[1][2]}
    times: dict[str, tuple[list[float], list[float]]] = {
        kind: ([], []) for kind in ("MetricsBatch", "LayerStatsSnapshot", "EvalDone")}
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for side in order:
            diagnostics, run, _ = sides[side]
            for kind, event in (("MetricsBatch", run.batch()),
                                ("LayerStatsSnapshot", run.snapshot()),
                                ("EvalDone", run.evaluation())):
                seconds, alerts = _timed(diagnostics, event)
                times[kind][side].append(seconds)
                raised["short" if side == 0 else "long"] += alerts
    medians = {kind: (statistics.median(a), statistics.median(b))
               for kind, (a, b) in times.items()}
    return medians, raised, build_s


def main(argv: list[str] | None = None) -> int:
    """Print each kind's cost at both history lengths and its ratio line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", type=int, default=100, help="past evaluations, short")
    parser.add_argument("--long", type=int, default=100_000, help="past evaluations, long")
    parser.add_argument("--steps-per-eval", type=int, default=10,
                        help="training steps per evaluation (1: a full-batch run)")
    parser.add_argument("--quick", action="store_true", help="10,000 past evaluations")
    args = parser.parse_args(argv)
    long = 10_000 if args.quick else args.long
    medians, raised, build_s = measure(args.short, long, args.steps_per_eval)
    print(f"diagnostics per event, {args.steps_per_eval} steps per evaluation, median of "
          f"{TIMED} interleaved rounds (long history built in {build_s:.1f} s)")
    print(f"  {'event':<20} {args.short:>9,} evals {long:>9,} evals")
    for kind, (a, b) in medians.items():
        print(f"  {kind:<20} {a * 1e6:>9.1f} us {b * 1e6:>9.1f} us")
    if raised["short"] or raised["long"]:
        print(f"  alerts raised: {raised} (the sides did different work)")
    for kind, (a, b) in medians.items():
        print(f"{kind} ratio={b / a:.3f}")
    return 0 if all(b / a <= TARGET for a, b in medians.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
