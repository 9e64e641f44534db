"""Per-layer statistics (trainlab.engine.stats) against independent reference computations.

Every figure is recomputed here from scratch: a manual forward pass with plain tensor
ops, ``torch.autograd.grad`` for the backward signal and the weight gradients, numpy for
moments and histograms. Nothing the instruments produce is used as a reference.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainlab.engine.stats as stats
from tests.conftest import of_type, run_loop, tiny_config
from trainlab.core.config import ModelConfig, StatsConfig
from trainlab.core.protocol import (
    LayerStats,
    LayerStatsSnapshot,
    Pause,
    RequestSnapshot,
    SetHyper,
    Step,
    Stop,
    to_json,
)
from trainlab.engine.loop import Trainer
from trainlab.engine.models import ScaledSigmoid, build_model
from trainlab.engine.stats import (
    ACT_SAMPLE_ROWS,
    HIST_BINS,
    HIST_SAMPLES,
    Instruments,
    find_rows,
    first_nonfinite,
)

EVERY_STEP = StatsConfig(every=1, hist_every=1)


def measure(model: nn.Module, x: torch.Tensor, loss_fn: Any, cfg: StatsConfig = EVERY_STEP
            ) -> LayerStatsSnapshot:
    """One tracked forward/backward without an update, as the init probe does."""
    inst = Instruments(model, x[:2], cfg)
    model.zero_grad(set_to_none=True)
    with inst.track(1, update=False) as tracker:
        loss = loss_fn(model(x))
        loss.backward()
        tracker.after_backward()
    snapshot = inst.take()
    assert snapshot is not None
    return snapshot


def no_forward_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


def pop_std(t: torch.Tensor) -> float:
    return float(np.std(t.detach().double().numpy()))


# --- 1. rows ----------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize("residual", [False, True])
def test_find_rows_of_built_mlp(norm: str, position: str, residual: bool) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(depth=3, width=6, activation="tanh", norm=norm, norm_position=position,
                      residual=residual)
    model = build_model(cfg, (5,), 3)
    model.train()
    rows = find_rows(model, torch.randn(2, 5))
    names = ["blocks.0.linear", "blocks.1.linear", "blocks.2.linear", "head"]
    assert [r.name for r in rows] == names
    assert [r.layer for r in rows] == [*(b.linear for b in model.blocks), model.head]
    assert [r.act_name for r in rows] == [
        "blocks.0.act", "blocks.1.act", "blocks.2.act", "head"]
    assert [r.act_module for r in rows] == [*(b.act for b in model.blocks), model.head]
    assert [r.act_kind for r in rows] == ["Tanh", "Tanh", "Tanh", ""]
    assert all(r.weight is r.layer.weight for r in rows)
    # The traced pass leaves no hook behind and the training mode as it was.
    assert no_forward_hooks(model)
    assert all(m.training for m in model.modules())


def test_find_rows_of_custom_sequential() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    model.eval()
    rows = find_rows(model, torch.randn(2, 4))
    assert [(r.name, r.act_name, r.act_kind) for r in rows] == [("0", "1", "ReLU"), ("2", "2", "")]
    assert rows[0].act_module is model[1] and rows[1].act_module is model[2]
    assert not any(m.training for m in model.modules())  # eval mode kept
    assert no_forward_hooks(model)


def test_find_rows_of_built_cnn() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="cnn", depth=2, width=6, channels=2, activation="relu")
    model = build_model(cfg, (1, 8, 8), 3)
    rows = find_rows(model, torch.randn(2, 1, 8, 8))
    assert [(r.name, r.act_name, r.act_kind) for r in rows] == [
        ("blocks.0.conv", "blocks.0.act", "ReLU"),
        ("blocks.1.conv", "blocks.1.act", "ReLU"),
        ("fc.linear", "fc.act", "ReLU"),
        ("head", "head", ""),
    ]
    assert [type(r.layer).__name__ for r in rows] == ["Conv2d", "Conv2d", "Linear", "Linear"]


def test_find_rows_forward_order_not_definition_order_and_unused_layers() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.late = nn.Linear(4, 2)  # defined first, runs last
            self.unused = nn.Linear(4, 4)  # never runs: no row
            self.early = nn.Linear(3, 4)
            self.act = nn.Sigmoid()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.late(self.act(self.early(x)))

    rows = find_rows(Net(), torch.randn(2, 3))
    assert [(r.name, r.act_kind) for r in rows] == [("early", "Sigmoid"), ("late", "")]


# --- 2. per-layer scalars against a manual forward pass --------------------------------


def hand_model() -> nn.Sequential:
    """Tanh, ReLU and sigmoid layers with saturated and dead units set by hand."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.Tanh(),
        nn.Linear(8, 8), nn.ReLU(),
        nn.Linear(8, 6), nn.Sigmoid(),
        nn.Linear(6, 3),
    )
    with torch.no_grad():
        model[0].weight[:4] *= 20.0  # tanh units 0-3: inputs scaled large -> saturated
        model[2].bias[:3] = -100.0  # ReLU units 0-2: 0 for every sample -> dead
        model[4].bias[:2] = 12.0  # sigmoid units 0-1 pinned near 1
        model[4].bias[2] = -12.0  # and unit 2 near 0
    return model


KINDS = ["Tanh", "ReLU", "Sigmoid", ""]


