"""A sweep's study in Optuna: its storage and what it keeps, the leaderboard read back,
and a trial's reports (the trial engine's reporter, fed events by hand: no torch)."""

from __future__ import annotations

import math
import queue
import textwrap
import tomllib

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from trainlab.core import protocol, sweep
from trainlab.core.sweep_study import (
    EXCLUDED_ATTR,
    best_row,
    counted,
    leaderboard,
    leaderboard_table,
    open_study,
    totals,
)
from trainlab.core.text import format_number
from trainlab.engine.trial import Reporter

optuna.logging.set_verbosity(optuna.logging.WARNING)

SWEEP = """
    [run]
    dir = "{root}"
    [sweep]
    name = "lr"
    trials = 4
    [sweep.space]
    "optim.lr" = {{ low = 1e-4, high = 1e-1, log = true }}
"""


def spec_in(tmp_path, text: str = SWEEP) -> sweep.SweepSpec:
    return sweep.from_dict(tomllib.loads(textwrap.dedent(text.format(root=tmp_path))), "x")


@pytest.mark.slow  # creating an Optuna database takes seconds
def test_the_study_keeps_its_space_and_refuses_a_changed_one(tmp_path):
    spec = spec_in(tmp_path)
    with pytest.raises(sweep.SweepError, match="no sweep 'lr'"):
        open_study(spec, create=False)
    study = open_study(spec)
    study.enqueue_trial({"optim.lr": 0.01})
    study.tell(study.ask({"optim.lr": FloatDistribution(1e-4, 1e-1, log=True)}), 0.5)
    db = tmp_path / "sweeps" / "lr" / "study.db"
    assert db.stat().st_mode & 0o777 == 0o600
    assert (db.parent.stat().st_mode & 0o777) == 0o700
    # The same sweep again: the same study (what optuna-dashboard opens too).
    again = optuna.load_study(study_name="lr", storage=spec.storage_url)
    assert [(t.params, t.value) for t in again.trials] == [({"optim.lr": 0.01}, 0.5)]
    assert open_study(spec).trials[0].params == {"optim.lr": 0.01}
    changed = spec_in(tmp_path, SWEEP.replace("high = 1e-1", "high = 0.5").replace(
        "[sweep]", "[model]\nwidth = 64\n[sweep]"))
    with pytest.raises(sweep.SweepError) as error:
        open_study(changed)
    message = str(error.value)
    assert "started with another experiment" in message
    assert 'sweep.space."optim.lr"' in message and "model.width 128 -> 64" in message


def _study(direction: str = "minimize") -> optuna.Study:
    study = optuna.create_study(direction=direction)
    dist = {"optim.lr": FloatDistribution(1e-4, 1e-1, log=True)}

    def add(state: TrialState, value: float | None, lr: float, **attrs) -> None:
        study.add_trial(create_trial(
            state=state, value=value, params={"optim.lr": lr}, distributions=dist,
            user_attrs=attrs, intermediate_values={10: 0.9, 20: value or 0.8}
            if state != TrialState.FAIL else {}))

    add(TrialState.COMPLETE, 0.3, 0.01, steps=100, total_steps=100, run_id="b")
    add(TrialState.PRUNED, 0.7, 0.001, steps=20, total_steps=100, note="pruned at step 20")
    add(TrialState.COMPLETE, 0.2, 0.02, steps=100, total_steps=100, run_id="a")
    add(TrialState.FAIL, None, 0.09, steps=30, error="the loss became non-finite")
    add(TrialState.FAIL, None, 0.05, **{EXCLUDED_ATTR: "lost"})
    return study


def test_the_leaderboard_puts_the_best_complete_trial_first():
    rows = leaderboard(_study())
    assert [(r.number, r.state) for r in rows] == [
        (2, "complete"), (0, "complete"), (1, "pruned"), (3, "failed"), (4, "excluded")]
    assert best_row(rows) is rows[0] and rows[0].run_id == "a"
    assert rows[2].value == 0.7 and rows[3].note == "the loss became non-finite"
    assert len(counted(_study().trials)) == 4  # the excluded one does not count
    summary = totals(rows)
    assert (summary.steps, summary.planned) == (220, 300)
    assert summary.describe() == ("5 trials: 2 complete, 1 pruned, 1 failed, 1 excluded; "
                                  "220 of 300 steps trained (pruning saved 27%)")
    table = leaderboard_table(rows, ["optim.lr"], "val_loss", format_number).splitlines()
    assert table[0].split() == ["trial", "state", "optim.lr", "val_loss", "steps", "run"]
    assert table[1].split() == ["2", "complete", "0.02", "0.2", "100", "a"]
    assert table[3].split() == ["1", "pruned", "0.001", "0.7", "20/100", "-"]
    assert rows[0].to_dict()["params"] == {"optim.lr": 0.02}


