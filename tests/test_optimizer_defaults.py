"""Each optimizer's own defaults: every one trains the default run with them, and optim.lr
and optim.eps follow a change of optimizer (in a config, a file, a fork and live) unless
they were set."""

from __future__ import annotations

import queue
import tomllib
from typing import Any

import pytest

from tests.conftest import of_type, tiny_config
from trainlab.core import protocol
from trainlab.core.config import (
    OPTIMIZER_DEFAULTS,
    OPTIMIZERS,
    Config,
    apply_overrides,
    from_dict,
    to_toml,
)
from trainlab.core.presets import PRESETS
from trainlab.engine.loop import Trainer, run
from trainlab.engine.optim import OPTIMIZERS as REGISTRY

ACCURACY_STEPS = 300
"""Steps each optimizer gets on digits: the issue's yardstick."""
MIN_ACCURACY = 0.85
"""Validation accuracy every optimizer must reach with its own defaults in those steps
(the default Adam run reaches ~97%; Adadelta at Adam's lr 1e-3 reached 8%)."""


def digits_run(name: str) -> list[Any]:
    """The default run (an MLP on digits) with optimizer ``name`` at its own defaults:
    ACCURACY_STEPS steps, one evaluation at the end, no instruments, no checkpoints."""
    changes: dict[str, Any] = {
        "optim.name": name, "run.max_steps": ACCURACY_STEPS, "run.max_epochs": 0,
        "run.eval_every": ACCURACY_STEPS, "stats.every": 0, "run.threads": 1}
    if REGISTRY[name].full_batch:
        changes["data.batch_size"] = 0
    events: list[Any] = []
    run(Config().with_values(changes), queue.Queue(), events.append)
    return events


@pytest.mark.parametrize("name", [
    # The full-batch ones (rprop, L-BFGS) take ~2 s for their 300 steps over all of digits.
    pytest.param(name, marks=pytest.mark.slow) if REGISTRY[name].full_batch else name
    for name in OPTIMIZERS])
def test_every_optimizer_trains_digits_with_its_own_defaults(name: str) -> None:
    events = digits_run(name)
    started = of_type(events, "RunStarted")[0]
    own = OPTIMIZER_DEFAULTS[name]
    assert (started.config["optim"]["lr"], started.config["optim"]["eps"]) == (own.lr, own.eps)
    finished = events[-1]
    assert finished.reason == "completed", of_type(events, "EngineFailed")
    assert finished.final.val_accuracy >= MIN_ACCURACY, (name, finished.final.val_accuracy)


def test_the_registry_and_the_defaults_name_the_same_optimizers() -> None:
    assert list(REGISTRY) == list(OPTIMIZERS) == list(OPTIMIZER_DEFAULTS)
    default = Config().optim
    assert (default.lr, default.eps) == (OPTIMIZER_DEFAULTS[default.name].lr,
                                         OPTIMIZER_DEFAULTS[default.name].eps)


# --- following optim.name -----------------------------------------------------------------


def test_a_new_optimizer_brings_its_own_lr_and_eps_unless_they_were_set() -> None:
    adadelta = Config().with_value("optim.name", "adadelta").optim
    assert (adadelta.lr, adadelta.eps) == (1.0, 1e-6)
    back = Config().with_value("optim.name", "adadelta").with_value("optim.name", "adam")
    assert back == Config()
    set_lr = Config().with_value("optim.lr", 3e-3).with_value("optim.name", "adadelta").optim
    assert (set_lr.lr, set_lr.eps) == (3e-3, 1e-6)  # eps was left alone: it follows
    both = Config().with_values({"optim.name": "sgd", "optim.lr": 0.2}).optim
    assert both.lr == 0.2  # set in the same change as the optimizer


def test_auto_asks_for_the_optimizers_own_value() -> None:
    config = apply_overrides(Config().with_value("optim.lr", 0.3),
                             ["optim.name=nadam", "optim.lr=auto", "optim.eps=auto"])
    assert (config.optim.lr, config.optim.eps) == (2e-3, 1e-8)
    assert Config().with_values({"optim.lr": "auto", "optim.name": "lbfgs"}).optim.lr == 1.0


def test_a_config_file_says_auto_so_editing_the_optimizer_there_works() -> None:
    text = to_toml(Config())
    assert 'lr = "auto"' in text and 'eps = "auto"' in text
    edited = tomllib.loads(text.replace('name = "adam"', 'name = "adadelta"'))
    assert from_dict(edited).optim.lr == 1.0
    set_by_hand = Config().with_value("optim.lr", 0.05)
    assert "lr = 0.05" in to_toml(set_by_hand)
    assert from_dict(tomllib.loads(to_toml(set_by_hand))) == set_by_hand


def test_a_checkpoints_config_means_the_same_when_read_back_and_forked() -> None:
    # What a checkpoint and RunStarted hold: plain numbers (to_dict), never 'auto'.
    saved = Config().with_value("optim.name", "adadelta").to_dict()
    assert saved["optim"]["lr"] == 1.0
    assert from_dict(saved) == Config().with_value("optim.name", "adadelta")
    assert apply_overrides(from_dict(saved), ["optim.name=sgd"]).optim.lr == 0.01  # a fork
    # A run from before the defaults: sgd at the old shared lr 1e-3 resumes with it.
    old = Config().to_dict()
    old["optim"]["name"] = "sgd"
    assert from_dict(old).optim.lr == 1e-3


def test_the_optimizers_lab_runs_each_at_its_own_defaults_over_any_base() -> None:
    base = Config().with_values({"optim.lr": 0.5, "optim.eps": 1e-3})
    for name, preset in PRESETS.items():
        if name.startswith("opt-"):
            optim = base.with_values(preset.changes).optim
            own = OPTIMIZER_DEFAULTS[optim.name]
            assert (optim.lr, optim.eps) == (own.lr, own.eps), name
            assert f"lr {own.lr:g}" in preset.summary, name


# --- live ------------------------------------------------------------------------------------


def test_switching_live_moves_to_the_new_optimizers_lr_and_says_so() -> None:
    trainer = Trainer(tiny_config(optim__name="adam"))
    changed = trainer.set_hyper("optim.name", "adadelta")
    assert (changed.old, changed.new) == ("adam", "adadelta")
    assert changed.note == "lr 1.0, eps 1e-06 (adadelta's defaults); optimizer state reset"
    assert (trainer.config.optim.lr, trainer.config.optim.eps) == (1.0, 1e-6)
    assert trainer.optimizer.param_groups[0]["eps"] == 1e-6
    trainer.train_step()
    assert trainer.optimizer.param_groups[0]["lr"] == 1.0
    # An app mirrors the engine's config by applying the acknowledged change itself.
    mirror = tiny_config(optim__name="adam").with_value(changed.key, changed.new)
    assert mirror == trainer.config


def test_switching_live_keeps_an_lr_that_was_set_and_says_so() -> None:
    trainer = Trainer(tiny_config(optim__name="adam", optim__lr=3e-3))
    changed = trainer.set_hyper("optim.name", "sgd")
    assert trainer.config.optim.lr == 3e-3
    assert changed.note == "lr 0.003 kept (sgd's default: 0.01); optimizer state reset"


def test_the_hyper_changed_event_carries_the_note_through_a_run() -> None:
    events: list[Any] = []
    commands: queue.Queue[Any] = queue.Queue()
    commands.put(protocol.SetHyper("optim.name", "lbfgs"))
    run(tiny_config(data__batch_size=0, run__max_steps=3), commands, events.append)
    changed = of_type(events, "HyperChanged")[0]
    assert changed.note.startswith("lr 1.0 (lbfgs's default)")
