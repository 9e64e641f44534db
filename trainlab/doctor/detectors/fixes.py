"""The remedies the detectors offer: one set of fix builders for every alert.

A ``Fix`` is a set of config changes and a label. Conventions every builder keeps:

- Live or restart: a fix is applied live when every key it changes is hot (the
  schema's ``Spec.hot``), else by restarting with it.
- A value computed from the current one (a halved lr, a weight decay x10, the
  augmentations plus noise) is frozen when the alert is raised; the label says what it
  was computed from ("halve the learning rate (0.01 -> 0.005) now"), so a user who has
  moved the lr since can see that the fix is stale.
- Nothing the run already does is proposed, nothing the optimizer ignores
  (``WEIGHT_DECAY_IGNORED_BY``, ``LIVE_LR_IGNORED_BY``), and model.* changes are not
  offered for ``model.arch = custom`` (they do not change a user's model).

No torch here (the detectors run on plain numbers); tests keep the optimizer tables below
equal to ``trainlab.engine.optim``, and the activation families (``trainlab.core.health``)
to ``trainlab.engine.init``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trainlab.core.config import Config, field_info
from trainlab.core.health import (
    RELU_FAMILY_KINDS,
    SATURATING_ACTIVATIONS,
    TANH_LIKE_ACTIVATIONS,
    TANH_LIKE_KINDS,
)
from trainlab.core.protocol import Fix, LayerStatsSnapshot

# --- the fixes' values ---------------------------------------------------------------

CLIP_NORM = 1.0
"""The gradient-norm clip the fixes set: the usual default max norm (e.g. Hugging Face's
max_grad_norm); it bounds every step while leaving healthy gradients of norm ~1 nearly
untouched: it caps exploding gradients without changing ordinary steps."""
LR_CUT = 0.5
"""Too high an lr (divergence, spikes, saturation during training, units dying):
halve it now (an lr too large diverges; cut it and watch the loss)."""

# --- what optimizers and activations ignore or suit -------------------------------------

WEIGHT_DECAY_IGNORED_BY = ("rprop", "lbfgs")
"""Optimizers that take no weight decay (``trainlab.engine.optim.OPTIMIZERS[name].uses`` lacks
it; a test keeps the two equal): a weight-decay fix would be stored and do nothing."""
LIVE_LR_IGNORED_BY = ("rprop",)
"""Optimizers whose steps a live lr change does not move: Rprop reads optim.lr once, as
the initial step size of every weight, then adapts each from the gradient's signs
alone (a test checks it on torch's Rprop). A restart with another lr still moves it."""
SUITED_FAMILIES = {"xavier_normal": ("xavier", "orthogonal"), "kaiming_normal": ("kaiming",)}
"""Init schemes that count as already suited, by the scheme a fix would propose
(orthogonal with gain 1 keeps variance like Xavier)."""


# --- building blocks --------------------------------------------------------------------


def fix(label: str, changes: Mapping[str, Any], note: str = "") -> Fix:
    """A fix, live when every key is hot (the schema says), else with a restart; the
    label gets " now" or " and restart" to say which, then ``note``."""
    restart = not all(field_info(key).spec.hot for key in changes)
    when = " and restart" if restart else " now"
    return Fix(f"{label}{when}{note}", dict(changes), restart=restart)


def combine(*fixes: Fix | Sequence[Fix | None] | None) -> tuple[Fix, ...]:
    """The fixes that apply, in order, without repeats (None: not for this run)."""
    flat: list[Fix] = []
    for item in fixes:
        for one in item if isinstance(item, Sequence) else [item]:
            if one is not None and one not in flat:
                flat.append(one)
    return tuple(flat)


def round_lr(lr: float) -> float:
    """An lr to two significant figures: what a person would type."""
    return float(f"{lr:.2g}")


def builtin(config: Config) -> bool:
    """model.* changes rebuild the network: only for the built-in architectures."""
    return config.model.arch != "custom"


# --- the learning rate, clipping, regularization -----------------------------------------


def scale_lr(config: Config, factor: float, verb: str, why: str = "") -> Fix | None:
    """Set the lr to ``factor`` times the current one, live; the label shows both
    values. None for an optimizer whose steps a live lr change does not move."""
    if config.optim.name in LIVE_LR_IGNORED_BY:
        return None
    lr = config.optim.lr
    new = round_lr(lr * factor)
    return fix(f"{verb} the learning rate ({lr:g} -> {new:g})", {"optim.lr": new}, why)


def halve_lr(config: Config, why: str = "") -> Fix | None:
    """Halve the lr now (LR_CUT)."""
    return scale_lr(config, LR_CUT, "halve", why)


def restart_with_lr(config: Config, factor: float, extra: Mapping[str, Any] | None = None,
                    what: str = "") -> Fix:
    """Restart from fresh weights with ``factor`` times the current lr (and ``extra``
    changes, described by ``what``); the label shows both lrs."""
    lr = config.optim.lr
    new = round_lr(lr * factor)
    return Fix(f"restart from fresh weights with the learning rate {lr:g} -> {new:g}{what}",
               {"optim.lr": new, **(extra or {})}, restart=True)


def clip(config: Config) -> Fix | None:
    """Clip the gradient norm at CLIP_NORM, unless the run already clips at that or
    less (the statistics show gradients before clipping, so a looser clip may be why)."""
    current = config.reg.clip_norm
    if current and current <= CLIP_NORM:
        return None
    was = f" (now {current:g})" if current else ""
    return fix(f"clip the gradient norm at {CLIP_NORM:g}{was}", {"reg.clip_norm": CLIP_NORM})


def raise_weight_decay(config: Config, floor: float) -> Fix | None:
    """Weight decay x10 (at least ``floor``); None for optimizers that ignore it."""
    if config.optim.name in WEIGHT_DECAY_IGNORED_BY:
        return None
    current = config.optim.weight_decay
    decay = max(floor, current * 10)
    return fix(f"set weight decay {current:g} -> {decay:g}", {"optim.weight_decay": decay})


def add_augmentation(config: Config, name: str) -> Fix | None:
    """Add one augmentation to those the run has (None when it has it already)."""
    current = config.data.augment
    if name in current:
        return None
    was = ", ".join(current) or "none"
    return fix(f"augment the training batches with {name} (augmentations: {was} -> "
               f"{', '.join((*current, name))})", {"data.augment": (*current, name)})


# --- the network: init, activation, normalization, residuals ------------------------------


def suited_scheme(config: Config, snapshot: LayerStatsSnapshot) -> str | None:
    """The init that suits the run's activation: Xavier for tanh-like, Kaiming for the
    ReLU family (each keeps its family's activations at unit variance). A custom model
    is judged by the activation modules it was seen to use; None when they are unknown
    or mixed."""
    if builtin(config):
        tanh_like = config.model.activation in TANH_LIKE_ACTIVATIONS
        return "xavier_normal" if tanh_like else "kaiming_normal"
    kinds = {row.activation for row in snapshot.layers[:-1] if row.activation}
    if kinds and kinds <= set(TANH_LIKE_KINDS):
        return "xavier_normal"
    if kinds and kinds <= set(RELU_FAMILY_KINDS):
        return "kaiming_normal"
    return None


def init(config: Config, snapshot: LayerStatsSnapshot) -> Fix | None:
    """Switch to the suited init and restart, unless the run already uses it (``auto``
    picks it for the built-in nets; a custom model keeps PyTorch's own under ``auto``)."""
    scheme = suited_scheme(config, snapshot)
    if scheme is None:
        return None
    current = config.init.scheme
    if current == "auto" and builtin(config):
        return None
    if current.startswith(SUITED_FAMILIES[scheme]):
        return None
    name = "Xavier" if scheme.startswith("xavier") else "Kaiming"
    return fix(f"switch the init to {name}", {"init.scheme": scheme})


def activation(config: Config, name: str, label: str) -> Fix | None:
    """Switch a built-in net's activation and restart, in one fix with the init suited
    to the new activation whenever the current one does not suit it; None for a custom
    model or when the net already uses ``name``.

    The init goes along when it is a scheme made for the other family (Xavier chosen for
    tanh does not suit ReLU), and when the activation changes family with an init of a
    fixed scale (normal, uniform, constant, zeros, PyTorch's default): that scale was
    set for the old activation, and the new one reacts to it differently. N(0, 1)
    weights saturate tanh, whose output stays bounded, but make a ReLU net's activations
    grow ~16x a layer (the init-relu-large preset ends at a training loss of 5e12).
    Within a family (ReLU -> LeakyReLU) a fixed-scale init keeps doing what it did, so
    it is left alone. ``auto`` picks the suited init by itself."""
    if not builtin(config) or config.model.activation == name:
        return None
    changes: dict[str, Any] = {"model.activation": name}
    scheme = config.init.scheme
    suited = "xavier_normal" if name in TANH_LIKE_ACTIVATIONS else "kaiming_normal"
    made_for_a_family = scheme.startswith(("xavier", "kaiming", "orthogonal"))
    family_changes = ((config.model.activation in TANH_LIKE_ACTIVATIONS)
                      != (name in TANH_LIKE_ACTIVATIONS))
    if scheme != "auto" and not scheme.startswith(SUITED_FAMILIES[suited]) and (
            made_for_a_family or family_changes):
        changes["init.scheme"] = suited
        label = f"{label} with {'Xavier' if suited.startswith('xavier') else 'Kaiming'} init"
    return fix(label, changes)


def leaky_relu(config: Config) -> Fix | None:
    """Switch a ReLU net to LeakyReLU: dead units get a small gradient back."""
    if config.model.activation != "relu":
        return None
    return activation(config, "leaky_relu", "switch to LeakyReLU")


def batch_norm(config: Config) -> Fix | None:
    """Add BatchNorm to every block of a built-in net that has none."""
    if not builtin(config) or config.model.norm != "none":
        return None
    return fix("add BatchNorm to every block", {"model.norm": "batch"})


def residual(config: Config) -> Fix | None:
    """Add residual connections to a built-in net of two or more blocks."""
    if not builtin(config) or config.model.residual or config.model.depth < 2:
        return None
    return fix("add residual connections", {"model.residual": True})


def depth_fixes(config: Config, snapshot: LayerStatsSnapshot) -> tuple[Fix, ...]:
    """The remedies for signals that shrink or grow through depth: a suited init; else,
    for a saturating activation, a ReLU-family one (with a badly scaled init ReLU would
    not help, and ``activation`` brings Kaiming along when the init is not suited);
    normalization; residuals."""
    suited = init(config, snapshot)
    relu = (activation(config, "relu", "switch the activation to ReLU")
            if suited is None and config.model.activation in SATURATING_ACTIVATIONS else None)
    return combine(suited, relu, batch_norm(config), residual(config))
