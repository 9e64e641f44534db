"""Layer detectors: the classic per-layer training problems, read from the statistics.

Each detector reads the recent ``LayerStatsSnapshot`` history (initialization,
activations, gradients) and returns at most one ``AlertRaised``. Conventions shared by all of them:

- *rows* are the weight layers in forward order (``trainlab.engine.stats``); the last row is the
  head, every other row is a hidden layer. The head has no activation ('' in
  ``LayerStats.activation``), so activation-based judgments leave it out.
- A figure that is None (not measured) or non-finite is skipped: the non-finite path
  belongs to the ``non_finite`` detector. A layer whose gradient is exactly 0 is left to
  the detectors that explain why (dead units, symmetry): no learning-rate, init-scale or
  depth remedy revives it. Layers that were symmetric at init are the symmetry
  detector's alone: their saturation, tiny gradients or frozen updates follow from it,
  and its fix is theirs.
- Persistence: problems that batch noise could fake must hold on each of the last
  ``PERSIST_SNAPSHOTS`` snapshots. Init-time problems (collapse, saturation, dead units,
  symmetry) fire from the first snapshot when it shows them: it is the network as
  initialized, before any update.
- Evidence: per-layer tuples follow the alert's ``layers``, in the same order; scalar
  entries name the reference the layers are compared against.
- Fixes come from ``diagnostics.fixes`` (one set for every detector): tailored to the
  run, live when all their keys are hot, else with a restart.

Cost: pure Python over plain numbers, in the training thread. Measured: ~2.3 ms per
snapshot for a 31-row net with snapshots at every step (the update-ratio span then holds
50 of them; its per-row medians, computed once per snapshot for both ratio detectors,
are 1.6 ms of it); snapshots come at most 4 a second, so under 1% of a core.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard

from trainlab.core.config import Config
from trainlab.core.health import (  # the thresholds the app's layer table colours by
    DEAD_UNITS_FRAC,
    GRAD_HEALTHY_HIGH,
    GRAD_HEALTHY_LOW,
    SATURATED_FRAC,
    UPDATE_RATIO_HIGH,
    UPDATE_RATIO_LOW,
    UPDATE_RATIO_TARGET,
)
from trainlab.core.protocol import AlertRaised, LayerStats, LayerStatsSnapshot
from trainlab.doctor.detectors import fixes as F
from trainlab.doctor.detectors.registry import SNAPSHOT, Context, History, detector

# --- thresholds -------------------------------------------------------------------
# The healthy ranges the app shows too (gradient range, saturated and dead shares, the
# update/weight ratio's bounds) are in ``trainlab.core.health``; these are the doctor's own.

DEPTH_RATIO = 100.0
"""Two orders of magnitude between a layer's gradient norm and the last hidden layer's
is "shrinking/growing with depth": ordinary layer-to-layer variation is a few times,
not a hundred. Measured here: 10-layer
Xavier tanh and Kaiming ReLU nets stay within ~3x, while a 10-layer Xavier sigmoid net
spans 5e5x and a tanh net with N(0, 1) weights 2500x."""
MIN_TREND_ROWS = 3
"""A depth trend needs two hidden layers and the head: the head is never a reference
(its size and role differ), so the first hidden layer is compared with the last."""
PERSIST_SNAPSHOTS = 3
"""Snapshots in a row a noise-prone condition must hold on. Each snapshot is one batch
(at most 4 a second, ``trainlab.engine.stats.MIN_SCALAR_INTERVAL_S``), so three in a row is
under a second of a run and three different batches agreeing."""
SPIKE_FACTOR = 20.0
"""A gradient spike: the global gradient norm at 20 times its recent median, for one
snapshot (the next is back under that bar: a level that stays up is a network whose
gradients grow out of vanishing, ~200x in a few steps after N(0, 0.01^2) init, not a
spike). Measured here: healthy MLPs jump at most ~3x between snapshots, a 10-layer
BatchNorm net ~11x (its gradients scale with 1/||W||); Adam at lr 0.3 jumped 57x on its
way to diverging."""
SPIKE_INIT_SHARE = 1.0
"""...and at 20 times the gradient norm at init (times this share) too: the recent median
counts as at least the norm at init. A fitted network's gradients fall by orders of
magnitude below their size at init (1.5 -> 3e-8 over a full-batch moons run), so a
ratio to its recent median measures nothing: one batch it no longer fits brings back an
ordinary gradient, "59381515 times its recent median (1.46e-07)" in a converged run
that was flagged critical, and an SGD run on digits jumped 26-103x above its median
with gradients of at most 1.5x its norm at init. The norm at init is a size the run's
lr has already taken; an explosion is far beyond it. A network whose gradients grow
out of vanishing starts below its later median, so the median rules there."""
SPIKE_MIN_BATCH = 16
"""Spikes are only judged on batches of at least 16 samples (0, the full batch, too).
A small batch's gradient is a few samples' own: once most samples are fitted their
gradients are ~0, so the recent median is tiny and the next misfit sample jumps any
number of times above it with nothing wrong (batch 1 is the noisiest; measured: 21x on
the healthy batch-1 lab run at step 2440). In a batch of 16 or more a
single hard sample is at most a sixteenth of the mean, as for DEAD_UNITS_MIN_BATCH. The
lasting rules (gradients above the healthy range, growing with depth) still judge small
batches."""
SPIKE_BASELINE = 8
"""Snapshots before the spike whose median is the "recent" gradient norm."""
SPIKE_MIN_BASELINE = 4
"""No spike is judged on fewer earlier snapshots: the median of 1-3 is itself noise."""
COLLAPSE_RATIO = 100.0
"""Activation std falling two orders of magnitude below the first hidden layer's is a
collapse (N(0, 0.01^2) weights shrink it ~10x per layer in the
classic 10-layer tanh net, while Xavier keeps all layers within ~3x of each other)."""
DEAD_UNITS_MIN_BATCH = 16
"""Dead units are only judged on batches of at least 16 samples: a unit is counted dead
when it is 0 for every sample of the batch, and a live unit active for half the inputs
looks dead by chance with probability 0.5^B (0.5 at B = 1, 1.5e-5 at B = 16)."""
UPDATE_RATIO_SPAN = 50
"""Update ratios are judged over the last 50 steps, and only once a run (or the stretch
since its last live change) is that long: its first steps resize the weights, and a large
step on small weights grows them, which brings the ratio down by itself. Measured: a
30-layer BatchNorm net went from 0.4 to 0.015 within 20 steps, Adam at lr 0.3 from 1.4
to 0.03; SGD at lr 0.5 with weight decay 0.5 stayed at 0.25 (the decay alone takes 25%
a step)."""
UPDATE_RATIO_MIN_SNAPSHOTS = 5
"""Snapshots the span must hold: their per-layer median ignores one or two odd batches."""
LOW_RATIO_MIN_LR_SHARE = 0.5
"""Slow updates are only blamed on optim.lr while the schedule runs at >= half of it:
warmup and decay make the scheduled lr small on purpose."""
STILL_HIGH_LOSS_SHARE = 0.5
"""Small gradients and slow updates are only judged while the training loss is above
half its value at init: a run whose loss has halved is learning, and near a minimum
every gradient and step gets small (a healthy ReLU MLP on blobs measured 1e-5 relative
steps in its first layer after fitting), which is not a vanishing gradient, a too-low lr
or a lagging layer."""
LOSS_RECENT_STEPS = 20
"""Steps whose median training loss is "the loss now" for the guard above."""
LR_RAISE_CAP = 10.0
"""A proposed lr is at most 10x the current one: raising it by more in one go risks
divergence (raise it in steps and watch the loss)."""
TYPICAL_RATIO_SNAPSHOTS = 8
"""Snapshots, the newest since the last live change, whose per-layer medians give the
network's typical update/weight ratio: a few batches, so no one odd batch decides, and
recent ones (a ratio drifts as the weights grow). Often there are fewer: with the
instruments' budget a small fast model is measured at step 1 and then every few hundred
steps, and step 1 alone already shows the lr's scale (its update is the lr times the
gradient at init)."""
SLOW_LAYERS_RATIO = 100.0
"""Lower layers learn "much slower" when their update/weight ratio is two orders of
magnitude below the last hidden layer's (as for DEPTH_RATIO)."""
ADAM_LR = 1e-3
"""Adam's usual learning rate (its paper's and torch's default), proposed with a switch
to Adam."""
RATIO_EXEMPT_OPTIMIZERS = ("rprop", "lbfgs")
"""Optimizers the ~1e-3 rule of thumb (a first-order one) does not judge: Rprop adapts
its own step sizes from gradient signs (optim.lr only seeds them, so no lr change moves
its ratio), and L-BFGS takes quasi-Newton steps sized by the curvature at lr 1 (its
first steps measured 0.2-0.7 on a run that reached its minimum within 10 steps)."""
SGD_FAMILY = ("sgd", "momentum", "nesterov")
"""Optimizers whose steps scale with the raw gradient, so small gradients mean small
steps; Adam-like optimizers divide by the gradient's own scale per parameter."""


