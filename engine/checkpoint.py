"""Checkpoint files: written atomically, loadable with ``torch.load(weights_only=True)``.

Atomic means a reader (or a crash) never sees half a file: the checkpoint is written
to a temporary file in the same directory, flushed to disk, then renamed over the
target, which POSIX makes atomic. If the write fails (disk full, permissions) the
previous file at that path is untouched and the temporary file is removed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` with torch.save to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            try:
                torch.save(payload, tmp)
            except RuntimeError as exc:  # torch's zip writer reports a failed write so
                raise OSError(f"writing {path.name} failed: {exc}") from exc
            tmp.flush()
            os.fsync(tmp.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_atomic`` (tensors and plain data only)."""
    return torch.load(path, map_location=map_location, weights_only=True)
