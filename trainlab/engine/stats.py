"""Per-layer statistics: the engine's instruments, paid for only on tracked steps.

A *row* is a weight layer (Linear or Conv) together with the activation that follows
it in forward order (the first activation module before the next weight layer; the
layer's own output when none follows, as for the head). For each row a tracked step
measures the activations, the gradient flowing back into them, the weights, their
gradients and the size of the step's update.

Costs (docs/architecture.md#per-layer-statistics-and-their-cost):
- untracked steps: nothing; no hook is attached between tracked steps;
- tracked steps: forward hooks on the rows' activation modules and one tensor hook per
  activation output, attached for the step and removed after it. A hook copies its
  sample into one flat device buffer (one op; a ReLU-family row also takes one batch
  maximum for its dead units), a backward hook takes a sum and a norm of its signal
  while it is in cache; the weights before the update and the raw gradients go to the
  same buffer with one _foreach op each. One fixed set of ~40 ops then reduces every
  row at once (see ``_Layout`` and ``_reduce``: on a CPU each op costs microseconds of
  dispatch whatever its size, and per-row reductions made a small CNN's tracked step
  cost as much as the step itself), and the results cross to the host in one transfer
  (one host-device sync per snapshot), where the means, stds and fractions are a few
  float64 operations per row;
- activation statistics use the first ``ACT_SAMPLE_ROWS`` samples of the batch;
  histograms ``HIST_SAMPLES`` strided values in ``HIST_BINS`` bins over that tensor's
  own min..max, computed on the device (no data-dependent range sync on a GPU).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from trainlab.core.config import StatsConfig
from trainlab.core.protocol import Histogram, LayerStats, LayerStatsSnapshot
from trainlab.engine.init import WEIGHT_LAYERS, WeightLayer
from trainlab.engine.models import ACTIVATION_BUILDERS, trace_forward

TANH_SATURATION = 0.99
"""tanh units with |a| > 0.99 are saturated: the slope there is below 0.02."""
SIGMOID_SATURATION = 0.01
"""sigmoid units below 0.01 or above 0.99 are saturated (slope below 0.01)."""
SCALED_SIGMOID_SATURATION = 1.98
"""4*sigmoid(x)-2 ranges over (-2, 2); |a| > 1.98 is the same 99% as tanh's 0.99."""
ACT_SAMPLE_ROWS = 64
"""Activation moments, shares and histograms use at most this many samples of the
batch, so their cost does not grow with it; dead units are counted over the whole batch."""
HIST_BINS = 32
HIST_SAMPLES = 2048
"""Histograms bin at most this many strided values (~64 a bin on average): binning was
the most expensive statistic when measured, full tensors far more so."""
MIN_SCALAR_INTERVAL_S = 0.25
"""Scalar snapshots at most 4 a second, whatever stats.every says: the app redraws at
most 4 times a second (docs/architecture.md#the-app-one-queue-one-pump), so faster
snapshots would never be seen."""
MIN_HIST_INTERVAL_S = 1.0
"""Histograms at most once a second."""
BUDGET_WINDOW = 5
"""stats.budget prices a snapshot at the median extra time of the last this many..."""
BUDGET_MIN_SAMPLES = 3
"""...once it has this many: until then (one or two, which may be a one-off slow
step) snapshots come every stats.every steps, and the next measurements decide."""
MAX_LAYOUTS = 3
"""Buffer layouts kept (one per set of activation shapes seen: usually the full batch's
and a smaller last batch's). Each holds the weights twice and the gradients once, so
the instruments' memory is about 3 * MAX_LAYOUTS copies of the weights at most."""

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

@dataclass
class Row:
    """One weight layer and the module whose output counts as its activation."""

    name: str
    layer: WeightLayer
    act_name: str
    act_module: nn.Module
    act_kind: str
    """Class name of the activation ('' when the row uses the layer's own output)."""
    act_call: int = 0
    """Which call of ``act_module`` in a forward pass is this row's (one activation
    module may follow several layers)."""
    sample_shape: tuple[int, ...] | None = None
    """Shape of one sample of the activation in the traced pass (None: not a tensor)."""

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight


def find_rows(model: nn.Module, example: torch.Tensor) -> list[Row]:
    """The statistic rows of ``model``, in forward order, from one traced forward pass.

    Weight layers that do not run in the forward pass get no row.
    """
    names = {module: name for name, module in model.named_modules()}
    tracked_types = WEIGHT_LAYERS + ACTIVATION_TYPES
    order = trace_forward(model, example, lambda m: isinstance(m, tracked_types))
    rows: list[Row] = []
    calls: dict[nn.Module, int] = {}
    for module, out in order:
        shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) and out.dim() else None
        call = calls[module] = calls.get(module, -1) + 1
        if isinstance(module, WEIGHT_LAYERS):
            if any(r.layer is module for r in rows):
                continue  # a layer applied twice keeps its first position
            name = names[module] or type(module).__name__
            rows.append(Row(name, module, name, module, "", call, shape))
        elif rows and rows[-1].act_kind == "" and rows[-1].act_module is rows[-1].layer:
            # The first activation after a weight layer is that layer's activation.
            row = rows[-1]
            row.act_module, row.act_name, row.act_call = module, names[module], call
            row.act_kind, row.sample_shape = type(module).__name__, shape
    return rows




