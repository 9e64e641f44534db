"""The help screen: every key of the app and what the views show."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

VIEWS_TEXT = """
## Views
- **Train**: the loss chart (train, validation, accuracy, learning rate; markers where a
  setting changed) over the layer table.
- **Layers**: the layer table, the signal view (activation and gradient std across depth,
  log scale) and histograms of the selected layer.
- **Config**: every option; *live* ones apply to the running training (Enter), the others
  when you restart (r).
- **Log**: changes, checkpoints, warnings and failures with their traceback.
- **Alerts**: the doctor's findings while the run trains, newest first: the layers, why,
  the evidence numbers and the numbered fixes (f applies the highlighted one's).
- **Compare** (C): pick runs, overlay their loss curves, configs side by side with the
  differences highlighted, final and best metrics.

A run trains in a process of its own: **q** leaves it training (`trainlab attach` opens
it again), **x** stops it. An app attached to a run another one steers only views it
until **t** takes control.

Every action is also in the command palette: **ctrl+p**, then type its name.

Colours in the layer table: yellow is outside the healthy range, red far outside it.
Activation statistics use a sample of the batch (at most 64 rows).
"""


def keys_markdown(bindings: list[tuple[str, str]]) -> str:
    """A markdown table of (keys, description) pairs."""
    rows = "\n".join(f"| `{keys}` | {description} |" for keys, description in bindings)
    return f"## Keys\n\n| key | action |\n|---|---|\n{rows}\n"


class HelpScreen(ModalScreen[None]):
    """Keys and views; Escape, q or ? closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark,f1", "dismiss", "Close"),
    ]

    def __init__(self, bindings: list[tuple[str, str]]) -> None:
        super().__init__()
        self.key_rows = bindings

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown("# trainlab\n" + keys_markdown(self.key_rows) + VIEWS_TEXT)
