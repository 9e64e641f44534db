"""How numbers and ages read, the same in the command line and the app."""

from __future__ import annotations


def format_percent(value: float | None, suffix: str = "%") -> str:
    """A fraction as a percentage; '-' where there is none (the CLI's and the app's)."""
    return "-" if value is None else f"{100 * value:.1f}{suffix}"


def format_number(value: float | None, spec: str = ".4g") -> str:
    """A number in ``spec``; '-' where there is none (the CLI's and the app's)."""
    return "-" if value is None else format(value, spec)


AGE_UNITS = ((86400, "d"), (3600, "h"), (60, "m"), (1, "s"))
"""``format_age``: (seconds, suffix) from the largest unit down; the largest that fits
is shown in whole units ("3h ago": precise enough to tell runs apart in a list)."""


def format_age(seconds: float) -> str:
    """How long ago, in one whole unit: '12s ago', '5m ago', '3h ago', '2d ago'."""
    if seconds < 1:
        return "just now"
    size, unit = next((size, unit) for size, unit in AGE_UNITS if seconds >= size)
    return f"{int(seconds // size)}{unit} ago"
