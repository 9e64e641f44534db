"""Tests for trainlab.engine.models: activations, mlp/cnn/custom builders, dropout, summary."""

from __future__ import annotations

import math
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trainlab.core.config import ACTIVATIONS, ConfigError, ModelConfig
from trainlab.engine.models import (
    ACTIVATION_BUILDERS,
    CNN,
    LEAKY_RELU_SLOPE,
    MLP,
    ConvBlock,
    HiddenBlock,
    LayerRow,
    ScaledSigmoid,
    build_model,
    model_summary,
    set_dropout,
)
from trainlab.engine.usercode import UserCodeError


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- activations ---------------------------------------------------------------------

# Independent references, element by element with math (no torch).
REFERENCE: dict[str, Callable[[float], float]] = {
    "relu": lambda x: max(x, 0.0),
    "leaky_relu": lambda x: x if x > 0 else 0.01 * x,
    "elu": lambda x: x if x > 0 else math.exp(x) - 1.0,
    "gelu": lambda x: 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))),
    "silu": lambda x: x / (1.0 + math.exp(-x)),
    "tanh": math.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)),
    "scaled_sigmoid": lambda x: 4.0 / (1.0 + math.exp(-x)) - 2.0,
    "identity": lambda x: x,
}


def test_every_configured_activation_has_a_builder() -> None:
    assert set(ACTIVATION_BUILDERS) == set(ACTIVATIONS) == set(REFERENCE)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_computes_its_function(name: str) -> None:
    module = ACTIVATION_BUILDERS[name]()
    assert isinstance(module, nn.Module)
    xs = np.linspace(-6.0, 6.0, 241)
    got = module(torch.from_numpy(xs)).numpy()
    want = np.array([REFERENCE[name](float(x)) for x in xs])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_builders_return_fresh_modules() -> None:
    assert ACTIVATION_BUILDERS["relu"]() is not ACTIVATION_BUILDERS["relu"]()


def test_leaky_relu_uses_the_named_slope() -> None:
    assert LEAKY_RELU_SLOPE == 0.01
    module = ACTIVATION_BUILDERS["leaky_relu"]()
    assert module(torch.tensor([-100.0])).item() == pytest.approx(-1.0)


def test_scaled_sigmoid_passes_through_zero_with_slope_one() -> None:
    f = ScaledSigmoid()
    h = 1e-4
    x = torch.tensor([-h, 0.0, h], dtype=torch.float64)
    y = f(x)
    assert y[1].item() == 0.0
    assert ((y[2] - y[0]) / (2 * h)).item() == pytest.approx(1.0, rel=1e-6)
    assert isinstance(ACTIVATION_BUILDERS["scaled_sigmoid"](), ScaledSigmoid)
    # Bounded in (-2, 2).
    assert f(torch.tensor([50.0, -50.0])).tolist() == pytest.approx([2.0, -2.0])


# --- mlp -----------------------------------------------------------------------------

