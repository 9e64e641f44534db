"""A run's store, ``run.db``: every event of the run kept in SQLite, queryable.

The directory it lives in is ``trainlab.core.rundir``'s; listing and finding runs is
``trainlab.core.catalog``'s.

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
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, assert_never

from trainlab.core import protocol
from trainlab.core.protocol import (
    Event,
)
from trainlab.core.run_status import RunSummary, derive_status
from trainlab.core.rundir import (
    CHECKPOINT_DIR,
    DB_FILE,
    RunNotFound,
    good_checkpoint_step,
    has_checkpoint,
    private_file,
)

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
EVENTS_CHUNK = 1000
"""``RunStore.events`` reads this many rows at a time: a long history streams instead of
being loaded whole."""
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

    def record(self, event: Event) -> int:
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
        status, reason = derive_status(alive, finished, state[1] if state else None,
                                 failure[1] if failure else None, count, meta.get("pid"))
        checkpoint = has_checkpoint(self.run_dir / CHECKPOINT_DIR)
        resumable = status in ("crashed", "stopped") and checkpoint
        created = float(meta.get("created_at") or 0.0)
        return RunSummary(
            id=str(meta.get("id") or self.run_dir.name), path=self.run_dir, status=status,
            step=step, epoch=epoch, best_val_loss=best.val_loss if best else None,
            val_accuracy=_from_db(last_eval[0][0]) if last_eval else None,
            created_at=created, updated_at=float(updated) if updated is not None else created,
            parent=str(meta.get("parent") or ""), parent_step=meta.get("parent_step"),
            label=str(meta.get("label") or ""), reason=reason, resumable=resumable,
            checkpoint_step=(good_checkpoint_step(self.run_dir / CHECKPOINT_DIR)
                             if resumable else None))

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

    def _derive(self, seq: int, event: Event) -> None:
        """The query rows of one event (inside the open transaction)."""
        db = self._db
        match event:
            case protocol.MetricsBatch():
                db.executemany(
                    "INSERT OR REPLACE INTO train (step, seq, epoch, loss, lr) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(step, seq, epoch, _to_db(loss), _to_db(lr))
                     for step, epoch, loss, lr in zip(event.steps, event.step_epochs(),
                                                      event.losses, event.lrs, strict=True)])
            case protocol.EvalDone():
                db.execute(
                    "INSERT OR REPLACE INTO evals (step, seq, epoch, val_loss, val_accuracy, "
                    "train_loss, best_val_loss) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (event.step, seq, event.epoch, _to_db(event.val_loss),
                     _to_db(event.val_accuracy), _to_db(event.train_loss),
                     _to_db(event.best_val_loss)))
            case protocol.HyperChanged():
                db.execute("INSERT INTO changes (seq, step, key) VALUES (?, ?, ?)",
                           (seq, event.step, event.key))
            case protocol.AlertRaised():
                db.execute("INSERT INTO alerts (seq, step, kind, severity) VALUES (?, ?, ?, ?)",
                           (seq, event.step, event.kind, event.severity))
            case protocol.LayerStatsSnapshot():
                columns = ("step", "layer", "seq", "kind", "activation", *_LAYER_NUMBERS)
                db.executemany(
                    f"INSERT OR REPLACE INTO layer_stats ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' * len(columns))})",
                    [(event.step, row.name, seq, row.kind, row.activation,
                      *(_to_db(getattr(row, name)) for name in _LAYER_NUMBERS))
                     for row in event.layers])
            case protocol.RunStarted():
                resumed = event.resumed_from_step
                if resumed is not None:
                    # The resumed run repeats the steps after its checkpoint: what the lost
                    # segment recorded past it did not happen in this run's history.
                    for table in _DERIVED_TABLES:
                        db.execute(f"DELETE FROM {table} WHERE step > ?", (resumed,))
            case (protocol.StateChanged() | protocol.CommandRejected()
                  | protocol.CheckpointSaved() | protocol.Notice() | protocol.EngineFailed()
                  | protocol.RunFinished() | protocol.NonFiniteDetected() | protocol.LrFound()
                  | protocol.Attached() | protocol.ControlChanged()):
                pass  # in the events table only
            case _:
                assert_never(event)


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


def _step_of(event: Event) -> int | None:
    """The step an event is about, for the events table (None: no step)."""
    match event:
        case protocol.MetricsBatch():
            return event.steps[-1] if event.steps else None
        case protocol.RunFinished():
            return event.final.step
        case (protocol.EvalDone() | protocol.StateChanged() | protocol.HyperChanged()
              | protocol.CommandRejected() | protocol.CheckpointSaved() | protocol.Notice()
              | protocol.EngineFailed() | protocol.LayerStatsSnapshot()
              | protocol.NonFiniteDetected() | protocol.AlertRaised() | protocol.LrFound()):
            return event.step
        case protocol.RunStarted() | protocol.Attached() | protocol.ControlChanged():
            return None
        case _:
            assert_never(event)


def _decode_json(text: str) -> Any:
    value = json.loads(text)
    return _NONFINITE.get(value, value) if isinstance(value, str) else value


# --- recording from the engine -----------------------------------------------------------


def recording(runs: RunStore, emit: protocol.Emit, *,
              clock: Callable[[], float] = time.monotonic) -> protocol.Emit:
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

    def __init__(self, runs: RunStore, emit: protocol.Emit,
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

    def __call__(self, event: Event) -> None:
        now = self.clock()
        paused = self.retry_at is not None and now < self.retry_at
        if paused and type(event).__name__ not in COMMIT_NOW:
            self.missed += 1  # not tried: costs nothing while the disk is full
        else:
            # A state change, a checkpoint or the end is tried even while paused (rare,
            # and what a reader of the run must not miss).
            self._record(event, now, scheduled=not paused)
        self.emit(event)

    def _record(self, event: Event, now: float, *, scheduled: bool) -> None:
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

    def _say_recovered(self, event: Event, now: float) -> bool:
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

    def _failed(self, event: Event, exc: StoreError, now: float, *, scheduled: bool) -> None:
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
