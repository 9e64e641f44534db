"""Exports of a run's store: CSV and JSON lines checked value by value against the events
recorded, TensorBoard event files read back by TensorBoard itself."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import of_type, run_loop, tiny_config

from trainlab.cli.commands import main
from trainlab.core import catalog, protocol, store
from trainlab.core.config import Config, format_setting
from trainlab.engine import export


def number(cell: str) -> float | None:
    """A CSV number cell as written (empty: none)."""
    return None if cell == "" else float(cell)


def same(a: float | None, b: float | None) -> bool:
    """Equal, NaN equal to NaN."""
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A tiny real run, recorded, plus a few synthetic events with non-finite numbers:
    (run dir, every event in the store in order)."""
    root = tmp_path_factory.mktemp("runs")
    config = tiny_config(stats__every=5, stats__hist_every=5, run__eval_every=5)
    run_dir = catalog.new_run(root, config)
    events = run_loop(config, [protocol.SetHyper("optim.lr", 0.01, "faster"),
                               protocol.SetHyper("data.augment", ["noise"], "")])
    odd = [protocol.MetricsBatch((21, 22, 23), (math.nan, math.inf, -math.inf),
                                 (0.01, 0.01, math.nan), 5, 1.0, 1.0),
           protocol.EvalDone(23, 5, math.nan, None, math.inf, 0.3)]
    events = events + odd
    with store.RunStore.open(run_dir, write=True) as runs:
        for event in events:
            runs.record(event)
    return run_dir, events


def test_csv_train_eval_and_changes_hold_the_recorded_values(recorded, tmp_path):
    run_dir, events = recorded
    files = export.export_run(run_dir, "csv", tmp_path)
    assert [p.name for p in files] == ["train.csv", "eval.csv", "changes.csv", "alerts.csv",
                                       "layers.csv"]

    header, rows = read_csv(tmp_path / "train.csv")
    assert header == ["step", "epoch", "loss", "lr"]
    expected = [(step, epoch, loss, lr) for b in of_type(events, "MetricsBatch")
                for step, epoch, loss, lr in zip(b.steps, b.step_epochs(), b.losses, b.lrs,
                                                 strict=True)]
    assert len(rows) == len(expected) == 23
    for row, (step, epoch, loss, lr) in zip(rows, expected, strict=True):
        assert (int(row[0]), int(row[1])) == (step, epoch)
        assert same(number(row[2]), loss) and same(number(row[3]), lr)  # exact, NaN too
    # Each trained step's epoch is the one its batch came from (from 0), also where a
    # metrics batch crossed an epoch's end; the synthetic batch without epochs says 5.
    per_epoch = of_type(events, "RunStarted")[0].steps_per_epoch
    assert [int(r[1]) for r in rows[:20]] == [(step - 1) // per_epoch for step in range(1, 21)]
    assert [int(r[1]) for r in rows[20:]] == [5, 5, 5]
    assert rows[-2][2] == "inf" and rows[-1][2] == "-inf" and rows[-3][2] == "nan"

    header, rows = read_csv(tmp_path / "eval.csv")
    assert header == list(export.EVAL_COLUMNS)
    evals = of_type(events, "EvalDone")
    assert len(rows) == len(evals) >= 4
    for row, e in zip(rows, evals, strict=True):
        assert (int(row[0]), int(row[1])) == (e.step, e.epoch)
        for cell, value in zip(row[2:], (e.train_loss, e.val_loss, e.val_accuracy,
                                         e.best_val_loss), strict=True):
            assert same(number(cell), value)
    assert rows[-1][4] == ""  # no accuracy: an empty cell, not nan

    header, rows = read_csv(tmp_path / "changes.csv")
    assert header == ["step", "key", "old", "new", "note"]
    changes = of_type(events, "HyperChanged")
    assert rows == [[str(c.step), c.key, format_setting(c.old), format_setting(c.new), c.note]
                    for c in changes]
    assert rows[0][1:4] == ["optim.lr", "0.001", "0.01"] and rows[1][3] == "noise"

    header, rows = read_csv(tmp_path / "layers.csv")
    snapshots = of_type(events, "LayerStatsSnapshot")
    expected_layers = [(s.step, row) for s in snapshots for row in s.layers]
    assert len(rows) == len(expected_layers) > 0
    for row, (step, stats) in zip(rows, expected_layers, strict=True):
        cells = dict(zip(header, row, strict=True))
        assert int(cells["step"]) == step and cells["layer"] == stats.name
        for name in export.LAYER_NUMBER_FIELDS:
            assert same(number(cells[name]), getattr(stats, name)), name

    header, rows = read_csv(tmp_path / "alerts.csv")
    assert header == list(export.ALERT_COLUMNS)
    assert [r[1] for r in rows] == [a.kind for a in of_type(events, "AlertRaised")]


def test_jsonl_is_every_event_as_strict_json(recorded, tmp_path):
    run_dir, events = recorded
    (path,) = export.export_run(run_dir, "jsonl", tmp_path)
    lines = path.read_text(encoding="utf-8").splitlines()

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not strict JSON")

    for line in lines:
        json.loads(line, parse_constant=refuse)
    assert lines == [protocol.to_json(e) for e in events]
    back = [protocol.from_json(line) for line in lines]
    assert math.isnan(back[-2].losses[0]) and back[-2].losses[1] == math.inf


def test_csv_of_a_run_that_recorded_nothing_has_headers_only(tmp_path):
    run_dir = catalog.new_run(tmp_path / "runs", Config())
    for path in export.export_run(run_dir, "csv", tmp_path / "out"):
        assert len(path.read_text().splitlines()) == 1


def test_an_unknown_format_is_refused(recorded, tmp_path):
    with pytest.raises(export.ExportError, match=r"unknown export format 'xml'.*csv, jsonl"):
        export.export_run(recorded[0], "xml", tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="the tensorboard extra is not installed")
def test_tensorboard_reads_back_the_exported_scalars_and_histograms(recorded, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, events = recorded
    files = export.export_run(run_dir, "tensorboard", tmp_path)
    assert len(files) == 1 and files[0].name.startswith(export.TB_EVENTS_PREFIX)
    reader = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0,
                                                            "tensors": 0})
    reader.Reload()

    def scalars(tag: str) -> list[tuple[int, float]]:
        return [(s.step, s.value) for s in reader.Scalars(tag)]

    def close(got: list[tuple[int, float]], want: list[tuple[int, float | None]]) -> None:
        # TensorBoard keeps float32: equal to 1e-6 relative, NaN and inf as they were.
        assert [s for s, _ in got] == [s for s, _ in want]
        for (_, a), (_, b) in zip(got, want, strict=True):
            assert b is not None
            assert same(a, b) or a == pytest.approx(b, rel=1e-6)

    batches = of_type(events, "MetricsBatch")
    close(scalars("train/loss"), [(s, v) for b in batches
                                  for s, v in zip(b.steps, b.losses, strict=True)])
    close(scalars("train/lr"), [(s, v) for b in batches
                                for s, v in zip(b.steps, b.lrs, strict=True)])
    evals = of_type(events, "EvalDone")
    close(scalars("val/loss"), [(e.step, e.val_loss) for e in evals])
    close(scalars("val/accuracy"), [(e.step, e.val_accuracy) for e in evals
                                    if e.val_accuracy is not None])
    snapshots = of_type(events, "LayerStatsSnapshot")
    first = snapshots[0].layers[0].name
    close(scalars(f"grad_norm/{first}"),
          [(s.step, row.grad_norm) for s in snapshots for row in s.layers if row.name == first])

    histograms = [(s.step, h) for s in snapshots for h in s.histograms if sum(h.counts)]
    assert histograms  # the run took some
    step, h = histograms[-1]
    read = reader.Histograms(f"hist_{h.quantity}/{h.layer}")
    last = next(r for r in read if r.step == step).histogram_value
    assert last.bucket == [float(c) for c in h.counts]
    assert last.min == pytest.approx(h.lo) and last.max == pytest.approx(h.hi)
    assert last.num == sum(h.counts)
    assert "config" in " ".join(reader.Tags()["tensors"])

    # Exported again into the same place: replaced, not doubled.
    export.export_run(run_dir, "tensorboard", tmp_path)
    assert len(list(tmp_path.glob(export.TB_EVENTS_PREFIX + "*"))) == 1


