"""A sweep in the app: its spec, and its leaderboard read from the study's storage.

``trainlab sweep SWEEP.toml`` (without ``--headless``) starts the sweep's process in the
background (``trainlab.cli.main``) and opens the app on the sweep's screen
(``trainlab.tui.screens.sweep``), which reads the leaderboard from here once a second on
a worker thread: the study is in its storage, whoever trains it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainlab.core.engine_lock import engine_alive
from trainlab.core.sweep import SweepError, SweepSpec
from trainlab.core.sweep_study import TrialRow

LeaderboardReader = Callable[[], list[TrialRow]]


class SweepSession:
    """The sweep the app shows: what it searches and, once read, its trials."""

    def __init__(self, spec: SweepSpec, reader: LeaderboardReader | None = None,
                 running: Callable[[], bool] | None = None) -> None:
        self.spec = spec
        self.rows: list[TrialRow] = []
        """The leaderboard as last read, best first."""
        self.error = ""
        """Why the last read failed ('' when it did not)."""
        self._reader = reader or self._read_study
        self._running = running or (lambda: engine_alive(spec.directory))
        self._study: Any = None

    @property
    def keys(self) -> list[str]:
        """The searched config fields, in the sweep file's order."""
        return [d.key for d in self.spec.space]

    @property
    def log_scaled(self) -> set[str]:
        return {d.key for d in self.spec.space if d.log}

    def running(self) -> bool:
        """Does a sweep process of this machine work on the study now?"""
        return self._running()

    def read(self) -> list[TrialRow]:
        """Read the leaderboard (blocking: a worker thread calls it); on failure the rows
        stay as they were and ``error`` says why."""
        try:
            self.rows = self._reader()
            self.error = ""
        except (SweepError, OSError) as exc:
            self.error = str(exc)
        except Exception as exc:  # the storage's own errors (sqlalchemy): said, not raised
            self.error = f"{type(exc).__name__}: {exc}"
        return self.rows

    def _read_study(self) -> list[TrialRow]:
        from trainlab.core.sweep_study import leaderboard, open_study

        if self._study is None:
            self._study = open_study(self.spec, create=False)
        return leaderboard(self._study)

    def row(self, number: int) -> TrialRow | None:
        return next((r for r in self.rows if r.number == number), None)
