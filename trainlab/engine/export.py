"""A run's store written out for other tools: CSV tables, the JSON-lines event log, or
TensorBoard event files (``trainlab export RUN --format csv|jsonl|tensorboard``).

- csv: ``train.csv`` (step, epoch, loss, lr: one row per step), ``eval.csv``,
  ``changes.csv`` (the live changes), ``alerts.csv`` and ``layers.csv`` (per-layer
  statistics of the tracked steps). Numbers are written exactly (Python's shortest
  round-trip form; ``nan``, ``inf`` and ``-inf`` where the run had them, which pandas
  and numpy read back); an empty cell is "no value" (accuracy of a regression).
- jsonl: ``events.jsonl``, every recorded event as one line of the protocol's strict
  JSON (``trainlab.core.protocol.to_json``, the ``trainlab run --json`` stream's format).
- tensorboard: event files ``tensorboard --logdir`` reads (the optional extra
  ``trainlab[tensorboard]``): scalars ``train/loss``, ``train/lr``, ``val/loss``,
  ``val/accuracy``, ``val/train_loss``, ``val/best_loss``, one ``<figure>/<layer>``
  scalar per per-layer figure (``grad_norm/net.0``...), histograms
  ``hist_<weight|grad|act>/<layer>``, and the config, live changes and alerts as text.

Every file is replaced whole: CSV and JSONL files are written to a temporary name and
renamed, and a TensorBoard export first removes the event files of a previous one in
the same directory (TensorBoard would show both).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from trainlab.core import config as config_mod
from trainlab.core import protocol, rundir
from trainlab.core.rundir import CONFIG_FILE
from trainlab.core.store import RunStore

FORMATS = ("csv", "jsonl", "tensorboard")
"""What ``export_run`` writes."""
EXPORT_DIR = "export"
"""``trainlab export`` without ``--out`` writes into ``<run dir>/export/<format>/``."""
TENSORBOARD_EXTRA = "pip install 'trainlab[tensorboard]'"
"""How to get the tensorboard format's one optional dependency."""
TB_EVENTS_PREFIX = "events.out.tfevents."
"""The name every TensorBoard event file starts with (a re-export removes these only)."""

TRAIN_COLUMNS = ("step", "epoch", "loss", "lr")
EVAL_COLUMNS = ("step", "epoch", "train_loss", "val_loss", "val_accuracy", "best_val_loss")
CHANGE_COLUMNS = ("step", "key", "old", "new", "note")
ALERT_COLUMNS = ("step", "kind", "severity", "layers", "message")
LAYER_TEXT_FIELDS = ("name", "kind", "activation")
LAYER_NUMBER_FIELDS = tuple(f.name for f in dataclasses.fields(protocol.LayerStats)
                            if f.name not in LAYER_TEXT_FIELDS)
"""The per-layer figures, in the order LayerStats declares them (layers.csv columns and
TensorBoard scalar groups)."""


class ExportError(ValueError):
    """An export that cannot be done: an unknown format or a missing optional extra."""


def default_out_dir(run_dir: str | Path, fmt: str) -> Path:
    """Where ``trainlab export`` writes when ``--out`` is not given."""
    return Path(run_dir) / EXPORT_DIR / fmt


def export_run(run_dir: str | Path, fmt: str, out_dir: str | Path) -> list[Path]:
    """Write the run in ``run_dir`` as ``fmt`` into ``out_dir`` (created); returns the
    files written.

    Raises:
        ExportError: ``fmt`` is not one of ``FORMATS``, or tensorboard is not installed.
        trainlab.core.rundir.RunNotFound: ``run_dir`` has no store.
        OSError: a file cannot be written.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "tensorboard":
        require_tensorboard()
    out_dir = Path(out_dir)
    with RunStore.open(run_dir) as runs:
        # Inside the run directory, as private as the run (mkstemp's files are 0600;
        # TensorBoard's writer leaves its own 0644). Elsewhere, where the user said.
        inside = out_dir.resolve().is_relative_to(Path(run_dir).resolve())
        if inside:
            rundir.private_dirs(out_dir)
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            files = _export_csv(runs, out_dir)
        elif fmt == "jsonl":
            files = [_write_text(out_dir / "events.jsonl",
                                 "".join(protocol.to_json(event) + "\n"
                                         for _, event in runs.events()))]
        else:
            files = _export_tensorboard(runs, out_dir)
    if inside:
        rundir.make_private(out_dir)
    return files


def require_tensorboard() -> None:
    """Raise ExportError naming the extra when TensorBoard is not installed."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ExportError("the tensorboard format needs TensorBoard, an optional extra: "
                          f"{TENSORBOARD_EXTRA} (or pip install tensorboard)")


# --- csv ------------------------------------------------------------------------------


