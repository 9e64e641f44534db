"""Weight initialization: a registry of schemes applied to linear and conv layers.

The scheme is a classic lever of the product (docs/field-knowledge.md#initialization):
zeros and constant show the symmetry problem, a fixed small or large ``normal`` shows
vanishing activations or saturation, Xavier suits tanh-like activations and Kaiming the
ReLU family. Only the weights of ``nn.Linear`` and ``nn.Conv1d/2d/3d`` change (the head
included); normalization layers keep their weight 1 / bias 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

import torch
from torch import nn

from trainlab.core.config import ConfigError, InitConfig
from trainlab.core.health import TANH_LIKE_ACTIVATIONS
from trainlab.engine.models import LEAKY_RELU_SLOPE, OUTPUT_LAYER

WeightLayer: TypeAlias = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
"""A layer with a ``weight`` (and maybe a ``bias``): what ``WEIGHT_LAYERS`` lists."""
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The layers whose weight and bias :func:`init_weights` sets (``WeightLayer``); spelled
out so isinstance() tells a type checker which (each has ``weight``)."""

FanMode: TypeAlias = Literal["fan_in", "fan_out"]
KaimingNonlinearity: TypeAlias = Literal["relu", "leaky_relu"]

InitFn = Callable[[torch.Tensor, InitConfig, str], None]
"""An initializer: (weight, init config, activation name) -> fills the weight in place."""


def _kaiming_nonlinearity(activation: str) -> tuple[KaimingNonlinearity, float]:
    """(nonlinearity, negative slope) for torch's Kaiming gain.

    Kaiming/He init is derived for the ReLU family, so leaky_relu gets torch's leaky_relu
    gain with our slope and every other activation the ReLU gain (variance 2/fan), even
    tanh or sigmoid: asking for Kaiming means asking for the He variance. Use xavier_* for
    tanh-like activations.
    """
    if activation == "leaky_relu":
        return "leaky_relu", LEAKY_RELU_SLOPE
    return "relu", 0.0


def _fan_mode(mode: str) -> FanMode:
    """``init.mode`` as torch's Kaiming init takes it (the config allows only these)."""
    if mode == "fan_in":
        return "fan_in"
    if mode == "fan_out":
        return "fan_out"
    raise ConfigError(f"init.mode = {mode!r} is not allowed: expected fan_in or fan_out")


def _zeros(weight: torch.Tensor, cfg: InitConfig, activation: str) -> None:
    nn.init.zeros_(weight)


def _constant(weight: torch.Tensor, cfg: InitConfig, activation: str) -> None:
    nn.init.constant_(weight, cfg.value)


def _normal(weight: torch.Tensor, cfg: InitConfig, activation: str) -> None:
    nn.init.normal_(weight, mean=0.0, std=cfg.std)


def _uniform(weight: torch.Tensor, cfg: InitConfig, activation: str) -> None:
    nn.init.uniform_(weight, -cfg.bound, cfg.bound)


def _xavier_normal(weight: torch.Tensor, cfg: InitConfig, activation: str) -> None:
    nn.init.xavier_normal_(weight, gain=1.0)


def _xavier_uniform(weight: torch.Tensor, cfg: InitConfig, activation: str) -> None:
    nn.init.xavier_uniform_(weight, gain=1.0)


def _kaiming_normal(weight: torch.Tensor, cfg: InitConfig, activation: str) -> None:
    nonlinearity, slope = _kaiming_nonlinearity(activation)
    nn.init.kaiming_normal_(weight, a=slope, mode=_fan_mode(cfg.mode), nonlinearity=nonlinearity)


def _kaiming_uniform(weight: torch.Tensor, cfg: InitConfig, activation: str) -> None:
    nonlinearity, slope = _kaiming_nonlinearity(activation)
    nn.init.kaiming_uniform_(weight, a=slope, mode=_fan_mode(cfg.mode), nonlinearity=nonlinearity)


def _orthogonal(weight: torch.Tensor, cfg: InitConfig, activation: str) -> None:
    # torch flattens a conv weight to (out_channels, in_channels * kernel) first.
    nn.init.orthogonal_(weight, gain=1.0)


INITIALIZERS: dict[str, InitFn] = {
    "zeros": _zeros,
    "constant": _constant,
    "normal": _normal,
    "uniform": _uniform,
    "xavier_normal": _xavier_normal,
    "xavier_uniform": _xavier_uniform,
    "kaiming_normal": _kaiming_normal,
    "kaiming_uniform": _kaiming_uniform,
    "orthogonal": _orthogonal,
}
"""``init.scheme`` -> initializer. ``default`` is not here: it changes nothing."""


OUTPUT_LAYER_GAIN = 0.1
"""auto: a built-in net's output layer gets its scheme's weights times this. With Kaiming
weights there the default digits MLP started at loss 2.83 on 10 classes (logits of std
~1), 23% above the ln 10 = 2.30 of an uninformed guess: confidently wrong before seeing
anything, and its first steps spent unlearning that. Scaled down, the logits have std
~0.1 and the loss at init is ln C within 1% (2.296), as the standard recipe advises
(small last-layer weights, zero bias). The hidden layers keep their scheme, so what they
carry forward at init is unchanged; the explicit schemes (the init labs' subject) scale
nothing."""


TANH_LIKE = TANH_LIKE_ACTIVATIONS
"""Activations without a flat half: Xavier keeps their variance
(docs/field-knowledge.md#initialization); the one list the detectors read too."""


def resolve_scheme(scheme: str, arch: str, activation: str) -> str:
    """The scheme ``auto`` stands for: the model's own for custom models, else Xavier for
    tanh-like activations and Kaiming for the ReLU family. Other schemes are themselves."""
    if scheme != "auto":
        return scheme
    if arch == "custom":
        return "default"
    return "xavier_normal" if activation in TANH_LIKE else "kaiming_normal"


def init_weights(
    model: nn.Module, cfg: InitConfig, activation: str, arch: str = "mlp"
) -> None:
    """Initialize every linear and conv layer of ``model`` as ``cfg`` says, in place.

    ``auto`` is resolved first (``resolve_scheme``: ``arch`` and ``activation`` decide),
    and scales the built-in nets' output layer (``OUTPUT_LAYER``) by ``OUTPUT_LAYER_GAIN``.
    Weights get ``cfg.scheme``, biases ``cfg.bias``; scheme ``default`` leaves PyTorch's
    own initialization (weights and biases) untouched. ``activation`` (``model.activation``)
    only matters for kaiming_*: leaky_relu uses torch's leaky_relu gain with
    ``LEAKY_RELU_SLOPE``, every other activation the ReLU gain, i.e. variance 2/fan
    (Kaiming is the ReLU-family init). Xavier and orthogonal use gain 1. Other layers,
    normalization included, are not touched.
    """
    scheme = resolve_scheme(cfg.scheme, arch, activation)
    if scheme == "default":
        return
    try:
        initializer = INITIALIZERS[scheme]
    except KeyError:
        known = ", ".join(["default", *INITIALIZERS])
        raise ConfigError(
            f"init.scheme = {cfg.scheme!r} is not allowed: expected one of {known}"
        ) from None
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, WEIGHT_LAYERS):
                initializer(module.weight, cfg, activation)
                if module.bias is not None:
                    nn.init.constant_(module.bias, cfg.bias)
        head = getattr(model, OUTPUT_LAYER, None)
        if cfg.scheme == "auto" and isinstance(head, WEIGHT_LAYERS):
            head.weight.mul_(OUTPUT_LAYER_GAIN)  # small outputs: loss at init ~ ln C