NORMS = ("none", "batch", "layer")
POSITIONS = ("before", "after")
NORM_TYPES = {"none": type(None), "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


def mlp(**overrides: object) -> ModelConfig:
    fields: dict[str, object] = {"arch": "mlp", "depth": 3, "width": 6, "activation": "tanh"}
    fields.update(overrides)
    return ModelConfig(**fields)  # type: ignore[arg-type]


def by_hand(block: HiddenBlock, x: torch.Tensor, norm_position: str) -> torch.Tensor:
    """The block's transform written out, without the residual add."""
    y = block.linear(x)
    if block.norm is not None and norm_position == "before":
        y = block.norm(y)
    y = block.act(y)
    if block.norm is not None and norm_position == "after":
        y = block.norm(y)
    return block.dropout(y)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("norm", NORMS)
def test_mlp_shape_structure_and_residual(norm: str, position: str, residual: bool) -> None:
    cfg = mlp(norm=norm, norm_position=position, residual=residual)
    model = build_model(cfg, (5,), 3)
    assert isinstance(model, MLP)
    assert model(torch.randn(8, 5)).shape == (8, 3)
    # Input with more than one dim is flattened.
    assert build_model(cfg, (2, 3), 4)(torch.randn(8, 2, 3)).shape == (8, 4)

    assert len(model.blocks) == 3
    for block in model.blocks:
        assert isinstance(block, HiddenBlock)
        assert isinstance(block.norm, NORM_TYPES[norm])
        assert isinstance(block.act, nn.Tanh)
        assert isinstance(block.dropout, nn.Dropout)
    assert isinstance(model.head, nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (6, 3)

    # Residual only where the widths match: block 0 maps 5 -> 6, blocks 1.. map 6 -> 6.
    model.eval()  # BatchNorm on running statistics: the same function on every call
    x0 = torch.randn(8, 5)
    torch.testing.assert_close(model.blocks[0](x0), by_hand(model.blocks[0], x0, position))
    x1 = torch.randn(8, 6)
    expected = by_hand(model.blocks[1], x1, position) + (x1 if residual else 0.0)
    torch.testing.assert_close(model.blocks[1](x1), expected)


def capture(module: nn.Module, store: dict[str, torch.Tensor], key: str, *, inputs: bool) -> None:
    def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        store[key] = (args[0] if inputs else out).detach().clone()

    module.register_forward_hook(hook)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("norm", NORMS)
def test_mlp_block_applies_norm_on_the_chosen_side_of_the_activation(
    norm: str, position: str
) -> None:
    model = build_model(mlp(norm=norm, norm_position=position, activation="relu"), (5,), 2)
    block = model.blocks[0]
    with torch.no_grad():  # a linear output far from zero mean, so normalization shows
        block.linear.bias.fill_(3.0)
    seen: dict[str, torch.Tensor] = {}
    capture(block.linear, seen, "linear_out", inputs=False)
    capture(block.act, seen, "act_in", inputs=True)
    capture(block.dropout, seen, "dropout_in", inputs=True)
    model.train()
    model(torch.randn(64, 5))

    def normalized(t: torch.Tensor) -> bool:
        if norm == "batch":  # per feature, over the batch
            return bool(t.mean(0).abs().max() < 1e-4)
        return bool(t.mean(1).abs().max() < 1e-4)  # layer: per sample, over features

    lin = seen["linear_out"]
    assert lin.mean() > 1.0
    if norm == "none":
        torch.testing.assert_close(seen["act_in"], lin)
        torch.testing.assert_close(seen["dropout_in"], torch.relu(lin))
    elif position == "before":
        assert normalized(seen["act_in"])
        assert not normalized(seen["dropout_in"])  # relu of a normalized value
    else:
        torch.testing.assert_close(seen["act_in"], lin)
        assert normalized(seen["dropout_in"])


def test_mlp_uses_configured_activation_and_dropout() -> None:
    model = build_model(mlp(activation="leaky_relu", dropout=0.25), (4,), 2)
    for block in model.blocks:
        assert isinstance(block.act, nn.LeakyReLU)
        assert block.act.negative_slope == LEAKY_RELU_SLOPE
        assert block.dropout.p == 0.25


def test_mlp_layer_names() -> None:
    model = build_model(mlp(depth=2, norm="layer"), (4,), 2)
    names = [name for name, m in model.named_modules() if next(m.children(), None) is None]
    assert names == [
        "flatten",
        "blocks.0.linear", "blocks.0.norm", "blocks.0.act", "blocks.0.dropout",
        "blocks.1.linear", "blocks.1.norm", "blocks.1.act", "blocks.1.dropout",
        "head",
    ]  # fmt: skip


# --- dropout, live ---------------------------------------------------------------------


def test_set_dropout_counts_and_changes_behaviour() -> None:
    model = build_model(mlp(depth=3, width=32, activation="identity"), (8,), 2)
    model.train()
    x = torch.randn(16, 8)
    seen: dict[str, torch.Tensor] = {}
    capture(model.blocks[0].dropout, seen, "out", inputs=False)

    # Built with p = 0: dropout modules exist and do nothing, even in train mode.
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    assert (seen["out"] == 0).sum() == 0

    assert set_dropout(model, 0.5) == 3
    assert all(b.dropout.p == 0.5 for b in model.blocks)
    first = model(x)
    zeros = int((seen["out"] == 0).sum())
    assert 0.3 * seen["out"].numel() < zeros < 0.7 * seen["out"].numel()
    assert not torch.equal(first, model(x))
    model.eval()  # dropout is off in eval mode whatever p is
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)

    model.train()
    assert set_dropout(model, 0.0) == 3
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    assert set_dropout(model, 0.0) == 3  # modules set, not modules whose p differed


def test_set_dropout_on_other_models() -> None:
    cnn = build_model(ModelConfig(arch="cnn", depth=2, width=4, channels=2), (1, 4, 4), 2)
    assert set_dropout(cnn, 0.3) == 1
    assert cnn.fc.dropout.p == 0.3
    plain = nn.Sequential(nn.Linear(2, 2), nn.Dropout2d(0.1), nn.Dropout(0.2))
    assert set_dropout(plain, 0.4) == 2
    assert plain[1].p == plain[2].p == 0.4
    assert set_dropout(nn.Linear(2, 2), 0.5) == 0
    with pytest.raises(ValueError):
        set_dropout(plain, 1.5)


# --- cnn -------------------------------------------------------------------------------


def cnn(**overrides: object) -> ModelConfig:
    fields: dict[str, object] = {"arch": "cnn", "depth": 2, "width": 8, "channels": 4}
    fields.update(overrides)
    return ModelConfig(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16)])
