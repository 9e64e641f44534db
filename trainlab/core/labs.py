"""Labs: the lessons of docs/field-knowledge.md as experiments of several runs, compared.

A lab is only data: an explanation (what to look for and why) and its variants, each
a ``Preset`` (a named set of config changes, applied through the same validated path
as ``--set``). Every variant of a lab starts from the same seed, so runs that share an
architecture start from the same initial weights and see the same batches; only what
the lab varies differs. ``trainlab --preset LAB`` opens a lab in the app (its
explanation, then its runs one after another, their curves overlaid on one chart);
``trainlab run --preset LAB --headless`` runs them in turn and prints a comparison
(``trainlab.cli.lab_runner``).

No torch here: the app reads labs to show and start them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trainlab.core import protocol
from trainlab.core.config import Config, ConfigError, apply_overrides, did_you_mean
from trainlab.core.presets import PRESETS, Preset
from trainlab.core.text import format_number, format_percent

COMPARE_BY = ("step", "epoch")
"""The x axes a lab's curves can share."""

RESULT_COLUMNS = ("variant", "ended", "steps", "train", "val", "val_acc", "best_val",
                  "seconds")
"""The columns comparing a lab's runs, in the headless table (``trainlab.cli.lab_runner``) and
the app's results table alike: how each run ended, its steps, final training loss,
validation loss, validation accuracy, best validation loss and wall-clock seconds (the
labs' explanations point at the seconds, e.g. L-BFGS's cost per step). One word each
(scripts split the headless table on whitespace), and short: all eight fit the app's
lab dialog at 80 columns (with "train_loss"/"best_val_loss" the seconds fell off)."""


def result_row(name: str, finished: protocol.RunFinished) -> tuple[str, ...]:
    """One run's cells under ``RESULT_COLUMNS``: '-' where a number is missing (no
    validation, no accuracy), seconds as ``RunFinished.final.elapsed_s``."""
    f = finished.final
    return (name, finished.reason, str(f.step), format_number(f.train_loss),
            format_number(f.val_loss), format_percent(f.val_accuracy),
            format_number(f.best_val_loss), format_number(f.elapsed_s, ".1f"))


@dataclass(frozen=True)
class Lab:
    """A lesson: what it shows, why, and the runs that show it."""

    name: str
    summary: str
    """One line for ``trainlab presets``."""
    explanation: str
    """The lab's screen in the app: what varies, what to look for, and why (a few short
    paragraphs of plain text, lines under 80 columns)."""
    variants: tuple[Preset, ...]
    """The runs, in the order they train; each preset's summary labels its curve."""
    compare_by: str = "step"
    """The x axis their curves share: step, or epoch where the variants take different
    numbers of steps per epoch (e.g. batch sizes)."""

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError(f"lab {self.name!r} has no runs: give it at least one variant")
        if self.compare_by not in COMPARE_BY:
            raise ValueError(f"lab {self.name!r}: compare_by {self.compare_by!r} is not "
                             f"allowed; expected one of {', '.join(COMPARE_BY)}")

    def configs(self, base: Config, overrides: Sequence[str] = ()) -> list[tuple[str, Config]]:
        """(variant name, config) for every run of the lab: the variant's changes over
        ``base``, then ``overrides`` (``--set`` strings, e.g. ``run.max_steps=3``) on top
        of every variant, so they hold even where a variant sets the same field.

        Raises ConfigError naming the lab and the variant whose config is not allowed.
        """
        runs = []
        for variant in self.variants:
            try:
                config = apply_overrides(base.with_values(variant.changes), list(overrides))
            except ConfigError as exc:
                raise ConfigError(f"lab {self.name}, run {variant.name}: {exc}") from None
            runs.append((variant.name, config))
        return runs


def _runs(*names: str) -> tuple[Preset, ...]:
    """The registered presets called ``names``, in that order."""
    return tuple(PRESETS[name] for name in names)


