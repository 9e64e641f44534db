"""The run store: events in and out of SQLite, faithfully, across processes and crashes;
run status, the engine lock, finding runs, and ``trainlab runs``."""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import losses_by_step, of_type, run_loop, tiny_config

from trainlab.cli.commands import main
from trainlab.core import catalog, engine_lock, protocol, run_status, rundir, store
from trainlab.core.config import Config
from trainlab.core.text import format_age

REPO = Path(__file__).resolve().parents[1]
SUBPROCESS_WAIT_S = 60.0
"""Longest a test waits for a child process to get somewhere (slow shared machines)."""


# --- helpers ----------------------------------------------------------------------------


def started_event() -> protocol.RunStarted:
    """A RunStarted with plausible contents (the store only keeps it)."""
    model = protocol.ModelInfo("mlp", (protocol.LayerInfo("fc", "Linear", (4,), 12),), 12)
    data = protocol.DatasetInfo("blobs", "classification", (2,), 3, 160, 40,
                                ("a", "b", "c"), (50, 50, 60), (10, 15, 15))
    return protocol.RunStarted(Config().to_dict(), model, data, "cross_entropy", "cpu", 1,
                               5, 20)


def layer(name: str, **numbers: Any) -> protocol.LayerStats:
    values = dict(act_mean=0.1, act_std=1.0, act_min=-2.0, act_max=2.0, saturated_frac=None,
                  dead_frac=0.25, zero_frac=0.25, grad_out_std=1e-3, weight_norm=3.0,
                  weight_std=0.1, grad_norm=0.5, grad_std=0.01, grad_max=0.2,
                  update_ratio=1e-3)
    values.update(numbers)
    return protocol.LayerStats(name, "Linear", "ReLU", **values)


def finished_event(reason: str, step: int = 20) -> protocol.RunFinished:
    final = protocol.FinalMetrics(step, 4, 0.5, 0.6, 0.8, 0.55, 10, 1.5)
    return protocol.RunFinished(reason, final)


def make_run(root: Path, events: list[Any], **meta: Any) -> Path:
    """A run directory whose store holds ``events`` (recorded, committed, closed)."""
    run_dir = catalog.new_run(root, Config(), **meta)
    with store.RunStore.open(run_dir, write=True) as runs:
        for event in events:
            runs.record(event)
    return run_dir


