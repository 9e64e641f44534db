"""What the compare screen looks like: SVG snapshots of runs built from canned events.

The runs have fixed ids and the screen a fixed clock, so the pictures do not depend on
when the tests run. Update them after an intended change of the look with
``pytest --snapshot-update tests/test_compare_snapshots.py`` and look at the report
before committing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_tui_compare import Host, three_runs
from trainlab.core import catalog

# SVG snapshots: each starts the app and draws the compare screen.
pytestmark = pytest.mark.slow

AGE_S = 300.0
"""The runs were last written five minutes before the screen's clock."""


def host(root: Path) -> Host:
    """The compare screen over three runs (parent, fork, an unrelated crashed run) with
    the parent as the current run."""
    runs = three_runs(root, fixed_ids=True)
    newest = max(summary.updated_at for summary in catalog.list_runs(root))
    return Host(root, runs.parent, now=lambda: newest + AGE_S)


async def settle(pilot: Any) -> None:
    """Let the screen read the compared runs (a worker) and paint."""
    for _ in range(3):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()


def keys(*pressed: str) -> Any:
    """A run_before that presses ``pressed`` and lets the screen settle."""

    async def run_before(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press(*pressed)
        await settle(pilot)

    return run_before


def test_runs_pane_80x24(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(host(tmp_path), terminal_size=(80, 24), run_before=keys())


def test_chart_pane_80x24(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(host(tmp_path), terminal_size=(80, 24), run_before=keys("enter"))


def test_configs_pane_with_three_runs_80x24(snap_compare: Any, tmp_path: Path) -> None:
    # space picks the crashed run (the cursor starts on the newest), enter compares.
    assert snap_compare(host(tmp_path), terminal_size=(80, 24),
                        run_before=keys("space", "enter", "3"))


def test_metrics_pane_80x24(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(host(tmp_path), terminal_size=(80, 24),
                        run_before=keys("space", "enter", "4"))


def test_every_pane_200x50(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(host(tmp_path), terminal_size=(200, 50),
                        run_before=keys("space", "enter", "v"))
