"""Tests for trainlab.engine.init: each scheme's statistics against its formula, biases, norms."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from trainlab.core.config import INIT_SCHEMES, ConfigError, InitConfig, ModelConfig
from trainlab.engine.init import INITIALIZERS, init_weights, resolve_scheme
from trainlab.engine.models import build_model

SLOPE = 0.01  # leaky_relu's negative slope, stated independently of trainlab.engine.models


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def big_linear() -> nn.Module:
    """600 in, 400 out: 240k weights, so the sample variance is within ~1% of the truth."""
    return nn.Linear(600, 400)


def big_conv() -> nn.Module:
    """fan_in 32*3*3 = 288, fan_out 64*3*3 = 576, 18k weights."""
    return nn.Conv2d(32, 64, kernel_size=3)


LAYERS = {
    "linear": (big_linear, 600, 400),
    "conv": (big_conv, 288, 576),
}


def init(layer: nn.Module, activation: str = "relu", **fields: object) -> torch.Tensor:
    init_weights(layer, InitConfig(**fields), activation)  # type: ignore[arg-type]
    return layer.weight.detach()


def assert_moments(weight: torch.Tensor, variance: float, rel: float = 0.06) -> None:
    w = weight.double()
    assert w.var().item() == pytest.approx(variance, rel=rel)
    assert abs(w.mean().item()) < 0.05 * variance**0.5


def test_every_scheme_but_default_and_auto_is_registered() -> None:
    assert set(INITIALIZERS) | {"default", "auto"} == set(INIT_SCHEMES)
    assert "default" not in INITIALIZERS and "auto" not in INITIALIZERS


@pytest.mark.parametrize(
    ("arch", "activation", "expected"),
    [("mlp", "relu", "kaiming_normal"), ("cnn", "gelu", "kaiming_normal"),
     ("mlp", "tanh", "xavier_normal"), ("mlp", "sigmoid", "xavier_normal"),
     ("custom", "relu", "default"), ("custom", "tanh", "default")],
)
def test_auto_picks_the_init_an_expert_would(arch: str, activation: str, expected: str) -> None:
    assert resolve_scheme("auto", arch, activation) == expected
    assert resolve_scheme("orthogonal", arch, activation) == "orthogonal"


def test_auto_leaves_a_custom_model_its_own_weights() -> None:
    layer = nn.Linear(50, 40)
    with torch.no_grad():
        layer.weight.fill_(0.01)
        layer.bias.fill_(0.5)
    init_weights(layer, InitConfig(scheme="auto"), "relu", arch="custom")
    assert torch.all(layer.weight == 0.01) and torch.all(layer.bias == 0.5)
    init_weights(layer, InitConfig(scheme="auto"), "tanh", arch="mlp")
    assert_moments(layer.weight, 2 / (50 + 40), rel=0.25)  # Xavier's variance


@pytest.mark.parametrize("layer", LAYERS)
def test_zeros_and_constant_are_exact(layer: str) -> None:
    make, _, _ = LAYERS[layer]
    assert torch.equal(init(make(), scheme="zeros"), torch.zeros_like(make().weight))
    weight = init(make(), scheme="constant", value=0.7)
    assert torch.all(weight == torch.tensor(0.7))


@pytest.mark.parametrize("layer", LAYERS)
def test_normal_has_variance_std_squared(layer: str) -> None:
    make, _, _ = LAYERS[layer]
    assert_moments(init(make(), scheme="normal", std=0.02), 0.02**2)


@pytest.mark.parametrize("layer", LAYERS)
def test_uniform_has_variance_bound_squared_over_three(layer: str) -> None:
    make, _, _ = LAYERS[layer]
    weight = init(make(), scheme="uniform", bound=0.1)
    assert_moments(weight, 0.1**2 / 3)
    assert weight.abs().max() <= 0.1
    assert weight.abs().max() > 0.099  # really spread over the whole interval


@pytest.mark.parametrize("scheme", ["xavier_normal", "xavier_uniform"])
@pytest.mark.parametrize("layer", LAYERS)
def test_xavier_has_variance_two_over_fan_sum(layer: str, scheme: str) -> None:
    make, fan_in, fan_out = LAYERS[layer]
    # Gain 1 whatever the activation.
    for activation in ("tanh", "relu"):
        assert_moments(init(make(), activation, scheme=scheme), 2 / (fan_in + fan_out))


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("scheme", ["kaiming_normal", "kaiming_uniform"])
@pytest.mark.parametrize("layer", LAYERS)
def test_kaiming_has_variance_two_over_fan(layer: str, scheme: str, mode: str) -> None:
    make, fan_in, fan_out = LAYERS[layer]
    fan = fan_in if mode == "fan_in" else fan_out
    # The ReLU gain for every activation but leaky_relu (the documented choice).
    for activation in ("relu", "tanh", "gelu"):
        assert_moments(init(make(), activation, scheme=scheme, mode=mode), 2 / fan)
    leaky = init(make(), "leaky_relu", scheme=scheme, mode=mode)
    assert_moments(leaky, 2 / ((1 + SLOPE**2) * fan))


def test_kaiming_leaky_relu_gain_uses_the_slope() -> None:
    # With 240k weights the 1e-4 relative difference is invisible in a variance, so
    # check the bound of kaiming_uniform exactly: gain * sqrt(3 / fan).
    weight = init(big_linear(), "leaky_relu", scheme="kaiming_uniform")
    bound = (2 / (1 + SLOPE**2)) ** 0.5 * (3 / 600) ** 0.5
    assert weight.abs().max().item() <= bound
    assert weight.abs().max().item() > 0.999 * bound


@pytest.mark.parametrize(
    ("make", "rows", "cols"),
    [
        (big_linear, 400, 600),  # wide: W W^T = I
        (lambda: nn.Linear(10, 30), 30, 10),  # tall: W^T W = I
        (lambda: nn.Conv2d(8, 16, kernel_size=3), 16, 8 * 9),  # flattened to 16 x 72
        (lambda: nn.Conv2d(16, 8, kernel_size=1), 8, 16),
    ],
)
def test_orthogonal_rows_or_columns_are_orthonormal(
    make: Callable[[], nn.Module], rows: int, cols: int
) -> None:
    weight = init(make(), scheme="orthogonal").reshape(rows, -1).double()
    assert weight.shape == (rows, cols)
    gram = weight @ weight.T if rows <= cols else weight.T @ weight
    torch.testing.assert_close(
        gram, torch.eye(min(rows, cols), dtype=torch.float64), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("scheme", [s for s in INIT_SCHEMES if s != "default"])
def test_biases_set_and_every_weight_layer_reached(scheme: str) -> None:
    model = nn.Sequential(
        nn.Conv1d(2, 3, 3),
        nn.Conv2d(2, 3, 3),
        nn.Conv3d(2, 3, 3),
        nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2)),
    )
    init_weights(model, InitConfig(scheme=scheme, bias=0.3, value=0.2), "relu")
    layers = [m for m in model.modules() if hasattr(m, "bias") and m.bias is not None]
    assert len(layers) == 5
    for layer in layers:
        assert torch.all(layer.bias == torch.tensor(0.3))
        assert layer.weight.requires_grad and layer.weight.grad_fn is None
    if scheme == "constant":
        assert all(torch.all(layer.weight == torch.tensor(0.2)) for layer in layers)


def test_layers_without_bias_are_fine() -> None:
    layer = nn.Linear(3, 2, bias=False)
    init_weights(layer, InitConfig(scheme="zeros", bias=1.0), "relu")
    assert torch.equal(layer.weight, torch.zeros(2, 3))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_default_leaves_every_parameter_bitwise_unchanged(arch: str) -> None:
    cfg = ModelConfig(arch=arch, depth=2, width=8, channels=4, norm="batch")
    model = build_model(cfg, (1, 6, 6) if arch == "cnn" else (5,), 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_weights(model, InitConfig(scheme="default", bias=0.5), "relu")
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("arch", "norm"), [("mlp", "batch"), ("mlp", "layer"), ("cnn", "batch"), ("cnn", "layer")]
)
def test_norm_layers_untouched_and_head_included(arch: str, norm: str) -> None:
    cfg = ModelConfig(arch=arch, depth=2, width=8, channels=4, norm=norm)
    model = build_model(cfg, (1, 6, 6) if arch == "cnn" else (5,), 3)
    init_weights(model, InitConfig(scheme="constant", value=0.5, bias=0.25), "relu")
    norms = [
        m
        for m in model.modules()
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm))
    ]
    assert len(norms) == 2
    for m in norms:
        assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert torch.all(model.head.weight == 0.5) and torch.all(model.head.bias == 0.25)


def test_unknown_scheme_is_a_config_error() -> None:
    cfg = dataclasses.replace(InitConfig(), scheme="lecun")
    with pytest.raises(ConfigError, match=r"init\.scheme = 'lecun'"):
        init_weights(nn.Linear(2, 2), cfg, "relu")


# --- auto: a small output layer -------------------------------------------------------------

HEAD_GAIN = 0.1
"""auto's factor on the output layer's weights, stated independently of trainlab.engine.init."""


@pytest.mark.parametrize(("arch", "activation", "hidden_variance"), [
    ("mlp", "relu", lambda fan_in, fan_out: 2 / fan_in),
    ("mlp", "tanh", lambda fan_in, fan_out: 2 / (fan_in + fan_out)),
    ("cnn", "relu", lambda fan_in, fan_out: 2 / fan_in),
])
def test_auto_scales_the_output_layer_down_and_nothing_else(
        arch: str, activation: str, hidden_variance: Callable[[int, int], float]) -> None:
    cfg = ModelConfig(arch=arch, depth=2, width=400, channels=64, activation=activation)
    model = build_model(cfg, (3, 8, 8) if arch == "cnn" else (600,), 300)
    init_weights(model, InitConfig(scheme="auto"), activation, arch=arch)
    head = model.head
    assert_moments(head.weight, HEAD_GAIN**2 * hidden_variance(400, 300), rel=0.1)
    hidden = model.blocks[0].linear if arch == "mlp" else model.fc.linear
    fan_in, fan_out = hidden.in_features, hidden.out_features
    assert_moments(hidden.weight, hidden_variance(fan_in, fan_out), rel=0.1)
    assert torch.all(head.bias == 0)


def test_an_explicit_scheme_leaves_the_output_layer_at_its_variance() -> None:
    # The init labs compare schemes layer for layer: the head included, unscaled.
    model = build_model(ModelConfig(depth=1, width=600), (50,), 400)
    init_weights(model, InitConfig(scheme="kaiming_normal"), "relu")
    assert_moments(model.head.weight, 2 / 600)


def test_auto_starts_the_default_run_at_the_loss_of_an_uninformed_guess() -> None:
    from trainlab.core.config import Config
    from trainlab.engine.loop import Trainer

    trainer = Trainer(Config().with_value("run.threads", 1))  # digits, 10 classes, auto
    with torch.no_grad():
        loss = nn.functional.cross_entropy(trainer.model(trainer.x_train),
                                           trainer.data.y_train).item()
    # A Kaiming output layer started 23% above ln 10 (2.83); small outputs start at it.
    assert loss == pytest.approx(math.log(10), rel=0.02)


def test_the_schema_states_autos_output_layer_gain() -> None:
    from trainlab.core.config import field_info
    from trainlab.engine.init import OUTPUT_LAYER_GAIN

    assert OUTPUT_LAYER_GAIN == HEAD_GAIN
    assert f"output layer scaled by {OUTPUT_LAYER_GAIN:g}" in field_info("init.scheme").spec.doc