def python(code: str, *args: str) -> subprocess.Popen[str]:
    """A child Python process running ``code`` from the repository root."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + SUBPROCESS_WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def as_json(events: list[Any]) -> list[str]:
    """Events as their protocol JSON: equal exactly when every field is (NaN included,
    which == cannot compare)."""
    return [protocol.to_json(e) for e in events]


# --- non-finite numbers ---------------------------------------------------------------------


def test_sqlite_itself_loses_nan_which_is_why_the_store_encodes_it():
    # The premise: a NaN bound as REAL comes back as NULL (indistinguishable from "none").
    assert sqlite3.connect(":memory:").execute("SELECT ?", (math.nan,)).fetchone() == (None,)


def test_nan_and_inf_round_trip_through_the_db(tmp_path):
    batch = protocol.MetricsBatch((1, 2, 3, 4), (0.5, math.nan, math.inf, -math.inf),
                                  (0.1, math.inf, math.nan, 0.1), 1, 10.0, 640.0)
    evaluation = protocol.EvalDone(4, 1, math.nan, None, math.inf, 0.5)
    snapshot = protocol.LayerStatsSnapshot(
        4, (layer("fc1", grad_norm=math.nan, update_ratio=None, act_max=math.inf),
            layer("fc2", act_min=-math.inf)), (), 64)
    change = protocol.HyperChanged(4, "optim.lr", math.nan, math.inf, "odd values")
    events = [started_event(), batch, evaluation, snapshot, change]
    run_dir = make_run(tmp_path, events)

    with store.RunStore.open(run_dir) as runs:  # a fresh connection: nothing cached
        curve = runs.train_curve()
        assert curve.steps == (1, 2, 3, 4)
        assert curve.losses[0] == 0.5 and math.isnan(curve.losses[1])
        assert curve.losses[2] == math.inf and curve.losses[3] == -math.inf
        assert curve.lrs[1] == math.inf and math.isnan(curve.lrs[2])
        (e,) = runs.evals()
        assert math.isnan(e.val_loss) and e.val_accuracy is None and e.train_loss == math.inf
        stats = {s.name: s for _, s in runs.layer_stats()}
        assert math.isnan(stats["fc1"].grad_norm) and stats["fc1"].update_ratio is None
        assert stats["fc1"].act_max == math.inf and stats["fc2"].act_min == -math.inf
        assert stats["fc1"].saturated_frac is None  # None stays None, not NaN
        (c,) = runs.changes()
        assert math.isnan(c.old) and c.new == math.inf
        assert as_json([event for _, event in runs.events()]) == as_json(events)
        # Stored as the protocol's strings, never as NULL.
        raw = sqlite3.connect(run_dir / rundir.DB_FILE)
        assert raw.execute("SELECT loss FROM train ORDER BY step").fetchall() == [
            (0.5,), ("NaN",), ("Infinity",), ("-Infinity",)]
        assert runs.best() is None  # no finite validation loss: no best


# --- the event log ------------------------------------------------------------------------


def test_seq_numbers_increase_by_one_and_slices_read_back(tmp_path):
    run_dir = catalog.new_run(tmp_path, Config())
    with store.RunStore.open(run_dir, write=True) as runs:
        events = [protocol.Notice(i, "info", f"n{i}") for i in range(2500)]
        seqs = [runs.record(e) for e in events]
        assert seqs == list(range(1, 2501))
        assert runs.last_seq() == 2500
        # More rows than one read chunk: events() pages through them all.
        assert [n.message for _, n in runs.events()] == [e.message for e in events]
        assert [s for s, _ in runs.events(after=10, upto=13)] == [11, 12, 13]
        runs.record(protocol.StateChanged("paused", 5, "pause requested"))
        assert [type(e).__name__ for _, e in runs.events(types=("StateChanged",))] == \
            ["StateChanged"]
    with store.RunStore.open(run_dir, write=True) as runs:  # the engine again (resume)
        assert runs.record(protocol.Notice(0, "info", "again")) == 2502


def test_record_refuses_what_is_not_an_event(tmp_path):
    run_dir = catalog.new_run(tmp_path, Config())
    with store.RunStore.open(run_dir, write=True) as runs, \
            pytest.raises(TypeError, match="Pause is not a protocol event"):
        runs.record(protocol.Pause())


def test_a_reader_cannot_write(tmp_path):
    run_dir = catalog.new_run(tmp_path, Config())
    with store.RunStore.open(run_dir) as runs, pytest.raises(store.StoreError,
                                                             match="reading only"):
        runs.record(protocol.Notice(0, "info", "x"))


def test_batched_events_wait_for_the_commit_state_changes_do_not(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "COMMIT_INTERVAL_S", 3600.0)  # the flusher never fires here
    run_dir = catalog.new_run(tmp_path, Config())
    writer = store.RunStore.open(run_dir, write=True)
    reader = store.RunStore.open(run_dir)
    try:
        writer.record(protocol.MetricsBatch((1,), (0.5,), (0.1,), 1, 1.0, 1.0))
        assert reader.last_seq() == 0  # batched: not committed yet
        writer.record(protocol.StateChanged("paused", 1, "pause requested"))
        assert reader.last_seq() == 2  # committed at once, with the batch before it
        writer.record(protocol.Notice(1, "info", "batched"))
        assert reader.last_seq() == 2
        writer.commit()
        assert reader.last_seq() == 3
    finally:
        reader.close()
        writer.close()


def test_the_flusher_commits_a_quiet_batch_within_the_interval(tmp_path):
    run_dir = catalog.new_run(tmp_path, Config())
    with store.RunStore.open(run_dir, write=True) as writer, \
            store.RunStore.open(run_dir) as reader:
        writer.record(protocol.Notice(1, "info", "nothing follows"))  # batched, then quiet
        wait_for(lambda: reader.last_seq() == 1, "the flusher's commit")


def test_meta_holds_the_run_facts_and_what_set_meta_adds(tmp_path):
    run_dir = catalog.new_run(tmp_path, Config(), parent="20260101-000000-abcd",
                            parent_step=40, label="lower lr")
    with store.RunStore.open(run_dir, write=True) as runs:
        runs.set_meta(pid=4242, note=math.nan)
    with store.RunStore.open(run_dir) as runs:
        meta = runs.meta()
    assert meta["id"] == run_dir.name and meta["parent"] == "20260101-000000-abcd"
    assert meta["parent_step"] == 40 and meta["label"] == "lower lr"
    assert meta["pid"] == 4242 and math.isnan(meta["note"])
    assert abs(meta["created_at"] - time.time()) < 60


def test_new_run_writes_the_config_and_a_unique_id(tmp_path):
    config = Config().with_values({"optim.lr": 0.02, "model.depth": 5})
    dirs = [catalog.new_run(tmp_path, config) for _ in range(20)]
    assert len(set(dirs)) == 20
    for run_dir in dirs:
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run_dir.name)
        assert rundir.run_config(run_dir) == config
        assert (run_dir / rundir.CHECKPOINT_DIR).is_dir()
    with store.RunStore.open(dirs[0]) as runs:
        assert runs.integrity_check() == "ok" and runs.journal_mode == "wal"


def test_a_directory_without_a_store_is_not_a_run(tmp_path):
    with pytest.raises(rundir.RunNotFound, match=f"{tmp_path} is not a run directory"):
        store.RunStore.open(tmp_path)
    assert not (tmp_path / rundir.DB_FILE).exists()  # reading created nothing


def test_a_store_from_a_newer_trainlab_is_refused(tmp_path):
    run_dir = catalog.new_run(tmp_path, Config())
    sqlite3.connect(run_dir / rundir.DB_FILE).execute(
        f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    with pytest.raises(store.StoreError, match="newer trainlab"):
        store.RunStore.open(run_dir)


# --- derived tables of a real run ------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A tiny real run recorded through ``recording``: (run dir, the events emitted)."""
    root = tmp_path_factory.mktemp("runs")
    config = tiny_config(stats__every=5, stats__hist_every=5, run__eval_every=5)
    run_dir = catalog.new_run(root, config)
    events: list[Any] = []
    with engine_lock.EngineLock(run_dir), store.RunStore.open(run_dir, write=True) as runs:
        emit = store.recording(runs, events.append)
        for event in run_loop(config, [protocol.SetHyper("optim.lr", 0.01, "faster")]):
            emit(event)
    return run_dir, events


def test_queries_of_a_real_run_match_its_events(real_run):
    run_dir, events = real_run
    with store.RunStore.open(run_dir) as runs:
        assert as_json([e for _, e in runs.events()]) == as_json(events)
        curve = runs.train_curve()
        assert dict(zip(curve.steps, curve.losses, strict=True)) == losses_by_step(events)
        lrs = {s: lr for b in of_type(events, "MetricsBatch")
               for s, lr in zip(b.steps, b.lrs, strict=True)}
        assert dict(zip(curve.steps, curve.lrs, strict=True)) == lrs
        assert runs.evals() == of_type(events, "EvalDone")
        assert runs.changes() == of_type(events, "HyperChanged")
        assert runs.changes()[0].new == 0.01
        assert runs.alerts() == of_type(events, "AlertRaised")
        snapshots = of_type(events, "LayerStatsSnapshot")
        assert runs.layer_stats() == [(s.step, row) for s in snapshots for row in s.layers]
        first = snapshots[0].layers[0].name
        assert [s for _, s in runs.layer_stats(first)] == [
            row for s in snapshots for row in s.layers if row.name == first]
        assert runs.final() == of_type(events, "RunFinished")[0].final
        finite = [e for e in of_type(events, "EvalDone") if math.isfinite(e.val_loss)]
        assert runs.best() == min(finite, key=lambda e: e.val_loss)
    summary = catalog.summarize(run_dir)
    assert summary.status == "finished" and summary.reason == "completed"
    assert summary.step == 20
    assert summary.best_val_loss == min(e.val_loss for e in of_type(events, "EvalDone"))
    assert summary.val_accuracy == of_type(events, "EvalDone")[-1].val_accuracy


