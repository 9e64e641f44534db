"""The one architectural rule: engine/ knows no UI, tui/ knows no torch."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True, timeout=120,
    )
    return {name.split(".")[0] for name in proc.stdout.split()}


def test_engine_imports_no_ui_library():
    loaded = _modules_after(
        "import engine.loop, engine.host, engine.cli, engine.protocol, engine.config, "
        "engine.serve, engine.store, engine.checkpoint, engine.resume, engine.export"
    )
    assert "torch" in loaded  # the check below means something
    assert not loaded & {"textual", "rich", "plotext", "textual_plotext"}


def test_tui_and_the_cli_front_import_no_torch():
    loaded = _modules_after(
        "import tui.app, tui.cli, tui.bridge, tui.screens.compare, engine.cli, engine.config, "
        "engine.protocol, engine.store, engine.serve"
    )
    assert {"engine", "textual", "plotext"} <= loaded  # the app really was imported
    assert "torch" not in loaded