def manual_pass(model: nn.Sequential, x: torch.Tensor, target: torch.Tensor
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """loss, the four activation outputs and their gradients, from plain tensor ops."""
    w = [model[i].weight for i in (0, 2, 4, 6)]
    b = [model[i].bias for i in (0, 2, 4, 6)]
    a1 = torch.tanh(x @ w[0].T + b[0])
    a2 = torch.clamp_min(a1 @ w[1].T + b[1], 0.0)
    a3 = 1.0 / (1.0 + torch.exp(-(a2 @ w[2].T + b[2])))
    out = a3 @ w[3].T + b[3]
    loss = ((out - target) ** 2).mean()
    acts = [a1, a2, a3, out]
    grads = list(torch.autograd.grad(loss, acts, retain_graph=True))
    return loss, acts, grads


def act_reference(a: torch.Tensor, kind: str) -> dict[str, float | None]:
    s = a.detach()[:ACT_SAMPLE_ROWS].double().numpy()
    saturated = {
        "Tanh": float(np.mean(np.abs(s) > 0.99)),
        "Sigmoid": float(np.mean((s < 0.01) | (s > 0.99))),
    }.get(kind)
    # Dead units: 0 for every sample of the whole batch, not only of the sample.
    whole = a.detach().double().numpy()
    dead = float(np.mean(np.all(whole == 0.0, axis=0))) if kind == "ReLU" else None
    return {
        "act_mean": float(s.mean()),
        "act_std": float(s.std()),
        "act_min": float(s.min()),
        "act_max": float(s.max()),
        "saturated_frac": saturated,
        "dead_frac": dead,
        "zero_frac": float(np.mean(s == 0.0)),
    }


def assert_matches(row: LayerStats, ref: dict[str, Any], what: str, *,
                   abs_tol: float = 1e-5) -> None:
    for key, expected in ref.items():
        got = getattr(row, key)
        if expected is None:
            assert got is None, f"{what}.{key}: expected None, got {got}"
        else:
            assert got == pytest.approx(expected, rel=1e-4, abs=abs_tol), f"{what}.{key}"


@pytest.mark.parametrize("batch", [10, ACT_SAMPLE_ROWS + 44])
def test_scalars_match_a_manual_forward_pass(batch: int) -> None:
    model = hand_model()
    torch.manual_seed(1)
    x = torch.randn(batch, 6)
    x[ACT_SAMPLE_ROWS:] *= 10.0  # rows past the sample differ, so using them would show
    target = torch.randn(batch, 3)
    snap = measure(model, x, lambda out: F.mse_loss(out, target))

    loss, acts, grad_outs = manual_pass(model, x, target)
    weights = [model[i].weight for i in (0, 2, 4, 6)]
    weight_grads = torch.autograd.grad(loss, weights)

    assert snap.step == 1 and snap.sample_rows == ACT_SAMPLE_ROWS
    assert [r.name for r in snap.layers] == ["0", "2", "4", "6"]
    assert [r.kind for r in snap.layers] == ["Linear"] * 4
    assert [r.activation for r in snap.layers] == KINDS
    for row, a, kind, g_out, w, g in zip(
        snap.layers, acts, KINDS, grad_outs, weights, weight_grads, strict=True
    ):
        ref = act_reference(a, kind)
        assert_matches(row, ref, row.name)
        # The backward signal is measured on the same first rows as the activations.
        sampled = pop_std(g_out[:ACT_SAMPLE_ROWS])
        assert row.grad_out_std == pytest.approx(sampled, rel=1e-4, abs=1e-9)
        wn, gn = w.detach().double().numpy(), g.double().numpy()
        assert row.weight_norm == pytest.approx(np.linalg.norm(wn), rel=1e-5)
        assert row.weight_std == pytest.approx(wn.std(), rel=1e-4)
        assert row.grad_norm == pytest.approx(np.linalg.norm(gn), rel=1e-4, abs=1e-9)
        assert row.grad_std == pytest.approx(gn.std(), rel=1e-3, abs=1e-9)
        assert row.grad_max == pytest.approx(np.abs(gn).max(), rel=1e-4, abs=1e-9)
        assert row.update_ratio is None  # update=False: nothing was updated

    # The hand-built layers really show what they are meant to.
    tanh, relu, sigm = (act_reference(a, k) for a, k in zip(acts[:3], KINDS[:3], strict=True))
    assert tanh["saturated_frac"] >= 0.3
    assert relu["dead_frac"] >= 3 / 8 and relu["zero_frac"] > relu["dead_frac"] * 0.99
    assert sigm["saturated_frac"] >= 2 / 6
    if batch > ACT_SAMPLE_ROWS:
        # Over all rows more tanh units saturate: the snapshot used only the first ones.
        full = acts[0].detach().double().numpy()
        assert np.mean(np.abs(full) > 0.99) > snap.layers[0].saturated_frac + 0.02


def test_activation_sample_is_exactly_the_first_rows() -> None:
    """Shares use the first ACT_SAMPLE_ROWS samples; a unit alive only later is not dead."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        model[0].weight[0] = 1.0
        model[0].bias[0] = -3.0
    x = torch.randn(ACT_SAMPLE_ROWS + 40, 4) * 0.1
    x[ACT_SAMPLE_ROWS:] = 5.0  # unit 0: 20 - 3 > 0 on these rows only
    snap = measure(model, x, lambda out: out.pow(2).mean())
    a = torch.relu(x @ model[0].weight.T + model[0].bias).detach()
    sample = a[:ACT_SAMPLE_ROWS].double().numpy()
    row = snap.layers[0]
    assert row.zero_frac == pytest.approx(float(np.mean(sample == 0.0)), rel=1e-6)
    everything = a.double().numpy()
    assert row.dead_frac == pytest.approx(float(np.mean(np.all(everything == 0.0, axis=0))))
    # Unit 0 is 0 on every sampled row but alive later: dead by the sample, not by the batch.
    assert np.all(sample[:, 0] == 0.0) and not np.all(everything[:, 0] == 0.0)
    assert snap.layers[0].act_max < 5.0 < float(everything.max())


@pytest.mark.parametrize(
    ("act", "saturated", "dead"),
    [
        (ScaledSigmoid(), lambda s: np.abs(s) > 1.98, None),
        (nn.Hardtanh(), lambda s: np.abs(s) > 0.99, None),
        (nn.ReLU6(), None, True),
        (nn.LeakyReLU(0.01), None, None),
        (nn.GELU(), None, None),
        (nn.Identity(), None, None),
    ],
)
def test_saturation_and_dead_units_per_activation_kind(act: nn.Module, saturated: Any,
                                                        dead: Any) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 12), act, nn.Linear(12, 2))
    with torch.no_grad():
        model[0].weight[:5] *= 30.0  # pushed into the bounds where there are bounds
        model[0].bias[5:7] = -50.0  # 0 for every sample where the activation has a flat 0
    x = torch.randn(20, 3)
    snap = measure(model, x, lambda out: out.pow(2).sum())
    s = act(model[0](x)).detach().double().numpy()
    row = snap.layers[0]
    assert row.activation == type(act).__name__
    if saturated is None:
        assert row.saturated_frac is None
    else:
        expected = float(np.mean(saturated(s)))
        assert expected > 0.2
        assert row.saturated_frac == pytest.approx(expected, rel=1e-6)
    if dead is None:
        assert row.dead_frac is None
    else:
        expected = float(np.mean(np.all(s == 0.0, axis=0)))
        assert expected >= 2 / 12
        assert row.dead_frac == pytest.approx(expected, rel=1e-6)
    assert row.zero_frac == pytest.approx(float(np.mean(s == 0.0)), rel=1e-6, abs=1e-9)
    assert row.act_std == pytest.approx(float(s.std()), rel=1e-4)


def test_conv_dead_units_are_channels_and_stats_match() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, kernel_size=3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 2))
    with torch.no_grad():
        conv.bias[1] = -100.0  # channel 1 is 0 at every pixel of every sample
    x = torch.randn(6, 1, 5, 5)
    target = torch.randn(6, 2)
    snap = measure(model, x, lambda out: F.mse_loss(out, target))

    w, b = conv.weight.detach().requires_grad_(), conv.bias.detach()
    a = torch.clamp_min(F.conv2d(x, w, b, padding=1), 0.0)
    s = a.detach().double().numpy()  # (N, C, H, W)
    row = snap.layers[0]
    assert (row.name, row.kind, row.activation) == ("0", "Conv2d", "ReLU")
    per_channel_dead = np.all(s == 0.0, axis=(0, 2, 3))
    assert per_channel_dead.tolist()[1] is True
    assert row.dead_frac == pytest.approx(float(per_channel_dead.mean()))
    assert row.act_mean == pytest.approx(float(s.mean()), rel=1e-5)
    assert row.act_std == pytest.approx(float(s.std()), rel=1e-4)
    assert row.zero_frac == pytest.approx(float(np.mean(s == 0.0)))
    out = a.reshape(6, -1) @ model[3].weight.T + model[3].bias
    loss = F.mse_loss(out, target)
    g_a, g_w = torch.autograd.grad(loss, [a, w])
    assert row.grad_out_std == pytest.approx(pop_std(g_a), rel=1e-4)
    assert row.grad_norm == pytest.approx(float(g_w.norm()), rel=1e-4)


def test_after_backward_reads_raw_gradients_once() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    x = torch.randn(8, 4)
    inst = Instruments(model, x[:2], EVERY_STEP)
    with inst.track(1, update=False) as tracker:
        model(x).pow(2).sum().backward()
        raw = [float(model[i].weight.grad.norm()) for i in (0, 2)]
        tracker.after_backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # clipping comes after
        tracker.after_backward()  # ignored
    snap = inst.take()
    assert [r.grad_norm for r in snap.layers] == pytest.approx(raw, rel=1e-5)
    assert inst.take() is None  # a snapshot is taken once


def test_without_after_backward_gradients_are_not_measured_as_finite_numbers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    x = torch.randn(8, 4)
    inst = Instruments(model, x[:2], EVERY_STEP)
    with inst.track(1, update=False):
        model(x)  # forward only: activations measured, no gradients
    snap = inst.take()
    a = torch.tanh(model[0](x)).detach()
    assert snap.layers[0].act_mean == pytest.approx(float(a.mean()), rel=1e-5)
    assert all(r.grad_out_std is None for r in snap.layers)


# --- 3. update ratio --------------------------------------------------------------------


def sgd_step(model: nn.Module, lr: float) -> None:
    """Plain SGD, written out: w <- w - lr * grad."""
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(lr * p.grad)


def test_update_ratio_of_an_sgd_step() -> None:
    model = hand_model()
    torch.manual_seed(2)
    x, target = torch.randn(12, 6), torch.randn(12, 3)
    layers = [model[i] for i in (0, 2, 4, 6)]
    inst = Instruments(model, x[:2], EVERY_STEP)
    before = [m.weight.detach().clone() for m in layers]
    with inst.track(1) as tracker:
        model.zero_grad()
        F.mse_loss(model(x), target).backward()
        tracker.after_backward()
        grads = [m.weight.grad.clone() for m in layers]
        sgd_step(model, 0.05)
    snap = inst.take()
    for row, m, w0, g in zip(snap.layers, layers, before, grads, strict=True):
        w1 = m.weight.detach()
        expected = float((w1 - w0).norm() / w0.norm())
        assert row.update_ratio == pytest.approx(expected, rel=1e-4)
        # the step really is lr * grad: the reference is not trivially 0
        assert float((w1 - w0).norm()) == pytest.approx(0.05 * float(g.norm()), rel=1e-4)
        assert expected > 0
    # An untracked step in between does not disturb the next tracked step's ratio.
    model.zero_grad()
    F.mse_loss(model(x), target).backward()
    sgd_step(model, 0.05)
    before = [m.weight.detach().clone() for m in layers]
    with inst.track(2) as tracker:
        model.zero_grad()
        F.mse_loss(model(x), target).backward()
        tracker.after_backward()
        sgd_step(model, 0.05)
    snap = inst.take()
    for row, m, w0 in zip(snap.layers, layers, before, strict=True):
        w1 = m.weight.detach()
        assert row.update_ratio == pytest.approx(float((w1 - w0).norm() / w0.norm()), rel=1e-4)


def test_update_ratio_of_a_trainer_step(exact_schedule: None) -> None:
    trainer = Trainer(tiny_config(stats__every=1, optim__name="sgd", optim__lr=0.1))
    layers = [trainer.model.blocks[0].linear, trainer.model.head]
    for _ in range(2):
        before = [m.weight.detach().clone() for m in layers]
        trainer.train_step()
        (snap,) = trainer.tracked.take()
        for row, m, w0 in zip(snap.layers, layers, before, strict=True):
            w1 = m.weight.detach()
            expected = float((w1 - w0).norm() / w0.norm())
            assert expected > 0
            assert row.update_ratio == pytest.approx(expected, rel=1e-4)


# --- 4. histograms ----------------------------------------------------------------------


def strided_sample(t: torch.Tensor) -> np.ndarray:
    """At most HIST_SAMPLES values taken with a constant stride from the start."""
    flat = t.detach().reshape(-1).double().numpy()
    stride = max(1, flat.size // HIST_SAMPLES)
    return flat[::stride][:HIST_SAMPLES]


def assert_histogram(h: Any, values: torch.Tensor) -> None:
    sample = strided_sample(values)
    assert len(sample) <= HIST_SAMPLES
    assert len(h.counts) == HIST_BINS
    assert sum(h.counts) == int(np.isfinite(sample).sum())
    assert h.lo == pytest.approx(float(sample.min()), rel=1e-6, abs=1e-12)
    assert h.hi == pytest.approx(float(sample.max()), rel=1e-6, abs=1e-12)
    expected, _ = np.histogram(sample, bins=HIST_BINS, range=(h.lo, h.hi))
    diff = np.abs(np.asarray(h.counts) - expected)
    assert diff.sum() <= 4, (h.layer, h.quantity, diff)  # a value on a bin edge may move
    assert (diff == 0).sum() >= HIST_BINS - 3


def test_histograms_match_numpy_on_the_strided_sample() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 80), nn.Tanh(), nn.Linear(80, 3))
    x = torch.randn(ACT_SAMPLE_ROWS + 44, 128)
    target = torch.randn(len(x), 3)
    snap = measure(model, x, lambda out: F.mse_loss(out, target))

    w0, w1 = model[0].weight, model[2].weight
    a0 = torch.tanh(x @ w0.T + model[0].bias)
    out = a0 @ w1.T + model[2].bias
    g0, g1 = torch.autograd.grad(F.mse_loss(out, target), [w0, w1])
    expected = {
        ("0", "weight"): w0, ("0", "grad"): g0, ("0", "act"): a0[:ACT_SAMPLE_ROWS],
        ("2", "weight"): w1, ("2", "grad"): g1, ("2", "act"): out[:ACT_SAMPLE_ROWS],
    }
    assert {(h.layer, h.quantity) for h in snap.histograms} == set(expected)
    assert len(snap.histograms) == len(expected)
    assert w0.numel() > 2 * HIST_SAMPLES  # the big tensors are really sub-sampled
    for h in snap.histograms:
        assert all(isinstance(c, int) for c in h.counts)
        assert_histogram(h, expected[(h.layer, h.quantity)])


def test_no_histograms_when_hist_every_is_zero() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    snap = measure(model, torch.randn(5, 4), lambda out: out.sum(),
                   StatsConfig(every=1, hist_every=0))
    assert snap.histograms == ()
    assert len(snap.layers) == 2


def nonfinite_weight_model() -> tuple[nn.Sequential, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 40), nn.Tanh(), nn.Linear(40, 2))
    with torch.no_grad():
        model[0].weight.uniform_(1.0, 2.0)
    x = torch.randn(4, 50)
    inst = Instruments(model, x[:2], EVERY_STEP)  # rows traced while still finite
    with torch.no_grad():
        flat = model[0].weight.view(-1)
        flat[7], flat[100], flat[1001] = math.nan, math.inf, -math.inf
    with inst.track(1, update=False):
        pass
    snap = inst.take()
    (h,) = [h for h in snap.histograms if (h.layer, h.quantity) == ("0", "weight")]
    return model, h


def test_histogram_counts_only_finite_values() -> None:
    model, h = nonfinite_weight_model()
    sample = strided_sample(model[0].weight)
    assert not np.isfinite(sample).all()
    assert sum(h.counts) == int(np.isfinite(sample).sum())


def test_histogram_range_ignores_nonfinite_values() -> None:
    model, h = nonfinite_weight_model()
    sample = strided_sample(model[0].weight)
    finite = sample[np.isfinite(sample)]
    assert h.lo == pytest.approx(float(finite.min()), rel=1e-6)
    assert h.hi == pytest.approx(float(finite.max()), rel=1e-6)


# --- 5. hooks ---------------------------------------------------------------------------


def test_hooks_removed_after_tracked_steps_also_when_the_body_raises() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(8, 4)
    inst = Instruments(model, x[:2], EVERY_STEP)
    assert no_forward_hooks(model)
    with inst.track(1) as tracker:
        assert model[1]._forward_hooks and model[2]._forward_hooks  # on during the step
        model(x).sum().backward()
        tracker.after_backward()
    assert no_forward_hooks(model)
    assert inst.take() is not None

    with pytest.raises(RuntimeError, match="boom"), inst.track(2):
        model(x)
        raise RuntimeError("boom")
    assert no_forward_hooks(model)
    assert inst.take() is None  # no half-measured snapshot

    # The instruments still work afterwards, and an untracked forward adds nothing.
    model(x)
    snap = measure(model, x, lambda out: out.sum())
    assert snap.layers[0].act_mean == pytest.approx(float(torch.relu(model[0](x)).detach().mean()))
    assert no_forward_hooks(model)
    assert not torch.nn.modules.module._global_forward_hooks


def test_trainer_steps_leave_no_hooks() -> None:
    trainer = Trainer(tiny_config(stats__every=1, stats__hist_every=1))
    for _ in range(3):
        trainer.train_step()
    assert len(trainer.tracked.pending) >= 1
    assert no_forward_hooks(trainer.model)


# --- 6. through the loop ---------------------------------------------------------------


@pytest.fixture
def exact_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """No minimum time between snapshots: the step schedule alone decides."""
    monkeypatch.setattr(stats, "MIN_SCALAR_INTERVAL_S", 0.0)
    monkeypatch.setattr(stats, "MIN_HIST_INTERVAL_S", 0.0)


def snapshots(events: list[Any]) -> list[LayerStatsSnapshot]:
    return of_type(events, "LayerStatsSnapshot")


def test_snapshots_every_n_steps(exact_schedule: None) -> None:
    events = run_loop(tiny_config(stats__every=5, stats__hist_every=10))
    snaps = snapshots(events)
    assert [s.step for s in snaps] == [1, 5, 10, 15, 20]  # step 1: the net as initialized
    assert [bool(s.histograms) for s in snaps] == [True, False, True, False, True]
    names = [r.name for r in snaps[0].layers]
    assert names == ["blocks.0.linear", "head"]
    for s in snaps:
        assert [r.name for r in s.layers] == names
        assert all(r.update_ratio is not None and r.update_ratio > 0 for r in s.layers)


def test_snapshots_with_the_real_time_limit_stay_on_the_step_grid() -> None:
    snaps = snapshots(run_loop(tiny_config(stats__every=5)))
    assert snaps and snaps[0].step == 1  # the first step always shows the initial net
    assert all(s.step % 5 == 0 for s in snaps[1:])


@pytest.mark.slow
def test_the_budget_spaces_out_snapshots_that_cost_too_much(
        exact_schedule: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot made 50 ms dearer than a step of well under 5 ms: at a 1% budget one
    is paid for by more than 1,000 steps, so once three are measured (steps 5, 10, 15;
    step 1 has no plain step to compare with) none comes in 60 steps; with no budget,
    every 5 steps."""
    finish = stats.Tracker.finish

    def dear_finish(self: Any, step: int, *, update: bool) -> LayerStatsSnapshot:
        time.sleep(0.05)
        return finish(self, step, update=update)

    monkeypatch.setattr(stats.Tracker, "finish", dear_finish)
    capped = snapshots(run_loop(tiny_config(
        stats__every=5, stats__hist_every=0, stats__budget=0.01, run__max_steps=60)))
    assert [s.step for s in capped] == [1, 5, 10, 15]
    assert capped[-1].interval > 5 and capped[-1].interval % 5 == 0
    # Its own cost is in the overhead it reports: 3 x 50 ms of ~205 (step 1 paid 50 ms
    # too, before any step was measured to compare it with).
    assert capped[-1].overhead is not None and capped[-1].overhead > 0.3
    free = snapshots(run_loop(tiny_config(
        stats__every=5, stats__hist_every=0, stats__budget=0.0, run__max_steps=60)))
    assert [s.step for s in free] == [1, *range(5, 61, 5)]
    assert {s.interval for s in free} == {5}


def test_stats_off_gives_no_snapshot_and_no_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = {"module": 0, "tensor": 0}
    inside = [False]
    original_step = Trainer.train_step
    module_hook = nn.Module.register_forward_hook
    tensor_hook = torch.Tensor.register_hook

    def step(self: Trainer) -> int:
        inside[0] = True
        try:
            return original_step(self)
        finally:
            inside[0] = False

    def counting_module_hook(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        counts["module"] += inside[0]
        return module_hook(self, *args, **kwargs)

    def counting_tensor_hook(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        counts["tensor"] += inside[0]
        return tensor_hook(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", step)
    monkeypatch.setattr(nn.Module, "register_forward_hook", counting_module_hook)
    monkeypatch.setattr(torch.Tensor, "register_hook", counting_tensor_hook)

    events = run_loop(tiny_config(stats__every=0, stats__hist_every=1))
    assert of_type(events, "RunFinished")[0].reason == "completed"
    assert snapshots(events) == []
    assert counts == {"module": 0, "tensor": 0}

    # The counting works: with the instruments on, tracked steps do attach hooks.
    events = run_loop(tiny_config(stats__every=1))
    assert snapshots(events)
    assert counts["module"] > 0 and counts["tensor"] > 0


@pytest.mark.parametrize("histograms", [True, False])
def test_request_snapshot_with_stats_off(histograms: bool) -> None:
    commands = [Pause(), Step(3), RequestSnapshot(histograms), Step(3), Stop()]
    events = run_loop(tiny_config(stats__every=0), commands)
    snaps = snapshots(events)
    assert [s.step for s in snaps] == [4]
    assert bool(snaps[0].histograms) is histograms
    assert all(r.update_ratio is not None for r in snaps[0].layers)


def test_stats_every_is_hot(exact_schedule: None) -> None:
    commands = [Pause(), Step(5), SetHyper("stats.every", 2), Step(6), Stop()]
    events = run_loop(tiny_config(stats__every=5), commands)
    assert [(e.key, e.new) for e in of_type(events, "HyperChanged")] == [("stats.every", 2)]
    assert [s.step for s in snapshots(events)] == [1, 5, 6, 8, 10]


def plain(value: Any, path: str = "event") -> None:
    """Only plain data: dataclasses of str, int, float, bool, None, tuples, lists, dicts."""
    assert not isinstance(value, (torch.Tensor, np.ndarray, np.generic)), path
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            plain(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            plain(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            plain(item, f"{path}[{key!r}]")
    else:
        assert value is None or type(value) in (str, int, float, bool), (path, type(value))


def test_snapshots_contain_no_tensors(exact_schedule: None) -> None:
    events = run_loop(tiny_config(stats__every=2, stats__hist_every=4, run__max_steps=8))
    snaps = snapshots(events)
    assert [s.step for s in snaps] == [1, 2, 4, 6, 8]
    assert any(s.histograms for s in snaps)
    for s in snaps:
        plain(s)
        for row in s.layers:
            assert all(type(v) is float for v in (row.act_mean, row.act_std, row.weight_norm,
                                                  row.grad_norm, row.update_ratio))
        for h in s.histograms:
            assert type(h.lo) is float and all(type(c) is int for c in h.counts)
        to_json(s)  # strict JSON


def test_snapshot_gradients_are_taken_before_clipping(exact_schedule: None) -> None:
    events = run_loop(tiny_config(stats__every=1, reg__clip_norm=1e-4, run__max_steps=3))
    for s in snapshots(events):
        total = math.sqrt(sum(r.grad_norm**2 for r in s.layers))
        assert total > 1e-2  # the clipped norm would be at most 1e-4


# --- 7. NaN injected at a known layer ----------------------------------------------------

NAN_NET_SOURCE = textwrap.dedent('''
    import math

    import torch
    from torch import nn


    class NanGrad(torch.autograd.Function):
        """Identity forward, NaN gradient backward."""

        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return torch.full_like(grad, math.nan)


    class NanNet(nn.Module):
        """Goes non-finite at l2 (its activation, weight or the gradient flowing into its
        activation) from the ``bad_from``-th training-mode forward call on."""

        def __init__(self, n_in, n_out, mode, bad_from):
            super().__init__()
            self.l1, self.a1 = nn.Linear(n_in, 8), nn.Tanh()
            self.l2, self.a2 = nn.Linear(8, 8), nn.LeakyReLU(0.1)
            self.l3, self.a3 = nn.Linear(8, 8), nn.Tanh()
            self.head = nn.Linear(8, n_out)
            self.mode, self.bad_from, self.calls = mode, bad_from, 0

        def forward(self, x):
            self.calls += self.training
            bad = self.training and self.calls >= self.bad_from
            h = self.a1(self.l1(x))
            if bad and self.mode == "weight":
                with torch.no_grad():
                    self.l2.weight[0, 0] = math.nan
            z = self.l2(h)
            if bad and self.mode == "activation":
                z = z * math.inf
            h = self.a2(z)
            if bad and self.mode == "gradient":
                h = NanGrad.apply(h)
            return self.head(self.a3(self.l3(h)))
''')


def nan_net(mode: str, bad_from: int) -> nn.Module:
    namespace: dict[str, Any] = {}
    exec(compile(NAN_NET_SOURCE, "<nan_net>", "exec"), namespace)
    return namespace["NanNet"](5, 3, mode, bad_from)


@pytest.mark.parametrize("mode", ["activation", "weight", "gradient"])
def test_first_nonfinite_names_the_injected_layer(mode: str) -> None:
    torch.manual_seed(0)
    model = nan_net(mode, bad_from=1)
    model.train()
    x, target = torch.randn(8, 5), torch.randn(8, 3)
    snap = measure(model, x, lambda out: F.mse_loss(out, target))
    assert [r.name for r in snap.layers] == ["l1", "l2", "l3", "head"]
    assert first_nonfinite(snap) == ("l2", mode)
    # The layer before is untouched: its figures are the reference's.
    a1 = torch.tanh(x @ model.l1.weight.T + model.l1.bias).detach()
    assert snap.layers[0].act_mean == pytest.approx(float(a1.mean()), rel=1e-5)
    assert math.isfinite(snap.layers[0].weight_norm)
    if mode == "gradient":  # forward finite everywhere, gradient NaN from l2 down
        assert all(math.isfinite(r.act_mean) for r in snap.layers)
        assert math.isfinite(snap.layers[2].grad_norm) and math.isnan(snap.layers[1].grad_norm)


def nan_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, bad_from: int,
            **changes: Any) -> list[Any]:
    monkeypatch.chdir(tmp_path)
    name = f"nan_net_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(
        NAN_NET_SOURCE
        + f"\n\ndef build(input_shape, num_outputs):\n"
        f"    return NanNet(input_shape[0], num_outputs, {mode!r}, {bad_from})\n"
    )
    config = tiny_config(model__arch="custom", model__factory=f"{name}:build", optim__lr=0.05,
                         **changes)
    return run_loop(config)


@pytest.mark.parametrize("every", [0, 1])
@pytest.mark.parametrize("mode", ["activation", "gradient"])
def test_loop_reports_nonfinite_once_at_the_bad_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exact_schedule: None, mode: str, every: int
) -> None:
    events = nan_run(tmp_path, monkeypatch, mode, 3, stats__every=every)
    detected = of_type(events, "NonFiniteDetected")
    assert len(detected) == 1
    # the activation NaN makes the loss of step 3 NaN; the gradient NaN shows in the
    # snapshot of step 3 when tracked, else in the loss of step 4 (weights now NaN)
    expected_step = 3 if mode == "activation" or every else 4
    assert detected[0].step == expected_step
    assert detected[0].layer in detected[0].message
    assert of_type(events, "RunFinished")[0].reason == "non_finite"


NAN_AFTER_UPDATE = (
    "BUG: engine/stats.py Tracker.finish measures weight_norm after the optimizer step, "
    "and first_nonfinite checks weights first: the NaN gradients of the bad step make "
    "every upstream weight NaN, so the loop always reports the first layer ('l1', "
    "'weight') instead of the layer where the NaN appeared"
)


@pytest.mark.parametrize("mode", ["activation", "gradient"])
def test_loop_tracked_step_names_the_injected_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exact_schedule: None, mode: str
) -> None:
    events = nan_run(tmp_path, monkeypatch, mode, 3, stats__every=1)
    (detected,) = of_type(events, "NonFiniteDetected")
    assert (detected.step, detected.layer, detected.where) == (3, "l2", mode)


def test_loop_untracked_step_names_the_injected_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = nan_run(tmp_path, monkeypatch, "activation", 3, stats__every=0)
    (detected,) = of_type(events, "NonFiniteDetected")
    assert (detected.step, detected.layer, detected.where) == (3, "l2", "activation")


# --- 8. first_nonfinite on hand-made snapshots -------------------------------------------


def layer(name: str, **changes: Any) -> LayerStats:
    fields = {
        "name": name, "kind": "Linear", "activation": "Tanh", "act_mean": 0.0, "act_std": 1.0,
        "act_min": -1.0, "act_max": 1.0, "saturated_frac": 0.0, "dead_frac": None,
        "zero_frac": 0.0, "grad_out_std": 0.1, "weight_norm": 1.0, "weight_std": 0.1,
        "grad_norm": 0.1, "grad_std": 0.01, "grad_max": 0.1, "update_ratio": 1e-3,
    }
    fields.update(changes)
    return LayerStats(**fields)


def snapshot_of(*rows: LayerStats) -> LayerStatsSnapshot:
    return LayerStatsSnapshot(step=7, layers=rows, histograms=(), sample_rows=ACT_SAMPLE_ROWS)


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{}, {}, {}], None),
        ([{"grad_out_std": None}, {}, {"grad_out_std": None}], None),
        # forward order for weights and activations
        ([{}, {"act_mean": NAN}, {"act_mean": NAN}], ("b", "activation")),
        ([{}, {"act_std": INF}, {}], ("b", "activation")),
        ([{}, {"weight_norm": INF}, {"act_mean": NAN}], ("b", "weight")),
        ([{"act_mean": -INF}, {"weight_norm": NAN}, {}], ("a", "activation")),
        ([{}, {"weight_norm": NAN, "act_mean": NAN}, {}], ("b", "weight")),
        # forward problems come before any gradient problem
        ([{"grad_norm": NAN}, {}, {"act_std": NAN, "grad_norm": NAN}], ("c", "activation")),
        # backward order (from the output) for gradients
        ([{"grad_norm": NAN}, {"grad_norm": NAN}, {}], ("b", "gradient")),
        ([{"grad_norm": INF}, {}, {"grad_out_std": NAN}], ("c", "gradient")),
        ([{"grad_out_std": NAN}, {"grad_out_std": None}, {}], ("a", "gradient")),
    ],
)
def test_first_nonfinite_order(rows: list[dict[str, Any]], expected: Any) -> None:
    snap = snapshot_of(*(layer(name, **r) for name, r in zip("abc", rows, strict=True)))
    assert first_nonfinite(snap) == expected


