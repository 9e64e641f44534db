"""The pre-flight doctor: the debugging checklist, run on a built but untrained run
(docs/field-knowledge.md#before-training).

Each check answers pass, warn or fail with the numbers behind the verdict and, when it
is not a pass, what to do. ``trainlab doctor`` prints them (``--json``: one object the
app reads); the exit code is non-zero when a check fails.

Every check works on copies (``trainlab.engine.sandbox``): the run's model, optimizer, batch
order and the global torch RNG are left as they were, and nothing is written to disk.
Cost on the default config: well under a second after the build (a forward/backward on
``PROBE_SAMPLES`` samples, up to ``OVERFIT_MAX_STEPS`` steps on one small batch, and the
LR range test's 100 steps); the build itself (imports, dataset) takes longer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from trainlab.core.config import Config
from trainlab.core.doctor_report import FAIL, PASS, WARN, CheckResult, DoctorReport
from trainlab.doctor.lr_find import find_lr
from trainlab.engine.build import BuiltRun
from trainlab.engine.models import DROPOUT_TYPES, set_dropout, trace_forward
from trainlab.engine.optim import OPTIMIZERS
from trainlab.engine.sandbox import SEED_OFFSET, Sandbox, isolated_rng

PROBE_SAMPLES = 1024
"""Samples for the loss at init and the gradient check: the mean loss is then within a few
percent of its expectation, and a parameter that only some inputs reach (one class's)
still gets its gradient; one pass over them is instant on a CPU."""
LISTED = 5
"""At most this many layers, features or classes are named in a detail line."""

INIT_LOSS_WARN_FACTOR = 1.1
"""init_loss: warn when the loss at init is more than 10% above that of an uninformed guess
(ln C for C balanced classes). A net whose output layer starts small, as init.scheme =
auto makes it, scores within 2% of it (digits 2.296 against ln 10 = 2.303, spirals 1.108
against ln 3 = 1.099), and the mean over PROBE_SAMPLES is within a few percent of its
expectation. A Kaiming-initialized output layer scored 2.83 on digits, 1.23x: logits of
std ~1, confident before the network has seen anything, which its first steps unlearn."""
INIT_LOSS_REGRESSION_WARN_FACTOR = 1.5
"""init_loss for a regression loss: its reference, outputs of unit variance that ignore the
input, is where a default-initialized net starts, give or take the spread of its outputs;
a loss 1.5x above it means outputs far larger than the targets."""
INIT_LOSS_LEAK_FACTOR = 1.5
"""init_loss: warn when the loss at init is more than 1.5x below the best constant guess
(the class prior, the targets' mean): an untrained network cannot know that much, unless
the targets leak into the inputs. Chance on the probe samples stays far from it."""
INIT_LOSS_FAIL_FACTOR = 3.0
"""init_loss: fail beyond 3x: confidently wrong from the first step, as with a too large
init (N(0, 1) weights give ~7x on digits); such a net first spends its steps unlearning."""

CONSTANT_FEATURE_STD = 1e-6
"""input_scaling: a feature with a smaller std is constant (an always-blank border pixel);
their count is reported, since they carry nothing."""
INPUT_MEAN_WARN = 0.5
"""input_scaling: warn when a feature's mean is more than half a unit from 0. Off-centre
inputs make the weight gradients of a unit share a sign, so its updates zig-zag
(docs/field-knowledge.md#input-scaling)."""
INPUT_MEAN_FAIL = 2.0
"""input_scaling: fail beyond 2 units: the inputs are mostly on one side of 0, e.g. raw
pixel intensities (digits: means up to ~10)."""
INPUT_SCALE_WARN = 3.0
"""input_scaling: warn when a feature's std is above 3, or the inputs' overall
(root-mean-square) std below 1/3: init schemes assume unit-variance inputs."""
INPUT_SCALE_FAIL = 10.0
"""input_scaling: fail beyond 10x: the first layer's pre-activations are off by that much,
which saturates tanh/sigmoid or shrinks the signal to nothing."""

IMBALANCE_WARN_RATIO = 3.0
"""labels: warn when the largest class has more than 3x the samples of the smallest:
past that a model gains accuracy by favouring the big class (the counts are shown; a
balanced sampler or class weights would help)."""

OVERFIT_BATCH = 32
"""overfit_batch: samples in the one batch (fewer when the run's batch is smaller). Any
network meant for the task can memorize 32 samples."""
OVERFIT_MAX_STEPS = 300
"""overfit_batch: 'a few hundred steps' (docs/field-knowledge.md#before-training). A sound
set-up memorizes the batch in well under that (the default digits MLP needs ~35)."""
OVERFIT_TARGET_FRACTION = 0.02
"""overfit_batch: 'near zero' is below 2% of the starting loss (cross-entropy on 10
classes: 2.3 -> 0.046, ~95% probability on the right class)..."""
OVERFIT_NEAR_ZERO_FRACTION = 0.1
"""...and below 10% of what a network that knows nothing scores on the batch: ln C for
cross-entropy (0.23 on 10 classes, ~80% probability on the right class), ln 2 per output
for BCE, and for a regression loss that of predicting the batch's mean (median for L1),
so that at least 90% of the targets' variance is fitted. A drop relative to the start
alone passed a net whose loss began far above any guess: init-relu-large went from 3.3e13
to 4.7e11 ("PASS"), nowhere near zero."""

BATCH_PER_CLASS = 10
"""batch_size: the rule of thumb for classification is about 10x the number of classes
(64-128 for 10 classes, docs/field-knowledge.md#batch-size), so a batch shows each class
several times."""
LARGE_TRAINING_SET = 10_000
"""batch_size: from this many training samples, batch 1 makes an epoch that many noisy,
overhead-bound steps, and a full batch makes each step cost a whole pass while, past a
point, the direction no longer improves."""

LR_BELOW_FACTOR = 30.0
"""lr_range: the configured lr passes down to 1/30 of the suggestion. The steepest-fall
point moves by about a decade between seeds and set-ups (the default digits MLP gives
0.007-0.018 for Adam, whose usual 1e-3 trains well); below that band steps are wasted.
Above, the limit is the lr where the test's loss bottoms out: past it the loss rises."""


# --- helpers -----------------------------------------------------------------------------


def _probe_batch(run: BuiltRun) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ``PROBE_SAMPLES`` random training samples (inputs, targets) every call."""
    n = len(run.x_train)
    generator = torch.Generator().manual_seed(run.config.run.seed + SEED_OFFSET)
    idx = torch.randperm(n, generator=generator)[:PROBE_SAMPLES].to(run.device)
    return run.x_train[idx], run.t_train[idx]


def _listed(items: list[str]) -> str:
    """The first ``LISTED`` items, and how many more."""
    more = f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    return ", ".join(items[:LISTED]) + more


# --- 1. loss at init ---------------------------------------------------------------------

PROB_FLOOR = 1e-6
"""Class frequencies are clamped to [1e-6, 1 - 1e-6] before log/logit: a class absent
from the probe samples would otherwise make the best constant guess infinite."""
GAUSS_HERMITE_NODES = 32
"""Nodes of the Gauss-Hermite rule that averages a regression loss over unit-Gaussian
outputs: exact for MSE (a square), within ~1e-3 for L1 and smooth L1 (their kink)."""


def _unit_output_loss(run: BuiltRun, out: torch.Tensor, target: torch.Tensor) -> float:
    """The expected loss of outputs drawn from N(0, 1), independent of the targets: for
    MSE mean(y^2) + 1. One loss evaluation per node."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(GAUSS_HERMITE_NODES)
    weights = weights / weights.sum()  # the rule's weights sum to sqrt(2 pi)
    fn = run.objective.fn
    return sum(float(w) * fn(torch.full_like(out, float(z)), target).item()
               for z, w in zip(nodes, weights, strict=True))


def _uninformed(run: BuiltRun, out: torch.Tensor, target: torch.Tensor
                ) -> tuple[float, str, float, str]:
    """(lower, what it is, upper, what it is): what a network that knows nothing scores.

    Classification losses: from the best constant guess (the class prior) to equal
    scores for every class (ln C for cross-entropy, ln 2 per output for BCE), the
    textbook figure (docs/field-knowledge.md#losses-and-the-output-layer). Regression
    losses (and MSE/L1 on one-hot classes): from the best constant (the targets' mean or
    median) to outputs of unit variance that ignore the input, which is what a
    variance-preserving init (Kaiming, Xavier) produces; the zero prediction's mean(y^2)
    would be no yardstick for them, since unit-variance outputs add 1 to it, tripling it
    on targets of std 0.7 (sine).
    """
    objective = run.objective
    classes = run.data.num_classes
    if objective.name == "cross_entropy":
        prior = torch.bincount(target, minlength=out.shape[1]).float() / len(target)
        constant = prior.clamp(min=PROB_FLOOR).log()
        upper = objective.fn(torch.zeros_like(out), target).item()
        what = ("the class prior's entropy", f"ln {classes}: equal scores for the "
                f"{classes} classes")
    elif objective.name == "bce_with_logits":
        p = target.float().mean(dim=0).clamp(PROB_FLOOR, 1 - PROB_FLOOR)
        constant = (p / (1 - p)).log()
        upper = objective.fn(torch.zeros_like(out), target).item()
        what = ("the class frequencies as probabilities", "ln 2: every logit 0")
    else:
        upper = _unit_output_loss(run, out, target)
        if objective.name == "mse":
            constant = target.float().mean(dim=0)
            what = ("predicting the targets' mean: their variance",
                    "outputs of unit variance that ignore the input: mean(y^2) + 1")
        else:  # l1, smooth_l1: the median is the best constant under an absolute error
            constant = target.float().median(dim=0).values
            what = ("predicting the targets' median",
                    "outputs of unit variance that ignore the input")
    lower = objective.fn(constant.expand_as(out).contiguous(), target).item()
    return min(lower, upper), what[0], max(lower, upper), what[1]


def check_init_loss(run: BuiltRun) -> tuple[str, str]:
    """Loss at init against an uninformed guess (ln C for C balanced classes)."""
    x, target = _probe_batch(run)
    model = Sandbox(run).model  # train mode as the first step; BatchNorm in the copy
    with torch.no_grad():
        out = model(x)
        loss = run.objective.fn(out, target).item()
    lower, lower_what, upper, upper_what = _uninformed(run, out, target)
    where = f"loss at init {loss:.4g} on {len(x)} training samples"
    guess = (f"an uninformed guess scores {lower:.4g} ({lower_what}) to {upper:.4g} "
             f"({upper_what})")
    if not math.isfinite(loss):
        return FAIL, (f"{where}: not finite, before any update. The init or the inputs "
                      "overflow: check input_scaling and use init.scheme = kaiming_normal or "
                      "xavier_normal")
    high = loss / upper if upper > 0 else math.inf
    low = lower / loss if loss > 0 else math.inf
    against = f"{high:.3g}x the {upper:.4g} of {upper_what}"
    classification = run.data.task == "classification"
    warn_factor = INIT_LOSS_WARN_FACTOR if classification else INIT_LOSS_REGRESSION_WARN_FACTOR
    if high > warn_factor:
        status = FAIL if high > INIT_LOSS_FAIL_FACTOR else WARN
        out_std = out.float().std().item()
        if classification:
            how = f"the network starts out confidently wrong (output std {out_std:.3g})"
        else:
            how = (f"the outputs (std {out_std:.3g}) start far from the targets (std "
                   f"{target.float().std().item():.3g})")
        if run.config.model.arch == "custom":  # auto keeps a custom model's own init
            fix = ("scale your model's last layer down at init (its weight times 0.1), or "
                   "use init.scheme = kaiming_normal for the ReLU family, xavier_normal for "
                   "tanh-like activations")
        else:
            fix = ("use init.scheme = auto (kaiming_normal for the ReLU family, xavier_normal "
                   "for tanh-like activations, the output layer scaled down), or scale the "
                   "last layer down")
        return status, (
            f"{where} is {against} (warn above {warn_factor:g}x, fail above "
            f"{INIT_LOSS_FAIL_FACTOR:g}x): {how}. Usually the init is too large for the "
            "depth or the output layer starts too large (or the inputs are: see "
            f"input_scaling): {fix}")
    if low > INIT_LOSS_LEAK_FACTOR:
        return WARN, (
            f"{where} is {low:.3g}x below the {lower:.4g} of {lower_what}, the best a "
            f"network that knows nothing can do (warn beyond {INIT_LOSS_LEAK_FACTOR:g}x): "
            "check that the targets do not leak into the inputs")
    return PASS, (f"{where} is {against} (pass up to {warn_factor:g}x); {guess}: "
                  "as expected of an untrained network")


# --- 2. every parameter gets a gradient ---------------------------------------------------


def check_gradients(run: BuiltRun) -> tuple[str, str]:
    """Every trainable parameter gets a finite, non-zero gradient on one batch."""
    x, target = _probe_batch(run)
    model = Sandbox(run).model
    run.objective.fn(model(x), target).backward()  # the data loss only: an L1 term
    # would give every weight a gradient of its own and hide an unused parameter
    missing, zero, broken, frozen, total = [], [], [], 0, 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            frozen += 1
            continue
        total += 1
        if p.grad is None:
            missing.append(name)
        elif not torch.isfinite(p.grad).all():
            broken.append(name)
        elif not p.grad.any():
            zero.append(name)
    on = f"on {len(x)} training samples"
    frozen_note = f"; {frozen} frozen (requires_grad False) left out" if frozen else ""
    if not (missing or zero or broken):
        return PASS, (f"all {total} trainable parameter tensors got a finite, non-zero "
                      f"gradient {on}{frozen_note}")
    bad = len(missing) + len(zero) + len(broken)
    parts = [f"{bad} of {total} trainable parameter tensors got no usable gradient {on}"]
    if zero:
        parts.append(
            f"all zeros: {_listed(zero)}. Nothing reaches them: all-equal weights (init.scheme "
            "= zeros or constant) make every unit the same and, with zeros, block the signal "
            "(symmetry); or every unit before them is dead. Use init.scheme = kaiming_normal "
            "or xavier_normal")
    if missing:
        parts.append(
            f"no gradient at all: {_listed(missing)}. They are not used by forward(), or "
            "their path is cut (.detach(), torch.no_grad, .item()); remove or reconnect them")
    if broken:
        parts.append(f"NaN or inf: {_listed(broken)}. The forward pass overflows: check "
                     "input_scaling and the init")
    return FAIL, ". ".join(parts)


# --- 3. inputs centred and scaled ---------------------------------------------------------


def _feature_name(index: int, shape: tuple[int, ...]) -> str:
    if len(shape) == 3:
        c, h, w = (int(i) for i in torch.unravel_index(torch.tensor(index), shape))
        return f"pixel (channel {c}, row {h}, col {w})"
    return f"feature {index}"


def check_input_scaling(run: BuiltRun) -> tuple[str, str]:
    """Per-feature mean and std of the preprocessed training inputs near 0 and 1.

    Scale is judged twice: each feature's std against ``INPUT_SCALE_*`` (one large
    feature dominates what the first layer sums), and the root-mean-square std over all
    features against the inverse bounds (the init schemes assume unit variance on
    average; a few near-constant features, such as image borders, are harmless).
    """
    flat = run.x_train.reshape(len(run.x_train), -1).double()
    std, mean = torch.std_mean(flat, dim=0, correction=0)
    shape = run.data.input_shape
    worst_mean, largest_std = float(mean.abs().max()), float(std.max())
    rms_std = float(std.square().mean().sqrt())
    status = PASS
    if (worst_mean > INPUT_MEAN_WARN or largest_std > INPUT_SCALE_WARN
            or rms_std < 1 / INPUT_SCALE_WARN):
        status = WARN
    if (worst_mean > INPUT_MEAN_FAIL or largest_std > INPUT_SCALE_FAIL
            or rms_std < 1 / INPUT_SCALE_FAIL):
        status = FAIL
    constant = int((std < CONSTANT_FEATURE_STD).sum())
    summary = (f"{flat.shape[1]} input features (data.preprocess = "
               f"{run.config.data.preprocess}): |mean| at most {worst_mean:.3g}, std at "
               f"most {largest_std:.3g}, root-mean-square std {rms_std:.3g}")
    if constant:
        summary += f" ({constant} constant)"
    if status == PASS:
        return PASS, f"{summary}: centred and scaled"

    def worst(values: torch.Tensor, limit: float) -> str:
        order = torch.argsort(values, descending=True)
        over = order[values[order] > limit]
        names = [f"{_feature_name(int(i), shape)} mean {float(mean[i]):.3g} std "
                 f"{float(std[i]):.3g}" for i in over[:LISTED]]
        more = f" and {len(over) - LISTED} more" if len(over) > LISTED else ""
        return ", ".join(names) + more

    problems = []
    if worst_mean > INPUT_MEAN_WARN:
        problems.append(f"off centre (|mean| > {INPUT_MEAN_WARN:g}): "
                        f"{worst(mean.abs(), INPUT_MEAN_WARN)}")
    if largest_std > INPUT_SCALE_WARN:
        problems.append(f"std above {INPUT_SCALE_WARN:g}: {worst(std, INPUT_SCALE_WARN)}")
    if rms_std < 1 / INPUT_SCALE_WARN:
        problems.append(f"the inputs are {1 / rms_std:.3g}x smaller than unit scale overall")
    return status, (
        f"{summary}. {'; '.join(problems)}. Off-centre inputs make the weight updates of "
        "a unit share a sign (zig-zag learning) and badly scaled ones defeat the init "
        f"(warn beyond |mean| {INPUT_MEAN_WARN:g} or {INPUT_SCALE_WARN:g}x from unit scale, "
        f"fail beyond {INPUT_MEAN_FAIL:g} or {INPUT_SCALE_FAIL:g}x): set data.preprocess = "
        "standardize")


# --- 4. labels in range, classes balanced -------------------------------------------------


def check_labels(run: BuiltRun) -> tuple[str, str]:
    """Class labels within 0..C-1 in both splits, counts shown, balance checked."""
    data = run.data
    if data.task != "classification":
        y = data.y_train.double()
        return PASS, (f"regression with {data.num_targets} target(s): mean "
                      f"{float(y.mean()):.4g}, std {float(y.std(correction=0)):.4g} over "
                      f"{len(y)} training samples; no class labels to check")
    classes = data.num_classes
    out_of_range = [
        f"{split} labels span {int(y.min())}..{int(y.max())}"
        for split, y in (("training", data.y_train), ("validation", data.y_val))
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes)]
    counts = [int(c) for c in torch.bincount(data.y_train.clamp(0, classes - 1),
                                             minlength=classes)]
    names = data.class_names or tuple(str(i) for i in range(classes))
    shown = " ".join(f"{name}:{count}" for name, count in zip(names, counts, strict=True))
    if out_of_range:
        return FAIL, (f"{'; '.join(out_of_range)}, but the model has outputs for classes "
                      f"0..{classes - 1}: re-encode the labels as 0..{classes - 1}")
    empty = [name for name, count in zip(names, counts, strict=True) if count == 0]
    if empty:
        return FAIL, (f"class counts (training) {shown}: no training sample of "
                      f"{_listed(empty)}, so the network can never learn them; move some "
                      "into the training split")
    ratio = max(counts) / min(counts)
    where = (f"labels in 0..{classes - 1} for {classes} classes; class counts (training) "
             f"{shown}; largest/smallest {ratio:.3g}")
    if ratio > IMBALANCE_WARN_RATIO:
        return WARN, (
            f"{where}: imbalanced (warn above {IMBALANCE_WARN_RATIO:g}). A network can score "
            "well by favouring the big classes: watch per-class accuracy, and balance the "
            "data (resample or collect more of the small classes)")
    return PASS, f"{where}: balanced"


# --- 5. output activation matches the loss ------------------------------------------------

OUTPUT_RANGES: dict[str, tuple[float, float]] = {
    "Softmax": (0.0, 1.0),
    "Softmin": (0.0, 1.0),
    "Sigmoid": (0.0, 1.0),
    "Hardsigmoid": (0.0, 1.0),
    "LogSigmoid": (-math.inf, 0.0),
    "LogSoftmax": (-math.inf, 0.0),
    "Tanh": (-1.0, 1.0),
    "Hardtanh": (-1.0, 1.0),
    "Softsign": (-1.0, 1.0),
    "ScaledSigmoid": (-2.0, 2.0),
    "ReLU": (0.0, math.inf),
    "ReLU6": (0.0, 6.0),
    "Softplus": (0.0, math.inf),
    "ELU": (-1.0, math.inf),
    "CELU": (-1.0, math.inf),
}
"""Output activations (module class name) and the range they squeeze outputs into."""
TRANSPARENT = (*DROPOUT_TYPES, nn.Identity, nn.Flatten, nn.Unflatten)
"""Modules that pass values through unchanged in range: skipped to find the last layer."""
IDENTITY_TOLERANCE = 1e-4
"""Rows that sum to 1 (softmax) or log-sum-exp to 0 (log-softmax) within this are taken
as probabilities: a linear layer never produces that, a softmax in forward() always."""


def _last_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, str, object]:
    """(name, kind, model output): the last leaf module called, skipping TRANSPARENT ones.

    A softmax or log-softmax applied as a function in forward() is recognized from the
    outputs (kind 'softmax in forward()' or 'log_softmax in forward()').
    """
    names = {module: name for name, module in model.named_modules()}
    calls = trace_forward(model, x, lambda module: True)  # eval mode, no grad, hooks removed
    out = calls[-1][1]
    leaves = [m for m, _ in calls if next(m.children(), None) is None]
    last = next((m for m in reversed(leaves) if not isinstance(m, TRANSPARENT)), model)
    name, kind = names[last] or type(last).__name__, type(last).__name__
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] > 1 and \
            kind not in OUTPUT_RANGES:
        if (out >= 0).all() and ((out.sum(dim=1) - 1).abs() < IDENTITY_TOLERANCE).all():
            kind = "softmax in forward()"
        elif (out <= 0).all() and (out.logsumexp(dim=1).abs() < IDENTITY_TOLERANCE).all():
            kind = "log_softmax in forward()"
    return name, kind, out


