"""A run served from its run directory: the loop, the store, checkpoints and a socket.

``serve`` is what every real run goes through, in the foreground (``trainlab run
--headless``) or detached (``python -m trainlab.engine.serve RUN_DIR``, which the app and
``trainlab resume`` / ``fork`` start in a session of its own, so that an SSH drop or a
closed terminal does not stop training). It

- holds the run directory's engine lock for its lifetime (one engine per run; a lock the
  kernel drops when the process dies, so a crashed run is told from a live one);
- records every event in ``run.db`` (``trainlab.core.store``) and writes checkpoints into
  ``checkpoints/`` (``trainlab.engine.checkpoint``);
- serves a Unix-domain socket (mode 0600, owner only, and the peer's uid checked;
  nothing on TCP) carrying JSON lines: commands in, live events out. A client's first
  line is ``Attach``; it is answered by ``Attached``, whose ``last_seq`` says where the
  store's history ends and the socket's live events begin. One client controls the run
  at a time; the others view, until one sends ``TakeControl``;
- turns SIGTERM, SIGINT and SIGHUP into a Stop at the next step boundary (the step
  finishes, a checkpoint is written, the reason is recorded) and exits with 128 + the
  signal's number. A second signal aborts at once.

Costs: the engine thread never waits for a client. Each event is encoded once and put
on every client's bounded outbox (a deque append) and a writer thread per client sends
it; a client that falls ``OUTBOX_MAX_BYTES`` (or ``OUTBOX_LIMIT`` events) behind is
disconnected, its backlog freed at once, and re-attaches from the store.
Where the socket is, starting this process detached and waiting for it to answer are the
client's half, in ``trainlab.core.serving`` (torch-free, for the app).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import itertools
import os
import queue
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainlab.core import engine_lock, protocol, rundir, store
from trainlab.core.config import Config, ConfigError
from trainlab.core.protocol import Command, Emit
from trainlab.core.serving import socket_path

OUTBOX_MAX_BYTES = 4 << 20
"""Bytes of encoded events a client may fall behind before it is disconnected (4 MiB: a
stalled viewer pins at most this much of the engine's memory; it re-attaches from the
store). A snapshot with histograms is about 10 kB for an 8-layer net, so this is some
400 of them, minutes of a run; one event larger than this still goes to a client that
has nothing else waiting."""
OUTBOX_LIMIT = 10_000
"""Events a client may fall behind (however small they are) before it is disconnected:
at ~10 events a second, over 15 minutes of a viewer that stopped reading."""
MAX_COMMAND_LINE = 1 << 20
"""The longest command line a client may send (1 MiB); a longer one closes it."""
CLOSE_GRACE_S = 2.0
"""At the end of a run, how long the writers get to send the last events."""
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Each stops the run cleanly: SIGTERM (kill, systemd, a scheduler), SIGINT (Ctrl-C in
the foreground), SIGHUP (a hang-up; a detached engine is in a session of its own, so an
SSH drop does not send it one)."""


