"""Per-layer statistics: the engine's instruments, paid for only on tracked steps.

A *row* is a weight layer (Linear or Conv) together with the activation that follows
it in forward order (the first activation module before the next weight layer; the
layer's own output when none follows, as for the head). For each row a tracked step
measures the activations, the gradient flowing back into them, the weights, their
gradients and the size of the step's update.

Costs (DESIGN.md section 6):
- untracked steps: nothing; no hook is attached between tracked steps;
- tracked steps: forward hooks on the rows' activation modules and one tensor hook per
  activation output, attached for the step and removed after it; every reduction stays
  on the device (moments from ``sum`` and ``dot``, ``_foreach_norm`` for all weights at
  once); the results are stacked into one matrix that crosses to the host in one
  transfer (one host-device sync per snapshot);
- activation statistics use the first ``ACT_SAMPLE_ROWS`` samples of the batch;
  histograms ``HIST_SAMPLES`` strided values in ``HIST_BINS`` bins over that tensor's
  own min..max, computed on the device (no data-dependent range sync).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from engine.config import StatsConfig
from engine.init import WEIGHT_LAYERS
from engine.models import ACTIVATION_BUILDERS, trace_forward
from engine.protocol import Histogram, LayerStats, LayerStatsSnapshot

TANH_SATURATION = 0.99
"""tanh units with |a| > 0.99 are saturated: the slope there is below 0.02."""
SIGMOID_SATURATION = 0.01
"""sigmoid units below 0.01 or above 0.99 are saturated (slope below 0.01)."""
SCALED_SIGMOID_SATURATION = 1.98
"""4*sigmoid(x)-2 ranges over (-2, 2); |a| > 1.98 is the same 99% as tanh's 0.99."""
ACT_SAMPLE_ROWS = 256
"""Activation statistics (and dead units) use at most this many samples of the batch."""
HIST_BINS = 32
HIST_SAMPLES = 4096
"""Histograms bin at most this many strided values: full-tensor binning was the most
expensive statistic when measured."""
MIN_SCALAR_INTERVAL_S = 0.1
"""Scalar snapshots at most ~10 a second, whatever stats.every says."""
MIN_HIST_INTERVAL_S = 1.0
"""Histograms at most once a second."""

# The activation kinds whose statistics have a meaning beyond mean and std.
_BOUNDED = {"Tanh", "Sigmoid", "ScaledSigmoid", "Hardtanh"}
_DEAD_CAN_HAPPEN = {"ReLU", "ReLU6"}
"""Units of these output exactly 0 for every input once dead (ReLU's flat half)."""
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = tuple(
    {type(build()) for build in ACTIVATION_BUILDERS.values()}
    | {nn.ReLU6, nn.PReLU, nn.SELU, nn.CELU, nn.Softplus, nn.Mish, nn.Hardtanh, nn.Hardswish}
)

# Column order of the per-row scalar matrix (one device tensor, one transfer).
COLUMNS = (
    "act_mean", "act_std", "act_min", "act_max", "saturated_frac", "dead_frac", "zero_frac",
    "grad_out_std", "weight_norm", "weight_std", "grad_norm", "grad_std", "grad_max",
    "update_ratio",
)
_COL = {name: i for i, name in enumerate(COLUMNS)}


@dataclass
class Row:
    """One weight layer and the module whose output counts as its activation."""

    name: str
    layer: nn.Module
    act_name: str
    act_module: nn.Module
    act_kind: str
    """Class name of the activation ('' when the row uses the layer's own output)."""
    act_call: int = 0
    """Which call of ``act_module`` in a forward pass is this row's (one activation
    module may follow several layers)."""

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight


