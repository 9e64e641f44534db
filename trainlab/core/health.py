"""What a healthy layer looks like, and what each alert is called: the facts the live
doctor (``trainlab.doctor.detectors``) diagnoses with and the app colours and names with.

One place, so that the layer table marks red exactly what the detectors alert on, and
an alert kind has one title wherever it shows (docs/field-knowledge.md). Torch-free
plain data: the detectors and the app both import it. Thresholds apply to the figures
of ``trainlab.core.protocol.LayerStats``.
"""

from __future__ import annotations

# --- thresholds ----------------------------------------------------------------------

GRAD_HEALTHY_LOW = 1e-6
"""Gradient values below this are under the healthy range (roughly [1e-6, 1e3] for the
nets this lab trains); times a normal learning rate they change a weight by nothing.
The detectors judge hidden layers only: the head's gradient scales with the loss itself
(MSE on unscaled regression targets gave head gradients of 2e3 in a run whose hidden
layers stayed under 3e2), so it shows the loss's scale, not a gradient vanishing or
exploding through depth."""
GRAD_HEALTHY_HIGH = 1e3
"""Gradient values above this are over the healthy range (see GRAD_HEALTHY_LOW)."""
SATURATED_FRAC = 0.5
"""A layer is saturated when half or more of its activations sit where tanh/sigmoid is
flat (slope < 0.02, ``trainlab.engine.stats``). The classic N(0, 1) init saturates
~80-96% of the units at widths 100-500; Xavier saturates under 1%."""
DEAD_UNITS_FRAC = 0.5
"""A layer has lost its capacity when half or more of its ReLU units output 0 for every
sample of a batch (a dead unit gets a gradient of 0, so it stays dead unless its input
shifts; a user trial with init.bias = -3 on digits saw 100% dead at init and 53-85%
later, as the layers below moved). Healthy Kaiming ReLU nets measured here stay below
30%."""
UPDATE_RATIO_TARGET = 1e-3
"""The healthy update/weight ratio per step: the usual rule of thumb for first-order
optimizers (each step changes a weight by about a thousandth of its size)."""
UPDATE_RATIO_HIGH = 1e-1
"""Two orders of magnitude above the 1e-3 target: each step moves the weights by 10% of
their size, so they are replaced within tens of steps. Adam's first steps on small
weights (lr / weight std, ~1e-2) stay below it."""
UPDATE_RATIO_LOW = 1e-5
"""Two orders of magnitude below the 1e-3 target: the weights need ~1e5 steps to change
by their own size. SGD at lr 1e-3 on the default digits MLP runs at ~6e-5, above it."""

# --- activation families ---------------------------------------------------------------

TANH_LIKE_ACTIVATIONS = ("tanh", "sigmoid", "scaled_sigmoid", "identity")
"""model.activation values that Xavier suits: the detectors judge by it and
``trainlab.engine.init`` picks Xavier for them."""
TANH_LIKE_KINDS = ("Tanh", "Sigmoid", "ScaledSigmoid", "Hardtanh", "Identity")
"""Activation module names (``LayerStats.activation``) that Xavier suits."""
RELU_FAMILY_KINDS = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "CELU", "SELU", "GELU",
                     "SiLU", "Mish", "Hardswish", "Softplus")
"""Activation module names that Kaiming suits (its gain of sqrt(2) makes up for the half of
the inputs a ReLU-like unit zeroes)."""
SATURATING_ACTIVATIONS = ("tanh", "sigmoid", "scaled_sigmoid")
"""model.activation values whose flat tails stop gradients; a ReLU-family activation is
the remedy (its slope is 1 wherever it is active)."""

# --- alerts ----------------------------------------------------------------------------

SEVERITIES = ("info", "warning", "critical")
"""``AlertRaised.severity`` from mildest to worst: a layer with several alerts shows its
worst."""
ALERT_TITLES = {
    "vanishing_gradients": "vanishing gradients",
    "exploding_gradients": "exploding gradients",
    "activation_collapse": "activations collapsing towards 0",
    "saturation": "saturated units",
    "dead_units": "dead ReLU units",
    "symmetry": "symmetric units (identical weights)",
    "non_finite": "non-finite values (NaN/inf)",
    "divergence": "loss diverging or oscillating",
    "plateau": "loss on a plateau",
    "overfitting": "overfitting",
    "update_ratio": "update/weight ratio far from 1e-3",
    "slow_lower_layers": "lower layers learning much slower",
    "slow_learning": "loss falling too slowly (lr too low)",
}
"""Every alert kind (``AlertRaised.kind``) in plain words: a detector is registered only
under one of these kinds."""


def alert_title(kind: str) -> str:
    """An alert kind in plain words; a kind this version does not know, de-underscored."""
    return ALERT_TITLES.get(kind, kind.replace("_", " "))


def severity_rank(severity: str) -> int:
    """0 for info up to 2 for critical; anything else is an error naming the value."""
    if severity not in SEVERITIES:
        raise ValueError(f"AlertRaised.severity {severity!r} is not one of "
                         f"{', '.join(SEVERITIES)}")
    return SEVERITIES.index(severity)