def test_a_resumed_run_replaces_what_the_lost_segment_recorded_past_its_checkpoint(tmp_path):
    import dataclasses

    def batch(steps: range, loss: float) -> protocol.MetricsBatch:
        return protocol.MetricsBatch(tuple(steps), (loss,) * len(steps), (0.1,) * len(steps),
                                     1, 1.0, 1.0)

    lost = [started_event(), batch(range(1, 11), 1.0), protocol.EvalDone(10, 1, 0.9, 0.5,
                                                                          1.0, 0.9),
            protocol.HyperChanged(8, "optim.lr", 0.1, 0.2)]
    run_dir = make_run(tmp_path, lost)
    resumed = dataclasses.replace(started_event(), resumed_from_step=5)
    with store.RunStore.open(run_dir, write=True) as runs:
        runs.record(resumed)
        runs.record(batch(range(6, 9), 2.0))
        curve = runs.train_curve()
        assert curve.steps == (1, 2, 3, 4, 5, 6, 7, 8)
        assert curve.losses == (1.0,) * 5 + (2.0,) * 3
        assert runs.evals() == [] and runs.changes() == []
        assert len(list(runs.events())) == len(lost) + 2  # the log itself keeps everything


# --- status ----------------------------------------------------------------------------------


RUNNING = [started_event(), protocol.StateChanged("running", 0, "started"),
           protocol.MetricsBatch((1, 2), (1.0, 0.9), (0.1, 0.1), 1, 5.0, 320.0)]


@pytest.mark.parametrize(
    ("events", "alive", "status", "reason"),
    [
        (RUNNING, True, "running", "started"),
        ([*RUNNING, protocol.StateChanged("paused", 2, "pause requested")], True, "paused",
         "pause requested"),
        ([*RUNNING, protocol.StateChanged("finished", 20, "completed"),
          finished_event("completed")], False, "finished", "completed"),
        ([*RUNNING, protocol.StateChanged("finished", 20, "early_stopped"),
          finished_event("early_stopped")], False, "finished", "early_stopped"),
        ([*RUNNING, protocol.StateChanged("finished", 20, "SIGTERM"),
          finished_event("stopped")], False, "stopped", "SIGTERM"),
        ([*RUNNING, protocol.StateChanged("failed", 20, "non_finite"),
          finished_event("non_finite")], False, "failed", "the loss became non-finite"),
        (list(protocol.failure_events("config", "data.dataset = 'nope': not found")), False,
         "failed", "data.dataset = 'nope': not found"),
        (RUNNING, False, "crashed", "ended without a final event"),
        ([], False, "crashed", "never recorded an event"),
        # Stopped, then resumed: the new segment decides.
        ([*RUNNING, finished_event("stopped"), started_event()], False, "crashed",
         "ended without a final event"),
        ([*RUNNING, finished_event("stopped"), started_event(),
          protocol.StateChanged("running", 20, "started")], True, "running", "started"),
        # Alive a moment after its final event: the event decides.
        ([*RUNNING, finished_event("completed")], True, "finished", "completed"),
    ],
)
def test_status_of_each_kind_of_run(tmp_path, events, alive, status, reason):
    run_dir = make_run(tmp_path, events)
    lock = engine_lock.EngineLock(run_dir)
    if alive:
        lock.acquire()
    try:
        summary = catalog.summarize(run_dir)
    finally:
        lock.release()
    assert summary.status == status and summary.status in run_status.STATUSES
    assert reason in summary.reason
    assert not summary.resumable  # no checkpoint in any of these


@pytest.mark.parametrize(
    ("events", "resumable"),
    [(RUNNING, True), ([*RUNNING, finished_event("stopped")], True),
     ([*RUNNING, finished_event("completed")], False),
     ([*RUNNING, finished_event("non_finite")], False)],
)
def test_crashed_and_stopped_runs_with_a_checkpoint_are_resumable(tmp_path, events, resumable):
    run_dir = make_run(tmp_path, events)
    (run_dir / rundir.CHECKPOINT_DIR / ".last.pt.x1.tmp").write_bytes(b"half")
    assert not catalog.summarize(run_dir).resumable  # a file being written is no checkpoint
    (run_dir / rundir.CHECKPOINT_DIR / "before-lr-change.pt").write_bytes(b"saved by name")
    assert not catalog.summarize(run_dir).resumable  # a user's named save is not resumed from
    (run_dir / rundir.CHECKPOINT_DIR / "last.pt").write_bytes(b"checkpoint")
    assert catalog.summarize(run_dir).resumable is resumable


@pytest.mark.parametrize("name", ["last_good.pt", "step_00000040.pt"])
def test_a_run_with_only_a_good_or_a_numbered_checkpoint_is_resumable(tmp_path, name):
    run_dir = make_run(tmp_path, RUNNING)
    (run_dir / rundir.CHECKPOINT_DIR / name).write_bytes(b"checkpoint")
    assert catalog.summarize(run_dir).resumable


def test_summary_numbers_and_parent(tmp_path):
    events = [*RUNNING, protocol.EvalDone(2, 1, 0.7, 0.5, 0.9, 0.7),
              protocol.MetricsBatch((3, 4, 5, 6), (0.8,) * 4, (0.1,) * 4, 2, 5.0, 320.0),
              protocol.EvalDone(4, 2, 0.8, 0.6, 0.8, 0.7),
              protocol.EvalDone(6, 2, math.nan, 0.1, 0.8, 0.7)]
    run_dir = make_run(tmp_path, events, parent="20260101-000000-abcd", parent_step=2)
    s = catalog.summarize(run_dir)
    assert (s.step, s.epoch, s.best_val_loss) == (6, 2, 0.7)
    assert s.val_accuracy == 0.1  # the latest evaluation's
    assert s.parent == "20260101-000000-abcd" and s.parent_step == 2
    assert s.created_at <= s.updated_at <= time.time()


# --- processes: a reader beside the writer, a writer killed -----------------------------------