def _range_of(kind: str) -> tuple[float, float] | None:
    if kind.startswith("softmax"):
        return 0.0, 1.0
    if kind.startswith("log_softmax"):
        return -math.inf, 0.0
    return OUTPUT_RANGES.get(kind)


def check_output_activation(run: BuiltRun) -> tuple[str, str]:
    """The model's last activation suits the loss
    (docs/field-knowledge.md#losses-and-the-output-layer)."""
    x, _ = _probe_batch(run)
    name, kind, _ = _last_layer(Sandbox(run).model, x)
    loss = run.objective.name
    span = _range_of(kind)
    ends = f"the model ends in {kind} ({name})"
    if span is None:
        ends += ": raw, unbounded outputs"
    else:
        ends += f", outputs in [{span[0]:g}, {span[1]:g}]"
    classification = run.data.task == "classification"
    if loss == "cross_entropy":
        if span is None:
            return PASS, f"{ends}, the logits cross_entropy expects (it applies log-softmax)"
        if kind in ("LogSoftmax", "log_softmax in forward()"):
            return WARN, (f"{ends}: cross_entropy applies log-softmax itself; doing it twice "
                          "changes nothing (it is idempotent) but is redundant: remove it")
        lo, hi = span
        if math.isinf(hi) or math.isinf(lo):
            return WARN, (f"{ends}: logits cannot go below {lo:g}, so a class is ruled out "
                          "only by raising the others, and a logit stuck at the bound gets "
                          "no gradient. End in a Linear layer: cross_entropy wants raw logits")
        classes = run.data.num_classes
        floor = math.log(1 + (classes - 1) * math.exp(-(hi - lo)))
        return FAIL, (f"{ends}, but cross_entropy applies softmax itself: with logits squeezed "
                      f"into a range of {hi - lo:g} the loss can never go below {floor:.3g} "
                      f"on {classes} classes, and the squashing shrinks the gradients. Remove "
                      "it and end in a Linear layer (raw logits)")
    if loss == "bce_with_logits":
        if span is None:
            return PASS, f"{ends}, the logits bce_with_logits expects (it applies the sigmoid)"
        lo, hi = span
        p_lo, p_hi = 1 / (1 + math.exp(-lo)), 1 / (1 + math.exp(-hi))
        return FAIL, (f"{ends}, but bce_with_logits applies a sigmoid itself: predicted "
                      f"probabilities can only range over [{p_lo:.2g}, {p_hi:.2g}], so the "
                      "loss cannot reach 0. Remove it and end in a Linear layer (raw logits)")
    # mse, l1, smooth_l1: on classes they compare with one-hot targets in [0, 1].
    targets = run.t_train
    t_lo, t_hi = float(targets.min()), float(targets.max())
    if span is not None and (t_lo < span[0] or t_hi > span[1]):
        return FAIL, (f"{ends}, but the targets span [{t_lo:.3g}, {t_hi:.3g}]: the network "
                      f"cannot output part of them, and {loss} keeps pushing against the "
                      "bound, where the activation's gradient vanishes. End in a Linear layer")
    if classification:
        return WARN, (f"{ends}; {loss} on class labels compares outputs with one-hot targets. "
                      "cross_entropy trains faster: its gradient does not carry the output "
                      "activation's derivative. Set loss.name = cross_entropy "
                      "and end in a Linear layer")
    if span is not None:
        return WARN, (f"{ends}; the targets [{t_lo:.3g}, {t_hi:.3g}] fit inside, but near its "
                      "bounds the activation is flat and learning stalls (or, for ReLU, dies). "
                      "A regression output is usually a Linear layer")
    return PASS, f"{ends}, as a regression with {loss} expects"


