"""The list of an alert's fixes to pick from, numbered as the Alerts view numbers them.

``f`` on an alert with several fixes opens it: Enter on the highlighted fix, or the
fix's own number key (the number its card in the Alerts view shows), or Escape for none.
"""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType

from trainlab.core import protocol
from trainlab.tui.screens.confirm import ChoiceScreen
from trainlab.tui.widgets.alerts_panel import describe_fix

NUMBER_KEYS = 9
"""Fixes 1 to 9 have a number key; an alert has two or three fixes, so more is never
needed (a tenth fix is still picked with the arrows and Enter)."""


def fix_choice(number: int, fix: protocol.Fix) -> str:
    """A fix as the picker lists it: its number in the alert's card, its label and what
    applying it does."""
    return f"{number}. {describe_fix(fix)}"


class FixPicker(ChoiceScreen):
    """Pick one of ``fixes`` ((number in the card, fix) pairs); dismissed with the
    picked fix's ``fix_choice`` text, or None."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(str(n), f"pick({n})", f"fix {n}", show=False)
        for n in range(1, NUMBER_KEYS + 1)
    ]

    def __init__(self, title: str, fixes: list[tuple[int, protocol.Fix]]) -> None:
        super().__init__(title, [fix_choice(n, fix) for n, fix in fixes], "")
        self.numbers = [n for n, _fix in fixes]

    def action_pick(self, number: int) -> None:
        """The fix with ``number``; a number not in the list does nothing (the picker
        stays open, so the user sees which numbers there are)."""
        if number in self.numbers:
            self.dismiss(self.choices[self.numbers.index(number)])
        else:
            self.notify(f"no fix {number} here: pick one of "
                        f"{', '.join(map(str, self.numbers))}", severity="warning", timeout=3)
