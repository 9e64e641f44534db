"""draw_loss_chart and draw_histogram on a standalone plotext figure, checked as text."""

from __future__ import annotations

import numpy as np
import pytest
from textual_plotext.plot import Plot

from trainlab.tui.plotting import WAITING_TITLE, draw_histogram, draw_loss_chart
from trainlab.tui.series import Series

WIDTH, HEIGHT = 100, 30


def series(xs: object, ys: object) -> Series:
    result = Series()
    result.extend(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float))
    return result


def chart(
    train: Series | None = None,
    val_loss: Series | None = None,
    val_accuracy: Series | None = None,
    lr: Series | None = None,
    markers: list[tuple[int, str]] | None = None,
    *,
    log_y: bool = False,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> tuple[Plot, str, list[tuple[list[float], list[float]]]]:
    """Draw a loss chart; the figure, its text without colour codes, the data plotted."""
    plt = Plot()
    draw_loss_chart(
        plt,
        train=train or Series(),
        val_loss=val_loss or Series(),
        val_accuracy=val_accuracy or Series(),
        lr=lr or Series(),
        markers=markers or [],
        log_y=log_y,
        width=width,
        height=height,
    )
    signals = plotted(plt)  # before build(), which rewrites them on a log axis
    return plt, plt.uncolorize(plt.build()), signals


def plotted(plt: Plot) -> list[tuple[list[float], list[float]]]:
    """The (x, y) data plotext was given, one pair per signal (read it before build)."""
    monitor = plt.monitor
    return [(list(x), list(y)) for x, y in zip(monitor.x, monitor.y, strict=True)]


def test_empty_history_draws_a_waiting_frame() -> None:
    _, text, signals = chart()
    assert WAITING_TITLE in text
    assert "┌" in text and "┘" in text  # the frame
    assert signals == []
    assert len(text.splitlines()) == HEIGHT


def test_a_single_point_draws() -> None:
    _, text, _ = chart(series([0], [2.3]))
    assert "step 0" in text and "loss 2.3" in text


def test_everything_at_once_and_the_title_carries_the_current_values() -> None:
    steps = np.arange(500)
    _, text, _ = chart(
        series(steps, np.exp(-steps / 100) + 0.1),
        series(steps[::50], np.exp(-steps[::50] / 100) + 0.2),
        series(steps[::50], np.linspace(0.1, 0.9, 10)),
        series(steps[::10], np.full(50, 3e-4)),
        [(250, "lr 3e-4")],
    )
    assert "step 499" in text
    assert "acc 90.0%" in text
    assert "lr 3.00e-04" in text
    assert "lr/3.0e-04" in text  # the relative lr curve's legend


def test_marker_label_is_drawn() -> None:
    steps = np.arange(1000)
    _, text, _ = chart(series(steps, 1 / (steps + 1)), markers=[(400, "wd 0.01"), (800, "sgd")])
    assert "wd 0.01" in text
    assert "sgd" in text


def test_of_two_overlapping_marker_labels_the_later_change_keeps_its_label() -> None:
    steps = np.arange(1000)
    _, text, _ = chart(series(steps, 1 / (steps + 1)), markers=[(400, "first"), (401, "second")])
    assert "second" in text
    assert "first" not in text


def test_a_marker_at_the_right_edge_keeps_its_whole_label() -> None:
    steps = np.arange(1000)
    _, text, _ = chart(series(steps, 1 / (steps + 1)), markers=[(999, "lr=0.0005")])
    assert "lr=0.0005" in text


def test_nan_and_inf_are_not_drawn() -> None:
    steps = np.arange(2000)
    loss = np.exp(-steps / 500)
    loss[1500:] = np.nan  # a diverged run
    loss[100] = np.inf
    _, text, signals = chart(series(steps, loss), series([0, 1000, 1999], [1.0, np.nan, 0.5]))
    assert len(signals) == 2
    for xs, ys in signals:
        assert np.isfinite(ys).all()
        assert len(xs) == len(ys)
    assert "loss nan" in text  # the title shows the last value as it is


def test_only_nan_draws_a_frame() -> None:
    _, text, _ = chart(series(range(10), [np.nan] * 10))
    assert "loss nan" in text


def test_huge_history_is_decimated_to_two_points_per_column() -> None:
    steps = np.arange(1_000_000)
    loss = np.exp(-steps / 200_000) + 0.01 * np.sin(steps)
    loss[333_333] = 50.0  # a one-step spike must survive
    _, _, signals = chart(series(steps, loss), lr=series(steps, np.full(len(steps), 1e-3)))
    assert len(signals) == 2
    assert all(len(xs) <= 2 * WIDTH for xs, _ in signals)
    assert max(signals[0][1]) == 50.0


@pytest.mark.parametrize(
    "loss",
    [
        [0.0, 1.0, 0.5, 0.0, 0.25],  # zeros: log10 would raise
        [-1.0, 1.0, 0.5, -2.0, 0.25],  # negative (a custom loss)
        [0.0, 0.0, 0.0, 0.0, 0.0],  # nothing a log axis can show
    ],
)
def test_log_y_with_non_positive_values(loss: list[float]) -> None:
    _, text, signals = chart(series(range(5), loss), series([0, 4], [0.0, 0.3]), log_y=True)
    for _, ys in signals:
        assert all(y > 0 for y in ys)
    assert "(log" in text


def test_log_y_sets_the_loss_axis_to_log() -> None:
    steps = np.arange(100)
    plt, text, _ = chart(series(steps, 10.0 ** -(steps / 25)), log_y=True)
    assert plt.monitor.yscale[0] == "log"
    assert "(log)" in text
    plt, _, _ = chart(series(steps, 10.0 ** -(steps / 25)), log_y=False)
    assert plt.monitor.yscale[0] == "linear"


def test_a_figure_is_redrawn_from_scratch() -> None:
    plt = Plot()
    empty = {"val_loss": Series(), "val_accuracy": Series(), "lr": Series()}
    draw_loss_chart(
        plt,
        train=series(range(10), range(1, 11)),
        markers=[(5, "old")],
        log_y=True,
        width=60,
        height=20,
        **empty,
    )
    plt.build()
    draw_loss_chart(
        plt,
        train=series(range(3), [1, 2, 3]),
        markers=[],
        log_y=False,
        width=80,
        height=30,
        **empty,
    )
    assert len(plotted(plt)) == 1
    text = plt.uncolorize(plt.build())
    assert "old" not in text
    assert plt.monitor.yscale[0] == "linear"
    assert len(text.splitlines()) == 30
    assert {len(line) for line in text.splitlines()} == {80}


@pytest.mark.parametrize("size", [(0, 0), (1, 1), (10, 4), (40, 10)])
def test_tiny_sizes_do_not_raise(size: tuple[int, int]) -> None:
    chart(series(range(100), range(100)), markers=[(50, "x")], width=size[0], height=size[1])


# --- histogram ---------------------------------------------------------------------


def histogram(lo: float, hi: float, counts: list[int], title: str = "h") -> tuple[Plot, str]:
    plt = Plot()
    draw_histogram(plt, lo=lo, hi=hi, counts=counts, title=title, width=80, height=20)
    return plt, plt.uncolorize(plt.build())


def test_histogram_bars_stand_at_bin_centres() -> None:
    plt, text = histogram(-1.0, 1.0, [1, 4, 9, 2], title="blocks.0.linear grad @ step 120")
    assert "blocks.0.linear grad @ step 120" in text
    assert "█" in text
    assert plt.monitor.xlim[0] == [-1.0, 1.0]
    # plotext draws each bar as a rectangle: its x extent is centred on the bin centre.
    centres = [(min(xs) + max(xs)) / 2 for xs, _ in plotted(plt)]
    assert centres == pytest.approx([-0.75, -0.25, 0.25, 0.75])
    assert [max(ys) for _, ys in plotted(plt)] == [1, 4, 9, 2]


def test_histogram_of_all_zero_counts() -> None:
    plt, text = histogram(0.0, 1.0, [0] * 32, title="zeros")
    assert "zeros" in text
    assert "█" not in text
    assert plt.monitor.ylim[0] == [0, 1]


def test_histogram_with_lo_equal_to_hi() -> None:
    plt, text = histogram(0.5, 0.5, [0, 0, 10, 0])
    assert "(all 0.5)" in text
    assert "█" in text
    lo, hi = plt.monitor.xlim[0]
    assert lo < 0.5 < hi


def test_histogram_without_counts_or_with_a_non_finite_range() -> None:
    _, text = histogram(0.0, 0.0, [], title="no histogram yet")
    assert "no histogram yet" in text
    _, text = histogram(float("nan"), 1.0, [1, 2])
    assert "range not finite" in text
