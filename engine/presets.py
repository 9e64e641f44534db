"""Built-in experiments: named sets of config changes over the defaults.

A preset is only data (dotted keys and values), applied through the same validated
path as ``--set``, so every preset is a config a user could have written by hand;
``trainlab config --preset NAME`` prints it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.config import Config, ConfigError, did_you_mean


@dataclass(frozen=True)
class Preset:
    """A named experiment: what it shows, and the config changes that set it up."""

    name: str
    summary: str
    changes: Mapping[str, Any]


# KNOWLEDGE.md section 1: 10 layers x 500 tanh units on unit-Gaussian input, three inits.
_CLASSIC_INIT = {
    "data.dataset": "unit_gaussian",
    "data.features": 500,
    "data.classes": 10,
    "data.samples": 2000,
    "data.preprocess": "none",
    "data.batch_size": 500,
    "model.depth": 10,
    "model.width": 500,
    "model.activation": "tanh",
    "init.bias": 0.0,
    "run.max_epochs": 5,
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "init-small",
            "10x500 tanh, weights N(0, 0.01^2): activations shrink towards 0 with depth",
            {**_CLASSIC_INIT, "init.scheme": "normal", "init.std": 0.01},
        ),
        Preset(
            "init-large",
            "10x500 tanh, weights N(0, 1): most units saturate at -1/+1, where tanh is flat",
            {**_CLASSIC_INIT, "init.scheme": "normal", "init.std": 1.0},
        ),
        Preset(
            "init-xavier",
            "10x500 tanh, Xavier init: activation std stays in a healthy band at every depth",
            {**_CLASSIC_INIT, "init.scheme": "xavier_normal"},
        ),
    )
}


def apply_preset(config: Config, name: str) -> Config:
    """``config`` with preset ``name`` applied; unknown names raise with a did-you-mean."""
    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"unknown preset {name!r}{did_you_mean(name, list(PRESETS))}")
    return config.with_values(preset.changes)