# --- reading snapshots -------------------------------------------------------------

Rows = frozenset[int]
"""Row indices (forward order) a detector leaves out."""


def _ok(value: float | None) -> TypeGuard[float]:
    """A measured, finite figure."""
    return value is not None and math.isfinite(value)


def _at_least(value: float | None, threshold: float) -> bool:
    """A measured, finite figure >= ``threshold``."""
    return value is not None and math.isfinite(value) and value >= threshold


def _names(snapshot: LayerStatsSnapshot, indices: Sequence[int]) -> tuple[str, ...]:
    return tuple(snapshot.layers[i].name for i in indices)


def _figures(snapshot: LayerStatsSnapshot, indices: Sequence[int],
             read: Callable[[LayerStats], float | None]) -> tuple[float, ...]:
    """One figure of the given rows, in their order (callers pass measured rows only)."""
    values = []
    for i in indices:
        value = read(snapshot.layers[i])
        assert value is not None, f"{snapshot.layers[i].name}: figure not measured"
        values.append(float(value))
    return tuple(values)


def _last(history: History, count: int, *, from_start: bool = False
          ) -> list[LayerStatsSnapshot] | None:
    """The last ``count`` snapshots, or None when there are fewer; with ``from_start``
    the run's first snapshots count while there are fewer (the network as initialized is
    evidence on its own)."""
    recent = list(history.snapshots)[-count:]
    if len(recent) == count or (from_start and recent
                                and recent[0] is history.first_snapshot):
        return recent
    return None


def _persistent(history: History, find: Callable[[LayerStatsSnapshot], list[int]], *,
                from_start: bool = False) -> list[int]:
    """The rows ``find`` names in the latest snapshot when it names some in each of the
    last PERSIST_SNAPSHOTS (or, with ``from_start``, every snapshot so far)."""
    window = _last(history, PERSIST_SNAPSHOTS, from_start=from_start)
    if window is None or not all(find(s) for s in window[:-1]):
        return []
    return find(window[-1])


