"""Curve detectors: what the training loss and the evaluations say about the whole run.

- ``divergence``: the loss climbs far above where it started or its best, grows
  steadily, or swings wildly without coming down: the learning rate is too high.
- ``plateau``: the loss stays flat within PLATEAU_NEAR of its value at init (or of
  chance level), above or below it: the learning rate is too low, or the network is
  dead (no gradient reaches the weights). A loss flat far above both has blown up:
  that is ``divergence``'s finding, not a plateau.
- ``slow_learning``: the loss falls steadily but far too slowly, still far from
  converged, while the steps change the weights by far less than ~1e-3 of their size:
  the learning rate is too low (a loss that does not fall at all is a plateau).
- ``overfitting``: the validation loss rises over several evaluations while the
  training loss keeps falling.
- ``non_finite``: the loss turned NaN or inf; which layer first and the likely cause.

Losses are judged after ``History.last_change_step`` only: a live change (a fix, a
rollback) starts a new stretch, and what came before it no longer says anything about
the run as it is now. A loss *level* is the median of a window of steps (at least
LEVEL_WINDOW steps and LEVEL_SAMPLES samples), not a mean: one hard mini-batch (a
spike) moves a mean far more than a median, and the losses of small batches (noisy:
each is the mean of a few samples) would otherwise look like a diverging run.

Cost: the loss detectors run on every MetricsBatch (at most ~10 a second) and read
only the tail of the history they judge, never all ``LOSS_HISTORY`` losses. The levels
of whole chunks are kept across batches (``History.chunks``), so a batch takes the
medians of its new chunks and of the few recent windows only. Measured on a full
history: 0.04 ms a batch with warm caches (0.15 ms before the tail-only reads, 5.7 ms
when every chunk was re-sorted on every batch), 0.18 ms inside a CNN run whose steps
evict the caches: about 0.2% of the training thread at the metrics rate.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Sequence

from trainlab.core.health import UPDATE_RATIO_TARGET
from trainlab.core.protocol import AlertRaised, Fix, LayerStats, NonFiniteDetected
from trainlab.doctor.detectors import fixes as F
from trainlab.doctor.detectors.layers import (
    LR_RAISE_CAP,
    RATIO_EXEMPT_OPTIMIZERS,
    lr_runs_at_base,
    saturated_layers,
    symmetric_layers,
    typical_update_ratio,
    vanishing_signs,
)
from trainlab.doctor.detectors.registry import (
    EVAL,
    LOSS,
    NONFINITE,
    ChunkLevels,
    Context,
    History,
    detector,
)

# --- divergence -----------------------------------------------------------------

LEVEL_WINDOW = 20
"""Steps whose median is one reading of the loss level. Mini-batch losses scatter by
tens of percent from step to step (each is a different sample); the median of 20 steps
moves by a few, and 20 steps is still short next to an epoch."""
LEVEL_SAMPLES = 640
"""...and at least this many samples (20 batches of 32): with small batches a level
spans more steps. The median of 20 single-sample losses still jumps 5x while a run
learns normally (measured: 0.056, then 0.29, digits with batch 1)."""
DIVERGENCE_FACTOR = 3.0
"""Diverged: the last DIVERGENCE_WINDOWS levels are all at least 3x the lower of the
start and the best level. The best is the minimum of many noisy windows, so a healthy
but noisy run reaches 2-3x of it for a window or two (measured on the activations lab,
SGD with momentum: 2.2x over three windows at most); an LR too high overshoots the
minimum on every step and stays there (Adam at 0.03 on digits: 6x over three windows)."""
DIVERGENCE_WINDOWS = 3
"""...for this many levels in a row (60 steps at batch 32): a climb that lasts."""
EXPLOSION_FACTOR = 10.0
"""...or the last level alone is at least 10x that: a blow-up that may not last (the
net can die right after it; Adam at lr 1 on digits: 72x, then flat at chance level),
far beyond the 4x one window of a noisy healthy run reached (measured)."""
MIN_RISE_SHARE = 0.05
"""Diverged or growing: the climb is also at least 5% of the run's loss scale (its loss
at init, at most ln C for cross-entropy), so that a converged run whose tiny loss wobbles
by multiples (0.001, then 0.004) is never called diverging."""
TREND_WINDOWS = 5
"""Growing steadily: this many consecutive levels, each above the one before. By chance
alone a flat curve does that once in 5! = 120 looks, hence the two guards that follow."""
TREND_FACTOR = 1.5
"""...and the last of them at least 1.5x the first: a climb, not a wobble."""
OSCILLATION_WINDOW = 50
"""Steps over which the swings of the loss are measured (two to three levels' worth)."""
OSCILLATION_REL_STD = 1.0
"""Oscillating: the standard deviation of the window's losses is at least their mean:
the loss swings by its own size, as when an LR overshoots the minimum on every step.
Noisy but healthy runs stay under it (up to 0.97 measured on
the activations lab, SGD with momentum, while far below the level guard below; 0.1-0.3
on digits with Adam); an LR merely too high mostly makes the loss stall, not swing
(0.1-0.4 measured at 5x the lab's LR)."""
OSCILLATION_BATCH_NOISE = 2.0
"""...and at least 2/sqrt(B) for batches of B samples: sampling alone scatters the mean
of B per-sample losses by about 1/sqrt(B) of its size (per-sample losses scatter by about
their own size: measured 0.8 with single-sample batches on digits), so swings under twice
that are mini-batch noise whatever the LR (batch 1 is the noisiest)."""
OSCILLATION_MIN_LEVEL = 0.5
"""...while the window's mean loss is not even half below the run's loss scale: a
converged run also has a large relative scatter (its losses are tiny), but it is far
below that."""
OSCILLATION_MAX_DROP = 0.1
"""...and the second half of the window is less than 10% below the first: no downward
trend. A run still learning fast scatters too, but falls."""

# --- plateau --------------------------------------------------------------------

PLATEAU_WINDOW = 100
"""Steps a plateau must last: a few epochs of a small data set, long enough that a run
still learning slowly moves by more than PLATEAU_MAX_DROP over it."""
PLATEAU_SAMPLES = 3200
"""...and at least this many samples (100 batches of 32), for the reason of
LEVEL_SAMPLES: halves of 50 single-sample losses are too noisy to call anything flat."""
PLATEAU_MAX_DROP = 0.02
"""Flat: the median of the window's second half is within 2% of its first half. At a
sane LR the loss of a run that has not learned yet falls faster than that; a loss that
rises is no plateau (the divergence detector's business)."""
PLATEAU_NEAR = 0.1
"""Not learned yet: the loss is within 10% of its value at init, or of ln C for C-class
cross-entropy (the loss of a network that predicts uniform classes: the prior), on
either side. A converged run sits far below both, so it is never called a plateau; a
loss far above both has blown up (``--set optim.lr=50`` on digits: flat at 18.95 after
starting at 2.9), which the divergence alert reports, and calling that level "near" its
start would be false."""
DEAD_LAYER_FRACTION = 0.99
"""A hidden ReLU layer with at least 99% of its units dead passes (almost) no signal
forward and no gradient back (a ReLU unit at 0 has slope 0): the network is dead."""

# --- slow learning ----------------------------------------------------------------

SLOW_WINDOW = PLATEAU_WINDOW // 2
"""Steps whose median is one level of the descent: the plateau's halves, so a drop per
window compares with PLATEAU_MAX_DROP."""
SLOW_SAMPLES = PLATEAU_SAMPLES // 2
"""...and at least this many samples (the plateau's halves again)."""
SLOW_WINDOWS = 4
"""Levels in a row, each below the one before: a descent that holds over 200 steps (at
batch 32 or more), not noise (a flat curve gives 4 falling levels 1 time in 24 by chance,
and then the rate and the update ratio below must agree too)."""
SLOW_MAX_DROP = 0.15
"""Far too slow: the loss falls less than 15% per window on average (at 15% it halves
in ~4 windows). Measured on the default digits MLP: plain SGD at lr 1e-3 fell 6-9% per
50 steps, Adam at 1e-5 4%, while a sane lr falls by 20-85% while the loss is still high
(SGD 0.01: 19-27%, Adam 1e-3: 86%). Falling less than PLATEAU_MAX_DROP is the plateau
detector's finding."""
SLOW_HIGH_SHARE = 0.5
"""Far from converged: the loss is still above half its scale (its value at init, at most
ln C) and not above it (a loss above where it started is not learning slowly, it is
going wrong: divergence, a bad init). A run that has halved its loss is learning;
near a minimum every run slows down."""
SLOW_RATIO = 3e-4
"""...and the typical layer's update/weight ratio is under 3e-4, a third of the ~1e-3 of
a healthy step: the steps themselves are small, so the lr, not a hard problem, is what
keeps the loss up. Measured (median layer): SGD at 1e-3 on digits 1e-5 to 1e-4 (the
CNN's 1e-4), Adam at 1e-5 4.5e-5; the spirals MLP with Adam at 1e-3, whose loss falls as
slowly for a while because the problem is hard, 1.7e-3. Without a snapshot since the
last change (stats.every = 0) the loss curve alone cannot tell these apart, and nothing
is said."""

# --- overfitting ----------------------------------------------------------------

OVERFIT_EVALS = 3
"""Evaluations without a better validation loss before calling it a trend: the default
patience of reduce_on_plateau (schedule.patience); one or two can be noise."""
OVERFIT_RISE = 0.1
"""Each of the last OVERFIT_EVALS validation losses is at least 10% above the best and
above the training loss of its interval, and the gap between them grew at each
(the signature of memorizing: training loss falls while validation loss rises, a
growing train/val gap). A noisy run's validation loss spikes for an evaluation or two and comes
back, often below the training loss, its gap jumping up and down (measured on the
activations lab: 0.34, then 0.42, 0.39, 0.63, then 0.09)."""
OVERFIT_MIN_RISE_SHARE = 0.01
"""...and at least 1% of the run's loss scale above the best, too: OVERFIT_RISE is relative
to the best validation loss, which a run that fits its data drives towards 0 (2e-7 on a
full-batch moons run), where +10% is a wobble of 1e-8, not memorizing. The overfits
measured here rose by 5-16% of their scale (the regularization lab, full batch to noisy
moons), far above it."""
OVERFIT_MAX_TRAIN_LEVEL = 1.0
"""...with the training loss below 1x the run's loss scale (its loss at init, at most ln
C): a net memorizes its training set only once it fits it better than a fresh net does.
A diverging run's validation loss also rises while its exploded training loss falls
back (measured: Adam at lr 10 on blobs)."""
OVERFIT_TRAIN_DROP = 0.1
"""...while the training loss fell at least 10% since the best evaluation: still falling,
not flat. A run whose training loss is flat and whose validation loss wobbles up (a tiny
validation set, measured: +30% on 40 samples) is not memorizing anything."""

# --- non-finite -----------------------------------------------------------------

INIT_LOSS_FACTOR = 10.0
"""A cross-entropy loss at init 10x ln C or more means outputs far too large: the init
is too large (ln C is the loss of a fresh, sanely initialized net)."""

# --- the fixes' values ------------------------------------------------------------

LR_RAISES = (3.0, 10.0)
"""Plateau: try the LR x3 or x10 now (an LR too small only makes training slow, so
raising it in steps of 3-10x is safe to try and watch)."""
RESTART_LR_CUT = 0.1
"""Non-finite, or a net knocked down to chance level: restart with a tenth of the LR
(an LR small enough not to blow up is the safe start)."""
WEIGHT_DECAY = 1e-4
"""Overfitting: a common L2 strength; much larger ones make a small net underfit."""
DROPOUT = 0.2
"""Overfitting: a mild dropout that rarely hurts a small net."""


# --- reading the history ------------------------------------------------------------


def _first_since_change(h: History) -> int:
    """Index (in ``h.steps`` and ``h.losses``) of the first step after the last live change."""
    return bisect.bisect_right(h.steps, h.last_change_step)


def _since_change(h: History, last: int) -> tuple[int, list[float]]:
    """(how many losses came after the last live change, the last ``last`` of them),
    non-finite ones included. Only the tail is copied: touching all 4096 losses of a
    full history costs more than the detectors' arithmetic once training has evicted
    them from the caches."""
    first = _first_since_change(h)
    return len(h.losses) - first, h.losses[max(first, len(h.losses) - last):]


def _finite(values: Sequence[float]) -> list[float]:
    return list(filter(math.isfinite, values))  # in C: 3x a comprehension


def _level(values: Sequence[float]) -> float | None:
    """Median of the finite values; None when fewer than half are finite."""
    good = _finite(values)
    return statistics.median(good) if good and 2 * len(good) >= len(values) else None


def _population_std(values: Sequence[float], mean: float) -> float:
    """The population standard deviation, in floats: statistics.pstdev sums exact
    fractions, ~300 us for 50 losses, paid on every metrics batch (10 a second).
    hypot is the root of the sum of squares, in C and without overflow."""
    return math.hypot(*[x - mean for x in values]) / math.sqrt(len(values))


def _window(ctx: Context, steps: int, samples: int) -> int:
    """At least ``steps`` steps, and enough of them to cover ``samples`` samples at the
    run's batch size (0 means the full batch: any step is plenty)."""
    batch = ctx.config.data.batch_size
    return max(steps, math.ceil(samples / batch)) if batch else steps


def _chunk_levels(h: History, window: int) -> ChunkLevels:
    """The levels of the whole chunks of ``window`` steps since the last live change
    that are still in the history, oldest first. Chunks sit on a fixed grid of steps
    (step 1 to ``window``, then the next ``window``, ...), so a complete chunk's level is
    computed once and kept in ``History.chunks``: a metrics batch scans its own steps
    and takes the medians of its new chunks only, not of the whole 4096-step history."""
    steps, losses = h.steps, h.losses
    kept = h.chunks.get(window)
    if kept is None or kept.change_step != h.last_change_step:
        # Levels from before the last change say nothing now (nor those of a window
        # size a change of the batch size left behind).
        h.chunks = {w: c for w, c in h.chunks.items() if c.change_step == h.last_change_step}
        kept = h.chunks[window] = ChunkLevels(h.last_change_step)
    first = _first_since_change(h)
    if first < len(steps):  # chunks that began before the history's oldest step are gone
        kept.drop_before(steps[first])
    i, end = max(first, bisect.bisect_left(steps, kept.next_step)), len(steps)
    while i + window <= end:
        offset = (steps[i] - 1) % window
        if offset:  # not a chunk's first step: move to the next one
            i += window - offset
            continue
        if steps[i + window - 1] != steps[i] + window - 1:
            i += 1  # a gap in the steps: this chunk is not whole
            continue
        kept.append(steps[i], _level(losses[i : i + window]))
        i += window
    if i < end:
        kept.next_step = steps[i]  # the next scan starts here: its chunk is not whole yet
    elif steps:
        kept.next_step = steps[-1] + 1
    return kept


def _start_level(h: History, window: int) -> float | None:
    """Where the judged stretch started: the loss at init, or the level at the change."""
    if h.last_change_step == 0:
        return h.first_loss
    steps, losses = h.steps, h.losses
    end = bisect.bisect_right(steps, h.last_change_step)
    before = _level(losses[max(0, end - window) : end])
    return before if before is not None else h.first_loss


def _chance_loss(ctx: Context) -> float | None:
    """ln C for C-class cross-entropy: the loss of a net that predicts uniform classes."""
    if ctx.loss == "cross_entropy" and ctx.num_classes >= 2:
        return math.log(ctx.num_classes)
    return None


def _loss_scale(h: History, ctx: Context) -> float | None:
    """What a lot of loss is for this run: its loss at init, at most the chance level (a
    huge init, or a stretch that began mid-explosion, must not make every rise small)."""
    if h.first_loss is None or not math.isfinite(h.first_loss) or h.first_loss <= 0:
        return None
    chance = _chance_loss(ctx)
    return min(h.first_loss, chance) if chance is not None else h.first_loss


def _lr_fixes(ctx: Context) -> tuple[Fix, ...]:
    """An lr too high: halve it, and bound the steps by clipping."""
    return F.combine(F.halve_lr(ctx.config), F.clip(ctx.config))


# --- the detectors ------------------------------------------------------------------


@detector("divergence", LOSS)
def divergence(h: History, ctx: Context) -> AlertRaised | None:
    """The loss far above its start or best, growing steadily, or swinging wildly."""
    window = _window(ctx, LEVEL_WINDOW, LEVEL_SAMPLES)
    count, losses = _since_change(h, max(DIVERGENCE_WINDOWS * window, OSCILLATION_WINDOW))
    start, scale = _start_level(h, window), _loss_scale(h, ctx)
    if (start is None or scale is None or not math.isfinite(start)
            or count < window):
        return None
    # The last levels, newest first (windows counted back from the newest step).
    recents = [_level(losses[len(losses) - (k + 1) * window : len(losses) - k * window])
               for k in range(min(DIVERGENCE_WINDOWS, count // window))]
    chunks = _chunk_levels(h, window)
    if recents[0] is None:
        return None  # mostly non-finite: the non_finite detector speaks
    recent = recents[0]
    known = [x for x in recents if x is not None]
    lowest = chunks.lowest()  # kept as chunks come and go: no scan of them all
    best = min(known) if lowest is None else min(lowest, *known)
    low = min(start, best)
    rise = low + MIN_RISE_SHARE * scale  # a climb that matters next to the loss scale
    evidence: dict[str, float | tuple[float, ...]] = {
        "loss_level": recent, "start_loss": start, "best_level": best, "loss_scale": scale}
    lasting = (len(known) == DIVERGENCE_WINDOWS
               and min(known) >= max(DIVERGENCE_FACTOR * low, rise))
    if lasting or recent >= max(EXPLOSION_FACTOR * low, rise):
        return AlertRaised(
            h.step, "divergence", "critical" if recent >= start else "warning", (),
            {**evidence, "levels": tuple(reversed(known))},
            f"The training loss is diverging: its level (median of {window} steps) climbed "
            f"from {low:.4g} to {recent:.4g}. The learning rate is too high: each step "
            "overshoots the minimum.",
            _lr_fixes(ctx))
    trend = chunks.last_known(TREND_WINDOWS)
    if (len(trend) == TREND_WINDOWS and all(b > a for a, b in itertools.pairwise(trend))
            and trend[-1] >= TREND_FACTOR * trend[0]
            and trend[-1] - trend[0] >= MIN_RISE_SHARE * scale):
        return AlertRaised(
            h.step, "divergence", "warning", (), {**evidence, "levels": tuple(trend)},
            f"The training loss has grown steadily for {TREND_WINDOWS * window} "
            f"steps, from {trend[0]:.4g} to {trend[-1]:.4g}. The learning rate is too "
            "high for where the run is now.",
            _lr_fixes(ctx))
    swings = _finite(losses[-OSCILLATION_WINDOW:])
    if len(swings) < OSCILLATION_WINDOW // 2 or count < OSCILLATION_WINDOW:
        return None
    mean = statistics.fmean(swings)
    rel_std = _population_std(swings, mean) / mean if mean > 0 else 0.0
    half = len(swings) // 2
    first_half, second_half = statistics.median(swings[:half]), statistics.median(swings[half:])
    falling = second_half < (1 - OSCILLATION_MAX_DROP) * first_half
    batch = ctx.config.data.batch_size  # 0: the full batch, no sampling noise
    wild = max(OSCILLATION_REL_STD, OSCILLATION_BATCH_NOISE / math.sqrt(batch) if batch else 0)
    if (rel_std >= wild and not falling
            and mean >= OSCILLATION_MIN_LEVEL * scale):
        return AlertRaised(
            h.step, "divergence", "warning", (),
            {**evidence, "mean_loss": mean, "relative_std": rel_std,
             "relative_std_threshold": wild,
             "first_half_level": first_half, "second_half_level": second_half},
            f"The training loss swings wildly (std {rel_std:.0%} of its mean over the last "
            f"{len(swings)} steps) without coming down. The learning rate is too high: "
            "the steps jump across the minimum instead of into it.",
            _lr_fixes(ctx))
    return None


def _dead_layers(h: History) -> tuple[tuple[str, ...], dict[str, tuple[float, ...]]]:
    """Hidden layers of the latest snapshot that pass no signal: their names, and their
    dead shares (NaN where not measured: not ReLU) and gradient norms, in that order."""
    if not h.snapshots:
        return (), {}
    rows: tuple[LayerStats, ...] = h.snapshots[-1].layers
    hidden = [r for r in rows if r.activation]  # the head has no activation of its own
    dead = [r for r in hidden
            if (r.dead_frac is not None and r.dead_frac >= DEAD_LAYER_FRACTION)
            or r.grad_norm == 0.0]
    return tuple(r.name for r in dead), {
        "dead_frac": tuple(math.nan if r.dead_frac is None else r.dead_frac for r in dead),
        "grad_norm": tuple(r.grad_norm for r in dead)}


def _dead_by_symmetry(h: History, ctx: Context, dead: Sequence[str]) -> list[str]:
    """The dead layers that symmetry explains: those at or above the first hidden layer
    whose weights were all equal at init. Such a layer's units are identical (or fed by
    identical ones), so they get the same gradient; with zeros that is 0 for every unit,
    and their ReLUs read 100% dead because every output is 0, not because inputs fell
    below 0: LeakyReLU gives them nothing (measured: init.scheme zeros on digits stays at
    10% accuracy either way), a proper init does."""
    symmetric = set(symmetric_layers(h, ctx.config))
    order = [r.name for r in h.snapshots[-1].layers]
    lowest = min((order.index(n) for n in symmetric if n in order), default=None)
    return [] if lowest is None else [n for n in dead if order.index(n) >= lowest]


def _dead_network_fixes(h: History, ctx: Context, dead: Sequence[str]) -> tuple[Fix, ...]:
    """The remedy for each cause of a dead layer, symmetry first: a suited init (and a
    restart) for layers symmetric at init or fed by them; LeakyReLU for other ReLU
    layers dead on every sample (it gives their units a gradient back); otherwise the
    gradient vanished on its way down (or underflowed to 0), and the depth remedies."""
    config = ctx.config
    rows = {r.name: r for r in h.snapshots[-1].layers}
    by_symmetry = _dead_by_symmetry(h, ctx, dead)
    by_dead_units = [n for n in dead if n not in by_symmetry
                     and (rows[n].dead_frac or 0.0) >= DEAD_LAYER_FRACTION]
    rest = [n for n in dead if n not in by_dead_units and n not in by_symmetry]
    first = h.first_snapshot or h.snapshots[-1]
    return F.combine(F.init(config, first) if by_symmetry else None,
                     F.leaky_relu(config) if by_dead_units else None,
                     F.depth_fixes(config, h.snapshots[-1]) if rest else ())


def _near(level: float, reference: float) -> bool:
    """``level`` within PLATEAU_NEAR of ``reference``, above or below it."""
    return reference > 0 and abs(level - reference) <= PLATEAU_NEAR * reference


@detector("plateau", LOSS)
def plateau(h: History, ctx: Context) -> AlertRaised | None:
    """The loss flat over a long window while still near its init (or chance) value."""
    length = _window(ctx, PLATEAU_WINDOW, PLATEAU_SAMPLES)
    count, window = _since_change(h, length)
    if h.first_loss is None or count < length:
        return None
    half = length // 2
    before, now = _level(window[:half]), _level(window[half:])
    if before is None or now is None or before <= 0:
        return None
    drop = (before - now) / before
    chance = _chance_loss(ctx)
    near_start = _near(now, h.first_loss)
    near_chance = chance is not None and _near(now, chance)
    if abs(drop) >= PLATEAU_MAX_DROP or not (near_start or near_chance):
        return None
    evidence: dict[str, float | tuple[float, ...]] = {
        "loss_level": now, "level_before": before, "drop": drop, "loss_at_init": h.first_loss,
        "window_steps": length}
    if chance is not None:
        evidence["chance_loss"] = chance
    where = (f"near its value at init ({h.first_loss:.4g})" if near_start
             else f"at chance level (ln {ctx.num_classes} = {chance:.3g})")
    flat = (f"The training loss has stayed flat at {now:.4g} for {length} steps "
            f"({-drop:+.1%}), {where}.")
    dead, dead_evidence = _dead_layers(h)
    if dead:
        symmetric = _dead_by_symmetry(h, ctx, dead)
        why = (f" {', '.join(symmetric)} {'is' if len(symmetric) == 1 else 'are'} "
               "symmetric: the weights were all equal at init, so every unit of a layer "
               "computes the same thing and gets the same gradient (here none); a new "
               "init, not another activation, breaks the tie." if symmetric else "")
        return AlertRaised(
            h.step, "plateau", "critical", dead, {**evidence, **dead_evidence},
            f"{flat} The network is dead: {', '.join(dead)} pass no signal (every unit "
            f"outputs 0 or no gradient arrives), so no step can change the output.{why}",
            _dead_network_fixes(h, ctx, dead))
    signs = vanishing_signs(h, ctx.config)
    if signs and h.snapshots:
        # A larger lr does not reach layers the gradient no longer reaches: the depth
        # remedies, as the vanishing_gradients alert offers (it needs a few snapshots
        # in a row, so it may come later; this alert must not blame the lr first).
        return AlertRaised(
            h.step, "plateau", "warning", (), {**evidence, **signs},
            f"{flat} The gradients vanish on their way to the lower layers, so they "
            "barely move; a larger learning rate would not bring them back.",
            F.depth_fixes(ctx.config, h.snapshots[-1]))
    lr = ctx.config.optim.lr
    raises = F.combine(*(F.scale_lr(ctx.config, k, "raise")
                         for k in LR_RAISES))
    if near_start:
        return AlertRaised(
            h.step, "plateau", "warning", (), evidence,
            f"{flat} The learning rate ({lr:g}) is probably too low: the steps are too "
            "small to move the loss.", raises)
    # It got down to chance level and stays: the net predicts the class prior and
    # ignores its inputs, either not yet moved or knocked there by steps too large.
    return AlertRaised(
        h.step, "plateau", "warning", (), evidence,
        f"{flat} The network predicts the class prior and ignores its inputs: the "
        f"learning rate ({lr:g}) is either too low to get it further, or was so high that "
        "it knocked the units into a state they do not leave.",
        (*raises, F.restart_with_lr(ctx.config, RESTART_LR_CUT)))


def _slow_descent(h: History, ctx: Context) -> tuple[int, list[float], float] | None:
    """(window, the last SLOW_WINDOWS levels, the mean relative drop per window) when the
    loss falls steadily (each level below the one before) but by PLATEAU_MAX_DROP to
    SLOW_MAX_DROP per window, still between SLOW_HIGH_SHARE and 1x its scale. Reads the
    kept chunk levels: O(1) per batch."""
    window = _window(ctx, SLOW_WINDOW, SLOW_SAMPLES)
    scale = _loss_scale(h, ctx)
    if scale is None or len(h.losses) - _first_since_change(h) < SLOW_WINDOWS * window:
        return None
    chunks = _chunk_levels(h, window)
    newest = list(itertools.islice(reversed(chunks.levels), SLOW_WINDOWS))[::-1]
    known = [x for x in newest if x is not None]
    if len(known) < SLOW_WINDOWS or known[-1] <= 0:  # a mostly non-finite chunk: no trend
        return None
    if not all(b < a for a, b in itertools.pairwise(known)):
        return None
    rate = 1 - (known[-1] / known[0]) ** (1 / (SLOW_WINDOWS - 1))  # geometric mean
    if not (PLATEAU_MAX_DROP <= rate <= SLOW_MAX_DROP
            and SLOW_HIGH_SHARE * scale <= known[-1] <= scale):
        return None
    return window, known, rate


@detector("slow_learning", LOSS, quiet_after=("plateau", "update_ratio"))
def slow_learning(h: History, ctx: Context) -> AlertRaised | None:
    """The loss falling steadily but far too slowly, still far from converged, with
    update/weight ratios far below ~1e-3: the lr is too low. Quiet while a plateau or an
    update_ratio alert stands: they already said so."""
    cfg = ctx.config
    if cfg.optim.name in RATIO_EXEMPT_OPTIMIZERS:  # their steps are not lr x gradient
        return None
    descent = _slow_descent(h, ctx)
    if descent is None or not lr_runs_at_base(h, cfg):
        return None
    window, levels, rate = descent
    typical = typical_update_ratio(h, cfg)  # only now: the dearer reading, rarely reached
    if typical is None or typical[0] >= SLOW_RATIO:
        return None
    ratio, snapshots = typical
    # Other causes of slow steps are other alerts' findings, with other fixes.
    if (_dead_layers(h)[0] or vanishing_signs(h, cfg) or symmetric_layers(h, cfg)
            or saturated_layers(h)):
        return None
    factor = min(UPDATE_RATIO_TARGET / ratio, LR_RAISE_CAP) if ratio > 0 else LR_RAISE_CAP
    scale = _loss_scale(h, ctx)
    assert scale is not None  # _slow_descent needs it
    lr = cfg.optim.lr
    return AlertRaised(
        h.step, "slow_learning", "warning", (),
        {"levels": tuple(levels), "window_steps": window, "drop_per_window": rate,
         "loss_scale": scale, "typical_update_ratio": ratio,
         "update_ratio_snapshots": snapshots, "target": UPDATE_RATIO_TARGET},
        f"The training loss falls steadily but far too slowly: {rate:.1%} per {window} "
        f"steps over the last {SLOW_WINDOWS * window}, from {levels[0]:.4g} to "
        f"{levels[-1]:.4g}, still {levels[-1] / scale:.0%} of its scale ({scale:.4g}). "
        f"Each step changes a typical layer by {ratio:.2g} of its size (healthy is about "
        f"{UPDATE_RATIO_TARGET:g}): the learning rate ({lr:g}) is too low. Raise it, or "
        "find one with the LR range test (L in the app, trainlab lr-find).",
        F.combine(F.scale_lr(cfg, factor, "raise")))


def _overfitting_fixes(ctx: Context, since_best: int) -> tuple[Fix, ...]:
    """Regularize, or stop: the ``since_best`` evaluations without a better validation
    loss already exceed the patience proposed, so early stopping ends the run at once."""
    cfg = ctx.config
    stop = (F.fix("stop early", {"reg.early_stop_patience": OVERFIT_EVALS},
                  f" (patience {OVERFIT_EVALS} evaluations; the last {since_best} brought no "
                  "better validation loss, so the run stops at its next step)")
            if not cfg.reg.early_stop_patience else None)
    dropout = (F.fix(f"set dropout {cfg.model.dropout:g} -> {DROPOUT:g}",
                     {"model.dropout": DROPOUT})
               if F.builtin(cfg) and cfg.model.dropout < DROPOUT else None)
    return F.combine(stop, F.raise_weight_decay(cfg, WEIGHT_DECAY), dropout,
                     F.add_augmentation(cfg, "noise"))


@detector("overfitting", EVAL)
def overfitting(h: History, ctx: Context) -> AlertRaised | None:
    """Validation loss rising over several evaluations while the training loss falls.
    Reads the folded record of the evaluations since the last live change (the best and
    the last few), never the whole run: O(1) per evaluation."""
    record = h.usable_evals()
    if record.count <= OVERFIT_EVALS or record.best is None:
        return None
    # The last OVERFIT_EVALS + 1 usable evaluations: the one before the rise, then it.
    evals = list(itertools.islice(reversed(record.recent), OVERFIT_EVALS + 1))[::-1]
    best, last = record.best, evals[-1]
    since_best = record.count - 1 - record.best_index
    scale = _loss_scale(h, ctx)
    if (since_best < OVERFIT_EVALS or scale is None
            or last.train_loss >= OVERFIT_MAX_TRAIN_LEVEL * scale
            or last.train_loss > (1 - OVERFIT_TRAIN_DROP) * best.train_loss):
        return None
    # The gap before the last OVERFIT_EVALS evaluations, then at each of them.
    gaps = [e.val_loss - e.train_loss for e in evals]
    risen = max((1 + OVERFIT_RISE) * best.val_loss, best.val_loss + OVERFIT_MIN_RISE_SHARE * scale)
    if (any(e.val_loss < risen for e in evals[1:])
            or min(gaps[1:]) <= 0 or any(b <= a for a, b in itertools.pairwise(gaps))):
        return None
    gap_then, gap_now = best.val_loss - best.train_loss, last.val_loss - last.train_loss
    return AlertRaised(
        h.step, "overfitting", "warning", (),
        {"best_val_loss": best.val_loss, "best_step": best.step, "val_loss": last.val_loss,
         "train_loss_at_best": best.train_loss, "train_loss": last.train_loss,
         "gap_at_best": gap_then, "gap": gap_now, "recent_gaps": tuple(gaps),
         "evals_since_best": since_best},
        f"The model is overfitting: over the {since_best} evaluations since step "
        f"{best.step} the validation loss rose from {best.val_loss:.4g} to "
        f"{last.val_loss:.4g} while the training loss fell from {best.train_loss:.4g} to "
        f"{last.train_loss:.4g}. It is memorizing the training set.",
        _overfitting_fixes(ctx, since_best))


def _finite_before(h: History, step: int) -> list[float]:
    """The finite losses of the LEVEL_WINDOW steps before ``step``."""
    steps, losses = h.steps, h.losses
    end = bisect.bisect_left(steps, step)
    return _finite(losses[max(0, end - LEVEL_WINDOW) : end])


def _nonfinite_cause(h: History, ctx: Context, event: NonFiniteDetected) -> tuple[str, str]:
    """(cause, explanation) of a non-finite loss: init too large, LR too high, overflow."""
    chance = _chance_loss(ctx)
    if h.first_loss is None:
        return "init", ("the loss was non-finite from the first step, before any update: "
                        "the init is too large (or the inputs or the loss overflow)")
    if chance is not None and h.first_loss >= INIT_LOSS_FACTOR * chance:
        return "init", (f"the loss at init ({h.first_loss:.4g}) was already "
                        f"{h.first_loss / chance:.3g}x ln {ctx.num_classes}: the init is "
                        "too large")
    if event.where == "weight":
        return "lr", (f"an update overflowed the weights of {event.layer}: the learning "
                      "rate is too high")
    before = _finite_before(h, event.step)
    if before and max(before) >= DIVERGENCE_FACTOR * h.first_loss:
        return "lr", (f"the loss grew to {max(before):.4g} (from {h.first_loss:.4g} at init) "
                      "before it overflowed: the learning rate is too high")
    return "overflow", ("the loss was in a normal range until it jumped: a value "
                        "overflowed (log of 0, exp of a large number, 0/0)")


@detector("non_finite", NONFINITE)
def non_finite(h: History, ctx: Context) -> AlertRaised | None:
    """A NaN or inf: which layer first, the likely cause, restart lower or roll back."""
    event = h.nonfinite
    if event is None:
        return None
    cause, why = _nonfinite_cause(h, ctx, event)
    cfg = ctx.config
    lr, policy = cfg.optim.lr, cfg.run.on_nonfinite
    where = (f"the {event.where} of {event.layer} turned non-finite first" if event.layer
             else "every layer's values were still finite")
    clip = F.clip(cfg)
    fixes = [F.restart_with_lr(cfg, RESTART_LR_CUT, clip.changes if clip else None,
                               " and gradient clipping" if clip else "")]
    if cause == "init" and cfg.init.scheme not in ("auto", "xavier_normal", "xavier_uniform",
                                                    "kaiming_normal", "kaiming_uniform"):
        fixes.append(Fix(f"restart with Kaiming/Xavier init (auto, not {cfg.init.scheme})",
                         {"init.scheme": "auto"}, restart=True))
    if policy == "skip":
        # Under skip the weights are still good, so the switch helps this run.
        fixes.append(Fix("from now on roll back to the last good state with a lower lr on "
                         "a non-finite loss (run.on_nonfinite skip -> rollback)",
                         {"run.on_nonfinite": "rollback"}))
    elif policy != "rollback":
        # After stop the run is over, and after continue its weights are already
        # non-finite: the switch needs a fresh run.
        fixes.append(Fix(f"restart from fresh weights with run.on_nonfinite {policy} -> "
                         "rollback (a later non-finite loss rolls back to the last good "
                         "state with a lower lr)", {"run.on_nonfinite": "rollback"},
                         restart=True))
    before = _finite_before(h, event.step)
    steps = h.steps
    at = bisect.bisect_left(steps, event.step)
    # The lr that step ran with (the schedule's), else the config's.
    step_lr = h.lrs[at] if at < len(steps) and steps[at] == event.step else lr
    return AlertRaised(
        event.step, "non_finite", "critical", (event.layer,) if event.layer else (),
        {"step": event.step, "loss_at_init": h.first_loss if h.first_loss is not None
         else math.nan, "last_finite_loss": before[-1] if before else math.nan,
         "max_loss_before": max(before) if before else math.nan, "lr": step_lr},
        f"The loss became non-finite at step {event.step}; {where}. Likely cause: {why}.",
        tuple(fixes))