# --- 6. overfit one small batch -------------------------------------------------------------


def check_overfit_batch(run: BuiltRun) -> tuple[str, str]:
    """A copy can drive the loss of one small batch near zero within a few hundred steps.

    Dropout is switched off in the copy: it is there to stop exactly this memorizing,
    and it keeps the training loss of a batch noisy.
    """
    sandbox = Sandbox(run)
    # Said only when it changes something: a built-in model has dropout modules at p = 0.
    dropout_on = any(isinstance(m, DROPOUT_TYPES) and m.p > 0 for m in sandbox.model.modules())
    set_dropout(sandbox.model, 0.0)
    size = min(run.batch_size, OVERFIT_BATCH)
    x, target = next(sandbox.batches(size, augment=False))
    reference, reference_what = _knows_nothing(run, target)
    lr = run.config.optim.lr
    first = sandbox.step(x, target, lr)
    near_zero = OVERFIT_TARGET_FRACTION * first
    bound = f"{OVERFIT_TARGET_FRACTION:.0%} of the start"
    if reference > 0:
        near_zero = min(near_zero, OVERFIT_NEAR_ZERO_FRACTION * reference)
        bound += (f" and {OVERFIT_NEAR_ZERO_FRACTION:.0%} of the {reference:.4g} of "
                  f"{reference_what}")
    loss, steps = first, 1
    while steps < OVERFIT_MAX_STEPS and math.isfinite(loss) and loss >= near_zero:
        loss = sandbox.step(x, target, lr)
        steps += 1
    setup = (f"{run.config.optim.name} at lr {lr:g} on one batch of {size}"
             + (" (dropout off)" if dropout_on else ""))
    if not math.isfinite(first):
        return FAIL, f"{setup}: the loss is not finite from the start: see init_loss"
    if not math.isfinite(loss):
        return FAIL, (f"{setup}: the loss turned non-finite at step {steps} (from {first:.4g}): "
                      "the lr is far too high; lower optim.lr (see lr_range)")
    fraction = loss / first if first > 0 else 0.0
    target_words = f"near zero: below {near_zero:.3g} ({bound})"
    if loss < near_zero or first == 0:
        return PASS, (f"{setup}: loss {first:.4g} -> {loss:.4g} ({fraction:.1%} of the start) "
                      f"in {steps} steps, {target_words}: the model, loss and data can learn")
    return FAIL, (
        f"{setup}: loss {first:.4g} -> {loss:.4g} after {steps} steps, {fraction:.1%} of the "
        f"start; needed {target_words}. A network that cannot memorize {size} samples will "
        "not learn the data: something in the model, the loss or the data is wrong (see the "
        "other checks; a start far above an uninformed guess points at the init), or the lr "
        "is far off (see lr_range)")


