"""The run directory: its files' names, who may read it, and which directories are runs.

A run lives in ``<run.dir>/<run-id>/``::

    config.toml     the effective config the run started with (``trainlab.core.config``'s TOML)
    run.db          its store (``trainlab.core.store``)
    checkpoints/    ``trainlab.engine.checkpoint``'s files (last.pt, last_good.pt, step_N.pt)
    engine.log      the detached engine's stdout and stderr
    engine.sock     the engine's socket while it serves (``trainlab.engine.serve``)
    engine.lock     held by the engine for its lifetime (``trainlab.core.engine_lock``)

Runs are private to their owner (0700 directories, 0600 files). This module imports no
torch and opens no store.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import stat
from pathlib import Path

from trainlab.core import config as config_mod
from trainlab.core.config import Config

CONFIG_FILE = "config.toml"
"""The effective config the run started with (commented TOML, ``trainlab.core.config.load``)."""
DB_FILE = "run.db"
"""The run store (SQLite)."""
LOG_FILE = "engine.log"
"""The detached engine's stdout and stderr."""
SOCKET_FILE = "engine.sock"
"""The engine's Unix-domain socket while it serves the run."""
LOCK_FILE = "engine.lock"
"""Locked (flock, exclusive) by the run's engine for its whole life."""
CHECKPOINT_DIR = "checkpoints"
"""The run's checkpoint files (``trainlab.engine.checkpoint``)."""
FORK_START_FILE = "fork_start.pt"
"""A fork's copy of the parent checkpoint it started from (the parent's own files
rotate; the fork's engine loads this one, whenever it starts)."""
PRIVATE_DIR_MODE = 0o700
"""Run directories, their checkpoints/ and the runs root when this module creates it:
a run's history, config, log and weights are its owner's alone."""
PRIVATE_FILE_MODE = 0o600
"""Every file of a run (the store and SQLite's -wal/-shm, which SQLite creates with the
store's mode; config, log, lock, checkpoints, exports), set explicitly, whatever the
umask."""
RUN_ID_TIME_FORMAT = "%Y%m%d-%H%M%S"
"""A run id starts with its local creation time, so ids sort by age and read as dates."""
RUN_ID_RANDOM_BYTES = 2
"""Then 4 random hex digits: runs started in the same second differ."""

LAST_CHECKPOINT = "last.pt"
"""The newest checkpoint of a run, whatever its values (written by ``trainlab.engine.checkpoint``;
named here, where the torch-free side reads the directory too)."""
LAST_GOOD_CHECKPOINT = "last_good.pt"
"""The newest checkpoint whose values (weights, optimizer state) are all finite."""
STEP_CHECKPOINT = re.compile(r"step_(\d{8,})\.pt")
"""Numbered checkpoints: ``step_{step:08d}.pt`` (sorts by name as by step)."""
_RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{4}")
"""What ``new_run`` names a run directory (``RUN_ID_TIME_FORMAT``, random digits)."""


class RunNotFound(ValueError):
    """No run matches a reference (id, prefix or path); the message says what exists."""


class NotYours(RunNotFound):
    """The run directory belongs to another user: private to them."""


def has_checkpoint(directory: Path) -> bool:
    """Any checkpoint the run can resume from: last, last_good or a numbered one (not a
    file a user saved under a name of their own, nor a temporary one being written)."""
    try:
        return any(p.name in (LAST_CHECKPOINT, LAST_GOOD_CHECKPOINT)
                   or STEP_CHECKPOINT.fullmatch(p.name) for p in directory.iterdir())
    except OSError:
        return False


