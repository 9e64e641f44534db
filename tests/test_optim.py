"""Tests for trainlab.engine.optim and trainlab.engine.losses: every optimizer learns, live
hyperparameter
updates keep state, schedules match their formulas, objectives shape targets right."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from trainlab.core.config import OPTIMIZERS, Config, ConfigError, OptimConfig, ScheduleConfig
from trainlab.engine.losses import build_objective
from trainlab.engine.optim import LRSchedule, build_optimizer, set_lr, update_hyperparameters


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- optimizers ---------------------------------------------------------------------

# Learning rates (and, for adadelta, an eps) at which 50 full-batch steps are plenty.
# Adadelta's first steps are ~sqrt(eps) * lr: at the shared default eps = 1e-8 it barely
# moves in 50 steps, so it gets a larger eps here.
SETTINGS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 0.1},
    "momentum": {"lr": 0.05},
    "nesterov": {"lr": 0.05},
    "adagrad": {"lr": 0.1},
    "adadelta": {"lr": 1.0, "eps": 1e-3},
    "rmsprop": {"lr": 0.01},
    "adam": {"lr": 0.05},
    "adamw": {"lr": 0.05},
    "nadam": {"lr": 0.05},
    "rprop": {"lr": 0.01},
    "lbfgs": {"lr": 1.0},
}


def test_settings_cover_every_optimizer() -> None:
    assert set(SETTINGS) == set(OPTIMIZERS)


def least_squares() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(64, 5)
    w = torch.randn(5, 1)
    return x, x @ w + 0.01 * torch.randn(64, 1)


def logistic() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(64, 4)
    w = torch.randn(4, 1) * 2
    return x, (x @ w > 0).float()


@pytest.mark.parametrize("problem", ["least_squares", "logistic"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_reduces_the_loss(name: str, problem: str) -> None:
    x, y = least_squares() if problem == "least_squares" else logistic()
    model = torch.nn.Linear(x.shape[1], 1)

    def loss_fn() -> torch.Tensor:
        out = model(x)
        if problem == "least_squares":
            return ((out - y) ** 2).mean()
        # logistic loss written out: log(1 + e^-z) for y=1, log(1 + e^z) for y=0
        z = out * (2 * y - 1)
        return torch.log1p(torch.exp(-z)).mean()

    opt = build_optimizer(model.parameters(), OptimConfig(name=name, **SETTINGS[name]))
    assert opt.param_groups[0]["lr"] == SETTINGS[name]["lr"]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.no_grad():
        initial = loss_fn().item()
    for _ in range(50):
        opt.step(closure)
    with torch.no_grad():
        final = loss_fn().item()
    assert math.isfinite(final)
    assert final < 0.5 * initial, (name, initial, final)


@pytest.mark.parametrize(
    ("name", "cls", "group"),
    [
        ("sgd", torch.optim.SGD, {"momentum": 0, "nesterov": False, "weight_decay": 0.01}),
        ("momentum", torch.optim.SGD, {"momentum": 0.8, "nesterov": False}),
        ("nesterov", torch.optim.SGD, {"momentum": 0.8, "nesterov": True}),
        ("adagrad", torch.optim.Adagrad, {"eps": 1e-6}),
        ("adadelta", torch.optim.Adadelta, {"eps": 1e-6}),
        ("rmsprop", torch.optim.RMSprop, {"alpha": 0.95, "eps": 1e-6}),
        ("adam", torch.optim.Adam, {"betas": (0.8, 0.99), "eps": 1e-6}),
        ("adamw", torch.optim.AdamW, {"betas": (0.8, 0.99), "weight_decay": 0.01}),
        ("nadam", torch.optim.NAdam, {"betas": (0.8, 0.99)}),
        ("rprop", torch.optim.Rprop, {}),
        ("lbfgs", torch.optim.LBFGS, {"max_iter": 7}),
    ],
)
def test_build_optimizer_passes_the_config(name: str, cls: type, group: dict) -> None:
    cfg = OptimConfig(name=name, lr=0.02, momentum=0.8, beta1=0.8, beta2=0.99, alpha=0.95,
                      eps=1e-6, weight_decay=0.01, lbfgs_iters=7)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(3))], cfg)
    assert type(opt) is cls
    assert opt.param_groups[0]["lr"] == 0.02
    for key, value in group.items():
        assert opt.param_groups[0][key] == value, key


def _adam_after_steps() -> tuple[torch.optim.Optimizer, torch.nn.Linear]:
    model = torch.nn.Linear(3, 2)
    extra = torch.nn.Parameter(torch.randn(4))
    opt = build_optimizer(model.parameters(), OptimConfig(name="adam", lr=0.01))
    opt.add_param_group({"params": [extra]})  # a second group must be updated too
    x = torch.randn(8, 3)
    for _ in range(3):
        opt.zero_grad()
        (model(x).pow(2).sum() + extra.pow(2).sum()).backward()
        opt.step()
    return opt, model


def test_update_hyperparameters_writes_every_group_and_keeps_state() -> None:
    opt, _ = _adam_after_steps()
    before = {
        p: {k: (v, v.clone()) for k, v in s.items() if isinstance(v, torch.Tensor)}
        for p, s in opt.state.items()
    }
    assert len(before) == 3 and all("exp_avg" in s for s in before.values())

    cfg = OptimConfig(name="adam", lr=0.01, beta1=0.5, beta2=0.95, eps=1e-4, weight_decay=0.1)
    update_hyperparameters(opt, cfg)

    assert len(opt.param_groups) == 2
    for group in opt.param_groups:
        assert tuple(group["betas"]) == (0.5, 0.95)
        assert group["eps"] == 1e-4
        assert group["weight_decay"] == 0.1
    for p, tensors in before.items():
        for key, (obj, value) in tensors.items():
            assert opt.state[p][key] is obj, key
            assert torch.equal(opt.state[p][key], value), key


def test_update_hyperparameters_momentum_keeps_buffers() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = build_optimizer([p], OptimConfig(name="momentum", lr=0.1, momentum=0.9))
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))]})
    p.grad = torch.tensor([1.0, 1.0])
    opt.step()
    buf = opt.state[p]["momentum_buffer"]
    saved = buf.clone()
    update_hyperparameters(opt, OptimConfig(name="momentum", lr=0.1, momentum=0.5,
                                            weight_decay=0.2))
    for group in opt.param_groups:
        assert group["momentum"] == 0.5 and group["weight_decay"] == 0.2
    assert opt.state[p]["momentum_buffer"] is buf
    assert torch.equal(buf, saved)
    # The next step uses the new momentum on the kept buffer:
    # g = grad + wd * p; buf = 0.5 * buf + g; p -= lr * buf.
    p_before = p.detach().clone()
    p.grad = torch.tensor([1.0, 1.0])
    opt.step()
    g = torch.tensor([1.0, 1.0]) + 0.2 * p_before
    expected = p_before - 0.1 * (0.5 * saved + g)
    assert torch.allclose(p.detach(), expected, atol=1e-6)


def test_updated_weight_decay_takes_effect() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = build_optimizer([p], OptimConfig(name="sgd", lr=0.1))
    update_hyperparameters(opt, OptimConfig(name="sgd", lr=0.1, weight_decay=0.5))
    p.grad = torch.zeros(2)
    opt.step()
    # plain SGD with L2: p <- p - lr * wd * p
    assert torch.allclose(p.detach(), torch.tensor([1.0, 2.0]) * (1 - 0.1 * 0.5))


def test_set_lr_sets_every_group() -> None:
    opt, _ = _adam_after_steps()
    set_lr(opt, 0.123)
    assert [g["lr"] for g in opt.param_groups] == [0.123, 0.123]


def test_nesterov_with_zero_momentum_is_rejected_as_a_config_error_or_works() -> None:
    try:
        cfg = Config().with_values({"optim.name": "nesterov", "optim.momentum": 0.0})
    except ConfigError:
        return  # rejected by validation: fine
    try:
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg.optim)
    except ConfigError:
        return  # rejected with a message the loop turns into CommandRejected: fine


# --- schedules --------------------------------------------------------------------------


def factors(cfg: ScheduleConfig, total: int, steps: int | None = None) -> list[float]:
    schedule = LRSchedule(cfg, total)
    return [schedule.factor(s) for s in range(total if steps is None else steps)]


def test_constant() -> None:
    assert factors(ScheduleConfig(name="constant"), 50) == [1.0] * 50


def test_step_schedule() -> None:
    cfg = ScheduleConfig(name="step", step_size=7, gamma=0.3)
    got = factors(cfg, 40)
    assert got == pytest.approx([0.3 ** (s // 7) for s in range(40)], rel=1e-12)
    assert got[6] == 1.0 and got[7] == pytest.approx(0.3) and got[14] == pytest.approx(0.09)


def test_exponential_schedule() -> None:
    got = factors(ScheduleConfig(name="exponential", gamma=0.9), 30)
    assert got == pytest.approx([math.exp(s * math.log(0.9)) for s in range(30)], rel=1e-12)


def test_cosine_schedule() -> None:
    total, low = 21, 0.1
    got = factors(ScheduleConfig(name="cosine", min_factor=low), total)
    assert got[0] == pytest.approx(1.0)
    assert got[-1] == pytest.approx(low)
    assert got[10] == pytest.approx((1 + low) / 2)  # halfway
    expected = [low + (1 - low) * (1 + math.cos(math.pi * s / (total - 1))) / 2
                for s in range(total)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert all(a > b for a, b in itertools.pairwise(got))


def test_cosine_to_zero_with_default_min_factor() -> None:
    got = factors(ScheduleConfig(name="cosine"), 11)
    assert got[0] == pytest.approx(1.0) and got[-1] == pytest.approx(0.0, abs=1e-12)


def _one_cycle_reference(p: float) -> float:
    start, peak, end, warm = 1 / 25, 1.0, 1e-4, 0.3
    if p <= warm:
        return start + (peak - start) * (1 - math.cos(math.pi * p / warm)) / 2
    q = (p - warm) / (1 - warm)
    return end + (peak - end) * (1 + math.cos(math.pi * q)) / 2


def test_one_cycle_schedule() -> None:
    total = 101  # progress = step / 100
    got = factors(ScheduleConfig(name="one_cycle"), total)
    assert got[0] == pytest.approx(1 / 25)
    assert got[30] == pytest.approx(1.0)
    assert max(got) == got[30]
    assert got[-1] == pytest.approx(1e-4)
    assert got == pytest.approx([_one_cycle_reference(s / 100) for s in range(total)], rel=1e-9)
    rising, falling = got[:31], got[30:]
    assert all(a < b for a, b in itertools.pairwise(rising))
    assert all(a > b for a, b in itertools.pairwise(falling))


def test_warmup_then_constant() -> None:
    got = factors(ScheduleConfig(name="constant", warmup_steps=4), 10)
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_schedule_starts_where_warmup_ends() -> None:
    cfg = ScheduleConfig(name="step", step_size=2, gamma=0.5, warmup_steps=5)
    got = factors(cfg, 12)
    expected = [(s + 1) / 5 for s in range(5)] + [0.5 ** ((s - 5) // 2) for s in range(5, 12)]
    assert got == pytest.approx(expected, rel=1e-12)
    # cosine spans the steps after warmup: 1 right after it, min_factor at the last step.
    # 22 steps: warmup 0..4, then 17 cosine steps 5..21 with progress (s - 5) / 16.
    cosine = factors(ScheduleConfig(name="cosine", warmup_steps=5), 22)
    assert cosine[4] == pytest.approx(1.0) and cosine[5] == pytest.approx(1.0)
    assert cosine[13] == pytest.approx(0.5) and cosine[21] == pytest.approx(0.0, abs=1e-12)


def test_total_steps_may_change() -> None:
    schedule = LRSchedule(ScheduleConfig(name="cosine"), 11)
    assert schedule.factor(10) == pytest.approx(0.0, abs=1e-12)
    schedule.total_steps = 21
    assert schedule.factor(10) == pytest.approx(0.5)
    assert LRSchedule(ScheduleConfig(name="cosine"), 0).factor(0) == pytest.approx(1.0)


def test_reduce_on_plateau() -> None:
    cfg = ScheduleConfig(name="reduce_on_plateau", gamma=0.5, patience=2, min_factor=0.2)
    schedule = LRSchedule(cfg, 100)
    # (val loss, decayed?, factor after)
    script = [
        (1.0, False, 1.0),  # first: an improvement
        (1.0, False, 1.0),  # equal is not better: 1 bad
        (1.1, True, 0.5),  # 2 bad = patience: decay, count restarts
        (1.2, False, 0.5),  # 1 bad
        (0.9, False, 0.5),  # better: count restarts
        (0.95, False, 0.5),
        (0.95, True, 0.25),
        (0.95, False, 0.25),
        (0.95, True, 0.2),  # 0.125 would be below min_factor: floor
        (0.95, False, 0.2),
        (0.95, False, 0.2),  # at the floor: no decay, so False
        (0.5, False, 0.2),
    ]
    for i, (loss, decayed, factor) in enumerate(script):
        assert schedule.observe(loss) is decayed, i
        assert schedule.plateau_factor == pytest.approx(factor), i
        assert schedule.factor(1000 + i) == pytest.approx(factor), i


def test_reduce_on_plateau_with_warmup() -> None:
    cfg = ScheduleConfig(name="reduce_on_plateau", gamma=0.1, patience=1, warmup_steps=2)
    schedule = LRSchedule(cfg, 10)
    schedule.observe(1.0)
    assert schedule.observe(2.0) is True
    assert schedule.factor(0) == pytest.approx(0.5)  # warmup comes first
    assert schedule.factor(5) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["constant", "step", "exponential", "cosine", "one_cycle"])
def test_observe_is_a_no_op_for_other_schedules(name: str) -> None:
    schedule = LRSchedule(ScheduleConfig(name=name, patience=1), 20)
    before = [schedule.factor(s) for s in range(20)]
    assert not any(schedule.observe(loss) for loss in (1.0, 2.0, 3.0, 4.0))
    assert [schedule.factor(s) for s in range(20)] == before


# --- objectives -------------------------------------------------------------------------


def test_auto_picks_by_task() -> None:
    cls = build_objective("auto", "classification", num_classes=4, num_targets=1)
    assert cls.name == "cross_entropy" and cls.num_outputs == 4
    reg = build_objective("auto", "regression", num_classes=0, num_targets=3)
    assert reg.name == "mse" and reg.num_outputs == 3 and reg.predict is None


def test_cross_entropy_matches_formula() -> None:
    obj = build_objective("cross_entropy", "classification", 3, 1)
    out = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    expected = -(out.exp() / out.exp().sum(1, keepdim=True))[torch.arange(6), labels].log()
    assert obj.fn(out, obj.targets(labels)).item() == pytest.approx(expected.mean().item(),
                                                                    rel=1e-5)
    assert torch.equal(obj.predict(out), out.argmax(1))


@pytest.mark.parametrize("name", ["cross_entropy", "bce_with_logits"])
def test_classification_loss_on_regression_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_objective(name, "regression", 0, 1)
    msg = str(info.value)
    assert "loss.name" in msg and name in msg and "mse" in msg


@pytest.mark.parametrize("name", ["mse", "l1", "smooth_l1"])
def test_regression_losses_on_regression(name: str) -> None:
    obj = build_objective(name, "regression", 0, 2)
    assert obj.num_outputs == 2 and obj.predict is None
    y = torch.randn(5, 2)
    assert torch.equal(obj.targets(y), y)
    out = y + 0.3
    expected = {"mse": 0.09, "l1": 0.3, "smooth_l1": 0.5 * 0.09}[name]  # |d| < 1: 0.5 d^2
    assert obj.fn(out, obj.targets(y)).item() == pytest.approx(expected, rel=1e-5)


def test_bce_two_classes_one_output_predicts_by_sign() -> None:
    obj = build_objective("bce_with_logits", "classification", 2, 1)
    assert obj.num_outputs == 1
    labels = torch.tensor([1, 0, 1, 0])
    targets = obj.targets(labels)
    assert targets.shape == (4, 1) and targets.dtype == torch.float32
    assert torch.equal(targets[:, 0], labels.float())
    out = torch.tensor([[2.0], [-1.0], [0.5], [-0.01]])
    assert obj.predict(out).tolist() == [1, 0, 1, 0]
    p = torch.sigmoid(out)
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    assert obj.fn(out, targets).item() == pytest.approx(expected.item(), rel=1e-5)


def test_bce_three_classes_one_hot() -> None:
    obj = build_objective("bce_with_logits", "classification", 3, 1)
    assert obj.num_outputs == 3
    labels = torch.tensor([2, 0, 1])
    targets = obj.targets(labels)
    assert torch.equal(targets, torch.eye(3)[labels])
    assert targets.dtype == torch.float32
    out = torch.tensor([[0.1, 0.2, 3.0], [1.0, -1.0, 0.0], [-2.0, 0.5, 0.4]])
    assert obj.predict(out).tolist() == [2, 0, 1]


@pytest.mark.parametrize("name", ["mse", "l1", "smooth_l1"])
def test_regression_losses_on_classes_use_one_hot(name: str) -> None:
    obj = build_objective(name, "classification", 4, 1)
    assert obj.num_outputs == 4 and obj.predict is not None
    labels = torch.tensor([3, 0, 2, 1, 3])
    targets = obj.targets(labels)
    assert torch.equal(targets, F.one_hot(labels, 4).float())
    out = torch.randn(5, 4)
    if name == "mse":
        expected = ((out - F.one_hot(labels, 4).float()) ** 2).mean()
        assert obj.fn(out, targets).item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(obj.predict(out), out.argmax(1))