def _knows_nothing(run: BuiltRun, target: torch.Tensor) -> tuple[float, str]:
    """(loss, what it is) of a network that knows nothing, on the batch ``target``: equal
    scores for every class under cross-entropy and BCE (ln C; ln 2 per output), the best
    constant (the batch's mean or median) under a regression loss."""
    out = torch.zeros(len(target), run.objective.num_outputs, device=target.device)
    lower, lower_what, upper, upper_what = _uninformed(run, out, target)
    if run.objective.name in ("cross_entropy", "bce_with_logits"):
        return upper, upper_what
    return lower, lower_what


# --- 7. batch size ----------------------------------------------------------------------------


def check_batch_size(run: BuiltRun) -> tuple[str, str]:
    """The batch size against the number of classes, the set size and the optimizer."""
    size, n = run.batch_size, len(run.x_train)
    classes = run.data.num_classes
    optimizer = run.config.optim.name
    full_batch_method = OPTIMIZERS[optimizer].full_batch
    what = f"batch {size} of {n} training samples ({run.steps_per_epoch()} steps/epoch)"
    if classes:
        what += f", {classes} classes (rule of thumb ~{BATCH_PER_CLASS * classes})"
    problems = []
    if full_batch_method and size < n:
        problems.append(f"{optimizer} assumes the exact full-batch gradient: set "
                        "data.batch_size = 0")
    if classes and size < classes:
        problems.append(f"fewer samples than classes: no batch can show every class, so each "
                        f"step's gradient pulls towards a few of them; use at least {classes}, "
                        f"ideally ~{BATCH_PER_CLASS * classes}")
    if size == 1 and n >= LARGE_TRAINING_SET:
        problems.append(f"batch 1 on {n} samples: an epoch is {n} noisy steps, each paying the "
                        "full per-step overhead; a mini-batch of 32-128 is the usual middle")
    if size == n and n >= LARGE_TRAINING_SET and not full_batch_method:
        problems.append(f"the full batch of {n}: one step per epoch, each a whole pass, and "
                        "past a point a bigger batch no longer improves the direction; use a "
                        "mini-batch of 32-128")
    if problems:
        return WARN, f"{what}: {'; '.join(problems)}"
    return PASS, f"{what}: sane"


