"""A run trained in the terminal, without the app: progress lines (or every event as a
JSON line), a report at the end, an exit code that says how it ended. ``trainlab run
--headless`` and each run of a headless lab go through ``train_headless``."""

from __future__ import annotations

import os
import queue
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, assert_never

from trainlab.core import config as config_mod
from trainlab.core import protocol
from trainlab.core.config import Config, ConfigError
from trainlab.core.exits import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NON_FINITE,
    EXIT_OK,
)
from trainlab.core.protocol import (
    AlertRaised,
    CheckpointSaved,
    Command,
    CommandRejected,
    Emit,
    EngineFailed,
    EvalDone,
    Event,
    HyperChanged,
    LrFound,
    MetricsBatch,
    NonFiniteDetected,
    Notice,
    RunFinished,
    RunStarted,
)
from trainlab.core.text import format_number, format_percent

PROGRESS_INTERVAL_S = 1.0
"""Human progress lines: at most one training line a second (evaluations always print)."""

# --- human-readable progress ------------------------------------------------------


class ProgressPrinter:
    """Turns events into short lines for a person watching a headless run."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self.last_line = 0.0
        self.latest: protocol.MetricsBatch | None = None

    def __call__(self, event: Event) -> None:
        match event:
            case protocol.RunStarted():
                self.on_run_started(event)
            case protocol.MetricsBatch():
                self.on_metrics(event)
            case protocol.EvalDone():
                self.on_eval_done(event)
            case protocol.HyperChanged():
                self.on_hyper_changed(event)
            case protocol.Notice():
                self.on_notice(event)
            case protocol.CommandRejected():
                self.on_command_rejected(event)
            case protocol.CheckpointSaved():
                self.on_checkpoint_saved(event)
            case protocol.NonFiniteDetected():
                self.on_nonfinite(event)
            case protocol.AlertRaised():
                self.on_alert(event)
            case protocol.LrFound():
                self.on_lr_found(event)
            case protocol.EngineFailed():
                self.on_engine_failed(event)
            case protocol.RunFinished():
                self.on_run_finished(event)
            case (protocol.StateChanged() | protocol.LayerStatsSnapshot() | protocol.Attached()
                  | protocol.ControlChanged()):
                pass  # the lines above say what a person needs of these
            case _:
                assert_never(event)

    def say(self, text: str, stream: TextIO | None = None) -> None:
        print(text, file=stream or self.out, flush=True)

    def on_run_started(self, e: RunStarted) -> None:
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

    def on_metrics(self, e: MetricsBatch) -> None:
        now = time.monotonic()
        if now - self.last_line < PROGRESS_INTERVAL_S:
            return
        self.last_line = now
        self.say(f"step {e.steps[-1]:>6}  epoch {e.epoch:>3}  loss {e.losses[-1]:.4g}  "
                 f"lr {e.lrs[-1]:.2e}  {e.steps_per_sec:,.0f} steps/s")

    def on_eval_done(self, e: EvalDone) -> None:
        acc = f"  val_acc {format_percent(e.val_accuracy)}" if e.val_accuracy is not None else ""
        self.say(f"eval {e.step:>6}  epoch {e.epoch:>3}  train_loss {format_number(e.train_loss)}  "
                 f"val_loss {format_number(e.val_loss)}{acc}")

    def on_hyper_changed(self, e: HyperChanged) -> None:
        note = f" ({e.note})" if e.note else ""
        self.say(f"step {e.step}: {e.key} {e.old!r} -> {e.new!r}{note}")

    def on_notice(self, e: Notice) -> None:
        self.say(f"{e.level}: {e.message}", self.err if e.level != "info" else None)

    def on_command_rejected(self, e: CommandRejected) -> None:
        self.say(f"rejected {e.command_type}: {e.reason}", self.err)

    def on_checkpoint_saved(self, e: CheckpointSaved) -> None:
        self.say(f"step {e.step}: checkpoint saved to {e.path}")

    def on_nonfinite(self, e: NonFiniteDetected) -> None:
        self.say(f"non-finite: {e.message}", self.err)

    def on_alert(self, e: AlertRaised) -> None:
        where = f" [{', '.join(e.layers)}]" if e.layers else ""
        self.say(f"alert {e.severity} at step {e.step}: {e.kind}{where}: {e.message}", self.err)
        for fix in e.fixes:
            # Headless, nothing applies live: a live fix ("... now") is for the app (f);
            # here every fix is the --set flags of the next run.
            how = "the app applies it live with f; next run" if not fix.restart else "next run"
            self.say(f"    fix: {fix.label} ({how}: {set_flags(fix.changes)})", self.err)

    def on_lr_found(self, e: LrFound) -> None:
        lr = format_number(e.suggested_lr, ".2e")
        self.say(f"step {e.step}: lr range test suggests {lr} ({e.reason})")

    def on_engine_failed(self, e: EngineFailed) -> None:
        if e.traceback:
            self.say(e.traceback.rstrip(), self.err)
        self.say(f"trainlab: error: {e.message}", self.err)

    def on_run_finished(self, e: RunFinished) -> None:
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


def event_printer(as_json: bool, out: TextIO, err: TextIO) -> Emit:
    """How a command that trains shows its events: JSON lines, or progress for people."""
    return json_printer(out) if as_json else ProgressPrinter(out, err)


def json_printer(out: TextIO) -> Emit:
    """Every event as one line of strict JSON."""

    def emit(event: Event) -> None:
        print(protocol.to_json(event), file=out, flush=True)

    return emit


def _exit_code(finished: protocol.RunFinished, failure: protocol.EngineFailed | None,
               signum: int | None) -> int:
    """How a run ended, as the exit status: a stop by a signal is 128 + its number (130
    for Ctrl-C, 143 for SIGTERM), as the shell reports a process that signal ended."""
    if finished.reason == "failed":
        return EXIT_BAD_INPUT if failure is not None and failure.kind == "config" else EXIT_FAILED
    if finished.reason == "non_finite":
        return EXIT_NON_FINITE
    return 128 + signum if signum is not None else EXIT_OK


def report_config_error(exc: ConfigError, show: Emit, err: TextIO,
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


def train_headless(config: Config, show: Emit, err: TextIO, *,
                   run_dir: Path | None = None, start_from: dict[str, Any] | None = None,
                   notes: tuple[str, ...] = ()) -> HeadlessResult:
    """Train ``config`` in the foreground as the engine of a run directory (a new one
    under run.dir unless ``run_dir`` is given), every event to ``show``.

    The run is served like a detached one (``trainlab.engine.serve``: store, checkpoints, and a
    socket that ``trainlab attach`` can watch from another terminal). The first Ctrl-C
    (or SIGTERM, SIGHUP) stops at the next step boundary (the final evaluation and a
    checkpoint still happen), the second gives up at once; a reader that leaves stdout
    stops the run quietly.
    """
    from trainlab.core import catalog, engine_lock
    from trainlab.engine.serve import serve

    commands: queue.Queue[Command] = queue.Queue()
    failure: protocol.EngineFailed | None = None
    reader_gone = False

    def on_signal(name: str) -> None:
        what = "Ctrl-C" if name == "SIGINT" else name
        print(f"\n{what}: stopping after this step ({what} again to abort)", file=err,
              flush=True)

    def emit(event: Event) -> None:
        nonlocal failure, reader_gone
        if isinstance(event, EngineFailed):
            failure = event
        if reader_gone:
            return
        try:
            show(event)
        except BrokenPipeError:  # `trainlab run ... | head`: the reader left; stop quietly
            reader_gone = True
            commands.put(protocol.Stop("the reader of stdout left"))

    try:
        run_dir = run_dir if run_dir is not None else catalog.new_run(config.run.dir, config)
        finished, signum = serve(run_dir, config, show=emit, start_from=start_from,
                                 notes=notes, on_signal=on_signal, commands=commands)
    except KeyboardInterrupt:
        print("trainlab: aborted", file=err)
        return HeadlessResult(EXIT_INTERRUPTED, None, reader_gone=False)
    except (engine_lock.RunBusy, OSError) as exc:  # another engine serves it; run.dir unwritable
        print(f"trainlab: error: {exc}", file=err)
        return HeadlessResult(EXIT_BAD_INPUT, None, reader_gone=False)
    if reader_gone:
        # Python flushes stdout at exit; point it at /dev/null so that cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return HeadlessResult(EXIT_OK, finished, reader_gone=True)
    return HeadlessResult(_exit_code(finished, failure, signum), finished, reader_gone=False)
