"""Series growth and views; decimate against a brute-force reference."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from trainlab.tui.series import INITIAL_CAPACITY, Series, decimate


def reference_buckets(
    xs: list[float], ys: list[float], buckets: int, x_range: tuple[float, float] | None = None
) -> list[list[tuple[float, float]]]:
    """The finite points of each of ``buckets`` equal x intervals, by plain Python.

    Interval k holds lo + k*w <= x < lo + (k+1)*w, w = (hi - lo) / buckets, and the
    last one also holds hi: the definition in decimate's docstring, computed here
    point by point without numpy.
    """
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
    if x_range is not None:
        points = [(x, y) for x, y in points if x_range[0] <= x <= x_range[1]]
    lo, hi = x_range if x_range is not None else (xs[0], xs[-1])
    width = (hi - lo) / buckets
    groups: list[list[tuple[float, float]]] = [[] for _ in range(buckets)]
    for x, y in points:
        index = min(int((x - lo) / width), buckets - 1)
        groups[index].append((x, y))
    return groups


def spiky(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted random x (no point on a bucket edge) and a noisy decay with spikes."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0.0, 1000.0, n))
    y = (np.exp(-x / 300.0) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    spikes = rng.choice(n, size=10, replace=False)
    y[spikes] = rng.choice([-5.0, 8.0], size=10)
    return x, y


# --- Series ------------------------------------------------------------------------


def test_append_grows_past_capacity_and_keeps_every_point() -> None:
    series = Series()
    count = 3 * INITIAL_CAPACITY + 7
    for i in range(count):
        series.append(i, i * 0.5)
    assert len(series) == count
    assert series.x.dtype == np.float64
    assert series.y.dtype == np.float32
    np.testing.assert_array_equal(series.x, np.arange(count, dtype=np.float64))
    np.testing.assert_array_equal(series.y, (np.arange(count) * 0.5).astype(np.float32))
    assert series.last() == (count - 1, (count - 1) * 0.5)


def test_extend_appends_after_existing_points() -> None:
    series = Series()
    series.append(0, 1.0)
    series.extend([1, 2, 3], [2.0, 3.0, 4.0])
    series.extend(range(4, 5000), [5.0] * 4996)  # one extend past several doublings
    assert len(series) == 5000
    assert series.x[:4].tolist() == [0, 1, 2, 3]
    assert series.y[:4].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert series.x[-1] == 4999
    assert series.y[-1] == 5.0


def test_extend_with_different_lengths_raises_and_changes_nothing() -> None:
    series = Series()
    with pytest.raises(ValueError):
        series.extend([1, 2], [1.0])
    assert len(series) == 0


def test_views_are_read_only_and_cover_only_the_filled_part() -> None:
    series = Series()
    series.extend([1, 2], [3.0, 4.0])
    assert len(series.x) == 2 and len(series.y) == 2
    with pytest.raises(ValueError):
        series.x[0] = 9
    with pytest.raises(ValueError):
        series.y[0] = 9
    series.append(3, 5.0)  # the series itself stays writable
    assert series.y.tolist() == [3.0, 4.0, 5.0]


def test_a_view_taken_before_growth_still_holds_its_points() -> None:
    series = Series()
    series.extend(range(10), range(10))
    old = series.y
    series.extend(range(10, 10 * INITIAL_CAPACITY), range(10, 10 * INITIAL_CAPACITY))
    assert old.tolist() == list(range(10))


def test_empty_series() -> None:
    series = Series()
    assert len(series) == 0
    assert series.last() is None
    assert series.x.shape == (0,)
    series.append(7, 8.0)
    assert series.last() == (7.0, 8.0)


# --- decimate ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("buckets", [1, 7, 50])
def test_decimate_keeps_each_buckets_min_and_max(seed: int, buckets: int) -> None:
    x, y = spiky(3000, seed)
    out_x, out_y = decimate(x, y, buckets)
    kept = set(zip(out_x.tolist(), out_y.tolist(), strict=True))
    groups = reference_buckets(x.tolist(), y.tolist(), buckets)
    for group in groups:
        if group:  # the first lowest and the first highest point, as decimate picks
            assert min(group, key=lambda p: p[1]) in kept
            assert max(group, key=lambda p: p[1]) in kept
    # At most two points per non-empty bucket, all taken from the input, in x order.
    assert len(out_x) <= 2 * sum(1 for group in groups if group)
    assert kept <= set(zip(x.tolist(), y.tolist(), strict=True))
    assert np.all(np.diff(out_x) >= 0)
    assert out_y.dtype == np.float32


def test_decimate_keeps_spikes() -> None:
    x, y = spiky(100_000, seed=11)
    _, out_y = decimate(x, y, 100)
    assert out_y.max() == y.max() == 8.0
    assert out_y.min() == y.min() == -5.0


def test_decimate_orders_min_and_max_within_a_bucket_by_x() -> None:
    # One bucket: the maximum comes first, then the minimum.
    x = np.arange(10.0)
    y = np.array([0, 9, 5, 5, 5, 5, 5, 5, -3, 0], dtype=np.float32)
    out_x, out_y = decimate(x, y, 1)
    assert out_x.tolist() == [1.0, 8.0]
    assert out_y.tolist() == [9.0, -3.0]


def test_decimate_of_a_constant_bucket_gives_one_point() -> None:
    x = np.arange(1000.0)
    y = np.ones(1000, dtype=np.float32)
    out_x, out_y = decimate(x, y, 10)
    assert len(out_x) == 10
    assert set(out_y.tolist()) == {1.0}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_decimate_drops_non_finite_values(bad: float) -> None:
    x, y = spiky(5000, seed=3)
    y[::7] = bad
    y[1000:1400] = bad  # whole buckets with no finite point
    out_x, out_y = decimate(x, y, 40)
    assert np.isfinite(out_y).all()
    groups = reference_buckets(x.tolist(), y.tolist(), 40)
    kept = set(zip(out_x.tolist(), out_y.tolist(), strict=True))
    for group in groups:
        if group:
            assert min(group, key=lambda p: p[1]) in kept
            assert max(group, key=lambda p: p[1]) in kept


def test_decimate_of_all_non_finite_is_empty() -> None:
    x = np.arange(1000.0)
    y = np.full(1000, np.nan, dtype=np.float32)
    out_x, out_y = decimate(x, y, 10)
    assert len(out_x) == len(out_y) == 0


def test_short_series_come_back_unchanged_but_finite() -> None:
    x = np.arange(20.0)
    y = np.arange(20, dtype=np.float32)
    out_x, out_y = decimate(x, y, 10)
    np.testing.assert_array_equal(out_x, x)
    np.testing.assert_array_equal(out_y, y)
    y[3] = np.nan
    out_x, out_y = decimate(x, y, 10)
    assert 3.0 not in out_x.tolist()
    assert len(out_x) == 19


def test_decimate_of_empty_and_single_point() -> None:
    out_x, out_y = decimate(np.array([]), np.array([], dtype=np.float32), 10)
    assert len(out_x) == 0
    out_x, out_y = decimate(np.array([5.0]), np.array([2.0], dtype=np.float32), 10)
    assert out_x.tolist() == [5.0] and out_y.tolist() == [2.0]


def test_x_range_restricts_to_the_visible_window() -> None:
    x, y = spiky(20_000, seed=5)
    window = (250.0, 500.0)
    out_x, out_y = decimate(x, y, 30, x_range=window)
    assert out_x.min() >= 250.0 and out_x.max() <= 500.0
    kept = set(zip(out_x.tolist(), out_y.tolist(), strict=True))
    for group in reference_buckets(x.tolist(), y.tolist(), 30, x_range=window):
        if group:
            assert min(group, key=lambda p: p[1]) in kept
            assert max(group, key=lambda p: p[1]) in kept


def test_decimate_of_equal_x_values() -> None:
    x = np.full(1000, 3.0)
    y = np.arange(1000, dtype=np.float32)
    _, out_y = decimate(x, y, 10)
    assert out_y.tolist() == [0.0, 999.0]


def test_decimate_a_million_points_takes_a_few_milliseconds() -> None:
    n = 1_000_000
    x = np.arange(n, dtype=np.float64)
    y = np.random.default_rng(0).random(n).astype(np.float32)
    decimate(x, y, 200)  # warm-up
    times = []
    for _ in range(5):
        start = time.perf_counter()
        out_x, _ = decimate(x, y, 200)
        times.append(time.perf_counter() - start)
    assert len(out_x) <= 400
    # ~1.5 ms measured; generous for a loaded CI machine, far from a per-point loop.
    assert min(times) < 0.05


def test_truncate_after_drops_exactly_the_later_points() -> None:
    series = Series()
    series.extend(range(1, 3001), [float(i) for i in range(1, 3001)])
    series.truncate_after(1200)
    assert len(series) == 1200 and series.x[-1] == 1200 and series.y[-1] == 1200.0
    series.truncate_after(5000)  # past the end: nothing to drop
    assert len(series) == 1200
    series.extend([1201], [7.0])  # growing again goes on from the cut
    assert series.x[-2:].tolist() == [1200, 1201] and series.y[-1] == 7.0
    series.truncate_after(0)
    assert len(series) == 0