def test_cnn_output_shape(shape: tuple[int, int, int], depth: int) -> None:
    model = build_model(cnn(depth=depth), shape, 5)
    assert isinstance(model, CNN)
    assert len(model.blocks) == depth
    assert model(torch.randn(2, *shape)).shape == (2, 5)


def test_cnn_channels_double_and_pool_after_every_second_conv() -> None:
    model = build_model(cnn(depth=5, channels=3), (2, 16, 16), 4)
    convs = [(b.conv.in_channels, b.conv.out_channels) for b in model.blocks]
    assert convs == [(2, 3), (3, 3), (3, 6), (6, 6), (6, 12)]
    assert [b.pool is not None for b in model.blocks] == [False, True, False, True, False]
    for block in model.blocks:
        assert block.conv.kernel_size == (3, 3) and block.conv.padding == (1, 1)
    rows = {r.name: r.output_shape for r in model_summary(model, torch.randn(2, 2, 16, 16))}
    assert rows["blocks.1.pool"] == (3, 8, 8)
    assert rows["blocks.3.pool"] == (6, 4, 4)
    assert rows["blocks.4.act"] == (12, 4, 4)
    assert rows["fc.linear"] == (8,)
    assert rows["head"] == (4,)


def test_cnn_stops_pooling_below_two_pixels() -> None:
    model = build_model(cnn(depth=6, channels=2), (1, 2, 2), 3)
    assert [b.pool is not None for b in model.blocks] == [False, True, False, False] + [False] * 2
    assert model(torch.randn(2, 1, 2, 2)).shape == (2, 3)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("norm", NORMS)
def test_cnn_norm_position_and_residual(norm: str, position: str, residual: bool) -> None:
    model = build_model(cnn(norm=norm, norm_position=position, residual=residual), (1, 6, 6), 3)
    norm_type = {"none": type(None), "batch": nn.BatchNorm2d, "layer": nn.GroupNorm}[norm]
    for block in model.blocks:
        assert isinstance(block, ConvBlock)
        assert isinstance(block.norm, norm_type)
    if norm == "layer":
        assert model.blocks[1].norm.num_groups == 1
    model.eval()
    assert model(torch.randn(2, 1, 6, 6)).shape == (2, 3)

    # Block 1 maps 4 -> 4 channels (residual applies), then pools.
    block = model.blocks[1]
    x = torch.randn(2, 4, 6, 6)
    y = block.conv(x)
    if block.norm is not None and position == "before":
        y = block.norm(y)
    y = block.act(y)
    if block.norm is not None and position == "after":
        y = block.norm(y)
    if residual:
        y = x + y
    torch.testing.assert_close(block(x), nn.functional.max_pool2d(y, 2))
    assert not model.blocks[0].residual  # 1 -> 4 channels never adds


def test_cnn_on_tabular_data_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(cnn(), (4,), 2)
    assert str(info.value) == (
        "model.arch = 'cnn' needs image data (C, H, W); the dataset has input shape (4,)"
    )


# --- custom ----------------------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a module into tmp_path (the cwd) under a unique name; returns its name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # restores sys.path afterwards
    names: list[str] = []

    def write(source: str) -> str:
        name = f"user_model_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def test_custom_factory_builds(user_module: Callable[[str], str]) -> None:
    name = user_module(
        "import math\n"
        "from torch import nn\n"
        "SEEN = []\n"
        "def make(input_shape, num_outputs):\n"
        "    SEEN.append((input_shape, num_outputs))\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_outputs))\n"
    )
    model = build_model(ModelConfig(arch="custom", factory=f"{name}:make"), (2, 3), 4)
    assert isinstance(model, nn.Sequential)
    assert model(torch.randn(5, 2, 3)).shape == (5, 4)
    assert sys.modules[name].SEEN == [((2, 3), 4)]


def test_custom_factory_that_raises_is_a_user_code_error(
    user_module: Callable[[str], str],
) -> None:
    name = user_module(
        "def make(input_shape, num_outputs):\n"
        "    raise RuntimeError('no model today')  # the user's line\n"
    )
    with pytest.raises(UserCodeError) as info:
        build_model(ModelConfig(arch="custom", factory=f"{name}:make"), (2,), 2)
    assert f"model.factory {name}:make" in str(info.value)
    assert "no model today" in str(info.value)
    assert "raise RuntimeError('no model today')  # the user's line" in info.value.traceback_text
    assert f"{name}.py" in info.value.traceback_text