# --- bugs found -----------------------------------------------------------------------


def test_shared_activation_module_gives_each_layer_its_own_statistics() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2, self.head = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 2)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.act(self.l2(self.act(self.l1(x)))))

    torch.manual_seed(0)
    model = Shared()
    x = torch.randn(10, 4)
    snap = measure(model, x, lambda out: out.pow(2).mean())
    assert [(r.name, r.activation) for r in snap.layers] == [
        ("l1", "ReLU"), ("l2", "ReLU"), ("head", "")]
    with torch.no_grad():
        a1 = torch.clamp_min(x @ model.l1.weight.T + model.l1.bias, 0.0)
        a2 = torch.clamp_min(a1 @ model.l2.weight.T + model.l2.bias, 0.0)
    assert snap.layers[0].act_mean == pytest.approx(float(a1.mean()), rel=1e-5)
    assert snap.layers[1].act_mean == pytest.approx(float(a2.mean()), rel=1e-5)
    assert snap.layers[1].act_std == pytest.approx(pop_std(a2), rel=1e-4)


def test_activation_std_with_a_large_mean() -> None:
    torch.manual_seed(0)
    head = nn.Linear(4, 3)
    with torch.no_grad():
        head.weight.mul_(0.01)
        head.bias.fill_(100.0)  # outputs ~100 +- 0.01, like a regression head for big targets
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), head)
    x = torch.randn(16, 4)
    snap = measure(model, x, lambda out: out.mean())
    out = model(x).detach()
    assert snap.layers[1].act_mean == pytest.approx(float(out.double().mean()), rel=1e-6)
    assert snap.layers[1].act_std == pytest.approx(pop_std(out), rel=1e-2)