WRITER = """
import sys
from trainlab.core import engine_lock, protocol, store
run_dir, journal, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with engine_lock.EngineLock(run_dir), store.RunStore.open(run_dir, write=True,
                                                     wal=journal == "wal") as runs:
    runs.record(protocol.StateChanged("running", 0, "started"))
    print("ready", flush=True)
    step = 0
    while count == 0 or step < count:
        step += 1
        runs.record(protocol.MetricsBatch((step,), (step / 7,), (1e-3,), 1, 1.0, 1.0))
        if step % 5 == 0:  # a big event now and then: a commit that takes a while
            rows = tuple(protocol.LayerStats(f"layer{i}", "Linear", "ReLU", *([0.5] * 14))
                         for i in range(200))
            runs.record(protocol.LayerStatsSnapshot(step, rows, (), 64))
        if step % 50 == 0:
            runs.commit()
    print("done", flush=True)
    sys.stdin.readline()  # holds the lock until the test has looked
"""


def check_history(runs: store.RunStore) -> int:
    """Every committed event decodes, seqs run 1..last without a gap, each loss is the
    writer's step / 7: returns the last seq."""
    seqs = []
    for seq, event in runs.events():
        seqs.append(seq)
        if isinstance(event, protocol.MetricsBatch):
            assert event.losses == (event.steps[0] / 7,)
    assert seqs == list(range(1, len(seqs) + 1))
    curve = runs.train_curve()
    assert curve.steps == tuple(range(1, len(curve) + 1))
    assert curve.losses == tuple(s / 7 for s in curve.steps)
    return len(seqs)


@pytest.mark.slow
@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_reader_in_this_process_while_another_process_writes(tmp_path, journal):
    run_dir = catalog.new_run(tmp_path, Config())
    child = python(WRITER, str(run_dir), journal, "600")
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        expected = 1 + 600 + 600 // 5
        seen, growth = 0, 0
        deadline = time.monotonic() + SUBPROCESS_WAIT_S
        with store.RunStore.open(run_dir) as runs:
            assert runs.journal_mode == journal
            while seen < expected:
                assert time.monotonic() < deadline and child.poll() is None, \
                    child.stderr.read()
                last = runs.last_seq()
                assert last >= seen  # history only grows
                if last > seen:  # what became visible is whole, mid-write too
                    growth += 1
                    assert [s for s, _ in runs.events(after=seen)][:last - seen] == \
                        list(range(seen + 1, last + 1))
                seen = last
                time.sleep(0.01)
            assert child.stdout.readline().strip() == "done"
            assert catalog.summarize(run_dir).status == "running"
            child.communicate("\n", timeout=SUBPROCESS_WAIT_S)
            assert child.returncode == 0, child.stderr
            assert check_history(runs) == expected
        assert growth >= 2  # it did read while the writer was writing
        assert catalog.summarize(run_dir).status == "crashed"  # gone with no final event
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_kill_9_mid_run_leaves_a_store_that_opens_ok_and_says_crashed(tmp_path, journal):
    run_dir = catalog.new_run(tmp_path, Config())
    (run_dir / rundir.CHECKPOINT_DIR / "last.pt").write_bytes(b"a checkpoint")
    child = python(WRITER, str(run_dir), journal, "0")  # writes until killed
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        with store.RunStore.open(run_dir) as runs:
            wait_for(lambda: runs.last_seq() > 300, "the writer's history")
            seen = runs.last_seq()
        assert engine_lock.engine_alive(run_dir)
        time.sleep(random.uniform(0, 0.2))  # somewhere in a write
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    with store.RunStore.open(run_dir) as runs:
        assert runs.integrity_check() == "ok"
        assert check_history(runs) >= seen
        steps = len(runs.train_curve())
    summary = catalog.summarize(run_dir)
    assert summary.status == "crashed" and summary.resumable
    assert summary.step == steps > 0
    with store.RunStore.open(run_dir, write=True) as runs:  # a resumed engine writes on
        last = runs.last_seq()
        assert runs.record(protocol.Notice(0, "info", "resumed")) == last + 1
        assert runs.integrity_check() == "ok"


# --- the engine lock -------------------------------------------------------------------------


