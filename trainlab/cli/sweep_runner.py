"""A sweep, headless: Optuna asks for trials, each trains as a run of its own, the
leaderboard and the best config at the end.

``trainlab sweep SWEEP.toml --headless`` (or ``--json``) comes here from
``trainlab.cli.commands.cmd_sweep``. This process never trains and never imports torch:
it asks the study for a trial (its sampled values), creates the trial's run directory
(a normal run under run.dir, labelled ``sweep NAME #N``) and starts its engine detached
(``trainlab.engine.trial``, which reports every evaluation to the trial, stops when the
pruner says so and tells the study how the trial ended), at most ``parallel`` at once,
until the study holds ``trials`` trials.

Resuming: the study lives in its storage, so ``trainlab sweep SWEEP.toml`` again goes on
with it. A trial of this machine left running in the study whose sweep process and
engine are both gone is resumed from its run's checkpoint (a Ctrl-C'd sweep's trials:
each stopped at a step boundary and wrote one), or, with no checkpoint to resume, given
up and its values queued again. An engine that outlived its sweep process (``kill -9``)
trains on and is waited for.

Output: a line per trial started and ended, then the leaderboard, the totals (trials by
state, the steps pruning saved) and the best trial. With ``--json`` each of those is a
JSON object on a line of its own: ``{"sweep": NAME, "trial": N, "state": "running",
...}`` when a trial starts, the trial's leaderboard row when it ends, and last ``{"sweep":
NAME, "totals": ..., "best": ..., "best_config": PATH}``.

Exit code: 0 when a trial completed, 1 when none did, 2 bad input, 128 + the signal that
interrupted it (the first Ctrl-C stops the trials at their next step, so the next
``trainlab sweep`` resumes them; a second one leaves them training in the background).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from trainlab.core import catalog, rundir, store
from trainlab.core import config as config_mod
from trainlab.core.config import Config, ConfigError
from trainlab.core.engine_lock import EngineLock, RunBusy, engine_alive
from trainlab.core.exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from trainlab.core.serving import TRIAL_MODULE, spawn_detached
from trainlab.core.store import StoreError
from trainlab.core.sweep import BEST_FILE, TRIAL_META_KEY, SweepError, SweepSpec
from trainlab.core.sweep_study import (
    EXCLUDED_ATTR,
    RETRY_OF_ATTR,
    TrialRow,
    best_row,
    counted,
    distributions,
    get_trial,
    host_name,
    leaderboard,
    leaderboard_table,
    open_study,
    pid_alive,
    row,
    set_trial_attr,
    teller,
    totals,
    trial_id,
)
from trainlab.core.text import format_number

POLL_S = 0.25
"""How often the sweep looks at its trials' engines (each check is a poll of a child)."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class TrialEngine:
    """A trial training on this machine: its engine process (ours, or one that outlived
    an earlier sweep process: ``process`` None, watched by its pid)."""

    number: int
    trial_id: int
    run_dir: Path
    pid: int
    process: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return (pid_alive(self.pid) or not self.pid) and engine_alive(self.run_dir)

    def stop(self) -> None:
        """SIGTERM: the engine stops at its next step boundary and writes a checkpoint."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)


def _value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else config_mod.format_setting(value)


class SweepPrinter:
    """What a person (or, with ``--json``, a script) sees of a sweep."""

    def __init__(self, spec: SweepSpec, as_json: bool, out: TextIO, err: TextIO) -> None:
        self.spec, self.as_json, self.out, self.err = spec, as_json, out, err
        self.keys = [d.key for d in spec.space]

    def say(self, text: str) -> None:
        if not self.as_json:
            print(text, file=self.out, flush=True)

    def emit(self, data: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps({"sweep": self.spec.name, **data}, allow_nan=False),
                  file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(f"sweep {self.spec.name}: {text}", file=self.err if self.as_json else self.out,
              flush=True)

    def started(self, done: int) -> None:
        s = self.spec
        at_once = f"{s.parallel} at once" if s.parallel > 1 else "one at a time"
        goes_on = f" (goes on: {done} of them there already)" if done else ""
        self.say(f"sweep {s.name}: {s.trials} trials{goes_on}, {s.metric} "
                 f"({s.direction}), {s.sampler} sampler, {s.pruner} pruner, {at_once}")
        self.say(f"  study {s.name} in {s.storage_url}")

    def params(self, params: dict[str, Any]) -> str:
        """``key=value`` for each sampled value (floats to 4 digits)."""
        return " ".join(f"{k}={_value_text(v)}" for k, v in params.items())

    def trial_started(self, number: int, params: dict[str, Any], run_dir: Path,
                      how: str = "starts") -> None:
        self.say(f"trial {number} {how}: {self.params(params)} (run {run_dir.name}: "
                 f"trainlab attach {run_dir.name})")
        self.emit({"trial": number, "state": "running", "params": params,
                   "run_id": run_dir.name, "run_dir": os.fspath(run_dir)})

    def trial_ended(self, r: TrialRow) -> None:
        value = f"{self.spec.metric} {format_number(r.value)}"
        if r.state == "complete":
            self.say(f"trial {r.number} complete: {value} at step {r.steps}")
        elif r.state == "pruned":
            why = "" if r.note.startswith("pruned") else f" ({r.note})"
            self.say(f"trial {r.number} pruned at step {r.steps} of {r.total_steps}{why}: "
                     f"{value}")
        else:
            self.say(f"trial {r.number} {r.state}: {r.note or 'no reason recorded'}")
        self.emit({"trial": r.number, **r.to_dict()})

    def finished(self, rows: list[TrialRow], best_config: Path | None) -> None:
        summary = totals(rows)
        best = best_row(rows)
        if not self.as_json:
            self.say(f"\n== sweep {self.spec.name}: {summary.describe()} ==")
            self.say(leaderboard_table(rows, self.keys, self.spec.metric, format_number))
            if best is not None:
                self.say(f"\nbest: trial {best.number}, {self.spec.metric} "
                         f"{format_number(best.value)}: {self.params(best.params)}")
            if best_config is not None:
                self.say(f"its config: {best_config} (trainlab run {best_config} --headless "
                         "trains it again)")
        self.emit({"totals": {"by_state": summary.by_state, "steps": summary.steps,
                              "planned": summary.planned, "saved": summary.saved},
                   "best": best.to_dict() if best is not None else None,
                   "best_config": os.fspath(best_config) if best_config else None})


def write_best_config(spec: SweepSpec, rows: list[TrialRow],
                      path: Path | None = None) -> Path | None:
    """The best trial's config as a TOML file (``<sweep dir>/best.toml`` by default),
    headed by where it came from; None before a trial completed."""
    best = best_row(rows)
    if best is None:
        return None
    config = spec.trial_config(best.params)
    path = path or spec.directory / BEST_FILE
    rundir.private_dirs(path.parent)
    header = (f"# The best trial of sweep {spec.name}: trial {best.number}, {spec.metric} "
              f"{format_number(best.value)} (run {best.run_id or '-'}).\n")
    path.write_text(header + config_mod.to_toml(config), encoding="utf-8")
    return path


class Sweep:
    """One sweep process's work on a study: ask, start, watch, tell what was lost."""

    def __init__(self, spec: SweepSpec, printer: SweepPrinter) -> None:
        self.spec = spec
        self.printer = printer
        self.study = open_study(spec)
        self.teller = teller(self.study)
        self.distributions = distributions(spec)
        self.engines: dict[int, TrialEngine] = {}
        self.host = host_name()
        self.stopping = False
        self.asked_out = False

    # -- trials of this machine that an earlier sweep process left --

    def recover(self) -> None:
        """Adopt the engines that outlived their sweep process; resume the trials whose
        engine stopped (from their checkpoint); give up those that cannot be."""
        from optuna.trial import TrialState

        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs = trial.user_attrs
            if attrs.get("host") != self.host or pid_alive(attrs.get("driver_pid")):
                continue  # another machine's, or another sweep process here watches it
            run_dir = Path(attrs.get("run_dir", ""))
            set_trial_attr(self.study, trial, "driver_pid",
                                                    os.getpid())
            if attrs.get("run_dir") and engine_alive(run_dir):
                pid = attrs.get("engine_pid")
                self.engines[trial.number] = TrialEngine(
                    trial.number, trial_id(trial), run_dir, pid if isinstance(pid, int) else 0)
                self.printer.trial_started(trial.number, trial.params, run_dir,
                                           "trains on (its engine outlived the sweep)")
            elif attrs.get("run_dir") and rundir.has_checkpoint(run_dir / rundir.CHECKPOINT_DIR):
                self._spawn(trial.number, trial_id(trial), run_dir, resume=True)
                self.printer.trial_started(trial.number, trial.params, run_dir,
                                           "resumes from its checkpoint")
            else:
                self._give_up(trial, "lost: its sweep process and engine ended before it "
                              "reported an end, with no checkpoint to resume")

    def _give_up(self, trial: Any, why: str) -> None:
        """Tell ``trial`` failed, out of the count, and queue its values again."""
        from optuna.trial import TrialState

        set_trial_attr(self.study, trial, EXCLUDED_ATTR, why)
        self.teller.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if trial.params:
            self.study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number})
        self.printer.trial_ended(row(get_trial(self.study, trial)))

    # -- new trials --

    def _wants_more(self) -> bool:
        from optuna.trial import TrialState

        if self.asked_out or self.stopping:
            return False
        trials = self.study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        return waiting or len(counted(trials)) < self.spec.trials

    def start_trials(self) -> None:
        while len(self.engines) < self.spec.parallel and self._wants_more():
            self._start_one()

    def _start_one(self) -> None:
        from optuna.trial import TrialState

        trial = self.study.ask(self.distributions)
        ahead = [t for t in counted(self.study.get_trials(deepcopy=False))
                 if t.number < trial.number]
        if len(ahead) >= self.spec.trials:  # another process asked for the last one first
            trial.set_user_attr(EXCLUDED_ATTR, "one trial too many: another sweep process "
                                "asked for the last one at the same time")
            self.teller.tell(trial.number, state=TrialState.FAIL)
            self.asked_out = True
            return
        trial.set_user_attr("host", self.host)
        trial.set_user_attr("driver_pid", os.getpid())
        params = dict(trial.params)
        try:
            config = self.spec.trial_config(params)
        except ConfigError as exc:
            trial.set_user_attr("error", f"the sampled values are not a valid config: {exc}")
            self.teller.tell(trial.number, state=TrialState.FAIL)
            self.printer.trial_ended(row(get_trial(self.study, trial)))
            return
        try:
            run_dir = self._new_run(trial, config)
            self._spawn(trial.number, trial_id(trial), run_dir, resume=False)
        except (OSError, StoreError) as exc:  # run.dir unwritable, a full disk
            trial.set_user_attr("error", f"its run could not be started: {exc}")
            self.teller.tell(trial.number, state=TrialState.FAIL)
            self.printer.trial_ended(row(get_trial(self.study, trial)))
            self.asked_out = True  # the next one would fail the same way
            return
        self.printer.trial_started(trial.number, params, run_dir)

    def _new_run(self, trial: Any, config: Config) -> Path:
        """The trial's run directory, its store saying which trial it is."""
        s = self.spec
        run_dir = catalog.new_run(config.run.dir, config,
                                  label=f"sweep {s.name} #{trial.number}")
        with store.RunStore.open(run_dir, write=True) as runs:
            runs.set_meta(**{TRIAL_META_KEY: {
                "study": s.name, "storage": s.storage_url, "trial_id": trial_id(trial),
                "number": trial.number, "metric": s.metric, "direction": s.direction,
                "value": s.value, "report_at": s.report_at, "pruner": s.pruner,
                "prune_startup": s.prune_startup, "prune_warmup": s.prune_warmup}})
        trial.set_user_attr("run_id", run_dir.name)
        trial.set_user_attr("run_dir", os.fspath(run_dir.resolve()))
        return run_dir

    def _spawn(self, number: int, trial_id: int, run_dir: Path, *, resume: bool) -> None:
        process = spawn_detached(run_dir, *(("--resume",) if resume else ()),
                                 module=TRIAL_MODULE)
        self.engines[number] = TrialEngine(number, trial_id, run_dir, process.pid, process)

    # -- watching --

    def reap(self) -> None:
        """Say how each trial whose engine ended did; a trial its engine left running in
        the study (it died, or a signal stopped it) is, unless the sweep itself is
        stopping (then the next sweep resumes it), told failed."""
        from optuna.trial import TrialState

        for number, engine in list(self.engines.items()):
            if engine.alive():
                continue
            del self.engines[number]
            trial = get_trial(self.study, engine.trial_id)
            if trial.state == TrialState.RUNNING:
                if self.stopping:
                    continue
                why = _run_ending(engine.run_dir)
                set_trial_attr(self.study, engine.trial_id, "error", why)
                self.teller.tell(number, state=TrialState.FAIL, skip_if_finished=True)
                trial = get_trial(self.study, engine.trial_id)
            self.printer.trial_ended(row(trial))

    def stop(self) -> None:
        """Stop every trial this process started or adopted, at their next step."""
        self.stopping = True
        for engine in self.engines.values():
            engine.stop()

    def run(self, stop_requested: threading.Event) -> None:
        self.recover()
        while True:
            if stop_requested.is_set() and not self.stopping:
                self.stop()
            self.reap()
            self.start_trials()
            if not self.engines:
                return
            if self.stopping:
                time.sleep(POLL_S)
            else:
                stop_requested.wait(POLL_S)


