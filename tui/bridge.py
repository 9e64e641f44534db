"""The app's one connection to an engine: commands out, events into an ``asyncio.Queue``.

Two engines behind one interface (DESIGN.md section 3):

- ``ProcessEngine`` (the default): ``python -m engine.worker`` as a child process, the
  protocol as JSON lines over its stdin/stdout. Training gets an interpreter of its
  own, so the UI does not slow a Python-bound model down (bench/tui.py measures it).
- ``ThreadEngine`` (``--inline``): the loop in a thread of this process.

Tests put a fake engine with the same three methods in their place. Either way the
app reads one queue of protocol events and never learns where training runs; torch
is imported only inside the engine (the child, or the thread once it starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Protocol

from engine import protocol
from engine.config import Config

STOP_GRACE_S = 10.0
"""How long a stopped engine may take to finish its step and say so before it is killed."""
MAX_EVENT_LINE = 64 * 1024 * 1024
"""asyncio's default line limit (64 KiB) is too small for a deep net's histograms."""
LOG_TAIL_BYTES = 4000
"""How much of the log's end a crash report carries."""


class Engine(Protocol):
    """What the app needs of an engine: start it, send it commands, stop it."""

    events: asyncio.Queue[Any]

    async def start(self, config: Config) -> None:
        """Start training ``config``; events begin to arrive in ``events``."""

    def send(self, command: Any) -> None:
        """Queue a command; the engine applies it at its next step boundary."""

    async def stop(self) -> None:
        """Stop training cooperatively (the step finishes), then release the engine."""


class ProcessEngine:
    """A run in a child process; its stderr (and the user's prints) go to ``log_path``."""

    def __init__(self, log_path: Path) -> None:
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.log_path = log_path
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._finished = False

    async def start(self, config: Config) -> None:
        """Spawn the worker in its own session (the terminal's Ctrl-C is the app's)."""
        if self._process is not None:
            raise RuntimeError("this engine has already been started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "engine.worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                start_new_session=True, limit=MAX_EVENT_LINE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        first = json.dumps(protocol.encode(config.to_dict()), allow_nan=False)
        self._write(first)
        self._reader = asyncio.create_task(self._read_events())

    def _write(self, line: str) -> None:
        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return
        process.stdin.write(line.encode() + b"\n")  # buffered by the transport: no await

    def send(self, command: Any) -> None:
        """Write one command line; a finished engine ignores it."""
        if not protocol.is_command(command):
            raise TypeError(f"{command!r} is not a protocol command")
        self._write(protocol.to_json(command))

    async def _read_events(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        while True:
            try:
                line = await stdout.readline()
            except ValueError as exc:  # a line over MAX_EVENT_LINE: the stream is lost
                # step -1: the step is unknown here (the app shows its own).
                message = f"the engine sent an unreadable event: {exc}"
                for event in protocol.failure_events("internal", message, step=-1):
                    self.events.put_nowait(event)
                self._finished = True
                self._kill()  # unread, it would soon block on a full pipe
                break
            if not line:
                break
            try:
                event = protocol.from_json(line.decode())
            except Exception as exc:  # any malformed line: report it, keep reading
                self.events.put_nowait(protocol.Notice(
                    -1, "error", f"unreadable line from the engine ({exc}): {line[:200]!r}"))
                continue
            if isinstance(event, protocol.RunFinished):
                self._finished = True
            self.events.put_nowait(event)
        code = await self._process.wait()
        if not self._finished:  # killed, or crashed before it could report
            self._finished = True
            message = f"the engine process ended unexpectedly (exit code {code})"
            for event in protocol.failure_events("internal", message, self._log_tail(),
                                                 step=-1):
                self.events.put_nowait(event)

    def _log_tail(self) -> str:
        """The end of the engine's log (its last traceback), without reading it all."""
        with contextlib.suppress(OSError), self.log_path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - LOG_TAIL_BYTES))
            return log.read().decode("utf-8", errors="replace")
        return ""

    async def stop(self) -> None:
        """Ask for a stop, close its input, wait; kill it only if it does not end."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            self.send(protocol.Stop())
        if process.stdin is not None:
            process.stdin.close()  # end of input also means stop; and frees the transport
        if process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except TimeoutError:
                self._kill()
                await process.wait()
        if self._reader is not None:
            # E.g. a DataLoader worker the engine forked may still hold the pipe open.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._reader, STOP_GRACE_S)

    def _kill(self) -> None:
        """SIGKILL the engine's whole process group (it leads its own session)."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)


class ThreadEngine:
    """A run in a thread of this process (``--inline``, and end-to-end tests)."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self._host: Any = None

    async def start(self, config: Config) -> None:
        """Start the loop in a thread; its events go straight into ``events``."""
        from engine.host import ThreadHost  # no torch here: the thread imports it

        host = ThreadHost(config)
        host.events = self.events
        host.start()
        self._host = host

    def send(self, command: Any) -> None:
        """Queue a command for the next step boundary."""
        if self._host is not None:
            self._host.send(command)

    async def stop(self) -> None:
        """Stop cooperatively: the thread finishes its step (never killed inside torch)."""
        if self._host is not None and not await asyncio.to_thread(self._host.stop,
                                                                  STOP_GRACE_S):
            self.events.put_nowait(protocol.Notice(
                -1, "warning", f"the training thread did not stop within {STOP_GRACE_S:g} s"))
