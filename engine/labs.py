"""Labs: the lessons of KNOWLEDGE.md as experiments of several runs, compared.

A lab is only data: an explanation (what to look for and why) and its variants, each
a ``Preset`` (a named set of config changes, applied through the same validated path
as ``--set``). Every variant of a lab starts from the same seed, so runs that share an
architecture start from the same initial weights and see the same batches; only what
the lab varies differs. ``trainlab --preset LAB`` opens a lab in the app (its
explanation, then its runs one after another, their curves overlaid on one chart);
``trainlab run --preset LAB --headless`` runs them in turn and prints a comparison.

No torch here: the app reads labs to show and start them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.config import Config
from engine.presets import PRESETS, Preset


@dataclass(frozen=True)
class Lab:
    """A lesson: what it shows, why, and the runs that show it."""

    name: str
    summary: str
    """One line for ``trainlab presets``."""
    explanation: str
    """The lab's screen in the app: what varies, what to look for, and why (a few short
    paragraphs of plain text, lines under 80 columns)."""
    variants: tuple[Preset, ...]
    """The runs, in the order they train; each preset's summary labels its curve."""
    compare_by: str = "step"
    """The x axis their curves share: step, or epoch where the variants take different
    numbers of steps per epoch (e.g. batch sizes)."""

    def configs(self, base: Config) -> list[tuple[str, Config]]:
        """(variant name, config) for every run of the lab, each applied over ``base``."""
        return [(v.name, base.with_values(v.changes)) for v in self.variants]


def _variants(common: Mapping[str, Any], *runs: tuple[str, str, Mapping[str, Any]]
              ) -> tuple[Preset, ...]:
    """Presets sharing ``common`` changes, each with its own on top."""
    return tuple(Preset(name, summary, {**common, **changes}) for name, summary, changes in runs)


LABS: dict[str, Lab] = {
    lab.name: lab
    for lab in (
        Lab(
            "init",
            "weight init on a deep tanh net: small, large, Xavier (the classic experiment)",
            "Ten tanh layers of 500 units on unit-Gaussian input, three ways to draw the\n"
            "initial weights.\n\n"
            "With zero-mean weights of variance g, each layer multiplies the variance of\n"
            "its input by n_in * g. Too small (std 0.01) and the activations shrink layer\n"
            "by layer towards 0, and the gradients vanish with them. Too large (std 1)\n"
            "and tanh saturates at -1 and +1, where its slope is 0. Xavier sets\n"
            "g = 2 / (n_in + n_out) and keeps the std in a healthy band at every depth.\n\n"
            "Watch the Layers view (2): act std per layer, the saturated column, and the\n"
            "histograms of activations (h).",
            tuple(PRESETS[name] for name in ("init-small", "init-large", "init-xavier")),
        ),
    )
}


def find_lab(name: str) -> Lab | None:
    """The lab called ``name``, or None when it is not a lab (it may be a preset)."""
    return LABS.get(name)
