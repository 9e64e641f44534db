"""LossChart (and HistogramView) in a running Textual app: redraw rate, no idle
redraws, log toggle."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from textual.app import App, ComposeResult

from trainlab.core.protocol import Histogram
from trainlab.tui.series import Series
from trainlab.tui.widgets.histogram_view import NO_HISTOGRAM_HINT, HistogramView
from trainlab.tui.widgets.loss_chart import LossChart

pytestmark = pytest.mark.asyncio


class ChartApp(App[None]):
    """Only the chart, with live series the test appends to."""

    def __init__(self) -> None:
        super().__init__()
        self.train, self.val_loss, self.val_accuracy, self.lr = (Series() for _ in range(4))
        self.markers: list[tuple[int, str]] = []

    def compose(self) -> ComposeResult:
        yield LossChart(id="chart")

    def on_mount(self) -> None:
        chart = self.query_one(LossChart)
        chart.show(self.train, self.val_loss, self.val_accuracy, self.lr, self.markers)


def title(chart: LossChart) -> str:
    """The title of the last drawn figure."""
    return str(chart.plt.monitor.title)


@pytest.mark.slow
async def test_fast_data_are_drawn_at_most_about_four_times_a_second() -> None:
    app = ChartApp()
    async with app.run_test(size=(100, 30)) as pilot:
        chart = app.query_one(LossChart)
        await pilot.pause()
        before = chart.draws
        start = time.monotonic()
        step = 0
        while time.monotonic() - start < 1.0:
            app.train.append(step, 1.0 / (step + 1))
            chart.mark_dirty()
            step += 1
            await asyncio.sleep(0.002)
        elapsed = time.monotonic() - start
        await pilot.pause(LossChart.REDRAW_INTERVAL_S * 1.5)  # let the last tick paint
        draws = chart.draws - before

        assert step > 100  # data really arrived faster than the chart redraws
        assert 2 <= draws <= math.ceil(elapsed / LossChart.REDRAW_INTERVAL_S) + 1
        assert draws <= 5 * (elapsed + LossChart.REDRAW_INTERVAL_S * 1.5) + 1
        assert f"step {step - 1}" in title(chart)  # the last point is on screen


@pytest.mark.slow
async def test_no_redraw_when_nothing_changed() -> None:
    app = ChartApp()
    async with app.run_test(size=(100, 30)) as pilot:
        chart = app.query_one(LossChart)
        app.train.extend(range(100), [1.0] * 100)
        chart.mark_dirty()
        await pilot.pause(LossChart.REDRAW_INTERVAL_S * 2)
        settled = chart.draws
        assert "step 99" in title(chart)
        await pilot.pause(LossChart.REDRAW_INTERVAL_S * 4)
        assert chart.draws == settled


async def test_mark_dirty_redraws_only_at_the_next_tick() -> None:
    app = ChartApp()
    async with app.run_test(size=(100, 30)) as pilot:
        chart = app.query_one(LossChart)
        await pilot.pause()
        before = chart.draws
        app.train.append(0, 2.0)
        for _ in range(50):
            chart.mark_dirty()
        await pilot.pause(LossChart.REDRAW_INTERVAL_S * 1.6)
        assert chart.draws == before + 1


async def test_toggling_log_y_redraws_at_once_on_a_log_axis() -> None:
    app = ChartApp()
    async with app.run_test(size=(100, 30)) as pilot:
        chart = app.query_one(LossChart)
        app.train.extend(range(100), [10.0 ** -(i / 25) for i in range(100)])
        chart.mark_dirty()
        await pilot.pause(LossChart.REDRAW_INTERVAL_S * 2)
        before = chart.draws
        assert chart.plt.monitor.yscale[0] == "linear"

        chart.log_y = True
        await pilot.pause()
        assert chart.draws == before + 1
        assert chart.plt.monitor.yscale[0] == "log"
        assert "(log)" in title(chart)

        chart.log_y = False
        await pilot.pause()
        assert chart.draws == before + 2
        assert chart.plt.monitor.yscale[0] == "linear"


async def test_empty_run_shows_the_waiting_frame_and_show_redraws_at_once() -> None:
    app = ChartApp()
    async with app.run_test(size=(100, 30)) as pilot:
        chart = app.query_one(LossChart)
        await pilot.pause()
        assert title(chart) == "waiting for the first steps"

        train = Series()
        train.extend([5, 6], [1.0, 0.5])
        before = chart.draws
        chart.show(train, Series(), Series(), Series(), [(6, "lr 0.1")])
        await pilot.pause()
        assert chart.draws == before + 1
        assert "step 6" in title(chart)
        assert "lr 0.1" in chart.plt.monitor.text


# --- the histogram view: the same paint-time drawing ------------------------------


class HistogramApp(App[None]):
    def compose(self) -> ComposeResult:
        yield HistogramView()


async def test_histogram_view_shows_a_hint_then_the_histogram_it_is_given() -> None:
    app = HistogramApp()
    async with app.run_test(size=(80, 20)) as pilot:
        view = app.query_one(HistogramView)
        view.show_histogram(None, step=0)
        await pilot.pause()
        assert view.plt.monitor.title == NO_HISTOGRAM_HINT

        hist = Histogram("blocks.0.linear", "grad", -1.0, 1.0, (1, 5, 2, 0))
        view.show_histogram(hist, step=120)
        await pilot.pause()
        # The range is in the title: a short view has no room for the x ticks.
        assert view.plt.monitor.title == "blocks.0.linear grad @ step 120, -1 to 1"
        draws = view.draws

        view.show_histogram(hist, step=120)  # the same one again: no repaint
        await pilot.pause()
        assert view.draws == draws