def find_rows(model: nn.Module, example: torch.Tensor) -> list[Row]:
    """The statistic rows of ``model``, in forward order, from one traced forward pass.

    Weight layers that do not run in the forward pass get no row.
    """
    names = {module: name for name, module in model.named_modules()}
    tracked_types = WEIGHT_LAYERS + ACTIVATION_TYPES
    order = [m for m, _ in trace_forward(model, example, lambda m: isinstance(m, tracked_types))]
    rows: list[Row] = []
    calls: dict[nn.Module, int] = {}
    for module in order:
        call = calls[module] = calls.get(module, -1) + 1
        if isinstance(module, WEIGHT_LAYERS):
            if any(r.layer is module for r in rows):
                continue  # a layer applied twice keeps its first position
            name = names[module] or type(module).__name__
            rows.append(Row(name, module, name, module, "", call))
        elif rows and rows[-1].act_kind == "" and rows[-1].act_module is rows[-1].layer:
            # The first activation after a weight layer is that layer's activation.
            row = rows[-1]
            row.act_module, row.act_name, row.act_call = module, names[module], call
            row.act_kind = type(module).__name__
    return rows


def _units_view(a: torch.Tensor) -> torch.Tensor:
    """(samples, units): features for dense outputs, channels for conv outputs."""
    if a.dim() <= 2:
        return a.reshape(a.shape[0], -1)
    return a.transpose(0, 1).reshape(a.shape[1], -1).t()  # (N*H*W, C)


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) std from one sum and one dot: measured far cheaper on the
    CPU than ``std_mean``.

    The values are shifted by their first element first: E[x^2] - E[x]^2 cancels
    catastrophically in float32 when the mean dwarfs the spread (all-equal weights
    must show std 0, the symmetry problem).
    """
    flat = x.reshape(-1).float()
    n = flat.numel()
    shift = flat[0]
    centred = flat - shift
    offset = centred.sum() / n
    var = (torch.dot(centred, centred) / n - offset * offset).clamp_min(0.0)
    return offset + shift, var.sqrt()


def _histogram(x: torch.Tensor) -> torch.Tensor:
    """[lo, hi, counts...] of up to HIST_SAMPLES strided values, all on the device."""
    flat = x.detach().reshape(-1).float()
    stride = max(1, flat.numel() // HIST_SAMPLES)
    sample = flat[::stride][:HIST_SAMPLES]
    finite = torch.isfinite(sample)
    inf = torch.full_like(sample, math.inf)
    # The range covers finite values only (0..0 when there are none).
    lo = torch.where(finite, sample, inf).min()
    hi = torch.where(finite, sample, -inf).max()
    lo, hi = torch.where(torch.isfinite(lo), lo, 0.0), torch.where(torch.isfinite(hi), hi, 0.0)
    sample = torch.where(finite, sample, lo)
    width = (hi - lo).clamp_min(1e-12)
    idx = ((sample - lo) / width * HIST_BINS).long().clamp_(0, HIST_BINS - 1)
    counts = torch.zeros(HIST_BINS, device=x.device).scatter_add_(0, idx, finite.float())
    return torch.cat([torch.stack([lo, hi]), counts])


class _Recording:
    """What one tracked step's hooks captured, still on the device."""

    def __init__(self, rows: list[Row], histograms: bool) -> None:
        self.rows = rows
        self.histograms = histograms
        self.act: dict[int, torch.Tensor] = {}
        self.grad_out_std: dict[int, torch.Tensor] = {}
        self.act_hist: dict[int, torch.Tensor] = {}
        self._calls: dict[nn.Module, int] = {}

    def attach(self) -> list[torch.utils.hooks.RemovableHandle]:
        """One forward hook per distinct activation module (removed by the caller)."""
        by_module: dict[nn.Module, dict[int, int]] = {}
        for index, row in enumerate(self.rows):
            by_module.setdefault(row.act_module, {})[row.act_call] = index
        return [module.register_forward_hook(self._hook(module, rows_by_call))
                for module, rows_by_call in by_module.items()]

    def _hook(self, module: nn.Module, rows_by_call: dict[int, int]):
        def hook(mod: nn.Module, args: object, out: torch.Tensor) -> None:
            call = self._calls[module] = self._calls.get(module, -1) + 1
            index = rows_by_call.get(call)
            if index is None or index in self.act or not isinstance(out, torch.Tensor):
                return  # not a row's call, or a repeat pass (L-BFGS evaluates again)
            with torch.no_grad():
                self.act[index] = _activation_stats(out.detach(), self.rows[index].act_kind)
                if self.histograms:
                    self.act_hist[index] = _histogram(out[:ACT_SAMPLE_ROWS])
            if out.requires_grad:
                out.register_hook(self._grad_hook(index))

        return hook

    def _grad_hook(self, index: int):
        def hook(grad: torch.Tensor) -> None:
            if index not in self.grad_out_std:
                with torch.no_grad():
                    self.grad_out_std[index] = _moments(grad)[1]

        return hook


