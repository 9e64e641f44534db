"""A sweep trial's engine: a served run that reports to its Optuna trial.

``python -m trainlab.engine.trial RUN_DIR [--resume]`` is what ``trainlab sweep`` starts
for each trial, detached like every run's engine (``trainlab.core.serving``): the run is
a normal one (its store, checkpoints and socket; ``trainlab attach`` shows it), served by
``trainlab.engine.serve.serve``. Its store's meta ``sweep`` says which trial of which
study it is. Besides serving, this process

- reports the sweep's metric to the trial at every evaluation (``Trial.report``, keyed by
  the step, or by the epoch) and asks the pruner whether to go on; a trial the pruner
  stops gets a ``Stop`` at the next step boundary (a final evaluation and a checkpoint
  still happen; the run's record says it was pruned);
- tells the study how the trial ended: complete with its value (the last evaluation's,
  or the best one's), pruned (also when someone stopped the run by hand: its values so
  far are what it has), or failed (the run failed, or ended with no value). A run
  stopped by a signal (the sweep was interrupted) is left running in the study: the next
  ``trainlab sweep`` resumes it from its checkpoint (``--resume``).

The report and the pruner's verdict are taken on the engine's thread, at the evaluation:
the loop waits for them (milliseconds for an SQLite storage; an evaluation costs more),
so a pruned trial stops at the step it was judged at, not some steps later.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import sys
from pathlib import Path
from typing import Any

from trainlab.core import protocol, store
from trainlab.core.config import ConfigError
from trainlab.core.protocol import Command, Event
from trainlab.core.sweep import TRIAL_META_KEY
from trainlab.core.sweep_study import make_pruner, storage


class Reporter:
    """The run's events, as the trial's reports (``serve``'s ``show``: called on the
    engine's thread)."""

    def __init__(self, trial: Any, info: dict[str, Any], commands: queue.Queue[Command],
                 reported: set[int]) -> None:
        self.trial = trial
        self.info = info
        self.metric: str = info["metric"]
        self.maximize = info.get("direction") == "maximize"
        self.by_epoch = info.get("report_at") == "epoch"
        self.commands = commands
        self.reported = reported
        """The steps (or epochs) reported already: a resumed trial's earlier ones."""
        self.last: float | None = None
        self.best: float | None = None
        self.pruned_at: int | None = None
        self.stop_reason = ""
        self.failure = ""
        self.finished: protocol.RunFinished | None = None

    def __call__(self, event: Event) -> None:
        try:
            self._handle(event)
        except Exception as exc:  # the storage failed: training goes on, unjudged
            print(f"trial: reporting to the study failed: {exc}", file=sys.stderr,
                  flush=True)

    def _handle(self, event: Event) -> None:
        match event:
            case protocol.RunStarted():
                self.trial.set_user_attr("total_steps", event.total_steps)
            case protocol.EvalDone():
                self._on_eval(event)
            case protocol.StateChanged(state="finished" | "failed"):
                self.stop_reason = event.reason
            case protocol.EngineFailed():
                self.failure = event.message
            case protocol.RunFinished():
                self.finished = event

    def _on_eval(self, event: protocol.EvalDone) -> None:
        value = getattr(event, self.metric)
        if value is None:
            return
        value = float(value)
        self.last = value
        if math.isfinite(value) and (self.best is None or (
                value > self.best if self.maximize else value < self.best)):
            self.best = value
        key = event.epoch if self.by_epoch else event.step
        if key in self.reported or self.pruned_at is not None:
            return
        self.reported.add(key)
        self.trial.report(value, key)
        self.trial.set_user_attr("last_step", event.step)
        if self.trial.should_prune():
            self.pruned_at = event.step
            self.commands.put(protocol.Stop(
                f"pruned by sweep {self.info['study']} (trial {self.info['number']}) at "
                f"step {event.step}: {self.metric} {value:.4g}"))

    def outcome(self, signum: int | None) -> tuple[str, float | None, str]:
        """(state, value, note) to tell the study; state '' leaves the trial running."""
        finished = self.finished
        if signum is not None or finished is None:
            return "", None, "interrupted"
        if self.pruned_at is not None:
            return "pruned", None, f"pruned at step {self.pruned_at}"
        if finished.reason == "stopped":
            return "pruned", None, f"stopped: {self.stop_reason or 'by hand'}"
        if finished.reason in ("completed", "early_stopped"):
            value = self.best if self.info.get("value") == "best" else self.last
            if value is None or not math.isfinite(value):
                return "failed", None, (f"no finite {self.metric} was measured"
                                        if value is None else f"{self.metric} is {value}")
            return "complete", value, ""
        if finished.reason == "non_finite":
            return "failed", None, "the loss became non-finite"
        return "failed", None, self.failure or self.stop_reason or finished.reason


def _tell(study: Any, trial: Any, state: str, value: float | None, note: str,
          steps: int | None) -> None:
    from optuna.trial import TrialState

    if steps is not None:
        trial.set_user_attr("steps", steps)
    if note:
        trial.set_user_attr("error" if state == "failed" else "note", note)
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
              "failed": TrialState.FAIL}
    study.tell(trial, value if state == "complete" else None, state=states[state],
               skip_if_finished=True)


