"""The run directory and its store: every event of a run kept in SQLite, queryable.

A run lives in ``<run.dir>/<run-id>/``::

    config.toml     the effective config the run started with (``trainlab.core.config``'s TOML)
    run.db          this store: every event, plus tables derived from them for queries
    checkpoints/    ``trainlab.engine.checkpoint``'s files (last.pt, last_good.pt, step_N.pt)
    engine.log      the detached engine's stdout and stderr
    engine.sock     the engine's socket while it serves (``trainlab.engine.serve``)
    engine.lock     held (flock) by the engine for its lifetime: a live run is told from
                    a crashed one by whether the lock is held; the kernel drops it when
                    the process dies, even by kill -9

``run.db``: one writer (the engine), any number of readers in any process. WAL on local
disks, so readers never block the writer nor see a half-written transaction; where WAL
cannot work (a network filesystem without shared memory) the rollback journal instead.
Either way SQLite's atomic commit means a process killed mid-write leaves the last
committed state, which the next open recovers.

Tables: ``events`` holds every event as the protocol's JSON (``trainlab.core.protocol.to_json``),
numbered by ``seq``; ``train`` (per-step loss and lr), ``evals``, ``changes``, ``alerts``,
``layer_stats`` and ``meta`` are derived for queries. A number column holds a finite
float as REAL, NaN and ±inf as the protocol's strings "NaN", "Infinity", "-Infinity"
(SQLite stores a NaN REAL as NULL, which means "no value" here) and None as NULL.
The derived tables hold one row per step (per step and layer for ``layer_stats``): a
resumed run (``RunStarted.resumed_from_step``) drops the rows past its checkpoint's step,
so the steps it repeats replace what the lost segment recorded; ``events`` keeps all.

Writes are batched: ``record`` adds to an open transaction that is committed at most
``COMMIT_INTERVAL_S`` later (by a background flusher, so a quiet run is never left
uncommitted), and at once for the events that change what a reader must know
(``COMMIT_NOW``). A kill -9 loses at most that much of the most recent history.

This module imports no torch: the app and ``trainlab runs`` read stores without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import pwd
import re
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainlab.core import config as config_mod
from trainlab.core import protocol
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

STATUSES = ("running", "paused", "finished", "stopped", "failed", "crashed", "not yours")
"""What ``summarize`` says a run is: running or paused (its engine is alive), finished
(completed or stopped early by rule), stopped (on request or by a signal), failed
(refused, an error, or a non-finite loss), crashed (the engine is gone without a final
event: offer ``trainlab resume``). ``list_runs`` adds "not yours": a run directory
another user owns (private to them: not read, resumed or attached to)."""
PRIVATE_DIR_MODE = 0o700
"""Run directories, their checkpoints/ and the runs root when this module creates it:
a run's history, config, log and weights are its owner's alone."""
PRIVATE_FILE_MODE = 0o600
"""Every file of a run (the store and SQLite's -wal/-shm, which SQLite creates with the
store's mode; config, log, lock, checkpoints, exports), set explicitly, whatever the
umask."""

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the tables below; a store with a newer one is refused."""
COMMIT_INTERVAL_S = 0.25
"""Longest a recorded event waits for its commit: readers (``trainlab attach``, the app)
lag at most this much and a kill -9 loses at most this much, while a few commits a
second keep recording cheap (measured: 86 us per 25-step MetricsBatch on 2 busy cores;
WAL commits do not fsync, only its checkpoints do)."""
COMMIT_NOW = frozenset({"RunStarted", "StateChanged", "RunFinished", "CheckpointSaved",
                        "EngineFailed", "HyperChanged"})
"""Events committed as soon as they are recorded: a reader must not miss a change of
state, a checkpoint it could resume from, a failure or a live change for even 0.25 s."""
BUSY_TIMEOUT_S = 5.0
"""How long a connection waits for a lock (rollback journal: a reader during a commit);
WAL readers never wait."""
LOCK_RETRY_S = 1.0
"""``EngineLock`` retries this long before calling a run busy: ``engine_alive`` takes a
shared lock for a moment, and an engine starting just then must not be refused."""
LOCK_RETRY_STEP_S = 0.01
"""Pause between ``EngineLock`` attempts."""
EVENTS_CHUNK = 1000
"""``RunStore.events`` reads this many rows at a time: a long history streams instead of
being loaded whole."""
RUN_ID_TIME_FORMAT = "%Y%m%d-%H%M%S"
"""A run id starts with its local creation time, so ids sort by age and read as dates."""
RUN_ID_RANDOM_BYTES = 2
"""Then 4 random hex digits: runs started in the same second differ."""
KNOWN_RUNS_LISTED = 5
"""``RunNotFound`` lists at most this many of the runs that exist."""
RETRY_MIN_S = 1.0
"""After the store failed to record (a full disk), how long recording pauses before it
tries again. Events meanwhile are not even tried, only counted as missed: a full disk
costs no write per event, and is said once."""
PROBATION_S = 10.0
"""After a retry worked, recording must hold this long (or as long as the last pause, if
that is longer) before it is said to record again: a full disk often takes a small write
(into space a failed batch left), and would otherwise flap between the two notices."""
RETRY_MAX_S = 60.0
"""Each failed try doubles the pause, up to this. A store that recovered less than this
long ago and fails again goes on from the pause it had (a disk that keeps filling up
again is not announced every few seconds)."""

LAST_CHECKPOINT = "last.pt"
"""The newest checkpoint of a run, whatever its values (written by ``trainlab.engine.checkpoint``;
named here, where the torch-free side reads the directory too)."""
LAST_GOOD_CHECKPOINT = "last_good.pt"
"""The newest checkpoint whose values (weights, optimizer state) are all finite."""
STEP_CHECKPOINT = re.compile(r"step_(\d{8,})\.pt")
"""Numbered checkpoints: ``step_{step:08d}.pt`` (sorts by name as by step)."""
_RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{4}")
"""What ``new_run`` names a run directory (``RUN_ID_TIME_FORMAT``, random digits)."""
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_LAYER_NUMBERS = tuple(f.name for f in dataclasses.fields(protocol.LayerStats)
                       if f.name not in ("name", "kind", "activation"))
"""The numeric fields of ``LayerStats``: one column each in ``layer_stats``."""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, type TEXT NOT NULL, step INTEGER, time REAL NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_type ON events (type, seq);
CREATE TABLE IF NOT EXISTS train (
    step INTEGER PRIMARY KEY, seq INTEGER NOT NULL, epoch INTEGER NOT NULL, loss, lr);
CREATE TABLE IF NOT EXISTS evals (
    step INTEGER PRIMARY KEY, seq INTEGER NOT NULL, epoch INTEGER NOT NULL,
    val_loss, val_accuracy, train_loss, best_val_loss);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY, step INTEGER NOT NULL, key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
    seq INTEGER PRIMARY KEY, step INTEGER NOT NULL, kind TEXT NOT NULL,
    severity TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS layer_stats (
    step INTEGER NOT NULL, layer TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
    activation TEXT NOT NULL, {", ".join(_LAYER_NUMBERS)}, PRIMARY KEY (step, layer));
"""
# Number columns have no declared type on purpose: no type affinity, so a finite float
# stays REAL and "NaN"/"Infinity" stay TEXT (see _to_db), exactly as written.

_DERIVED_TABLES = ("train", "evals", "changes", "alerts", "layer_stats")


class RunNotFound(ValueError):
    """No run matches a reference (id, prefix or path); the message says what exists."""


class RunBusy(ValueError):
    """Another process holds the run's engine lock: the run already has an engine."""


class NotYours(RunNotFound):
    """The run directory belongs to another user: private to them."""


class StoreError(OSError):
    """The store could not be written (disk full, I/O error, a read-only file); the
    message names the file and SQLite's reason."""

    def __init__(self, message: str, *, lost: int = 0, lost_from_step: int | None = None):
        super().__init__(message)
        self.lost = lost
        """Events recorded earlier whose batch the failure rolled back (besides the one
        that failed to record)."""
        self.lost_from_step = lost_from_step
        """The step of the first of them (None: unknown or none lost)."""


# --- numbers in and out of SQLite ---------------------------------------------------


def _to_db(value: float | int | None) -> float | int | str | None:
    """A number as stored: finite as is, NaN/±inf as the protocol's strings, None NULL."""
    if isinstance(value, float) and not math.isfinite(value):
        return protocol.encode(value)
    return value


def _from_db(value: Any) -> float | None:
    """The float a number column holds (NULL -> None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return _NONFINITE[value]
    return float(value)


# --- query results ------------------------------------------------------------------


@dataclass(frozen=True)
class TrainCurve:
    """The per-step training curve, column by column (index i is one step).

    Where a resumed run repeated steps, the resumed values replace the earlier ones.
    """

    steps: tuple[int, ...]
    epochs: tuple[int, ...]
    losses: tuple[float, ...]
    lrs: tuple[float, ...]
    times: tuple[float, ...]
    """Wall-clock time (Unix seconds) when the step's MetricsBatch was recorded."""

    def __len__(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class RunSummary:
    """One run at a glance: what ``trainlab runs`` lists and the app offers to attach."""

    id: str
    path: Path
    status: str
    """One of ``STATUSES``."""
    step: int
    epoch: int
    best_val_loss: float | None
    """Lowest finite validation loss so far; None before the first evaluation."""
    val_accuracy: float | None
    """At the latest evaluation; None before one, or for regression."""
    created_at: float
    """Unix seconds."""
    updated_at: float
    """Unix seconds of the latest recorded event (``created_at`` before any)."""
    parent: str
    """The run id this one was forked from; '' for none."""
    parent_step: int | None
    label: str
    reason: str
    """Why it is in this state, in words (the stop's why, the failure, the crash)."""
    resumable: bool = False
    """Crashed or stopped, and a checkpoint exists: ``trainlab resume`` can continue it."""
    checkpoint_step: int | None = None
    """Where ``trainlab resume`` goes on from, for a resumable run: the step of its
    last_good.pt, told from the numbered file it links to (without reading it). It can
    be short of ``step`` (a checkpoint that could not be written, a full disk); None when
    it cannot be told (last_good.pt is a copy, or missing)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (``trainlab runs --json``): the path as text, non-finite
        numbers as the protocol writes them."""
        data = protocol.encode(self)
        data["path"] = os.fspath(self.path)
        return data


# --- the store ----------------------------------------------------------------------


class RunStore:
    """A run's ``run.db``, open for writing (the engine) or reading (anyone else).

    Thread-safe: the engine's loop thread records while a socket thread may commit (to
    answer an attach) and the flusher commits on time. Use ``RunStore.open``.
    """

    def __init__(self, connection: sqlite3.Connection, run_dir: Path, *, write: bool,
                 journal_mode: str) -> None:
        self._db = connection
        self.run_dir = run_dir
        """The run directory this store belongs to."""
        self.writable = write
        self.journal_mode = journal_mode
        """'wal', or the rollback journal's mode ('delete') where WAL could not be used."""
        self._lock = threading.RLock()
        self._last_commit = time.monotonic()
        self._pending = 0
        """Events recorded in the open transaction (lost if it rolls back)."""
        self._pending_step: int | None = None
        """The step of the first of them."""
        self._flush_error: StoreError | None = None
        """A background commit that failed: the next record or commit raises it."""
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None
        if write:
            self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                             name=f"store-flush-{run_dir.name}")
            self._flusher.start()

    # -- opening and closing --

    @classmethod
    def open(cls, run_dir: str | Path, write: bool = False, *, wal: bool = True) -> RunStore:
        """Open ``run_dir``'s store; ``write`` creates it (and its tables) if missing.

        ``wal`` False uses the rollback journal even where WAL works (tests of that mode;
        WAL is chosen otherwise and the rollback journal only where WAL fails).

        Raises:
            RunNotFound: reading, and there is no store in ``run_dir``.
            StoreError: the file cannot be opened or written, or is not a trainlab store
                this version can read.
        """
        run_dir = Path(run_dir)
        path = run_dir / DB_FILE
        if not write and not path.is_file():
            raise RunNotFound(f"{run_dir} is not a run directory: it has no {DB_FILE}")
        if write:
            try:
                # SQLite would create it 0644 and its -wal/-shm with the same mode.
                for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"):
                    private_file(run_dir / name, create=name == DB_FILE)
            except OSError as exc:
                raise StoreError(f"cannot create {path}: {exc.strerror or exc}") from None
        try:
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from None
        try:
            mode = _journal_mode(db, write=write, wal=wal)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path} was written by a newer trainlab (store schema "
                                 f"{version}; this one reads up to {SCHEMA_VERSION})")
            if write:
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            else:
                db.execute("PRAGMA query_only = 1")  # a reader can never change a run
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"cannot use {path}: {exc}") from None
        except BaseException:
            db.close()
            raise
        return cls(db, run_dir, write=write, journal_mode=mode)

    def close(self) -> None:
        """Commit what is pending and close; the store cannot be used afterwards."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join()
        with self._lock:
            try:
                if self.writable:
                    self._commit()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.run_dir / DB_FILE}: the last commit failed: "
                                 f"{exc}") from None
            finally:
                self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --

    def record(self, event: Any) -> int:
        """Store ``event`` (its protocol JSON, and its derived rows); returns its seq.

        Sequence numbers start at 1 and increase by one per event. The event is
        committed with the next batch (``COMMIT_INTERVAL_S``), at once when its type is
        in ``COMMIT_NOW``. A seq is final once committed: when a failed write rolls a
        batch back, its numbers are given again.

        Raises:
            TypeError: ``event`` is not a protocol event.
            StoreError: the store cannot be written (disk full, I/O error); ``lost``
                says how many earlier events of the batch went with it.
        """
        name = type(event).__name__
        if name not in protocol.EVENTS:
            raise TypeError(f"RunStore.record: {name} is not a protocol event")
        body = protocol.to_json(event)
        now = time.time()
        with self._lock:
            self._check_writable()
            self._raise_flush_error()
            try:
                if not self._db.in_transaction:
                    self._db.execute("BEGIN")
                seq = self._db.execute(
                    "INSERT INTO events (type, step, time, body) VALUES (?, ?, ?, ?)",
                    (name, _step_of(event), now, body)).lastrowid
                assert seq is not None  # an INSERT into a rowid table always sets it
                self._derive(seq, event)
                self._pending += 1
                if self._pending_step is None:
                    self._pending_step = _step_of(event)
                if name in COMMIT_NOW:
                    self._commit()
            except sqlite3.Error as exc:
                raise self._failed(f"cannot record {name}", exc) from None
        return seq

    def history_end(self) -> int:
        """Commit what is recorded and return the newest committed seq: where a client
        that attaches now is told the history in the store ends.

        A failed commit is not raised here (an attach thread could only swallow it): it
        is kept for the writer's next ``record``, which raises it with what was lost, as
        a failed background commit is.
        """
        with self._lock:
            if self.writable and self._flush_error is None:
                try:
                    self._commit()
                except sqlite3.Error as exc:
                    self._flush_error = self._failed("a commit failed", exc)
            return self.last_seq()

    def commit(self) -> None:
        """Commit every recorded event now (before telling a client where history ends).

        Raises:
            StoreError: the commit failed (disk full, I/O error).
        """
        with self._lock:
            self._check_writable()
            self._raise_flush_error()
            try:
                self._commit()
            except sqlite3.Error as exc:
                raise self._failed("commit failed", exc) from None

    def set_meta(self, **values: Any) -> None:
        """Set run facts (``pid=4242``, ``label="baseline"``), committed at once.

        Values are JSON (numbers, strings, lists, dicts, None; NaN as the protocol
        writes it), read back by ``meta``.
        """
        rows = [(key, json.dumps(protocol.encode(value), allow_nan=False))
                for key, value in values.items()]
        with self._lock:
            self._check_writable()
            try:
                if not self._db.in_transaction:
                    self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value", rows)
                self._commit()
            except sqlite3.Error as exc:
                raise self._failed(f"cannot set {', '.join(values)}", exc) from None

    # -- reading --

    def meta(self) -> dict[str, Any]:
        """Every run fact: id, created_at, parent, parent_step, label, and whatever
        ``set_meta`` added (the engine's pid...)."""
        rows = self._query("SELECT key, value FROM meta")
        return {key: _decode_json(value) for key, value in rows}

    def last_seq(self) -> int:
        """The seq of the newest recorded event (0 when there is none). A reader sees
        committed events only."""
        return self._query("SELECT COALESCE(MAX(seq), 0) FROM events")[0][0]

    def events(self, after: int = 0, upto: int | None = None,
               types: tuple[str, ...] = ()) -> Iterator[tuple[int, Any]]:
        """``(seq, event)`` for every event with ``after < seq <= upto``, oldest first.

        ``upto`` None reads to the end (events recorded meanwhile included); ``types``
        keeps only those event class names. Rows are read ``EVENTS_CHUNK`` at a time.
        """
        where = "seq > ?"
        params: list[int | str] = [after]
        if upto is not None:
            where += " AND seq <= ?"
            params.append(upto)
        if types:
            where += f" AND type IN ({', '.join('?' * len(types))})"
            params.extend(types)
        while True:
            rows = self._query(f"SELECT seq, body FROM events WHERE {where} ORDER BY seq "
                               f"LIMIT {EVENTS_CHUNK}", tuple(params))
            for seq, body in rows:
                yield seq, protocol.from_json(body)
            if len(rows) < EVENTS_CHUNK:
                return
            params[0] = rows[-1][0]

    def train_curve(self) -> TrainCurve:
        """Per-step training loss and lr (from MetricsBatch), ordered by step."""
        rows = self._query("SELECT t.step, t.epoch, t.loss, t.lr, e.time FROM train t "
                           "JOIN events e ON e.seq = t.seq ORDER BY t.step")
        return TrainCurve(
            steps=tuple(r[0] for r in rows), epochs=tuple(r[1] for r in rows),
            losses=tuple(_from_db(r[2]) for r in rows),  # type: ignore[misc]
            lrs=tuple(_from_db(r[3]) for r in rows),  # type: ignore[misc]
            times=tuple(r[4] for r in rows))

    def evals(self) -> list[protocol.EvalDone]:
        """Every evaluation, ordered by step (a resumed run's replace earlier ones)."""
        rows = self._query("SELECT step, epoch, val_loss, val_accuracy, train_loss, "
                           "best_val_loss FROM evals ORDER BY step")
        return [self._eval(row) for row in rows]

    @staticmethod
    def _eval(row: tuple[Any, ...]) -> protocol.EvalDone:
        """An evals row (step, epoch, val_loss, val_accuracy, train_loss, best_val_loss)
        as the EvalDone it came from."""
        step, epoch, val_loss, accuracy, train, best = row
        return protocol.EvalDone(step, epoch, _from_db(val_loss),  # type: ignore[arg-type]
                                 _from_db(accuracy), _from_db(train),  # type: ignore[arg-type]
                                 _from_db(best))  # type: ignore[arg-type]

    def best(self) -> protocol.EvalDone | None:
        """The evaluation with the lowest finite validation loss (the earliest of equals);
        None when no evaluation had a finite one."""
        # One indexed row, not every evaluation (the runs list asks this of every run):
        # non-finite losses are stored as text (_to_db), so a number is a finite one.
        rows = self._query("SELECT step, epoch, val_loss, val_accuracy, train_loss, "
                           "best_val_loss FROM evals WHERE typeof(val_loss) IN ('real', "
                           "'integer') ORDER BY val_loss, step LIMIT 1")
        return self._eval(rows[0]) if rows else None

    def final(self) -> protocol.FinalMetrics | None:
        """Where the run ended (its RunFinished's metrics); None while it has not, or
        when it crashed. A resumed run's newest ending counts."""
        started = self._last_of("RunStarted")
        ended = self._last_of("RunFinished")
        if ended is None or (started is not None and started[0] > ended[0]):
            return None
        return ended[1].final

    def changes(self) -> list[protocol.HyperChanged]:
        """Every live change (HyperChanged), in the order they were applied."""
        return self._bodies("changes")

    def alerts(self) -> list[protocol.AlertRaised]:
        """Every diagnosed problem (AlertRaised), in the order they were raised."""
        return self._bodies("alerts")

    def layer_stats(self, layer: str | None = None) -> list[tuple[int, protocol.LayerStats]]:
        """``(step, stats)`` of every tracked step, by step, layers in forward order;
        only ``layer``'s rows when given."""
        columns = ", ".join(("step", "layer", "kind", "activation", *_LAYER_NUMBERS))
        where, params = ("WHERE layer = ?", (layer,)) if layer is not None else ("", ())
        rows = self._query(f"SELECT {columns} FROM layer_stats {where} ORDER BY step, seq, "
                           "rowid", params)
        out = []
        for step, name, kind, activation, *numbers in rows:
            # Written from LayerStats (_to_db), so each column holds what its field allows.
            values: dict[str, Any] = dict(zip(_LAYER_NUMBERS, map(_from_db, numbers),
                                              strict=True))
            out.append((step, protocol.LayerStats(name, kind, activation, **values)))
        return out

    def summary(self, alive: bool) -> RunSummary:
        """This run at a glance; ``alive``: its engine holds the lock (``engine_alive``)."""
        with self._reading():
            meta = self.meta()
            started = self._last_of("RunStarted")
            ended = self._last_of("RunFinished")
            state = self._last_of("StateChanged")
            failure = self._last_of("EngineFailed")
            step, epoch = self._query("SELECT COALESCE(MAX(step), 0), COALESCE(MAX(epoch), 0) "
                                      "FROM train")[0]
            last_eval = self._query("SELECT val_accuracy FROM evals ORDER BY step DESC "
                                    "LIMIT 1")
            best = self.best()
            updated = self._query("SELECT MAX(time) FROM events")[0][0]
            count = self.last_seq()
        if ended is not None and started is not None and started[0] > ended[0]:
            ended = None  # resumed since it ended: this segment has not
        finished = ended[1] if ended is not None else None
        if finished is not None:
            step, epoch = max(step, finished.final.step), max(epoch, finished.final.epoch)
        if state is not None:
            step = max(step, state[1].step)
        status, reason = _status(alive, finished, state[1] if state else None,
                                 failure[1] if failure else None, count, meta.get("pid"))
        checkpoint = _has_checkpoint(self.run_dir / CHECKPOINT_DIR)
        resumable = status in ("crashed", "stopped") and checkpoint
        created = float(meta.get("created_at") or 0.0)
        return RunSummary(
            id=str(meta.get("id") or self.run_dir.name), path=self.run_dir, status=status,
            step=step, epoch=epoch, best_val_loss=best.val_loss if best else None,
            val_accuracy=_from_db(last_eval[0][0]) if last_eval else None,
            created_at=created, updated_at=float(updated) if updated is not None else created,
            parent=str(meta.get("parent") or ""), parent_step=meta.get("parent_step"),
            label=str(meta.get("label") or ""), reason=reason, resumable=resumable,
            checkpoint_step=_good_step(self.run_dir / CHECKPOINT_DIR) if resumable else None)

    def integrity_check(self) -> str:
        """SQLite's full integrity check: "ok", or what it found wrong, one per line."""
        rows = self._query("PRAGMA integrity_check")
        return "\n".join(str(r[0]) for r in rows)

    # -- internals --

    def _check_writable(self) -> None:
        if self._closed.is_set():
            raise StoreError(f"{self.run_dir / DB_FILE}: the store is closed")
        if not self.writable:
            raise StoreError(f"{self.run_dir / DB_FILE}: opened for reading only")

    def _commit(self) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")
        self._last_commit = time.monotonic()
        self._pending, self._pending_step = 0, None

    def _failed(self, what: str, exc: sqlite3.Error) -> StoreError:
        """Roll the open batch back (SQLite's advice after a failed write, which it may
        have done itself) and say what was lost."""
        with contextlib.suppress(sqlite3.Error):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        lost, since = self._pending, self._pending_step
        self._pending, self._pending_step = 0, None
        gone = f"; the {lost} event(s) recorded since the last commit are lost" if lost else ""
        return StoreError(f"{self.run_dir / DB_FILE}: {what}: {exc}{gone}", lost=lost,
                          lost_from_step=since if lost else None)

    def _flush_loop(self) -> None:
        """Commit a pending batch once it is ``COMMIT_INTERVAL_S`` old (the writer's
        background thread: a quiet run's last events still reach readers)."""
        while not self._closed.wait(COMMIT_INTERVAL_S / 2):
            with self._lock:
                due = time.monotonic() - self._last_commit >= COMMIT_INTERVAL_S
                if self._db.in_transaction and due and not self._closed.is_set():
                    try:
                        self._commit()
                    except sqlite3.Error as exc:
                        if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                            continue  # readers in the way (rollback journal): next tick
                        self._flush_error = self._failed("a batched commit failed", exc)

    def _raise_flush_error(self) -> None:
        """The engine hears of a failed background commit at its next write."""
        if self._flush_error is not None:
            error, self._flush_error = self._flush_error, None
            raise error

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Several queries on one snapshot (a reader's own read transaction)."""
        with self._lock:
            if self.writable or self._db.in_transaction:
                yield
                return
            self._db.execute("BEGIN")
            try:
                yield
            finally:
                self._db.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._closed.is_set():
                raise StoreError(f"{self.run_dir / DB_FILE}: the store is closed")
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.run_dir / DB_FILE}: {exc}") from None

    def _last_of(self, name: str) -> tuple[int, Any] | None:
        rows = self._query("SELECT seq, body FROM events WHERE type = ? ORDER BY seq DESC "
                           "LIMIT 1", (name,))
        return (rows[0][0], protocol.from_json(rows[0][1])) if rows else None

    def _bodies(self, table: str) -> list[Any]:
        rows = self._query(f"SELECT e.body FROM {table} d JOIN events e ON e.seq = d.seq "
                           "ORDER BY d.seq")
        return [protocol.from_json(body) for (body,) in rows]

    def _derive(self, seq: int, event: Any) -> None:
        """The query rows of one event (inside the open transaction)."""
        db = self._db
        if isinstance(event, protocol.MetricsBatch):
            db.executemany(
                "INSERT OR REPLACE INTO train (step, seq, epoch, loss, lr) VALUES (?, ?, ?, ?, ?)",
                [(step, seq, epoch, _to_db(loss), _to_db(lr))
                 for step, epoch, loss, lr in zip(event.steps, event.step_epochs(),
                                                  event.losses, event.lrs, strict=True)])
        elif isinstance(event, protocol.EvalDone):
            db.execute(
                "INSERT OR REPLACE INTO evals (step, seq, epoch, val_loss, val_accuracy, "
                "train_loss, best_val_loss) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (event.step, seq, event.epoch, _to_db(event.val_loss),
                 _to_db(event.val_accuracy), _to_db(event.train_loss),
                 _to_db(event.best_val_loss)))
        elif isinstance(event, protocol.HyperChanged):
            db.execute("INSERT INTO changes (seq, step, key) VALUES (?, ?, ?)",
                       (seq, event.step, event.key))
        elif isinstance(event, protocol.AlertRaised):
            db.execute("INSERT INTO alerts (seq, step, kind, severity) VALUES (?, ?, ?, ?)",
                       (seq, event.step, event.kind, event.severity))
        elif isinstance(event, protocol.LayerStatsSnapshot):
            columns = ("step", "layer", "seq", "kind", "activation", *_LAYER_NUMBERS)
            db.executemany(
                f"INSERT OR REPLACE INTO layer_stats ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                [(event.step, row.name, seq, row.kind, row.activation,
                  *(_to_db(getattr(row, name)) for name in _LAYER_NUMBERS))
                 for row in event.layers])
        elif isinstance(event, protocol.RunStarted):
            resumed = event.resumed_from_step
            if resumed is not None:
                # The resumed run repeats the steps after its checkpoint: what the lost
                # segment recorded past it did not happen in this run's history.
                for table in _DERIVED_TABLES:
                    db.execute(f"DELETE FROM {table} WHERE step > ?", (resumed,))