def test_weight_std_of_constant_weights_is_zero() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 300), nn.Tanh(), nn.Linear(300, 2))
    nn.init.constant_(model[0].weight, 0.3)
    snap = measure(model, torch.randn(6, 4), lambda out: out.sum())
    assert float(np.std(model[0].weight.detach().double().numpy())) == 0.0
    assert snap.layers[0].weight_std == pytest.approx(0.0, abs=1e-6)


def test_a_skipped_layer_is_not_a_nonfinite_activation() -> None:
    class LayerDrop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.a1 = nn.Linear(4, 6), nn.Tanh()
            self.l2, self.a2 = nn.Linear(6, 6), nn.Tanh()
            self.head = nn.Linear(6, 2)
            self.skip = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a1(self.l1(x))
            if not (self.training and self.skip):
                h = h + self.a2(self.l2(h))
            return self.head(h)

    torch.manual_seed(0)
    model = LayerDrop()
    x = torch.randn(8, 4)
    inst = Instruments(model, x[:2], EVERY_STEP)
    model.train()
    model.skip = True  # this tracked step drops block l2: everything is finite
    with inst.track(1, update=False) as tracker:
        loss = model(x).pow(2).mean()
        loss.backward()
        tracker.after_backward()
    snap = inst.take()
    assert math.isfinite(loss.item())
    assert first_nonfinite(snap) is None


