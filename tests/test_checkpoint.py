"""Atomic checkpoint writes: a failed write leaves the previous file intact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import checkpoint


def test_round_trip_with_weights_only(tmp_path: Path):
    payload = {"step": 3, "w": torch.arange(4.0), "nested": {"lr": 0.1, "names": ["a"]}}
    path = checkpoint.save_atomic(payload, tmp_path / "sub" / "c.pt")
    loaded = checkpoint.load(path)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], payload["w"])
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