def good_checkpoint_step(directory: Path) -> int | None:
    """The step of ``directory``'s last_good.pt, from the numbered checkpoint it is a
    hard link to (``trainlab.engine.checkpoint``'s names; read here without torch). None when it
    is missing, a copy, or its numbered name was rotated away."""
    try:
        good = (directory / LAST_GOOD_CHECKPOINT).stat()
        names = [p for p in directory.iterdir() if STEP_CHECKPOINT.fullmatch(p.name)]
    except OSError:
        return None
    for path in names:
        with contextlib.suppress(OSError):
            if os.path.samestat(path.stat(), good):
                return int(STEP_CHECKPOINT.fullmatch(path.name)[1])  # type: ignore[index]
    return None


# --- the run directory ----------------------------------------------------------------


def private_dir(path: Path) -> None:
    """Create the directory ``path`` with mode ``PRIVATE_DIR_MODE``, whatever the umask.

    Raises:
        FileExistsError: it exists.
        OSError: it cannot be created.
    """
    os.mkdir(path, PRIVATE_DIR_MODE)
    os.chmod(path, PRIVATE_DIR_MODE)  # the umask may have taken bits off


def private_dirs(path: Path) -> None:
    """``path`` and its missing parents, each one created ``PRIVATE_DIR_MODE``; a
    directory that exists is left as it is (the user's own, e.g. their home).

    Raises:
        OSError: one cannot be created.
    """
    missing = [p for p in (path, *path.parents) if not p.is_dir()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile (another run)
            private_dir(directory)


def private_file(path: Path, *, create: bool = False) -> None:
    """Give the file ``path`` mode ``PRIVATE_FILE_MODE``: with ``create`` a missing one
    is created so (empty, never wider for a moment); otherwise a missing one is skipped.
    A file of another user (root writing) keeps its mode.

    Raises:
        OSError: it cannot be created, or its mode cannot be set.
    """
    if create:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        try:
            if os.fstat(fd).st_uid == os.getuid():
                os.fchmod(fd, PRIVATE_FILE_MODE)  # the umask may have taken bits off
        finally:
            os.close(fd)
        return
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    if info.st_uid == os.getuid() and info.st_mode & 0o777 != PRIVATE_FILE_MODE:
        os.chmod(path, PRIVATE_FILE_MODE)


def make_private(run_dir: str | Path) -> None:
    """Tighten a run directory written before runs were private (an engine resuming
    it): itself and every directory in it ``PRIVATE_DIR_MODE``, every file
    ``PRIVATE_FILE_MODE``. What is not this user's, or vanished meanwhile, is skipped."""
    uid = os.getuid()
    for top, _, files in os.walk(run_dir):
        for path, mode in ((top, PRIVATE_DIR_MODE),
                           *((os.path.join(top, name), PRIVATE_FILE_MODE) for name in files)):
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                if info.st_uid == uid and not stat.S_ISLNK(info.st_mode) \
                        and info.st_mode & 0o777 != mode:
                    os.chmod(path, mode)


def run_config(run_dir: str | Path) -> Config:
    """The config a run started with (its config.toml; live changes are in
    ``RunStore.changes``)."""
    return config_mod.load(Path(run_dir) / CONFIG_FILE)


def not_yours(run_dir: str | Path) -> str:
    """Why the run in ``run_dir`` is not this user's to read, resume or attach to (its
    directory belongs to another user, naming them); '' when it is (or is missing:
    other checks say so)."""
    try:
        uid = os.stat(run_dir).st_uid
    except OSError:
        return ""
    if uid == os.getuid():
        return ""
    try:
        who = f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        who = f"uid {uid}"
    return (f"run {Path(run_dir).name} is not yours: it is owned by another user, {who}; "
            "only they can read, resume or attach to it")


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a directory we may not look into (another user's)
        return False


def is_run_dir(path: Path) -> bool:
    """A run directory: it has a store, or it is another user's and named as a run is
    (a private one cannot be looked into)."""
    try:
        info = path.stat()
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        return False
    if info.st_uid != os.getuid() and _RUN_ID.fullmatch(path.name):
        return True
    return is_file(path / DB_FILE)


def run_dirs(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if is_run_dir(p)]
    except FileNotFoundError:
        return []