def _symmetric_rows(history: History, config: Config) -> list[int]:
    """Hidden rows whose weights were all equal at init (weight std exactly 0, which
    ``trainlab.engine.stats`` reports only when min == max): zeros or constant init. Not judged
    for an MLP of one unit per layer: there is no other unit to be identical to."""
    first = history.first_snapshot
    if first is None or (config.model.arch == "mlp" and config.model.width == 1):
        return []
    return [i for i, row in enumerate(first.layers[:-1])
            if _ok(row.weight_norm) and row.weight_std == 0]


def _not_ratio_judged(history: History, config: Config) -> Rows:
    """Rows whose update/weight ratio says nothing about the lr: symmetric layers (the
    symmetry detector's) and layers whose weights were all 0 at init (e.g. a zero-init
    head), whose ratio starts huge and falls as 1/steps while they grow from nothing."""
    first = history.first_snapshot
    zero = [] if first is None else [i for i, row in enumerate(first.layers)
                                     if row.weight_norm == 0]
    return frozenset(_symmetric_rows(history, config)) | frozenset(zero)


def _loss_still_high(history: History) -> bool:
    """The recent training loss is above STILL_HIGH_LOSS_SHARE of the loss at init
    (True when that cannot be told: no loss yet, or a loss that is not positive)."""
    first = history.first_loss
    recent = [x for x in history.losses[-LOSS_RECENT_STEPS:] if math.isfinite(x)]
    if first is None or first <= 0 or not recent:
        return True
    return statistics.median(recent) >= STILL_HIGH_LOSS_SHARE * first


def _gradient_ok(row: LayerStats) -> bool:
    """The row's gradient figures are measured, finite and not exactly zero."""
    return _ok(row.grad_norm) and _ok(row.grad_max) and row.grad_norm > 0


def _last_hidden_grad_norm(snapshot: LayerStatsSnapshot, skip: Rows) -> float | None:
    """The depth trend's reference: the last hidden layer's gradient norm, if usable."""
    rows = snapshot.layers
    last = len(rows) - 2
    if len(rows) < MIN_TREND_ROWS or last in skip or not _gradient_ok(rows[last]):
        return None
    return rows[last].grad_norm


def _global_grad_norm(snapshot: LayerStatsSnapshot | None) -> float | None:
    """sqrt of the sum of squared per-layer gradient norms (the norm clipping uses)."""
    if snapshot is None or not snapshot.layers:
        return None
    if not all(_ok(row.grad_norm) for row in snapshot.layers):
        return None
    return math.sqrt(sum(row.grad_norm**2 for row in snapshot.layers))


def _hidden_activation_rows(snapshot: LayerStatsSnapshot, skip: Rows = frozenset()
                            ) -> list[int]:
    """Hidden rows with an activation of their own (the head has none)."""
    return [i for i, row in enumerate(snapshot.layers[:-1]) if row.activation and i not in skip]


def _listing(snapshot: LayerStatsSnapshot, names: Sequence[str]) -> str:
    """Layer names of ``snapshot`` for a sentence, saying exactly which: 'a', 'a and b',
    'N layers (a to d)' when they are every row from a to d, else each run of adjacent
    rows: 'N layers (a to c, f, h to k)' (a run of two: 'f, g'). A range is only written
    for rows that are all named, so no layer between its ends is left out silently."""
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return f"{names[0]} and {names[1]}"
    position = {row.name: i for i, row in enumerate(snapshot.layers)}
    runs: list[list[str]] = []
    for name in names:
        if runs and position[name] == position[runs[-1][-1]] + 1:
            runs[-1].append(name)
        else:
            runs.append([name])
    parts = [run[0] if len(run) == 1 else f"{run[0]}, {run[1]}" if len(run) == 2
             else f"{run[0]} to {run[-1]}" for run in runs]
    return f"{len(names)} layers ({', '.join(parts)})"


# --- vanishing and exploding gradients ----------------------------------------------


def _below_range(row: LayerStats) -> bool:
    return row.grad_max < GRAD_HEALTHY_LOW


def vanishing_signs(history: History, config: Config) -> dict[str, Any]:
    """What the latest snapshot shows of vanishing gradients, as evidence (empty when
    nothing): the first layer's gradient norm DEPTH_RATIO below the last hidden
    layer's, or hidden layers whose every gradient value is below the healthy range.
    For other detectors (a plateau) that must not blame the lr for what depth causes:
    a larger lr does not bring such gradients back (it scales every layer's step alike)."""
    if not history.snapshots:
        return {}
    snapshot = history.snapshots[-1]
    skip = frozenset(_symmetric_rows(history, config))
    signs: dict[str, Any] = {}
    reference = _last_hidden_grad_norm(snapshot, skip)
    first = snapshot.layers[0]
    if (reference is not None and 0 not in skip and _gradient_ok(first)
            and first.grad_norm < reference / DEPTH_RATIO):
        signs["first_to_last_hidden"] = first.grad_norm / reference
    below = tuple(row.name for i, row in enumerate(snapshot.layers[:-1])
                  if i not in skip and _gradient_ok(row) and _below_range(row))
    if below:
        signs["below_healthy_range"] = below
    return signs


def saturated_layers(history: History) -> tuple[str, ...]:
    """The hidden layers of the latest snapshot with SATURATED_FRAC or more of their
    activations at the flat ends (their slow steps are saturation's, not the lr's)."""
    if not history.snapshots:
        return ()
    snapshot = history.snapshots[-1]
    return _names(snapshot, _saturated_rows(snapshot, frozenset()))