HOLDER = """
import sys, time
from trainlab.core import engine_lock
with engine_lock.EngineLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_the_engine_lock_is_one_process_at_a_time_and_dies_with_it(tmp_path):
    run_dir = catalog.new_run(tmp_path, Config())
    assert not engine_lock.engine_alive(run_dir)
    child = python(HOLDER, str(run_dir))
    try:
        assert child.stdout.readline().strip() == "locked", child.stderr.read()
        assert engine_lock.engine_alive(run_dir)
        with pytest.raises(engine_lock.RunBusy, match=rf"{run_dir.name} already has an engine "
                                                rf"\(pid {child.pid}\)"):
            engine_lock.EngineLock(run_dir).acquire()
        assert catalog.summarize(run_dir).status == "running"
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        child.kill()
        child.wait()
    assert not engine_lock.engine_alive(run_dir)
    with engine_lock.EngineLock(run_dir):
        assert engine_lock.engine_alive(run_dir)
    assert not engine_lock.engine_alive(run_dir)
    assert issubclass(engine_lock.RunBusy, ValueError)


def test_a_liveness_probe_does_not_make_a_starting_engine_busy(tmp_path, monkeypatch):
    # engine_alive holds a shared lock for a moment; an engine starting then must wait.
    monkeypatch.setattr(engine_lock, "LOCK_RETRY_S", SUBPROCESS_WAIT_S)  # a slow machine's timer
    run_dir = catalog.new_run(tmp_path, Config())
    (run_dir / rundir.LOCK_FILE).touch()
    probe = os.open(run_dir / rundir.LOCK_FILE, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH)
    lock = engine_lock.EngineLock(run_dir)
    threading.Timer(0.2, os.close, (probe,)).start()
    lock.acquire()  # it retried past the probe instead of raising RunBusy
    lock.release()


# --- finding runs ---------------------------------------------------------------------------


def test_find_run_by_id_prefix_path_or_newest(tmp_path, monkeypatch):
    dirs = [catalog.new_run(tmp_path, Config()) for _ in range(3)]
    ids = [d.name for d in dirs]
    newest = dirs[-1]
    assert catalog.find_run(tmp_path, None) == newest
    for run_dir in dirs:
        assert catalog.find_run(tmp_path, run_dir.name) == run_dir
        # The shortest prefix no other id starts with.
        prefix = next(run_dir.name[:n] for n in range(1, 21)
                      if sum(i.startswith(run_dir.name[:n]) for i in ids) == 1)
        assert catalog.find_run(tmp_path, prefix) == run_dir
        assert catalog.find_run(tmp_path, str(run_dir)) == run_dir
        assert catalog.find_run(tmp_path, str(run_dir / rundir.DB_FILE)) == run_dir
    monkeypatch.chdir(tmp_path)
    assert catalog.find_run("elsewhere", f"./{ids[0]}") == Path(f"./{ids[0]}")
    assert [s.path for s in catalog.list_runs(tmp_path)] == dirs[::-1]


def _runs_named(root: Path, *ids: str) -> dict[str, Path]:
    """Runs under ``root`` with these ids (new_run draws its own: renamed after)."""
    named = {}
    for run_id in ids:
        named[run_id] = catalog.new_run(root, Config()).rename(root / run_id)
    return named


def test_find_run_takes_every_shortened_id_the_app_shows_and_a_unique_suffix(tmp_path,
                                                                              capsys):
    from trainlab.tui.compare import short_names
    runs = _runs_named(tmp_path, "20261201-100346-a439", "20261201-100346-b512",
                       "20261201-212533-a439", "20261201-212533-c777")
    # The compare screen's names (the shared date left out), as shown: each is a run.
    shown = short_names(list(runs))
    assert shown["20261201-100346-a439"] == "100346-a439"
    for run_id, name in shown.items():
        assert catalog.find_run(tmp_path, name) == runs[run_id]
    # A unique suffix; a unique prefix still; the random digits alone.
    assert catalog.find_run(tmp_path, "533-c777") == runs["20261201-212533-c777"]
    assert catalog.find_run(tmp_path, "b512") == runs["20261201-100346-b512"]
    assert catalog.find_run(tmp_path, "20261201-100346-b") == runs["20261201-100346-b512"]
    assert catalog.find_run(tmp_path, "212533-c") == runs["20261201-212533-c777"]  # shown's
    # Ambiguous, as a suffix or as a prefix: an error naming the candidates.
    with pytest.raises(rundir.RunNotFound) as error:
        catalog.find_run(tmp_path, "a439")
    assert "'a439' matches 2 runs" in str(error.value)
    assert "20261201-100346-a439" in str(error.value)
    assert "20261201-212533-a439" in str(error.value)
    with pytest.raises(rundir.RunNotFound, match="'20261201-100346' matches 2 runs"):
        catalog.find_run(tmp_path, "20261201-100346")
    # The parent column's ID@STEP names the run and where to fork from.
    with pytest.raises(rundir.RunNotFound, match=r"name the run \(100346-a439\).*--from 400"):
        catalog.find_run(tmp_path, "100346-a439@400")
    # Every command that takes a run goes through find_run: export takes the short id.
    assert main(["export", "100346-a439", "--format", "jsonl", "--out", str(tmp_path / "x"),
                 "--dir", str(tmp_path)]) == 0
    assert "no such run" not in capsys.readouterr().err


def test_find_run_errors_name_the_ref_and_what_exists(tmp_path):
    with pytest.raises(rundir.RunNotFound, match="does not exist"):
        catalog.find_run(tmp_path / "none", None)
    with pytest.raises(rundir.RunNotFound, match="has none"):
        catalog.find_run(tmp_path, "x")
    dirs = [catalog.new_run(tmp_path, Config()) for _ in range(2)]
    with pytest.raises(rundir.RunNotFound) as error:
        catalog.find_run(tmp_path, "nope")
    assert "no run 'nope'" in str(error.value)
    assert all(d.name in str(error.value) for d in dirs)
    with pytest.raises(rundir.RunNotFound, match=r"'2' matches 2 runs.*give more of the id"):
        catalog.find_run(tmp_path, "2")
    with pytest.raises(rundir.RunNotFound, match="is not a run directory"):
        catalog.find_run(tmp_path, str(tmp_path / "empty" / "dir"))


def test_list_runs_shows_a_run_whose_store_is_unreadable(tmp_path):
    good = catalog.new_run(tmp_path, Config())
    bad = catalog.new_run(tmp_path, Config())
    (bad / rundir.DB_FILE).write_bytes(b"this is not a database" * 100)
    summaries = {s.path: s for s in catalog.list_runs(tmp_path)}
    assert summaries[good].status == "crashed"
    assert summaries[bad].status == "crashed" and "unreadable" in summaries[bad].reason


# --- recording ------------------------------------------------------------------------------


def test_recording_records_then_passes_on(tmp_path):
    run_dir = catalog.new_run(tmp_path, Config())
    seen: list[Any] = []
    events = [protocol.Notice(i, "info", f"n{i}") for i in range(5)]
    with store.RunStore.open(run_dir, write=True) as runs:
        emit = store.recording(runs, seen.append)
        for event in events:
            emit(event)
            assert runs.last_seq() == event.step + 1  # recorded before it was passed on
    assert seen == events


class Clock:
    """A monotonic clock that moves only when told (``recording``'s retries)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_disk_loses_batches_says_so_once_and_training_goes_on(tmp_path):
    run_dir = catalog.new_run(tmp_path, Config())
    seen: list[Any] = []
    big = "x" * 3000
    sent = [protocol.Notice(i, "info", big) for i in range(1, 60)]
    after = [protocol.Notice(i, "info", "after") for i in range(60, 400)]
    clock = Clock()
    with store.RunStore.open(run_dir, write=True) as runs:
        # SQLite's page limit on the store's own connection stands in for a full disk:
        # writes fail with SQLITE_FULL ("database or disk is full") exactly as they would.
        db = runs._db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages + 12}")
        emit = store.recording(runs, seen.append, clock=clock)
        for event in sent:
            emit(event)
            clock.now += 0.1
        db.execute("PRAGMA max_page_count = 1000000")  # space again
        for event in after:
            emit(event)
            clock.now += 0.1
    assert [e for e in seen if e.message in (big, "after")] == sent + after  # all passed on
    errors = [e for e in seen if e.level == "error"]
    recovered = [e for e in seen if e.level == "info" and "records again" in e.message]
    assert len(errors) == 1 and "database or disk is full" in errors[0].message
    assert "are lost" in errors[0].message and "training goes on" in errors[0].message
    assert len(recovered) == 1  # the gap closed, and said so once
    with store.RunStore.open(run_dir) as runs:
        assert runs.integrity_check() == "ok"
        stored = [e for _, e in runs.events()]
    assert recovered[0] in stored and stored[-3:] == after[-3:]
    # Nothing vanishes unaccounted: what is stored plus what the notice says was missed
    # is everything that was recorded (the events and the recovery notice).
    missed = int(re.search(r"missed (\d+) event", recovered[0].message)[1])
    assert len(stored) + missed == len(sent) + len(after) + len(recovered)
    assert missed > 1  # a whole batch went, not just the event that failed