def _activation_stats(a: torch.Tensor, kind: str) -> torch.Tensor:
    """[mean, std, min, max, saturated, dead, zero] of one activation, on the device."""
    a = a[:ACT_SAMPLE_ROWS].float()
    mean, std = _moments(a)
    lo, hi = torch.aminmax(a)
    n = a.numel()
    nan = torch.full((), math.nan, device=a.device)
    if kind in ("Tanh", "Hardtanh"):
        saturated = (a.abs() > TANH_SATURATION).sum() / n
    elif kind == "ScaledSigmoid":
        saturated = (a.abs() > SCALED_SIGMOID_SATURATION).sum() / n
    elif kind == "Sigmoid":
        saturated = ((a < SIGMOID_SATURATION) | (a > 1 - SIGMOID_SATURATION)).sum() / n
    else:
        saturated = nan
    # A unit is dead when it is 0 for every sample: one max over the batch axis.
    dead = (_units_view(a).amax(0) <= 0).float().mean() if kind in _DEAD_CAN_HAPPEN else nan
    zero = (a == 0).sum() / n
    return torch.stack([mean, std, lo, hi, saturated, dead, zero.float()])


class Instruments:
    """Decides which steps are tracked and measures them.

    Per step: ``if inst.due(step):`` run the step inside ``with inst.track(step) as t:``,
    calling ``t.after_backward()`` once the gradients exist (before clipping), then read
    ``inst.take()``. ``cfg`` may be replaced while training (the stats.* fields are hot).
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, cfg: StatsConfig) -> None:
        self.cfg = cfg
        self.rows = find_rows(model, example)
        self.weights = [row.weight for row in self.rows]
        self._prev = [torch.empty_like(w) for w in self.weights]  # preallocated once
        self.requested: bool | None = None
        """An on-demand snapshot is due: None, or whether it includes histograms."""
        self._last_scalar = -math.inf
        self._last_hist = -math.inf
        self._snapshot: LayerStatsSnapshot | None = None
        # For stats.budget: the mean untracked step time and the extra a tracked one costs.
        self._plain_s: float | None = None
        self._extra_s: float | None = None
        self._train_s = 0.0
        self._spent_s = 0.0

    # --- schedule ------------------------------------------------------------------

    def interval(self) -> int:
        """Steps between scalar snapshots now: stats.every, or what stats.budget allows."""
        if not self.cfg.budget:
            return self.cfg.every
        if self._plain_s is None or self._extra_s is None:
            return max(1, self.cfg.every)  # nothing measured yet
        return max(1, math.ceil(self._extra_s / (self.cfg.budget * self._plain_s)))

    def due(self, step: int) -> bool:
        """Is the step about to be taken (1-based ``step``) a tracked one?"""
        if self.requested is not None:
            return True
        every = self.interval()
        if not every or step % every:
            return False
        return time.monotonic() - self._last_scalar >= MIN_SCALAR_INTERVAL_S

    def _histograms_due(self, step: int) -> bool:
        if self.requested is not None:
            return self.requested
        every = self.cfg.hist_every
        return bool(every) and step % every < max(1, self.interval()) and (
            time.monotonic() - self._last_hist >= MIN_HIST_INTERVAL_S
        )

    def record(self, seconds: float, tracked: bool) -> None:
        """Feed one step's wall time, so the budget and the overhead are measured."""
        self._train_s += seconds
        if not tracked:
            self._plain_s = seconds if self._plain_s is None else (
                0.95 * self._plain_s + 0.05 * seconds)
        elif self._plain_s is not None:
            extra = max(0.0, seconds - self._plain_s)
            self._spent_s += extra
            self._extra_s = extra if self._extra_s is None else 0.8 * self._extra_s + 0.2 * extra

    @property
    def overhead(self) -> float | None:
        """Measured share of training time the instruments took so far."""
        return self._spent_s / self._train_s if self._train_s and self._plain_s else None

    # --- measuring -------------------------------------------------------------------

    @contextmanager
    def track(self, step: int, *, update: bool = True) -> Iterator[_Tracker]:
        """Hooks on for one step, off after it; the snapshot is then in ``take()``.

        ``update=False`` (the init probe) measures without an optimizer step.
        """
        histograms = self._histograms_due(step)
        self.requested = None
        rec = _Recording(self.rows, histograms)
        handles = rec.attach()
        tracker = _Tracker(self, rec)
        if update:
            torch._foreach_copy_(self._prev, [w.detach() for w in self.weights])
        try:
            yield tracker
        finally:
            for handle in handles:
                handle.remove()
        self._snapshot = tracker.finish(step, update=update)
        now = time.monotonic()
        self._last_scalar = now
        if histograms:
            self._last_hist = now

    def take(self) -> LayerStatsSnapshot | None:
        """The snapshot of the last tracked step (once)."""
        snapshot, self._snapshot = self._snapshot, None
        return snapshot