def symmetric_layers(history: History, config: Config) -> tuple[str, ...]:
    """The names of the hidden layers whose weights were all equal at init."""
    first = history.first_snapshot
    return () if first is None else _names(first, _symmetric_rows(history, config))


def _rows_by_gradient(snapshot: LayerStatsSnapshot, skip: Rows,
                      off: Callable[[LayerStats, float | None], bool]) -> list[int]:
    """Hidden rows (not in ``skip``, with judgeable gradients) for which
    ``off(row, reference)`` holds; the reference is the last hidden layer's gradient
    norm, which the depth comparisons apply only to the rows below it."""
    rows = snapshot.layers
    reference = _last_hidden_grad_norm(snapshot, skip)
    return [i for i, row in enumerate(rows[:-1])
            if i not in skip and _gradient_ok(row)
            and off(row, reference if i < len(rows) - 2 else None)]


def _vanishing_rows(snapshot: LayerStatsSnapshot, skip: Rows, *, judge_range: bool
                    ) -> list[int]:
    """Hidden rows whose gradients are two orders of magnitude below the last hidden
    layer's, or (with ``judge_range``) below the healthy range; only when the first layer
    is among them (gradients vanish towards the input)."""
    found = _rows_by_gradient(snapshot, skip, lambda row, reference: (
        (judge_range and _below_range(row))
        or (reference is not None and row.grad_norm < reference / DEPTH_RATIO)))
    return found if found and found[0] == 0 else []


@detector("vanishing_gradients", SNAPSHOT)
def vanishing_gradients(history: History, ctx: Context) -> AlertRaised | None:
    """Gradients shrinking by orders of magnitude towards the input, or below the
    healthy range while the loss is still high, on PERSIST_SNAPSHOTS snapshots in a row."""
    skip = frozenset(_symmetric_rows(history, ctx.config))
    judge_range = _loss_still_high(history)
    found = _persistent(history, lambda s: _vanishing_rows(s, skip, judge_range=judge_range))
    if not found:
        return None
    snapshot = history.snapshots[-1]
    names = _names(snapshot, found)
    below = [snapshot.layers[i].name for i in found
             if judge_range and _below_range(snapshot.layers[i])]
    evidence: dict[str, Any] = {
        "grad_norm": _figures(snapshot, found, lambda r: r.grad_norm),
        "grad_max": _figures(snapshot, found, lambda r: r.grad_max),
    }
    # Every named layer is in one or both of the sentences below (the rows
    # _vanishing_rows found: shrunk against the last hidden layer, or below the range).
    reasons = []
    reference = _last_hidden_grad_norm(snapshot, skip)
    first = snapshot.layers[0]
    shrunk = [] if reference is None else [
        i for i in found if i < len(snapshot.layers) - 2
        and snapshot.layers[i].grad_norm < reference / DEPTH_RATIO]
    if reference is not None and shrunk:
        evidence["last_hidden_grad_norm"] = reference
        if shrunk[0] == 0:
            evidence["first_to_last_hidden"] = first.grad_norm / reference
        lowest = min(shrunk, key=lambda i: snapshot.layers[i].grad_norm)
        one = len(shrunk) == 1
        reasons.append(
            f"the gradient {'norm' if one else 'norms'} of "
            f"{_listing(snapshot, _names(snapshot, shrunk))} {'is' if one else 'are'} "
            f"under 1/{DEPTH_RATIO:g} of that of {snapshot.layers[-2].name} (down to "
            f"{snapshot.layers[lowest].grad_norm / reference:.1e} times, in "
            f"{snapshot.layers[lowest].name}), shrinking towards the input")
    if below:
        reasons.append(f"every gradient value of {_listing(snapshot, below)} is below "
                       f"{GRAD_HEALTHY_LOW:g}, under the healthy range")
    message = (f"Vanishing gradients: {'; '.join(reasons)}. The chain rule multiplies "
               "small factors layer after layer, so the lower layers barely learn.")
    return AlertRaised(
        step=snapshot.step, kind="vanishing_gradients",
        severity="critical" if below else "warning", layers=names, evidence=evidence,
        message=message, fixes=F.depth_fixes(ctx.config, snapshot))


def _growth_reference(snapshot: LayerStatsSnapshot, skip: Rows) -> float | None:
    """The last hidden layer's gradient norm as the reference gradients grow from, when
    its gradient values are within the healthy range. One below it (a layer mostly dead,
    or fitted) is starved, not a scale: a lower layer's ordinary gradient is then any
    number of times its norm, as a ratio to a number near 0 is, with nothing exploding."""
    reference = _last_hidden_grad_norm(snapshot, skip)
    if reference is None or _below_range(snapshot.layers[-2]):
        return None
    return reference


def _exploding_rows(snapshot: LayerStatsSnapshot, skip: Rows) -> list[int]:
    """Hidden rows whose gradients are above the healthy range, or two orders of
    magnitude above the last hidden layer's (growing towards the input; only against a
    reference within the healthy range, ``_growth_reference``)."""
    reference = _growth_reference(snapshot, skip)
    return _rows_by_gradient(snapshot, skip, lambda row, last: (
        row.grad_max > GRAD_HEALTHY_HIGH
        or (last is not None and reference is not None
            and row.grad_norm > reference * DEPTH_RATIO)))


