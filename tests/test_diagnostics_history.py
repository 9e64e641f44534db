"""The doctor's history over long runs: bounded memory, and the same findings.

A run that evaluates on every step (a small full-batch model: one step an epoch) makes
an evaluation per step; over millions of steps the history the detectors read must not
grow, and what they decide from a bounded window must equal what a scan of the whole run
decides. The reference here is the overfitting rule computed from scratch over every
evaluation since the last live change, as it was before the history was bounded (with
the floor on the rise, OVERFIT_MIN_RISE_SHARE, added since).
"""

from __future__ import annotations

import gc
import itertools
import math
import sys
from typing import Any

import numpy as np
import pytest

from trainlab.core.config import Config
from trainlab.core.protocol import (
    EvalDone,
    HyperChanged,
    LayerStats,
    LayerStatsSnapshot,
    MetricsBatch,
)
from trainlab.doctor.detectors import Diagnostics, curves
from trainlab.doctor.detectors.registry import (
    EVAL_HISTORY,
    LOSS_HISTORY,
    RECENT_USABLE_EVALS,
    SNAPSHOT_HISTORY,
    History,
)
from trainlab.doctor.detectors.registry import Context as DiagnosisContext

LN10 = math.log(10)


def context() -> DiagnosisContext:
    return DiagnosisContext(Config(), "classification", 10, "cross_entropy")


def deep_size(root: Any) -> int:
    """Bytes of every object reachable from ``root`` (each counted once), leaving out
    modules, classes and functions (shared code, not the history's data)."""
    seen: set[int] = set()
    stack, total = [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type | type(sys) | type(deep_size)):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def _row(name: str, activation: str) -> LayerStats:
    return LayerStats(name, "Linear", activation, 0.3, 0.5, 0.0, 3.0, None,
                      0.1 if activation else None, 0.1, 1e-3, 10.0, 0.1, 0.5, 0.01, 0.05,
                      1e-3)


ROWS = (_row("blocks.0.linear", "ReLU"), _row("blocks.1.linear", "ReLU"), _row("head", ""))


def full_batch_run(diagnostics: Diagnostics, first: int, last: int, seed: int) -> list[Any]:
    """Steps ``first``..``last`` of a healthy full-batch run, an evaluation after each
    and a snapshot every 10 steps, fed to ``diagnostics``; the alerts they raised."""
    rng = np.random.default_rng(seed)
    alerts = []
    for step in range(first, last + 1):
        loss = 0.05 + (LN10 - 0.05) * math.exp(-step / 300) * math.exp(
            0.02 * rng.standard_normal())
        alerts += diagnostics.observe(MetricsBatch((step,), (loss,), (1e-3,), step, 1e3, 1e5))
        if step % 10 == 0:
            alerts += diagnostics.observe(LayerStatsSnapshot(step, ROWS, (), 64))
        val = 1.1 * loss + 0.01 * abs(float(rng.standard_normal()))
        alerts += diagnostics.observe(EvalDone(step, step, val, 0.9, loss, val))
    return alerts


@pytest.mark.slow
def test_the_history_stays_bounded_over_fifty_thousand_evaluations():
    diagnostics = Diagnostics(Config().with_value("data.batch_size", 0))
    h = diagnostics.history
    assert full_batch_run(diagnostics, 1, 10_000, seed=1) == []
    size_at_10k = deep_size(diagnostics)
    assert full_batch_run(diagnostics, 10_001, 50_000, seed=2) == []
    assert len(h.evals) == EVAL_HISTORY and h.evals[-1].step == 50_000
    assert len(h.losses) == len(h.steps) == len(h.lrs) == LOSS_HISTORY
    assert len(h.snapshots) == SNAPSHOT_HISTORY
    assert h.eval_record.count == 50_000  # every one counted, none kept beyond the last few
    assert len(h.eval_record.recent) == RECENT_USABLE_EVALS
    # Whatever else it holds, it holds no more after 50,000 evaluations than after
    # 10,000: every container is bounded (a list of all evaluations grew ~70 bytes each).
    assert deep_size(diagnostics) <= size_at_10k + 4096


