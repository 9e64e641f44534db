"""The ``trainlab`` command line: headless runs and config files.

Parsing and config handling import no torch; the loop (and torch with it) is
imported only when a run starts, so ``trainlab config`` and ``--help`` answer fast.

Exit codes: ``trainlab.core.exits``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from trainlab.cli.headless import (
    event_printer,
    report_config_error,
    train_headless,
)
from trainlab.core import config as config_mod
from trainlab.core import protocol
from trainlab.core.config import Config, ConfigError
from trainlab.core.exits import (
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
)
from trainlab.core.labs import apply_preset
from trainlab.core.text import format_age, format_number, format_percent

DETAIL_WIDTH = 100
"""``trainlab doctor``: a check's detail is wrapped to this many columns (the line
length of the code base; wide enough that the numbers stay together)."""
DETAIL_INDENT = " " * 6
"""``trainlab doctor``: details sit under their PASS/WARN/FAIL line, past the status."""


def add_config_args(p: argparse.ArgumentParser) -> None:
    """CONFIG, --preset and --set: how every command that builds a run is told which."""
    p.add_argument("config", nargs="?", metavar="CONFIG.toml",
                   help="run configuration (default: the digits MLP experiment)")
    p.add_argument("--preset", metavar="NAME",
                   help="start from a built-in experiment (see trainlab presets)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.FIELD=VALUE",
                   help="override one config field, e.g. --set optim.lr=3e-3 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="trainlab", description="A terminal lab for training neural networks."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="train a run", description="Train a run.")
    add_config_args(run)
    add_start_args(run)

    probe = sub.add_parser(
        "probe", help="measure every layer of the initialized model on one batch",
        description="Build the model, run one forward/backward on one batch without "
        "updating, and print per-layer statistics: the init health check.")
    add_config_args(probe)
    probe.add_argument("--json", action="store_true",
                       help="print one JSON object with loss and layers")

    doctor = sub.add_parser(
        "doctor", help="pre-flight checklist: find what would stop the run from training",
        description="Build the run and check it before training: loss at init, gradients, "
        "input scaling, labels, output activation, overfitting one batch, batch size and "
        "the learning rate. Writes nothing. Exit codes: 0 no check failed, "
        f"{EXIT_CHECK_FAILED} a check failed (the report is printed either way), "
        f"{EXIT_FAILED} the run could not be built (user code raised: its traceback on "
        f"stderr), {EXIT_BAD_INPUT} bad input.")
    add_config_args(doctor)
    doctor.add_argument("--json", action="store_true",
                        help="print one JSON object: checks and the passed/warned/failed counts")

    lr_find = sub.add_parser(
        "lr-find", help="learning-rate range test: draw loss against lr, suggest an lr",
        description="Train a copy of the initialized model while raising the lr "
        "exponentially, draw the smoothed loss against the lr and suggest the lr where it "
        "falls fastest. Writes nothing. Exit codes: 0 the curve was drawn (with or without "
        f"a suggestion), {EXIT_FAILED} the run could not be built (user code raised: its "
        f"traceback on stderr), {EXIT_BAD_INPUT} bad input.")
    add_config_args(lr_find)
    lr_find.add_argument("--json", action="store_true",
                         help="print the result as one JSON LrFound event (the --json "
                         "stream's): event, step, lrs, losses, suggested_lr, reason")
    lr_find.add_argument("--start", type=float, default=protocol.FindLr.start,
                         help="first learning rate (default %(default)g)")
    lr_find.add_argument("--end", type=float, default=protocol.FindLr.end,
                         help="last learning rate (default %(default)g)")
    lr_find.add_argument("--steps", type=int, default=protocol.FindLr.steps,
                         help="most steps, one batch each; it stops early once the loss "
                         "diverges (default %(default)d)")

    sub.add_parser("presets", help="list the built-in experiments",
                   description="List the built-in experiments (use with --preset NAME).")

    cfg = sub.add_parser("config", help="print a configuration as commented TOML",
                         description="Print the effective configuration as commented TOML.")
    add_config_args(cfg)
    cfg.add_argument("--defaults", action="store_true",
                     help="print the complete default configuration")
    add_run_store_args(sub)
    add_continue_args(sub)
    add_sweep_args(sub)
    return parser


def add_sweep_args(sub: Any) -> None:
    """``trainlab sweep SWEEP.toml``: many runs, their settings searched by Optuna."""
    sweep = sub.add_parser(
        "sweep", help="search settings: many runs, sampled and pruned by Optuna",
        description="Run a sweep: SWEEP.toml is a config file (the base of every trial) "
        "with a [sweep] table (metric, direction, sampler tpe|random|grid|cmaes, pruner "
        "median|hyperband|none, trials, parallel, storage) and a [sweep.space] table of "
        "config fields to search, e.g. \"optim.lr\" = { low = 1e-4, high = 1e-1, log = "
        "true }. Each trial is a run of its own (trainlab attach shows it); a pruned "
        "trial stops at its next step. The study lives in its storage (an SQLite file in "
        "<run.dir>/sweeps/NAME/ unless storage says otherwise): the same command again "
        "goes on with it, and several processes or machines can work on one study. "
        f"Exit codes: 0 a trial completed, {EXIT_FAILED} none did, {EXIT_BAD_INPUT} bad "
        "input, 128 + a signal that interrupted it.")
    sweep.add_argument("sweep_file", metavar="SWEEP.toml", help="the sweep file")
    sweep.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="SECTION.FIELD=VALUE",
                       help="override a field of the base config (every trial's)")
    sweep.add_argument("--headless", action="store_true",
                       help="run in this terminal without the app, a line per trial")
    sweep.add_argument("--json", action="store_true",
                       help="one JSON object per line: each trial's start and end, then the "
                       "totals and the best trial")
    shown = sweep.add_mutually_exclusive_group()
    shown.add_argument("--show", action="store_true",
                       help="print the leaderboard as it stands; train nothing")
    shown.add_argument("--best", metavar="FILE",
                       help="write the best trial's config as TOML to FILE (- prints it); "
                       "train nothing")


def add_runs_dir_arg(p: argparse.ArgumentParser) -> None:
    """--dir: where the commands that read run directories look for them."""
    p.add_argument("--dir", default=Config().run.dir, metavar="DIR",
                   help=f"directory that holds the runs (default: run.dir, "
                   f"{Config().run.dir!r})")


def add_run_args(p: argparse.ArgumentParser, *, default: str = "") -> None:
    """RUN and --dir: how every command that reads one run directory is told which.
    ``default`` says which run it takes without one (empty: RUN is required)."""
    p.add_argument("run", nargs="?" if default else None, metavar="RUN",
                   help="run id, a unique prefix or suffix of one (the app's short ids), "
                   "or a run directory"
                   + (f" (default: {default})" if default else ""))
    add_runs_dir_arg(p)


def add_start_args(p: argparse.ArgumentParser) -> None:
    """--headless, --json, --detach: how run, resume and fork train without the app."""
    p.add_argument("--headless", action="store_true",
                   help="train in this terminal without the app, printing progress")
    p.add_argument("--json", action="store_true",
                   help="print every event as one JSON line (the scripting interface)")
    p.add_argument("--detach", action="store_true",
                   help="start the engine in the background (its own session; it outlives "
                   "this terminal), print the run's id and return; with --json, one JSON "
                   "object: run_id, run_dir, pid")


def add_continue_args(sub: Any) -> None:
    """``resume`` and ``fork``: a run goes on from one of its checkpoints."""
    how = ("Without --headless, --json or --detach the app opens on it. --headless trains "
           "in this terminal; --detach in the background.")
    resume = sub.add_parser(
        "resume", help="continue a crashed or stopped run from its last good checkpoint",
        description="Continue a run from its newest checkpoint that loads and holds "
        "finite values (truncated or corrupt ones are skipped and named), with the config "
        "saved in it (live changes included): on the CPU the result is bit-identical to a "
        f"run that never stopped. {how}")
    add_run_args(resume)
    fork = sub.add_parser(
        "fork", help="a new run from a checkpoint of a run, with an edited config",
        description="Start a new run from one of RUN's checkpoints (the newest good one, "
        "or --from STEP) with --set edits: the weights and the step count go on, so the two "
        "curves overlay at the fork; the new run records its parent. A cold edit that "
        f"changes a weight's shape cannot fork (that is a new run). {how}")
    add_run_args(fork)
    fork.add_argument("--from", dest="from_step", type=int, metavar="STEP",
                      help="the checkpoint of this step (default: the newest good one)")
    fork.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="SECTION.FIELD=VALUE",
                      help="edit one config field, e.g. --set optim.lr=3e-3 (repeatable)")
    for p in (resume, fork):
        add_start_args(p)


def add_run_store_args(sub: Any) -> None:
    """The subcommands that read run directories: ``runs`` and ``export``."""
    from trainlab.engine.export import EXPORT_DIR, FORMATS

    runs = sub.add_parser(
        "runs", help="list the runs and their status",
        description="List the runs under --dir, newest first: status (running, paused, "
        "finished, stopped, failed, crashed), step, best validation loss, when the run "
        "last recorded an event, and the run it was forked from. A crashed or stopped run "
        "with a checkpoint says how to resume it.")
    runs.add_argument("--json", action="store_true",
                      help="print one JSON array: one object per run, newest first")
    add_runs_dir_arg(runs)

    export = sub.add_parser(
        "export", help="write a run as CSV, JSON lines or TensorBoard event files",
        description="Write a run's history for other tools: csv (train.csv, eval.csv, "
        "changes.csv, alerts.csv, layers.csv), jsonl (events.jsonl: every event as the "
        "--json stream writes it) or tensorboard (event files for tensorboard --logdir; "
        "needs the optional extra trainlab[tensorboard]). Exit codes: 0 written, "
        f"{EXIT_BAD_INPUT} no such run or the format cannot be written, {EXIT_FAILED} a "
        "file could not be written.")
    add_run_args(export, default="the newest run")
    export.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                        help="what to write")
    export.add_argument("--out", metavar="DIR",
                        help=f"directory to write into (default: RUN/{EXPORT_DIR}/FORMAT)")


def load_config(path: str | None, overrides: list[str], preset: str | None = None) -> Config:
    """The config file (or the defaults), then the preset, then ``--set`` overrides."""
    base = config_mod.load(path) if path else Config()
    if preset:
        base = apply_preset(base, preset)
    return config_mod.apply_overrides(base, overrides)


def config_from_args(args: argparse.Namespace) -> Config:
    """The effective config of a subcommand's CONFIG, --preset and --set arguments."""
    return load_config(args.config, args.overrides, args.preset)