def _cell(value: Any) -> Any:
    """A CSV cell: None empty, floats in their exact shortest form (nan, inf), config
    values the way ``--set`` writes them."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bool | int | str):
        return value
    try:
        return config_mod.format_setting(value)
    except TypeError:
        return repr(value)


def _csv_text(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_cell(v) for v in row] for row in rows)
    return buffer.getvalue()


def _export_csv(runs: RunStore, out_dir: Path) -> list[Path]:
    curve = runs.train_curve()
    tables: dict[str, tuple[Sequence[str], Iterable[Sequence[Any]]]] = {
        "train.csv": (TRAIN_COLUMNS, zip(curve.steps, curve.epochs, curve.losses, curve.lrs,
                                         strict=True)),
        "eval.csv": (EVAL_COLUMNS, [(e.step, e.epoch, e.train_loss, e.val_loss,
                                     e.val_accuracy, e.best_val_loss) for e in runs.evals()]),
        "changes.csv": (CHANGE_COLUMNS, [(c.step, c.key, c.old, c.new, c.note)
                                         for c in runs.changes()]),
        "alerts.csv": (ALERT_COLUMNS, [(a.step, a.kind, a.severity, " ".join(a.layers),
                                        a.message) for a in runs.alerts()]),
        "layers.csv": (("step", "layer", "kind", "activation", *LAYER_NUMBER_FIELDS),
                       [(step, s.name, s.kind, s.activation,
                         *(getattr(s, name) for name in LAYER_NUMBER_FIELDS))
                        for step, s in runs.layer_stats()]),
    }
    return [_write_text(out_dir / name, _csv_text(columns, rows))
            for name, (columns, rows) in tables.items()]


def _write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` whole or not at all (temporary file, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --- tensorboard ------------------------------------------------------------------------


def _histogram_buckets(h: protocol.Histogram) -> tuple[list[float], list[float]] | None:
    """TensorBoard's bucket limits (right edges) and counts of one histogram; None when
    there is nothing to draw (no samples, or non-finite bounds)."""
    total = sum(h.counts)
    if total == 0 or not (math.isfinite(h.lo) and math.isfinite(h.hi)):
        return None
    if h.hi <= h.lo:  # every value the same (a zero-initialised layer): one bucket
        return [h.lo], [float(total)]
    width = (h.hi - h.lo) / len(h.counts)
    return ([h.lo + width * (i + 1) for i in range(len(h.counts))],
            [float(c) for c in h.counts])


def _moments(h: protocol.Histogram) -> tuple[float, float]:
    """Sum and sum of squares from the bin centres (TensorBoard shows the mean from them)."""
    width = (h.hi - h.lo) / len(h.counts) if h.hi > h.lo else 0.0
    centres = [h.lo + width * (i + 0.5) for i in range(len(h.counts))]
    return (sum(c * n for c, n in zip(centres, h.counts, strict=True)),
            sum(c * c * n for c, n in zip(centres, h.counts, strict=True)))


def _markdown_code(text: str) -> str:
    """Text TensorBoard's markdown shows as it is (an indented code block)."""
    return "\n".join("    " + line for line in text.splitlines())


def _export_tensorboard(runs: RunStore, out_dir: Path) -> list[Path]:
    from torch.utils.tensorboard import SummaryWriter  # torch and tensorboard: only here

    for old in out_dir.glob(TB_EVENTS_PREFIX + "*"):
        old.unlink()
    curve = runs.train_curve()
    wall = dict(zip(curve.steps, curve.times, strict=True))
    writer = SummaryWriter(log_dir=os.fspath(out_dir))
    try:
        config_path = runs.run_dir / CONFIG_FILE
        if config_path.is_file():
            writer.add_text("config", _markdown_code(config_path.read_text(encoding="utf-8")),
                            0)
        for step, loss, lr, t in zip(curve.steps, curve.losses, curve.lrs, curve.times,
                                     strict=True):
            writer.add_scalar("train/loss", loss, step, walltime=t)
            writer.add_scalar("train/lr", lr, step, walltime=t)
        for e in runs.evals():
            when = wall.get(e.step)
            writer.add_scalar("val/loss", e.val_loss, e.step, walltime=when)
            writer.add_scalar("val/train_loss", e.train_loss, e.step, walltime=when)
            writer.add_scalar("val/best_loss", e.best_val_loss, e.step, walltime=when)
            if e.val_accuracy is not None:
                writer.add_scalar("val/accuracy", e.val_accuracy, e.step, walltime=when)
        tracked = set()
        for step, s in runs.layer_stats():
            tracked.add(step)
            for name in LAYER_NUMBER_FIELDS:
                value = getattr(s, name)
                if value is not None:
                    writer.add_scalar(f"{name}/{s.name}", value, step, walltime=wall.get(step))
        snapshots: dict[int, protocol.LayerStatsSnapshot] = {}
        for _, snapshot in runs.events(types=("LayerStatsSnapshot",)):
            snapshots[snapshot.step] = snapshot  # a resumed run's replace the lost ones
        for step, snapshot in sorted(snapshots.items()):
            if step not in tracked:
                continue  # recorded by a segment a resume replaced
            for h in snapshot.histograms:
                buckets = _histogram_buckets(h)
                if buckets is None:
                    continue
                total, squares = _moments(h)
                writer.add_histogram_raw(
                    f"hist_{h.quantity}/{h.layer}", min=h.lo, max=h.hi, num=sum(h.counts),
                    sum=total, sum_squares=squares, bucket_limits=buckets[0],
                    bucket_counts=buckets[1], global_step=step, walltime=wall.get(step))
        for c in runs.changes():
            note = f" ({c.note})" if c.note else ""
            writer.add_text("changes", f"`{c.key}`: {_cell(c.old)} → {_cell(c.new)}{note}",
                            c.step)
        for a in runs.alerts():
            where = f" [{', '.join(a.layers)}]" if a.layers else ""
            writer.add_text("alerts", f"**{a.severity}** {a.kind}{where}: {a.message}", a.step)
    finally:
        writer.close()
    return sorted(out_dir.glob(TB_EVENTS_PREFIX + "*"))