class FullDisk:
    """Instead of ``runs``' writes: ENOSPC while ``full`` (every write, or with
    ``every`` > 1 only every n-th one: a disk with a few pages free, which takes a small
    write now and then), else the real store. ``tries`` counts the writes asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, runs: store.RunStore) -> None:
        self.full = False
        self.every = 1
        self.tries = 0
        record, commit = runs.record, runs.commit

        def fails() -> bool:
            self.tries += 1
            return self.full and self.tries % self.every == 0

        def full_record(event: Any) -> int:
            if fails():
                raise store.StoreError(f"{runs.run_dir / rundir.DB_FILE}: cannot record: "
                                       f"{os.strerror(errno.ENOSPC)}")
            return record(event)

        def full_commit() -> None:
            if fails():
                raise store.StoreError(f"commit failed: {os.strerror(errno.ENOSPC)}")
            commit()

        monkeypatch.setattr(runs, "record", full_record)
        monkeypatch.setattr(runs, "commit", full_commit)


def notices(seen: list[Any]) -> list[tuple[str, str]]:
    """The store's own notices passed on: (level, first words)."""
    return [(e.level, e.message[:28]) for e in seen
            if isinstance(e, protocol.Notice) and "run store" in e.message]


def test_a_full_disk_is_retried_less_and_less_often_and_said_once(tmp_path, monkeypatch):
    run_dir = catalog.new_run(tmp_path, Config())
    seen: list[Any] = []
    clock = Clock()
    with store.RunStore.open(run_dir, write=True) as runs:
        disk = FullDisk(monkeypatch, runs)
        emit = store.recording(runs, seen.append, clock=clock)
        disk.full = True
        for i in range(6000):  # ten minutes at 10 events a second
            emit(protocol.Notice(i, "info", "during"))
            clock.now += 0.1
        # 1 + 2 + 4 + ... + 32 s, then every 60 s: about 15 tries, not one per event.
        assert disk.tries <= 20
        assert notices(seen) == [("error", "the run store cannot record:")]
        assert "tries again in 1 s" in seen[0].message
        disk.full = False
        for i in range(6000, 7800):  # three more minutes
            emit(protocol.Notice(i, "info", "after"))
            clock.now += 0.1
    assert notices(seen) == [("error", "the run store cannot record:"),
                             ("info", "the run store records again;")]
    with store.RunStore.open(run_dir) as runs:
        stored = [e for _, e in runs.events()]
    assert stored[-1].step == 7799


def test_a_disk_that_takes_a_small_write_now_and_then_does_not_flap(tmp_path, monkeypatch):
    # Each retry's first write works, the next ones fail: no "records again" between
    # "cannot record"s, one notice for the whole outage.
    run_dir = catalog.new_run(tmp_path, Config())
    seen: list[Any] = []
    clock = Clock()
    with store.RunStore.open(run_dir, write=True) as runs:
        disk = FullDisk(monkeypatch, runs)
        emit = store.recording(runs, seen.append, clock=clock)
        disk.full, disk.every = True, 2
        for i in range(3000):
            emit(protocol.Notice(i, "info", "during"))
            clock.now += 0.1
        assert notices(seen) == [("error", "the run store cannot record:")]
        disk.full = False
        for i in range(3000, 5000):
            emit(protocol.Notice(i, "info", "after"))
            clock.now += 0.1
    assert notices(seen) == [("error", "the run store cannot record:"),
                             ("info", "the run store records again;")]


def test_a_state_change_is_tried_even_while_recording_pauses(tmp_path, monkeypatch):
    run_dir = catalog.new_run(tmp_path, Config())
    seen: list[Any] = []
    clock = Clock()
    with store.RunStore.open(run_dir, write=True) as runs:
        disk = FullDisk(monkeypatch, runs)
        emit = store.recording(runs, seen.append, clock=clock)
        disk.full = True
        emit(protocol.Notice(1, "info", "lost"))
        disk.full = False
        clock.now += 0.1  # well inside the first pause
        emit(protocol.Notice(2, "info", "not tried"))
        emit(protocol.StateChanged("finished", 2, "stopped"))
        emit(finished_event("stopped", 2))  # the end: the recovery is said before it
    with store.RunStore.open(run_dir) as runs:
        stored = [e for _, e in runs.events()]
    assert [type(e).__name__ for e in stored] == ["StateChanged", "Notice", "RunFinished"]
    assert "missed 2 event(s) from step 1" in stored[1].message
    assert catalog.summarize(run_dir).status == "stopped"


# --- trainlab runs ---------------------------------------------------------------------------