def test_tensorboard_missing_names_the_extra(recorded, tmp_path, monkeypatch):
    real = importlib.util.find_spec

    def without_tensorboard(name: str, *args: Any) -> Any:
        return None if name == "tensorboard" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_tensorboard)
    with pytest.raises(export.ExportError, match=r"trainlab\[tensorboard\]"):
        export.export_run(recorded[0], "tensorboard", tmp_path)
    assert main(["export", str(recorded[0]), "--format", "tensorboard", "--out",
                 str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())  # nothing half-written


# --- trainlab export ----------------------------------------------------------------------


def test_cli_export_writes_into_the_run_by_default_and_lists_the_files(recorded, capsys):
    run_dir, _ = recorded
    assert main(["export", run_dir.name, "--format", "csv", "--dir",
                 str(run_dir.parent)]) == 0
    out = capsys.readouterr().out.split()
    target = export.default_out_dir(run_dir, "csv")
    assert target == run_dir / "export" / "csv"
    assert out == [str(target / name) for name in ("train.csv", "eval.csv", "changes.csv",
                                                    "alerts.csv", "layers.csv")]
    assert all(Path(p).is_file() for p in out)


def test_cli_export_of_the_newest_run_into_out(recorded, tmp_path, capsys):
    run_dir, events = recorded
    assert main(["export", "--format", "jsonl", "--out", str(tmp_path), "--dir",
                 str(run_dir.parent)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "events.jsonl")
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == len(events)


def test_cli_export_of_a_missing_run_or_format_exits_2(recorded, tmp_path, capsys):
    run_dir, _ = recorded
    assert main(["export", "nope", "--format", "csv", "--dir", str(run_dir.parent)]) == 2
    err = capsys.readouterr().err
    assert "no run 'nope'" in err and run_dir.name in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:
        main(["export", run_dir.name, "--format", "xml", "--dir", str(run_dir.parent)])
    assert exit_.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
    assert main(["export", "--format", "csv", "--dir", str(tmp_path / "none")]) == 2
    assert "no runs" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed")
def test_an_export_into_the_run_is_private_and_one_elsewhere_is_the_users(recorded, tmp_path):
    """export_run itself (not only the CLI): inside the run directory every directory is
    0700 and every file 0600, TensorBoard's event files included (its writer leaves
    0644); an --out elsewhere is left as the user's umask makes it."""
    import os
    import stat

    run_dir, _ = recorded
    old = os.umask(0o022)
    try:
        inside = run_dir / "export" / "tb-private"
        export.export_run(run_dir, "tensorboard", inside)
        elsewhere = tmp_path / "shared-tb"
        export.export_run(run_dir, "tensorboard", elsewhere)
    finally:
        os.umask(old)
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [inside, *inside.rglob("*")]}
    assert modes and all(m == (0o700 if p.is_dir() else 0o600) for p, m in modes.items())
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in elsewhere.iterdir()} == {0o644}