def _journal_mode(db: sqlite3.Connection, *, write: bool, wal: bool) -> str:
    """Switch a writer to WAL where it works; return the mode in use."""
    mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    if write and wal and mode != "wal":
        # Fails e.g. without shared memory on a network filesystem: keep the rollback journal.
        with contextlib.suppress(sqlite3.OperationalError):
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if write and not wal and mode == "wal":
        mode = db.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    if mode == "wal":
        # Durable against a crash of the process (what kill -9 tests); a power cut may
        # lose the last commits but never corrupts. Saves an fsync per commit.
        db.execute("PRAGMA synchronous = NORMAL")
    return str(mode)


def _step_of(event: Any) -> int | None:
    if isinstance(event, protocol.MetricsBatch):
        return event.steps[-1] if event.steps else None
    if isinstance(event, protocol.RunFinished):
        return event.final.step
    step = getattr(event, "step", None)
    return step if isinstance(step, int) else None


def _decode_json(text: str) -> Any:
    value = json.loads(text)
    return _NONFINITE.get(value, value) if isinstance(value, str) else value


def _has_checkpoint(directory: Path) -> bool:
    """Any checkpoint the run can resume from: last, last_good or a numbered one (not a
    file a user saved under a name of their own, nor a temporary one being written)."""
    try:
        return any(p.name in (LAST_CHECKPOINT, LAST_GOOD_CHECKPOINT)
                   or STEP_CHECKPOINT.fullmatch(p.name) for p in directory.iterdir())
    except OSError:
        return False