def config_or_report(args: argparse.Namespace, err: TextIO) -> Config | None:
    """The effective config, or None after printing why it was refused to ``err`` (the
    caller exits with EXIT_BAD_INPUT)."""
    try:
        return config_from_args(args)
    except ConfigError as exc:
        print(f"trainlab: error: {exc}", file=err)
        return None


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``trainlab run --headless``: train in the foreground; Ctrl-C stops cleanly.

    A lab (``--preset LAB``) trains its runs in turn and compares them
    (``trainlab.cli.lab_runner``).
    """
    if not _without_app(args, "run", err):
        return EXIT_BAD_INPUT
    from trainlab.core import catalog
    from trainlab.core.labs import find_lab  # no torch: labs are data

    if args.preset and (lab := find_lab(args.preset)) is not None:
        if args.detach:
            print(f"trainlab run: --detach starts one run; the lab {lab.name} trains its runs "
                  "in turn: use --headless, or the app", file=err)
            return EXIT_BAD_INPUT
        from trainlab.cli.lab_runner import run_lab

        return run_lab(lab, args.config, args.overrides, as_json=args.json, out=out, err=err)
    show = event_printer(args.json, out, err)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        return report_config_error(exc, show, err, args.json)
    if args.detach:
        try:
            run_dir = catalog.new_run(config.run.dir, config)
        except OSError as exc:
            print(f"trainlab: error: run.dir = {config.run.dir!r}: {exc}", file=err)
            return EXIT_BAD_INPUT
        return start_detached(run_dir, (), args.json, out, err)
    return train_headless(config, show, err).exit_code


def _without_app(args: argparse.Namespace, command: str, err: TextIO) -> bool:
    """Did the command line ask for a way to train without the app? (Without one, the
    app's front end, trainlab.cli.main, opens the app; this is for ``python -m trainlab.cli``.)"""
    if args.headless or args.json or args.detach:
        return True
    print(f"trainlab {command}: add --headless, --json or --detach to train without the app",
          file=err)
    return False


DETACH_WAIT_S = 120.0
"""``--detach``: how long the command waits for the engine to serve its socket (or to
fail) before it returns anyway; a cold torch import and a big dataset take a while."""


def start_detached(run_dir: Path, serve_args: tuple[str, ...], as_json: bool, out: TextIO,
                   err: TextIO) -> int:
    """Spawn the run's engine in the background, wait until it serves (or fails), and say
    how to reach it: exit 0 once it trains; a run that failed to start exits as it would
    in the foreground, its error on stderr."""
    from trainlab.core import rundir
    from trainlab.core.serving import spawn_detached, wait_until_served

    process = spawn_detached(run_dir, *serve_args)
    if not wait_until_served(run_dir, process, DETACH_WAIT_S) and process.poll() is not None:
        # It ended before serving: say why, from its store.
        failure = _stored_failure(run_dir)
        why = failure.message if failure else f"exit status {process.returncode}; see " \
            f"{run_dir / rundir.LOG_FILE}"
        print(f"trainlab: error: run {run_dir.name} did not start: {why}", file=err)
        return EXIT_BAD_INPUT if failure is not None and failure.kind == "config" \
            else EXIT_FAILED
    if as_json:
        print(json.dumps({"run_id": run_dir.name, "run_dir": os.fspath(run_dir),
                          "pid": process.pid}), file=out)
    else:
        attach = f"trainlab attach {run_dir.name}"
        print(f"run {run_dir.name} trains in the background (pid {process.pid}, its output "
              f"in {run_dir / rundir.LOG_FILE})\n  {attach}  watch and steer it\n  "
              f"{'trainlab runs':<{len(attach)}}  list the runs", file=out)
    return EXIT_OK


def _stored_failure(run_dir: Path) -> protocol.EngineFailed | None:
    """The first EngineFailed in a run's store (None: none, or the store is unreadable)."""
    from trainlab.core import store
    try:
        with store.RunStore.open(run_dir, write=False) as runs:
            return next((event for _, event in runs.events(types=("EngineFailed",))), None)
    except (store.StoreError, OSError):
        return None


def _continued_run(args: argparse.Namespace, err: TextIO) -> Path | None:
    """RUN of resume/fork as a run directory; None (said on ``err``) when there is none."""
    from trainlab.core import catalog, rundir
    try:
        return catalog.find_run(args.dir, args.run)
    except rundir.RunNotFound as exc:
        print(f"trainlab: error: {exc}", file=err)
        return None


def cmd_resume(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``trainlab resume RUN``: go on from the run's newest good checkpoint."""
    if not _without_app(args, "resume", err) or (run_dir := _continued_run(args, err)) is None:
        return EXIT_BAD_INPUT
    from trainlab.core import engine_lock
    from trainlab.engine.checkpoint import CheckpointError
    from trainlab.engine.resume import resume_notes, resume_plan

    if engine_lock.engine_alive(run_dir):
        print(f"trainlab: error: run {run_dir.name} is running: trainlab attach "
              f"{run_dir.name} shows it", file=err)
        return EXIT_BAD_INPUT
    try:
        plan = resume_plan(run_dir)
    except (CheckpointError, ConfigError) as exc:
        print(f"trainlab: error: cannot resume {run_dir.name}: {exc}", file=err)
        return EXIT_BAD_INPUT
    if args.detach:
        return start_detached(run_dir, ("--resume",), args.json, out, err)
    show = event_printer(args.json, out, err)
    return train_headless(plan.config, show, err, run_dir=run_dir,
                          start_from=plan.checkpoint.payload,
                          notes=resume_notes(plan.checkpoint)).exit_code


def cmd_fork(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``trainlab fork RUN [--from STEP] [--set ...]``: a new run from a checkpoint."""
    if not _without_app(args, "fork", err) or (run_dir := _continued_run(args, err)) is None:
        return EXIT_BAD_INPUT
    from trainlab.core import catalog, rundir
    from trainlab.engine.checkpoint import CheckpointError, save_atomic
    from trainlab.engine.resume import fork_note, fork_plan

    try:
        plan = fork_plan(run_dir, args.from_step, args.overrides)
    except (CheckpointError, ConfigError) as exc:
        print(f"trainlab: error: cannot fork {run_dir.name}: {exc}", file=err)
        return EXIT_BAD_INPUT
    except Exception as exc:  # building the new model or its data raised (user code)
        return _report_build_failure(exc, err)
    try:
        child = catalog.new_run(run_dir.parent, plan.config, parent=plan.parent,
                              parent_step=plan.parent_step)
        # The fork's own copy: the parent's checkpoints rotate, its engine may start late.
        save_atomic(plan.payload, child / rundir.FORK_START_FILE)
    except OSError as exc:
        print(f"trainlab: error: cannot write the fork of {run_dir.name} into "
              f"{run_dir.parent}: {exc}", file=err)
        return EXIT_BAD_INPUT
    if args.detach:
        return start_detached(child, ("--fork",), args.json, out, err)
    show = event_printer(args.json, out, err)
    return train_headless(plan.config, show, err, run_dir=child, start_from=plan.payload,
                          notes=(fork_note(plan.parent, plan.parent_step),)).exit_code


def cmd_config(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``trainlab config``: the defaults, or a file with overrides, as commented TOML."""
    if args.defaults and (args.config or args.overrides or args.preset):
        print("trainlab config: --defaults takes no CONFIG, --preset or --set", file=err)
        return EXIT_BAD_INPUT
    config = Config() if args.defaults else config_or_report(args, err)
    if config is None:
        return EXIT_BAD_INPUT
    out.write(config_mod.to_toml(config))
    return EXIT_OK


def format_layer_table(snapshot: protocol.LayerStatsSnapshot) -> str:
    """Per-layer statistics as an aligned text table (the probe's human output)."""
    header = ("layer", "act", "mean", "std", "sat%", "dead%", "zero%", "grad_out_std",
              "w_norm", "grad_norm")
    rows = [header]
    for r in snapshot.layers:
        rows.append((
            r.name, r.activation or "-",
            format_number(r.act_mean, ".3g"), format_number(r.act_std, ".3g"),
            format_percent(r.saturated_frac, ""), format_percent(r.dead_frac, ""),
            format_percent(r.zero_frac, ""), format_number(r.grad_out_std, ".3g"),
            format_number(r.weight_norm, ".3g"), format_number(r.grad_norm, ".3g"),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    return "\n".join(lines)


def cmd_probe(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``trainlab probe``: one measured forward/backward of the initialized model."""
    config = config_or_report(args, err)
    if config is None:
        return EXIT_BAD_INPUT
    from trainlab.engine.probe import probe

    try:
        result = probe(config)
    except Exception as exc:  # bad input or user code: the same report as a run's
        return _report_build_failure(exc, err)
    snapshot = result.snapshot
    if args.json:
        body = protocol.encode(snapshot)
        payload = {"loss": protocol.encode(result.loss), "batch_size": result.batch_size,
                   "sample_rows": snapshot.sample_rows, "layers": body["layers"],
                   "histograms": body["histograms"]}
        print(json.dumps(payload, allow_nan=False), file=out)
        return EXIT_OK
    print(format_layer_table(snapshot), file=out)
    rows = min(snapshot.sample_rows, result.batch_size)
    print(f"\nloss {result.loss:.4g} on one batch of {result.batch_size} "
          f"(activation statistics over {rows} samples); nothing was updated", file=out)
    return EXIT_OK


def _report_build_failure(exc: Exception, err: TextIO) -> int:
    """A failure while building or examining a run, reported as a run's: the user's
    traceback when their code raised; exit 2 for bad input, 1 otherwise."""
    from trainlab.engine.loop import describe_failure

    failure = describe_failure(exc, 0)
    if failure.traceback:
        print(failure.traceback.rstrip(), file=err)
    print(f"trainlab: error: {failure.message}", file=err)
    return EXIT_BAD_INPUT if failure.kind == "config" else EXIT_FAILED


def cmd_doctor(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``trainlab doctor``: the pre-flight checklist; EXIT_CHECK_FAILED when a check
    fails, EXIT_FAILED when the run cannot be built (user code raised)."""
    config = config_or_report(args, err)
    if config is None:
        return EXIT_BAD_INPUT
    from trainlab.doctor.checks import run_doctor

    try:
        report = run_doctor(config)
    except Exception as exc:  # bad input or user code: the same report as a run's
        return _report_build_failure(exc, err)
    if args.json:
        print(json.dumps(report.to_dict(), allow_nan=False), file=out)
    else:
        for check in report.checks:
            print(f"{check.status.upper():<4}  {check.name}", file=out)
            print(textwrap.fill(check.detail, DETAIL_WIDTH, initial_indent=DETAIL_INDENT,
                                subsequent_indent=DETAIL_INDENT, break_on_hyphens=False),
                  file=out)
        print(f"\ndoctor: {report.summary()}", file=out)
    return EXIT_CHECK_FAILED if report.failed else EXIT_OK


def _run_command(args: argparse.Namespace, override: str) -> str:
    """The ``trainlab run`` line for the same CONFIG, --preset and --set, plus
    ``override`` (which replaces an earlier --set of the same key)."""
    key = override.partition("=")[0]
    words = ["trainlab", "run", *([args.config] if args.config else []),
             *(["--preset", args.preset] if args.preset else [])]
    for assignment in [*args.overrides, override]:
        if assignment is override or assignment.partition("=")[0].strip() != key:
            words += ["--set", assignment]
    return shlex.join(words)


def cmd_lr_find(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``trainlab lr-find``: the LR range test from the initialized weights, drawn."""
    config = config_or_report(args, err)
    if config is None:
        return EXIT_BAD_INPUT
    from trainlab.core.lr_chart import draw_lr_curve
    from trainlab.doctor.lr_find import LrRangeError, check_range, find_lr
    from trainlab.engine.build import BuiltRun

    try:
        check_range(args.start, args.end, args.steps)
    except LrRangeError as exc:
        print(f"trainlab: error: --{exc}", file=err)
        return EXIT_BAD_INPUT
    try:
        found = find_lr(BuiltRun(config), args.start, args.end, args.steps)
    except Exception as exc:  # bad input or user code: the same report as a run's
        return _report_build_failure(exc, err)
    if args.json:  # the event a live FindLr is answered with: one parser for both
        print(protocol.to_json(found), file=out)
        return EXIT_OK
    print(draw_lr_curve(found), file=out)
    if found.suggested_lr is None:
        print(f"\nno suggestion: {found.reason}. trainlab doctor checks the set-up",
              file=out)
    else:
        print(f"\nsuggested lr {found.suggested_lr:.2g}: {found.reason}", file=out)
        print(f"use it (now optim.lr = {config.optim.lr:g}): "
              f"{_run_command(args, f'optim.lr={found.suggested_lr:.2g}')}", file=out)
    return EXIT_OK


def cmd_presets(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``trainlab presets``: the labs, then the single-run presets, one line each."""
    from trainlab.core.labs import LABS
    from trainlab.core.presets import PRESETS

    width = max(len(name) for name in [*LABS, *PRESETS])
    print("labs, several runs compared (trainlab --preset LAB, or trainlab run --preset "
          "LAB --headless):", file=out)
    for lab in LABS.values():
        runs = f"{len(lab.variants)} runs"
        print(f"  {lab.name.ljust(width)}  {runs:>7}  {lab.summary}", file=out)
    print("\nsingle runs (trainlab --preset NAME; each lab's runs are among them):", file=out)
    for preset in PRESETS.values():
        print(f"  {preset.name.ljust(width)}  {preset.summary}", file=out)
    return EXIT_OK


def format_runs_table(summaries: list[Any], now: float) -> str:
    """``trainlab runs``'s table of ``trainlab.core.run_status.RunSummary`` rows, aligned, then a
    line per run that can be resumed (or crashed without a checkpoint)."""
    labels = any(s.label for s in summaries)
    header = ("id", "status", "step", "best val", "last event", "parent",
              *(("label",) if labels else ()))
    rows = [header]
    for s in summaries:
        parent = s.parent + (f"@{s.parent_step}" if s.parent_step is not None else "") \
            if s.parent else "-"
        rows.append((s.id, s.status, str(s.step), format_number(s.best_val_loss),
                     format_age(now - s.updated_at), parent,
                     *((s.label or "-",) if labels else ())))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {2, 3}  # numbers line up on the right
    lines = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    notes = []
    for s in summaries:
        if s.resumable:
            notes.append(_resume_note(s))
        elif s.status == "not yours":
            notes.append(s.reason)
        elif s.status == "crashed":  # the reason is in --json; the log says more
            notes.append(f"{s.id} crashed with no checkpoint to resume from; see its "
                         "engine.log")
    return "\n".join([*lines, *([""] if notes else []), *notes])


def _resume_note(s: Any) -> str:
    """Where ``trainlab resume`` goes on from: the step a checkpoint holds, which is
    short of the recorded one when the last checkpoint could not be written (disk full)."""
    resume = f"trainlab resume {s.id}"
    if s.checkpoint_step == s.step:
        return f"{s.id} {s.status} at step {s.step}: {resume}"
    if s.checkpoint_step is not None and s.checkpoint_step < s.step:
        return (f"{s.id} {s.status} at step {s.step}, no checkpoint of it; its newest good "
                f"one is of step {s.checkpoint_step}: {resume} goes on from there")
    if s.checkpoint_step is not None:  # the store missed the last steps (a full disk)
        return (f"{s.id} {s.status}; its store has steps up to {s.step}, its newest good "
                f"checkpoint is of step {s.checkpoint_step}: {resume} goes on from there")
    return (f"{s.id} {s.status} at step {s.step}, no checkpoint known to be of it: {resume} "
            "goes on from its newest good one")


def cmd_runs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``trainlab runs``: every run under --dir with its status, newest first."""
    from trainlab.core.catalog import list_runs

    summaries = list_runs(args.dir)
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries], allow_nan=False), file=out)
    elif not summaries:
        print(f"no runs in {args.dir} (trainlab run --headless writes one)", file=out)
    else:
        print(format_runs_table(summaries, time.time()), file=out)
    return EXIT_OK


def cmd_export(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``trainlab export``: a run as CSV, JSON lines or TensorBoard event files."""
    from trainlab.core.catalog import find_run
    from trainlab.core.rundir import RunNotFound
    from trainlab.core.store import StoreError
    from trainlab.engine.export import ExportError, default_out_dir, export_run

    try:
        run_dir = find_run(args.dir, args.run)
        out_dir = args.out or default_out_dir(run_dir, args.fmt)
        files = export_run(run_dir, args.fmt, out_dir)
    except (RunNotFound, ExportError) as exc:
        print(f"trainlab: error: {exc}", file=err)
        return EXIT_BAD_INPUT
    except (StoreError, OSError) as exc:
        print(f"trainlab: error: export failed: {exc}", file=err)
        return EXIT_FAILED
    for path in files:
        print(path, file=out)
    if args.fmt == "tensorboard":
        print(f"open with: tensorboard --logdir {shlex.quote(os.fspath(out_dir))}", file=out)
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``trainlab sweep SWEEP.toml``: a search over config fields
    (``trainlab.cli.sweep_runner``)."""
    from trainlab.core import sweep

    if not (args.headless or args.json or args.show or args.best):
        print("trainlab sweep: add --headless or --json to run the sweep without the app",
              file=err)
        return EXIT_BAD_INPUT
    try:
        spec = sweep.load(args.sweep_file, args.overrides)
    except ConfigError as exc:
        print(f"trainlab: error: {exc}", file=err)
        return EXIT_BAD_INPUT
    from trainlab.cli.sweep_runner import run_sweep, show_sweep

    if args.show or args.best:
        return show_sweep(spec, as_json=args.json, out=out, err=err, best_to=args.best)
    return run_sweep(spec, as_json=args.json, out=out, err=err)


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO, TextIO], int]] = {
    "run": cmd_run,
    "probe": cmd_probe,
    "doctor": cmd_doctor,
    "lr-find": cmd_lr_find,
    "presets": cmd_presets,
    "config": cmd_config,
    "runs": cmd_runs,
    "export": cmd_export,
    "resume": cmd_resume,
    "fork": cmd_fork,
    "sweep": cmd_sweep,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trainlab`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, sys.stdout, sys.stderr)
    except BrokenPipeError:  # `trainlab run --json | head`: the reader left
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:  # Ctrl-C before a run's own handler was in place
        print("trainlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
