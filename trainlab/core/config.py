"""The run's configuration: frozen dataclasses in sections, one schema for everything.

Every field is declared with :func:`param`, which records its documentation, its
allowed values and whether it is *hot* (may change while training runs, through a
``SetHyper`` command) or *cold* (needs a restart or a fork). Validation, the
commented TOML file, ``--set`` overrides, live changes and (later) the config panel
of the app are all driven by that one schema, so a new field needs no code anywhere
else.

This module imports no torch: the app reads the schema without paying for it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACTIVATIONS = (
    "relu",
    "leaky_relu",
    "elu",
    "gelu",
    "silu",
    "tanh",
    "sigmoid",
    "scaled_sigmoid",
    "identity",
)
INIT_SCHEMES = (
    "auto",
    "default",
    "zeros",
    "constant",
    "normal",
    "uniform",
    "xavier_normal",
    "xavier_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "orthogonal",
)


@dataclass(frozen=True)
class OptimizerDefaults:
    """An optimizer's own values of the optim fields that follow ``optim.name``
    (``FOLLOWS_OPTIMIZER``): what ``auto`` means for it."""

    lr: float
    """Its customary base learning rate. Each trains the default run (an MLP on digits)
    to at least 85% validation accuracy in 300 steps (lbfgs and rprop on the full batch)."""
    eps: float = 1e-8
    """The term added to its denominator (adagrad, adadelta, rmsprop and the Adam family
    use one; the others ignore it): torch's default for each, 1e-8 unless it differs."""


OPTIMIZER_DEFAULTS: dict[str, OptimizerDefaults] = {
    # The SGD family at 0.01 (Keras' default; with momentum 0.9 an effective step of 0.1).
    # torch's plain-SGD default of 1e-3 needs thousands of steps on digits.
    "sgd": OptimizerDefaults(lr=0.01),
    "momentum": OptimizerDefaults(lr=0.01),
    "nesterov": OptimizerDefaults(lr=0.01),
    "adagrad": OptimizerDefaults(lr=0.01, eps=1e-10),  # torch's
    # Zeiler's paper and torch: Adadelta sizes its own steps, and eps sets how large the
    # first ones are (sqrt(eps) per step); lr 1 leaves them as they are. At Adam's lr 1e-3
    # and eps 1e-8 it reached 8% validation accuracy on digits in 300 steps, here 97%.
    "adadelta": OptimizerDefaults(lr=1.0, eps=1e-6),
    "rmsprop": OptimizerDefaults(lr=1e-3),  # Hinton's lecture and Keras (torch: 0.01)
    "adam": OptimizerDefaults(lr=1e-3),  # Kingma and Ba, torch
    "adamw": OptimizerDefaults(lr=1e-3),  # torch
    "nadam": OptimizerDefaults(lr=2e-3),  # Dozat, torch
    "rprop": OptimizerDefaults(lr=0.01),  # torch's initial step size (it adapts its own)
    "lbfgs": OptimizerDefaults(lr=1.0),  # a full quasi-Newton step, torch's
}
"""Every optimizer by name (in the order the app cycles through them) with its own
defaults. ``trainlab.engine.optim.OPTIMIZERS`` builds each; this table lives here because the
config resolves ``auto`` and the app reads it without importing torch."""

OPTIMIZERS = tuple(OPTIMIZER_DEFAULTS)
DEFAULT_OPTIMIZER = "adam"
"""optim.name of the default config."""
FOLLOWS_OPTIMIZER = tuple(f.name for f in dataclasses.fields(OptimizerDefaults))
"""The optim fields whose default depends on optim.name: ``lr`` and ``eps``."""
AUTO = "auto"
"""Accepted by the fields of ``FOLLOWS_OPTIMIZER`` in place of a number: optim.name's own
value (``OPTIMIZER_DEFAULTS``). A config never holds it: it is resolved on the way in."""

SCHEDULES = ("constant", "step", "exponential", "cosine", "one_cycle", "reduce_on_plateau")
LOSSES = ("auto", "mse", "l1", "smooth_l1", "cross_entropy", "bce_with_logits")
AUGMENTATIONS = ("noise", "shift", "flip", "erase")


class ConfigError(ValueError):
    """A configuration value or key that is not allowed; the message says which and why."""