def reference_overfitting(evals: list[EvalDone], change_step: int
                          ) -> tuple[EvalDone, int, tuple[float, ...]] | None:
    """The rule over every evaluation since the change, as a scan of the whole run:
    (best, evaluations since it, recent gaps) when it holds, else None."""
    usable = [e for e in evals if e.step > change_step
              and math.isfinite(e.val_loss) and math.isfinite(e.train_loss)]
    k = curves.OVERFIT_EVALS
    if len(usable) <= k:
        return None
    best_at = min(range(len(usable)), key=lambda i: usable[i].val_loss)
    best, last = usable[best_at], usable[-1]
    since_best = len(usable) - 1 - best_at
    if (since_best < k or last.train_loss >= curves.OVERFIT_MAX_TRAIN_LEVEL * LN10
            or last.train_loss > (1 - curves.OVERFIT_TRAIN_DROP) * best.train_loss):
        return None
    gaps = [e.val_loss - e.train_loss for e in usable[-k - 1:]]
    risen = max((1 + curves.OVERFIT_RISE) * best.val_loss,
                best.val_loss + curves.OVERFIT_MIN_RISE_SHARE * LN10)
    if (any(e.val_loss < risen for e in usable[-k:])
            or min(gaps[1:]) <= 0 or any(b <= a for a, b in itertools.pairwise(gaps))):
        return None
    return best, since_best, tuple(gaps)


def test_the_overfitting_rule_on_a_bounded_history_decides_as_a_scan_of_the_whole_run():
    """Thousands of evaluations (far past EVAL_HISTORY) that overfit, recover, turn NaN
    and are cut by live changes: at every one the detector's finding (or none) equals
    the reference's over all of them."""
    rng = np.random.default_rng(7)
    h, ctx = History(), context()
    h.first_loss = LN10
    every: list[EvalDone] = []
    found = 0
    val, train = 1.0, 1.0
    for step in range(1, 3001):
        if rng.random() < 0.004:  # a live change now and then
            h.last_change_step = step - 1
        # Stretches that overfit (val up, train down) between stretches that learn.
        phase = (step // 40) % 3
        train *= 0.97 if phase else 0.995
        val = val * (1.06 if phase == 2 else 0.98) if rng.random() > 0.1 else val * 0.7
        val = min(max(val, 0.01), 2.0)
        event = EvalDone(step, step, math.nan if rng.random() < 0.01 else val, None,
                         train, val)
        every.append(event)
        h.add_eval(event)
        h.step = step
        alert = curves.overfitting(h, ctx)
        expected = reference_overfitting(every, h.last_change_step)
        if expected is None:
            assert alert is None, step
            continue
        found += 1
        best, since_best, gaps = expected
        assert alert is not None, step
        assert alert.evidence["best_step"] == best.step
        assert alert.evidence["evals_since_best"] == since_best
        assert alert.evidence["recent_gaps"] == pytest.approx(gaps)
    assert found > 20  # the sequence does overfit, many times over
    assert len(h.evals) == EVAL_HISTORY


def test_the_record_keeps_at_least_what_the_overfitting_rule_reads():
    assert curves.OVERFIT_EVALS + 1 <= RECENT_USABLE_EVALS <= EVAL_HISTORY


def test_a_live_change_starts_a_new_record_of_evaluations():
    diagnostics = Diagnostics(Config())
    for step in (10, 20, 30):
        diagnostics.observe(EvalDone(step, 1, 0.5, 0.9, 0.4, 0.5))
    record = diagnostics.history.usable_evals()
    assert record.count == 3 and record.best.step == 10
    diagnostics.observe(HyperChanged(30, "optim.lr", 1e-3, 5e-4))
    diagnostics.observe(EvalDone(40, 1, 0.9, 0.9, 0.4, 0.5))
    record = diagnostics.history.usable_evals()
    assert record.count == 1 and record.best.step == 40  # the earlier best is moot now
