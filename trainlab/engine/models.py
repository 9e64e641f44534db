"""The networks trainlab builds: registries of activations and architectures.

``build_model`` turns a :class:`~trainlab.core.config.ModelConfig` into an ``nn.Module``:

- ``mlp``: Flatten, ``depth`` hidden blocks (linear -> [norm] -> act -> [norm] -> dropout),
  then a linear head.
- ``cnn``: ``depth`` 3x3 conv blocks (channels doubled and a 2x2 max-pool after every
  second conv), global average pooling, one hidden linear block and a linear head.
- ``custom``: whatever the user's ``model.factory`` returns.

Layers get stable, readable names (``blocks.0.linear``, ``blocks.0.act``, ``head``) because
the statistics, the diagnostics and the UI all address layers by those names.
Also here: :func:`set_dropout` for the live (hot) change of the dropout probability and
:func:`model_summary`, one hooked forward pass that lists every leaf layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from trainlab.core.config import ConfigError, ModelConfig
from trainlab.engine.usercode import call_user, load_callable

LEAKY_RELU_SLOPE = 0.01
"""Negative slope of ``leaky_relu``; Kaiming init (trainlab.engine.init) uses the same value."""
OUTPUT_LAYER = "head"
"""The attribute (and layer name) of the built-in architectures' output layer: init's
``auto`` scales it down (trainlab.engine.init.OUTPUT_LAYER_GAIN)."""


class ScaledSigmoid(nn.Module):
    """``4 * sigmoid(x) - 2``: range (-2, 2), through 0 with slope 1, so it keeps variance
    like tanh does (docs/field-knowledge.md#activations)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation elementwise."""
        return 4.0 * torch.sigmoid(x) - 2.0


ACTIVATION_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(LEAKY_RELU_SLOPE),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "scaled_sigmoid": ScaledSigmoid,
    "identity": nn.Identity,
}
"""Activation name (``config.ACTIVATIONS``) -> a builder of a fresh module."""

# Normalization name -> builder taking the number of features/channels; "none" builds nothing.
NORM_1D_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm1d,
    "layer": nn.LayerNorm,
}
NORM_2D_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    # LayerNorm over (C, H, W) would tie the module to one image size; one group normalizes
    # over the same values, with a per-channel scale and shift.
    "layer": lambda channels: nn.GroupNorm(1, channels),
}

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
"""The modules whose ``p`` :func:`set_dropout` changes (spelled out so isinstance() tells
a type checker they have one)."""


def _activation(name: str) -> nn.Module:
    builder = ACTIVATION_BUILDERS.get(name)
    if builder is None:
        known = ", ".join(ACTIVATION_BUILDERS)
        raise ConfigError(f"model.activation = {name!r} is not allowed: expected one of {known}")
    return builder()


def _norm(
    builders: dict[str, Callable[[int], nn.Module]], name: str, size: int
) -> nn.Module | None:
    if name == "none":
        return None
    builder = builders.get(name)
    if builder is None:
        known = ", ".join(["none", *builders])
        raise ConfigError(f"model.norm = {name!r} is not allowed: expected one of {known}")
    return builder(size)


# --- building blocks ---------------------------------------------------------------


def _transform(
    x: torch.Tensor, norm: nn.Module | None, act: nn.Module, norm_after: bool
) -> torch.Tensor:
    """[norm] -> act -> [norm]: the one place the before/after choice is made."""
    if norm is not None and not norm_after:
        x = norm(x)
    x = act(x)
    if norm is not None and norm_after:
        x = norm(x)
    return x


class HiddenBlock(nn.Module):
    """linear -> [norm] -> act -> [norm] -> dropout, plus the input when ``residual``.

    ``dropout`` exists even at p = 0 so that dropout can be switched on while training.
    ``residual`` is only honoured when input and output widths match.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        activation: str,
        norm: str = "none",
        norm_after: bool = False,
        residual: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.norm = _norm(NORM_1D_BUILDERS, norm, out_features)
        self.act = _activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.norm_after = norm_after
        self.residual = residual and in_features == out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block (and add its input if residual)."""
        y = self.dropout(_transform(self.linear(x), self.norm, self.act, self.norm_after))
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        """Show the flags that print(model) would otherwise hide."""
        return f"norm_after={self.norm_after}, residual={self.residual}"


class ConvBlock(nn.Module):
    """3x3 conv (padding 1) -> [norm] -> act -> [norm], plus the input when ``residual``,
    then an optional 2x2 max-pool (after the residual add, so the shapes match)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        activation: str,
        norm: str = "none",
        norm_after: bool = False,
        residual: bool = False,
        pool: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = _norm(NORM_2D_BUILDERS, norm, out_channels)
        self.act = _activation(activation)
        self.pool = nn.MaxPool2d(2) if pool else None
        self.norm_after = norm_after
        self.residual = residual and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block (and add its input if residual), then pool."""
        y = _transform(self.conv(x), self.norm, self.act, self.norm_after)
        if self.residual:
            y = x + y
        return self.pool(y) if self.pool is not None else y

    def extra_repr(self) -> str:
        """Show the flags that print(model) would otherwise hide."""
        return f"norm_after={self.norm_after}, residual={self.residual}"


# --- architectures -------------------------------------------------------------------


