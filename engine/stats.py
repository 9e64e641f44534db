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
from collections.abc import Callable, Iterator
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
ACT_SAMPLE_ROWS = 64
"""Activation moments, shares and histograms use at most this many samples of the
batch (DESIGN.md section 6); dead units are counted over the whole batch."""
HIST_BINS = 32
HIST_SAMPLES = 2048
"""Histograms bin at most this many strided values (~64 a bin on average): binning was
the most expensive statistic when measured, full tensors far more so."""
MIN_SCALAR_INTERVAL_S = 0.25
"""Scalar snapshots at most 4 a second, whatever stats.every says: the app redraws at
most 4 times a second (DESIGN.md section 3), so faster snapshots would never be seen."""
MIN_HIST_INTERVAL_S = 1.0
"""Histograms at most once a second."""

# The activation kinds whose statistics have a meaning beyond mean and std.
_SATURATION = {
    "Tanh": (0.0, TANH_SATURATION),
    "Hardtanh": (0.0, TANH_SATURATION),
    "ScaledSigmoid": (0.0, SCALED_SIGMOID_SATURATION),
    "Sigmoid": (0.5, 0.5 - SIGMOID_SATURATION),
}
"""Bounded activations: saturated means |a - centre| > radius."""
_DEAD_CAN_HAPPEN = {"ReLU", "ReLU6"}
"""Units of these output exactly 0 for every input once dead (ReLU's flat half); their
outputs are >= 0, so sign() alone counts the non-zeros."""
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


# Raw per-tensor reductions stay on the device as small vectors; the arithmetic that
# turns them into means, stds and fractions runs once for all rows (few, large ops
# instead of many small ones: on a CPU each small op costs microseconds).
RAW_MOMENTS = 3
"""[shift, sum(x - shift), sum((x - shift)^2)] of an activation or backward signal
(see ``_raw_moments``)."""


OVERFLOW_SAFE = 1e15
"""Below this magnitude float32 sums of squares cannot overflow (for up to ~3e8 values)."""


def _may_overflow(lo: torch.Tensor, hi: torch.Tensor) -> bool:
    """Could squares of values in [lo, hi] overflow float32? On a CPU reading two numbers
    waits for nothing, so the cheap path is taken when it is safe; elsewhere that read
    would be a device sync, so the safe path is always taken."""
    if lo.device.type != "cpu":
        return True
    return max(-lo.item(), hi.item()) > OVERFLOW_SAFE  # NaN compares False: fast path


