"""Running the loop in a thread beside an asyncio application.

Events reach the application through an ``asyncio.Queue`` fed with
``call_soon_threadsafe``: the trainer never waits for the UI (``call_from_thread``
would block it until the UI had run the callback). Commands go the other way
through a plain ``queue.Queue`` that the loop drains at step boundaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from pathlib import Path
from typing import Any

from trainlab.core import catalog, protocol
from trainlab.core.config import Config
from trainlab.core.serving import STOP_GRACE_S


class ThreadHost:
    """One run of ``trainlab.engine.loop.run`` in a background thread.

    With a ``run_dir`` the run is served from it (``trainlab.engine.serve``: the store, the
    checkpoints and the socket, so another terminal can attach while this process
    trains it); without one it only trains (tests).

    Call ``start()`` from inside the running event loop that will read ``events``.
    Stop it cooperatively with ``stop()``: the loop finishes its step and returns,
    instead of being killed inside torch at interpreter exit.
    """

    def __init__(self, config: Config, run_dir: Path | None = None) -> None:
        self.config = config
        self.run_dir = run_dir
        self.commands: queue.Queue[protocol.Command] = queue.Queue()
        self.events: asyncio.Queue[protocol.Event] = asyncio.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start training; events begin to arrive in ``self.events``."""
        if self._thread is not None:
            raise RuntimeError("this host has already been started")
        aloop = asyncio.get_running_loop()

        def emit(event: Any) -> None:
            # RuntimeError: the app's loop is closed, nobody is listening.
            with contextlib.suppress(RuntimeError):
                aloop.call_soon_threadsafe(self.events.put_nowait, event)

        def main() -> None:
            if self.run_dir is None:
                from trainlab.engine.loop import run  # torch: imported here, off the UI's start-up

                run(self.config, self.commands, emit)
                return
            from trainlab.engine.serve import serve

            try:
                serve(self.run_dir, self.config, show=emit, commands=self.commands)
            except Exception as exc:  # e.g. the run is busy: say so, as a failed run
                for event in protocol.failure_events("internal", str(exc)):
                    emit(event)

        self._thread = threading.Thread(target=main, name="trainlab-engine", daemon=True)
        self._thread.start()

    def send(self, command: Any) -> None:
        """Queue a command; it applies at the next step boundary."""
        if not protocol.is_command(command):
            raise TypeError(f"{command!r} is not a protocol command")
        self.commands.put(command)

    @property
    def running(self) -> bool:
        """Is the training thread still alive?"""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Ask the run to stop and wait for the thread; True when it has ended."""
        if self._thread is None:
            return True
        if self._thread.is_alive():
            self.commands.put(protocol.Stop())
        self._thread.join(timeout)
        return not self._thread.is_alive()


class ThreadEngine:
    """A run in a thread of this process (``--inline``, and end-to-end tests); it ends
    with the app."""

    detachable = False
    replays_history = False

    def __init__(self) -> None:
        self.events: asyncio.Queue[protocol.Event] = asyncio.Queue()
        self.run_dir: Path | None = None
        self._host: Any = None

    async def start(self, config: Config) -> None:
        """Start the loop in a thread; its events go straight into ``events``."""
        self.run_dir = catalog.new_run(config.run.dir, config)
        host = ThreadHost(config, self.run_dir)
        host.events = self.events
        host.start()
        self._host = host

    def send(self, command: Any) -> None:
        """Queue a command for the next step boundary."""
        if self._host is not None:
            self._host.send(command)

    async def detach(self) -> None:
        """A thread cannot outlive the app: the same as ``stop``."""
        await self.stop()

    async def stop(self) -> None:
        """Stop cooperatively: the thread finishes its step (never killed inside torch)."""
        if self._host is not None and not await asyncio.to_thread(self._host.stop,
                                                                  STOP_GRACE_S):
            self.events.put_nowait(protocol.Notice(
                -1, "warning", f"the training thread did not stop within {STOP_GRACE_S:g} s"))