def test_budget_spaces_snapshots_to_a_multiple_of_every() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(8, 3)
    inst = Instruments(model, x[:2], StatsConfig(every=10, budget=0.02))
    assert inst.interval() == 10  # nothing measured yet: stats.every
    for _ in range(50):
        inst.record(0.010, tracked=False)  # an untracked step: 10 ms
    with inst.track(60) as tracker:  # the first tracked step builds the buffer layout
        model(x).pow(2).mean().backward()
        tracker.after_backward()
    inst.record(0.510, tracked=True)  # 500 ms more, paid once: not a snapshot's price
    inst.record(0.015, tracked=True)
    inst.record(0.015, tracked=True)  # snapshots cost 5 ms more
    # Two prices are not enough to widen on (with the layout's step they would be
    # three, median 5 ms, and the interval 30 already).
    assert inst.interval() == 10
    inst.record(0.011, tracked=True)  # 5, 5 and 1 ms: the median is 5
    # 5 ms every k steps of 10 ms stays under 2% when k >= 5 / (0.02 * 10) = 25.
    assert inst.interval() == 30  # the next multiple of 10
    inst.record(0.510, tracked=True)  # one step slowed by something else
    assert inst.interval() == 30  # the median of 5, 5, 1, 500 ms is still 5
    spent = 0.5 + 0.005 + 0.005 + 0.001 + 0.5
    assert inst.overhead == pytest.approx(
        spent / (0.5 + 0.510 + 0.015 + 0.015 + 0.011 + 0.510), rel=1e-6)
    inst.cfg = StatsConfig(every=10, budget=0.0)
    assert inst.interval() == 10  # no limit: the fixed cadence again
    inst.cfg = StatsConfig(every=0, budget=0.02)
    assert inst.interval() == 0  # off stays off