def _good_step(directory: Path) -> int | None:
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


def _status(alive: bool, finished: protocol.RunFinished | None,
            state: protocol.StateChanged | None, failure: protocol.EngineFailed | None,
            events: int, pid: Any) -> tuple[str, str]:
    """(status, reason) from the engine's liveness and the run's last events."""
    if finished is not None:
        why = state.reason if state is not None and state.state in ("finished", "failed") \
            else ""
        if finished.reason in ("completed", "early_stopped"):
            return "finished", finished.reason
        if finished.reason == "stopped":
            return "stopped", why or "stopped"
        if finished.reason == "non_finite":
            return "failed", "the loss became non-finite"
        return "failed", failure.message if failure is not None else (why or finished.reason)
    if alive:
        if state is not None and state.state == "paused":
            return "paused", state.reason
        return "running", state.reason if state is not None else "starting"
    engine = f"the engine (pid {pid})" if pid else "the engine"
    if events == 0:
        return "crashed", f"{engine} never recorded an event (see {LOG_FILE})"
    return "crashed", f"{engine} ended without a final event (see {LOG_FILE})"


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


def new_run(root: str | Path, config: Config, *, parent: str = "",
            parent_step: int | None = None, label: str = "") -> Path:
    """Create a run directory under ``root``: config.toml, checkpoints/ and an initialised
    run.db whose meta holds id, created_at, parent, parent_step and label.

    The id is ``YYYYmmdd-HHMMSS-xxxx`` (local time, 4 random hex digits), unique in
    ``root``. Returns the new directory.

    Raises:
        StoreError: the directory or its files cannot be written.
    """
    root = Path(root)
    try:
        private_dirs(root)
        while True:
            created = time.time()
            run_id = (f"{time.strftime(RUN_ID_TIME_FORMAT, time.localtime(created))}-"
                      f"{secrets.token_hex(RUN_ID_RANDOM_BYTES)}")
            run_dir = root / run_id
            try:
                private_dir(run_dir)
                break
            except FileExistsError:
                continue  # the same second and the same random digits: draw again
        private_dir(run_dir / CHECKPOINT_DIR)
        private_file(run_dir / CONFIG_FILE, create=True)  # save then keeps its mode
        config_mod.save(config, run_dir / CONFIG_FILE)
    except OSError as exc:
        raise StoreError(f"cannot create a run in {root}: {exc.strerror or exc}") from None
    with RunStore.open(run_dir, write=True) as runs:
        runs.set_meta(id=run_id, created_at=created, parent=parent, parent_step=parent_step,
                      label=label)
    return run_dir