@dataclass(frozen=True)
class Spec:
    """What the schema knows about one field: its meaning and what it accepts."""

    doc: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """True when ``low`` itself is not allowed (e.g. a learning rate must be > 0)."""
    hot: bool = False
    pattern: str | None = None
    """A string field: values of this form are allowed besides ``choices`` (a regular
    expression the whole value must match)."""
    pattern_doc: str = ""
    """``pattern`` in words, for messages (``cuda:N``)."""


def own_values(field_name: str) -> str:
    """The optimizers' own values of ``field_name`` in words, for its doc: 'sgd, momentum
    0.01; adadelta 1'. Where one value is most optimizers', it comes last as 'the others'."""
    groups: dict[float, list[str]] = {}
    for name, own in OPTIMIZER_DEFAULTS.items():
        groups.setdefault(getattr(own, field_name), []).append(name)
    common = max(groups, key=lambda value: len(groups[value]))
    others = len(groups[common]) > len(OPTIMIZER_DEFAULTS) / 2
    parts = [f"{', '.join(names)} {value:g}" for value, names in groups.items()
             if not (others and value == common)]
    if others:
        parts.append(f"the others {common:g}")
    return "; ".join(parts)


def param(
    default: Any,
    doc: str,
    *,
    choices: tuple[str, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    hot: bool = False,
    pattern: str | None = None,
    pattern_doc: str = "",
) -> Any:
    """Declare a config field: its default, its docstring and what it allows."""
    spec = Spec(doc, choices, low, high, low_open, hot, pattern, pattern_doc)
    return field(default=default, metadata={"spec": spec})


@dataclass(frozen=True)
class ModelConfig:
    """The network to train."""

    arch: str = param(
        "mlp",
        "Architecture: mlp (fully connected), cnn (small conv net for image data) or "
        "custom (built by model.factory).",
        choices=("mlp", "cnn", "custom"),
    )
    depth: int = param(
        3,
        "Number of hidden layers (mlp) or of 3x3 convolution layers (cnn).",
        low=1,
        high=1000,
    )
    width: int = param(
        128,
        "Units per hidden layer (mlp) or in the hidden layer of the classifier head (cnn).",
        low=1,
        high=1_000_000,
    )
    channels: int = param(
        16,
        "cnn: channels of the first convolution; doubled after every second one.",
        low=1,
        high=4096,
    )
    activation: str = param(
        "relu",
        "Hidden activation. scaled_sigmoid is 4*sigmoid(x)-2: slope 1 through 0, like tanh.",
        choices=ACTIVATIONS,
    )
    norm: str = param(
        "none",
        "Normalization layer in each hidden block: none, batch (BatchNorm) or layer "
        "(LayerNorm; GroupNorm with one group in a cnn).",
        choices=("none", "batch", "layer"),
    )
    norm_position: str = param(
        "before",
        "Where the normalization goes in a block: before or after the activation.",
        choices=("before", "after"),
    )
    residual: bool = param(
        False,
        "Add each hidden block's input to its output (x + f(x)) where the shapes match.",
    )
    dropout: float = param(
        0.0,
        "Dropout probability after each hidden block; 0 turns it off.",
        low=0.0,
        high=0.99,
        hot=True,
    )
    factory: str = param(
        "",
        "custom: 'package.module:function', called as function(input_shape, num_outputs) "
        "and returning a torch.nn.Module.",
    )


@dataclass(frozen=True)
class InitConfig:
    """How the weights of linear and convolution layers are initialized."""

    scheme: str = param(
        "auto",
        "Weight initializer. auto: a custom model keeps its own, a built-in net gets "
        "kaiming_normal for the ReLU family and xavier_normal for tanh-like activations, "
        "its output layer scaled by 0.1 (the loss at init is then that of an uninformed "
        "guess, ln C for C classes, not 20-30% above it). "
        "default keeps PyTorch's own; zeros and constant show the symmetry problem.",
        choices=INIT_SCHEMES,
    )
    std: float = param(0.01, "normal: standard deviation of N(0, std^2).", low=0.0)
    bound: float = param(0.05, "uniform: the a of U(-a, a).", low=0.0)
    value: float = param(0.0, "constant: the value every weight is set to.")
    mode: str = param(
        "fan_in",
        "kaiming_*: keep the variance of activations (fan_in) or of gradients (fan_out).",
        choices=("fan_in", "fan_out"),
    )
    bias: float = param(
        0.0, "Value every bias is set to (ignored by scheme default, which keeps PyTorch's)."
    )


@dataclass(frozen=True)
class DataConfig:
    """The dataset, its split, preprocessing and augmentation."""

    dataset: str = param(
        "digits",
        "A built-in dataset (synthetic: spirals, moons, circles, xor, blobs, "
        "checkerboard, sine, unit_gaussian; bundled: digits, iris, wine, breast_cancer, "
        "diabetes), custom (built by data.factory), or a path to a .csv or .npz file.",
    )
    target: str = param(
        "",
        "CSV: name of the label column; empty means the last column.",
    )
    task: str = param(
        "auto",
        "classification or regression; auto decides from the labels (integers or text "
        "with few distinct values mean classification).",
        choices=("auto", "classification", "regression"),
    )
    factory: str = param(
        "",
        "custom: 'package.module:function' returning arrays or tensors (x, y) or "
        "(x_train, y_train, x_val, y_val).",
    )
    samples: int = param(
        1000, "Synthetic datasets: number of samples generated.", low=4, high=10_000_000
    )
    noise: float = param(
        0.1, "Synthetic datasets: noise of the generator (spread around the pattern).", low=0.0
    )
    features: int = param(
        2,
        "blobs and unit_gaussian: input dimension (500 for the classic init experiment).",
        low=1,
        high=1_000_000,
    )
    classes: int = param(
        3, "spirals, blobs and unit_gaussian: number of classes.", low=2, high=10_000
    )
    batch_size: int = param(
        64,
        "Samples per step, 1 (pure SGD) up to the training-set size; 0 means the full "
        "batch, which L-BFGS and Rprop expect.",
        low=0,
        high=100_000_000,
        hot=True,
    )
    val_fraction: float = param(
        0.2,
        "Fraction held out for validation (when the data has no split of its own); 0 for none.",
        low=0.0,
        high=0.9,
    )
    preprocess: str = param(
        "standardize",
        "Input preprocessing, fitted on the training split only: none, center "
        "(subtract the mean) or standardize (and divide by the std), per feature.",
        choices=("none", "center", "standardize"),
    )
    augment: tuple[str, ...] = param(
        (),
        "Training-batch augmentations: noise (Gaussian, any data), shift, flip and erase "
        "(image data only).",
        choices=AUGMENTATIONS,
        hot=True,
    )
    augment_noise: float = param(
        0.1, "noise: std of the Gaussian noise added to the (preprocessed) inputs.", low=0.0,
        hot=True,
    )
    augment_shift: int = param(
        1, "shift: largest shift in pixels, in each direction.", low=0, high=64, hot=True
    )


@dataclass(frozen=True)
class LossConfig:
    """The training objective."""

    name: str = param(
        "auto",
        "Loss: auto picks cross_entropy for classification and mse for regression. "
        "mse, l1 and smooth_l1 on classes compare outputs with one-hot targets; "
        "bce_with_logits uses one output for two classes, one per class otherwise.",
        choices=LOSSES,
    )


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer and its hyperparameters (all may change while training)."""

    name: str = param(
        DEFAULT_OPTIMIZER,
        "Optimizer. Switching live keeps the weights and resets the optimizer's state; "
        "optim.lr and optim.eps move to the new optimizer's own unless you set them. "
        "lbfgs and rprop are full-batch methods (data.batch_size = 0).",
        choices=OPTIMIZERS,
        hot=True,
    )
    lr: float = param(
        OPTIMIZER_DEFAULTS[DEFAULT_OPTIMIZER].lr,
        "Base learning rate (the schedule scales it). auto: optim.name's own "
        f"({own_values('lr')}). While it holds the optimizer's own value it follows a "
        "change of optim.name; another value (one you set) is kept.",
        low=0.0, low_open=True, hot=True,
    )
    momentum: float = param(
        0.9, "momentum and nesterov: momentum coefficient.", low=0.0, high=0.9999, hot=True
    )
    beta1: float = param(
        0.9, "adam, adamw, nadam: decay of the gradient average.", low=0.0, high=0.9999,
        hot=True,
    )
    beta2: float = param(
        0.999, "adam, adamw, nadam: decay of the squared-gradient average.", low=0.0,
        high=0.99999, hot=True,
    )
    alpha: float = param(
        0.99, "rmsprop: decay of the squared-gradient average.", low=0.0, high=0.99999,
        hot=True,
    )
    eps: float = param(
        OPTIMIZER_DEFAULTS[DEFAULT_OPTIMIZER].eps,
        "adam, adamw, nadam, rmsprop, adagrad, adadelta: term added to the denominator. "
        f"auto: optim.name's own ({own_values('eps')}); it follows optim.name as optim.lr "
        "does.",
        low=0.0, low_open=True, hot=True,
    )
    weight_decay: float = param(
        0.0,
        "L2 penalty through the optimizer (decoupled weight decay for adamw); 0 for none.",
        low=0.0,
        hot=True,
    )
    lbfgs_iters: int = param(
        20, "lbfgs: function evaluations per step (max_iter).", low=1, high=10_000, hot=True
    )

    def own(self, field_name: str) -> float:
        """This optimizer's own value of ``field_name`` (one of ``FOLLOWS_OPTIMIZER``)."""
        return float(getattr(OPTIMIZER_DEFAULTS[self.name], field_name))

    def describe_switch(self, before: OptimConfig) -> str:
        """What a switch from ``before``'s optimizer did to the fields that follow it, for
        the change's note: 'lr 1.0, eps 1e-06 (adadelta's defaults)', and a value kept
        because it was set ('lr 0.003 kept (adadelta's default: 1.0)'). Empty when
        neither happened."""
        moved = [f for f in FOLLOWS_OPTIMIZER if getattr(self, f) != getattr(before, f)]
        kept = [f for f in FOLLOWS_OPTIMIZER
                if f not in moved and getattr(self, f) != self.own(f)]
        parts = []
        if moved:
            values = ", ".join(f"{f} {format_setting(getattr(self, f))}" for f in moved)
            plural = "s" if len(moved) > 1 else ""
            parts.append(f"{values} ({self.name}'s default{plural})")
        parts += [f"{f} {format_setting(getattr(self, f))} kept ({self.name}'s default: "
                  f"{format_setting(self.own(f))})" for f in kept]
        return ", ".join(parts)


@dataclass(frozen=True)
class ScheduleConfig:
    """How the learning rate changes over the run (a factor on optim.lr)."""

    name: str = param(
        "constant",
        "constant; step (x gamma every step_size steps); exponential (x gamma every step); "
        "cosine (to min_factor at the last step); one_cycle (up from lr/25 for 30% of the "
        "run, then down to lr/1e4); reduce_on_plateau (x gamma after patience "
        "evaluations without a better validation loss).",
        choices=SCHEDULES,
    )
    warmup_steps: int = param(
        0, "Linear warmup from 0 over this many steps, before any schedule; 0 for none.",
        low=0,
    )
    step_size: int = param(100, "step: steps between decays.", low=1)
    gamma: float = param(
        0.5, "step, exponential and reduce_on_plateau: the decay factor.", low=0.0,
        high=1.0, low_open=True,
    )
    min_factor: float = param(
        0.0, "cosine: final learning rate as a fraction of optim.lr; reduce_on_plateau: floor.",
        low=0.0, high=1.0,
    )
    patience: int = param(
        3, "reduce_on_plateau: evaluations without improvement before decaying.", low=1
    )


@dataclass(frozen=True)
class RegConfig:
    """Regularization and gradient control besides weight decay (see optim)."""

    l1: float = param(
        0.0, "L1 penalty on weights (not biases) added to the loss; 0 for none.", low=0.0,
        hot=True,
    )
    clip_norm: float = param(
        0.0, "Clip the global gradient norm to this value; 0 for no clipping.", low=0.0,
        hot=True,
    )
    clip_value: float = param(
        0.0, "Clip every gradient element to [-v, v]; 0 for no clipping.", low=0.0, hot=True
    )
    early_stop_patience: int = param(
        0,
        "Stop after this many evaluations without a better validation loss; 0 for never.",
        low=0,
        hot=True,
    )


@dataclass(frozen=True)
class StatsConfig:
    """Per-layer statistics: how often the instruments look inside the network."""

    every: int = param(
        10,
        "Steps between per-layer scalar snapshots (also at least 0.25 s apart, and more "
        "where stats.budget needs it); 0 turns the instruments off, and untracked steps "
        "cost nothing.",
        low=0,
        hot=True,
    )
    hist_every: int = param(
        50,
        "Steps between histograms of weights, gradients and activations (also at least "
        "1 s apart); 0 for none.",
        low=0,
        hot=True,
    )
    budget: float = param(
        0.01,
        "The most the instruments may cost, as a share of training time (0.01 = 1%, "
        "measured while training): where snapshots every stats.every steps would cost "
        "more, they come at a multiple of it instead; 0 for no limit.",
        low=0.0,
        high=0.5,
        hot=True,
    )


@dataclass(frozen=True)
class RunConfig:
    """Length, evaluation, reproducibility and hardware."""

    seed: int = param(0, "Seed for weights, data split, shuffling and dropout.", low=0,
                      high=2**32 - 1)
    max_steps: int = param(
        0, "Stop after this many optimizer steps; 0 means run.max_epochs decides.", low=0,
        hot=True,
    )
    max_epochs: int = param(
        20, "Stop after this many passes over the training set; 0 means run.max_steps "
        "decides.", low=0, hot=True,
    )
    eval_every: int = param(
        0, "Evaluate on the validation set every this many steps; 0 means once per epoch.",
        low=0, hot=True,
    )
    device: str = param(
        "auto", "Where to train: auto (cuda when available, else mps on Apple silicon, "
        "else cpu), cpu, cuda (the current CUDA device), cuda:N (CUDA device N) or mps. "
        "The status bar shows the device in use.",
        choices=("auto", "cpu", "cuda", "mps"), pattern=r"cuda:\d+", pattern_doc="cuda:N",
    )
    precision: str = param(
        "fp32", "Arithmetic of the forward pass and the loss: fp32; bf16 (autocast to "
        "bfloat16: about half the activation memory and faster matrix products on recent "
        "GPUs and CPUs, no loss scaling needed); or fp16 (autocast to float16 with a loss "
        "scaler, which skips the update of a step whose gradients overflow and lowers the "
        "scale; not with optim.name = lbfgs). Weights, optimizer state and the layer "
        "statistics stay fp32.",
        choices=("fp32", "bf16", "fp16"),
    )
    threads: int = param(
        0, "CPU threads for torch; 0 picks the number of cores minus one (at least 1).",
        low=0, high=1024,
    )
    on_nonfinite: str = param(
        "stop",
        "When the training loss turns NaN or inf: stop the run (on a CPU before that "
        "step's update, so the weights stay finite); skip (withhold that step's update "
        "and go on with the next batch; the run stops after 10 such steps in a row); "
        "rollback (restore the weights and optimizer state kept in memory every 50 steps "
        "while the loss is finite, multiply optim.lr by 0.1 and go on; the run stops "
        "after 3 rollbacks; the copy takes as much memory again as the weights and the "
        "optimizer state); or continue (apply the update anyway). skip and rollback read "
        "the loss before every update: free on a CPU, one host-device sync per step on a "
        "GPU.",
        choices=("stop", "skip", "rollback", "continue"),
        hot=True,
    )
    dir: str = param(
        "runs", "Directory that holds the run directories: each run writes "
        "<run.dir>/<run-id>/ with config.toml, run.db (the store), checkpoints/ and "
        "engine.log. A relative path is taken from the current directory."
    )
    checkpoint_every: int = param(
        0, "Write a checkpoint (checkpoints/step_<N>.pt, last.pt, last_good.pt) every "
        "this many steps; 0 means at the end of every epoch. One is always written when "
        "the run ends or is stopped.", low=0, hot=True,
    )
    checkpoint_min_seconds: float = param(
        60.0, "At least this many seconds between two periodic checkpoints (0: none; the "
        "first one due is always written): on a small data set an epoch takes "
        "milliseconds, and a checkpoint per epoch would cost more than a tenth of the "
        "training (the default digits run: 11-14%).",
        low=0.0, hot=True,
    )
    keep_checkpoints: int = param(
        3, "Numbered checkpoints kept (the oldest are deleted); last.pt and last_good.pt "
        "are kept besides.", low=1, high=10_000, hot=True,
    )


@dataclass(frozen=True)
class Config:
    """A whole run's configuration. Sections are the TOML tables, in this order."""

    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def get(self, key: str) -> Any:
        """The value of a dotted key such as ``optim.lr``."""
        section, name = _split_key(key)
        return getattr(getattr(self, section), name)

    def with_value(self, key: str, value: Any) -> Config:
        """A copy with one dotted key changed, after checking the value and the whole."""
        return self.with_values({key: value})

    def with_values(self, changes: Mapping[str, Any]) -> Config:
        """A copy with several dotted keys changed, validated like a loaded file."""
        sections: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            section, name = _split_key(key)
            sections.setdefault(section, {})[name] = check_value(key, value)
        if "optim" in sections:
            sections["optim"] = _follow_optimizer(self.optim, sections["optim"])
        new = dataclasses.replace(
            self,
            **{
                s: dataclasses.replace(getattr(self, s), **fields)
                for s, fields in sections.items()
            },
        )
        validate(new)
        return new

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (tuples become lists), as written to TOML."""
        return {
            s.name: {
                f.name: list(v) if isinstance(v := getattr(getattr(self, s.name), f.name), tuple)
                else v
                for f in dataclasses.fields(getattr(self, s.name))
            }
            for s in dataclasses.fields(self)
        }


# --- the schema, walked ---------------------------------------------------------


@dataclass(frozen=True)
class FieldInfo:
    """One config field as the schema describes it: key, type, default and spec."""

    key: str
    type: type
    default: Any
    spec: Spec


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def fields() -> Iterator[FieldInfo]:
    """Every config field, section by section, in declaration order."""
    for section, cls in _section_types().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield FieldInfo(f"{section}.{f.name}", hints[f.name], f.default, f.metadata["spec"])


def field_info(key: str) -> FieldInfo:
    """The schema entry for a dotted key; unknown keys raise with a did-you-mean."""
    _split_key(key)
    return next(f for f in fields() if f.key == key)


def hot_keys() -> tuple[str, ...]:
    """The dotted keys that may change while training runs."""
    return tuple(f.key for f in fields() if f.spec.hot)


def did_you_mean(word: str, candidates: list[str], *, list_all: bool = True) -> str:
    """'; did you mean X?' for a close match, else the candidates (or nothing)."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; known: {', '.join(candidates)}" if list_all else ""


def _split_key(key: str) -> tuple[str, str]:
    sections = _section_types()
    section, dot, name = key.partition(".")
    if not dot or not name:
        raise ConfigError(f"'{key}' is not a config key: use section.field, e.g. optim.lr")
    if section not in sections:
        raise ConfigError(f"unknown section '{section}'{did_you_mean(section, list(sections))}")
    names = [f.name for f in dataclasses.fields(sections[section])]
    if name not in names:
        full = [f"{section}.{n}" for n in names]
        raise ConfigError(f"unknown key '{key}'{did_you_mean(key, full)}")
    return section, name


def _bound(x: float) -> str:
    """Whole numbers exactly (2**32-1, not 4.29497e+09); others compactly."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def follows_optimizer(key: str) -> bool:
    """Does ``key`` take optim.name's own value by default (and accept ``auto``)?"""
    section, _, name = key.partition(".")
    return section == "optim" and name in FOLLOWS_OPTIMIZER


def describe_allowed(info: FieldInfo) -> str:
    """What a field accepts, in words ('a number > 0', 'one of sgd, adam')."""
    allowed = _describe_type(info)
    return f"{allowed}, or auto (the optimizer's own)" if follows_optimizer(info.key) \
        else allowed


def _describe_type(info: FieldInfo) -> str:
    """What the field's type and spec accept, in words."""
    spec = info.spec
    if typing.get_origin(info.type) is tuple:
        return "a list of names from " + ", ".join(spec.choices or ())
    if spec.choices:
        extra = f", or {spec.pattern_doc}" if spec.pattern_doc else ""
        return "one of " + ", ".join(spec.choices) + extra
    if info.type is bool:
        return "true or false"
    if info.type is str:
        return "a string"
    kind = "an integer" if info.type is int else "a number"
    if spec.low is not None and spec.high is not None and not spec.low_open:
        return f"{kind} from {_bound(spec.low)} to {_bound(spec.high)}"
    parts = []
    if spec.low is not None:
        parts.append(f"{'>' if spec.low_open else '>='} {_bound(spec.low)}")
    if spec.high is not None:
        parts.append(f"<= {_bound(spec.high)}")
    return f"{kind} {' and '.join(parts)}" if parts else kind


def check_value(key: str, value: Any) -> Any:
    """Return ``value`` as the field's type, or raise naming the key, value and range."""
    info = field_info(key)
    spec = info.spec
    if isinstance(value, str) and value == AUTO and follows_optimizer(key):
        return AUTO  # resolved by Config.with_values, which knows the optimizer

    def bad() -> ConfigError:
        return ConfigError(
            f"{key} = {value!r} is not allowed: expected {describe_allowed(info)}")

    if info.type is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if info.type in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        if info.type is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise bad()
                value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise bad()
        if spec.low is not None and (value < spec.low or (spec.low_open and value == spec.low)):
            raise bad()
        if spec.high is not None and value > spec.high:
            raise bad()
        return value
    if info.type is str:
        if not isinstance(value, str):
            raise bad()
        if spec.choices and value not in spec.choices and not (
                spec.pattern and re.fullmatch(spec.pattern, value)):
            hint = did_you_mean(value, list(spec.choices), list_all=False)
            raise ConfigError(
                f"{key} = {value!r} is not allowed: expected {describe_allowed(info)}{hint}")
        return value
    # tuple[str, ...]: a list of choices, each at most once.
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} = {value!r} is not allowed: expected a list of names "
                          f"from {', '.join(spec.choices or ())}")
    for item in value:
        if spec.choices and item not in spec.choices:
            raise ConfigError(
                f"{key}: '{item}' is not allowed: expected names from "
                f"{', '.join(spec.choices)}"
                f"{did_you_mean(item, list(spec.choices), list_all=False)}"
            )
    if len(set(value)) != len(value):
        raise ConfigError(f"{key} = {list(value)!r} names an entry twice")
    return tuple(value)