class MLP(nn.Module):
    """Flatten -> ``depth`` hidden blocks of ``width`` units -> linear head."""

    def __init__(self, cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        widths = [math.prod(input_shape)] + [cfg.width] * cfg.depth
        self.blocks = nn.ModuleList(
            HiddenBlock(
                n_in,
                n_out,
                activation=cfg.activation,
                norm=cfg.norm,
                norm_after=cfg.norm_position == "after",
                residual=cfg.residual,
                dropout=cfg.dropout,
            )
            for n_in, n_out in pairwise(widths)
        )
        self.head = nn.Linear(widths[-1], num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (or regression outputs) of shape (batch, num_outputs)."""
        x = self.flatten(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class CNN(nn.Module):
    """``depth`` conv blocks -> global average pool -> hidden linear block -> linear head.

    Channels start at ``cfg.channels`` and double after every second conv; a 2x2 max-pool
    follows every second conv while the image is still at least 2x2.
    """

    def __init__(self, cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        blocks = []
        for i in range(cfg.depth):
            out_channels = cfg.channels * 2 ** (i // 2)
            pool = i % 2 == 1 and min(height, width) >= 2
            blocks.append(
                ConvBlock(
                    channels,
                    out_channels,
                    activation=cfg.activation,
                    norm=cfg.norm,
                    norm_after=cfg.norm_position == "after",
                    residual=cfg.residual,
                    pool=pool,
                )
            )
            channels = out_channels
            if pool:
                height, width = height // 2, width // 2
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        # The classifier's hidden layer: no norm, no residual, but the same live dropout.
        self.fc = HiddenBlock(channels, cfg.width, activation=cfg.activation, dropout=cfg.dropout)
        self.head = nn.Linear(cfg.width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (or regression outputs) of shape (batch, num_outputs)."""
        for block in self.blocks:
            x = block(x)
        return self.head(self.fc(self.flatten(self.pool(x))))


def _build_mlp(cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    return MLP(cfg, input_shape, num_outputs)


def _build_cnn(cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model.arch = 'cnn' needs image data (C, H, W); the dataset has input shape "
            f"{input_shape}"
        )
    return CNN(cfg, input_shape, num_outputs)


def _build_custom(cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    fn = load_callable(cfg.factory, "model.factory")
    model = call_user(fn, "model.factory " + cfg.factory, input_shape, num_outputs)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.factory {cfg.factory!r} returned {type(model).__name__}, "
            "expected a torch.nn.Module"
        )
    return model


ARCHITECTURES: dict[str, Callable[[ModelConfig, tuple[int, ...], int], nn.Module]] = {
    "mlp": _build_mlp,
    "cnn": _build_cnn,
    "custom": _build_custom,
}
"""``model.arch`` -> builder(cfg, input_shape, num_outputs)."""


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Build the network ``cfg`` describes for inputs of ``input_shape`` (no batch dim).

    Weights keep PyTorch's initialization; ``trainlab.engine.init.init_weights`` applies the
    configured scheme. Raises ConfigError for a config the data cannot satisfy (a cnn on
    tabular data, a factory returning something else than a module) and UserCodeError when
    a custom factory raises.
    """
    try:
        builder = ARCHITECTURES[cfg.arch]
    except KeyError:
        known = ", ".join(ARCHITECTURES)
        raise ConfigError(
            f"model.arch = {cfg.arch!r} is not allowed: expected one of {known}"
        ) from None
    return builder(cfg, tuple(input_shape), num_outputs)


# --- live changes and inspection -----------------------------------------------------


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the probability of every dropout module to ``p`` (the hot ``model.dropout``).

    Returns the number of dropout modules set (also those that already had ``p``), so 0
    means the model has no dropout to change, e.g. a custom model without any.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be between 0 and 1, got {p}")
    count = 0
    for module in model.modules():
        if isinstance(module, DROPOUT_TYPES):
            module.p = p
            count += 1
    return count


@dataclass(frozen=True)
class LayerRow:
    """One leaf layer as one forward pass saw it."""

    name: str
    """Qualified module name, e.g. ``blocks.0.linear``."""
    kind: str
    """Class name, e.g. ``Linear``."""
    output_shape: tuple[int, ...]
    """Shape of the layer's output without the batch dimension."""
    params: int
    """Trainable parameters of this layer."""


def _first_tensor(value: object) -> torch.Tensor | None:
    """The output itself, or the first tensor inside a tuple/list output (e.g. an LSTM's)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            if (found := _first_tensor(item)) is not None:
                return found
    return None


def trace_forward(
    model: nn.Module, example: torch.Tensor, select: Callable[[nn.Module], bool]
) -> list[tuple[nn.Module, object]]:
    """(module, output) for every call of a selected module, in forward order.

    One pass over ``example`` under no_grad in eval mode (so BatchNorm's running
    statistics and dropout are left alone). Every module's previous train/eval mode is
    restored and the hooks are removed afterwards, also when the forward raises.
    """
    calls: list[tuple[nn.Module, object]] = []
    # Per module, since a model may mix modes (e.g. a frozen, eval-mode backbone).
    modes = {module: module.training for module in model.modules()}
    handles = [
        module.register_forward_hook(lambda mod, _inputs, out: calls.append((mod, out)))
        for module in model.modules()
        if select(module)
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return calls


def model_summary(model: nn.Module, example: torch.Tensor) -> list[LayerRow]:
    """One row per leaf-module call, in forward order, from one traced pass over ``example``.

    ``example`` is a batch (its first dimension is dropped from the shapes). A leaf called
    twice gives two rows; a non-tensor output reports the shape of its first tensor, or
    () if it has none.
    """
    names = {module: name for name, module in model.named_modules()}
    rows = []
    for module, output in trace_forward(model, example, _is_leaf):
        tensor = _first_tensor(output)
        rows.append(
            LayerRow(
                name=names[module] or type(module).__name__,  # a leaf root has name ""
                kind=type(module).__name__,
                output_shape=tuple(tensor.shape[1:]) if tensor is not None else (),
                params=sum(p.numel() for p in module.parameters() if p.requires_grad),
            )
        )
    return rows


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None