def run_config(run_dir: str | Path) -> Config:
    """The config a run started with (its config.toml; live changes are in
    ``RunStore.changes``)."""
    return config_mod.load(Path(run_dir) / CONFIG_FILE)


def summarize(run_dir: str | Path) -> RunSummary:
    """The run in ``run_dir`` at a glance (status from its lock and its events).

    Raises:
        RunNotFound: ``run_dir`` has no store.
        StoreError: the store cannot be read.
    """
    run_dir = Path(run_dir)
    alive = engine_alive(run_dir)
    with RunStore.open(run_dir) as runs:
        return runs.summary(alive)


def _unreadable(run_dir: Path, why: str) -> RunSummary:
    """A listed run whose store cannot be read: shown, not hidden, so it can be looked at
    (its checkpoints may still resume it)."""
    created = run_dir.stat().st_mtime
    alive = engine_alive(run_dir)
    resumable = not alive and _has_checkpoint(run_dir / CHECKPOINT_DIR)
    return RunSummary(
        id=run_dir.name, path=run_dir, status="running" if alive else "crashed", step=0,
        epoch=0, best_val_loss=None, val_accuracy=None, created_at=created,
        updated_at=created, parent="", parent_step=None, label="",
        reason=f"{DB_FILE} unreadable: {why}", resumable=resumable,
        checkpoint_step=_good_step(run_dir / CHECKPOINT_DIR) if resumable else None)


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