def first_nonfinite(snapshot: LayerStatsSnapshot) -> tuple[str, str] | None:
    """(layer, where) of the first non-finite value: forward order for weights and
    activations, then backward order (from the output) for gradients; None if all finite.
    """
    for row in snapshot.layers:
        if not math.isfinite(row.weight_norm):
            return row.name, "weight"
        if row.act_mean is not None and not (
            math.isfinite(row.act_mean) and math.isfinite(row.act_std or 0.0)
        ):
            return row.name, "activation"
    for row in reversed(snapshot.layers):
        grads = (row.grad_norm, row.grad_out_std if row.grad_out_std is not None else 0.0)
        if not all(math.isfinite(g) for g in grads):
            return row.name, "gradient"
    return None


def _norm_std_max(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(3, L): norm, std and max |x| of each tensor; norms in one _foreach call."""
    norms = torch.stack(torch._foreach_norm(tensors))
    maxes = torch.stack(torch._foreach_norm(tensors, math.inf))
    stds = torch.stack([_moments(t)[1] for t in tensors])
    return torch.stack([norms, stds, maxes])


class _Tracker:
    """The per-step half of Instruments: gradient statistics and the final assembly."""

    def __init__(self, owner: Instruments, rec: _Recording) -> None:
        self.owner = owner
        self.rec = rec
        self._grads: torch.Tensor | None = None
        self._grad_hists: list[torch.Tensor] = []

    def after_backward(self) -> None:
        """Read the raw gradients (before clipping); later calls are ignored."""
        if self._grads is not None or not self.owner.weights:
            return
        weights = self.owner.weights
        grads = [w.grad if w.grad is not None else torch.zeros_like(w) for w in weights]
        with torch.no_grad():
            self._grads = _norm_std_max([g.detach() for g in grads])
            if self.rec.histograms:
                self._grad_hists = [_histogram(g) for g in grads]

    def finish(self, step: int, *, update: bool) -> LayerStatsSnapshot:
        """Assemble every row and histogram and bring them to the host in one transfer."""
        rows, rec = self.owner.rows, self.rec
        after = [w.detach() for w in self.owner.weights]
        # Weight figures describe the weights this step computed with (before its
        # update): a NaN that the update spreads upstream is then not blamed on them.
        used = self.owner._prev if update else after
        n = len(rows)
        device = after[0].device if after else torch.device("cpu")
        with torch.no_grad():
            table = torch.full((n, len(COLUMNS)), math.nan, device=device)
            for i in range(n):
                if i in rec.act:
                    table[i, 0:7] = rec.act[i]
                if i in rec.grad_out_std:
                    table[i, _COL["grad_out_std"]] = rec.grad_out_std[i]
            if n:
                w_stats = _norm_std_max(used)
                table[:, _COL["weight_norm"]] = w_stats[0]
                table[:, _COL["weight_std"]] = w_stats[1]
                if self._grads is not None:
                    table[:, _COL["grad_norm"] : _COL["grad_max"] + 1] = self._grads.t()
                if update:
                    delta = torch._foreach_sub(after, self.owner._prev)
                    table[:, _COL["update_ratio"]] = torch.stack(
                        torch._foreach_norm(delta)) / w_stats[0].clamp_min(1e-30)
            hists: list[tuple[str, str, torch.Tensor]] = []
            if rec.histograms:
                for i, row in enumerate(rows):
                    hists.append((row.name, "weight", _histogram(used[i])))
                    if self._grad_hists:
                        hists.append((row.name, "grad", self._grad_hists[i]))
                    if i in rec.act_hist:
                        hists.append((row.name, "act", rec.act_hist[i]))
            parts = [table.reshape(-1)] + [h for _, _, h in hists]
            values = torch.cat(parts).cpu().tolist()  # the one transfer of this snapshot
        width = len(COLUMNS)
        layer_rows = tuple(
            _layer_stats(row, values[i * width : (i + 1) * width], measured=i in rec.act)
            for i, row in enumerate(rows)
        )
        offset = n * width
        hist_width = 2 + HIST_BINS
        chunks = [values[offset + k * hist_width : offset + (k + 1) * hist_width]
                  for k in range(len(hists))]
        histograms = tuple(
            Histogram(name, quantity, lo=chunk[0], hi=chunk[1],
                      counts=tuple(int(c) for c in chunk[2:]))
            for (name, quantity, _), chunk in zip(hists, chunks, strict=True)
        )
        return LayerStatsSnapshot(
            step=step,
            layers=layer_rows,
            histograms=histograms,
            sample_rows=ACT_SAMPLE_ROWS,
            overhead=self.owner.overhead,
        )


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def _layer_stats(row: Row, v: list[float], *, measured: bool) -> LayerStats:
    """One row from its scalar columns; activation figures None when its activation
    did not run this step (e.g. a layer skipped by stochastic depth)."""
    c = _COL

    def act(name: str) -> float | None:
        return v[c[name]] if measured else None

    return LayerStats(
        name=row.name,
        kind=type(row.layer).__name__,
        activation=row.act_kind,
        act_mean=act("act_mean"),
        act_std=act("act_std"),
        act_min=act("act_min"),
        act_max=act("act_max"),
        saturated_frac=act("saturated_frac") if row.act_kind in _BOUNDED else None,
        dead_frac=act("dead_frac") if row.act_kind in _DEAD_CAN_HAPPEN else None,
        zero_frac=act("zero_frac"),
        grad_out_std=_none_if_nan(v[c["grad_out_std"]]) if measured else None,
        weight_norm=v[c["weight_norm"]],
        weight_std=v[c["weight_std"]],
        grad_norm=v[c["grad_norm"]],
        grad_std=v[c["grad_std"]],
        grad_max=v[c["grad_max"]],
        update_ratio=_none_if_nan(v[c["update_ratio"]]),
    )