def _raw_moments(flat: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> list[torch.Tensor]:
    """[shift, sum, sum of squares] of ``flat`` - shift.

    Shifting by the first element keeps float32 from cancelling when the mean dwarfs
    the spread. When the values could overflow float32 squares (exploding activations),
    they are divided by their largest magnitude first and the sums multiplied back in
    float64, so the statistics show their size instead of a false "non-finite".
    """
    shift = flat[0]
    if not _may_overflow(lo, hi):
        centred = flat - shift
        return [shift, centred.sum(), torch.dot(centred, centred)]
    scale = torch.maximum((hi - shift).abs(), (lo - shift).abs()).clamp_min(1e-30)
    unit = (flat - shift).div_(scale)
    s = scale.double()
    return [shift, unit.sum() * s, torch.dot(unit, unit) * s * s]


def _mean_std(raw: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and population stds from stacked raw moments (columns 0..2) and counts."""
    offset = raw[:, 1] / n
    var = (raw[:, 2] / n - offset * offset).clamp_min(0.0)
    return raw[:, 0] + offset, var.sqrt()


ACT_RAW = RAW_MOMENTS + 7
"""Raw activation vector: moments, min, max, non-zero count, saturated count, dead units,
sample size, number of units (sizes filled on the device: no host-to-device copy)."""


def _count_nonzero(x: torch.Tensor) -> torch.Tensor:
    """Non-zero elements as a float. ``count_nonzero`` measured 35-260 us on the same
    64k values depending on their pattern (ReLU outputs were the slow case); this is a
    steady ~26 us."""
    return x.sign().abs().sum()


def _activation_raw(out: torch.Tensor, kind: str) -> torch.Tensor:
    """The ACT_RAW reductions of one activation, on the device.

    Moments and counts use the first ACT_SAMPLE_ROWS samples; dead units are counted
    over the whole batch (a unit is dead when it is 0 for every sample; the units of a
    conv output are its channels). On a CPU each op costs microseconds of dispatch, so
    this keeps to the few that each figure needs.
    """
    full = out.detach()
    flat = full[:ACT_SAMPLE_ROWS].reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    lo, hi = torch.aminmax(flat)
    moments = _raw_moments(flat, lo, hi)
    signs = flat.sign()
    nonzero = (signs if kind in _DEAD_CAN_HAPPEN else signs.abs()).sum()
    if kind in _SATURATION:
        centre, radius = _SATURATION[kind]
        centred = flat - centre if centre else flat
        saturated = torch.relu(centred.abs() - radius).sign().sum()  # |a - c| > r
    else:
        saturated = nonzero * 0.0
    units = full.shape[1] if full.dim() > 1 else 1
    if kind in _DEAD_CAN_HAPPEN:
        # Max over the batch first (contiguous blocks), then over positions: measured up
        # to 13x faster than one amax over (0, 2, 3) on conv outputs.
        per_unit = full.amax(0).reshape(units, -1).amax(1)
        dead = (per_unit <= 0).sum(dtype=torch.float32)
    else:
        dead = saturated * 0.0
    sizes = _constant((float(flat.numel()), float(units)), flat.device)
    return torch.cat([torch.stack([*moments, lo, hi, nonzero, saturated, dead]), sizes])


_constants: dict[tuple[tuple[float, ...], torch.device], torch.Tensor] = {}


def _constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A small constant vector on the device, made once (a tensor from Python values is
    a host-to-device copy on a GPU)."""
    key = (values, device)
    if key not in _constants:
        _constants[key] = torch.tensor(values, device=device)
    return _constants[key]


def _strided_sample(x: torch.Tensor) -> torch.Tensor:
    """At most HIST_SAMPLES values spread over the tensor (a view: no copy)."""
    flat = x.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // HIST_SAMPLES)][:HIST_SAMPLES]


def _histograms(samples: list[torch.Tensor]) -> torch.Tensor:
    """(H, 2 + HIST_BINS): [lo, hi, counts...] per sample, all in one batch on the device.

    Each range spans that sample's finite values (0..0 when it has none); non-finite
    values are not counted. No data-dependent range reaches the host, so no sync.
    Costs (CPU): ``nan_to_num`` instead of ``isfinite``/``where``, which measured 4-10x
    slower on these sizes.
    """
    batch = torch.nn.utils.rnn.pad_sequence(
        [s.float() for s in samples], batch_first=True, padding_value=math.nan)
    inf = math.inf
    lo = torch.nan_to_num(batch, nan=inf, posinf=inf, neginf=inf).amin(1)
    low = torch.nan_to_num(batch, nan=-inf, posinf=-inf, neginf=-inf)  # non-finite -> -inf
    hi = low.amax(1)
    lo = torch.where(torch.isfinite(lo), lo, 0.0)  # (H,) only: cheap
    hi = torch.where(torch.isfinite(hi), hi, lo)
    scale = HIST_BINS / (hi - lo).clamp_min(1e-12)
    # Bin b of a finite value is stored as b + 1; -inf (non-finite, padding) clamps to
    # 0, a bin that is dropped. The maximum itself falls into the last bin.
    shifted = (low - lo[:, None]) * scale[:, None] + 1.0
    bins = shifted.clamp_(0.0, HIST_BINS + 0.999).long()
    rows = len(samples)
    flat = (bins + torch.arange(rows, device=batch.device)[:, None] * (HIST_BINS + 1)).reshape(-1)
    size = rows * (HIST_BINS + 1)
    if flat.is_cuda:  # bincount would sync to size its output; scatter_add does not
        counts = torch.zeros(size, device=flat.device).scatter_add_(
            0, flat, torch.ones_like(flat, dtype=torch.float32))
    else:  # on a CPU bincount is the fast one
        counts = torch.bincount(flat, minlength=size).float()
    counts = counts.reshape(rows, HIST_BINS + 1)[:, 1:]
    return torch.cat([lo[:, None], hi[:, None], counts], dim=1)


class _Recording:
    """What one tracked step's hooks captured, still on the device."""

    def __init__(self, rows: list[Row], histograms: bool) -> None:
        self.rows = rows
        self.histograms = histograms
        self.act: dict[int, torch.Tensor] = {}
        """Row -> ACT_RAW reductions of its activation."""
        self.act_sample: dict[int, torch.Tensor] = {}
        self.grad_out: dict[int, torch.Tensor] = {}
        """Row -> raw moments of the backward signal and the sample size."""
        self._calls: dict[nn.Module, int] = {}

    def on_activation(self, module: nn.Module, rows_by_call: dict[int, int],
                      out: object) -> None:
        """A forward hook's work: the k-th call of ``module`` belongs to row rows_by_call[k]."""
        call = self._calls[module] = self._calls.get(module, -1) + 1
        index = rows_by_call.get(call)
        if index is None or index in self.act or not isinstance(out, torch.Tensor):
            return  # not a row's call, or a repeat pass (L-BFGS evaluates again)
        with torch.no_grad():
            self.act[index] = _activation_raw(out, self.rows[index].act_kind)
            if self.histograms:
                self.act_sample[index] = _strided_sample(out[:ACT_SAMPLE_ROWS])
        if out.requires_grad:
            out.register_hook(self._grad_hook(index))

    def _grad_hook(self, index: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            if index not in self.grad_out:
                with torch.no_grad():
                    flat = grad[:ACT_SAMPLE_ROWS].reshape(-1).float()
                    size = _constant((float(flat.numel()),), flat.device)
                    moments = _raw_moments(flat, *torch.aminmax(flat))
                    self.grad_out[index] = torch.cat([torch.stack(moments), size])

        return hook


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
        # Built once: a tensor from a list is a host-to-device copy on a GPU.
        self.weight_sizes = torch.tensor([float(w.numel()) for w in self.weights],
                                         device=example.device)
        self._prev = [torch.empty_like(w) for w in self.weights]  # preallocated once
        self.requested: bool | None = None
        """An on-demand snapshot is due: None, or whether it includes histograms."""
        self._last_scalar = -math.inf
        self._last_hist = -math.inf
        self._snapshot: LayerStatsSnapshot | None = None
        by_module: dict[nn.Module, dict[int, int]] = {}
        for index, row in enumerate(self.rows):
            by_module.setdefault(row.act_module, {})[row.act_call] = index
        self._rows_by_module = by_module
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
        if every and step == 1:  # the first step shows the network as initialized
            return True
        return bool(every) and step % every == 0 and (
            time.monotonic() - self._last_scalar >= MIN_SCALAR_INTERVAL_S)

    def _attach(self, rec: _Recording) -> list[torch.utils.hooks.RemovableHandle]:
        """One forward hook per distinct activation module, for one tracked step."""
        def route(module: nn.Module, rows_by_call: dict[int, int]) -> Callable[..., None]:
            def hook(mod: nn.Module, args: object, out: torch.Tensor) -> None:
                rec.on_activation(module, rows_by_call, out)
            return hook

        return [module.register_forward_hook(route(module, rows_by_call))
                for module, rows_by_call in self._rows_by_module.items()]

    def _histograms_due(self, step: int) -> bool:
        if self.requested is not None:
            return self.requested
        every = self.cfg.hist_every
        if every and step == 1:  # and its histograms: the init, before any update
            return True
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
        handles = self._attach(rec)
        tracker = _Tracker(self, rec)
        if update:
            torch._foreach_copy_(self._prev, [w.detach() for w in self.weights])
        try:
            yield tracker
        finally:
            for handle in handles:  # untracked steps run without any hook
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


def _tensor_raw(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(L, 4): sum, min, max and 2-norm of each weight or gradient tensor.

    The norms come from one _foreach call for all tensors; max |x| is derived from min
    and max (an inf-norm measured 25x slower than aminmax on a CPU).
    """
    flats = [t.detach().reshape(-1) for t in tensors]
    extremes = [torch.aminmax(flat) for flat in flats]
    # Float64 norms (3.5x slower on a CPU) only where float32 squares could overflow.
    wide = any(_may_overflow(lo, hi) for lo, hi in extremes)
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float64 if wide else None)
    return torch.stack([
        torch.stack([flat.sum(), lo, hi, norm])  # sums stay far from overflow
        for flat, (lo, hi), norm in zip(flats, extremes, norms, strict=True)
    ])


def _tensor_columns(raw: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(L, 3): norm, std and max |x| from ``_tensor_raw``.

    The std comes from the norm and the sum already at hand (no pass over the data of
    its own). In float32 that cancels below about 3e-4 of |mean|; all-equal values
    (min == max, the symmetry problem) give exactly 0.
    """
    total, lo, hi, norm = raw.unbind(1)
    mean = total / counts
    var = (norm * norm / counts - mean * mean).clamp_min(0.0)
    std = torch.where(lo == hi, 0.0, var.sqrt())
    return torch.stack([norm, std, torch.maximum(lo.abs(), hi.abs())], dim=1)


class _Tracker:
    """The per-step half of Instruments: gradient statistics and the final assembly."""

    def __init__(self, owner: Instruments, rec: _Recording) -> None:
        self.owner = owner
        self.rec = rec
        self._grads: torch.Tensor | None = None
        self._grad_samples: list[torch.Tensor] = []

    def after_backward(self) -> None:
        """Read the raw gradients (before clipping); later calls are ignored."""
        if self._grads is not None or not self.owner.weights:
            return
        grads = [w.grad if w.grad is not None else torch.zeros_like(w)
                 for w in self.owner.weights]
        with torch.no_grad():
            self._grads = _tensor_raw(grads)
            if self.rec.histograms:
                self._grad_samples = [_strided_sample(g).clone() for g in grads]

    def finish(self, step: int, *, update: bool) -> LayerStatsSnapshot:
        """Assemble every row and histogram and bring them to the host in one transfer."""
        owner, rows, rec = self.owner, self.owner.rows, self.rec
        after = [w.detach() for w in owner.weights]
        # Weight figures describe the weights this step computed with (before its
        # update): a NaN that the update spreads upstream is then not blamed on them.
        used = owner._prev if update else after
        n = len(rows)
        device = after[0].device if after else torch.device("cpu")
        with torch.no_grad():
            table = torch.full((n, len(COLUMNS)), math.nan, device=device,
                               dtype=torch.float64)
            if n:
                sizes = owner.weight_sizes
                # Weights and gradients through one set of ops (each op costs dispatch).
                raw = _tensor_raw(used)
                if self._grads is not None:
                    raw, sizes = torch.cat([raw, self._grads]), sizes.repeat(2)
                columns = _tensor_columns(raw, sizes)
                weight = columns[:n]
                table[:, _COL["weight_norm"]] = weight[:, 0]
                table[:, _COL["weight_std"]] = weight[:, 1]
                if self._grads is not None:
                    table[:, _COL["grad_norm"] : _COL["grad_max"] + 1] = columns[n:]
                if update:
                    delta = torch.stack(torch._foreach_norm(torch._foreach_sub(after, used)))
                    table[:, _COL["update_ratio"]] = delta / weight[:, 0].clamp_min(1e-30)
                if rec.act:
                    self._fill_activations(table, device)
            hists: list[tuple[str, str]] = []
            samples: list[torch.Tensor] = []
            if rec.histograms:
                for i, row in enumerate(rows):
                    hists.append((row.name, "weight"))
                    samples.append(_strided_sample(used[i]))
                    if self._grad_samples:
                        hists.append((row.name, "grad"))
                        samples.append(self._grad_samples[i])
                    if i in rec.act_sample:
                        hists.append((row.name, "act"))
                        samples.append(rec.act_sample[i])
            parts = [table.reshape(-1)]
            if samples:
                parts.append(_histograms(samples).reshape(-1))
            values = torch.cat(parts).cpu().tolist()  # the one transfer of this snapshot
        width = len(COLUMNS)
        layer_rows = tuple(
            _layer_stats(row, values[i * width : (i + 1) * width], measured=i in rec.act)
            for i, row in enumerate(rows)
        )
        offset = n * width
        hist_width = 2 + HIST_BINS
        histograms = tuple(
            Histogram(name, quantity, lo=chunk[0], hi=chunk[1],
                      counts=tuple(map(int, chunk[2:])))
            for k, (name, quantity) in enumerate(hists)
            for chunk in [values[offset + k * hist_width : offset + (k + 1) * hist_width]]
        )
        return LayerStatsSnapshot(
            step=step,
            layers=layer_rows,
            histograms=histograms,
            sample_rows=ACT_SAMPLE_ROWS,
            overhead=owner.overhead,
        )

    def _fill_activations(self, table: torch.Tensor, device: torch.device) -> None:
        """Activation and backward-signal columns, vectorized over the rows; a row whose
        activation did not run this step stays NaN (reported as None)."""
        rec, n = self.rec, len(self.owner.rows)
        missing = torch.full((ACT_RAW,), math.nan, device=device, dtype=torch.float64)
        raw = torch.stack([rec.act.get(i, missing) for i in range(n)])
        r = RAW_MOMENTS
        counts, units = raw[:, r + 5], raw[:, r + 6]
        mean, std = _mean_std(raw, counts)
        # sign() maps NaN to 0: a non-finite activation's shares would read as zeros,
        # so they are NaN (not measurable) wherever the moments are not finite.
        finite = torch.isfinite(mean) & torch.isfinite(std)
        nan = torch.full_like(mean, math.nan)
        table[:, 0:7] = torch.stack([
            mean, std, raw[:, r], raw[:, r + 1],
            torch.where(finite, raw[:, r + 3] / counts, nan),  # saturated share
            raw[:, r + 4] / units,  # dead units share (from the max: NaN-safe)
            torch.where(finite, 1.0 - raw[:, r + 2] / counts, nan),  # zeros share
        ], dim=1)
        if rec.grad_out:
            no_grad = torch.full((RAW_MOMENTS + 1,), math.nan, device=device,
                                 dtype=torch.float64)
            graw = torch.stack([rec.grad_out.get(i, no_grad) for i in range(n)])
            table[:, _COL["grad_out_std"]] = _mean_std(graw, graw[:, RAW_MOMENTS])[1]


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
        saturated_frac=act("saturated_frac") if row.act_kind in _SATURATION else None,
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