def main(argv: list[str] | None = None) -> int:
    """Serve the trial run in RUN_DIR and tell its study how it ended. Exit status as the
    served engine's (``trainlab.engine.serve.main``): 128 + a signal that stopped it, 2 when
    it cannot be served, else 0."""
    import optuna

    from trainlab.core import engine_lock
    from trainlab.engine.serve import AbortedBySignal, exit_status, load_start, serve

    parser = argparse.ArgumentParser(prog="python -m trainlab.engine.trial",
                                     description="Serve one sweep trial's run.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run's newest loadable checkpoint")
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir
    try:
        with store.RunStore.open(run_dir) as runs:
            info = runs.meta()[TRIAL_META_KEY]
        studies = storage(info["storage"])
        study = optuna.load_study(
            study_name=info["study"], storage=studies,
            sampler=optuna.samplers.RandomSampler(),  # the sweep process samples
            pruner=make_pruner(info["pruner"], info["prune_startup"], info["prune_warmup"]))
        trial = optuna.trial.Trial(study, info["trial_id"])
        reported = set(studies.get_trial(info["trial_id"]).intermediate_values)
    except Exception as exc:  # no meta, a storage that does not open
        print(f"trial: cannot serve {run_dir}: {exc}", file=sys.stderr, flush=True)
        return 2
    trial.set_user_attr("engine_pid", os.getpid())
    try:
        config, start_from, notes = load_start(run_dir, resume=args.resume)
    except (ConfigError, OSError, ValueError, KeyError) as exc:
        message = f"cannot serve {run_dir}: {exc}"
        print(f"trial: {message}", file=sys.stderr, flush=True)
        _tell(study, trial, "failed", None, message, None)
        return 2
    commands: queue.Queue[Command] = queue.Queue()
    reporter = Reporter(trial, info, commands, reported)
    try:
        finished, signum = serve(
            run_dir, config, show=reporter, start_from=start_from, notes=notes,
            commands=commands,
            on_signal=lambda name: print(f"trial: {name}: stopping after this step",
                                         file=sys.stderr, flush=True))
    except engine_lock.RunBusy as exc:
        print(f"trial: {exc}", file=sys.stderr, flush=True)
        return 2
    except AbortedBySignal as exc:
        print(f"trial: aborted by a second signal ({exc})", file=sys.stderr, flush=True)
        return 128 + exc.signum
    state, value, note = reporter.outcome(signum)
    if state:
        _tell(study, trial, state, value, note, finished.final.step)
        print(f"trial: {state}{f': {note}' if note else ''}", file=sys.stderr, flush=True)
    else:
        trial.set_user_attr("note", f"interrupted at step {finished.final.step}")
    return exit_status(signum)


if __name__ == "__main__":
    sys.exit(main())