# --- the fused reduction: every row of one buffer against a per-layer reference ---------


def mixed_model() -> nn.Sequential:
    """Conv and linear layers, ReLU, tanh and sigmoid rows in one buffer; sizes that are
    not multiples of stats.CHUNK (so segments end in padding), tanh pushed into
    saturation (so the padding repeats a saturated first value)."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(3, 5, 3, padding=1), nn.Tanh(),
        nn.Flatten(), nn.Linear(125, 7), nn.Sigmoid(),
        nn.Linear(7, 3),
    )
    with torch.no_grad():
        model[0].bias[1] = -50.0  # ReLU channel 1: dead
        model[2].weight.mul_(40.0)  # tanh: mostly saturated
        model[5].bias[:2] = 9.0  # sigmoid units 0-1 near 1
    return model


MIXED_KINDS = ["ReLU", "Tanh", "Sigmoid", ""]


def mixed_reference(model: nn.Sequential, x: torch.Tensor, target: torch.Tensor
                    ) -> list[dict[str, Any]]:
    """Every figure of every row from a manual forward pass, autograd and numpy."""
    w = [model[i].weight for i in (0, 2, 5, 7)]
    b = [model[i].bias for i in (0, 2, 5, 7)]
    a0 = torch.clamp_min(F.conv2d(x, w[0], b[0], padding=1), 0.0)
    a1 = torch.tanh(F.conv2d(a0, w[1], b[1], padding=1))
    a2 = torch.sigmoid(a1.reshape(len(x), -1) @ w[2].T + b[2])
    out = a2 @ w[3].T + b[3]
    acts = [a0, a1, a2, out]
    loss = F.mse_loss(out, target)
    grad_outs = torch.autograd.grad(loss, acts, retain_graph=True)
    grads = torch.autograd.grad(loss, w)
    refs = []
    for a, kind, g_out, wt, g in zip(acts, MIXED_KINDS, grad_outs, w, grads, strict=True):
        ref: dict[str, Any] = act_reference(a, kind)
        if kind == "ReLU":  # conv units are channels: dead over samples and pixels
            whole = a.detach().double().numpy()
            ref["dead_frac"] = float(np.mean(np.all(whole == 0.0, axis=(0, 2, 3))))
        wn, gn = wt.detach().double().numpy(), g.double().numpy()
        ref.update(grad_out_std=pop_std(g_out[:ACT_SAMPLE_ROWS]),
                   weight_norm=float(np.linalg.norm(wn)), weight_std=float(wn.std()),
                   grad_norm=float(np.linalg.norm(gn)), grad_std=float(gn.std()),
                   grad_max=float(np.abs(gn).max()))
        refs.append(ref)
    return refs


def assert_rows_match(snap: LayerStatsSnapshot, refs: list[dict[str, Any]]) -> None:
    assert [r.activation for r in snap.layers] == MIXED_KINDS
    for row, ref in zip(snap.layers, refs, strict=True):
        assert_matches(row, ref, row.name, abs_tol=1e-7)


@pytest.mark.parametrize("batch", [ACT_SAMPLE_ROWS + 6, 9])
def test_fused_rows_match_a_per_layer_reference(batch: int) -> None:
    model = mixed_model()
    torch.manual_seed(4)
    x, target = torch.randn(batch, 1, 5, 5), torch.randn(batch, 3)
    sizes = [ACT_SAMPLE_ROWS * 3 * 25, ACT_SAMPLE_ROWS * 5 * 25, ACT_SAMPLE_ROWS * 7]
    assert all(n % stats.CHUNK for n in sizes)  # every activation segment is padded
    snap = measure(model, x, lambda out: F.mse_loss(out, target))
    refs = mixed_reference(model, x, target)
    assert refs[1]["saturated_frac"] > 0.5 and refs[0]["dead_frac"] >= 1 / 3
    assert_rows_match(snap, refs)


def test_fused_rows_follow_changing_batch_sizes(exact_schedule: None) -> None:
    """A smaller batch needs another buffer layout (and the weights before the update
    move there); the next full batch goes back. Every snapshot matches the reference,
    and the histograms of short tensors count only their real values."""
    model = mixed_model()
    layers = [model[i] for i in (0, 2, 5, 7)]
    inst = Instruments(model, torch.zeros(2, 1, 5, 5), EVERY_STEP)
    torch.manual_seed(5)
    for step, batch in enumerate([70, 11, 70, 11, 3], start=1):
        x, target = torch.randn(batch, 1, 5, 5), torch.randn(batch, 3)
        refs = mixed_reference(model, x, target)
        before = [m.weight.detach().clone() for m in layers]
        with inst.track(step) as tracker:
            model.zero_grad()
            F.mse_loss(model(x), target).backward()
            tracker.after_backward()
            sgd_step(model, 0.01)
        snap = inst.take()
        assert_rows_match(snap, refs)
        for row, m, w0 in zip(snap.layers, layers, before, strict=True):
            expected = float((m.weight.detach() - w0).norm() / w0.norm())
            assert row.update_ratio == pytest.approx(expected, rel=1e-4)
        assert len(snap.histograms) == 12
        sample = min(batch, ACT_SAMPLE_ROWS)
        act_sizes = [sample * 3 * 25, sample * 5 * 25, sample * 7, sample * 3]
        for h in snap.histograms:
            k = [r.name for r in snap.layers].index(h.layer)
            if h.quantity == "weight":
                assert_histogram(h, before[k])  # conv 0 has 27 weights: the rest filler
            size = act_sizes[k] if h.quantity == "act" else before[k].numel()
            assert sum(h.counts) == min(size, HIST_SAMPLES)


def test_a_nan_row_leaves_the_other_rows_of_the_buffer_intact() -> None:
    model = mixed_model()
    torch.manual_seed(6)
    x, target = torch.randn(20, 1, 5, 5), torch.randn(20, 3)
    refs = mixed_reference(model, x, target)
    with torch.no_grad():
        model[5].weight[0, 0] = math.nan  # the sigmoid row's activations turn NaN
    snap = measure(model, x, lambda out: F.mse_loss(out, target))
    relu, tanh, sigm, head = snap.layers
    assert first_nonfinite(snap) == ("5", "weight")
    for key in ("act_mean", "act_std", "act_min", "act_max", "zero_frac", "dead_frac"):
        assert getattr(relu, key) == pytest.approx(refs[0][key], rel=1e-4, abs=1e-7), key
    assert tanh.act_std == pytest.approx(refs[1]["act_std"], rel=1e-4)
    assert tanh.saturated_frac == pytest.approx(refs[1]["saturated_frac"], rel=1e-4)
    assert relu.weight_norm == pytest.approx(refs[0]["weight_norm"], rel=1e-5)
    # The NaN row: moments NaN, and its shares not measurable (NaN), not 0.
    assert math.isnan(sigm.act_mean) and math.isnan(sigm.zero_frac)
    assert math.isnan(sigm.saturated_frac)
    assert math.isnan(head.act_mean) and math.isnan(sigm.weight_norm)


def test_exploding_activations_show_their_size() -> None:
    """Values whose float32 squares overflow are summed again in float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Identity(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.mul_(1e21)
    x = torch.randn(8, 4)
    snap = measure(model, x, lambda out: out.sum())
    a = model[0](x).detach()
    assert math.isfinite(snap.layers[0].act_std)
    assert snap.layers[0].act_std == pytest.approx(pop_std(a), rel=1e-4)
    assert snap.layers[0].weight_norm == pytest.approx(
        float(np.linalg.norm(model[0].weight.detach().double().numpy())), rel=1e-5)


def test_a_constant_backward_signal_has_std_zero() -> None:
    """out.mean(): every output gets the gradient 1/N, a mean that dwarfs its spread."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    snap = measure(model, torch.randn(50, 4), lambda out: out.mean())
    assert snap.layers[1].grad_out_std == 0.0
    assert snap.layers[0].grad_out_std > 0.0


def test_float64_models_are_measured_in_float64() -> None:
    model = mixed_model().double()
    torch.manual_seed(4)
    x, target = torch.randn(30, 1, 5, 5).double(), torch.randn(30, 3).double()
    snap = measure(model, x, lambda out: F.mse_loss(out, target))
    assert_rows_match(snap, mixed_reference(model, x, target))


def test_buffers_of_stats_off_at_start_come_at_the_first_tracked_step_per_batch_shape() -> None:
    model = mixed_model()
    inst = Instruments(model, torch.zeros(2, 1, 5, 5), StatsConfig(every=0))
    assert inst._layouts == {}  # stats off: nothing allocated
    for step, batch in enumerate([70, 11, 70, 11], start=1):
        x = torch.randn(batch, 1, 5, 5)
        with inst.track(step, update=False) as tracker:
            model(x).sum().backward()
            tracker.after_backward()
        assert inst.take() is not None
    # One layout per sample shape; the first step's shapeless guess was dropped.
    assert len(inst._layouts) == 2 <= stats.MAX_LAYOUTS


def test_instruments_on_from_the_start_make_their_buffers_with_the_model() -> None:
    """Step 1 (the network as initialized) then builds nothing, so its extra time is a
    snapshot's price like any other's."""
    model = mixed_model()
    inst = Instruments(model, torch.zeros(2, 1, 5, 5), StatsConfig(every=10))
    assert len(inst._layouts) == 1 and not inst._built_layout
    layout = next(iter(inst._layouts.values()))
    with inst.track(1) as tracker:
        model(torch.randn(stats.ACT_SAMPLE_ROWS + 6, 1, 5, 5)).sum().backward()
        tracker.after_backward()
        assert not inst._built_layout
    assert inst.take() is not None
    assert list(inst._layouts.values()) == [layout]  # the one made up front was used


# --- finite values past float32's range ---------------------------------------------
# An exploding run's weights reach +-3e38 before they overflow: differences and sums of
# such finite values overflow float32 (3e38 - -3e38), and the figures must still be the
# float64 truth, the histograms included (their range once made a negative bin index).

FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def huge_weight_model() -> nn.Sequential:
    """Linear -> Identity -> Linear whose first weights alternate between huge values
    (+3.4e38 or -1.7e38) and values in [-1, 1]: finite, but their span is past float32's
    largest value. (The small ones fall inside a bin: float32 cannot place values within
    ~1e31 of a bin edge this wide, and the test is not about that.)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 40), nn.Identity(), nn.Linear(40, 2))
    with torch.no_grad():
        flat = model[0].weight.view(-1)
        flat.uniform_(-1.0, 1.0)
        flat[::2] = torch.where(flat[::2] > 0, 0.99, -0.5) * FLOAT32_MAX
    return model