def _foreign(run_dir: Path, why: str) -> RunSummary:
    """A listed run of another user: shown as theirs, its store not read (a private run
    cannot be, and it is not this user's business)."""
    created = run_dir.stat().st_mtime
    return RunSummary(
        id=run_dir.name, path=run_dir, status="not yours", step=0, epoch=0,
        best_val_loss=None, val_accuracy=None, created_at=created, updated_at=created,
        parent="", parent_step=None, label="", reason=why)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a directory we may not look into (another user's)
        return False


def _is_run_dir(path: Path) -> bool:
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
    return _is_file(path / DB_FILE)


def _run_dirs(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if _is_run_dir(p)]
    except FileNotFoundError:
        return []


def list_runs(root: str | Path) -> list[RunSummary]:
    """Every run under ``root``, newest first ([] when ``root`` does not exist). A run
    whose store cannot be read is listed with the reason; another user's run as "not
    yours" (``not_yours``), its store not read."""
    summaries = []
    for run_dir in _run_dirs(Path(root)):
        why = not_yours(run_dir)
        try:
            if why:
                summaries.append(_foreign(run_dir, why))
                continue
            summaries.append(summarize(run_dir))
        except (OSError, ValueError) as exc:  # StoreError, RunNotFound, a corrupt event
            with contextlib.suppress(OSError):  # gone meanwhile (deleted): not listed
                summaries.append(_unreadable(run_dir, str(exc)))
    return sorted(summaries, key=lambda s: (s.created_at, s.id), reverse=True)


def find_run(root: str | Path, ref: str | None) -> Path:
    """The run directory ``ref`` names: a run id, a unique prefix of one, or a path to a
    run directory (or its run.db); None names the newest run under ``root``.

    Raises:
        RunNotFound: nothing matches, or a prefix matches several runs; the message names
            ``ref`` and the runs that exist.
        NotYours: the run is another user's (``not_yours``); None names the newest of
            this user's runs.
    """
    run_dir = _find_run(Path(root), ref)
    why = not_yours(run_dir)
    if why:
        raise NotYours(why)
    return run_dir


def _find_run(root: Path, ref: str | None) -> Path:
    if ref is not None:
        as_path = Path(ref)
        if as_path.name == DB_FILE and _is_file(as_path):
            return as_path.parent
        if _is_file(as_path / DB_FILE) or (_is_run_dir(as_path) and not_yours(as_path)):
            return as_path
        if os.sep in ref or ref in (".", ".."):
            raise RunNotFound(f"{ref} is not a run directory: it has no {DB_FILE}")
    runs = {p.name: p for p in _run_dirs(root)}
    if not runs:
        where = f"{root} does not exist" if not root.exists() else f"{root} has none"
        raise RunNotFound(f"no runs: {where} (trainlab run --headless writes one; "
                          "--dir or run.dir says where runs live)")
    if ref is None:
        own = [s for s in list_runs(root) if s.status != "not yours"]
        if not own:
            raise RunNotFound(f"no runs of yours in {root}: the {len(runs)} there belong to "
                              "other users")
        return own[0].path
    if ref in runs:
        return runs[ref]
    matches = sorted(name for name in runs if name.startswith(ref))
    if len(matches) == 1:
        return runs[matches[0]]
    if matches:
        raise RunNotFound(f"'{ref}' matches {len(matches)} runs in {root}: "
                          f"{_listed(matches)}; give more of the id")
    raise RunNotFound(f"no run '{ref}' in {root}; runs there: "
                      f"{_listed(sorted(runs, reverse=True))}")


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:KNOWN_RUNS_LISTED])
    more = len(names) - KNOWN_RUNS_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


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


