"""The app's one connection to an engine: commands out, events into an ``asyncio.Queue``.

Two engines behind one interface:

- ``ServedEngine`` (the default): the run is served by ``python -m trainlab.engine.serve`` from its
  run directory, in a process and a session of its own, so that it outlives the app, the
  terminal and an SSH connection. The app talks to it over the run's Unix socket (JSON
  lines) and reads the history from the run's store: it can start a run (and detach from
  it) or attach to one that is already training, as its controller or as a viewer.
  Training gets an interpreter of its own, so the UI does not slow a Python-bound model
  down (bench/tui.py measures it).
- ``trainlab.engine.host.ThreadEngine`` (``--inline``): the loop in a thread of this
  process; the run ends with the app. The command line passes it in as the app's
  ``engine_factory``: the app itself never imports the engine.

Tests put a fake engine with the same methods in their place. Either way the app reads
one queue of protocol events and never learns where training runs; torch is imported
only inside the engine (its own process, or the thread once it starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Protocol, assert_never

from trainlab.core import catalog, engine_lock, protocol, rundir, store
from trainlab.core.config import Config
from trainlab.core.protocol import (
    Attached,
    Command,
    Event,
    SessionCommand,
)
from trainlab.core.serving import STOP_GRACE_S, socket_path, spawn_detached

CONNECT_TIMEOUT_S = 120.0
"""How long a starting engine may take to serve its socket (a cold torch import and a
big dataset take a while) while its process is alive."""
CONNECT_POLL_S = 0.05
MAX_EVENT_LINE = 64 * 1024 * 1024
"""asyncio's default line limit (64 KiB) is too small for a deep net's histograms."""
LOG_TAIL_BYTES = 4000
"""How much of the log's end a crash report carries."""


class Engine(Protocol):
    """What the app needs of an engine: start it, send it commands, leave or stop it."""

    events: asyncio.Queue[Event]
    detachable: bool
    """Does the run go on after ``detach`` (its own process), or end with the app?"""
    replays_history: bool
    """Does the queue start with the run's recorded history, ended by ``Attached`` (after
    which every event is live)?"""
    run_dir: Path | None
    """The run's directory (store, checkpoints, log) once started; None for none."""

    async def start(self, config: Config) -> None:
        """Start training ``config`` (or attach); events begin to arrive in ``events``."""

    def send(self, command: Command | SessionCommand) -> None:
        """Queue a command; the engine applies it at its next step boundary."""

    async def detach(self) -> None:
        """Leave the run as it is (a detachable one trains on), release the engine."""

    async def stop(self) -> None:
        """Stop training cooperatively (the step finishes), then release the engine."""


def log_tail(path: Path) -> str:
    """The end of an engine's log (its last traceback), without reading it all."""
    with contextlib.suppress(OSError), path.open("rb") as log:
        size = log.seek(0, os.SEEK_END)
        log.seek(max(0, size - LOG_TAIL_BYTES))
        return log.read().decode("utf-8", errors="replace")
    return ""