def validate(config: Config) -> None:
    """Check the rules that involve more than one field; raise ConfigError if broken."""
    m, d, r = config.model, config.data, config.run
    if (m.arch == "custom") != bool(m.factory):
        raise ConfigError(
            "model.arch = 'custom' needs model.factory = 'package.module:function'"
            if m.arch == "custom"
            else f"model.factory = {m.factory!r} is only used with model.arch = 'custom' "
            f"(model.arch is {m.arch!r})"
        )
    if (d.dataset == "custom") != bool(d.factory):
        raise ConfigError(
            "data.dataset = 'custom' needs data.factory = 'package.module:function'"
            if d.dataset == "custom"
            else f"data.factory = {d.factory!r} is only used with data.dataset = 'custom' "
            f"(data.dataset is {d.dataset!r})"
        )
    for name in (m.factory, d.factory):
        if name and not _is_import_path(name):
            raise ConfigError(f"{name!r} is not an import path: expected 'package.module:function'")
    if not d.dataset:
        raise ConfigError("data.dataset is empty: expected a dataset name or a file path")
    if config.schedule.name == "one_cycle" and config.schedule.warmup_steps:
        raise ConfigError("schedule.name = 'one_cycle' has its own warm-up: set "
                          "schedule.warmup_steps = 0 (it is "
                          f"{config.schedule.warmup_steps})")
    if config.optim.name == "nesterov" and config.optim.momentum == 0:
        raise ConfigError("optim.name = 'nesterov' needs optim.momentum > 0 (it is 0)")
    if r.max_steps == 0 and r.max_epochs == 0:
        raise ConfigError("run.max_steps and run.max_epochs are both 0: set at least one")


