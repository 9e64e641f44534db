"""A lab, headless: its runs one after another, then a table that compares them.

``trainlab run --preset LAB --headless`` (or ``--json``) comes here from
``trainlab.cli.commands.cmd_run``. Each run trains exactly like a single headless run
(``trainlab.cli.commands.train_headless``: the same progress lines or JSON events, the same
Ctrl-C handling), under a header line naming it:

    == optimizers 2/8: opt-momentum (SGD with momentum 0.9, lr 0.01: ...) ==

then the comparison table: per run, how it ended, its steps, final training and
validation loss, validation accuracy, best validation loss and seconds.

With ``--json`` every event of every run is a JSON line, and before each run's events
comes one line ``{"lab": NAME, "variant": RUN, "index": I, "of": N}`` (``I`` counts
from 1; the line has no ``"event"`` key, which tells it from the events). No table
follows: the RunFinished events carry the same numbers.

Exit code: the worst of the runs' (``EXIT_SEVERITY``). Ctrl-C stops the current run at
a step boundary (it still evaluates and finishes) and the lab with it; the table then
shows the runs that trained.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from trainlab.cli.headless import event_printer, report_config_error, train_headless
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
from trainlab.core.labs import RESULT_COLUMNS, Lab, result_row

EXIT_SEVERITY: tuple[int, ...] = (
    EXIT_OK, EXIT_NON_FINITE, EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED)
"""The CLI's exit codes from least to most severe; a lab exits with its worst run's.
A non-finite loss can be the very lesson of a run (a too-large init or learning rate),
so it ranks below a run that could not be built or crashed; an interrupt ranks above
everything: the lab did not finish."""

@dataclass(frozen=True)
class RunOutcome:
    """How one run of a lab ended."""

    name: str
    exit_code: int
    finished: protocol.RunFinished | None
    """None when a second Ctrl-C aborted the run before it could finish."""


def variant_header(lab: Lab, index: int) -> dict[str, Any]:
    """The JSON line before the events of run ``index`` (counting from 1) of ``lab``."""
    return {"lab": lab.name, "variant": lab.variants[index - 1].name, "index": index,
            "of": len(lab.variants)}


def stopped_by_signal(code: int) -> bool:
    """Was the run stopped by a signal (exit status 128 + its number: Ctrl-C, SIGTERM)?"""
    return code > 128


def worst_exit_code(codes: Iterable[int]) -> int:
    """The most severe of ``codes`` by ``EXIT_SEVERITY`` (EXIT_OK when there are none); a
    stop by any signal ranks as an interrupt, and is returned as it was."""
    return max(codes, key=lambda code: EXIT_SEVERITY.index(
        EXIT_INTERRUPTED if stopped_by_signal(code) else code), default=EXIT_OK)


def format_comparison(outcomes: Sequence[RunOutcome]) -> str:
    """The runs side by side as an aligned text table, one row per run."""
    rows: list[tuple[str, ...]] = [RESULT_COLUMNS]
    for outcome in outcomes:
        if outcome.finished is None:
            rows.append((outcome.name, "aborted", *["-"] * (len(RESULT_COLUMNS) - 2)))
        else:
            rows.append(result_row(outcome.name, outcome.finished))
    widths = [max(len(row[i]) for row in rows) for i in range(len(RESULT_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                  for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows)


def run_lab(lab: Lab, config_path: str | None, overrides: Sequence[str], *, as_json: bool,
            out: TextIO, err: TextIO) -> int:
    """Train every run of ``lab`` in turn and compare them; returns the exit code.

    Each run is the lab's variant over the config file at ``config_path`` (or the
    defaults), with ``overrides`` (``--set`` strings) on top. Every run's config is
    checked before the first one trains, so a bad override fails at once (exit 2).
    """
    try:
        base = config_mod.load(config_path) if config_path else Config()
        runs = lab.configs(base, overrides)
    except ConfigError as exc:
        show = event_printer(as_json, out, err)
        return report_config_error(exc, show, err, as_json)

    outcomes: list[RunOutcome] = []
    interrupted = False
    for index, (variant, (name, config)) in enumerate(zip(lab.variants, runs, strict=True), 1):
        if as_json:
            print(json.dumps(variant_header(lab, index)), file=out, flush=True)
        else:
            gap = "\n" if index > 1 else ""
            print(f"{gap}== {lab.name} {index}/{len(runs)}: {name} ({variant.summary}) ==",
                  file=out, flush=True)
        show = event_printer(as_json, out, err)
        try:
            result = train_headless(config, show, err)
        except KeyboardInterrupt:  # Ctrl-C in the moment before the run's own handler
            print("trainlab: aborted", file=err)
            outcomes.append(RunOutcome(name, EXIT_INTERRUPTED, None))
            interrupted = True
            break
        if result.reader_gone:  # `| head`: the reader left, nothing more to say
            return EXIT_OK
        outcomes.append(RunOutcome(name, result.exit_code, result.finished))
        if stopped_by_signal(result.exit_code):
            interrupted = True
            break

    if not as_json:
        print(f"\n== {lab.name}: {len(outcomes)} of {len(runs)} runs ==", file=out)
        print(format_comparison(outcomes), file=out, flush=True)
        if interrupted and len(outcomes) < len(runs):
            rest = ", ".join(name for name, _ in runs[len(outcomes):])
            print(f"stopped with Ctrl-C; not run: {rest}", file=out, flush=True)
    return worst_exit_code(outcome.exit_code for outcome in outcomes)