def _spike(history: History, config: Config
           ) -> tuple[LayerStatsSnapshot, float, float, float, list[int]] | None:
    """(the spike's snapshot, its global norm, the recent median, the baseline, the rows
    that jumped) when the snapshot before the latest has a global gradient norm
    SPIKE_FACTOR times the baseline (the median of the SPIKE_BASELINE snapshots before it,
    or SPIKE_INIT_SHARE of the norm at init where that is larger: a jump from a fitted
    network's tiny gradients back to a normal size is not an explosion), and the latest
    is back under that bar (a spike is one bad batch, not a new level). Not judged on
    batches under SPIKE_MIN_BATCH samples."""
    if 0 < config.data.batch_size < SPIKE_MIN_BATCH:
        return None
    recent = list(history.snapshots)[-SPIKE_BASELINE - 2:]
    measured = [(s, n) for s in recent if (n := _global_grad_norm(s)) is not None]
    if len(measured) < SPIKE_MIN_BASELINE + 2:
        return None
    (spike, norm), (_, after_norm) = measured[-2], measured[-1]
    before = [(s, n) for s, n in measured[-2 - SPIKE_BASELINE:-2]
              if len(s.layers) == len(spike.layers)]
    if len(before) < SPIKE_MIN_BASELINE:
        return None
    median = statistics.median(n for _, n in before)
    first = history.first_snapshot
    at_init = _global_grad_norm(first)
    baseline = max(median, SPIKE_INIT_SHARE * at_init) if at_init is not None else median
    bar = SPIKE_FACTOR * baseline
    if baseline <= 0 or norm < bar or after_norm >= bar:
        return None
    # Each layer against its own baseline, floored the same way (its norm at init).
    own_at_init = ([row.grad_norm for row in first.layers] if first is not None
                   and len(first.layers) == len(spike.layers) else None)
    jumped = []
    for i, row in enumerate(spike.layers):
        own = statistics.median(s.layers[i].grad_norm for s, _ in before)
        if own_at_init is not None and math.isfinite(own_at_init[i]):
            own = max(own, SPIKE_INIT_SHARE * own_at_init[i])
        if own > 0 and row.grad_norm >= SPIKE_FACTOR * own:
            jumped.append(i)
    # The global norm jumped, so some layer did; when none jumped SPIKE_FACTOR-fold on its
    # own, the layer with the largest share of the norm is the one to look at.
    return spike, norm, median, baseline, jumped or [
        max(range(len(spike.layers)), key=lambda i: spike.layers[i].grad_norm)]


@detector("exploding_gradients", SNAPSHOT)
def exploding_gradients(history: History, ctx: Context) -> AlertRaised | None:
    """Gradients growing by orders of magnitude towards the input or above the healthy
    range (PERSIST_SNAPSHOTS in a row), or a sudden spike of the global gradient norm."""
    config = ctx.config
    spike = _spike(history, config)
    if spike is not None:
        snapshot, norm, median, baseline, found = spike
        names = _names(snapshot, found)
        against = (f"its recent median ({median:.3g})" if baseline == median else
                   f"its norm at init ({baseline:.3g}; the recent median is {median:.3g})")
        message = (f"Gradient spike: the global gradient norm jumped to {norm:.3g}, "
                   f"{norm / baseline:.0f} times {against}, mostly in "
                   f"{_listing(snapshot, names)}. One such step can throw the weights far off; "
                   "the learning rate is likely too high for this region of the loss.")
        return AlertRaised(
            step=snapshot.step, kind="exploding_gradients", severity="critical",
            layers=names,
            evidence={"grad_norm": _figures(snapshot, found, lambda r: r.grad_norm),
                      "global_grad_norm": norm, "recent_median": median,
                      "baseline": baseline, "jump": norm / baseline},
            message=message, fixes=F.combine(F.clip(config), F.halve_lr(config)))
    snapshot = history.snapshots[-1]
    skip = frozenset(_symmetric_rows(history, config))
    found = _persistent(history, lambda s: _exploding_rows(s, skip))
    if not found:
        return None
    names = _names(snapshot, found)
    above = [snapshot.layers[i].name for i in found
             if snapshot.layers[i].grad_max > GRAD_HEALTHY_HIGH]
    evidence: dict[str, Any] = {
        "grad_norm": _figures(snapshot, found, lambda r: r.grad_norm),
        "grad_max": _figures(snapshot, found, lambda r: r.grad_max),
    }
    reasons = []
    reference = _growth_reference(snapshot, skip)
    grown = [i for i in found if i < len(snapshot.layers) - 2]
    if reference is not None and grown:
        top = max(grown, key=lambda i: snapshot.layers[i].grad_norm)
        ratio = snapshot.layers[top].grad_norm / reference
        if ratio > DEPTH_RATIO:
            evidence["last_hidden_grad_norm"] = reference
            evidence["largest_to_last_hidden"] = ratio
            reasons.append(f"the gradient norm of {snapshot.layers[top].name} is "
                           f"{ratio:.3g} times that of {snapshot.layers[-2].name}, growing "
                           "towards the input")
    if above:
        reasons.append(f"gradient values of {_listing(snapshot, above)} exceed "
                       f"{GRAD_HEALTHY_HIGH:g}, over the healthy range")
    message = (f"Exploding gradients: {'; '.join(reasons)}. Steps this large overshoot "
               "and can turn the weights into inf or NaN.")
    return AlertRaised(
        step=snapshot.step, kind="exploding_gradients",
        severity="critical" if above else "warning", layers=names, evidence=evidence,
        message=message,
        fixes=F.combine(F.clip(config), F.halve_lr(config), F.init(config, snapshot),
                        F.batch_norm(config)))


# --- activations ---------------------------------------------------------------------


