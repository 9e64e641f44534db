"""Every event reaches every dispatcher: one idiom, checked.

Code that reacts to protocol events dispatches with a ``match`` over the event classes
ending in ``case _: assert_never(event)`` (``trainlab.core.protocol``). A type checker
then names every dispatcher an added or renamed event would miss; these tests say the
same without one: statically (each such match names every ``Event`` class, and the
known dispatchers are such matches), and by running a sample of every event class
through the dispatchers that need no screen.
"""

from __future__ import annotations

import ast
import io
import typing
from pathlib import Path

import pytest

from tests.fake_engine import metrics, snapshot, started
from trainlab.cli.headless import ProgressPrinter
from trainlab.core import catalog, protocol, store
from trainlab.core.config import Config
from trainlab.core.protocol import EVENT_TYPES, EVENTS
from trainlab.doctor.detectors import Diagnostics
from trainlab.doctor.detectors.registry import DETECTORS, READ_EVENTS
from trainlab.engine.control import RunCommand
from trainlab.tui.bridge import ServedEngine
from trainlab.tui.state import RunState

PACKAGE = Path(__file__).resolve().parent.parent / "trainlab"

DISPATCHERS = {
    # module path under trainlab/ -> functions (Class.method) that dispatch on events
    "core/store.py": {"RunStore._derive", "_step_of"},
    "tui/state.py": {"RunState.apply"},
    "tui/bridge.py": {"ServedEngine._note_ending"},
    "tui/app.py": {"TrainlabApp._react"},
    "cli/headless.py": {"ProgressPrinter.__call__"},
    "doctor/detectors/__init__.py": {"Diagnostics._fold"},
}
"""Every dispatcher over events. (The engine emits events and dispatches commands:
``test_the_loop_dispatches_every_command`` checks those.)"""


def _class_names(pattern: ast.pattern) -> set[str]:
    """The class names a case pattern matches on (``protocol.X`` and ``X`` alike)."""
    names: set[str] = set()
    for node in ast.walk(pattern):
        if isinstance(node, ast.MatchClass):
            cls = node.cls
            names.add(cls.attr if isinstance(cls, ast.Attribute) else ast.unparse(cls))
    return names


def _ends_in_assert_never(match: ast.Match) -> bool:
    last = match.cases[-1]
    return (isinstance(last.pattern, ast.MatchAs) and last.pattern.pattern is None
            and len(last.body) == 1 and isinstance(last.body[0], ast.Expr)
            and isinstance(last.body[0].value, ast.Call)
            and ast.unparse(last.body[0].value.func).endswith("assert_never"))


def exhaustive_matches(path: Path) -> dict[str, list[set[str]]]:
    """Function (``Class.method`` or ``function``) -> the class names of each of its
    matches that end in ``case _: assert_never(...)``."""
    found: dict[str, list[set[str]]] = {}

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, [*scope, child.name])
            elif isinstance(child, ast.Match) and _ends_in_assert_never(child):
                names = set().union(*(_class_names(case.pattern) for case in child.cases))
                found.setdefault(".".join(scope), []).append(names)
                visit(child, scope)
            else:
                visit(child, scope)

    visit(ast.parse(path.read_text(), filename=str(path)), [])
    return found


def test_every_exhaustive_match_over_events_names_every_event() -> None:
    events = set(EVENTS)
    checked = 0
    for path in PACKAGE.rglob("*.py"):
        for function, matches in exhaustive_matches(path).items():
            for names in matches:
                if names & events:  # a match over events, not over something else
                    checked += 1
                    where = f"{path.relative_to(PACKAGE)}: {function}"
                    assert events - names == set(), f"{where} has no case for these"
                    assert names - events == set(), f"{where} names non-events"
    assert checked >= sum(len(functions) for functions in DISPATCHERS.values())