def test_custom_factory_returning_no_module_is_a_config_error(
    user_module: Callable[[str], str],
) -> None:
    name = user_module("def make(input_shape, num_outputs):\n    return [1, 2]\n")
    with pytest.raises(ConfigError, match=r"returned list, expected a torch\.nn\.Module"):
        build_model(ModelConfig(arch="custom", factory=f"{name}:make"), (2,), 2)


def test_custom_factory_that_cannot_be_imported_is_a_config_error(
    user_module: Callable[[str], str],
) -> None:
    with pytest.raises(ConfigError, match=r"model\.factory"):
        build_model(ModelConfig(arch="custom", factory="no_such_module_xyz:make"), (2,), 2)


def test_unknown_arch_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.arch = 'rnn'"):
        build_model(ModelConfig(arch="rnn"), (2,), 2)


# --- model_summary ---------------------------------------------------------------------


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_summary_rows_in_forward_order_with_shapes_and_params() -> None:
    model = build_model(mlp(depth=2, width=6, norm="batch"), (5,), 3)
    rows = model_summary(model, torch.randn(4, 5))
    assert all(isinstance(r, LayerRow) for r in rows)
    linear = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731
    assert [(r.name, r.kind, r.output_shape, r.params) for r in rows] == [
        ("flatten", "Flatten", (5,), 0),
        ("blocks.0.linear", "Linear", (6,), linear(5, 6)),
        ("blocks.0.norm", "BatchNorm1d", (6,), 2 * 6),
        ("blocks.0.act", "Tanh", (6,), 0),
        ("blocks.0.dropout", "Dropout", (6,), 0),
        ("blocks.1.linear", "Linear", (6,), linear(6, 6)),
        ("blocks.1.norm", "BatchNorm1d", (6,), 2 * 6),
        ("blocks.1.act", "Tanh", (6,), 0),
        ("blocks.1.dropout", "Dropout", (6,), 0),
        ("head", "Linear", (3,), linear(6, 3)),
    ]
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters())


def test_summary_follows_call_order_not_definition_order() -> None:
    class Backwards(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.second = nn.Linear(3, 2)
            self.first = nn.Conv1d(1, 3, kernel_size=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.second(self.first(x).mean(-1))

    rows = model_summary(Backwards(), torch.randn(2, 1, 10))
    assert [(r.name, r.output_shape, r.params) for r in rows] == [
        ("first", (3, 7), 1 * 3 * 4 + 3),
        ("second", (2,), 3 * 2 + 2),
    ]


def test_summary_counts_trainable_params_only() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)
    rows = model_summary(model, torch.randn(2, 4))
    assert [r.params for r in rows] == [3, 3 * 2 + 2]


def test_summary_of_non_tensor_output_uses_its_first_tensor() -> None:
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(3, 5, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lstm(x)[0]

    rows = model_summary(Wrapped(), torch.randn(2, 7, 3))
    assert [(r.name, r.kind, r.output_shape) for r in rows] == [("lstm", "LSTM", (7, 5))]


def test_summary_restores_modes_and_removes_hooks() -> None:
    model = build_model(mlp(depth=2, norm="batch", dropout=0.5), (5,), 3)
    model.train()
    model.blocks[1].eval()  # a mixed state must come back exactly
    modes = {name: m.training for name, m in model.named_modules()}
    stats = model.blocks[0].norm.running_mean.clone()

    model_summary(model, torch.randn(4, 5))

    assert {name: m.training for name, m in model.named_modules()} == modes
    assert hooks_left(model) == 0
    # Eval mode during the pass: BatchNorm's running statistics were not updated.
    torch.testing.assert_close(model.blocks[0].norm.running_mean, stats, rtol=0, atol=0)


def test_summary_removes_hooks_when_the_forward_raises() -> None:
    model = build_model(mlp(depth=2, norm="batch"), (5,), 3)
    model.train()
    with pytest.raises(RuntimeError):
        model_summary(model, torch.randn(4, 7))  # wrong width
    assert hooks_left(model) == 0
    assert all(m.training for m in model.modules())
    assert torch.is_grad_enabled()


@pytest.mark.parametrize(("field", "value"), [("activation", "swish"), ("norm", "instance")])
def test_unknown_activation_or_norm_is_a_config_error(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"model\.{field} = '{value}'"):
        build_model(mlp(**{field: value}), (2,), 2)