LABS: dict[str, Lab] = {
    lab.name: lab
    for lab in (
        Lab(
            "init",
            "weight init on a deep tanh net: small, large, Xavier, Kaiming",
            "Ten tanh layers of 500 units on unit-Gaussian input; only the way the\n"
            "initial weights are drawn changes.\n\n"
            "With zero-mean weights of variance g, each layer multiplies the variance of\n"
            "its input by n_in * g. Too small (std 0.01) and the activations shrink layer\n"
            "by layer towards 0, and the gradients vanish with them: the loss stays flat.\n"
            "Too large (std 1) and tanh saturates at -1 and +1, where its slope is 0.\n"
            "Xavier sets g = 2 / (n_in + n_out) and keeps the std in a healthy band at\n"
            "every depth. Kaiming's g = 2 / n_in is the ReLU rule, twice what tanh needs:\n"
            "tanh squashes the excess, at the price of a few saturated units.\n\n"
            "Watch the Layers view (2): act std per layer falling (small) or pinned near\n"
            "1 (large), the saturated column, and the histograms (h): a spike at 0, two\n"
            "spikes at -1 and +1, or a bell. The labels are random: the training loss\n"
            "only shows whether the net can move at all.",
            _runs("init-small", "init-large", "init-xavier", "init-kaiming"),
        ),
        Lab(
            "init-relu",
            "weight init on a deep ReLU net: small, large, Xavier, Kaiming",
            "The classic experiment again (ten layers of 500 units, unit-Gaussian input),\n"
            "with ReLU instead of tanh.\n\n"
            "ReLU zeroes half of its input, so it halves the variance: a layer keeps its\n"
            "input's variance only if n_in * g = 2, Kaiming's g = 2 / n_in. Xavier's\n"
            "g = 1 / n_in (for equal widths), right for tanh, halves the variance at every\n"
            "layer: the std falls by 1/sqrt(2) a layer, ~20x by the tenth. Std 0.01\n"
            "shrinks it ~6x a layer. Std 1 has nothing to stop it: ReLU does not\n"
            "saturate, so the activations grow ~16x a layer and the loss starts near 1e13.\n\n"
            "Watch the Layers view (2): act std and grad std per layer (steady only with\n"
            "Kaiming), the dead column, and the histograms (h). On the Train view the\n"
            "large init's loss is off the scale of the others.",
            _runs("init-relu-small", "init-relu-large", "init-relu-xavier",
                  "init-relu-kaiming"),
        ),
        Lab(
            "activations",
            "sigmoid vs tanh vs ReLU vs LeakyReLU on the same 10-layer net",
            "One 10x64 net on 3-class spirals; only the activation changes, each with\n"
            "the init made for it (Xavier for sigmoid and tanh, Kaiming for the ReLUs).\n\n"
            "The gradient reaching a layer is a product of one slope per layer above it.\n"
            "Sigmoid's slope is at most 1/4 and its output is not centred on 0: after ten\n"
            "layers the first layer's gradient is ~1e-8 and the loss stays at ln 3 (the\n"
            "chance level of 3 classes). tanh is centred with slope 1 at 0; ReLU has\n"
            "slope 1 wherever it is active and never saturates; LeakyReLU keeps a small\n"
            "slope below 0, so a unit cannot die.\n\n"
            "Watch the Train view for sigmoid's flat loss, and the Layers view (2): grad\n"
            "std per layer (sigmoid's falls ~4x a layer towards the input, with no unit\n"
            "saturated: its slope is small everywhere), and the dead column for ReLU as\n"
            "it trains (units that output 0 for every input get no gradient, so they\n"
            "stay dead unless their input shifts). SGD with momentum on purpose: Adam\n"
            "rescales each weight's step, hiding all that.",
            _runs("act-sigmoid", "act-tanh", "act-relu", "act-leaky-relu"),
        ),
        Lab(
            "depth",
            "30 LeakyReLU layers: plain vs BatchNorm vs residual",
            "Thirty LeakyReLU layers of 64 units on 3-class spirals, SGD with momentum,\n"
            "the same weights N(0, 0.05^2) in all three nets (a common hand-picked std;\n"
            "LeakyReLU so that no unit dies and depth alone is what differs).\n\n"
            "Depth multiplies: each plain layer keeps 64 * 0.05^2 / 2 = 8% of its input's\n"
            "variance, and thirty such factors leave nothing. The plain net's first\n"
            "layer gets gradients ~1e-19 and its loss stays at ln 3. BatchNorm rescales\n"
            "every layer to unit variance whatever its weights. A residual block adds\n"
            "its output to its input (x + f(x)): products turn into sums, and the\n"
            "identity path carries the signal forward and the gradient back.\n\n"
            "Watch the Train view (the plain loss is flat; BatchNorm's early validation\n"
            "losses jump while its running statistics catch up) and the Layers view (2):\n"
            "act std and grad std per layer, collapsing with depth only in the plain net.",
            _runs("depth-plain", "depth-batchnorm", "depth-residual"),
        ),
        Lab(
            "optimizers",
            "SGD, momentum, Nesterov, AdaGrad, RMSProp, Adam, NAdam, L-BFGS",
            "Eight optimizers, each at its usual learning rate, fit the same sine from\n"
            "the same initial weights, on the full batch: L-BFGS needs the exact\n"
            "gradient, so every run gets it, and a step is an epoch for all of them.\n\n"
            "SGD crawls along the valley (about 3x the others' loss at the end).\n"
            "Momentum (0.9) adds up consistent steps into steps up to 1 / (1 - 0.9) = 10x\n"
            "longer; Nesterov takes the gradient one step ahead. AdaGrad gives each weight\n"
            "its own step, which only shrinks (its denominator only grows). RMSProp\n"
            "forgets old gradients, and Adam adds momentum to it. L-BFGS builds a\n"
            "curvature model and reaches the noise floor (~0.01) within ~50 steps.\n\n"
            "Read the Train view's overlaid curves per step, and the seconds in the\n"
            "comparison: one L-BFGS step evaluates the loss and gradient up to 20 times\n"
            "(optim.lbfgs_iters), so a step of it costs up to 20 of the others'.",
            _runs("opt-sgd", "opt-momentum", "opt-nesterov", "opt-adagrad", "opt-rmsprop",
                  "opt-adam", "opt-nadam", "opt-lbfgs"),
        ),
        Lab(
            "regularization",
            "overfit 100 points; dropout, weight decay, early stop, augmentation",
            "A 3x128 net (33k weights) trained 1000 steps on 100 noisy two-moons\n"
            "points, validated on 100 others. Without help it memorizes them: the\n"
            "training loss falls towards 0 while the validation loss turns and climbs,\n"
            "the sign of overfitting.\n\n"
            "Dropout drops half the hidden units each step, so no unit can rely on\n"
            "another. Weight decay (L2) pulls the weights towards 0: a smoother\n"
            "boundary. Early stopping ends the run once the validation loss has not\n"
            "improved for 5 evaluations (the best one is the model to keep). Noise\n"
            "augmentation shows slightly moved points every step: nothing to memorize.\n\n"
            "Watch the Train view: the gap between training and validation loss, and\n"
            "where the validation loss turns. The comparison's best val loss column is\n"
            "what each remedy could keep.",
            _runs("reg-none", "reg-dropout", "reg-weight-decay", "reg-early-stop",
                  "reg-augment"),
        ),
        Lab(
            "batch-size",
            "batch 1 vs 32 vs the full batch, compared per epoch",
            "The same net and data (240 spiral points), Adam at lr 1e-3; only the batch\n"
            "size changes, so an epoch is 240 steps, 8 steps or 1 step.\n\n"
            "The full batch gives the exact gradient but one step per pass over the\n"
            "data: after 20 epochs it has moved 20 times. Batch 1 moves 240 times an\n"
            "epoch on noisy one-sample gradients: the most progress per epoch and the\n"
            "noisiest curve, and the slowest per second, since a step on one sample\n"
            "wastes the hardware. Batch 32 is the usual middle: 8 smoother steps an\n"
            "epoch, at a fraction of batch 1's cost.\n\n"
            "The curves share an x axis in epochs. Watch their noise on the Train view\n"
            "and the seconds in the comparison.",
            _runs("batch-1", "batch-32", "batch-full"),
            compare_by="epoch",
        ),
    )
}
"""Every lab by name, in the order ``trainlab presets`` lists them."""


def find_lab(name: str) -> Lab | None:
    """The lab called ``name``, or None when it is not a lab (it may be a preset)."""
    return LABS.get(name)


def apply_preset(config: Config, name: str) -> Config:
    """``config`` with preset ``name`` applied.

    A lab's name raises, listing its variants (a lab is several runs, not one config);
    unknown names raise with a did-you-mean.
    """
    preset = PRESETS.get(name)
    if preset is not None:
        return config.with_values(preset.changes)
    lab = LABS.get(name)
    if lab is not None:
        variants = ", ".join(v.name for v in lab.variants)
        raise ConfigError(
            f"preset {name!r} is a lab of {len(lab.variants)} runs, not one config: name one "
            f"of its variants ({variants}), or train them all with "
            f"trainlab run --preset {name}")
    raise ConfigError(f"unknown preset {name!r}{did_you_mean(name, [*LABS, *PRESETS])}")
