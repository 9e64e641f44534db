"""Built-in experiments: named sets of config changes over the defaults.

A preset is only data (dotted keys and values), applied through the same validated
path as ``--set``, so every preset is a config a user could have written by hand;
``trainlab config --preset NAME`` prints it.

Most presets are the runs of a lab (``trainlab.core.labs``): the variants of one lesson
of docs/field-knowledge.md share a base (same data, same seed, same network unless the
network is what varies) and differ only in what the lesson is about. Each is also a
preset of its own, so ``--preset VARIANT`` opens that one run. The sizes are chosen so
that a lesson shows within a few seconds to a few tens of seconds per run on a 2-core
CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainlab.core.config import OPTIMIZER_DEFAULTS


@dataclass(frozen=True)
class Preset:
    """A named experiment: what it shows, and the config changes that set it up."""

    name: str
    summary: str
    """One line: what the run shows (``trainlab presets``; a lab's curve label)."""
    changes: Mapping[str, Any]
    """Dotted config keys and their values, applied over the base config."""


def _lesson(common: Mapping[str, Any], *runs: tuple[str, str, Mapping[str, Any]]
            ) -> tuple[Preset, ...]:
    """Presets sharing ``common`` changes, each with its own on top."""
    return tuple(Preset(name, summary, {**common, **changes}) for name, summary, changes in runs)


# --- init: docs/field-knowledge.md#initialization ---------------------------------------

# The canonical experiment: 10 layers x 500 units on unit-Gaussian input. The labels
# are random, so there is nothing to generalize: the lesson is in the layer statistics
# at step 1, and in whether the training loss can move at all.
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
_CLASSIC_INIT_RELU = {**_CLASSIC_INIT, "model.activation": "relu"}

_INIT_TANH = _lesson(
    _CLASSIC_INIT,
    ("init-small",
     "10x500 tanh, weights N(0, 0.01^2): activations shrink towards 0 with depth",
     {"init.scheme": "normal", "init.std": 0.01}),
    ("init-large",
     "10x500 tanh, weights N(0, 1): most units saturate at -1/+1, where tanh is flat",
     {"init.scheme": "normal", "init.std": 1.0}),
    ("init-xavier",
     "10x500 tanh, Xavier init: activation std stays in a healthy band at every depth",
     {"init.scheme": "xavier_normal"}),
    ("init-kaiming",
     "10x500 tanh, Kaiming init: twice Xavier's variance, a few units saturate",
     {"init.scheme": "kaiming_normal"}),
)

_INIT_RELU = _lesson(
    _CLASSIC_INIT_RELU,
    ("init-relu-small",
     "10x500 ReLU, weights N(0, 0.01^2): activations and gradients vanish with depth",
     {"init.scheme": "normal", "init.std": 0.01}),
    ("init-relu-large",
     "10x500 ReLU, weights N(0, 1): activations grow ~16x a layer, the loss is ~1e13",
     {"init.scheme": "normal", "init.std": 1.0}),
    ("init-relu-xavier",
     "10x500 ReLU, Xavier init: ReLU halves the variance, the std shrinks with depth",
     {"init.scheme": "xavier_normal"}),
    ("init-relu-kaiming",
     "10x500 ReLU, Kaiming init: variance 2/fan_in keeps the std steady with depth",
     {"init.scheme": "kaiming_normal"}),
)


# --- activations and depth: docs/field-knowledge.md#vanishing-and-exploding-gradients ---

DEEP_NET_SGD_LR = 0.02
"""Learning rate of SGD with momentum 0.9 on the deep nets of the activations and depth
labs: it trains the healthy variants (tanh, ReLU, residual) smoothly, where 0.05 made
their loss jump (measured). SGD is used there, not Adam, because Adam divides every
weight's step by that weight's own gradient size and so hides vanishing gradients
(lower layers learning slower is the symptom:
docs/field-knowledge.md#vanishing-gradients)."""

# A deep, narrow MLP on 3-class spirals (learnable, 2 inputs, no dataset to load).
_DEEP_NET = {
    "data.dataset": "spirals",
    "data.samples": 1000,
    "data.noise": 0.05,
    "data.batch_size": 32,
    "model.width": 64,
    "optim.name": "momentum",
    "optim.lr": DEEP_NET_SGD_LR,
    "run.max_epochs": 40,
}

ACTIVATIONS_DEPTH = 10
"""Hidden layers of the activations lab: as deep as the classic init experiment, deep
enough that sigmoid's slope of at most 1/4 shrinks the first layer's gradient by
orders of magnitude (the chain rule multiplies one factor per layer)."""

# init.scheme auto: Xavier for sigmoid and tanh, Kaiming for ReLU and LeakyReLU, the
# rule made for each, so what differs is the activation and not a mismatched init.
_ACTIVATIONS = _lesson(
    {**_DEEP_NET, "model.depth": ACTIVATIONS_DEPTH, "init.scheme": "auto"},
    ("act-sigmoid",
     "10x64 sigmoid (Xavier): slope <= 1/4 a layer, gradients vanish, no learning",
     {"model.activation": "sigmoid"}),
    ("act-tanh",
     "10x64 tanh (Xavier): zero-centred, slope 1 at 0, gradients reach layer 1",
     {"model.activation": "tanh"}),
    ("act-relu",
     "10x64 ReLU (Kaiming): slope 1 where active, no saturation; units can die",
     {"model.activation": "relu"}),
    ("act-leaky-relu",
     "10x64 LeakyReLU (Kaiming): a small slope below 0, so no unit dies",
     {"model.activation": "leaky_relu"}),
)

DEPTH_LAB_DEPTH = 30
"""Hidden layers of the depth lab: past 20, where plain networks degrade and the
per-layer factors of the chain rule compound
(docs/field-knowledge.md#normalization-and-residual-connections)."""
DEPTH_LAB_INIT_STD = 0.05
"""The depth lab's weights are N(0, 0.05^2) in all three nets, a common hand-picked std
(Kaiming would pick 0.18 for 64 inputs). Each plain ReLU layer then keeps
64 * 0.05^2 / 2 = 8% of its input's variance (Var(out) = n_in * g * Var(in),
docs/field-knowledge.md#initialization; LeakyReLU's slope of 0.01 below 0 adds 0.01%),
so the plain net's signal is gone after a few layers. A residual block adds its small
output to its input instead of replacing it, so the signal survives (it grows over the
30 blocks: the outputs are mostly positive and add up, but that is finite and trains).
BatchNorm rescales every layer whatever the weights' scale."""
DEPTH_LAB_ACTIVATION = "leaky_relu"
"""LeakyReLU in all three nets, not ReLU: on the residual net's uncentred stream ReLU
left 50-94% of the units of 23 blocks dead on every sample from step 50 on (measured),
which the dead_units alert rightly reports but which is not this lab's lesson and
contradicted its summary on screen. With LeakyReLU no unit dies and the lesson holds,
measured over the 1000 steps: plain stays at chance (loss 1.099 = ln 3), BatchNorm
learns (validation loss 0.61, ReLU 0.79) and residual learns best (0.07, ReLU 0.09)."""

_DEPTH = _lesson(
    {**_DEEP_NET, "model.depth": DEPTH_LAB_DEPTH, "model.activation": DEPTH_LAB_ACTIVATION,
     "init.scheme": "normal", "init.std": DEPTH_LAB_INIT_STD},
    ("depth-plain",
     "30x64 LeakyReLU, plain: the signal shrinks layer by layer, first-layer gradients ~0",
     {}),
    ("depth-batchnorm",
     "30x64 LeakyReLU with BatchNorm: every layer renormalized, the signal survives",
     {"model.norm": "batch"}),
    ("depth-residual",
     "30x64 LeakyReLU, residual (x + f(x)): the identity path carries signal and gradient",
     {"model.residual": True}),
)


# --- optimizers: docs/field-knowledge.md#optimizers -------------------------------------

def _own_lr(name: str) -> str:
    """The optimizer's own learning rate (what optim.lr = auto gives it), for a summary."""
    return f"{OPTIMIZER_DEFAULTS[name].lr:g}"


RMSPROP_DECAY = 0.9
"""RMSProp's decay of the squared-gradient average (optim.alpha): the customary 0.9
(torch's default is 0.99)."""

# Every variant trains on the full batch, so L-BFGS (which needs it) and the first-order
# methods see the same exact gradient and a step is an epoch for all of them. The task is
# a smooth one (a sine, 400 points, a small tanh net, MSE), where every method's curve
# is easy to read. (Without a line search L-BFGS's steps grew until the loss was NaN on
# a separable classification task, and diverged on this one on some BLAS kernels;
# trainlab.engine.optim now gives it a strong-Wolfe line search.)
_OPTIMIZER_TASK = {
    "data.dataset": "sine",
    "data.samples": 500,
    "data.noise": 0.1,
    "data.batch_size": 0,
    "model.depth": 3,
    "model.width": 32,
    "model.activation": "tanh",
    "run.max_epochs": 0,
    "run.max_steps": 300,
    "run.eval_every": 25,
}

# Each variant runs its optimizer at its own defaults (optim.lr and optim.eps = auto, see
# trainlab.core.config.OPTIMIZER_DEFAULTS) whatever the base config holds, so each curve shows
# the method as it is usually run.
_OPTIMIZERS = _lesson(
    {**_OPTIMIZER_TASK, "optim.lr": "auto", "optim.eps": "auto"},
    ("opt-sgd", f"SGD, lr {_own_lr('sgd')}: the plain gradient step, slow on a long valley",
     {"optim.name": "sgd"}),
    ("opt-momentum", f"SGD with momentum 0.9, lr {_own_lr('momentum')}: steps accumulate "
     "along the valley", {"optim.name": "momentum", "optim.momentum": 0.9}),
    ("opt-nesterov", f"Nesterov momentum 0.9, lr {_own_lr('nesterov')}: the gradient taken "
     "one step ahead", {"optim.name": "nesterov", "optim.momentum": 0.9}),
    ("opt-adagrad", f"AdaGrad, lr {_own_lr('adagrad')}: per-weight steps that only ever "
     "shrink", {"optim.name": "adagrad"}),
    ("opt-rmsprop", f"RMSProp, decay 0.9, lr {_own_lr('rmsprop')}: AdaGrad with a "
     "forgetting average", {"optim.name": "rmsprop", "optim.alpha": RMSPROP_DECAY}),
    ("opt-adam", f"Adam, lr {_own_lr('adam')}: momentum plus RMSProp, with bias correction",
     {"optim.name": "adam"}),
    ("opt-nadam", f"NAdam, lr {_own_lr('nadam')}: Adam with Nesterov momentum",
     {"optim.name": "nadam"}),
    ("opt-lbfgs", f"L-BFGS, lr {_own_lr('lbfgs')}, up to 20 evaluations a step: "
     "quasi-Newton, full batch", {"optim.name": "lbfgs", "optim.lbfgs_iters": 20}),
)


# --- regularization: docs/field-knowledge.md#overfitting-and-regularization -------------

# 100 noisy two-moons points to train on (and 100 to validate), a 3x128 net with 33k
# weights and 1000 full-batch Adam steps: the training loss falls towards 0 while the
# validation loss climbs from step ~25 on (measured: 0.47 -> 1.7).
_OVERFIT = {
    "data.dataset": "moons",
    "data.samples": 200,
    "data.noise": 0.3,
    "data.val_fraction": 0.5,
    "data.batch_size": 0,
    "model.depth": 3,
    "model.width": 128,
    "run.max_epochs": 0,
    "run.max_steps": 1000,
    "run.eval_every": 25,
}

REG_DROPOUT = 0.5
"""Dropout probability of the regularization lab: the classic value for hidden layers."""
REG_WEIGHT_DECAY = 0.01
"""L2 penalty (optim.weight_decay through Adam) of the regularization lab: enough to
keep the validation loss flat near its best (0.45 against 1.7, measured); too large a
lambda underfits."""
REG_EARLY_STOP_PATIENCE = 5
"""Evaluations without a better validation loss before early stopping: 5 evaluations of
25 steps, long enough to ride out noise, short enough to stop soon after the turn."""
REG_AUGMENT_NOISE = 0.3
"""Std of the Gaussian noise augmentation on the standardized inputs: about the noise
of the data itself, so every step sees new, plausible points."""

_REGULARIZATION = _lesson(
    _OVERFIT,
    ("reg-none", "no regularization: training loss -> 0, validation loss climbs (overfit)",
     {}),
    ("reg-dropout", "dropout 0.5: half the hidden units dropped each step",
     {"model.dropout": REG_DROPOUT}),
    ("reg-weight-decay", "weight decay 0.01 (L2 through Adam): small weights, smooth boundary",
     {"optim.weight_decay": REG_WEIGHT_DECAY}),
    ("reg-early-stop", "early stopping after 5 evaluations without a better validation loss",
     {"reg.early_stop_patience": REG_EARLY_STOP_PATIENCE}),
    ("reg-augment", "noise augmentation (std 0.3): new points every step, nothing to memorize",
     {"data.augment": ("noise",), "data.augment_noise": REG_AUGMENT_NOISE}),
)


# --- batch size: docs/field-knowledge.md#batch-size -------------------------------------

# 240 spiral points to train on, Adam at its usual lr for every batch size: per epoch,
# batch 1 takes 240 steps, batch 32 takes 8 and the full batch 1.
_BATCH_TASK = {
    "data.dataset": "spirals",
    "data.samples": 300,
    "data.noise": 0.05,
    "model.depth": 3,
    "model.width": 64,
    "run.max_epochs": 20,
}

_BATCH_SIZE = _lesson(
    _BATCH_TASK,
    ("batch-1", "batch 1 (pure SGD): 240 noisy steps an epoch, the most progress per epoch",
     {"data.batch_size": 1}),
    ("batch-32", "batch 32: 8 steps an epoch, the usual middle",
     {"data.batch_size": 32}),
    ("batch-full", "full batch: 1 exact step an epoch, smooth and slow per epoch",
     {"data.batch_size": 0}),
)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (*_INIT_TANH, *_INIT_RELU, *_ACTIVATIONS, *_DEPTH, *_OPTIMIZERS,
              *_REGULARIZATION, *_BATCH_SIZE)
}
"""Every single-run preset by name, in the order ``trainlab presets`` lists them."""