def _follow_optimizer(old: OptimConfig, changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` to the optim section with the fields of ``FOLLOWS_OPTIMIZER`` resolved.

    One set to ``auto`` takes the (new) optimizer's own value. One not among the changes
    follows a change of optim.name while it holds the old optimizer's own value (it was
    left at its default) and is kept otherwise (it was set). Stateless, so the engine and
    an app that mirrors its config with the same changes agree, and a config file, a
    checkpoint or a ``--set`` means the same everywhere.
    """
    new = dataclasses.replace(old, name=changes.get("name", old.name))
    resolved = dict(changes)
    for field_name in FOLLOWS_OPTIMIZER:
        if field_name in changes:
            if changes[field_name] == AUTO:
                resolved[field_name] = new.own(field_name)
        elif getattr(old, field_name) == old.own(field_name):
            resolved[field_name] = new.own(field_name)
    return resolved


def _is_import_path(name: str) -> bool:
    module, colon, attr = name.partition(":")
    return bool(colon) and all(p.isidentifier() for p in module.split(".")) and attr.isidentifier()


# --- TOML in and out -------------------------------------------------------------


def from_dict(data: Mapping[str, Any], base: Config | None = None) -> Config:
    """Build a config from nested sections (as parsed from TOML) over ``base``."""
    changes: dict[str, Any] = {}
    for section, values in data.items():
        if section not in _section_types():
            known = list(_section_types())
            raise ConfigError(f"unknown section '{section}'{did_you_mean(section, known)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"'{section}' must be a table of fields, got {values!r}")
        for name, value in values.items():
            changes[f"{section}.{name}"] = value
    return (base or Config()).with_values(changes)


def load(path: str | Path) -> Config:
    """Read a TOML config file; missing fields keep their defaults."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}): a TOML file "
                          "must be UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n",
                 "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def to_toml(config: Config, *, comments: bool = True) -> str:
    """The config as TOML; with comments, each field's doc, allowed values and hot/cold."""
    lines = [
        "# trainlab run configuration.",
        "# 'hot' fields may change while the run trains; 'cold' ones need a restart.",
    ] if comments else []
    section = None
    for info in fields():
        sec, name = info.key.split(".")
        if sec != section:
            section = sec
            if lines:
                lines.append("")
            if comments:
                doc = (typing.get_type_hints(Config)[sec].__doc__ or "").strip()
                lines.append(f"# {doc}")
            lines.append(f"[{sec}]")
        if comments:
            lines.append(f"# {info.spec.doc}")
            lines.append(f"# {describe_allowed(info)}; {'hot' if info.spec.hot else 'cold'}")
        value = config.get(info.key)
        if follows_optimizer(info.key) and value == config.optim.own(name):
            value = AUTO  # so an edited optim.name in the file brings its own value
        lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def save(config: Config, path: str | Path) -> None:
    """Write the config as commented TOML."""
    Path(path).write_text(to_toml(config), encoding="utf-8")


# --- --set overrides --------------------------------------------------------------


def parse_value(key: str, text: str) -> Any:
    """Turn the text of ``--set key=text`` into the field's type (then checked)."""
    info = field_info(key)
    raw = text.strip()
    if raw.lower() == AUTO and follows_optimizer(key):
        return check_value(key, AUTO)
    if info.type is bool:
        lowered = raw.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key} = {text!r} is not allowed: expected true or false")
    if info.type in (int, float):
        try:
            number = float(raw) if info.type is float else int(raw)
        except ValueError:
            try:  # '1e3' for an integer field is fine when it is whole
                number = float(raw)
            except ValueError:
                raise ConfigError(
                    f"{key} = {text!r} is not allowed: expected {describe_allowed(info)}"
                ) from None
        return check_value(key, number)
    if info.type is str:
        return check_value(key, raw)
    items = [part.strip() for part in raw.split(",") if part.strip()]
    return check_value(key, items)


def format_setting(value: Any) -> str:
    """``value`` written the way ``--set key=TEXT`` (``parse_value``) reads it back.

    Booleans as true/false, numbers as their shortest exact form (``repr``: 0.001,
    1e-05), strings unquoted, lists of names comma-separated (``noise,flip``; an empty
    list is the empty text). The text is not shell-quoted: a command line quotes it.

    Raises:
        TypeError: ``value`` is of a type no config field has.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise TypeError(f"format_setting: {value!r} is a {type(value).__name__}; allowed: "
                    "bool, int, float, str or a list of str (the config's field types)")


def apply_overrides(config: Config, assignments: list[str]) -> Config:
    """Apply ``section.field=value`` strings (from ``--set``) to ``config``."""
    changes: dict[str, Any] = {}
    for assignment in assignments:
        key, eq, text = assignment.partition("=")
        if not eq:
            raise ConfigError(f"--set {assignment!r}: expected section.field=value")
        changes[key.strip()] = parse_value(key.strip(), text)
    return config.with_values(changes)