def test_a_maximized_metric_ranks_the_largest_first():
    rows = leaderboard(_study("maximize"))
    assert [r.number for r in rows[:2]] == [0, 2]


# --- the trial's reports ----------------------------------------------------------------


def _reporting(metric: str = "val_loss", pruner: optuna.pruners.BasePruner | None = None,
               **info):
    study = optuna.create_study(
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=1))
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.2,
                                 intermediate_values={5: 0.5, 10: 0.2}))
    trial = study.ask()
    commands: queue.Queue = queue.Queue()
    reporter = Reporter(trial, {"metric": metric, "study": "s", "number": trial.number,
                                **info}, commands, set())
    return study, trial, commands, reporter


def _eval(step: int, val_loss: float, epoch: int = 0, accuracy: float | None = None):
    return protocol.EvalDone(step, epoch, val_loss, accuracy, val_loss, val_loss)


def _finished(reason: str, step: int = 10) -> protocol.RunFinished:
    return protocol.RunFinished(reason, protocol.FinalMetrics(
        step, 1, 0.1, 0.1, None, 0.1, step, 1.0))


def test_a_trial_reports_every_evaluation_and_stops_when_pruned():
    study, trial, commands, reporter = _reporting()
    reporter(protocol.RunStarted({}, protocol.ModelInfo("mlp", (), 0),
                                 protocol.DatasetInfo("d", "classification", (2,), 2, 8, 2,
                                                      ("0", "1"), (4, 4), (1, 1)),
                                 "cross_entropy", "cpu", 1, 5, 10))
    reporter(_eval(5, 0.4))
    assert commands.empty()  # better than the median at step 5
    reporter(_eval(10, 0.6))
    stop = commands.get_nowait()
    assert isinstance(stop, protocol.Stop) and "pruned by sweep s" in stop.why
    assert "at step 10" in stop.why
    reporter(_eval(12, 0.61))  # the final evaluation of the stopped run: not reported
    frozen = study.trials[trial.number]
    assert frozen.intermediate_values == {5: 0.4, 10: 0.6}
    assert frozen.user_attrs["total_steps"] == 10 and frozen.user_attrs["last_step"] == 10
    reporter(_finished("stopped", 12))
    assert reporter.outcome(None) == ("pruned", None, "pruned at step 10")


@pytest.mark.parametrize(("events", "signum", "outcome"), [
    ([_eval(5, 0.4), _eval(10, 0.3), _finished("completed")], None, ("complete", 0.3, "")),
    ([_eval(5, 0.3), _eval(10, 0.35), _finished("early_stopped")], None,
     ("complete", 0.35, "")),
    ([_eval(5, 0.4), protocol.StateChanged("finished", 7, "stopped from the app"),
      _finished("stopped", 7)], None, ("pruned", None, "stopped: stopped from the app")),
    ([_eval(5, 0.4), _finished("stopped", 7)], 15, ("", None, "interrupted")),
    ([_finished("non_finite", 3)], None, ("failed", None, "the loss became non-finite")),
    ([protocol.EngineFailed(0, "user_code", "data.factory m:f raised"),
      _finished("failed", 0)], None, ("failed", None, "data.factory m:f raised")),
    ([_finished("completed")], None, ("failed", None, "no finite val_loss was measured")),
    ([_eval(5, math.nan), _finished("completed")], None, ("failed", None, "val_loss is nan")),
])
def test_how_a_trial_ended_is_what_the_study_is_told(events, signum, outcome):
    _, _, _, reporter = _reporting(pruner=optuna.pruners.NopPruner())
    for event in events:
        reporter(event)
    assert reporter.outcome(signum) == outcome


def test_the_best_value_and_a_maximized_metric_report_by_epoch():
    _, trial, _, reporter = _reporting(
        "val_accuracy", value="best", direction="maximize", report_at="epoch")
    for step, epoch, accuracy in ((5, 1, 0.8), (10, 2, 0.9), (12, 2, 0.85)):
        reporter(_eval(step, 0.1, epoch, accuracy))
    reporter(_finished("completed", 12))
    assert reporter.outcome(None) == ("complete", 0.9, "")
    # The last epoch's evaluation and the final one share epoch 2: reported once.
    assert trial.study.trials[trial.number].intermediate_values == {1: 0.8, 2: 0.9}