# --- the fused reduction ----------------------------------------------------------------
#
# On a CPU every torch op costs ~2-5 us of dispatch however small its tensor, and a small
# model's tracked step is bound by that count, not by arithmetic. So a tracked step copies
# what it measures into one flat buffer, and a fixed handful of ops reduces everything at
# once: each tensor is a *segment* that starts on a chunk boundary, one (K, CHUNK) view
# reduces every chunk of every segment in one op (sum(1), amin(1), ...), and one
# index_add_ adds the chunk results up per segment. The means, stds and fractions are then
# a few float64 operations per row on the host, after the one transfer.

CHUNK = 256
"""Values per chunk of the reduction buffer. Row reductions over 256 values measured
~1.7x faster per value than over 64, and a segment wastes fewer than 256 values of
padding."""


def _chunks(n: int) -> int:
    return max(1, -(-n // CHUNK))


class _Layout:
    """Where each measured tensor of a tracked step lives in one flat buffer.

    Segments, in buffer order: the weights the step computed with (before its update),
    the raw gradients, the activation samples. (The backward signals are reduced in
    their hooks, while in cache: they need only a sum and a norm; the updates, only a
    norm.)
    Each segment is padded to whole chunks; before reducing, the padding is set to the
    segment's first value (its *reference*), which leaves min/max unchanged; the host
    subtracts what the padding adds to the sums and counts. The dead-unit maxima of
    ReLU-family rows go to a second, small buffer.

    One layout serves one set of activation shapes (``key``); built rarely (first step,
    a smaller last batch), so its index tensors are made once here.
    """

    def __init__(self, rows: list[Row], weights: list[torch.Tensor],
                 key: tuple[torch.Size | None, ...], device: torch.device,
                 dtype: torch.dtype) -> None:
        self.key = key
        self.used = False
        """Has a step had exactly these shapes?"""
        starts: list[int] = []
        sizes: list[int] = []
        chunks = [0]  # chunks so far

        def add(n: int) -> int:
            starts.append(chunks[0] * CHUNK)
            sizes.append(n)
            chunks[0] += _chunks(n)
            return len(sizes) - 1

        n_rows = len(rows)
        for _group in range(2):  # weights, gradients: the same shapes each
            for w in weights:
                add(w.numel())
            if _group == 0:
                self.k_w = chunks[0]
        self.k_p = chunks[0]  # chunks of the weight and gradient segments
        # Row -> the shape of its activation sample, for the rows that have one.
        shapes = {i: shape for i, shape in enumerate(key) if shape is not None}
        self.act_rows = list(shapes)
        self.act_seg = {i: add(math.prod(shapes[i])) for i in self.act_rows}
        self.k_pa = k = chunks[0]
        self.n_seg = n_seg = len(sizes)
        self.n_rows = n_rows
        self.n_p = 2 * n_rows
        self.n_a = n_a = len(self.act_rows)
        self.sizes = sizes
        self.starts = starts
        self.pads = [_chunks(n) * CHUNK - n for n in sizes]

        self.flat = flat = torch.zeros(k * CHUNK, device=device, dtype=dtype)

        def view(seg: int, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
            return flat[starts[seg] : starts[seg] + sizes[seg]].view(shape)

        self.prev_views = [view(j, w.shape) for j, w in enumerate(weights)]
        self.grad_views = [view(n_rows + j, w.shape) for j, w in enumerate(weights)]
        self.act_slot = {i: view(self.act_seg[i], shapes[i]) for i in self.act_rows}
        body = flat[: k * CHUNK].view(k, CHUNK)
        self.ga2d = body[self.k_w : self.k_pa]  # gradients and activations
        self.body, self.a2d = body, body[self.k_p : self.k_pa]
        self.scratch = torch.empty_like(self.a2d)

        # Index tensors, built with vector ops on the CPU (Python lists of ~10^4 values
        # measured ~15 ms a layout), then moved to the device once.
        arange, cat, tensor = torch.arange, torch.cat, torch.tensor
        seg_ids = arange(n_seg)
        chunk_seg = torch.repeat_interleave(seg_ids, tensor([_chunks(n) for n in sizes]))
        starts_t, sizes_t, pads_t = tensor(starts), tensor(sizes), tensor(self.pads)
        pad_seg = torch.repeat_interleave(seg_ids, pads_t)
        pad_pos = ((starts_t + sizes_t - torch.cumsum(pads_t, 0) + pads_t)[pad_seg]
                   + arange(len(pad_seg)))

        def index(values: torch.Tensor, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return values.to(device=device, dtype=dtype)

        self.start_idx = index(starts_t)
        self.pad_pos, self.pad_seg = index(pad_pos), index(pad_seg)
        a_pos = torch.full((n_seg,), -1, dtype=torch.long)  # segment -> activation row
        a_pos[tensor(list(self.act_seg.values()), dtype=torch.long)] = arange(n_a)

        # Saturation: one span of activation chunks from the first bounded row to the
        # last; chunks of unbounded rows in it get an infinite radius (never saturated).
        bounded = [i for i in self.act_rows if rows[i].act_kind in _SATURATION]
        self.sat2d: torch.Tensor | None = None
        sat_slots = chunk_seg[:0]
        if bounded:
            lo_seg, hi_seg = self.act_seg[bounded[0]], self.act_seg[bounded[-1]]
            c0 = starts[lo_seg] // CHUNK
            c1 = (starts[hi_seg] // CHUNK) + _chunks(sizes[hi_seg])
            self.sat2d = body[c0:c1]
            centre, radius = torch.zeros(n_seg), torch.full((n_seg,), math.inf)
            for i in bounded:
                centre[self.act_seg[i]], radius[self.act_seg[i]] = _SATURATION[rows[i].act_kind]
            sat_slots = chunk_seg[c0:c1]
            self.sat_centre = index(centre[sat_slots], dtype).view(-1, 1)
            self.sat_radius = index(radius[sat_slots], dtype).view(-1, 1)

        # Dead units: per row the batch maximum of every (unit, position); a unit is dead
        # when the sum of its positions' maxima is 0 (ReLU-family outputs are >= 0).
        dead_rows = [i for i in self.act_rows if rows[i].act_kind in _DEAD_CAN_HAPPEN]
        feats = {i: shapes[i][1:] for i in dead_rows}
        dead_sizes = [math.prod(feats[i]) for i in dead_rows]
        self.dead = torch.zeros(sum(dead_sizes), device=device, dtype=dtype)
        self.dead_slot: dict[int, torch.Tensor] = {}
        unit_idx, unit_seg = [arange(0)], [arange(0)]
        offset = units_so_far = 0
        self.units = {i: 1 for i in self.act_rows}
        for i, size in zip(dead_rows, dead_sizes, strict=True):
            self.dead_slot[i] = self.dead[offset : offset + size].view(feats[i])
            units = feats[i][0] if feats[i] else 1
            self.units[i] = units
            unit_idx.append(units_so_far + arange(size) // max(1, size // max(1, units)))
            unit_seg.append(torch.full((units,), self.act_seg[i]))
            offset += size
            units_so_far += units
        self.unit_idx = index(cat(unit_idx))
        self.n_units = units_so_far

        # Slots of the one index_add_: per segment S1 and S2, the sums of x and x^2, and
        # per activation row its non-zero, saturated and dead counts.
        s2 = n_seg
        nz = s2 + n_seg
        sat = nz + n_a
        dead = sat + n_a
        self.slot = {"s2": s2, "nz": nz, "sat": sat, "dead": dead}
        self.n_slots = dead + n_a
        self.slot_idx = index(cat([
            chunk_seg, s2 + chunk_seg, nz + a_pos[chunk_seg[self.k_p : self.k_pa]],
            sat + a_pos[sat_slots], dead + a_pos[cat(unit_seg)]]))
        # Maxima and negated minima of the gradient and activation segments.
        self.n_ext = n_ext = n_rows + n_a
        ga = chunk_seg[self.k_w : self.k_pa] - n_rows
        self.ext_idx = index(cat([ga, n_ext + ga]))

        # Histograms: HIST_SAMPLES strided values of each tensor (at most; stride
        # n // HIST_SAMPLES); per row weight, gradient, activation. A shorter tensor's row
        # is filled up with its first value, counted with weight 0.
        hist: list[torch.Tensor] = []
        weight: list[torch.Tensor] = []
        self.hist_names: list[tuple[int, str]] = []
        for i in range(n_rows):
            segs = [(i, "weight"), (n_rows + i, "grad")]
            if i in self.act_seg:
                segs.append((self.act_seg[i], "act"))
            for seg, quantity in segs:
                n = sizes[seg]
                stride = max(1, n // HIST_SAMPLES)
                taken = min(HIST_SAMPLES, -(-n // stride))
                fill = HIST_SAMPLES - taken
                hist += [starts[seg] + arange(taken) * stride, torch.full((fill,), starts[seg])]
                weight += [torch.ones(taken), torch.zeros(fill)]
                self.hist_names.append((i, quantity))
        # int32 indices: index_select measured 1.3x faster with them than with int64.
        self.hist_idx = index(cat(hist), torch.int32)
        self.hist_weight = index(cat(weight), torch.float32)
        self.hist_offset = torch.arange(
            1, len(self.hist_names) * (HIST_BINS + 1), HIST_BINS + 1, dtype=torch.int32,
            device=device)[:, None]
        # Accumulators, zeroed in place each step (one op instead of two for a new one).
        self.hist_counts = torch.zeros(len(self.hist_names) * (HIST_BINS + 1), device=device)
        self.per_unit = torch.zeros(self.n_units, device=device, dtype=dtype)
        self.slots = torch.zeros(self.n_slots, device=device, dtype=torch.float64)
        self.ext = torch.zeros(2 * n_ext, device=device, dtype=dtype)


def _histograms(lay: _Layout, batch: torch.Tensor) -> list[torch.Tensor]:
    """[lo, hi, counts] of each row of ``batch`` (H, HIST_SAMPLES): HIST_BINS bins over
    that row's finite values (0..0 when it has none), behind one dropped bin per row
    (H * (HIST_BINS + 1) counts). Non-finite values and the fillers of short rows are
    not counted.

    On a CPU the range is taken with one amin and one amax, and a second look, with
    non-finite values masked out (``nan_to_num``: ``isfinite``/``where`` measured 4-10x
    slower here), only when that range is not finite: reading one number on a CPU waits
    for nothing. On other devices that read would be a sync, so the masked way is taken
    and no data-dependent range reaches the host.
    """
    inf = math.inf
    lo, hi = batch.amin(1), batch.amax(1)
    span = hi - lo
    if batch.device.type == "cpu" and math.isfinite(span.sum().item()):
        scale = (HIST_BINS / span.clamp_min(1e-12))[:, None]
        shifted = torch.sub(batch, lo[:, None]).mul_(scale)
    else:
        lo = torch.nan_to_num(batch, nan=inf, posinf=inf, neginf=inf).amin(1)
        batch = torch.nan_to_num(batch, nan=-inf, posinf=-inf, neginf=-inf)  # -> dropped
        lo = lo.nan_to_num_(posinf=0.0)  # no finite value: 0..0
        hi = torch.maximum(batch.amax(1), lo)
        # Halves: hi - lo of finite values overflows float32 once they span more than its
        # largest value (an exploding run's weights near +-3e38), where halves cannot.
        # Halving is exact, so the bins are those of (x - lo) * HIST_BINS / (hi - lo) to
        # the last bit; it costs one more pass, on this path only.
        half_lo = lo * 0.5
        scale = (HIST_BINS / (hi * 0.5 - half_lo).clamp_min(0.5e-12))[:, None]
        shifted = torch.mul(batch, 0.5).sub_(half_lo[:, None]).mul_(scale)
    # Bin b of row k is counted at k * (HIST_BINS + 1) + 1 + b. x - lo >= 0 for finite
    # x (the minimum is exactly bin 0), the maximum is clamped into the last bin, and
    # -inf to -1: the row's dropped bin. Scalar bounds and an int32 offset: a clamp to
    # per-row tensor bounds measured 8x slower.
    shifted = shifted.clamp_(-1.0, HIST_BINS - 0.001)
    bins = shifted.int().add_(lay.hist_offset).view(-1)
    if bins.is_cuda:  # bincount would sync to size its output; scatter_add_ does not
        counts = lay.hist_counts.zero_().scatter_add_(0, bins.long(), lay.hist_weight)
    else:  # int32 + bincount measured 1.6x faster than int64 + scatter_add_ on a CPU
        counts = torch.bincount(bins, lay.hist_weight, minlength=lay.hist_counts.numel())
    return [lo, hi, counts]  # fillers weigh 0


def _reduce(lay: _Layout, after: list[torch.Tensor] | None, signals: list[torch.Tensor],
            histograms: bool) -> list[float]:
    """Every reduction of one tracked step over the filled buffer, in one transfer.

    ``after``: the weights after the update (None: no update); ``signals``: the
    backward signals' sums and norms (0-dim). Returns the parts ``_transfer_parts``
    lists, concatenated in its order. About 40 ops for any number of rows, each over
    the whole buffer or a part of it, or over a vector of one value per chunk.

    Sums are not centred here (a centring pass over the signals measured ~15% of this
    function); the host recomputes, centred and in float64, the rare segment whose mean
    dwarfs its spread (see ``_rows``).
    """
    flat, select = lay.flat, torch.index_select  # ~3x faster than tensor[index] here
    # The updates' norms: two _foreach ops (not in the buffer: only a norm is needed).
    updates = None
    if after is not None:
        updates = torch.stack(torch._foreach_norm(_deltas(after, lay.prev_views)))
    ref = select(flat, 0, lay.start_idx)  # each segment's first value
    if lay.pad_pos.numel():
        flat.index_put_((lay.pad_pos,), select(ref, 0, lay.pad_seg))  # padding := ref
    norm = torch.linalg.vector_norm  # ~1.4x faster than a dot per chunk, squared later
    parts = [lay.body.sum(1), norm(lay.body, dim=1)]
    lo, hi = lay.ga2d.amin(1), lay.ga2d.amax(1)  # ~2x faster than aminmax(dim=1)
    # Non-zeros as the sum of sign(x)^2, one norm per chunk (squared below, rounded on
    # the host; sign gives 0 for NaN, and the host marks those rows).
    parts.append(norm(torch.sign(lay.a2d, out=lay.scratch), dim=1))
    if lay.sat2d is not None:  # saturated: |x - centre| > radius, as relu(...).sign()
        sat = torch.sub(lay.sat2d, lay.sat_centre, out=lay.scratch[: lay.sat2d.shape[0]])
        parts.append(sat.abs_().sub_(lay.sat_radius).relu_().sign_().sum(1))
    if lay.n_units:
        parts.append(lay.per_unit.zero_().index_add_(0, lay.unit_idx, lay.dead) == 0)
    values = torch.cat(parts).double()
    k = lay.body.shape[0]
    values[k : 2 * k + lay.a2d.shape[0]].square_()  # chunk norms -> sums of squares
    slots = lay.slots.zero_().index_add_(0, lay.slot_idx, values)
    ext = lay.ext.fill_(-math.inf)
    ext.scatter_reduce_(0, lay.ext_idx, torch.cat([hi, lo.neg_()]), "amax")
    out = [ref, slots, ext]
    if updates is not None:
        out.append(updates)
    if signals:
        out.append(torch.stack(signals))
    if histograms:
        samples = select(flat, 0, lay.hist_idx).view(-1, HIST_SAMPLES)
        out.extend(_histograms(lay, samples))
    return torch.cat(out).tolist()  # the one transfer of this snapshot


def _transfer_parts(lay: _Layout, *, updates: bool, signals: int,
                    histograms: bool) -> tuple[tuple[str, int], ...]:
    """The one transfer of a tracked step, part by part as (name, length), in order:
    the table ``_reduce`` writes by and ``_rows`` and ``_histogram_events`` read by.

    - ``ref``: each segment's first value (also its padding's value);
    - ``slots``: the index_add_ slots: per segment the sum of x, then of x^2; per
      activation row its non-zero, saturated and dead counts (offsets in ``lay.slot``);
    - ``ext``: maxima, then negated minima, of the gradient and activation segments;
    - ``updates``: each row's update norm (a step that updates);
    - ``signals``: each backward-signal row's sum and norm, by row;
    - ``hist_lo``, ``hist_hi``: each histogram's range; ``hist_counts``: per histogram
      its dropped bin, then HIST_BINS counts.
    """
    h = len(lay.hist_names) if histograms else 0
    return (("ref", lay.n_seg), ("slots", lay.n_slots), ("ext", 2 * lay.n_ext),
            ("updates", lay.n_rows if updates else 0), ("signals", signals),
            ("hist_lo", h), ("hist_hi", h), ("hist_counts", h * (HIST_BINS + 1)))


def _split(values: list[float], parts: tuple[tuple[str, int], ...]) -> dict[str, list[float]]:
    """The transferred values by part name (``_transfer_parts``)."""
    out, offset = {}, 0
    for name, length in parts:
        out[name] = values[offset : offset + length]
        offset += length
    if offset != len(values):  # _reduce and the table disagree: a bug, not bad input
        raise AssertionError(f"the transfer holds {len(values)} values, its table {offset}")
    return out


CANCELLATION = 100.0
"""A segment whose mean^2 exceeds this many variances is summed again, centred: float32
sums of squares would lose more than ~1e-5 of its variance."""


def _exact_sums(segment: torch.Tensor, ref: float) -> tuple[float, float, float]:
    """(sum of x - ref, sum of (x - ref)^2, 2-norm) of one segment, in float64 and
    centred on ``ref``: the slow path for a mean that dwarfs the spread, and for values
    whose float32 squares overflow (|x| > ~1e18), so that exploding statistics show
    their size instead of a false "non-finite". A second transfer, taken only then."""
    x = segment.double()
    c = x - ref
    total, squares, norm = torch.stack([c.sum(), torch.dot(c, c), torch.linalg.vector_norm(x)])
    return total.item(), squares.item(), norm.item()


def _deltas(after: list[torch.Tensor], before: list[torch.Tensor]) -> list[torch.Tensor]:
    """after - before per tensor: one _foreach op when the dtypes agree."""
    if all(a.dtype == b.dtype for a, b in zip(after, before, strict=True)):
        return list(torch._foreach_sub(after, before))
    return [a.to(b.dtype) - b for a, b in zip(after, before, strict=True)]


class _Recording:
    """What one tracked step's hooks captured: copied into the expected layout's buffer,
    or, where a shape differs from it, kept aside until the step's layout is known."""

    def __init__(self, rows: list[Row], layout: _Layout | None) -> None:
        self.rows = rows
        self.layout = layout
        """None only for a model with no rows: then no hook is attached."""
        self.act: dict[int, torch.Tensor] = {}
        """Row -> its activation sample (a slot of ``layout`` or a copy)."""
        self.dead: dict[int, torch.Tensor] = {}
        """Row -> batch maxima of its activation (ReLU-family rows)."""
        self.grad_out: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        """Row -> (sample of the backward signal, its sum, its 2-norm). The sample is a
        view, kept (not copied) for the rare exact recount: held, autograd does not
        reuse its memory."""
        self._calls: dict[nn.Module, int] = {}

    def on_activation(self, module: nn.Module, rows_by_call: dict[int, int],
                      out: object) -> None:
        """A forward hook's work: the k-th call of ``module`` belongs to row rows_by_call[k].

        Costs: a slice, one copy into the buffer, for ReLU-family rows one amax over the
        batch, and the backward hook.
        """
        call = self._calls[module] = self._calls.get(module, -1) + 1
        index = rows_by_call.get(call)
        if index is None or index in self.act or not isinstance(out, torch.Tensor):
            return  # not a row's call, or a repeat pass (L-BFGS evaluates again)
        layout = self.layout
        assert layout is not None  # a hook runs, so there are rows, so there is a layout
        with torch.no_grad():
            sample = _sample(out)
            self.act[index] = _keep(layout.act_slot.get(index), sample)
            if self.rows[index].act_kind in _DEAD_CAN_HAPPEN:
                slot = layout.dead_slot.get(index)
                if (slot is not None and slot.shape == out.shape[1:]
                        and slot.dtype == out.dtype):
                    self.dead[index] = torch.amax(out, 0, out=slot)
                else:
                    self.dead[index] = out.amax(0)
        if out.requires_grad:
            out.register_hook(self._grad_hook(index))

    def _grad_hook(self, index: int) -> Callable[[torch.Tensor], None]:
        layout = self.layout
        assert layout is not None  # as in on_activation, which attaches this hook

        def hook(grad: torch.Tensor) -> None:
            if index not in self.grad_out:
                with torch.no_grad():  # two reductions of a tensor still in cache
                    sample, dtype = _sample(grad), layout.flat.dtype
                    self.grad_out[index] = (sample, sample.sum(dtype=dtype),
                                            torch.linalg.vector_norm(sample, dtype=dtype))

        return hook

    def key(self) -> tuple[torch.Size | None, ...]:
        """The activation sample shapes of this step: the layout it needs."""
        return tuple(self.act[i].shape if i in self.act else None
                     for i in range(len(self.rows)))


def _sample(x: torch.Tensor) -> torch.Tensor:
    """The first ACT_SAMPLE_ROWS samples (a view; the tensor itself when it has no
    more: one op fewer)."""
    if not x.dim():
        return x.reshape(1)
    return x if x.shape[0] <= ACT_SAMPLE_ROWS else x[:ACT_SAMPLE_ROWS]


def _keep(slot: torch.Tensor | None, sample: torch.Tensor) -> torch.Tensor:
    """Copy ``sample`` into its slot when the shapes agree (one op), else keep a copy."""
    if slot is not None and slot.shape == sample.shape:
        return slot.copy_(sample)
    return sample.detach().clone()


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
        self._device = self.weights[0].device if self.weights else example.device
        self._dtype = functools.reduce(
            torch.promote_types, [w.dtype for w in self.weights], torch.float32)
        self._layouts: dict[tuple[torch.Size | None, ...], _Layout] = {}
        self._layout: _Layout | None = None
        """The layout the next tracked step copies into: the last step's (made here when
        the instruments are on from the start, else at the first tracked step: stats
        off allocates nothing)."""
        self.requested: bool | None = None
        """An on-demand snapshot is due: None, or whether it includes histograms."""
        self._last_scalar = -math.inf
        self._last_hist = -math.inf
        self._snapshot: LayerStatsSnapshot | None = None
        by_module: dict[nn.Module, dict[int, int]] = {}
        for index, row in enumerate(self.rows):
            by_module.setdefault(row.act_module, {})[row.act_call] = index
        self._rows_by_module = by_module
        # For stats.budget: the mean untracked step time and what tracked ones cost more.
        self._plain_s: float | None = None
        self._extras: collections.deque[float] = collections.deque(maxlen=BUDGET_WINDOW)
        self._extra_s: float | None = None
        """Their median once there are BUDGET_MIN_SAMPLES (kept: due() asks every step)."""
        self._built_layout = False
        """The tracked step being recorded built a buffer layout: a one-off cost."""
        self._train_s = 0.0
        self._spent_s = 0.0
        if cfg.every and self.rows:
            # Made with the model, not in step 1 (4-10 ms on the 8x256 MLP, a step's
            # worth): that step shows the network as initialized, and comes on time.
            self._layout = self._layout_for(self._traced_key())
            self._built_layout = False  # paid before training, by no tracked step

    # --- schedule ------------------------------------------------------------------

    def interval(self) -> int:
        """Steps between scalar snapshots now: stats.every, or a multiple of it where
        stats.budget needs more steps between snapshots to pay for one (0: off)."""
        every, budget = self.cfg.every, self.cfg.budget
        if not every or not budget or not self._plain_s or self._extra_s is None:
            return every  # not measured enough yet: the first snapshots come on time
        # A snapshot that costs `extra` more than a step is paid for by
        # extra / (budget * step) steps.
        steps = self._extra_s / (budget * self._plain_s)
        return every * max(1, math.ceil(steps / every))

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
        """Feed one step's wall time while the instruments are on, so the budget and the
        overhead are measured. (With stats.every = 0 the loop does not time its steps.)

        On a GPU an untracked step is timed as launched, while a tracked one waits for
        the device at its transfer: the extra then includes queued work, and the budget
        errs towards fewer snapshots.
        """
        self._train_s += seconds
        built, self._built_layout = self._built_layout, False
        if not tracked:
            self._plain_s = seconds if self._plain_s is None else (
                0.95 * self._plain_s + 0.05 * seconds)
        elif self._plain_s is not None:
            extra = max(0.0, seconds - self._plain_s)
            self._spent_s += extra
            if not built:  # building a layout is paid once, not by every snapshot
                self._extras.append(extra)
                if len(self._extras) >= BUDGET_MIN_SAMPLES:
                    self._extra_s = statistics.median(self._extras)

    @property
    def overhead(self) -> float | None:
        """Measured share of training time the instruments took, over the steps taken
        while they were on."""
        return self._spent_s / self._train_s if self._train_s and self._plain_s else None

    # --- measuring -------------------------------------------------------------------

    @contextmanager
    def track(self, step: int, *, update: bool = True) -> Iterator[Tracker]:
        """Hooks on for one step, off after it; the snapshot is then in ``take()``.

        ``update=False`` (the init probe) measures without an optimizer step.
        """
        histograms = self._histograms_due(step)
        self.requested = None
        if self._layout is None and self.rows:  # stats were off at the start
            self._layout = self._layout_for(self._traced_key())
        rec = _Recording(self.rows, self._layout)
        handles = self._attach(rec)
        tracker = Tracker(self, rec, histograms)
        if update and self._layout is not None:
            with torch.no_grad():  # the weights this step computes with: one _foreach op
                torch._foreach_copy_(self._layout.prev_views, self.weights)
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

    def _traced_key(self) -> tuple[torch.Size | None, ...]:
        """The activation shapes of the traced pass with a full sample of ACT_SAMPLE_ROWS
        (the first layout of most runs)."""
        return tuple(None if row.sample_shape is None
                     else torch.Size((ACT_SAMPLE_ROWS, *row.sample_shape)) for row in self.rows)

    def _layout_for(self, key: tuple[torch.Size | None, ...]) -> _Layout:
        """The buffer layout for these activation shapes, made once and kept (a few)."""
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) >= MAX_LAYOUTS:  # forget the oldest
                self._layouts.pop(next(iter(self._layouts)))
            layout = self._layouts[key] = _Layout(
                self.rows, self.weights, key, self._device, self._dtype)
            self._built_layout = True
        return layout

    def take(self) -> LayerStatsSnapshot | None:
        """The snapshot of the last tracked step (once), with the cost and the cadence
        measured so far: taken after ``record``, they include this snapshot's own cost."""
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None:
            return None
        return dataclasses.replace(snapshot, overhead=self.overhead, interval=self.interval())


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




class Tracker:
    """The per-step half of Instruments: gradient statistics and the final assembly."""

    def __init__(self, owner: Instruments, rec: _Recording, histograms: bool) -> None:
        self.owner = owner
        self.rec = rec
        self.histograms = histograms
        self.has_grads = False

    def after_backward(self) -> None:
        """Copy the raw gradients (before clipping) into the buffer; later calls are
        ignored. One _foreach op; a weight without a gradient counts as zeros."""
        if self.has_grads or self.rec.layout is None:
            return
        views = self.rec.layout.grad_views
        grads = [w.grad for w in self.owner.weights]
        with torch.no_grad():
            torch._foreach_copy_([v for v, g in zip(views, grads, strict=True) if g is not None],
                                 [g for g in grads if g is not None])
            for view, grad in zip(views, grads, strict=True):
                if grad is None:
                    view.zero_()
        self.has_grads = True

    def finish(self, step: int, *, update: bool) -> LayerStatsSnapshot:
        """Reduce everything and bring it to the host in one transfer, then assemble."""
        owner, rows, rec = self.owner, self.owner.rows, self.rec
        if not rows or rec.layout is None:
            return LayerStatsSnapshot(step=step, layers=(), histograms=(),
                                      sample_rows=ACT_SAMPLE_ROWS)
        lay = owner._layout_for(rec.key())
        with torch.no_grad():
            if lay is not rec.layout:
                guess = rec.layout
                _move(rec, guess, lay)
                if not guess.used:  # the first step's guess was wrong: drop it
                    owner._layouts.pop(guess.key, None)
            owner._layout = lay  # the next step expects these shapes again
            lay.used = True
            # Weight figures describe the weights this step computed with (before its
            # update): a NaN that the update spreads upstream is then not blamed on them.
            after = owner.weights  # read under no_grad: no detach needed
            if not update:  # the weights as they are (the init probe)
                torch._foreach_copy_(lay.prev_views, after)
            signals = [t for i in sorted(rec.grad_out) for t in rec.grad_out[i][1:]]
            values = _reduce(lay, after if update else None, signals, self.histograms)
        parts = _split(values, _transfer_parts(lay, updates=update, signals=len(signals),
                                               histograms=self.histograms))
        return LayerStatsSnapshot(
            step=step,
            layers=_rows(lay, parts, rows, rec, grads=self.has_grads,
                         after=after if update else None),
            histograms=_histogram_events(lay, parts, rows, grads=self.has_grads)
            if self.histograms else (),
            sample_rows=ACT_SAMPLE_ROWS,
        )


def _move(rec: _Recording, old: _Layout, lay: _Layout) -> None:
    """Copy what the step recorded into ``old`` (``rec.layout``) into the layout its
    shapes need (a step whose shapes differ from the last one's: the first, or a smaller
    last batch)."""
    p = lay.k_p * CHUNK  # weights and gradients: the same place in every layout
    lay.flat[:p].copy_(old.flat[:p])
    for i, src in rec.act.items():
        lay.act_slot[i].copy_(src)
    for i, src in rec.dead.items():
        lay.dead_slot[i].copy_(src)
    rec.layout = lay


def _sqrt(var: float) -> float:
    """sqrt of a variance that float rounding may have made slightly negative; NaN stays."""
    return math.sqrt(var) if var > 0 else (var if math.isnan(var) else 0.0)


def _max_abs(lo: float, hi: float) -> float:
    return math.nan if math.isnan(lo) or math.isnan(hi) else max(abs(lo), abs(hi))


def _rows(lay: _Layout, parts: dict[str, list[float]], rows: list[Row], rec: _Recording, *,
          grads: bool, after: list[torch.Tensor] | None) -> tuple[LayerStats, ...]:
    """Per-row figures from the transferred sums (``_transfer_parts``), in float64 on
    the host (a few dozen float operations per row). ``after``: the weights after the
    step's update (None: no update)."""
    n, n_ext = len(rows), lay.n_ext
    ref, slots, ext, updates = parts["ref"], parts["slots"], parts["ext"], parts["updates"]
    sums = parts["signals"]
    signals = {i: (sums[2 * k], sums[2 * k + 1]) for k, i in enumerate(sorted(rec.grad_out))}
    s2, nz, sat, dead = (lay.slot[k] for k in ("s2", "nz", "sat", "dead"))

    def has_finite_values(j: int) -> bool:
        """False when segment ``j`` surely holds a NaN or inf: its extremes say so (kept
        for gradient and activation segments, j >= n). A weight segment may."""
        return j < n or (math.isfinite(ext[j - n]) and math.isfinite(ext[n_ext + j - n]))

    def moments(j: int) -> tuple[float, float, float]:
        """(mean, variance, sum of squares) of segment ``j``, from sums of x and x^2.

        Where the mean dwarfs the spread (float32 squares cancel: constant weights, a
        regression head's offset), or the float32 sums overflowed (squares past ~1e19,
        or chunk sums past 3.4e38 of finite values, which may even meet as inf - inf =
        NaN), they are summed again on the device, centred on the first value and in
        float64. Not for a segment that surely holds a NaN or inf: its figures are not
        finite anyway (so a broken run does not pay a second transfer for them).
        """
        size, r, pad = lay.sizes[j], ref[j], lay.pads[j]
        squares = slots[s2 + j] - pad * r * r  # the padding repeats the first value
        mean = (slots[j] - pad * r) / size
        var = squares / size - mean * mean
        if (not (math.isfinite(mean) and math.isfinite(var)
                 and mean * mean <= CANCELLATION * var) and has_finite_values(j)):
            start = lay.starts[j]
            total, centred, norm = _exact_sums(lay.flat[start : start + size], r)
            offset = total / size
            mean, var, squares = r + offset, centred / size - offset * offset, norm * norm
        return mean, var, squares

    def signal_std(i: int) -> float:
        """Std of row ``i``'s backward signal from the sum and norm its hook took."""
        sample = rec.grad_out[i][0]
        total, norm = signals[i]
        size = sample.numel()
        mean = total / size
        var = norm * norm / size - mean * mean
        if not (math.isfinite(mean) and math.isfinite(var) and mean * mean <= CANCELLATION * var):
            flat = sample.reshape(-1)  # again in float64 (see ``moments``)
            total, centred, _ = _exact_sums(flat, float(flat[0]))
            var = centred / size - (total / size) ** 2
        return _sqrt(var)

    def tensor_figures(j: int) -> tuple[float, float]:
        """(norm, std) of a weight or gradient segment."""
        _, var, squares = moments(j)
        return _sqrt(squares), _sqrt(var)

    nan = math.nan
    out = []
    for i, row in enumerate(rows):
        kind = row.act_kind
        w_norm, w_std = tensor_figures(i)
        g_norm = g_std = g_max = nan
        if grads:
            g_norm, g_std = tensor_figures(n + i)
            g_max = _max_abs(-ext[n_ext + i], ext[i])
        ratio = None
        if after is not None:
            u_norm = updates[i]
            if math.isinf(u_norm) and math.isfinite(w_norm):
                # float32's after - before overflows where weights near +-3e38 change
                # sign: again in float64, one more transfer, on that rare step only.
                u_norm = (after[i].double() - lay.prev_views[i].double()).norm().item()
            ratio = _none_if_nan(u_norm / (w_norm if w_norm > 1e-30 or
                                           math.isnan(w_norm) else 1e-30))
        mean = std = lo = hi = zeros = saturated = dead_share = grad_out = None
        if i in rec.act:
            j = lay.act_seg[i]
            a, e = j - lay.n_p, j - n
            size, r, pad = lay.sizes[j], ref[j], lay.pads[j]
            mean, var, _ = moments(j)
            std = _sqrt(var)
            lo, hi = -ext[n_ext + e], ext[e]
            # sign() maps NaN to 0: a non-finite activation's shares would read as
            # zeros, so they are NaN (not measurable) where the moments are not finite.
            finite = math.isfinite(mean) and math.isfinite(std)
            nonzero = slots[nz + a]  # from norms of sign(x): integers up to rounding
            zeros = 1.0 - (round(nonzero) - pad * (r != 0.0)) / size if finite else nan
            if kind in _SATURATION:
                centre, radius = _SATURATION[kind]
                padded = pad * (abs(r - centre) > _FLOAT32[radius])
                saturated = (slots[sat + a] - padded) / size if finite else nan
            if kind in _DEAD_CAN_HAPPEN:
                dead_share = slots[dead + a] / lay.units[i]  # from maxima: NaN-safe
            if i in signals:
                grad_out = _none_if_nan(signal_std(i))
        out.append(LayerStats(
            name=row.name, kind=type(row.layer).__name__, activation=kind, act_mean=mean,
            act_std=std, act_min=lo, act_max=hi, saturated_frac=saturated,
            dead_frac=dead_share, zero_frac=zeros, grad_out_std=grad_out, weight_norm=w_norm,
            weight_std=w_std, grad_norm=g_norm, grad_std=g_std, grad_max=g_max,
            update_ratio=ratio))
    return tuple(out)


_FLOAT32 = {r: float(torch.tensor(r, dtype=torch.float32)) for _, r in _SATURATION.values()}
"""The saturation radii as the device compares them (float32), for the host's correction."""


def _histogram_events(lay: _Layout, parts: dict[str, list[float]], rows: list[Row], *,
                      grads: bool) -> tuple[Histogram, ...]:
    """The histograms of the transfer (``_transfer_parts``): each one's dropped bin is
    skipped, its HIST_BINS counts kept."""
    lo, hi, counts, width = parts["hist_lo"], parts["hist_hi"], parts["hist_counts"], HIST_BINS + 1
    return tuple(
        Histogram(rows[i].name, quantity, lo=lo[k], hi=hi[k],
                  counts=tuple(map(int, counts[k * width + 1 : k * width + 1 + HIST_BINS])))
        for k, (i, quantity) in enumerate(lay.hist_names)
        if grads or quantity != "grad"
    )


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value