def _activation_stds(snapshot: LayerStatsSnapshot, skip: Rows) -> dict[int, float]:
    """Hidden row -> its measured activation std, in forward order. Mostly-dead ReLU
    layers are left out: their std is ~0 because they are dead (the dead-units story)."""
    return {i: std for i in _hidden_activation_rows(snapshot, skip)
            if (std := snapshot.layers[i].act_std) is not None and math.isfinite(std)
            and not _at_least(snapshot.layers[i].dead_frac, DEAD_UNITS_FRAC)}


def _collapsed_rows(snapshot: LayerStatsSnapshot, skip: Rows) -> list[int]:
    """Hidden rows whose activation std fell COLLAPSE_RATIO below the first hidden
    layer's, when the deepest one is among them (the signal reaching the head is ~0)."""
    stds = _activation_stds(snapshot, skip)
    measured = list(stds)
    if len(measured) < 2 or stds[measured[0]] <= 0:
        return []
    floor = stds[measured[0]] / COLLAPSE_RATIO
    found = [i for i in measured[1:] if stds[i] < floor]
    return found if found and found[-1] == measured[-1] else []


@detector("activation_collapse", SNAPSHOT)
def activation_collapse(history: History, ctx: Context) -> AlertRaised | None:
    """Activation std falling towards 0 with depth, from the first snapshot on."""
    skip = frozenset(_symmetric_rows(history, ctx.config))
    found = _persistent(history, lambda s: _collapsed_rows(s, skip), from_start=True)
    if not found:
        return None
    snapshot = history.snapshots[-1]
    first, first_std = next(iter(_activation_stds(snapshot, skip).items()))
    names = _names(snapshot, found)
    stds = _figures(snapshot, found, lambda r: r.act_std)
    message = (f"Activations collapse with depth: their std falls from {first_std:.3g} in "
               f"{snapshot.layers[first].name} to {stds[-1]:.2g} in {names[-1]}. The upper "
               "layers and the head see almost no signal, and the gradients shrink the same "
               "way on the way back: the weights are too small for the depth.")
    return AlertRaised(
        step=snapshot.step, kind="activation_collapse", severity="warning", layers=names,
        evidence={"act_std": stds, "first_act_std": first_std}, message=message,
        fixes=F.combine(F.init(ctx.config, snapshot), F.batch_norm(ctx.config)))


def _saturated_rows(snapshot: LayerStatsSnapshot, skip: Rows) -> list[int]:
    """Hidden rows with at least SATURATED_FRAC of their activations pinned at the bounds."""
    return [i for i in _hidden_activation_rows(snapshot, skip)
            if _at_least(snapshot.layers[i].saturated_frac, SATURATED_FRAC)]


@detector("saturation", SNAPSHOT)
def saturation(history: History, ctx: Context) -> AlertRaised | None:
    """tanh/sigmoid units pinned at their bounds, from the first snapshot on."""
    config = ctx.config
    skip = frozenset(_symmetric_rows(history, config))
    found = _persistent(history, lambda s: _saturated_rows(s, skip), from_start=True)
    if not found:
        return None
    snapshot = history.snapshots[-1]
    names = _names(snapshot, found)
    shares = _figures(snapshot, found, lambda r: r.saturated_frac)
    first = history.first_snapshot
    at_init = first is not None and bool(_saturated_rows(first, skip))
    message = (f"Saturated units: in {_listing(snapshot, names)} up to {max(shares):.0%} of the "
               "activations sit at the flat ends of the activation, where its slope is "
               "almost 0, so almost no gradient passes and these units stop learning. "
               + ("The weights are too large from the start." if at_init else
                  "It appeared during training: the steps pushed the inputs too far."))
    relu = F.activation(config, "relu", "switch the activation to ReLU")
    return AlertRaised(
        step=snapshot.step, kind="saturation", severity="warning", layers=names,
        evidence={"saturated_frac": shares}, message=message,
        fixes=F.combine(F.init(config, snapshot), None if at_init else F.halve_lr(config),
                        F.batch_norm(config), relu))


def _dead_rows(snapshot: LayerStatsSnapshot, skip: Rows) -> list[int]:
    """Hidden ReLU rows with at least DEAD_UNITS_FRAC dead units (zeros init + ReLU reads
    100% dead: those rows are in ``skip``, the symmetry detector's)."""
    rows = snapshot.layers
    return [i for i in range(len(rows) - 1)
            if i not in skip and _at_least(rows[i].dead_frac, DEAD_UNITS_FRAC)]


