"""The help screen: every key of the app and what the views show.

The keys are written from the app's ``BINDINGS`` (``key_help``), not listed twice: a
binding's tooltip says what its key does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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
- **Config**: every option; *live* ones apply to the running training, the others when
  you restart (r). Tab moves between fields; **Enter** edits the focused one (only then
  do keys type into it), **Enter** again applies the edit, **Escape** cancels it.
  Outside an edit every key is the app's: 1-5 switch views, r restarts.
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


def key_name(key: str) -> str:
    """A key as the help writes it: function keys in capitals (F1), others as bound."""
    return key.upper() if re.fullmatch(r"f\d+", key) else key


def key_help(bindings: Iterable[BindingType]) -> list[tuple[str, str, str]]:
    """(action, keys, what it does) for every action whose binding has a tooltip, in the
    bindings' order. The keys are every key bound to the action, " / " between them: a
    binding's first key as the footer shows it (``key_display``), the others by name; a
    key shown the same way twice is written once."""
    found: dict[str, tuple[list[str], list[str]]] = {}
    for binding in bindings:
        if not isinstance(binding, Binding):
            continue
        keys = [key.strip() for key in binding.key.split(",")]
        shown = [binding.key_display or key_name(keys[0]), *map(key_name, keys[1:])]
        names, texts = found.setdefault(binding.action, ([], []))
        names.extend(name for name in shown if name not in names)
        if binding.tooltip:
            texts.append(binding.tooltip)
    return [(action, " / ".join(names), texts[0])
            for action, (names, texts) in found.items() if texts]


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
