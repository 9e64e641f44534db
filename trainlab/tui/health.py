"""Healthy ranges of the per-layer figures: what the layer table colours.

Red (BAD) is the live doctor's own verdict: the thresholds come from
``trainlab.core.health``, which the detectors alert on, and a figure is BAD exactly where
a detector counts it as a problem (a share at or above its bound, a ratio beyond its
bounds). Yellow (WARN) is this table's own "worth a look" band before that, with the
reason next to each bound (docs/field-knowledge.md#vanishing-and-exploding-gradients).
Colouring one snapshot is not an alert: the detectors also ask for persistence and
context before they raise one.
"""

from __future__ import annotations

import math

from trainlab.core.health import (
    DEAD_UNITS_FRAC,
    GRAD_HEALTHY_LOW,
    SATURATED_FRAC,
    UPDATE_RATIO_HIGH,
    UPDATE_RATIO_LOW,
)

OK, WARN, BAD = "ok", "warn", "bad"

ACT_STD_LOW_WARN, ACT_STD_LOW_BAD = 0.05, 1e-3
"""Activations whose std shrinks towards 0 carry no signal forward (collapse, as with a
too-small init); well-initialized layers keep a std of order 0.1-1. (The detectors judge
collapse relative to the first layer, so these absolute bands are the table's own.)"""
ACT_STD_HIGH_WARN, ACT_STD_HIGH_BAD = 10.0, 1e3
"""Activation std growing by orders of magnitude with depth is the forward side of
exploding signals (too large an init, no normalization)."""
SATURATED_WARN = 0.2
"""A saturated tanh/sigmoid unit passes almost no gradient (slope near 0 at |a| > 0.99);
a fifth of the units pinned is worth a look, SATURATED_FRAC of them stalls learning."""
DEAD_WARN = 0.1
"""A ReLU unit that outputs 0 for the whole batch gets no gradient and may never
recover; a few are normal, DEAD_UNITS_FRAC of them mean too high a learning rate or a
bad bias init."""
UPDATE_RATIO_LOW_WARN, UPDATE_RATIO_HIGH_WARN = 1e-4, 1e-2
"""||dW||/||W|| near 1e-3 per step is the rule of thumb: a decade off either way is worth
a look; beyond UPDATE_RATIO_LOW the layer barely learns (learning rate too low,
vanishing gradients), beyond UPDATE_RATIO_HIGH it is being overwritten every step
(learning rate too high)."""
GRAD_NORM_LOW_WARN = GRAD_HEALTHY_LOW
"""A gradient norm this small on a weight layer means that layer is not learning (the
lower end of the detectors' healthy gradient range)."""


def _share(value: float, warn: float, bad: float) -> str:
    """A share of units: BAD from ``bad`` on (as the detectors count it), WARN above
    ``warn``."""
    if value >= bad:
        return BAD
    return WARN if value > warn else OK


def _ratio(value: float) -> str:
    """The update/weight ratio: BAD beyond the detectors' bounds, WARN a decade off."""
    if value < UPDATE_RATIO_LOW or value > UPDATE_RATIO_HIGH:
        return BAD
    if value < UPDATE_RATIO_LOW_WARN or value > UPDATE_RATIO_HIGH_WARN:
        return WARN
    return OK


def judge(quantity: str, value: float | None) -> str:
    """OK, WARN or BAD for one figure of the layer table; OK for figures without a rule."""
    if value is None:
        return OK
    if not math.isfinite(value):
        return BAD
    if quantity == "act_std":
        if value < ACT_STD_LOW_BAD or value > ACT_STD_HIGH_BAD:
            return BAD
        if value < ACT_STD_LOW_WARN or value > ACT_STD_HIGH_WARN:
            return WARN
        return OK
    if quantity == "saturated_frac":
        return _share(value, SATURATED_WARN, SATURATED_FRAC)
    if quantity == "dead_frac":
        return _share(value, DEAD_WARN, DEAD_UNITS_FRAC)
    if quantity == "update_ratio":
        return _ratio(value)
    if quantity == "grad_norm":
        return WARN if value < GRAD_NORM_LOW_WARN else OK
    return OK
