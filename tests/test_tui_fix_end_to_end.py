"""A fix the real detectors propose, applied from the app with the real engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import tiny_config
from tests.test_tui_end_to_end import wait_for
from trainlab.engine.host import ThreadEngine
from trainlab.tui.app import TrainlabApp

# End to end: the real detectors and the real engine under the app.
pytestmark = pytest.mark.slow

# A deep-ish tanh net with N(0, 1) weights on 64 inputs: pre-activations of std ~8, so
# most tanh units sit at +-1 from the first step (docs/field-knowledge.md#initialization).
SATURATED = {
    "data__dataset": "unit_gaussian", "data__features": 64, "data__classes": 4,
    "data__samples": 400, "data__preprocess": "none", "model__depth": 4,
    "model__width": 64, "model__activation": "tanh", "init__scheme": "normal",
    "init__std": 1.0, "run__max_steps": 1_000_000, "stats__every": 1,
}


async def test_the_saturation_alerts_init_fix_restarts_with_xavier(tmp_path: Path) -> None:
    app = TrainlabApp(tiny_config(**SATURATED), engine_factory=ThreadEngine)
    async with app.run_test(size=(120, 40)) as pilot:
        first = app.run_state
        await wait_for(pilot, lambda: any(a.kind == "saturation" for a in first.alerts))
        alert = next(a for a in first.alerts if a.kind == "saturation")
        assert alert.layers and alert.layers[0] == "blocks.0.linear"
        xavier = next(i for i, fix in enumerate(alert.fixes, start=1)
                      if fix.changes.get("init.scheme") == "xavier_normal")
        assert alert.fixes[xavier - 1].restart  # a cold key: applying it restarts

        await pilot.press("5")  # the Alerts view: f fixes the highlighted alert
        panel_alerts = list(first.alerts)
        for _ in range(panel_alerts.index(alert)):
            await pilot.press("down")
        await pilot.press("f")
        if len(app.fixes_now(alert)) > 1:
            await pilot.press(str(xavier))
        await pilot.press("y")  # confirm: this run stops, a new one starts
        await wait_for(pilot, lambda: app.run_state is not first
                       and app.run_state.config.init.scheme == "xavier_normal"
                       and app.run_state.step > 0)
        fixed = app.run_state.config
        # Only the fix's changes differ from the run it replaced.
        assert fixed == first.config.with_values(alert.fixes[xavier - 1].changes)
        assert any("saturation" in entry.text for entry in app.run_state.log)
        await app.shutdown()