@pytest.mark.parametrize(("module", "functions"), sorted(DISPATCHERS.items()))
def test_the_dispatchers_are_exhaustive_matches(module: str, functions: set[str]) -> None:
    matches = exhaustive_matches(PACKAGE / module)
    for function in functions:
        assert function in matches, f"{module}: {function} is not a match ending in " \
                                    "assert_never"
        assert all(names == set(EVENTS) for names in matches[function])


def test_the_loop_dispatches_every_command() -> None:
    # The loop's own commands (pause, step, stop) in Control.apply, the ones that change
    # the run in Trainer._apply: together every Command, each once.
    commands = {cls.__name__ for cls in typing.get_args(protocol.Command)}
    (control,) = exhaustive_matches(PACKAGE / "engine/control.py")["Control.apply"]
    (trainer,) = exhaustive_matches(PACKAGE / "engine/loop.py")["Trainer._apply"]
    run_commands = {cls.__name__ for cls in typing.get_args(RunCommand)}
    assert control == commands and trainer == run_commands
    assert len(commands) == 8 and run_commands < commands


# --- at run time: one sample of every event class ------------------------------------


def samples() -> list[protocol.Event]:
    """One plausible instance of every event class, in a run's order."""
    config = Config()
    final = protocol.FinalMetrics(20, 1, 0.3, 0.4, 0.9, 0.4, 20, 1.0)
    return [
        started(config),
        protocol.Attached("20261201-210000-ab12", 1, "control", 3),
        protocol.ControlChanged(1),
        protocol.StateChanged("running", 0, "started"),
        metrics(1, 10),
        snapshot(10),
        protocol.EvalDone(10, 1, 0.4, 0.9, 0.35, 0.4),
        protocol.HyperChanged(10, "optim.lr", 1e-3, 5e-4, "fix: divergence"),
        protocol.CommandRejected("Step", "not paused", 10),
        protocol.CheckpointSaved(10, "checkpoints/step_10.pt"),
        protocol.Notice(10, "info", "note"),
        protocol.NonFiniteDetected(12, "head", "activation", "went inf"),
        protocol.AlertRaised(12, "non_finite", "critical", ("head",), {"loss": 1.0},
                             "the loss went inf", ()),
        protocol.LrFound(12, (1e-4, 1e-3), (2.0, 1.5), 1e-3, "steepest"),
        protocol.EngineFailed(20, "internal", "boom"),
        protocol.RunFinished("completed", final),
    ]


def test_the_samples_cover_every_event_class() -> None:
    classes = [type(e) for e in samples()]
    assert len(classes) == len(set(classes)) and set(classes) == set(EVENT_TYPES)


def test_every_event_folds_into_the_run_state() -> None:
    state = RunState(Config())
    for event in samples():
        state.apply(event)
    assert state.finished is not None and state.lr_found is not None


def test_every_event_passes_the_progress_printer() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = ProgressPrinter(out, err)
    for event in samples():
        printer(event)
    assert "completed" in out.getvalue() and "boom" in err.getvalue()


def test_every_event_is_recorded_with_its_rows(tmp_path: Path) -> None:
    config = Config().with_value("run.dir", str(tmp_path))
    run_dir = catalog.new_run(tmp_path, config)
    with store.RunStore.open(run_dir, write=True) as runs:
        for event in samples():
            runs.record(event)
        runs.commit()
        recorded = [type(e) for _, e in runs.events()]
    assert set(recorded) == set(EVENT_TYPES)


def test_every_event_is_read_for_the_end_of_a_run() -> None:
    engine = ServedEngine()
    for event in samples():
        engine._note_ending(event)
    assert engine._finished


def test_the_detectors_registry_is_keyed_by_the_classes_the_fold_reports() -> None:
    assert {reads for reads, _ in DETECTORS.values()} == set(READ_EVENTS)
    diagnostics = Diagnostics(Config())
    reported = {type(e): diagnostics._fold(e) for e in samples()}
    assert {cls for cls, reads in reported.items() if reads is not None} == set(READ_EVENTS)
    assert all(reads in (None, cls) for cls, reads in reported.items())
    for event in samples():  # and observe takes each without complaint
        Diagnostics(Config()).observe(event)