def _peer_uid(conn: socket.socket) -> int | None:
    """The connecting process's uid (SO_PEERCRED, Linux); None where it is not known."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class _Client:
    """One connection: an outbox bounded in bytes and events, drained by its own writer
    thread."""

    def __init__(self, client_id: int, conn: socket.socket) -> None:
        self.id = client_id
        self.conn = conn
        self.role = ""
        """"" until it attached; then control or view."""
        self._outbox: collections.deque[bytes] = collections.deque()
        self._queued = 0
        """Bytes in the outbox."""
        self._finishing = False
        self._ready = threading.Condition()
        """Guards the outbox; the writer waits on it."""
        self.closed = threading.Event()
        self.writer = threading.Thread(target=self._write, name=f"trainlab-client-{client_id}",
                                       daemon=True)
        self.writer.start()

    def push(self, message: Any) -> bool:
        """Queue a message for the writer; False (and the client closes) when it fell
        too far behind. Never blocks."""
        return self.push_line((protocol.to_json(message) + "\n").encode())

    def push_line(self, line: bytes) -> bool:
        """``push`` of a message already encoded (an event goes to every client: it is
        encoded once). A client with ``OUTBOX_MAX_BYTES`` or ``OUTBOX_LIMIT`` events
        unsent is closed instead; one with nothing unsent takes any line."""
        with self._ready:
            if self.closed.is_set():
                return False
            behind = bool(self._outbox) and (len(self._outbox) >= OUTBOX_LIMIT or
                                             self._queued + len(line) > OUTBOX_MAX_BYTES)
            if not behind:
                self._outbox.append(line)
                self._queued += len(line)
                self._ready.notify()
                return True
        self.close()
        return False

    def queued_bytes(self) -> int:
        """Bytes waiting to be sent to this client."""
        return self._queued

    def finish(self) -> None:
        """Send what is queued, then close (the end of the run)."""
        with self._ready:
            self._finishing = True
            self._ready.notify()

    def _write(self) -> None:
        while True:
            with self._ready:
                while not (self._outbox or self._finishing or self.closed.is_set()):
                    self._ready.wait()
                if self.closed.is_set() or not self._outbox:
                    break  # closed, or finishing with everything sent
                line = self._outbox.popleft()
                self._queued -= len(line)
            try:
                self.conn.sendall(line)
            except OSError:  # the client went away (an SSH drop, a closed app)
                break
        self.close()

    def close(self) -> None:
        """Drop the connection (idempotent) and free what was queued for it; the reader
        then ends too."""
        with self._ready:
            if self.closed.is_set():
                return
            self.closed.set()
            # A stalled client's backlog (up to OUTBOX_MAX_BYTES) goes now, not whenever
            # its threads end and the object is collected.
            self._outbox.clear()
            self._queued = 0
            self._ready.notify()  # wake the writer
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.conn.close()


class RunServer:
    """The run's socket: clients attach, one controls, every event goes to all of them.

    ``publish`` is the engine's side (called for every event, after it was recorded);
    commands from the controller go into ``commands``, which the loop drains at step
    boundaries and validates like any other command.
    """

    def __init__(self, path: Path, run_id: str, commands: queue.Queue[Command],
                 history_end: Callable[[], int]) -> None:
        """``history_end`` commits the store and returns its last sequence number; it is
        called under the same lock as ``publish``, so no event falls between the two."""
        self.path = path
        self.run_id = run_id
        self.commands = commands
        self.history_end = history_end
        self.lock = threading.Lock()
        """Orders publish against attach: an event is in the history or on the socket."""
        self.clients: dict[int, _Client] = {}
        """Attached clients, by id."""
        self._connections: set[_Client] = set()
        """Every open connection, attached or not (closed with the server)."""
        self.controller = 0
        self._ids = itertools.count(1)
        self._uid = os.getuid()
        self._listener = self._listen(path)
        self._acceptor = threading.Thread(target=self._accept, name="trainlab-accept",
                                          daemon=True)

    @staticmethod
    def _listen(path: Path) -> socket.socket:
        """Bind the socket with mode 0600 from the start (umask, not a chmod after: no
        moment where another user could connect)."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of a crashed engine (we hold the run's lock)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(os.fspath(path))
        finally:
            os.umask(old_umask)
        listener.listen(16)
        return listener

    def start(self) -> None:
        """Accept clients from now on."""
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed: the run ended
                return
            if _peer_uid(conn) not in (None, self._uid, 0):
                # The socket's mode already refuses other users (root aside, who may do
                # anything anyway); this is belt and braces.
                with contextlib.suppress(OSError):
                    conn.close()
                continue
            client = _Client(next(self._ids), conn)
            with self.lock:
                self._connections.add(client)
            threading.Thread(target=self._read, args=(client,), daemon=True,
                             name=f"trainlab-reader-{client.id}").start()

    # --- a client's lines -------------------------------------------------------------

    def _read(self, client: _Client) -> None:
        try:
            stream = client.conn.makefile("rb")
            while not client.closed.is_set():
                line = stream.readline(MAX_COMMAND_LINE + 1)
                if not line:
                    break
                if len(line) > MAX_COMMAND_LINE:
                    client.push(protocol.CommandRejected(
                        "unknown", f"a command line over {MAX_COMMAND_LINE} bytes; "
                        "connection closed", -1))
                    client.finish()
                    return
                if line.strip():
                    self._command(client, line)
        except OSError:
            pass
        finally:
            self._leave(client)

    def _command(self, client: _Client, line: bytes) -> None:
        """One line from a client: a session command, a run command, or a rejection."""
        try:
            message = protocol.from_json(line.decode("utf-8"))
        except (ValueError, TypeError, KeyError, RecursionError) as exc:  # and bad UTF-8
            text = line.decode("utf-8", errors="replace").strip()
            client.push(protocol.CommandRejected(
                "unknown", f"unreadable command {text[:200]!r}: {exc}", -1))
            return
        name = type(message).__name__
        if isinstance(message, protocol.Attach):
            self._attach(client, message.role)
        elif not client.role:
            client.push(protocol.CommandRejected(
                name, "attach first: the first line must be an Attach command", -1))
        elif isinstance(message, protocol.TakeControl):
            with self.lock:
                self._set_controller(client.id, f"client {client.id} took control")
        elif not protocol.is_command(message):
            client.push(protocol.CommandRejected(name, "an event is not a command", -1))
        elif client.id != self.controller:
            client.push(protocol.CommandRejected(
                name, "this client only views the run: another one controls it (send "
                "TakeControl to steer)", -1))
        else:
            self.commands.put(message)

    def _attach(self, client: _Client, role: str) -> None:
        if role not in ("control", "view"):
            client.push(protocol.CommandRejected(
                "Attach", f"Attach.role = {role!r}: expected control or view", -1))
            return
        if client.role:
            client.push(protocol.CommandRejected("Attach", "already attached", -1))
            return
        with self.lock:
            last_seq = self.history_end()
            granted = "control" if role == "control" and self.controller == 0 else "view"
            client.role = granted
            self.clients[client.id] = client
            client.push(protocol.Attached(self.run_id, client.id, granted, last_seq))
            if granted == "control":
                self._set_controller(client.id, f"client {client.id} attached")

    def _set_controller(self, client_id: int, reason: str) -> None:
        """Called under ``lock``: the new controller, said to every client."""
        if self.controller == client_id:
            return
        old = self.clients.get(self.controller)
        if old is not None:
            old.role = "view"
        self.controller = client_id
        new = self.clients.get(client_id)
        if new is not None:
            new.role = "control"
        self.publish(protocol.ControlChanged(client_id, reason))

    def _leave(self, client: _Client) -> None:
        client.close()
        with self.lock:
            self._connections.discard(client)
            self.clients.pop(client.id, None)
            if self.controller == client.id:
                self._set_controller(0, f"client {client.id} (the controller) left")

    # --- the engine's side ------------------------------------------------------------

    def publish(self, event: Any) -> None:
        """Send an event to every attached client (the caller holds ``lock``). A client
        too far behind is dropped; if it controlled the run, the others hear so."""
        dropped_controller = False
        line = (protocol.to_json(event) + "\n").encode()
        for client in list(self.clients.values()):
            if not client.push_line(line):
                self.clients.pop(client.id, None)
                dropped_controller |= self.controller == client.id
        if dropped_controller:
            self._set_controller(0, f"client {self.controller} (the controller) fell too "
                                 f"far behind ({OUTBOX_MAX_BYTES >> 20} MiB or {OUTBOX_LIMIT} "
                                 "events unsent) and was disconnected")

    def close(self) -> None:
        """Stop accepting, send the clients what is queued, remove the socket file."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close alone does not
        with contextlib.suppress(OSError):
            self._listener.close()
        if self._acceptor.is_alive():
            self._acceptor.join(CLOSE_GRACE_S)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with self.lock:
            clients = list(self._connections)
            self._connections.clear()
            self.clients.clear()
        for client in clients:
            client.finish()
        for client in clients:
            client.writer.join(CLOSE_GRACE_S)
            client.close()


class AbortedBySignal(KeyboardInterrupt):
    """A second stopping signal: the run was given up at once, not at a step boundary."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """SIGTERM, SIGINT and SIGHUP: the first asks the loop to stop, a second aborts.

    The handler runs between two bytecodes of the main thread, which may hold a lock at
    that moment (the queue's inside get(), stderr's inside a print): it only sets an
    Event that the main thread touches nowhere else, and a thread started beforehand
    says so and puts the Stop.
    """

    def __init__(self, commands: queue.Queue[Command], on_signal: Callable[[str], None]) -> None:
        self.commands = commands
        self.on_signal = on_signal
        self.received: int | None = None
        self._signalled = threading.Event()
        self._done = False
        self._previous: dict[int, Any] = {}
        self._relay = threading.Thread(target=self._relay_stop, name="trainlab-signals",
                                       daemon=True)

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self._relay.start()
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        if self._relay.is_alive():
            self._done = True
            self._signalled.set()  # the relay ends without a Stop

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise AbortedBySignal(signum)  # the second: give up now (checkpoints are atomic)
        self.received = signum
        self._signalled.set()

    def _relay_stop(self) -> None:
        self._signalled.wait()
        if self._done or self.received is None:
            return
        name = signal.Signals(self.received).name
        self.on_signal(name)
        self.commands.put(protocol.Stop(name))


def serve(run_dir: str | Path, config: Config, *, show: Emit | None = None,
          start_from: dict[str, Any] | None = None,
          notes: tuple[str, ...] = (),
          on_signal: Callable[[str], None] = lambda name: None,
          commands: queue.Queue[Command] | None = None) -> tuple[protocol.RunFinished, int | None]:
    """Train ``config`` as the engine of ``run_dir``; returns the RunFinished event and
    the number of the signal that stopped it (None if none did).

    ``show`` sees every event too (the headless printer); ``start_from`` is a checkpoint
    payload to continue from (resume, fork); ``notes`` follow RunStarted into the run
    log (what it was started from, which checkpoints were skipped). RunStarted gets the
    run directory (``run_dir``). Raises ``engine_lock.RunBusy`` when another
    engine serves this run.
    """
    from trainlab.engine.checkpoint import Checkpoints  # torch: only once a run is served
    from trainlab.engine.loop import run

    run_dir = Path(run_dir)
    commands = commands if commands is not None else queue.Queue()
    with engine_lock.EngineLock(run_dir):
        rundir.make_private(run_dir)  # a run written before runs were private: now it is
        runs = store.RunStore.open(run_dir, write=True)
        try:
            runs.set_meta(pid=os.getpid())
            run_id = runs.meta().get("id", run_dir.name)

            server = RunServer(socket_path(run_dir), str(run_id), commands, runs.history_end)

            def pass_on(event: Any) -> None:
                server.publish(event)
                if show is not None:
                    show(event)

            # A store that cannot be written (disk full) says so and training goes on.
            record_and_pass_on = store.recording(runs, pass_on)

            step = start_from["step"] if start_from else 0

            def emit(event: Any) -> None:
                if isinstance(event, protocol.RunStarted):
                    event = dataclasses.replace(event, run_dir=os.fspath(run_dir))
                with server.lock:  # recorded and published together: see RunServer.lock
                    record_and_pass_on(event)
                if isinstance(event, protocol.RunStarted):
                    for note in notes:  # what it was started from, after what was built
                        emit(protocol.Notice(step, "info", note))

            server.start()
            checkpoints = Checkpoints(run_dir / rundir.CHECKPOINT_DIR,
                                      keep=config.run.keep_checkpoints)
            try:
                with _Signals(commands, on_signal) as signals:
                    finished = run(config, commands, emit, checkpoints=checkpoints,
                                   start_from=start_from)
            finally:
                with server.lock, contextlib.suppress(store.StoreError):
                    runs.history_end()  # the last events reach the store if they can
                server.close()
        finally:
            with contextlib.suppress(store.StoreError):  # already said by a Notice
                runs.close()
    return finished, signals.received


def exit_status(signum: int | None) -> int:
    """The detached engine's exit status: 128 + the signal that stopped it, else 0 (how
    the run ended is in its store; a failed run is not a failed engine)."""
    return 128 + signum if signum is not None else 0


# --- the detached process -------------------------------------------------------------


def load_start(run_dir: Path, *, resume: bool = False, fork: bool = False
               ) -> tuple[Config, dict[str, Any] | None, tuple[str, ...]]:
    """The config and the checkpoint a detached engine starts from, with what to note:
    the run's config.toml; with ``resume`` its newest loadable checkpoint's; with
    ``fork`` its fork_start.pt. Raises ConfigError, OSError, ValueError or KeyError when
    the run cannot start so."""
    if resume:
        from trainlab.engine.resume import resume_notes, resume_plan

        config, loaded = resume_plan(run_dir)
        return config, loaded.payload, resume_notes(loaded)
    config = rundir.run_config(run_dir)
    if fork:
        from trainlab.engine.checkpoint import load
        from trainlab.engine.resume import fork_note

        payload = load(run_dir / rundir.FORK_START_FILE)
        with store.RunStore.open(run_dir) as runs:
            meta = runs.meta()
        return config, payload, (fork_note(meta["parent"], meta["parent_step"]),)
    return config, None, ()


def main(argv: list[str] | None = None) -> int:
    """``python -m trainlab.engine.serve RUN_DIR [--resume | --fork]``: the detached engine. Its
    exit status is 128 + a signal that stopped it, 2 when the run cannot be served
    (busy, unreadable), else 0."""
    parser = argparse.ArgumentParser(prog="python -m trainlab.engine.serve",
                                     description="Serve one run from its run directory.")
    parser.add_argument("run_dir", type=Path)
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the run's newest loadable checkpoint")
    start.add_argument("--fork", action="store_true",
                       help=f"a fork: start from its {rundir.FORK_START_FILE}")
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir
    try:
        config, start_from, notes = load_start(run_dir, resume=args.resume, fork=args.fork)
    except (ConfigError, OSError, ValueError, KeyError) as exc:
        message = f"cannot serve {run_dir}: {exc}"
        print(f"engine: {message}", file=sys.stderr, flush=True)
        # A run that never started failed; one that could not resume is as it was (its
        # checkpoints are still there), with the reason on its record.
        events = (protocol.Notice(-1, "error", message),) if args.resume else \
            protocol.failure_events("config", message)
        with contextlib.suppress(Exception), engine_lock.EngineLock(run_dir), \
                store.RunStore.open(run_dir, write=True) as runs:
            for event in events:
                runs.record(event)
        return 2
    for note in notes:
        print(f"engine: {note}", file=sys.stderr, flush=True)
    try:
        finished, signum = serve(run_dir, config, start_from=start_from, notes=notes,
                                 on_signal=lambda name: print(f"engine: {name}: stopping after "
                                                              "this step", file=sys.stderr,
                                                              flush=True))
    except engine_lock.RunBusy as exc:
        print(f"engine: {exc}", file=sys.stderr, flush=True)
        return 2
    except AbortedBySignal as exc:
        print(f"engine: aborted by a second signal ({exc})", file=sys.stderr, flush=True)
        return 128 + exc.signum
    print(f"engine: run {finished.reason} at step {finished.final.step}", file=sys.stderr,
          flush=True)
    return exit_status(signum)


if __name__ == "__main__":
    sys.exit(main())