def _run_ending(run_dir: Path) -> str:
    """Why a trial's engine ended without telling the study, from its run's record."""
    try:
        summary = catalog.summarize(run_dir)
    except (OSError, ValueError) as exc:
        return f"its engine ended without a result ({exc}; see {run_dir / rundir.LOG_FILE})"
    return (f"its engine ended without a result: run {summary.status} ({summary.reason}; "
            f"see {run_dir / rundir.LOG_FILE})")


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Any:
    """The first SIGINT, SIGTERM or SIGHUP sets ``stop``; a second raises
    KeyboardInterrupt (the trials train on)."""
    received: list[int] = []

    def handle(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, handle) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_sweep(spec: SweepSpec, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    """Run the sweep until its study holds ``spec.trials`` trials (what an earlier run of
    it trained counts); returns the exit code."""
    printer = SweepPrinter(spec, as_json, out, err)
    try:
        sweep = Sweep(spec, printer)
    except SweepError as exc:
        print(f"trainlab: error: {exc}", file=err)
        return EXIT_BAD_INPUT
    for note in spec.notes:
        printer.note(note)
    printer.started(len([t for t in counted(sweep.study.get_trials(deepcopy=False))
                         if t.state.is_finished()]))
    # The sweep directory's lock says a sweep process of this machine works on it (the
    # app starts none then); a second process goes on without it.
    marker = EngineLock(spec.directory)
    with contextlib.suppress(RunBusy, StoreError):
        if not engine_alive(spec.directory):
            marker.acquire()
    try:
        return _run(sweep, printer, err)
    finally:
        marker.release()


def _run(sweep: Sweep, printer: SweepPrinter, err: TextIO) -> int:
    spec = sweep.spec
    stop = threading.Event()
    with _stop_on_signals(stop) as received:
        try:
            sweep.run(stop)
        except KeyboardInterrupt:
            left = ", ".join(str(n) for n in sweep.engines)
            print(f"sweep {spec.name}: trials {left} train on in the background; "
                  "trainlab sweep again waits for them", file=err, flush=True)
            return 128 + (received[0] if received else signal.SIGINT)
    rows = leaderboard(sweep.study)
    best_config = write_best_config(spec, rows)
    printer.finished(rows, best_config)
    if received:
        print(f"sweep {spec.name}: stopped by {signal.Signals(received[0]).name}; the "
              "stopped trials resume from their checkpoints with trainlab sweep again",
              file=err, flush=True)
        return 128 + received[0]
    return EXIT_OK if best_row(rows) is not None else EXIT_FAILED


def show_sweep(spec: SweepSpec, *, as_json: bool, out: TextIO, err: TextIO,
               best_to: str | None = None) -> int:
    """``--show``: the leaderboard as it stands; ``--best FILE``: write the best config
    (``-``: print it). Nothing trains."""
    try:
        study = open_study(spec, create=False)
    except SweepError as exc:
        print(f"trainlab: error: {exc}", file=err)
        return EXIT_BAD_INPUT
    rows = leaderboard(study)
    if best_to is not None:
        best = best_row(rows)
        if best is None:
            print(f"trainlab: error: sweep {spec.name} has no complete trial yet", file=err)
            return EXIT_FAILED
        if best_to == "-":
            out.write(config_mod.to_toml(spec.trial_config(best.params)))
        else:
            path = write_best_config(spec, rows, Path(best_to))
            print(f"wrote {path}: trial {best.number}, {spec.metric} "
                  f"{format_number(best.value)}", file=out)
        return EXIT_OK
    if as_json:
        print(json.dumps({"sweep": spec.name, "trials": [r.to_dict() for r in rows],
                          "totals": totals(rows).__dict__}, allow_nan=False,
                         default=str), file=out)
    else:
        print(f"sweep {spec.name}: {totals(rows).describe()}", file=out)
        print(leaderboard_table(rows, [d.key for d in spec.space], spec.metric,
                                format_number), file=out)
    return EXIT_OK

