"""The init probe: the classic experiment (docs/field-knowledge.md#initialization), and its CLI."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from trainlab.cli.commands import main
from trainlab.core.config import Config, ConfigError
from trainlab.core.labs import apply_preset
from trainlab.core.presets import PRESETS
from trainlab.engine.probe import probe


def _hidden(preset: str) -> list:
    """The ten tanh layers' statistics (the head is left out)."""
    result = probe(apply_preset(Config(), preset).with_value("run.threads", 1))
    layers = [row for row in result.snapshot.layers if row.activation == "Tanh"]
    assert len(layers) == 10
    return layers


def test_small_init_collapses_activations_with_depth():
    stds = [row.act_std for row in _hidden("init-small")]
    assert all(later < earlier for earlier, later in itertools.pairwise(stds))
    assert stds[-1] < 1e-4 * stds[0]  # falls towards 0 layer after layer


def test_large_init_saturates_most_units():
    layers = _hidden("init-large")
    assert all(row.saturated_frac is not None and row.saturated_frac > 0.8 for row in layers)
    assert all(row.act_std > 0.9 for row in layers)  # piled up at -1 and +1


def test_xavier_keeps_activations_in_a_healthy_band():
    layers = _hidden("init-xavier")
    assert all(0.15 < row.act_std < 0.8 for row in layers)
    assert all(row.saturated_frac < 0.05 for row in layers)


def test_probe_updates_nothing():
    config = apply_preset(Config(), "init-xavier").with_value("run.threads", 1)
    first = probe(config)
    second = probe(config)
    assert first.loss == second.loss  # same seed, same weights: the probe changed nothing
    assert all(row.update_ratio is None for row in first.snapshot.layers)


def test_unknown_preset_has_a_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'init-small'"):
        apply_preset(Config(), "init-smal")


def test_every_preset_is_a_valid_config():
    for name in PRESETS:
        apply_preset(Config(), name)


def test_probe_json_has_the_public_fields(capsys):
    assert main(["probe", "--preset", "init-small", "--set", "run.threads=1", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert isinstance(payload["loss"], float)
    names = [layer["name"] for layer in payload["layers"]]
    assert names == [f"blocks.{i}.linear" for i in range(10)] + ["head"]
    required = {"name", "kind", "act_mean", "act_std", "saturated_frac", "dead_frac",
                "zero_frac", "grad_out_std", "weight_norm", "grad_norm"}
    assert all(required <= set(layer) for layer in payload["layers"])


def test_probe_prints_a_table_and_presets_are_listed(capsys):
    assert main(["probe", "--preset", "init-large", "--set", "run.threads=1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["layer", "act", "mean"]
    assert "blocks.9.linear" in out and "nothing was updated" in out
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out.splitlines()
    singles = listed[listed.index("") + 2:]  # after the labs, a blank line and a title
    assert [line.split()[0] for line in singles] == list(PRESETS)


def test_probe_bad_input_exits_2(capsys):
    assert main(["probe", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["probe", "--set", "data.dataset=missing.csv"]) == 2
    assert "file not found" in capsys.readouterr().err


def test_exploding_activations_are_measured_not_reported_non_finite():
    # 25 ReLU layers with N(0, 1) weights: activations reach ~1e22, beyond float32's
    # sum of squares but finite. The statistics must show them, not inf/NaN.
    config = Config().with_values({"init.scheme": "normal", "init.std": 1.0,
                                   "model.depth": 25, "run.threads": 1})
    layers = probe(config).snapshot.layers
    assert max(row.act_std for row in layers) > 1e19
    assert all(math.isfinite(row.act_std) and math.isfinite(row.grad_norm) for row in layers)
    assert all(row.zero_frac is not None and 0 <= row.zero_frac <= 1 for row in layers)
