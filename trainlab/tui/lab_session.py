"""A lab in the app: its variants trained one after another, their results kept.

``trainlab --preset LAB`` hands the app a ``LabSession``: the lab (its explanation and
variants) and the config of each run. The app trains the current variant; when it
finishes, the session records its result and training-loss curve and names the next
one. The finished curves are what the loss chart overlays on the current run's, so
the runs a lab compares end up on one chart (in steps, or in epochs where the
variants take different numbers of steps per epoch).

No widgets here: the bookkeeping is tested without a screen.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainlab.core import protocol
from trainlab.core.config import Config
from trainlab.core.labs import Lab
from trainlab.tui.series import Series


@dataclass(frozen=True)
class VariantResult:
    """How one finished variant ended: a row of the lab's results table
    (``trainlab.core.labs.result_row``)."""

    name: str
    finished: protocol.RunFinished
    """Its RunFinished: the reason (completed, early_stopped, stopped or non_finite) and
    the final numbers, seconds included."""


class LabSession:
    """Which variant of ``lab`` trains now, and what the finished ones reached.

    ``runs`` are ``(variant name, config)`` in training order (``Lab.configs`` of the
    base config, with the user's ``--set`` overrides on top).
    """

    def __init__(self, lab: Lab, runs: list[tuple[str, Config]]) -> None:
        if not runs:
            raise ValueError(f"lab {lab.name!r} has no runs to train")
        # lab.compare_by needs no check here: trainlab.core.labs.Lab refuses an unknown one.
        self.lab = lab
        self.runs = runs
        self.index = -1
        """The variant training now (or last trained); -1 before the lab starts."""
        self.results: dict[int, VariantResult] = {}
        """Finished variants by index (a variant run again replaces its result)."""
        self._curves: dict[int, Series] = {}
        self._summaries = {variant.name: variant.summary for variant in lab.variants}

    @property
    def started(self) -> bool:
        """Has the first variant been started?"""
        return self.index >= 0

    @property
    def complete(self) -> bool:
        """Has every variant finished?"""
        return len(self.results) == len(self.runs)

    @property
    def by_epoch(self) -> bool:
        """Do the curves share an epoch axis (else a step axis)?"""
        return self.lab.compare_by == "epoch"

    @property
    def current_name(self) -> str:
        """The name of the variant training now (the first one before the lab starts)."""
        return self.runs[max(self.index, 0)][0]

    def summary(self, name: str) -> str:
        """What variant ``name`` shows, in one line (its preset's summary)."""
        return self._summaries.get(name, "")

    def begin(self) -> Config:
        """Start at the first variant: its config."""
        self.index = 0
        return self.runs[0][1]

    def record(self, finished: protocol.RunFinished, train_loss: Series,
               steps_per_epoch: int | None) -> VariantResult:
        """Keep how the current variant ended and its training-loss curve.

        ``steps_per_epoch`` (from its RunStarted) puts the curve in epochs when the lab
        compares by epoch; without it the curve stays in steps.
        """
        if not self.started:
            raise RuntimeError("record: the lab has not started")
        result = VariantResult(self.current_name, finished)
        self.results[self.index] = result
        if self.by_epoch and steps_per_epoch:
            curve = Series()
            curve.extend(train_loss.x / steps_per_epoch, train_loss.y)
            self._curves[self.index] = curve
        else:
            self._curves[self.index] = train_loss  # a finished run's series no longer grows
        return result

    def advance(self) -> tuple[str, Config] | None:
        """Move to the next variant: its name and config; None after the last one."""
        if self.index + 1 >= len(self.runs):
            return None
        self.index += 1
        return self.runs[self.index]

    def overlays(self) -> list[tuple[str, Series]]:
        """(name, training loss) of every finished variant but the one shown as current."""
        return [(self.runs[i][0], self._curves[i]) for i in sorted(self._curves)
                if i != self.index]
