"""The ``trainlab`` command line: headless runs and config files.

Parsing and config handling import no torch; the loop (and torch with it) is
imported only when a run starts, so ``trainlab config`` and ``--help`` answer fast.

Exit codes (the ``EXIT_*`` constants): 0 the run completed (or stopped early by rule or
on request); 1 user code or the engine failed (also while ``doctor``, ``lr-find`` or
``probe`` built the run); 2 bad input (config, file, flag); 3 the loss became
non-finite; 4 ``doctor`` found a check that failed; 130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shlex
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from engine import config as config_mod
from engine import protocol
from engine.config import Config, ConfigError

EXIT_OK = 0
"""The run completed, or stopped early by rule or on request; the report was printed."""
EXIT_FAILED = 1
"""User code or the engine failed: the traceback (of the user's code when it raised) is
on stderr. The same for every command that builds a run."""
EXIT_BAD_INPUT = 2
"""Bad input: a config value, a file or a flag; the message on stderr names it."""
EXIT_NON_FINITE = 3
"""The training loss became non-finite (NaN/inf) and the run stopped."""
EXIT_CHECK_FAILED = 4
"""``trainlab doctor``: the report was printed and a check failed. Its own code, so a
script (or the app) tells a verdict from a crash building the run (EXIT_FAILED)."""
EXIT_INTERRUPTED = 130
"""Interrupted with Ctrl-C (128 + SIGINT, the shell's convention)."""
PROGRESS_INTERVAL_S = 1.0
"""Human progress lines: at most one training line a second (evaluations always print)."""
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
    return parser


def add_runs_dir_arg(p: argparse.ArgumentParser) -> None:
    """--dir: where the commands that read run directories look for them."""
    p.add_argument("--dir", default=Config().run.dir, metavar="DIR",
                   help=f"directory that holds the runs (default: run.dir, "
                   f"{Config().run.dir!r})")


def add_run_args(p: argparse.ArgumentParser, *, default: str = "") -> None:
    """RUN and --dir: how every command that reads one run directory is told which.
    ``default`` says which run it takes without one (empty: RUN is required)."""
    p.add_argument("run", nargs="?" if default else None, metavar="RUN",
                   help="run id, a unique prefix of one, or a run directory"
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
    from engine.export import EXPORT_DIR, FORMATS

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
    from engine.presets import apply_preset

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


# --- human-readable progress ------------------------------------------------------


def format_percent(value: float | None, suffix: str = "%") -> str:
    """A fraction as a percentage; '-' where there is none (the CLI's and the app's)."""
    return "-" if value is None else f"{100 * value:.1f}{suffix}"


def format_number(value: float | None, spec: str = ".4g") -> str:
    """A number in ``spec``; '-' where there is none (the CLI's and the app's)."""
    return "-" if value is None else format(value, spec)


class ProgressPrinter:
    """Turns events into short lines for a person watching a headless run."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self.last_line = 0.0
        self.latest: protocol.MetricsBatch | None = None

    def __call__(self, event: Any) -> None:
        handler = getattr(self, "on_" + type(event).__name__, None)
        if handler is not None:
            handler(event)

    def say(self, text: str, stream: TextIO | None = None) -> None:
        print(text, file=stream or self.out, flush=True)

    def on_RunStarted(self, e: protocol.RunStarted) -> None:
        d, m, c = e.dataset, e.model, e.config
        if e.run_dir:
            resumed = f", from step {e.resumed_from_step}" if e.resumed_from_step else ""
            self.say(f"run {os.path.basename(e.run_dir)} in {e.run_dir}{resumed}")
        classes = f", {d.num_classes} classes" if d.num_classes else ", regression"
        self.say(f"data: {d.name} {d.input_shape}: {d.train_size} train / {d.val_size} val"
                 f"{classes}")
        if d.num_classes:
            pairs = zip(d.class_names, d.train_counts, strict=True)
            counts = " ".join(f"{name}:{count}" for name, count in pairs)
            self.say(f"      train class counts {counts}")
        weighted = sum(1 for layer in m.layers if layer.params)
        self.say(f"model: {m.arch}, {weighted} layers with weights, {m.params:,} parameters; "
                 f"loss {e.loss}; optimizer {c['optim']['name']} lr {c['optim']['lr']:g}")
        self.say(f"device: {e.device}, {e.threads} thread(s); {e.steps_per_epoch} steps/epoch, "
                 f"{e.total_steps} steps")

    def on_MetricsBatch(self, e: protocol.MetricsBatch) -> None:
        now = time.monotonic()
        if now - self.last_line < PROGRESS_INTERVAL_S:
            return
        self.last_line = now
        self.say(f"step {e.steps[-1]:>6}  epoch {e.epoch:>3}  loss {e.losses[-1]:.4g}  "
                 f"lr {e.lrs[-1]:.2e}  {e.steps_per_sec:,.0f} steps/s")

    def on_EvalDone(self, e: protocol.EvalDone) -> None:
        acc = f"  val_acc {format_percent(e.val_accuracy)}" if e.val_accuracy is not None else ""
        self.say(f"eval {e.step:>6}  epoch {e.epoch:>3}  train_loss {format_number(e.train_loss)}  "
                 f"val_loss {format_number(e.val_loss)}{acc}")

    def on_HyperChanged(self, e: protocol.HyperChanged) -> None:
        note = f" ({e.note})" if e.note else ""
        self.say(f"step {e.step}: {e.key} {e.old!r} -> {e.new!r}{note}")

    def on_Notice(self, e: protocol.Notice) -> None:
        self.say(f"{e.level}: {e.message}", self.err if e.level != "info" else None)

    def on_CommandRejected(self, e: protocol.CommandRejected) -> None:
        self.say(f"rejected {e.command_type}: {e.reason}", self.err)

    def on_CheckpointSaved(self, e: protocol.CheckpointSaved) -> None:
        self.say(f"step {e.step}: checkpoint saved to {e.path}")

    def on_NonFiniteDetected(self, e: protocol.NonFiniteDetected) -> None:
        self.say(f"non-finite: {e.message}", self.err)

    def on_AlertRaised(self, e: protocol.AlertRaised) -> None:
        where = f" [{', '.join(e.layers)}]" if e.layers else ""
        self.say(f"alert {e.severity} at step {e.step}: {e.kind}{where}: {e.message}", self.err)
        for fix in e.fixes:
            # Headless, nothing applies live: a live fix ("... now") is for the app (f);
            # here every fix is the --set flags of the next run.
            how = "the app applies it live with f; next run" if not fix.restart else "next run"
            self.say(f"    fix: {fix.label} ({how}: {set_flags(fix.changes)})", self.err)

    def on_LrFound(self, e: protocol.LrFound) -> None:
        lr = format_number(e.suggested_lr, ".2e")
        self.say(f"step {e.step}: lr range test suggests {lr} ({e.reason})")

    def on_EngineFailed(self, e: protocol.EngineFailed) -> None:
        if e.traceback:
            self.say(e.traceback.rstrip(), self.err)
        self.say(f"trainlab: error: {e.message}", self.err)

    def on_RunFinished(self, e: protocol.RunFinished) -> None:
        if e.reason == "failed":
            return
        f = e.final
        acc = f", val_acc {format_percent(f.val_accuracy)}" if f.val_accuracy is not None else ""
        best = f", best val_loss {format_number(f.best_val_loss)} at step {f.best_step}" \
            if f.best_step is not None else ""
        self.say(f"{e.reason}: step {f.step}, epoch {f.epoch}, "
                 f"train_loss {format_number(f.train_loss)}, "
                 f"val_loss {format_number(f.val_loss)}{acc}{best}; {f.elapsed_s:.1f} s")


def set_flags(changes: dict[str, Any]) -> str:
    """``--set key=value`` for each change, as a shell reads it back (``--set``'s syntax,
    ``config.format_setting``; quoted where the shell needs it)."""
    return " ".join(f"--set {shlex.quote(f'{key}={config_mod.format_setting(value)}')}"
                    for key, value in changes.items())


def event_printer(as_json: bool, out: TextIO, err: TextIO) -> Callable[[Any], None]:
    """How a command that trains shows its events: JSON lines, or progress for people."""
    return json_printer(out) if as_json else ProgressPrinter(out, err)


def json_printer(out: TextIO) -> Callable[[Any], None]:
    """Every event as one line of strict JSON."""

    def emit(event: Any) -> None:
        print(protocol.to_json(event), file=out, flush=True)

    return emit


# --- commands -----------------------------------------------------------------------


def _exit_code(finished: protocol.RunFinished, failure: protocol.EngineFailed | None,
               signum: int | None) -> int:
    """How a run ended, as the exit status: a stop by a signal is 128 + its number (130
    for Ctrl-C, 143 for SIGTERM), as the shell reports a process that signal ended."""
    if finished.reason == "failed":
        return EXIT_BAD_INPUT if failure is not None and failure.kind == "config" else EXIT_FAILED
    if finished.reason == "non_finite":
        return EXIT_NON_FINITE
    return 128 + signum if signum is not None else EXIT_OK


def report_config_error(exc: ConfigError, show: Callable[[Any], None], err: TextIO,
                        as_json: bool) -> int:
    """A run refused for its config before it was built: the same ending as a run the
    engine refuses (failure, state, finish), so scripts see one shape; exit 2."""
    for event in protocol.failure_events("config", str(exc)):
        show(event)
    if as_json:  # the JSON stream carries it; people reading stderr see it too
        print(f"trainlab: error: {exc}", file=err)
    return EXIT_BAD_INPUT


@dataclass(frozen=True)
class HeadlessResult:
    """How a run trained in the foreground ended, for the command that started it."""

    exit_code: int
    finished: protocol.RunFinished | None
    """None when a second Ctrl-C aborted the run before it could finish."""
    reader_gone: bool
    """stdout's reader left (``| head``): nothing more should be printed."""


def train_headless(config: Config, show: Callable[[Any], None], err: TextIO, *,
                   run_dir: Path | None = None, start_from: dict[str, Any] | None = None,
                   notes: tuple[str, ...] = ()) -> HeadlessResult:
    """Train ``config`` in the foreground as the engine of a run directory (a new one
    under run.dir unless ``run_dir`` is given), every event to ``show``.

    The run is served like a detached one (``engine.serve``: store, checkpoints, and a
    socket that ``trainlab attach`` can watch from another terminal). The first Ctrl-C
    (or SIGTERM, SIGHUP) stops at the next step boundary (the final evaluation and a
    checkpoint still happen), the second gives up at once; a reader that leaves stdout
    stops the run quietly.
    """
    from engine import store
    from engine.serve import serve

    commands: queue.Queue[Any] = queue.Queue()
    failure: protocol.EngineFailed | None = None
    reader_gone = False

    def on_signal(name: str) -> None:
        what = "Ctrl-C" if name == "SIGINT" else name
        print(f"\n{what}: stopping after this step ({what} again to abort)", file=err,
              flush=True)

    def emit(event: Any) -> None:
        nonlocal failure, reader_gone
        if isinstance(event, protocol.EngineFailed):
            failure = event
        if reader_gone:
            return
        try:
            show(event)
        except BrokenPipeError:  # `trainlab run ... | head`: the reader left; stop quietly
            reader_gone = True
            commands.put(protocol.Stop("the reader of stdout left"))

    try:
        run_dir = run_dir if run_dir is not None else store.new_run(config.run.dir, config)
        finished, signum = serve(run_dir, config, show=emit, start_from=start_from,
                                 notes=notes, on_signal=on_signal, commands=commands)
    except KeyboardInterrupt:
        print("trainlab: aborted", file=err)
        return HeadlessResult(EXIT_INTERRUPTED, None, reader_gone=False)
    except (store.RunBusy, OSError) as exc:  # another engine serves it; run.dir unwritable
        print(f"trainlab: error: {exc}", file=err)
        return HeadlessResult(EXIT_BAD_INPUT, None, reader_gone=False)
    if reader_gone:
        # Python flushes stdout at exit; point it at /dev/null so that cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return HeadlessResult(EXIT_OK, finished, reader_gone=True)
    return HeadlessResult(_exit_code(finished, failure, signum), finished, reader_gone=False)


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``trainlab run --headless``: train in the foreground; Ctrl-C stops cleanly.

    A lab (``--preset LAB``) trains its runs in turn and compares them
    (``engine.lab_runner``).
    """
    if not _without_app(args, "run", err):
        return EXIT_BAD_INPUT
    from engine import store
    from engine.labs import find_lab  # no torch: labs are data

    if args.preset and (lab := find_lab(args.preset)) is not None:
        if args.detach:
            print(f"trainlab run: --detach starts one run; the lab {lab.name} trains its runs "
                  "in turn: use --headless, or the app", file=err)
            return EXIT_BAD_INPUT
        from engine.lab_runner import run_lab  # it imports this module: import it late

        return run_lab(lab, args.config, args.overrides, as_json=args.json, out=out, err=err)
    show = event_printer(args.json, out, err)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        return report_config_error(exc, show, err, args.json)
    if args.detach:
        try:
            run_dir = store.new_run(config.run.dir, config)
        except OSError as exc:
            print(f"trainlab: error: run.dir = {config.run.dir!r}: {exc}", file=err)
            return EXIT_BAD_INPUT
        return start_detached(run_dir, (), args.json, out, err)
    return train_headless(config, show, err).exit_code


def _without_app(args: argparse.Namespace, command: str, err: TextIO) -> bool:
    """Did the command line ask for a way to train without the app? (Without one, the
    app's front end, tui.cli, opens the app; this is for ``python -m engine``.)"""
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
    from engine import store
    from engine.serve import spawn_detached, wait_until_served

    process = spawn_detached(run_dir, *serve_args)
    if not wait_until_served(run_dir, process, DETACH_WAIT_S) and process.poll() is not None:
        # It ended before serving: say why, from its store.
        failure = _stored_failure(run_dir)
        why = failure.message if failure else f"exit status {process.returncode}; see " \
            f"{run_dir / store.LOG_FILE}"
        print(f"trainlab: error: run {run_dir.name} did not start: {why}", file=err)
        return EXIT_BAD_INPUT if failure is not None and failure.kind == "config" \
            else EXIT_FAILED
    if as_json:
        print(json.dumps({"run_id": run_dir.name, "run_dir": os.fspath(run_dir),
                          "pid": process.pid}), file=out)
    else:
        attach = f"trainlab attach {run_dir.name}"
        print(f"run {run_dir.name} trains in the background (pid {process.pid}, its output "
              f"in {run_dir / store.LOG_FILE})\n  {attach}  watch and steer it\n  "
              f"{'trainlab runs':<{len(attach)}}  list the runs", file=out)
    return EXIT_OK


def _stored_failure(run_dir: Path) -> protocol.EngineFailed | None:
    """The first EngineFailed in a run's store (None: none, or the store is unreadable)."""
    from engine import store

    try:
        with store.RunStore.open(run_dir, write=False) as runs:
            return next((event for _, event in runs.events(types=("EngineFailed",))), None)
    except (store.StoreError, OSError):
        return None


def _continued_run(args: argparse.Namespace, err: TextIO) -> Path | None:
    """RUN of resume/fork as a run directory; None (said on ``err``) when there is none."""
    from engine import store

    try:
        return store.find_run(args.dir, args.run)
    except store.RunNotFound as exc:
        print(f"trainlab: error: {exc}", file=err)
        return None


def cmd_resume(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``trainlab resume RUN``: go on from the run's newest good checkpoint."""
    if not _without_app(args, "resume", err) or (run_dir := _continued_run(args, err)) is None:
        return EXIT_BAD_INPUT
    from engine import store
    from engine.checkpoint import CheckpointError
    from engine.resume import resume_notes, resume_plan

    if store.engine_alive(run_dir):
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
    from engine import store
    from engine.checkpoint import CheckpointError, save_atomic
    from engine.resume import fork_note, fork_plan

    try:
        plan = fork_plan(run_dir, args.from_step, args.overrides)
    except (CheckpointError, ConfigError) as exc:
        print(f"trainlab: error: cannot fork {run_dir.name}: {exc}", file=err)
        return EXIT_BAD_INPUT
    except Exception as exc:  # building the new model or its data raised (user code)
        return _report_build_failure(exc, err)
    try:
        child = store.new_run(run_dir.parent, plan.config, parent=plan.parent,
                              parent_step=plan.parent_step)
        # The fork's own copy: the parent's checkpoints rotate, its engine may start late.
        save_atomic(plan.payload, child / store.FORK_START_FILE)
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
    from engine.probe import probe

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
    from engine.loop import describe_failure

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
    from engine.doctor import run_doctor

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
    from engine.loop import Trainer
    from engine.lr_chart import draw_lr_curve
    from engine.lr_find import LrRangeError, check_range, find_lr

    try:
        check_range(args.start, args.end, args.steps)
    except LrRangeError as exc:
        print(f"trainlab: error: --{exc}", file=err)
        return EXIT_BAD_INPUT
    try:
        found = find_lr(Trainer(config), args.start, args.end, args.steps)
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
    from engine.labs import LABS
    from engine.presets import PRESETS

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


AGE_UNITS = ((86400, "d"), (3600, "h"), (60, "m"), (1, "s"))
"""``format_age``: (seconds, suffix) from the largest unit down; the largest that fits
is shown in whole units ("3h ago": precise enough to tell runs apart in a list)."""


def format_age(seconds: float) -> str:
    """How long ago, in one whole unit: '12s ago', '5m ago', '3h ago', '2d ago'."""
    if seconds < 1:
        return "just now"
    size, unit = next((size, unit) for size, unit in AGE_UNITS if seconds >= size)
    return f"{int(seconds // size)}{unit} ago"


def format_runs_table(summaries: list[Any], now: float) -> str:
    """``trainlab runs``'s table of ``engine.store.RunSummary`` rows, aligned, then a
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
    from engine.store import list_runs

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
    from engine.export import ExportError, default_out_dir, export_run
    from engine.store import RunNotFound, StoreError, find_run

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