def assert_histogram_float64(h: Any, values: torch.Tensor) -> None:
    sample = strided_sample(values).astype(np.float64)
    finite = sample[np.isfinite(sample)]
    assert h.lo == float(finite.min()) and h.hi == float(finite.max())
    expected, _ = np.histogram(finite, bins=HIST_BINS, range=(h.lo, h.hi))
    assert sum(h.counts) == len(finite)
    assert np.abs(np.asarray(h.counts) - expected).sum() <= 2  # a value on a bin edge


def test_weights_spanning_more_than_float32_are_measured_in_float64() -> None:
    model = huge_weight_model()
    w = model[0].weight.detach().double().numpy()
    assert w.max() - w.min() > FLOAT32_MAX  # the span overflows float32
    x = torch.randn(8, 300) * 1e-30  # activations stay finite
    snap = measure(model, x, lambda out: out.sum())
    row = snap.layers[0]
    assert row.weight_norm == pytest.approx(float(np.linalg.norm(w)), rel=1e-6)
    assert row.weight_std == pytest.approx(float(w.std()), rel=1e-6)
    (h,) = [h for h in snap.histograms if (h.layer, h.quantity) == ("0", "weight")]
    assert_histogram_float64(h, model[0].weight)
    assert first_nonfinite(snap) is None  # finite values are not called non-finite


