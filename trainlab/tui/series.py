"""Growable chart histories and the min-max decimation that keeps them fast to draw.

A run can last a million steps; plotext takes seconds to draw a million points but a
few milliseconds to draw a few hundred. So the raw history lives in numpy arrays that
grow by doubling, and :func:`decimate` reduces whatever range is visible to the
minimum and the maximum of each plot column before plotext sees it. Min-max keeps a
one-step loss spike visible, where averaging would flatten it.

numpy only: no plotext, no Textual.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INITIAL_CAPACITY = 1024
"""Points allocated by a new series (12 KiB); doubled whenever it fills."""


class Series:
    """A history of ``(x, y)`` points: x as float64 (training steps), y as float32.

    Appending is amortised O(1): the arrays double when full, so a million points
    cost about twenty reallocations and 12 MB (4 MB of them y). x is expected to be
    non-decreasing (steps only go forward), which :func:`decimate` relies on.
    """

    __slots__ = ("_size", "_x", "_y")

    def __init__(self) -> None:
        self._x = np.empty(INITIAL_CAPACITY, dtype=np.float64)
        self._y = np.empty(INITIAL_CAPACITY, dtype=np.float32)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"Series(len={self._size}, last={self.last()})"

    @property
    def x(self) -> np.ndarray:
        """The x values so far, a read-only view (no copy).

        A view taken before the series grows keeps showing the old buffer: it is a
        snapshot of the points it covers, never of later ones.
        """
        return _read_only(self._x[: self._size])

    @property
    def y(self) -> np.ndarray:
        """The y values so far, a read-only float32 view (no copy)."""
        return _read_only(self._y[: self._size])

    def append(self, x: float, y: float) -> None:
        """Add one point at the end."""
        if self._size == len(self._x):
            self._reserve(self._size + 1)
        self._x[self._size] = x
        self._y[self._size] = y
        self._size += 1

    def truncate_after(self, x: float) -> None:
        """Drop the points past ``x`` (a run resumed from an earlier checkpoint trains
        those steps again); the buffers keep their capacity."""
        self._size = int(np.searchsorted(self.x, x, side="right"))

    def extend(self, xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray) -> None:
        """Add many points at the end: one copy per array, whatever the count.

        Raises:
            ValueError: when ``xs`` and ``ys`` differ in length.
        """
        new_x = np.asarray(xs, dtype=np.float64).ravel()
        new_y = np.asarray(ys, dtype=np.float32).ravel()
        if len(new_x) != len(new_y):
            raise ValueError(f"extend: {len(new_x)} x values but {len(new_y)} y values")
        end = self._size + len(new_x)
        self._reserve(end)
        self._x[self._size : end] = new_x
        self._y[self._size : end] = new_y
        self._size = end

    def last(self) -> tuple[float, float] | None:
        """The most recent point, or ``None`` when the series is empty."""
        if not self._size:
            return None
        return float(self._x[self._size - 1]), float(self._y[self._size - 1])

    def _reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` points, at least doubling so growth stays amortised."""
        if capacity <= len(self._x):
            return
        new_capacity = max(capacity, 2 * len(self._x))
        for name in ("_x", "_y"):
            old: np.ndarray = getattr(self, name)
            grown = np.empty(new_capacity, dtype=old.dtype)
            grown[: self._size] = old[: self._size]
            setattr(self, name, grown)


def _read_only(view: np.ndarray) -> np.ndarray:
    """Mark a view read-only; the series' own buffer stays writable."""
    view.flags.writeable = False
    return view