# --- 8. learning rate ------------------------------------------------------------------------


def check_lr_range(run: BuiltRun) -> tuple[str, str]:
    """The LR range test's suggestion against the configured lr."""
    found = find_lr(run)
    lr = run.config.optim.lr
    test = (f"LR range test ({len(found.lrs)} steps from lr {found.lrs[0]:.2g} to "
            f"{found.lrs[-1]:.2g})" if found.lrs else "LR range test")
    if found.suggested_lr is None:
        return WARN, (f"{test}: no suggestion: {found.reason}. Check the other checks first; "
                      "run trainlab lr-find to see the curve")
    suggested = found.suggested_lr
    finite = [(loss, x) for x, loss in zip(found.lrs, found.losses, strict=True)
              if math.isfinite(loss)]
    lowest_lr = min(finite)[1]
    advice = (f"{test} suggests lr {suggested:.2g} ({found.reason}); optim.lr = {lr:g}")
    fix = f"try --set optim.lr={suggested:.2g} (trainlab lr-find draws the curve)"
    if lr < suggested / LR_BELOW_FACTOR:
        return WARN, (f"{advice} is {suggested / lr:.3g}x lower (warn beyond "
                      f"{LR_BELOW_FACTOR:g}x): training will crawl; {fix}")
    if lr > lowest_lr:
        return WARN, (f"{advice} is above {lowest_lr:.2g}, where the test's loss bottoms out "
                      f"and starts to rise: expect oscillation or divergence; {fix}")
    return PASS, f"{advice}: in range"


CHECKS: dict[str, Callable[[BuiltRun], tuple[str, str]]] = {
    "init_loss": check_init_loss,
    "gradients": check_gradients,
    "input_scaling": check_input_scaling,
    "labels": check_labels,
    "output_activation": check_output_activation,
    "overfit_batch": check_overfit_batch,
    "batch_size": check_batch_size,
    "lr_range": check_lr_range,
}
"""The checklist, in the order it is run and printed: check name -> (status, detail)."""


def examine(run: BuiltRun) -> DoctorReport:
    """Run every check on ``run`` as built; the run itself is not changed.

    Exceptions from user code (a forward() that raises) propagate, as in a run.
    """
    results = []
    with isolated_rng():
        for name, check in CHECKS.items():
            status, detail = check(run)
            results.append(CheckResult(name, status, detail))
    return DoctorReport(tuple(results))


def run_doctor(config: Config) -> DoctorReport:
    """Build ``config``'s run (raising ConfigError or UserCodeError as a run's build does)
    and examine it."""
    return examine(BuiltRun(config))
