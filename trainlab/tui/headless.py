"""The engine's headless commands (``doctor``, ``lr-find``) run from the app on a config.

Each runs as ``python -m trainlab.cli COMMAND --json CONFIG.toml --set run.threads=1`` in a
child process: the app stays responsive (asyncio waits on the pipes, nothing blocks
the UI) and never imports torch, and the run being trained keeps training in its own
engine. The config goes through a temporary TOML file written with
``trainlab.core.config.to_toml``, exactly what a user would pass on the command line.

The app takes the runner as an argument (``CommandRunner``), so its tests put a fake
in place of the child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainlab.core.config import Config, to_toml
from trainlab.core.exits import EXIT_BAD_INPUT

HEADLESS_COMMANDS = ("doctor", "lr-find")
"""The engine commands the app runs on a config; each prints one JSON object."""
CHILD_THREADS = 1
"""The child's run.threads. Its default (cores - 1) beside a training engine that
already uses them oversubscribes the cores and slows both; the checks and the range
test are small and finish in seconds on one thread."""
ERROR_TAIL_CHARS = 2000
"""How much of a failed command's stderr is shown: the end, where a traceback says why."""


@dataclass(frozen=True)
class CommandOutput:
    """What a finished headless command left: its exit code and both streams."""

    returncode: int
    """0 success; the engine CLI's ``EXIT_*`` codes otherwise (1 the run could not be
    built, 2 bad input, 4 the doctor's check failed)."""
    stdout: str
    stderr: str


CommandRunner = Callable[[str, Config], Awaitable[CommandOutput]]
"""``await runner("doctor", config)``: run a headless command on a config."""


async def run_engine_command(command: str, config: Config) -> CommandOutput:
    """Run ``python -m trainlab.cli COMMAND --json CONFIG.toml`` on ``config`` (on
    ``CHILD_THREADS`` threads); wait for it.

    The child leads its own session, so the terminal's Ctrl-C stays the app's.
    Cancelling the wait (the screen showing it closed) kills the child's whole
    process group: nobody would read its answer.

    Raises:
        ValueError: ``command`` is not one of ``HEADLESS_COMMANDS``.
        OSError: the child could not be started.
    """
    if command not in HEADLESS_COMMANDS:
        raise ValueError(f"command {command!r} is not a headless engine command; "
                         f"allowed: {', '.join(HEADLESS_COMMANDS)}")
    handle, name = tempfile.mkstemp(prefix=f"trainlab-{command}-", suffix=".toml")
    path = Path(name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(to_toml(config, comments=False))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "trainlab.cli", command, "--json", str(path),
            "--set", f"run.threads={CHILD_THREADS}",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
        try:
            stdout, stderr = await process.communicate()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise
        assert process.returncode is not None  # communicate() waited for the exit
        return CommandOutput(process.returncode, stdout.decode("utf-8", errors="replace"),
                             stderr.decode("utf-8", errors="replace"))
    finally:
        path.unlink(missing_ok=True)


class HeadlessCommandError(Exception):
    """A headless command gave no report: its message says why, in plain words."""


def json_report(output: CommandOutput, command: str, ok_codes: tuple[int, ...] = (0,),
                ) -> dict[str, Any]:
    """The one JSON object a headless command printed, or why there is none.

    ``ok_codes`` are the exit codes that come with a report (the doctor also reports
    when a check failed, with ``trainlab.cli.commands.EXIT_CHECK_FAILED``).

    Raises:
        HeadlessCommandError: the config was refused (exit code 2: the engine's
            message), the command failed or crashed (its exit code and the end of its
            stderr: the user's traceback when their code raised), or it printed
            something that is not one JSON object (that, and the end of its stderr).
    """
    message = output.stderr.strip()
    tail = message[-ERROR_TAIL_CHARS:] if message else "(nothing on stderr)"
    if output.returncode == EXIT_BAD_INPUT:
        raise HeadlessCommandError(f"{command}: the config was refused: "
                                   f"{message or '(no message)'}")
    if output.returncode not in ok_codes:
        raise HeadlessCommandError(f"{command} failed (exit code {output.returncode}):\n{tail}")
    try:
        report = json.loads(output.stdout)
    except json.JSONDecodeError as exc:
        raise HeadlessCommandError(
            f"{command} printed something that is not its JSON report ({exc}): "
            f"{output.stdout.strip()[:200]!r}; its stderr ends:\n{tail}") from None
    if not isinstance(report, dict):
        raise HeadlessCommandError(f"{command} printed JSON that is not one object: "
                                   f"{output.stdout.strip()[:200]!r}")
    return report
