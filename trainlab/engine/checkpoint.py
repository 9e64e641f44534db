"""Checkpoint files: written atomically, checked when read, rotated.

Atomic means a reader (or a crash, kill -9 included) never sees half a file at a
final name: a checkpoint is written to a temporary file in the same directory, flushed
to disk, then renamed over the target, which POSIX makes atomic. If the write fails
(disk full, permissions) the previous file at that path is untouched and the
temporary file is removed.

Checked means a truncated or corrupted file is told from a good one before it is used:
torch's format is a zip archive whose members carry CRC-32 sums, and ``load`` verifies
every one of them (torch.load itself does not: a flipped byte in a tensor loads
silently). Files load with ``torch.load(weights_only=True)``: tensors and plain data,
no code runs.

A run's ``checkpoints/`` directory (``Checkpoints``) holds numbered files
``step_00000120.pt``, the newest ``keep`` of them, plus two stable names: ``last.pt``
(the newest) and ``last_good.pt`` (the newest whose values are finite), each a hard
link to a numbered file, so they cost no space of their own until rotation deletes
the numbered name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from trainlab.core.rundir import LAST_CHECKPOINT as LAST
from trainlab.core.rundir import LAST_GOOD_CHECKPOINT as LAST_GOOD
from trainlab.core.rundir import PRIVATE_FILE_MODE, private_dirs
from trainlab.core.rundir import STEP_CHECKPOINT as STEP_FILE

TEMP_SUFFIX = ".tmp"
"""Temporary files are ``.<final name>.<random>.tmp``: hidden, and never a final name."""
FINITE_KEY = "finite"
"""The key ``Checkpoints.save`` adds to a payload: were its values all finite?"""
DEFAULT_KEEP = 3
"""Numbered checkpoints kept when the caller does not say (run.keep_checkpoints' default)."""


class CheckpointError(ValueError):
    """No checkpoint could be used: none exists, or every one is unreadable."""


class Skipped(NamedTuple):
    """A checkpoint passed over by ``Checkpoints.load_latest``, and why."""

    path: Path
    reason: str


class Loaded(NamedTuple):
    """A checkpoint that loaded: where it was, its payload, and what was passed over."""

    path: Path
    payload: dict[str, Any]
    skipped: tuple[Skipped, ...] = ()


def _fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable (one fsync of the directory)."""
    with contextlib.suppress(OSError):  # some filesystems refuse to open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_name(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    return Path(name)


class _RecordingWriter:
    """The file torch.save writes to, keeping the first OSError a write raised.

    torch's zip writer turns a failed write into a RuntimeError ("unexpected pos 768
    vs 662") that hides the cause; with this, a full disk is reported as ENOSPC.
    """

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.file.flush()


def save_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` with torch.save to ``path`` atomically; returns the path.

    The file is private to its owner (``rundir.PRIVATE_FILE_MODE``), and so is each
    directory this creates for it (``rundir.PRIVATE_DIR_MODE``), whatever the umask.

    Raises OSError when it cannot be written (the previous file at ``path``, if any,
    is intact and no temporary file is left).
    """
    path = Path(path)
    private_dirs(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # mkstemp's 0600 less the umask: exactly 0600
        with os.fdopen(fd, "wb") as tmp:
            recording = _RecordingWriter(tmp)
            try:
                # torch.save takes any object with write() and flush() (its docs); its
                # annotation says only str, PathLike or IO[bytes].
                torch.save(payload, recording)  # type: ignore[arg-type]
            except RuntimeError as exc:  # torch's zip writer reports a failed write so
                cause = recording.error
                if cause is not None and cause.errno is not None:  # e.g. ENOSPC: say it
                    raise OSError(cause.errno, cause.strerror, str(path)) from exc
                raise OSError(f"writing {path.name} failed: {exc}") from exc
            tmp.flush()
            os.fsync(tmp.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def verify(path: str | Path) -> None:
    """Raise CheckpointError when ``path`` is not a whole, uncorrupted checkpoint file.

    Reads the file once and checks every member's CRC-32 (zlib's: about 3 GB/s, 0.07 s
    for a 200 MB checkpoint on these machines, measured).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        size = path.stat().st_size
        raise CheckpointError(f"{path.name} is truncated or not a checkpoint ({size} bytes, "
                              "no complete zip archive)") from None
    except OSError:
        raise  # the file cannot be read: not a verdict on its contents
    except Exception as exc:  # a foreign zip: bad deflate data (zlib.error), encrypted...
        raise CheckpointError(f"{path.name} is unreadable ({_first_line(exc)})") from None
    if bad is not None:
        raise CheckpointError(f"{path.name} is corrupt: the checksum of {bad!r} does not "
                              "match its data")


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_atomic`` (tensors and plain data only).

    Raises CheckpointError for a truncated, corrupt or foreign file (its checksums are
    verified first) and for one that holds more than tensors and plain data (a pickled
    module: weights_only refuses it), OSError when it cannot be read at all.
    """
    verify(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise  # the file cannot be read: not a verdict on its contents
    except pickle.UnpicklingError as exc:  # weights_only refused an object (a module...)
        raise CheckpointError(f"{Path(path).name} is refused: it holds more than tensors "
                              f"and plain data ({_refusal(exc)}), and loading that could "
                              "run code") from None
    except Exception as exc:  # whatever a foreign or damaged pickle makes torch raise
        raise CheckpointError(f"{Path(path).name} does not load: {_first_line(exc)}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{Path(path).name} holds a {type(payload).__name__}, not a "
                              "checkpoint payload (a dict)")
    return payload


class Checkpoints:
    """The numbered checkpoints of one run in ``directory``, with last.pt and last_good.pt.

    One process writes (the run's engine, which holds the run's lock); any number may
    read. ``keep`` (run.keep_checkpoints) matters only to ``save`` and may be changed
    between saves.
    """

    def __init__(self, directory: str | Path, keep: int = DEFAULT_KEEP) -> None:
        if keep < 1:
            raise ValueError(f"keep = {keep}: at least 1 numbered checkpoint must be kept")
        self.directory = Path(directory)
        self.keep = keep
        self._cleaned = False

    def path_for(self, step: int) -> Path:
        """Where the numbered checkpoint of ``step`` lives."""
        return self.directory / f"step_{step:08d}.pt"

    def steps(self) -> list[int]:
        """Steps of the numbered checkpoints present, oldest first."""
        if not self.directory.is_dir():
            return []
        found = (STEP_FILE.fullmatch(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    # --- writing ----------------------------------------------------------------------

    def save(self, payload: dict[str, Any], step: int, finite: bool) -> Path:
        """Write ``payload`` as the checkpoint of ``step``; returns the numbered file.

        Then ``last.pt`` (and ``last_good.pt`` when ``finite``) point at it, each
        switched atomically, and numbered files beyond ``keep`` are deleted, oldest
        first. Numbered files of later steps are deleted too: a run's steps only grow,
        so they are what a resume from an older checkpoint left behind (the ones it
        passed over as corrupt or not finite), no longer part of this run.
        ``payload`` gets ``finite`` under FINITE_KEY (in a shallow copy; the caller's
        dict is not changed).

        Raises OSError when the numbered file or a link cannot be written (ENOSPC for
        a full disk). last_good.pt then still is the previous good checkpoint, whole;
        last.pt is the previous checkpoint unless it was switched before the failure
        (to this one, whole). A temporary file left by a process killed mid-write is
        removed at the first save.
        """
        private_dirs(self.directory)
        if not self._cleaned:
            self._remove_temporaries()
            self._cleaned = True
        target = save_atomic({**payload, FINITE_KEY: finite}, self.path_for(step))
        try:
            self._point(LAST, target)
        except OSError:
            # last.pt still names the previous checkpoint: so must the numbered files,
            # since the caller is told this one was not saved.
            target.unlink(missing_ok=True)
            raise
        if finite:
            # A failure here leaves last_good.pt at the previous good checkpoint, and
            # last.pt at this (whole) one.
            self._point(LAST_GOOD, target)
        _fsync_dir(self.directory)
        self._rotate(step)
        return target

    def _point(self, name: str, target: Path) -> None:
        """Make ``name`` a hard link to ``target`` atomically (a copy where links fail)."""
        final = self.directory / name
        tmp = _temp_name(final)
        try:
            tmp.unlink()
            try:
                os.link(target, tmp)  # no data copied: a second name for the same file
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
                    raise
                # A filesystem without hard links (FAT, some network mounts): a full copy,
                # as private as the file it copies.
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             PRIVATE_FILE_MODE)
                os.fchmod(fd, PRIVATE_FILE_MODE)
                with open(target, "rb") as src, os.fdopen(fd, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                    dst.flush()
                    os.fsync(dst.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _rotate(self, newest: int) -> None:
        """Delete numbered files after step ``newest`` and beyond ``keep``, oldest first
        (a link keeps its data)."""
        steps = self.steps()
        for step in [s for s in steps if s > newest]:
            self.path_for(step).unlink(missing_ok=True)
        steps = [s for s in steps if s <= newest]
        for step in steps[: max(0, len(steps) - self.keep)]:
            self.path_for(step).unlink(missing_ok=True)

    def _remove_temporaries(self) -> None:
        for path in self.directory.glob(f".*{TEMP_SUFFIX}"):
            path.unlink(missing_ok=True)

    # --- reading ----------------------------------------------------------------------

    def _candidates(self, good: bool) -> Iterator[Path]:
        """last(_good).pt, then the numbered files newest first."""
        yield self.directory / (LAST_GOOD if good else LAST)
        for step in reversed(self.steps()):
            yield self.path_for(step)

    def load_latest(self, good: bool = False) -> Loaded:
        """The newest checkpoint that loads (with ``good``, the newest finite one).

        Tries last.pt (last_good.pt), then the numbered files newer than it, newest
        first (a process killed between writing a numbered file and switching last.pt
        leaves one), then older ones if it did not load. Each file that is truncated,
        corrupt or (with ``good``) not finite is passed over and reported in
        ``skipped``; a name for a file already tried is not read again.

        Raises CheckpointError when none loads, naming the directory and every reason.
        """
        skipped: list[Skipped] = []
        tried: set[tuple[int, int]] = set()
        found: Loaded | None = None
        for path in self._candidates(good):
            step = _step_of(path)
            if found is not None and (step is None or step <= found.payload["step"]):
                break  # nothing newer than what was loaded is left
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if (stat.st_dev, stat.st_ino) in tried:
                continue  # last.pt is a link to this numbered file: already read
            tried.add((stat.st_dev, stat.st_ino))
            try:
                payload = load(path)
                _check_payload(payload, step, path)
            except (CheckpointError, OSError) as exc:
                skipped.append(Skipped(path, str(exc)))
                continue
            if good and not payload.get(FINITE_KEY, True):
                skipped.append(Skipped(path, f"its values are not finite (step "
                                             f"{payload['step']})"))
                continue
            found = Loaded(path, payload)
            if step is not None:
                break  # numbered files come newest first: this is the newest that loads
        if found is None:
            what = "finite checkpoint" if good else "checkpoint"
            reasons = "".join(f"; {s.path.name}: {s.reason}" for s in skipped)
            raise CheckpointError(f"no loadable {what} in {self.directory}"
                                  + (reasons or " (it has none)"))
        return found._replace(skipped=tuple(skipped))

    def load_at(self, step: int) -> Loaded:
        """The checkpoint of ``step``: its numbered file, or last.pt / last_good.pt when
        they are of that step (last_good.pt outlives its numbered file's rotation).

        Raises CheckpointError naming the steps that exist when there is none, or why
        the file of that step does not load.
        """
        numbered = self.path_for(step)
        paths = [numbered] if numbered.exists() else []
        paths += [p for p in (self.directory / LAST, self.directory / LAST_GOOD) if p.exists()]
        problems = []
        for path in paths:
            try:
                payload = load(path)
                _check_payload(payload, step if path == numbered else None, path)
            except (CheckpointError, OSError) as exc:
                problems.append(str(exc))
                continue
            if payload["step"] == step:
                return Loaded(path, payload)
        steps = self.steps()
        have = ", ".join(map(str, steps)) if steps else "none"
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise CheckpointError(f"no loadable checkpoint of step {step} in {self.directory}"
                              f"{detail}; numbered checkpoints exist for steps: {have} "
                              "(older ones are deleted as run.keep_checkpoints says)")

    def latest_good(self) -> tuple[int | None, Path] | None:
        """The step and path of last_good.pt without reading it (None when absent).

        Its step comes from the numbered file it links to; None when that was rotated
        away or the link is a copy.
        """
        good = self.directory / LAST_GOOD
        try:
            stat = good.stat()
        except FileNotFoundError:
            return None
        for step in reversed(self.steps()):
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(self.path_for(step).stat(), stat):
                    return step, good
        return None, good


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
"""Terminal styling torch puts into some of its messages."""


def _first_line(exc: BaseException) -> str:
    """An exception's first line of text, without terminal styling (its type if none)."""
    text = _ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refusal(exc: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, from its long message (which also
    advises loading the file unchecked: not advice to pass on for a file of unknown
    origin)."""
    text = _ANSI.sub("", str(exc))
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].strip().splitlines()[0]
        return detail.split(". ", 1)[0].rstrip(".")  # the refusal, not the how-to-allow
    return _first_line(exc)


def _step_of(path: Path) -> int | None:
    match = STEP_FILE.fullmatch(path.name)
    return int(match.group(1)) if match else None


def _check_payload(payload: dict[str, Any], step: int | None, path: Path) -> None:
    """A payload from ``Checkpoints`` has an integer step, that of its file name."""
    got = payload.get("step")
    if not isinstance(got, int) or isinstance(got, bool):
        raise CheckpointError(f"{path.name} has no step: not a trainlab checkpoint")
    if step is not None and got != step:
        raise CheckpointError(f"{path.name} holds step {got}, not {step}")