@detector("dead_units", SNAPSHOT)
def dead_units(history: History, ctx: Context) -> AlertRaised | None:
    """ReLU units that output 0 for every sample, with batches large enough for "every
    sample" to mean something: from the first snapshot when they are dead there (the
    network as initialized: an init-time finding needs no persistence), else on
    PERSIST_SNAPSHOTS snapshots in a row."""
    config = ctx.config
    if 0 < config.data.batch_size < DEAD_UNITS_MIN_BATCH:
        return None
    skip = frozenset(_symmetric_rows(history, config))
    found = _persistent(history, lambda s: _dead_rows(s, skip), from_start=True)
    if not found:
        return None
    snapshot = history.snapshots[-1]
    names = _names(snapshot, found)
    shares = _figures(snapshot, found, lambda r: r.dead_frac)
    evidence: dict[str, Any] = {"dead_frac": shares}
    first = history.first_snapshot
    at_init = False
    if first is not None and len(first.layers) == len(snapshot.layers) and all(
            _ok(first.layers[i].dead_frac) for i in found):
        initial = _figures(first, found, lambda r: r.dead_frac)
        evidence["dead_frac_at_init"] = initial
        at_init = all(share >= DEAD_UNITS_FRAC for share in initial)
    if not at_init:
        cause = "They died during training: a step too large pushed their inputs below 0."
    elif config.init.bias < 0:
        cause = (f"They were dead from the start: the negative bias (init.bias = "
                 f"{config.init.bias:g}) puts their inputs below 0.")
    else:
        cause = "They were dead from the start: the init puts their inputs below 0."
    whole = [n for n, share in zip(names, shares, strict=True) if share >= 1.0]
    message = (f"Dead ReLU units: up to {max(shares):.0%} of the units of "
               f"{_listing(snapshot, names)} output 0 for every sample of the batch, so "
               "they get no gradient from it: a ReLU unit gets no gradient from the "
               "samples where it outputs 0, and comes back only if its input moves above 0 "
               "on some samples (as the layers below it change, or its own weights on "
               "samples where it is active). " + cause
               + (f" {_listing(snapshot, whole)} {'passes' if len(whole) == 1 else 'pass'} no "
                  "gradient at all to the layers below." if whole else ""))
    bias = (F.fix(f"reset the biases ({config.init.bias:g}) to 0", {"init.bias": 0.0})
            if at_init and config.init.bias < 0 else None)
    leaky = F.leaky_relu(config)
    init = F.init(config, snapshot) if at_init and bias is None else None
    slower = None if at_init else F.halve_lr(config, " (stops more units dying)")
    return AlertRaised(
        step=snapshot.step, kind="dead_units", severity="critical" if whole else "warning",
        layers=names, evidence=evidence, message=message,
        fixes=F.combine(bias, init, leaky, slower))


# --- symmetry ------------------------------------------------------------------------


@detector("symmetry", SNAPSHOT)
def symmetry(history: History, ctx: Context) -> AlertRaised | None:
    """Hidden layers whose weights were all equal at init (zeros or constant): their
    units are identical. The statistics carry no per-unit figure, but weight std 0 means
    every weight, so every unit's row of weights, is the same."""
    first = history.first_snapshot
    found = _symmetric_rows(history, ctx.config)
    if first is None or not found:
        return None
    names = _names(first, found)
    grads = _figures(first, found, lambda r: r.grad_norm)
    zero_grad = [n for n, g in zip(names, grads, strict=True) if g == 0]
    message = (f"Symmetric units: every weight of {_listing(first, names)} has the same value "
               "at init, so every unit of such a layer computes the same thing and gets "
               "the same gradient; the units stay identical and the layer works as one."
               + (f" The gradient of {_listing(first, zero_grad)} is exactly 0: "
                  f"{'it does' if len(zero_grad) == 1 else 'they do'} not learn at all."
                  if zero_grad else ""))
    return AlertRaised(
        step=first.step, kind="symmetry", severity="critical", layers=names,
        evidence={"weight_std": _figures(first, found, lambda r: r.weight_std),
                  "weight_norm": _figures(first, found, lambda r: r.weight_norm),
                  "grad_norm": grads},
        message=message, fixes=F.combine(F.init(ctx.config, first)))


# --- update sizes --------------------------------------------------------------------


def _ratio_medians(history: History, skip: Rows
                   ) -> tuple[LayerStatsSnapshot, dict[int, float]] | None:
    """Per row, the median update/weight ratio over the snapshots of the last
    UPDATE_RATIO_SPAN steps, once the run has gone that far since its start or its last
    live change (an lr change makes older ratios moot). Rows with a missing figure or a
    zero gradient in the span are left out. Memoized per event: update_ratio and
    slow_lower_layers both read it (the costliest figure here: medians of every row)."""
    key = ("ratio_medians", skip)
    if key not in history.memo:
        history.memo[key] = _measure_ratio_medians(history, skip)
    return history.memo[key]


def _measure_ratio_medians(history: History, skip: Rows
                           ) -> tuple[LayerStatsSnapshot, dict[int, float]] | None:
    if not history.snapshots:
        return None
    latest = history.snapshots[-1]
    if latest.step - history.last_change_step < UPDATE_RATIO_SPAN:
        return None
    start = max(latest.step - UPDATE_RATIO_SPAN, history.last_change_step)
    window = [s for s in history.snapshots if s.step > start]
    if len(window) < UPDATE_RATIO_MIN_SNAPSHOTS or any(
            len(s.layers) != len(latest.layers) for s in window):
        return None
    medians = {}
    for i in range(len(latest.layers)):
        rows = [s.layers[i] for s in window]
        ratios = [r.update_ratio for r in rows if r.update_ratio is not None
                  and math.isfinite(r.update_ratio) and _gradient_ok(r)]
        if i not in skip and len(ratios) == len(rows):
            medians[i] = statistics.median(ratios)
    return latest, medians


def lr_runs_at_base(history: History, config: Config) -> bool:
    """The schedule runs at >= LOW_RATIO_MIN_LR_SHARE of optim.lr (the latest step's lr)."""
    if not history.lrs:
        return True
    return history.lrs[-1] >= LOW_RATIO_MIN_LR_SHARE * config.optim.lr