# --- recording from the engine -----------------------------------------------------------


def recording(runs: RunStore, emit: Callable[[Any], None], *,
              clock: Callable[[], float] = time.monotonic) -> Callable[[Any], None]:
    """An emit that records every event in ``runs``, then passes it on to ``emit``.

    A store that cannot be written (disk full) does not stop training. The first failure
    passes on one Notice (error) saying what the store misses from which step; recording
    then pauses (``RETRY_MIN_S``, doubling up to ``RETRY_MAX_S``), retrying quietly.
    Once a retry works, recording must hold (every record and commit) for
    ``PROBATION_S`` or the last pause before a Notice (info), recorded and committed,
    says how many events were missed: a store that only looks writable (a few pages
    free, a commit that then fails) is not announced as recording again. ``clock``:
    seconds, monotonic (tests).
    """
    return _Recording(runs, emit, clock)


class _Recording:
    """``recording``'s state: recording, paused after a failure (``retry_at``), or on
    probation after a retry worked (``trusted_at``)."""

    def __init__(self, runs: RunStore, emit: Callable[[Any], None],
                 clock: Callable[[], float]) -> None:
        self.runs = runs
        self.emit = emit
        self.clock = clock
        self.missed = 0
        """Events not in the store since the outage began (0: no outage)."""
        self.since = 0
        """The step the outage began at."""
        self.pause = RETRY_MIN_S
        self.retry_at: float | None = None
        """Paused until then (None: recording, maybe on probation)."""
        self.trusted_at: float | None = None
        """On probation until then: the recovery is said at the first event after it."""
        self.recovered_at = -math.inf

    def __call__(self, event: Any) -> None:
        now = self.clock()
        paused = self.retry_at is not None and now < self.retry_at
        if paused and type(event).__name__ not in COMMIT_NOW:
            self.missed += 1  # not tried: costs nothing while the disk is full
        else:
            # A state change, a checkpoint or the end is tried even while paused (rare,
            # and what a reader of the run must not miss).
            self._record(event, now, scheduled=not paused)
        self.emit(event)

    def _record(self, event: Any, now: float, *, scheduled: bool) -> None:
        due = self.trusted_at is not None and (now >= self.trusted_at
                                               or isinstance(event, protocol.RunFinished))
        if due and not self._say_recovered(event, now):
            self.missed += 1  # the notice failed: so would the event
            return
        try:
            self.runs.record(event)
        except StoreError as exc:
            self._failed(event, exc, now, scheduled=scheduled)
            return
        if self.retry_at is not None:  # a retry worked: on probation
            self.retry_at = None
            self.trusted_at = now + max(self.pause, PROBATION_S)

    def _say_recovered(self, event: Any, now: float) -> bool:
        """Record and commit the recovery notice, then pass it on; False (still failing,
        paused again) when the store did not take it."""
        notice = protocol.Notice(_step_of(event) or self.since, "info",
                                 f"the run store records again; it missed {self.missed} "
                                 f"event(s) from step {self.since}")
        recorded = False
        try:
            self.runs.record(notice)
            recorded = True
            self.runs.commit()  # said once it is on disk, with all since the retry
        except StoreError as exc:
            self.missed += exc.lost - (1 if recorded else 0)  # a failed commit lost it too
            self._pause_longer(now)
            return False
        self.missed, self.trusted_at, self.recovered_at = 0, None, now
        self.emit(notice)
        return True

    def _failed(self, event: Any, exc: StoreError, now: float, *, scheduled: bool) -> None:
        if self.missed == 0:  # a new outage: said once
            step = _step_of(event) or 0
            self.since = exc.lost_from_step if exc.lost_from_step is not None else step
            recently = now - self.recovered_at < RETRY_MAX_S
            self.pause = min(2 * self.pause, RETRY_MAX_S) if recently else RETRY_MIN_S
            self.retry_at = now + self.pause
            self.emit(protocol.Notice(
                step, "error", f"the run store cannot record: {exc}; training goes on, the "
                f"store misses events from step {self.since}; it tries again in "
                f"{self.pause:g} s, then less often (at least every {RETRY_MAX_S:g} s) while "
                "it fails"))
        elif scheduled or self.trusted_at is not None:
            self._pause_longer(now)  # a retry (or the probation) failed: quietly
        self.missed += 1 + exc.lost

    def _pause_longer(self, now: float) -> None:
        self.trusted_at = None
        self.pause = min(2 * self.pause, RETRY_MAX_S)
        self.retry_at = now + self.pause
