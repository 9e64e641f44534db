"""The engine lock: one engine per run, and a live run told from a crashed one.

The engine holds ``engine.lock`` (flock) for its lifetime; the kernel drops it when the
process dies, even by kill -9, so whether the lock is held says whether the engine lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from trainlab.core.rundir import LOCK_FILE, PRIVATE_FILE_MODE
from trainlab.core.store import StoreError

LOCK_RETRY_S = 1.0
"""``EngineLock`` retries this long before calling a run busy: ``engine_alive`` takes a
shared lock for a moment, and an engine starting just then must not be refused."""
LOCK_RETRY_STEP_S = 0.01
"""Pause between ``EngineLock`` attempts."""


class RunBusy(ValueError):
    """Another process holds the run's engine lock: the run already has an engine."""


# --- the engine lock ------------------------------------------------------------------


class EngineLock:
    """Held by a run's engine for its lifetime: an exclusive ``flock`` on engine.lock.

    The kernel releases it when the process ends however it ends (kill -9 included), so
    ``engine_alive`` tells a live run from a crashed one without trusting a pid. The
    holder's pid is written into the file for messages. Use as a context manager.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, retrying for ``LOCK_RETRY_S``.

        Raises:
            RunBusy: another process holds it (the message names the run and its pid).
            StoreError: the lock file cannot be created.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: EngineLock acquired twice")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path}: {exc.strerror or exc}") from None
        with contextlib.suppress(OSError):  # the umask may have taken the owner's bits
            if os.fstat(fd).st_uid == os.getuid():
                os.fchmod(fd, PRIVATE_FILE_MODE)
        deadline = time.monotonic() + LOCK_RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_pid(fd)
                    os.close(fd)
                    pid = f" (pid {holder})" if holder else ""
                    raise RunBusy(f"run {self.run_dir.name} already has an engine{pid}: "
                                  f"trainlab attach {self.run_dir.name} connects to it") from None
                time.sleep(LOCK_RETRY_STEP_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (closing the file releases it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> EngineLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def engine_alive(run_dir: str | Path) -> bool:
    """Does a process hold ``run_dir``'s engine lock (its engine is running)?

    Takes a shared lock for a moment: it fails exactly while an engine holds the
    exclusive one.
    """
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # no lock file: no engine ever served it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a shared lock we got
    return False