class ServedEngine:
    """A run served by ``trainlab.engine.serve`` in its own process, reached over its socket.

    ``ServedEngine()`` starts a new run (``start`` creates its directory under
    ``run.dir`` and spawns the engine); ``ServedEngine(run_dir)`` attaches to an existing
    run: the history comes from its store, live events from its socket. A run whose
    engine is gone (finished, stopped, crashed) is shown from its store alone.
    """

    detachable = True
    replays_history = True
    """Its queue starts with the run's recorded history; ``Attached`` follows it, and
    every event after that is live (the app pops up no alert of the past)."""

    def __init__(self, run_dir: Path | None = None, *, role: str = "control") -> None:
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.run_dir = run_dir
        self.role = role
        self._process: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self._finished = False
        self._detached = False

    @property
    def log_path(self) -> Path | None:
        """The engine's output (and the user's prints) go here."""
        return self.run_dir / rundir.LOG_FILE if self.run_dir is not None else None

    async def start(self, config: Config) -> None:
        """Create and spawn the run (no ``run_dir`` given), or attach to ``run_dir``."""
        if self._reader is not None:
            raise RuntimeError("this engine has already been started")
        if self.run_dir is None:
            self.run_dir = catalog.new_run(config.run.dir, config)
            self._process = spawn_detached(self.run_dir)
        elif why := rundir.not_yours(self.run_dir):
            # Another user's run: its socket and store are theirs (and refuse us anyway).
            self._finished = True
            for event in protocol.failure_events("config", why, step=-1):
                self.events.put_nowait(event)
            return
        connection = await self._connect()
        attached = None
        if connection is not None:
            reader, self._writer = connection
            self._write(protocol.Attach(self.role))
            try:
                attached = protocol.from_json((await reader.readline()).decode())
            except (ValueError, ConnectionError):
                attached = None
        if not isinstance(attached, Attached):
            # Nobody serves it (or the engine ended as we came): the store is all there is.
            await self._close_connection()
            await self._replay(upto=None)
            if not self._finished:
                self._crashed("the run's engine is not running and the run never finished "
                              f"(it crashed); {self._resume_hint()}")
            return
        await self._replay(upto=attached.last_seq)
        self._finished = False  # an engine serves it: its newest segment is still going
        self.events.put_nowait(attached)  # after the history: what follows is live
        self._reader = asyncio.create_task(self._read_events(reader))

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The run's socket, waiting while its engine starts; None when no engine serves
        it (or the one we spawned died first)."""
        assert self.run_dir is not None
        path = socket_path(self.run_dir)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT_S
        while True:
            try:
                return await asyncio.open_unix_connection(os.fspath(path), limit=MAX_EVENT_LINE)
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            except PermissionError:  # a socket not ours to use: no engine of ours serves it
                return None
            spawned_alive = self._process is not None and self._process.poll() is None
            if not spawned_alive and not engine_lock.engine_alive(self.run_dir):
                return None
            if loop.time() > deadline:
                return None
            await asyncio.sleep(CONNECT_POLL_S)

    async def _replay(self, upto: int | None) -> None:
        """The store's events up to ``upto`` into the queue (read off the UI's thread)."""
        assert self.run_dir is not None
        run_dir = self.run_dir

        def read() -> list[Event]:
            runs = store.RunStore.open(run_dir, write=False)
            try:
                return [event for _, event in runs.events(upto=upto)]
            finally:
                runs.close()

        try:
            history = await asyncio.to_thread(read)
        except Exception as exc:  # an unreadable store: say so, the live events still come
            self.events.put_nowait(protocol.Notice(
                -1, "error", f"the run's history could not be read: {exc}"))
            return
        for event in history:
            self._note_ending(event)
            self.events.put_nowait(event)

    def _note_ending(self, event: Event) -> None:
        """Has the run (its newest segment: a resumed run starts again) finished?"""
        match event:
            case protocol.RunStarted():
                self._finished = False
            case protocol.RunFinished():
                self._finished = True
            case (protocol.MetricsBatch() | protocol.EvalDone() | protocol.StateChanged()
                  | protocol.HyperChanged() | protocol.CommandRejected()
                  | protocol.CheckpointSaved() | protocol.Notice() | protocol.EngineFailed()
                  | protocol.LayerStatsSnapshot() | protocol.NonFiniteDetected()
                  | protocol.AlertRaised() | protocol.LrFound() | protocol.Attached()
                  | protocol.ControlChanged()):
                pass  # the run goes on (a failure is followed by its RunFinished)
            case _:
                assert_never(event)

    def _crashed(self, message: str) -> None:
        self._finished = True
        tail = log_tail(self.log_path) if self.log_path is not None else ""
        for event in protocol.failure_events("internal", message, tail, step=-1):
            self.events.put_nowait(event)

    def _write(self, message: Command | SessionCommand) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        writer.write(protocol.to_json(message).encode() + b"\n")  # buffered: no await

    def send(self, command: Command | SessionCommand) -> None:
        """Write one command line (a run or a session command); a gone engine ignores it."""
        if not (protocol.is_command(command) or protocol.is_session_command(command)):
            raise TypeError(f"{command!r} is not a protocol command")
        self._write(command)

    async def _read_events(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError as exc:  # a line over MAX_EVENT_LINE: the stream is lost
                self._crashed(f"the engine sent an unreadable event: {exc}")
                return
            except ConnectionError:
                line = b""
            if not line:
                break
            try:
                event = protocol.from_json(line.decode())
            except Exception as exc:  # any malformed line: report it, keep reading
                self.events.put_nowait(protocol.Notice(
                    -1, "error", f"unreadable line from the engine ({exc}): {line[:200]!r}"))
                continue
            self._note_ending(event)
            self.events.put_nowait(event)
        if self._detached or self._finished:
            return
        assert self.run_dir is not None
        if self._process is None and engine_lock.engine_alive(self.run_dir):
            # E.g. this viewer fell too far behind and the engine let it go.
            self.events.put_nowait(protocol.Notice(
                -1, "error", "the connection to the engine closed; the run goes on: "
                f"trainlab attach {self.run_dir.name} shows it again"))
            return
        await self._wait_for_exit()
        code = self._process.returncode if self._process is not None else None
        why = f" (exit code {code})" if code is not None else ""
        self._crashed(f"the engine process ended unexpectedly{why}; {self._resume_hint()}")

    def _resume_hint(self) -> str:
        """What a crashed run offers: resume from its checkpoint, or nothing to resume."""
        assert self.run_dir is not None
        try:
            summary = catalog.summarize(self.run_dir)
        except (store.StoreError, OSError):
            summary = None
        if summary is not None and summary.resumable:
            return (f"trainlab resume {self.run_dir.name} goes on from its last checkpoint "
                    f"(the steps after it train again)")
        return "it wrote no checkpoint to resume from"

    async def _wait_for_exit(self) -> None:
        """Until the engine we spawned has exited (a viewer cannot wait on it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_GRACE_S
        while self._process is not None and self._process.poll() is None \
                and loop.time() < deadline:
            await asyncio.sleep(CONNECT_POLL_S)

    async def _close_connection(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def detach(self) -> None:
        """Close the connection; the run trains on and ``trainlab attach`` finds it."""
        self._detached = True
        await self._close_connection()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait({self._reader})

    async def stop(self) -> None:
        """Ask for a stop and wait for the run's last events (a checkpoint is written);
        SIGTERM the engine if it does not end in time, then detach."""
        if self._reader is not None and not self._finished:
            self.send(protocol.Stop("stopped from the app"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), STOP_GRACE_S)
        process = self._process
        if process is not None and process.poll() is None:
            await self._wait_for_exit()
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGTERM)
        await self.detach()
