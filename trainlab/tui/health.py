"""Healthy ranges of the per-layer figures: what the layer table colours.

Each bound is a named constant with the reason next to it (the background is in
docs/field-knowledge.md). These only colour numbers; the doctor's detectors (engine
side) decide alerts.
"""

from __future__ import annotations

import math

OK, WARN, BAD = "ok", "warn", "bad"

ACT_STD_LOW_WARN, ACT_STD_LOW_BAD = 0.05, 1e-3
"""Activations whose std shrinks towards 0 carry no signal forward (collapse, as with a
too-small init); well-initialized layers keep a std of order 0.1-1."""
ACT_STD_HIGH_WARN, ACT_STD_HIGH_BAD = 10.0, 1e3
"""Activation std growing by orders of magnitude with depth is the forward side of
exploding signals (too large an init, no normalization)."""
SATURATED_WARN, SATURATED_BAD = 0.2, 0.5
"""A saturated tanh/sigmoid unit passes almost no gradient (slope near 0 at |a| > 0.99);
a fifth of the units pinned is worth a look, half of them stalls learning."""
DEAD_WARN, DEAD_BAD = 0.1, 0.4
"""A ReLU unit that outputs 0 for the whole batch gets no gradient and may never
recover; a few are normal, many mean too high a learning rate or a bad bias init."""
UPDATE_RATIO_LOW_WARN, UPDATE_RATIO_LOW_BAD = 1e-4, 1e-6
UPDATE_RATIO_HIGH_WARN, UPDATE_RATIO_HIGH_BAD = 1e-2, 1e-1
"""||dW||/||W|| near 1e-3 per step is the rule of thumb: far below, the layer barely
learns (learning rate too low, vanishing gradients); far above, it is being
overwritten every step (learning rate too high)."""
GRAD_NORM_LOW_WARN = 1e-6
"""A gradient norm this small on a weight layer means that layer is not learning."""


def _band(value: float, low_bad: float, low_warn: float, high_warn: float,
          high_bad: float) -> str:
    if value < low_bad or value > high_bad:
        return BAD
    if value < low_warn or value > high_warn:
        return WARN
    return OK


def judge(quantity: str, value: float | None) -> str:
    """OK, WARN or BAD for one figure of the layer table; OK for figures without a rule."""
    if value is None:
        return OK
    if not math.isfinite(value):
        return BAD
    if quantity == "act_std":
        return _band(value, ACT_STD_LOW_BAD, ACT_STD_LOW_WARN, ACT_STD_HIGH_WARN,
                     ACT_STD_HIGH_BAD)
    if quantity == "saturated_frac":
        return _band(value, -math.inf, -math.inf, SATURATED_WARN, SATURATED_BAD)
    if quantity == "dead_frac":
        return _band(value, -math.inf, -math.inf, DEAD_WARN, DEAD_BAD)
    if quantity == "update_ratio":
        return _band(value, UPDATE_RATIO_LOW_BAD, UPDATE_RATIO_LOW_WARN,
                     UPDATE_RATIO_HIGH_WARN, UPDATE_RATIO_HIGH_BAD)
    if quantity == "grad_norm":
        return WARN if value < GRAD_NORM_LOW_WARN else OK
    return OK