def test_huge_values_mixed_with_nan_and_inf_keep_the_histogram_of_the_finite_ones() -> None:
    model = huge_weight_model()
    with torch.no_grad():
        flat = model[0].weight.view(-1)
        flat[1], flat[3], flat[5] = math.nan, math.inf, -math.inf  # in the strided sample
    snap = measure(model, torch.randn(8, 300) * 1e-30, lambda out: out.sum())
    (h,) = [h for h in snap.histograms if (h.layer, h.quantity) == ("0", "weight")]
    assert_histogram_float64(h, model[0].weight)
    assert math.isnan(snap.layers[0].weight_norm)  # a NaN among them: not measurable
    assert first_nonfinite(snap) == ("0", "weight")


def test_huge_gradients_and_activations_are_measured_in_float64() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 300), nn.Identity(), nn.Linear(300, 1))
    with torch.no_grad():
        model[2].weight.fill_(1.0)
        model[2].weight[0, ::2] = -1.0
    x = torch.randn(6, 4)
    x[:, 0] = 1.0

    def loss_fn(out: torch.Tensor) -> torch.Tensor:
        return out.sum() * 1e37  # backward signals ~+-1e37, the weight gradients ~+-1e38

    with torch.no_grad():
        model[0].weight[::2] *= 1e36  # activations of alternating sign near 1e36
    snap = measure(model, x, loss_fn)
    a = model[0](x).detach().double().numpy()
    assert np.isfinite(a).all()
    loss = loss_fn(model(x))
    grad = torch.autograd.grad(loss, model[0].weight)[0].double().numpy()
    assert np.isfinite(grad).all()
    row = snap.layers[0]
    assert row.act_mean == pytest.approx(float(a[:ACT_SAMPLE_ROWS].mean()), rel=1e-5, abs=1e30)
    assert row.act_std == pytest.approx(float(a[:ACT_SAMPLE_ROWS].std()), rel=1e-5)
    assert row.grad_norm == pytest.approx(float(np.linalg.norm(grad)), rel=1e-5)
    assert row.grad_std == pytest.approx(float(grad.std()), rel=1e-5)
    for h in snap.histograms:
        assert h.lo <= h.hi
        assert math.isfinite(h.lo) and math.isfinite(h.hi)
    (gh,) = [h for h in snap.histograms if (h.layer, h.quantity) == ("0", "grad")]
    assert_histogram_float64(gh, torch.from_numpy(grad).float())


def test_an_update_that_overflows_float32_has_its_float64_ratio() -> None:
    """Weights near +-3e38 that change sign: after - before overflows float32."""
    model = huge_weight_model()
    x = torch.randn(8, 300) * 1e-30
    inst = Instruments(model, x[:2], EVERY_STEP)
    before = model[0].weight.detach().double().clone()
    with inst.track(1) as tracker:
        model(x).sum().backward()
        tracker.after_backward()
        with torch.no_grad():
            model[0].weight.neg_()  # the "update": every weight flips sign
    snap = inst.take()
    after = model[0].weight.detach().double()
    expected = float((after - before).norm() / before.norm())
    assert snap.layers[0].update_ratio == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(2.0, rel=1e-6)  # the reference is what it seems
