"""One histogram of one quantity (weights, gradients or activations) of one layer.

Histograms arrive at most about once a second
(docs/architecture.md#per-layer-statistics-and-their-cost), so the view simply repaints
whenever it is handed a new one; the drawing happens in ``render``, only when Textual
paints.
"""

from __future__ import annotations

from textual.app import RenderResult
from textual_plotext import PlotextPlot

from trainlab.core.protocol import Histogram
from trainlab.tui.plotting import draw_histogram

NO_HISTOGRAM_HINT = "no histogram yet: they come every stats.hist_every steps"


class HistogramView(PlotextPlot):
    """The latest histogram of the selected layer and quantity, as bars."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._histogram: Histogram | None = None
        self._step = 0
        self.draws = 0
        """How many times the histogram was drawn."""

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
