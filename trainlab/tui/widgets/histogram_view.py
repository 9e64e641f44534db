"""One histogram of one quantity (weights, gradients or activations) of one layer.

Histograms arrive at most about once a second
(docs/architecture.md#per-layer-statistics-and-their-cost), so the view simply repaints
whenever it is handed a new one; the drawing happens in ``render``, only when Textual
paints. In the app it picks the histogram itself from the run state: of the layer
selected in the layer table (the first layer until one is) and the quantity the ``h``
key cycles through.
"""

from __future__ import annotations

from textual.app import RenderResult
from textual_plotext import PlotextPlot

from trainlab.core.protocol import Histogram
from trainlab.tui.feed import RunView
from trainlab.tui.plotting import draw_histogram
from trainlab.tui.state import HISTOGRAM, LAYERS, RUN, RunState

NO_HISTOGRAM_HINT = "no histogram yet: they come every stats.hist_every steps"
QUANTITIES = ("weight", "grad", "act")
"""What a histogram is of, in the order ``h`` cycles through."""


class HistogramView(RunView, PlotextPlot):
    """The latest histogram of the selected layer and quantity, as bars."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._histogram: Histogram | None = None
        self._step = 0
        self.draws = 0
        """How many times the histogram was drawn."""
        self.quantity = QUANTITIES[0]
        self.selected_layer: str | None = None
        """The layer shown: the one selected in the layer table; None until a run's
        first snapshot (then its first layer, where the table's cursor starts)."""
        self._state: RunState | None = None

    def show_run(self, state: RunState, changed: frozenset[str]) -> None:
        """A new run: nothing yet; new histograms, or the first layers: show them."""
        self._state = state
        if RUN in changed:
            self.selected_layer = None
            self.show_histogram(None, step=0)
            return
        if LAYERS in changed and self.selected_layer is None and state.snapshot is not None \
                and state.snapshot.layers:
            self.selected_layer = state.snapshot.layers[0].name
            changed = changed | {HISTOGRAM}
        if HISTOGRAM in changed:
            self._show_selected()

    def select_layer(self, layer: str) -> None:
        """Show ``layer``'s histogram (the layer table's cursor moved to it)."""
        self.selected_layer = layer
        self._show_selected()

    def next_quantity(self) -> None:
        """Cycle between weights, gradients and activations."""
        self.quantity = QUANTITIES[(QUANTITIES.index(self.quantity) + 1) % len(QUANTITIES)]
        self._show_selected()

    def _show_selected(self) -> None:
        state = self._state
        if state is None:  # no run shown yet
            return
        entry = state.histograms.get((self.selected_layer or "", self.quantity))
        if entry is None:
            self.show_histogram(None, step=state.step)
        else:
            self.show_histogram(entry[1], step=entry[0])

    def show_histogram(self, hist: Histogram | None, *, step: int) -> None:
        """Show ``hist``, measured at ``step``; ``None`` shows an empty frame and a hint."""
        if hist is self._histogram and step == self._step:
            return  # the same histogram again: nothing to repaint
        self._histogram, self._step = hist, step
        self.refresh()

    def render(self) -> RenderResult:
        """Draw at the widget's current size, then let plotext build it."""
        self.draws += 1
        hist = self._histogram
        width, height = self.size.width, self.size.height
        if hist is None:
            draw_histogram(
                self.plt,
                lo=0.0,
                hi=0.0,
                counts=(),
                title=NO_HISTOGRAM_HINT,
                width=width,
                height=height,
            )
        else:
            draw_histogram(
                self.plt,
                lo=hist.lo,
                hi=hist.hi,
                counts=hist.counts,
                # The range in the title too: a short view has no room for the x ticks.
                title=f"{hist.layer} {hist.quantity} @ step {self._step}, "
                f"{hist.lo:.3g} to {hist.hi:.3g}",
                width=width,
                height=height,
            )
        return super().render()
