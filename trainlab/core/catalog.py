"""The runs under a root: creating one (its directory and store), finding one by its id
or a prefix or suffix of it, summarizing one, listing them all. This module imports no
torch: the app and ``trainlab runs`` use it."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

from trainlab.core import config as config_mod
from trainlab.core.config import Config
from trainlab.core.engine_lock import engine_alive
from trainlab.core.run_status import RunSummary
from trainlab.core.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DB_FILE,
    RUN_ID_RANDOM_BYTES,
    RUN_ID_TIME_FORMAT,
    NotYours,
    RunNotFound,
    good_checkpoint_step,
    has_checkpoint,
    is_file,
    is_run_dir,
    not_yours,
    private_dir,
    private_dirs,
    private_file,
    run_dirs,
)
from trainlab.core.store import RunStore, StoreError


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

KNOWN_RUNS_LISTED = 5
"""``RunNotFound`` lists at most this many of the runs that exist."""


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
    resumable = not alive and has_checkpoint(run_dir / CHECKPOINT_DIR)
    return RunSummary(
        id=run_dir.name, path=run_dir, status="running" if alive else "crashed", step=0,
        epoch=0, best_val_loss=None, val_accuracy=None, created_at=created,
        updated_at=created, parent="", parent_step=None, label="",
        reason=f"{DB_FILE} unreadable: {why}", resumable=resumable,
        checkpoint_step=good_checkpoint_step(run_dir / CHECKPOINT_DIR) if resumable else None)


def _foreign(run_dir: Path, why: str) -> RunSummary:
    """A listed run of another user: shown as theirs, its store not read (a private run
    cannot be, and it is not this user's business)."""
    created = run_dir.stat().st_mtime
    return RunSummary(
        id=run_dir.name, path=run_dir, status="not yours", step=0, epoch=0,
        best_val_loss=None, val_accuracy=None, created_at=created, updated_at=created,
        parent="", parent_step=None, label="", reason=why)


def list_runs(root: str | Path) -> list[RunSummary]:
    """Every run under ``root``, newest first ([] when ``root`` does not exist). A run
    whose store cannot be read is listed with the reason; another user's run as "not
    yours" (``not_yours``), its store not read."""
    summaries = []
    for run_dir in run_dirs(Path(root)):
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
    """The run directory ``ref`` names: a run id, a unique prefix or suffix of one (so
    every shortened form the app and the CLI show, e.g. ``212533-ab12`` without the
    date, and a prefix of that, ``212533``), or a path to a run directory (or its
    run.db); None names the newest run under ``root``.

    Raises:
        RunNotFound: nothing matches, or a prefix or suffix matches several runs; the
            message names ``ref`` and the matching runs, or the runs that exist.
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
        if as_path.name == DB_FILE and is_file(as_path):
            return as_path.parent
        if is_file(as_path / DB_FILE) or (is_run_dir(as_path) and not_yours(as_path)):
            return as_path
        if os.sep in ref or ref in (".", ".."):
            raise RunNotFound(f"{ref} is not a run directory: it has no {DB_FILE}")
    runs = {p.name: p for p in run_dirs(root)}
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
    # A prefix (``20261201-2125``) or a suffix: the compare screen shows ids without
    # their shared date (``212533-ab12``, ``short_names``), and the random digits alone
    # name a run too; a prefix of that shorter id also (``212533``). A ref that names
    # several runs names none.
    matches = sorted(name for name in runs if name.startswith(ref) or name.endswith(ref)
                     or name.partition("-")[2].startswith(ref))
    if len(matches) == 1:
        return runs[matches[0]]
    if matches:
        raise RunNotFound(f"'{ref}' matches {len(matches)} runs in {root}: "
                          f"{_listed(matches)}; give more of the id")
    run_ref, at, step = ref.rpartition("@")
    if at and run_ref and step.isdigit():  # the parent column's ID@STEP
        raise RunNotFound(f"'{ref}' is a run and a step: name the run ({run_ref}); "
                          f"fork {run_ref} --from {step} starts a run from that step")
    raise RunNotFound(f"no run '{ref}' in {root}; runs there: "
                      f"{_listed(sorted(runs, reverse=True))}")


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:KNOWN_RUNS_LISTED])
    more = len(names) - KNOWN_RUNS_LISTED
    return f"{shown} and {more} more" if more > 0 else shown