def typical_update_ratio(history: History, config: Config) -> tuple[float, int] | None:
    """(the median over layers of each layer's median update/weight ratio, the snapshots
    it comes from): the last TYPICAL_RATIO_SNAPSHOTS after the last live change that
    were taken while the schedule ran at >= LOW_RATIO_MIN_LR_SHARE of optim.lr (warmup
    and decay make steps small on purpose; a snapshot older than the loss history, whose
    lr is not known, is left out). Rows that say nothing about the lr are left out
    (``_not_ratio_judged``), and so are rows with a missing figure or a zero gradient.
    The median layer, not the fastest: the output layer's ratio reads high while it
    grows from small weights (auto init scales it down), the first layer's low. None
    when nothing is left to judge."""
    skip = _not_ratio_judged(history, config)
    steps, lrs = history.steps, history.lrs
    floor = LOW_RATIO_MIN_LR_SHARE * config.optim.lr
    picked: list[LayerStatsSnapshot] = []
    for snapshot in reversed(history.snapshots):
        if snapshot.step <= history.last_change_step or len(picked) == TYPICAL_RATIO_SNAPSHOTS:
            break
        at = bisect.bisect_left(steps, snapshot.step)
        if at < len(steps) and steps[at] == snapshot.step and lrs[at] >= floor:
            picked.append(snapshot)
    if not picked:
        return None
    rows = len(picked[0].layers)
    medians = []
    for i in range(rows):
        if i in skip:
            continue
        ratios = [ratio for s in picked if len(s.layers) == rows
                  and _ok(ratio := s.layers[i].update_ratio) and _gradient_ok(s.layers[i])]
        if ratios:
            medians.append(statistics.median(ratios))
    return (statistics.median(medians), len(picked)) if medians else None


@detector("update_ratio", SNAPSHOT)
def update_ratio(history: History, ctx: Context) -> AlertRaised | None:
    """Update/weight ratios far from ~1e-3 over the last UPDATE_RATIO_SPAN steps: some
    layer's median above UPDATE_RATIO_HIGH (lr too high), or every layer's below
    UPDATE_RATIO_LOW while the loss has not fallen and the schedule is not what makes the
    lr small (lr too low). A network whose lower layers alone are slow is
    slow_lower_layers' finding, and the low side is not judged while any layer's
    gradients are below the healthy range: a larger lr does not cure vanishing gradients."""
    config = ctx.config
    if config.optim.name in RATIO_EXEMPT_OPTIMIZERS:
        return None
    measured = _ratio_medians(history, _not_ratio_judged(history, config))
    if measured is None:
        return None
    snapshot, medians = measured
    high = [i for i, m in medians.items() if m > UPDATE_RATIO_HIGH]
    vanishing = any(_below_range(snapshot.layers[i]) for i in medians)
    if high:
        found, worst = high, max(medians[i] for i in high)
        factor = UPDATE_RATIO_TARGET / worst
        message = (f"Updates too large: over the last {UPDATE_RATIO_SPAN} steps each step "
                   f"changed the weights of {_listing(snapshot, _names(snapshot, high))} by up to "
                   f"{worst:.2g} of their size (healthy is about {UPDATE_RATIO_TARGET:g}). "
                   "The weights jump around instead of settling: the learning rate is too "
                   "high.")
        verb = "lower"
    elif (medians and not vanishing and max(medians.values()) < UPDATE_RATIO_LOW
          and _loss_still_high(history) and lr_runs_at_base(history, config)):
        found, fastest = sorted(medians), max(medians.values())
        factor = LR_RAISE_CAP if fastest <= 0 else min(UPDATE_RATIO_TARGET / fastest,
                                                       LR_RAISE_CAP)
        message = (f"Updates too small: over the last {UPDATE_RATIO_SPAN} steps no layer "
                   f"changed by more than {fastest:.2g} of its size per step (healthy is "
                   f"about {UPDATE_RATIO_TARGET:g}) while the loss has not yet halved. "
                   "Training crawls: the learning rate is too low.")
        verb = "raise"
    else:
        return None
    return AlertRaised(
        step=snapshot.step, kind="update_ratio", severity="warning",
        layers=_names(snapshot, found),
        evidence={"update_ratio": tuple(medians[i] for i in found),
                  "target": UPDATE_RATIO_TARGET},
        message=message, fixes=F.combine(F.scale_lr(config, factor, verb)))


@detector("slow_lower_layers", SNAPSHOT)
def slow_lower_layers(history: History, ctx: Context) -> AlertRaised | None:
    """The first weight layers' update/weight ratios SLOW_LAYERS_RATIO below the last
    hidden layer's (medians over the last UPDATE_RATIO_SPAN steps), while the loss is
    still high."""
    config = ctx.config
    measured = _ratio_medians(history, _not_ratio_judged(history, config))
    if measured is None:
        return None
    snapshot, medians = measured
    rows = len(snapshot.layers)
    last_hidden = rows - 2
    if (rows < MIN_TREND_ROWS or last_hidden not in medians or 0 not in medians
            or not _loss_still_high(history)):
        return None
    reference = medians[last_hidden]
    found = [i for i in range(last_hidden) if i in medians
             and medians[i] < reference / SLOW_LAYERS_RATIO]
    if not found or found[0] != 0:
        return None
    names = _names(snapshot, found)
    message = (f"Lower layers learn much slower: per step {names[0]} changes by "
               f"{medians[0]:.2g} of its size, {snapshot.layers[-2].name} by {reference:.2g}. "
               "The features the upper layers build on barely improve: the gradient fades "
               "on its way down.")
    adam = (F.fix(f"switch to Adam at lr {ADAM_LR:g}",
                  {"optim.name": "adam", "optim.lr": ADAM_LR}, " (per-parameter step sizes)")
            if config.optim.name in SGD_FAMILY else None)
    return AlertRaised(
        step=snapshot.step, kind="slow_lower_layers", severity="warning", layers=names,
        evidence={"update_ratio": tuple(medians[i] for i in found),
                  "last_hidden_update_ratio": reference},
        message=message, fixes=F.combine(adam, F.depth_fixes(config, snapshot)))