def test_runs_json_lists_every_run_newest_first(tmp_path, capsys):
    finished = make_run(tmp_path, [*RUNNING, protocol.EvalDone(2, 1, math.inf, None, 1.0,
                                                               math.inf),
                                   protocol.StateChanged("finished", 2, "completed"),
                                   finished_event("completed", 2)])
    crashed = make_run(tmp_path, RUNNING, parent=finished.name, parent_step=2)
    (crashed / rundir.CHECKPOINT_DIR / "last.pt").write_bytes(b"x")
    assert main(["runs", "--json", "--dir", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [crashed.name, finished.name]
    assert [r["status"] for r in rows] == ["crashed", "finished"]
    assert rows[0]["resumable"] is True and rows[0]["parent"] == finished.name
    assert rows[0]["parent_step"] == 2 and rows[0]["path"] == str(crashed)
    assert rows[1]["best_val_loss"] is None  # only an infinite validation loss: no best
    assert rows[1]["step"] == 2


def test_runs_table_offers_resume_for_a_crashed_run(tmp_path, capsys):
    crashed = make_run(tmp_path, RUNNING)
    (crashed / rundir.CHECKPOINT_DIR / "last.pt").write_bytes(b"x")
    lost = make_run(tmp_path, RUNNING)
    assert main(["runs", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["id", "status", "step", "best"]
    assert f"trainlab resume {crashed.name}" in out
    assert f"{lost.name} crashed with no checkpoint" in out
    assert any(row.startswith(crashed.name) and "crashed" in row for row in rows)


def test_runs_does_not_offer_a_step_that_no_checkpoint_holds(tmp_path, monkeypatch, capsys):
    # Stopped while the disk is full: the stop's own checkpoint is not written, so a
    # resume goes on from the newest one that was, and `trainlab runs` says which.
    import queue

    from trainlab.engine.checkpoint import Checkpoints
    from trainlab.engine.serve import serve

    config = tiny_config(run__max_steps=10_000, run__checkpoint_every=10,
                         run__dir=str(tmp_path))
    run_dir = catalog.new_run(tmp_path, config)
    commands: queue.Queue[Any] = queue.Queue()
    real_save = Checkpoints.save
    full = threading.Event()

    def save(self: Checkpoints, payload: Any, step: int, finite: bool) -> Path:
        if full.is_set():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path_for(step)))
        return real_save(self, payload, step, finite)

    def show(event: Any) -> None:
        if isinstance(event, protocol.CheckpointSaved) and event.step >= 20:
            full.set()  # the disk fills up; the run is stopped a few steps later
        if isinstance(event, protocol.MetricsBatch) and full.is_set() \
                and event.steps[-1] % 10 == 5:
            commands.put(protocol.Stop("stopped by the test"))

    monkeypatch.setattr(Checkpoints, "save", save)
    finished, _ = serve(run_dir, config, show=show, commands=commands)
    assert finished.reason == "stopped" and finished.final.step % 10 != 0
    saved = [e.step for e in stored_events(run_dir, "CheckpointSaved")]
    summary = catalog.summarize(run_dir)
    assert summary.status == "stopped" and summary.resumable
    assert summary.step == finished.final.step > saved[-1] == summary.checkpoint_step
    assert main(["runs", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"stopped at step {summary.step}: trainlab resume" not in out
    assert (f"{run_dir.name} stopped at step {summary.step}, no checkpoint of it; its newest "
            f"good one is of step {saved[-1]}: trainlab resume {run_dir.name} goes on from "
            "there") in out


@pytest.mark.parametrize(("step", "checkpoint_step", "says"), [
    (30, 30, "stopped at step 30: trainlab resume r"),
    (30, 20, "stopped at step 30, no checkpoint of it; its newest good one is of step 20: "
             "trainlab resume r goes on from there"),
    (20, 30, "stopped; its store has steps up to 20, its newest good checkpoint is of step "
             "30: trainlab resume r goes on from there"),
    (30, None, "stopped at step 30, no checkpoint known to be of it: trainlab resume r goes "
               "on from its newest good one"),
])
def test_runs_says_where_a_resume_goes_on_from(tmp_path, step, checkpoint_step, says):
    from trainlab.cli.commands import format_runs_table

    summary = run_status.RunSummary("r", tmp_path, "stopped", step, 1, None, None, 0.0, 0.0, "",
                               None, "", "stopped", resumable=True,
                               checkpoint_step=checkpoint_step)
    assert format_runs_table([summary], 0.0).splitlines()[-1] == f"r {says}"


def stored_events(run_dir: Path, name: str) -> list[Any]:
    with store.RunStore.open(run_dir) as runs:
        return [e for _, e in runs.events(types=(name,))]


def test_runs_without_any(tmp_path, capsys):
    assert main(["runs", "--dir", str(tmp_path / "none")]) == 0
    assert "no runs in" in capsys.readouterr().out
    assert main(["runs", "--json", "--dir", str(tmp_path / "none")]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize(("seconds", "text"), [(0.2, "just now"), (59, "59s ago"),
                                               (60, "1m ago"), (3599, "59m ago"),
                                               (7200, "2h ago"), (86400 * 3 + 5, "3d ago")])
def test_format_age(seconds, text):
    assert format_age(seconds) == text


def test_best_is_the_lowest_finite_validation_loss_the_earliest_of_equals(tmp_path):
    losses = [0.9, math.nan, 0.4, math.inf, -math.inf, 0.4, 0.7]
    evals = [protocol.EvalDone(10 * (i + 1), i, loss, None, 1.0, 0.0)
             for i, loss in enumerate(losses)]
    run_dir = make_run(tmp_path, [started_event(), *evals])
    with store.RunStore.open(run_dir) as runs:
        best = runs.best()
    finite = [e for e in evals if math.isfinite(e.val_loss)]  # the reference: by hand
    expected = min(finite, key=lambda e: (e.val_loss, e.step))
    assert best is not None and as_json([best]) == as_json([expected])
    assert best.step == 30  # not the later equal one at step 60
    with store.RunStore.open(make_run(tmp_path, [started_event(), *evals[1:2]])) as runs:
        assert runs.best() is None  # only a NaN evaluation: no best


def test_history_end_commits_and_keeps_a_failed_commit_for_the_writer(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path, [started_event()])
    runs = store.RunStore.open(run_dir, write=True)
    try:
        runs.record(protocol.MetricsBatch((1,), (0.5,), (0.1,), 0, 10.0, 100.0))
        with store.RunStore.open(run_dir) as reader:
            assert reader.last_seq() == 1  # batched: not committed yet
        assert runs.history_end() == 2
        with store.RunStore.open(run_dir) as reader:
            assert reader.last_seq() == 2  # committed: a client may read up to it

        runs.record(protocol.MetricsBatch((2,), (0.4,), (0.1,), 0, 10.0, 100.0))
        real_commit = runs._commit

        def failing_commit() -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(runs, "_commit", failing_commit)
        assert runs.history_end() == 2  # the failed batch is not history
        monkeypatch.setattr(runs, "_commit", real_commit)
        with pytest.raises(store.StoreError) as failure:  # the writer hears of it next
            runs.record(protocol.MetricsBatch((3,), (0.3,), (0.1,), 0, 10.0, 100.0))
        assert failure.value.lost == 1 and failure.value.lost_from_step == 2
    finally:
        runs.close()


# --- privacy --------------------------------------------------------------------------------


def loose_modes(top: Path) -> list[str]:
    """Every path under ``top`` (itself included) whose mode is not the owner's alone:
    directories must be 0700, files 0600."""
    found = []
    for path in [top, *top.rglob("*")]:
        info = path.lstat()
        want = rundir.PRIVATE_DIR_MODE if path.is_dir() else rundir.PRIVATE_FILE_MODE
        if info.st_mode & 0o777 != want:
            found.append(f"{path.relative_to(top.parent)} {info.st_mode & 0o777:o}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_a_run_is_private_to_its_owner_whatever_the_umask(tmp_path, umask, capsys):
    root = tmp_path / "runs"  # created by the run: private too
    old = os.umask(umask)
    try:
        args = ["--set", f"run.dir={root}", "--set", "data.dataset=blobs", "--set",
                "data.samples=200", "--set", "model.depth=1", "--set", "model.width=8",
                "--set", "run.max_epochs=0", "--set", "run.max_steps=30", "--set",
                "run.threads=1", "--set", "run.checkpoint_every=10"]
        assert main(["run", "--detach", "--json", *args]) == 0
        run_dir = Path(json.loads(capsys.readouterr().out)["run_dir"])
        wait_for(lambda: catalog.summarize(run_dir).status == "finished", "the run to finish")
        wait_for(lambda: not engine_lock.engine_alive(run_dir), "the engine to end")
        for fmt in ("csv", "jsonl", "tensorboard"):
            assert main(["export", run_dir.name, "--format", fmt, "--dir", str(root)]) == 0
        with store.RunStore.open(run_dir, write=True) as runs:  # -wal and -shm exist now
            runs.record(protocol.Notice(30, "info", "hello"))
            runs.commit()
            assert loose_modes(root) == []
    finally:
        os.umask(old)
    names = {p.name for p in run_dir.rglob("*")}
    assert {rundir.DB_FILE, rundir.CONFIG_FILE, rundir.LOG_FILE, rundir.LOCK_FILE, "last.pt",
            "step_00000030.pt", "train.csv", "events.jsonl"} <= names, names
    assert any(name.startswith("events.out.tfevents") for name in names)
    assert loose_modes(root) == []


def test_an_older_runs_loose_files_are_made_private(tmp_path):
    run_dir = make_run(tmp_path, RUNNING)
    os.chmod(run_dir, 0o755)
    for path in (run_dir / rundir.DB_FILE, run_dir / rundir.CONFIG_FILE):
        os.chmod(path, 0o644)
    (run_dir / "export").mkdir(mode=0o755)
    (run_dir / "export" / "metrics.csv").write_text("step\n")
    os.chmod(run_dir / "export" / "metrics.csv", 0o644)
    rundir.make_private(run_dir)  # what an engine resuming it does first
    assert loose_modes(run_dir) == []


@pytest.fixture
def foreign_run(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(this user's run, a newer run of uid 4242 that this user cannot look into)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    own = make_run(tmp_path, [*RUNNING, finished_event("stopped")])
    (own / rundir.CHECKPOINT_DIR / "last.pt").write_bytes(b"x")
    theirs = make_run(tmp_path, RUNNING)
    os.utime(theirs, (time.time() + 60, time.time() + 60))
    os.chown(theirs, 4242, 4242)
    # As the other user's 0700 directory is to anyone but root: nothing in it can be read.
    real_stat = Path.stat

    def stat(self: Path, *args: Any, **kwargs: Any) -> os.stat_result:
        if theirs in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    return own, theirs


def test_another_users_run_is_listed_as_not_yours(foreign_run, tmp_path, capsys):
    own, theirs = foreign_run
    summaries = {s.id: s for s in catalog.list_runs(tmp_path)}
    assert summaries[theirs.name].status == "not yours"
    assert "not yours" in summaries[theirs.name].reason
    assert "owned by another user" in summaries[theirs.name].reason
    assert "uid 4242" in summaries[theirs.name].reason
    assert not summaries[theirs.name].resumable
    assert summaries[own.name].status == "stopped"
    assert main(["runs", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"run {theirs.name} is not yours" in out
    assert not any(row.startswith(theirs.name) and "crashed" in row for row in out.splitlines())


def test_resume_fork_and_attach_refuse_another_users_run(foreign_run, tmp_path, capsys):
    own, theirs = foreign_run
    with pytest.raises(rundir.NotYours, match="uid 4242"):
        catalog.find_run(tmp_path, theirs.name[:-1])
    with pytest.raises(rundir.NotYours):
        catalog.find_run(tmp_path, str(theirs))
    assert catalog.find_run(tmp_path, None) == own  # the newest of this user's runs
    for command in ("resume", "fork"):
        assert main([command, theirs.name, "--headless", "--dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"run {theirs.name} is not yours" in err and "Traceback" not in err


def test_the_compare_screen_does_not_read_another_users_run(foreign_run, tmp_path,
                                                            monkeypatch):
    from trainlab.tui import compare

    _, theirs = foreign_run
    (summary,) = [s for s in catalog.list_runs(tmp_path) if s.id == theirs.name]

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("another user's store was opened")

    monkeypatch.setattr(store.RunStore, "open", refuse)
    run = compare.load_run(summary)
    assert run.metrics is None and run.config is None
    assert "not yours" in run.error and compare.note(run) == summary.reason
