"""The signal view: activation std and gradient std across depth, live.

The classic init figure (docs/field-knowledge.md#initialization): with a healthy init
both stay in one band from the first layer to the last; a too-small init makes the
activation bars shrink layer by layer, a too-large one saturates them, and vanishing or
exploding gradients show as a slope in the gradient bars. Bars are on a log scale,
because the failures span orders of magnitude.
"""

from __future__ import annotations

import math

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from trainlab.core import protocol
from trainlab.tui.feed import RunView
from trainlab.tui.state import LAYERS, RunState

MIN_DECADES = 2
"""The bars span at least this many powers of ten, so small wobbles stay small."""


def log_range(values: list[float | None]) -> tuple[float, float]:
    """Whole powers of ten around the finite positive values (at least MIN_DECADES).

    Fitted to the snapshot, so a 3x change between layers is visible, while the
    failures that span orders of magnitude still fit on the bars.
    """
    logs = [math.log10(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    if not logs:
        return -MIN_DECADES / 2, MIN_DECADES / 2
    low, high = math.floor(min(logs)), math.ceil(max(logs))
    if high - low < MIN_DECADES:
        middle = (low + high) / 2
        low, high = math.floor(middle - MIN_DECADES / 2), math.ceil(middle + MIN_DECADES / 2)
    return float(low), float(high)


def bar(value: float | None, width: int, scale: tuple[float, float]) -> Text:
    """A bar whose length is log10(value) on ``scale`` (log10 bounds); '!' for NaN/inf."""
    if value is None:
        return Text("-", style="dim")
    if not math.isfinite(value):
        return Text("! non-finite", style="bold red")
    if value <= 0:
        return Text("0", style="dim")
    low, high = scale
    position = (math.log10(value) - low) / (high - low)
    cells = max(1, round(min(1.0, max(0.0, position)) * width))
    return Text("█" * cells + " " * (width - cells))  # padded: the value labels line up


def snapshot_caption(snapshot: protocol.LayerStatsSnapshot, scale: tuple[float, float],
                     width: int) -> str:
    """What the bars are: the scale and the sample the activation figures come from;
    which step, how often, and what watching costs (as the engine measured it). One
    line where ``width`` holds it, else two of about 55-65 columns (the side column)."""
    first = (f"log scale 1e{scale[0]:.0f} to 1e{scale[1]:.0f} · activations: first "
             f"{snapshot.sample_rows} samples")
    second = f"step {snapshot.step:,}"
    if snapshot.interval:
        second += f", every {snapshot.interval:,} steps"
    if snapshot.overhead is not None:
        second += f" · watching: {snapshot.overhead:.1%} of training"
    one_line = f"{second} · {first}"
    return one_line if len(one_line) <= width else f"{first}\n{second}"


def signal_table(snapshot: protocol.LayerStatsSnapshot | None, width: int) -> RenderableType:
    """Two log-scale bars per layer (activation std, gradient std), in forward order."""
    if snapshot is None:
        return Text("No layer statistics yet: they come every stats.every steps.", style="dim")
    # Room for the name (16), two value labels (" 1.2e-05": 8) and the cell padding (6).
    bar_width = max(4, (width - 16 - 2 * 8 - 6) // 2)
    rows = snapshot.layers
    scale = log_range([r.act_std for r in rows] + [r.grad_out_std for r in rows])
    table = Table(box=None, padding=(0, 1), expand=False, show_edge=False)
    table.add_column("layer", no_wrap=True, max_width=16, overflow="ellipsis")
    table.add_column("activation std", no_wrap=True)
    table.add_column("gradient std", no_wrap=True)
    for row in rows:
        act = bar(row.act_std, bar_width, scale)
        act.stylize("green")
        act.append(f" {row.act_std:.2g}" if row.act_std is not None else "")
        grad = bar(row.grad_out_std, bar_width, scale)
        grad.stylize("magenta")
        grad.append(f" {row.grad_out_std:.2g}" if row.grad_out_std is not None else "")
        table.add_row(row.name, act, grad)
    # Under the table, not its caption: a caption wraps at the table's own width.
    return Group(table, Text(snapshot_caption(snapshot, scale, width), style="dim"))


class SignalView(RunView, Static):
    """Activation and gradient std of every layer as bars, from the latest snapshot."""

    snapshot: protocol.LayerStatsSnapshot | None = None

    def show_run(self, state: RunState, changed: frozenset[str]) -> None:
        """Redraw when the layers changed."""
        if LAYERS in changed:
            self.show(state.snapshot)

    def show(self, snapshot: protocol.LayerStatsSnapshot | None) -> None:
        """Redraw for ``snapshot`` at the widget's current width."""
        self.snapshot = snapshot
        self.update(signal_table(snapshot, self.size.width or 80))

    def on_resize(self) -> None:
        self.update(signal_table(self.snapshot, self.size.width or 80))
