"""Checkpoint files: atomic writes, checked loads, last.pt / last_good.pt, rotation, faults."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from trainlab.engine import checkpoint
from trainlab.engine.checkpoint import LAST, LAST_GOOD, CheckpointError, Checkpoints

REPO = Path(__file__).resolve().parents[1]


def payload(step: int, size: int = 16) -> dict:
    """A small payload whose tensor identifies its step."""
    return {"step": step, "w": torch.full((size,), float(step))}


def saved_steps(checkpoints: Checkpoints, *names: str) -> list[int]:
    return [checkpoint.load(checkpoints.directory / name)["step"] for name in names]


def test_round_trip_with_weights_only(tmp_path: Path):
    data = {"step": 3, "w": torch.arange(4.0), "nested": {"lr": 0.1, "names": ["a"]}}
    path = checkpoint.save_atomic(data, tmp_path / "sub" / "c.pt")
    loaded = checkpoint.load(path)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], data["w"])
    assert loaded["nested"] == {"lr": 0.1, "names": ["a"]}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch):
    path = checkpoint.save_atomic({"step": 1}, tmp_path / "c.pt")

    def broken_save(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match=r"writing c\.pt failed"):
        checkpoint.save_atomic({"step": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_last_and_last_good_are_links_to_the_newest_numbered_files(tmp_path: Path):
    checkpoints = Checkpoints(tmp_path, keep=5)
    first = checkpoints.save(payload(10), 10, finite=True)
    assert first.name == "step_00000010.pt"
    assert (tmp_path / LAST).samefile(first) and (tmp_path / LAST_GOOD).samefile(first)
    second = checkpoints.save(payload(20), 20, finite=False)
    assert (tmp_path / LAST).samefile(second)
    assert (tmp_path / LAST_GOOD).samefile(first)  # the non-finite one is not "good"
    assert checkpoint.load(second)["finite"] is False
    assert checkpoints.load_latest().payload["step"] == 20
    assert checkpoints.load_latest(good=True).payload["step"] == 10
    assert checkpoints.latest_good() == (10, tmp_path / LAST_GOOD)
    # The caller's payload is not changed by the flag.
    mine = payload(30)
    checkpoints.save(mine, 30, finite=True)
    assert "finite" not in mine


def test_rotation_keeps_the_newest_and_last_good_outlives_its_numbered_file(tmp_path: Path):
    checkpoints = Checkpoints(tmp_path, keep=2)
    checkpoints.save(payload(1), 1, finite=True)
    for step in (2, 3, 4):
        checkpoints.save(payload(step), step, finite=False)
    assert checkpoints.steps() == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        LAST, LAST_GOOD, "step_00000003.pt", "step_00000004.pt"]
    assert saved_steps(checkpoints, LAST, LAST_GOOD) == [4, 1]
    # Step 1's numbered file is gone, its data is not: load_at finds it via last_good.pt.
    assert checkpoints.load_at(1).path == tmp_path / LAST_GOOD
    assert checkpoints.latest_good() == (None, tmp_path / LAST_GOOD)
    with pytest.raises(CheckpointError, match=r"step 2 .*steps: 3, 4"):
        checkpoints.load_at(2)
    # keep may change between saves (run.keep_checkpoints is hot).
    checkpoints.keep = 1
    checkpoints.save(payload(5), 5, finite=True)
    assert checkpoints.steps() == [5]


def test_a_resume_from_an_older_checkpoint_drops_the_abandoned_later_ones(tmp_path: Path):
    checkpoints = Checkpoints(tmp_path, keep=3)
    checkpoints.save(payload(10), 10, finite=True)
    checkpoints.save(payload(20), 20, finite=False)  # resumed from 10, the last good one
    checkpoints.save(payload(11), 11, finite=True)
    assert checkpoints.steps() == [10, 11]
    assert checkpoints.load_latest().payload["step"] == 11


def test_without_hard_links_last_pt_is_a_copy(tmp_path: Path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(checkpoint.os, "link", no_links)
    checkpoints = Checkpoints(tmp_path, keep=1)
    for step in (1, 2):
        checkpoints.save(payload(step), step, finite=step == 1)
    assert checkpoints.steps() == [2]
    assert not (tmp_path / LAST).samefile(checkpoints.path_for(2))
    assert saved_steps(checkpoints, LAST, LAST_GOOD) == [2, 1]
    assert checkpoints.load_latest(good=True).payload["step"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_truncated_last_pt_falls_back_to_the_previous_checkpoint(tmp_path: Path):
    checkpoints = Checkpoints(tmp_path, keep=3)
    for step in (1, 2):
        checkpoints.save(payload(step, size=1000), step, finite=True)
    last = tmp_path / LAST
    with open(last, "r+b") as f:  # truncated in place: step_2 is the same file
        f.truncate(last.stat().st_size // 2)
    loaded = checkpoints.load_latest()
    assert loaded.payload["step"] == 1 and loaded.path.name == "step_00000001.pt"
    assert torch.equal(loaded.payload["w"], torch.full((1000,), 1.0))
    # Reported once: step_2's name is the same file and is not read twice.
    assert [(s.path.name, "truncated" in s.reason) for s in loaded.skipped] == [(LAST, True)]


def test_a_corrupt_byte_is_detected_by_its_checksum(tmp_path: Path):
    checkpoints = Checkpoints(tmp_path, keep=3)
    for step in (1, 2):
        checkpoints.save(payload(step, size=1000), step, finite=True)
    newest = checkpoints.path_for(2)
    data = bytearray(newest.read_bytes())
    # Flip one byte inside the tensor's data (a run of the float 2.0's bytes).
    at = data.index(torch.full((8,), 2.0).numpy().tobytes()) + 100
    data[at] ^= 0xFF
    newest.unlink()  # a new file: last.pt keeps its own (whole) copy of step 2
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt: the checksum"):
        checkpoint.load(newest)
    # torch itself would have loaded it without a word:
    assert torch.load(newest, weights_only=True)["step"] == 2
    assert checkpoints.load_latest().payload["step"] == 2  # last.pt is still whole
    (tmp_path / LAST).unlink()
    loaded = checkpoints.load_latest()
    assert loaded.payload["step"] == 1
    assert [s.path.name for s in loaded.skipped] == ["step_00000002.pt"]


def test_a_numbered_file_newer_than_last_pt_is_preferred(tmp_path: Path):
    # A process killed between writing step_3 and switching last.pt leaves this.
    checkpoints = Checkpoints(tmp_path, keep=3)
    checkpoints.save(payload(2), 2, finite=True)
    checkpoint.save_atomic({**payload(3), "finite": True}, checkpoints.path_for(3))
    assert checkpoints.load_latest().payload["step"] == 3
    assert checkpoints.load_latest(good=True).payload["step"] == 3


def test_foreign_and_missing_files_are_reported(tmp_path: Path):
    checkpoints = Checkpoints(tmp_path / "none", keep=3)
    with pytest.raises(CheckpointError, match="it has none"):
        checkpoints.load_latest()
    checkpoints = Checkpoints(tmp_path, keep=3)
    checkpoint.save_atomic({"w": torch.zeros(2)}, tmp_path / LAST)  # no step
    (tmp_path / "step_00000004.pt").write_bytes(b"")
    checkpoint.save_atomic({"step": 9}, tmp_path / "step_00000005.pt")  # wrong step
    with pytest.raises(CheckpointError) as caught:
        checkpoints.load_latest()
    message = str(caught.value)
    assert "last.pt has no step" in message
    assert "step_00000005.pt holds step 9, not 5" in message
    assert "step_00000004.pt is truncated" in message


def test_a_file_whose_pickle_is_refused_is_skipped_with_its_reason(tmp_path: Path):
    # weights_only refuses a pickled module (it would run code): a reason, not a crash.
    checkpoints = Checkpoints(tmp_path, keep=3)
    checkpoints.save(payload(1), 1, finite=True)
    torch.save(torch.nn.Linear(2, 2), checkpoints.path_for(2))  # newer than last.pt
    with pytest.raises(CheckpointError, match=r"step_00000002\.pt is refused: .*Linear"):
        checkpoint.load(checkpoints.path_for(2))
    for good in (False, True):
        loaded = checkpoints.load_latest(good=good)
        assert loaded.payload["step"] == 1
        assert [(s.path.name, "refused" in s.reason) for s in loaded.skipped] == [
            ("step_00000002.pt", True)]
    with pytest.raises(CheckpointError, match=r"step 2 .*refused"):
        checkpoints.load_at(2)
    (tmp_path / LAST).unlink()  # a new file under the name: the numbered one is untouched
    torch.save(torch.nn.Linear(2, 2), tmp_path / LAST)
    assert checkpoints.load_at(1).payload["step"] == 1


def test_a_foreign_zip_that_does_not_decompress_is_skipped(tmp_path: Path):
    import zipfile

    checkpoints = Checkpoints(tmp_path, keep=3)
    checkpoints.save(payload(1), 1, finite=True)
    foreign = checkpoints.path_for(2)
    with zipfile.ZipFile(foreign, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data", random.Random(0).randbytes(100) + b"x" * 5000)
    data = bytearray(foreign.read_bytes())
    for at in range(40, 140):  # inside the deflate stream: zlib, not zipfile, objects
        data[at] ^= 0x55
    foreign.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"step_00000002\.pt is unreadable"):
        checkpoint.load(foreign)
    loaded = checkpoints.load_latest()
    assert loaded.payload["step"] == 1
    assert [s.path.name for s in loaded.skipped] == ["step_00000002.pt"]


def _full_disk_after(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """Every file checkpoint opens for writing fails with ENOSPC after ``limit`` bytes."""
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data) -> int:
            if self.written + len(data) > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))


def test_disk_full_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch):
    checkpoints = Checkpoints(tmp_path, keep=3)
    checkpoints.save(payload(1, size=1000), 1, finite=True)
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir())
    _full_disk_after(monkeypatch, limit=2000)
    with pytest.raises(OSError) as caught:
        checkpoints.save(payload(2, size=1000), 2, finite=True)
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir()) == before  # no temp
    assert saved_steps(checkpoints, LAST, LAST_GOOD) == [1, 1]


KILL_WRITER = textwrap.dedent("""
    import sys
    import torch
    from trainlab.engine.checkpoint import Checkpoints

    checkpoints = Checkpoints(sys.argv[1], keep=2)
    weights = torch.arange(3_000_000, dtype=torch.float32)  # 12 MB: each save takes a while
    step = 0
    while True:
        step += 1
        checkpoints.save({"step": step, "w": weights + step}, step, finite=step % 3 != 0)
        if step == 1:
            print("saved", flush=True)
""")


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_never_leaves_a_torn_file(tmp_path: Path):
    rng = random.Random(6)
    caught_mid_write = 0
    for attempt in range(4):
        directory = tmp_path / f"run{attempt}"
        child = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(directory)],
                                 cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "saved\n"
            time.sleep(rng.uniform(0.05, 0.5))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        names = [p.name for p in directory.iterdir()]
        caught_mid_write += any(name.endswith(".tmp") for name in names)
        for name in names:
            if name.startswith("."):
                continue  # temporaries: never a final name, removed at the next save
            loaded = checkpoint.load(directory / name)  # raises for a torn file
            step, w = loaded["step"], loaded["w"]
            assert (w[0].item(), w[-1].item()) == (step, 2_999_999 + step)  # its own data
            assert loaded["finite"] is (step % 3 != 0)
        checkpoints = Checkpoints(directory, keep=2)
        newest = checkpoints.load_latest()
        assert newest.skipped == ()
        assert checkpoints.load_latest(good=True).payload["finite"] is True
        # The next writer clears what the killed one left behind.
        checkpoints.save({"step": 10_000}, 10_000, finite=True)
        assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]
    assert caught_mid_write  # the kills did land in writes, not only between them
