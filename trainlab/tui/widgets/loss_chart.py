"""The loss chart: train and validation loss, accuracy and learning rate against step.

Data arrive many times a second; drawing costs several milliseconds. So new data only
mark the chart dirty, a timer turns "dirty" into at most one repaint every
``REDRAW_INTERVAL_S``, and the drawing itself happens in ``render``, which Textual
calls only when it actually paints (a hidden tab costs nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual.app import RenderResult
from textual.reactive import reactive
from textual_plotext import PlotextPlot

from trainlab.tui.feed import RunView
from trainlab.tui.plotting import ENDED_EMPTY_TITLE, WAITING_TITLE, draw_loss_chart
from trainlab.tui.series import Series
from trainlab.tui.state import CHART, RUN, STATUS, RunState


class LossChart(RunView, PlotextPlot):
    """Train and validation loss (left axis), accuracy and relative lr (right axis).

    The owner hands over its live series once per run with :meth:`show`, appends to
    them as events arrive and calls :meth:`mark_dirty`; the chart reads them when it
    paints. In the app the run state does both (``show_run``).
    """

    REDRAW_INTERVAL_S: ClassVar[float] = 0.25
    """At most one data-driven repaint per interval, however fast data arrive."""

    log_y: reactive[bool] = reactive(False)
    """Loss axis on a log scale; changing it repaints at once."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._train = Series()
        self._val_loss = Series()
        self._val_accuracy = Series()
        self._lr = Series()
        self._markers: Sequence[tuple[int, str]] = []
        self._overlays: Sequence[tuple[str, Series]] = ()
        self._train_label = "train"
        self._steps_per_epoch: int | None = None
        self._lr_now: float | None = None
        """The run's lr now (the title's; a change while paused has no step yet)."""
        self._empty_title = WAITING_TITLE
        self._dirty = False
        self._version = 0
        """Bumped whenever the picture must change: new data drawn, a new run, log_y."""
        self._drawn: tuple[tuple[int, int, int], RenderResult] | None = None
        self.draws = 0
        """How many times the chart was drawn (tests use it to check the rate)."""

    def on_mount(self) -> None:
        # PlotextPlot.on_mount (theme) runs as well: Textual calls each class's handler.
        self.set_interval(self.REDRAW_INTERVAL_S, self._redraw_if_dirty)

    def show(
        self,
        train: Series,
        val_loss: Series,
        val_accuracy: Series,
        lr: Series,
        markers: Sequence[tuple[int, str]],
    ) -> None:
        """Chart these series from now on (a new run started); they are read, not copied.

        ``markers`` is the owner's live list of ``(step, label)``: appending to it and
        calling :meth:`mark_dirty` adds a marker.
        """
        self._train = train
        self._val_loss = val_loss
        self._val_accuracy = val_accuracy
        self._lr = lr
        self._markers = markers
        self._dirty = False
        self._version += 1
        self.refresh()  # a new run shows at once, not at the next tick

    def show_run(self, state: RunState, changed: frozenset[str]) -> None:
        """A new run's series from now on; new data: repaint at the next tick."""
        if RUN in changed:
            self.show(state.train_loss, state.val_loss, state.val_accuracy, state.lr_history,
                      state.markers)
        if CHART in changed:
            self.mark_dirty()
        if STATUS in changed or RUN in changed:
            ended = state.state in ("finished", "failed")
            empty_title = ENDED_EMPTY_TITLE.format(state=state.shown_state) if ended \
                else WAITING_TITLE
            if (state.lr, empty_title) != (self._lr_now, self._empty_title):
                self._lr_now, self._empty_title = state.lr, empty_title
                self.mark_dirty()

    def compare(
        self,
        overlays: Sequence[tuple[str, Series]],
        *,
        train_label: str,
        steps_per_epoch: int | None = None,
    ) -> None:
        """Draw finished runs with the current one (a lab): see ``draw_loss_chart``.

        ``overlays`` are ``(label, training loss)`` of the finished runs, in epochs when
        ``steps_per_epoch`` (the current run's) is given, else in steps; the current
        run's training loss is labelled ``train_label``.
        """
        self._overlays = overlays
        self._train_label = train_label
        self._steps_per_epoch = steps_per_epoch
        self._version += 1
        self.refresh()

    def mark_dirty(self) -> None:
        """New data arrived: repaint at the next timer tick (cheap; call it freely)."""
        self._dirty = True

    def _redraw_if_dirty(self) -> None:
        if self._dirty:
            self._dirty = False
            self._version += 1
            self.refresh()

    def watch_log_y(self) -> None:
        self._version += 1

    def render(self) -> RenderResult:
        """Draw the chart at the widget's current size, then let plotext build it.

        Textual also repaints for reasons of its own (a layout change elsewhere on the
        screen); those reuse the last picture, so data-driven draws stay within the
        timer's rate.
        """
        key = (self._version, self.size.width, self.size.height)
        if self._drawn is not None and self._drawn[0] == key:
            return self._drawn[1]
        self.draws += 1
        draw_loss_chart(
            self.plt,
            train=self._train,
            val_loss=self._val_loss,
            val_accuracy=self._val_accuracy,
            lr=self._lr,
            markers=self._markers,
            log_y=self.log_y,
            width=self.size.width,
            height=self.size.height,
            overlays=self._overlays,
            train_label=self._train_label,
            steps_per_epoch=self._steps_per_epoch,
            lr_now=self._lr_now,
            empty_title=self._empty_title,
        )
        picture = super().render()
        self._drawn = (key, picture)
        return picture