def decimate(
    x: np.ndarray,
    y: np.ndarray,
    buckets: int,
    x_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a series to the minimum and maximum of each of ``buckets`` x intervals.

    The visible range (``x_range``, else the data's own x extent) is split into
    ``buckets`` intervals of equal width, ``np.linspace(lo, hi, buckets + 1)``; a
    point belongs to the interval whose left edge is at or before it, and the last
    interval also takes ``hi``. Each non-empty interval yields its lowest and its
    highest point (one point when they coincide) in x order, so the result has at
    most ``2 * buckets`` points, keeps every spike, and is a subset of the input.

    Points whose y is NaN or infinite are dropped rather than allowed to poison an
    interval (a diverged loss is reported elsewhere). When at most ``2 * buckets``
    points remain they are returned as they are.

    ``x`` must be non-decreasing (as steps are): the range is cut by binary search
    and the intervals by ``searchsorted``, so the cost is O(n) in numpy, a few
    milliseconds for a million points, with no Python loop per point or per interval.

    Args:
        x: The x values, non-decreasing.
        y: The y values, same length as ``x``.
        buckets: How many intervals; typically the plot's width in columns.
        x_range: Only points with ``lo <= x <= hi`` are kept, when given.

    Returns:
        The kept x and y values, new arrays in the input dtypes.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"decimate: {len(x)} x values but {len(y)} y values")
    buckets = max(1, int(buckets))

    if x_range is not None:
        lo, hi = x_range
        # Binary search, not a mask: the visible window costs O(log n) to find.
        start = int(np.searchsorted(x, lo, side="left"))
        stop = int(np.searchsorted(x, hi, side="right"))
        x, y = x[start:stop], y[start:stop]
    # One pass to find out; a diverged history costs two more (np.where below).
    finite = np.isfinite(y)
    all_finite = bool(finite.all())
    if (len(y) if all_finite else np.count_nonzero(finite)) <= 2 * buckets:
        return (x.copy(), y.copy()) if all_finite else (x[finite], y[finite])

    lo, hi = (float(x[0]), float(x[-1])) if x_range is None else x_range
    edges = np.linspace(lo, hi, buckets + 1)
    starts = np.searchsorted(x, edges[:-1], side="left")
    # Empty intervals share their start with the next one; reduceat needs each once.
    starts = np.unique(starts)
    starts = starts[starts < len(x)]
    lengths = np.diff(starts, append=len(x))

    # A non-finite point can never be an interval's minimum or maximum: it becomes
    # +inf for the minimum and -inf for the maximum. Cheaper than copying the finite
    # points out, and the x grid stays the same.
    lows = y if all_finite else np.where(finite, y, np.inf)
    highs = y if all_finite else np.where(finite, y, -np.inf)
    mins = np.minimum.reduceat(lows, starts)
    maxs = np.maximum.reduceat(highs, starts)
    at_min = _first_index_of(lows, starts, lengths, mins)
    at_max = _first_index_of(highs, starts, lengths, maxs)
    if not all_finite:
        # An interval with no finite point at all still "found" an infinity: drop it.
        has_finite = np.isfinite(mins)
        at_min, at_max = at_min[has_finite], at_max[has_finite]

    left = np.minimum(at_min, at_max)
    right = np.maximum(at_min, at_max)
    pairs = np.stack([left, right], axis=1).ravel()
    keep = np.ones(len(pairs), dtype=bool)
    keep[1::2] = left != right  # a flat interval contributes one point, not two
    indices = pairs[keep]
    return x[indices], y[indices]


def _first_index_of(
    y: np.ndarray, starts: np.ndarray, lengths: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """For each interval, the index of its first point equal to that interval's ``values``.

    A vectorised argmin/argmax over intervals of different lengths: compare every
    point with its interval's extreme (one O(n) pass), keep only the first point of
    each run of equal hits plus each interval's own first point, then find the first
    hit at or after each start by binary search. Keeping run starts only means a
    constant stretch (a fixed learning rate over a million steps) yields one hit per
    interval, not a million. Every interval holds its extreme, so every search lands.
    """
    hit = y == np.repeat(values, lengths)
    first = hit.copy()
    first[1:] &= ~hit[:-1]
    first[starts] = hit[starts]
    candidates = np.flatnonzero(first)
    return candidates[np.searchsorted(candidates, starts)]
