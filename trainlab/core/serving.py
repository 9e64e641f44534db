"""The client's half of a served run: where its socket is, starting its engine as a
detached process, and waiting until that engine answers. Torch-free: the app and the
command line use it; the server's half is ``trainlab.engine.serve``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainlab.core import engine_lock, rundir

STOP_GRACE_S = 10.0
"""How long a stopped engine (a process, or a thread with --inline) may take to finish its
step and say so before the app kills it, or says that the thread did not stop."""
SERVE_MODULE = "trainlab.engine.serve"
"""``python -m SERVE_MODULE RUN_DIR`` is the detached engine."""
TRIAL_MODULE = "trainlab.engine.trial"
"""``python -m TRIAL_MODULE RUN_DIR`` is a sweep trial's engine: the same, reporting to
its Optuna trial."""
SOCKET_PATH_MAX = 100
"""sun_path holds 108 bytes on Linux (104 on macOS); a deeper run directory serves its
socket from a short per-user directory instead (``socket_path``)."""

def socket_path(run_dir: str | Path) -> Path:
    """Where a run's engine serves its socket: ``<run dir>/engine.sock``, or, when that
    path is too long for a Unix socket, a name in a per-user directory (mode 0700)
    derived from the run directory, so the server and every client find the same one."""
    run_dir = Path(run_dir).resolve()
    path = run_dir / rundir.SOCKET_FILE
    if len(os.fsencode(path)) <= SOCKET_PATH_MAX:
        return path
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    folder = Path(base) / f"trainlab-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        rundir.private_dir(folder)
    _check_private(folder)
    digest = hashlib.sha256(os.fsencode(run_dir)).hexdigest()[:16]
    return folder / f"{digest}.sock"


def _check_private(folder: Path) -> None:
    """Refuse a socket directory another user could have made or could write into (in a
    shared /tmp they could put a socket of theirs where our clients look)."""
    info = folder.lstat()
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
            or info.st_mode & 0o077):
        raise OSError(f"{folder} must be a directory of this user with mode 0700 (it is "
                      f"owned by uid {info.st_uid}, mode {stat.filemode(info.st_mode)}): "
                      "remove it, or give the run a shorter path")


def spawn_detached(run_dir: str | Path, *args: str,
                   module: str = SERVE_MODULE) -> subprocess.Popen[bytes]:
    """Start ``python -m trainlab.engine.serve RUN_DIR ARGS`` in a session of its own, its output
    appended to the run's engine.log and its input /dev/null: it outlives the terminal
    and the app, and never writes to either. ``module`` is another engine that serves a
    run the same way (a sweep's trial: ``TRIAL_MODULE``).

    A socket file left by an engine that was killed is removed first, so that whoever
    waits for the new engine does not take the stale file for it (``wait_until_served``).
    """
    run_dir = Path(run_dir)
    if not engine_lock.engine_alive(run_dir):
        with contextlib.suppress(FileNotFoundError):
            socket_path(run_dir).unlink()
    log_fd = os.open(run_dir / rundir.LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                     | os.O_CLOEXEC, rundir.PRIVATE_FILE_MODE)
    with os.fdopen(log_fd, "ab") as log:
        rundir.private_file(run_dir / rundir.LOG_FILE)  # one made wider before, or by the umask
        return subprocess.Popen(
            [sys.executable, "-m", module, os.fspath(run_dir), *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            close_fds=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def wait_until_served(run_dir: Path, process: subprocess.Popen[bytes],
                      timeout: float) -> bool:
    """Wait until the engine ``process`` holds the run's lock and accepts on its socket;
    False when it ended first (or ``timeout`` passed). A connection made to check is
    closed at once (the engine sees a client leave without attaching)."""
    path = socket_path(run_dir)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if engine_lock.engine_alive(run_dir):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(os.fspath(path))
                except (FileNotFoundError, ConnectionRefusedError):
                    pass
                else:
                    return True
        time.sleep(0.05)
    return False
