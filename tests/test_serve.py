"""The detached engine: its socket, controllers and viewers, signals, and the faults it
must survive (a client hanging up, garbage, other users, kill -9)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_config
from trainlab.core import catalog, engine_lock, protocol, rundir, store
from trainlab.core.serving import SOCKET_PATH_MAX, socket_path, spawn_detached
from trainlab.engine import serve
from trainlab.engine.serve import OUTBOX_LIMIT, OUTBOX_MAX_BYTES, RunServer

# The served engine: child processes, sockets and signals.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LONG = {"run__max_steps": 10_000_000, "run__checkpoint_every": 50}


class Client:
    """A blocking JSON-lines client of a run's socket, as a test drives it."""

    def __init__(self, path: Path, role: str = "control", timeout: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(os.fspath(path))
        self.stream = self.sock.makefile("rb")
        self.received = 0
        """Bytes of events read so far."""
        self.send(protocol.Attach(role))
        self.attached: protocol.Attached = self.next("Attached")

    def send(self, message: Any) -> None:
        self.send_raw(protocol.to_json(message).encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next(self, name: str, where: Any = lambda e: True) -> Any:
        """The next event of class ``name`` for which ``where`` holds."""
        while True:
            line = self.stream.readline()
            if not line:
                raise AssertionError(f"the engine closed the connection before a {name}")
            self.received += len(line)
            event = protocol.from_json(line.decode())
            if type(event).__name__ == name and where(event):
                return event

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def wait_until(condition: Any, timeout: float = 60.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_engine(**changes: Any) -> tuple[Path, subprocess.Popen[bytes]]:
    """A new run directory and its detached engine, once its socket answers."""
    run_dir = catalog.new_run(tiny_config(**changes).run.dir, tiny_config(**changes))
    process = spawn_detached(run_dir)
    wait_until(lambda: socket_path(run_dir).exists() or process.poll() is not None,
               what="the engine's socket")
    assert process.poll() is None, (run_dir / rundir.LOG_FILE).read_text()
    return run_dir, process


@contextlib.contextmanager
def engine(**changes: Any) -> Any:
    run_dir, process = start_engine(**changes)
    try:
        yield run_dir, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


def stored(run_dir: Path, name: str) -> list[Any]:
    runs = store.RunStore.open(run_dir, write=False)
    try:
        return [e for _, e in runs.events() if type(e).__name__ == name]
    finally:
        runs.close()


@pytest.mark.timeout(60)
def test_sigterm_stops_a_paused_run_when_another_thread_receives_it(tmp_path) -> None:
    # The kernel hands a process signal to any of its threads. Python runs the handler
    # only in the main thread, when it next runs: a paused engine blocked on its command
    # queue without a timeout never did, and ignored SIGTERM until killed.
    config = tiny_config(run__max_steps=10_000_000, run__dir=str(tmp_path))
    run_dir = catalog.new_run(config.run.dir, config)
    commands: queue.Queue[Any] = queue.Queue()
    commands.put(protocol.Pause())

    def signal_from_another_thread() -> None:
        time.sleep(0.5)  # the main thread is waiting for a command by now
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    def show(event: Any) -> None:
        if isinstance(event, protocol.StateChanged) and event.state == "paused":
            threading.Thread(target=signal_from_another_thread, daemon=True).start()

    finished, signum = serve.serve(run_dir, config, show=show, commands=commands)
    assert signum == signal.SIGTERM and finished.reason == "stopped"


def test_commands_viewers_control_and_sigterm() -> None:
    with engine(**LONG) as (run_dir, process):
        path = socket_path(run_dir)
        assert path.stat().st_mode & 0o777 == 0o600  # owner only
        boss = Client(path)
        assert boss.attached.role == "control" and boss.attached.run_id == run_dir.name
        boss.send(protocol.Pause())
        paused = boss.next("StateChanged", lambda e: e.state == "paused")
        boss.send(protocol.Step(3))
        stepped = boss.next("StateChanged", lambda e: e.reason == "single step done")
        assert stepped.step == paused.step + 3

        # Garbage, an unknown command and a bad value: answered, the run unaffected.
        boss.send_raw(b"this is not json\n")
        assert "unreadable command" in boss.next("CommandRejected").reason
        boss.send_raw(b'{"command": "Explode"}\n')
        assert "Explode" in boss.next("CommandRejected").reason
        boss.send(protocol.SetHyper("optim.lr", -1.0))  # the engine validates it again
        rejected = boss.next("CommandRejected")
        assert rejected.command_type == "SetHyper" and "optim.lr" in rejected.reason

        # A second controller views only, until it takes control.
        other = Client(path)
        assert other.attached.role == "view"
        assert other.attached.last_seq > boss.attached.last_seq  # history grew meanwhile
        other.send(protocol.Step(1))
        assert "only views" in other.next("CommandRejected").reason
        other.send(protocol.TakeControl())
        changed = other.next("ControlChanged")
        assert changed.controller == other.attached.client
        assert boss.next("ControlChanged").controller == other.attached.client
        boss.send(protocol.Step(1))
        assert "only views" in boss.next("CommandRejected").reason
        other.send(protocol.Step(2))
        done = other.next("StateChanged", lambda e: e.reason == "single step done")
        assert done.step == stepped.step + 2
        boss.next("StateChanged", lambda e: e.reason == "single step done")  # viewers see it

        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 128 + signal.SIGTERM
        finished = other.next("RunFinished")
        assert finished.reason == "stopped" and finished.final.step == done.step
        boss.close()
        other.close()
    final = stored(run_dir, "StateChanged")[-1]
    assert "SIGTERM" in final.reason
    saved = stored(run_dir, "CheckpointSaved")
    assert saved and saved[-1].step == done.step  # the stop wrote a checkpoint
    assert not socket_path(run_dir).exists()
    summary = catalog.summarize(run_dir)
    assert summary.status == "stopped" and summary.step == done.step


def test_save_checkpoint_from_a_client_writes_only_into_the_runs_checkpoints(
        tmp_path: Path) -> None:
    outside = tmp_path / "evil.pt"
    traversal = "../" * 30 + os.fspath(outside).lstrip("/")  # resolves to ``outside``
    with engine(**LONG) as (run_dir, _):
        checkpoints = run_dir / rundir.CHECKPOINT_DIR
        boss = Client(socket_path(run_dir))
        for path in (traversal, os.fspath(outside), "sub/evil.pt", "..", " ",
                     ".last.pt.x.tmp", "last.pt", "last_good.pt", "step_00000001.pt"):
            boss.send(protocol.SaveCheckpoint(path))
            rejected = boss.next("CommandRejected")
            assert rejected.command_type == "SaveCheckpoint"
            assert f"SaveCheckpoint.path = {path!r}" in rejected.reason
            assert "a file name such as" in rejected.reason and "checkpoints/" in rejected.reason
        boss.send(protocol.SaveCheckpoint("before-change.pt"))
        saved = boss.next("CheckpointSaved", lambda e: "before-change" in e.path)
        boss.close()
    assert Path(saved.path).resolve() == (checkpoints / "before-change.pt").resolve()
    assert Path(saved.path).is_file()
    assert not outside.exists()
    assert sorted(p.name for p in run_dir.iterdir() if p.suffix == ".pt") == []


def test_a_client_that_hangs_up_leaves_the_run_training() -> None:
    # An SSH drop: the client process dies without a word; training goes on and a new
    # client sees the history that was written meanwhile.
    with engine(**LONG) as (run_dir, process):
        path = socket_path(run_dir)
        code = (
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "s.sendall(b'{\"command\": \"Attach\", \"role\": \"control\"}\\n')\n"
            "s.recv(100); time.sleep(60)\n"
        )
        viewer = subprocess.Popen([sys.executable, "-c", code, os.fspath(path)])
        time.sleep(1.0)
        viewer.send_signal(signal.SIGHUP)  # what a hang-up does to a terminal's processes
        viewer.wait(30)
        first = Client(path)
        assert first.attached.role == "control"  # the hung-up controller let go
        seen = first.attached.last_seq
        stored_then = catalog.summarize(run_dir).step  # at least what `seen` covers
        first.close()
        # More training than the store held at that attach (a fixed step can already
        # be behind it on a fast run: then nothing new need have been written yet).
        wait_until(lambda: catalog.summarize(run_dir).step > max(100, stored_then),
                   what="more training")
        again = Client(path)
        assert process.poll() is None
        assert again.attached.last_seq > seen
        again.close()


def read_to_the_end(client: Client, timeout: float = 30.0) -> int:
    """Bytes left to read on ``client``'s connection until the engine closes it; fails
    when it is still open after ``timeout``."""
    client.sock.settimeout(timeout)
    total = 0
    try:
        while chunk := client.sock.recv(1 << 16):
            total += len(chunk)
    except TimeoutError:
        raise AssertionError(f"the connection is still open after {total} bytes") from None
    return total


def test_a_viewer_that_stops_reading_is_dropped_by_bytes_and_the_run_trains_on() -> None:
    # Histogram snapshots (~10 kB each on 8 layers), one per step as the controller asks:
    # the stalled viewer passes OUTBOX_MAX_BYTES long before OUTBOX_LIMIT events.
    with engine(**LONG, model__depth=8, model__width=64) as (run_dir, process):
        path = socket_path(run_dir)
        boss = Client(path)
        stalled = Client(path, role="view")  # attached; from now on it reads nothing
        start, events = boss.received, 0
        while boss.received - start < OUTBOX_MAX_BYTES + (2 << 20):
            boss.send(protocol.RequestSnapshot(histograms=True))
            boss.next("LayerStatsSnapshot")
            events += 1
        assert events < OUTBOX_LIMIT // 10
        # What the kernel held and what was sent before it was dropped; then the end.
        assert read_to_the_end(stalled) < OUTBOX_MAX_BYTES + (1 << 20)
        stalled.close()
        after = boss.next("MetricsBatch").steps[-1]
        assert boss.next("MetricsBatch", lambda e: e.steps[0] > after)  # it trains on
        assert process.poll() is None
        boss.close()


def test_one_event_larger_than_the_byte_limit_still_reaches_a_reading_client(
        tmp_path: Path) -> None:
    server = RunServer(tmp_path / "s.sock", "run", queue.Queue(), lambda: 0)
    server.start()
    try:
        reader = Client(tmp_path / "s.sock", role="view")
        huge = protocol.Notice(1, "info", "x" * (OUTBOX_MAX_BYTES + 1))
        with server.lock:
            server.publish(huge)
        assert reader.next("Notice") == huge
        reader.close()
    finally:
        server.close()


def test_a_dropped_clients_backlog_is_freed_at_once(tmp_path: Path) -> None:
    server = RunServer(tmp_path / "s.sock", "run", queue.Queue(), lambda: 0)
    server.start()
    try:
        stalled = Client(tmp_path / "s.sock", role="view")
        (client,) = server.clients.values()
        big = protocol.Notice(1, "info", "x" * 100_000)
        tracemalloc.start()
        try:
            published = 0
            while client.id in server.clients and published < 1000:
                with server.lock:
                    server.publish(big)
                published += 1
            in_use = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert client.closed.is_set() and client.id not in server.clients
        assert published * 100_000 < OUTBOX_MAX_BYTES + (1 << 20)  # bytes, not events
        assert client.queued_bytes() == 0
        assert in_use < 1 << 20  # though the client object is still referenced here
        stalled.close()
    finally:
        server.close()


def test_kill_minus_9_leaves_a_store_that_opens_and_a_resumable_run() -> None:
    run_dir, process = start_engine(**LONG)
    wait_until(lambda: stored(run_dir, "CheckpointSaved"), what="a checkpoint")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    runs = store.RunStore.open(run_dir, write=False)
    try:
        assert runs.integrity_check() == "ok"
    finally:
        runs.close()
    summary = catalog.summarize(run_dir)
    assert summary.status == "crashed" and summary.resumable
    assert not engine_lock.engine_alive(run_dir)


@pytest.mark.skipif(os.geteuid() != 0 or not hasattr(os, "setuid"),
                    reason="needs root to act as another user")
def test_another_user_cannot_connect() -> None:
    with engine(**LONG) as (run_dir, _):
        path = socket_path(run_dir)
        code = (
            "import os, socket, sys\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\n"
            "sys.exit(0)\n"
        )
        result = subprocess.run([sys.executable, "-c", code, os.fspath(path)], timeout=30)
        assert result.returncode == 13


def test_the_socket_mode_refuses_other_users() -> None:
    # Where the test cannot act as another user: the permissions themselves.
    with engine(**LONG) as (run_dir, _):
        info = socket_path(run_dir).stat()
        assert info.st_uid == os.getuid() and info.st_mode & 0o077 == 0


def test_a_deep_run_directory_serves_from_a_short_socket_path(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["a-long-directory-name"] * 8)
    assert len(os.fsencode(deep / rundir.SOCKET_FILE)) > SOCKET_PATH_MAX
    path = socket_path(deep)
    assert len(os.fsencode(path)) <= SOCKET_PATH_MAX
    assert path == socket_path(deep)  # the server and every client agree
    assert (path.parent.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_sigint_and_sighup_stop_the_run_cleanly_too(signum: int) -> None:
    with engine(**LONG) as (run_dir, process):
        watcher = Client(socket_path(run_dir), role="view")
        watcher.next("MetricsBatch")  # it trains
        process.send_signal(signum)
        assert process.wait(60) == 128 + signum
        finished = watcher.next("RunFinished")
        watcher.close()
    assert finished.reason == "stopped"
    name = signal.Signals(signum).name
    assert name in stored(run_dir, "StateChanged")[-1].reason
    saved = stored(run_dir, "CheckpointSaved")
    assert saved and saved[-1].step == finished.final.step


def engine_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m trainlab.cli ARGS``, as the app runs it for resume and fork."""
    return subprocess.run([sys.executable, "-m", "trainlab.cli", *args], capture_output=True,
                          text=True, timeout=180, check=False)


def pid_of(run_dir: Path) -> int:
    """The pid of the engine that serves ``run_dir`` (it records it in the store)."""
    runs = store.RunStore.open(run_dir)
    try:
        return int(runs.meta()["pid"])
    finally:
        runs.close()


def test_a_killed_run_resumes_in_the_background_despite_its_stale_socket() -> None:
    run_dir, process = start_engine(**LONG)
    wait_until(lambda: stored(run_dir, "CheckpointSaved"), what="a checkpoint")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    assert socket_path(run_dir).exists()  # what kill -9 leaves behind
    from trainlab.engine.checkpoint import Checkpoints

    good = Checkpoints(run_dir / rundir.CHECKPOINT_DIR).latest_good()
    assert good is not None
    started = engine_cli("resume", os.fspath(run_dir), "--detach", "--json")
    assert started.returncode == 0, started.stderr
    try:
        assert engine_lock.engine_alive(run_dir)  # --detach returned once it really served
        client = Client(socket_path(run_dir))
        client.next("MetricsBatch")
        (resumed,) = [e for e in stored(run_dir, "RunStarted") if e.resumed_from_step]
        assert resumed.resumed_from_step == good[0]  # the newest good checkpoint of then
        client.close()
    finally:
        os.kill(pid_of(run_dir), signal.SIGTERM)
        wait_until(lambda: not engine_lock.engine_alive(run_dir), what="the engine to stop")


async def test_the_app_stops_a_resumed_run_whose_earlier_segment_had_finished() -> None:
    from trainlab.tui.bridge import ServedEngine

    with engine(**LONG) as (run_dir, process):
        wait_until(lambda: stored(run_dir, "MetricsBatch"), what="training")
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    started = engine_cli("resume", os.fspath(run_dir), "--detach")
    assert started.returncode == 0, started.stderr
    served = ServedEngine(run_dir)
    await served.start(tiny_config(**LONG))
    await served.stop()  # the history's RunFinished is the first segment's: Stop is sent
    wait_until(lambda: not engine_lock.engine_alive(run_dir), what="the resumed engine to stop")
    assert [e.reason for e in stored(run_dir, "RunFinished")] == ["stopped", "stopped"]
    assert stored(run_dir, "StateChanged")[-1].reason == "stopped from the app"


def test_a_fork_of_a_live_run_starts_from_the_checkpoint_it_records() -> None:
    with engine(**LONG) as (run_dir, _):
        wait_until(lambda: stored(run_dir, "CheckpointSaved"), what="a checkpoint")
        forked = engine_cli("fork", os.fspath(run_dir), "--set", "optim.lr=0.05", "--detach",
                            "--json")
        assert forked.returncode == 0, forked.stderr
        child = Path(json.loads(forked.stdout)["run_dir"])
        try:
            wait_until(lambda: stored(child, "RunStarted"), what="the fork to start")
            time.sleep(2)  # the parent writes newer checkpoints meanwhile
            summary = catalog.summarize(child)
            (started,) = stored(child, "RunStarted")
            assert summary.parent == run_dir.name
            assert started.resumed_from_step == summary.parent_step  # the same checkpoint
            assert started.config["optim"]["lr"] == 0.05
            notes = [n.message for n in stored(child, "Notice")]
            assert f"forked from run {run_dir.name} at step {summary.parent_step}" in notes
        finally:
            os.kill(pid_of(child), signal.SIGTERM)
            wait_until(lambda: not engine_lock.engine_alive(child), what="the fork to stop")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
async def test_the_app_does_not_attach_to_another_users_run() -> None:
    from trainlab.tui.bridge import ServedEngine

    run_dir = catalog.new_run(tiny_config().run.dir, tiny_config())
    os.chown(run_dir, 4242, 4242)
    served = ServedEngine(run_dir)
    await served.start(tiny_config())
    events = []
    while not served.events.empty():
        events.append(served.events.get_nowait())
    assert [type(e).__name__ for e in events] == ["EngineFailed", "StateChanged", "RunFinished"]
    assert f"run {run_dir.name} is not yours" in events[0].message
    assert "uid 4242" in events[0].message
    await served.stop()
