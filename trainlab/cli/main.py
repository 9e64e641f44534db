"""``trainlab``: the app, or one of the engine's headless commands.

``trainlab [CONFIG.toml] [--preset NAME] [--set key=value ...]`` opens the app on a
run (the default experiment without arguments); ``trainlab run`` without
``--headless`` does the same. The other subcommands (``run --headless``, ``probe``,
``doctor``, ``lr-find``, ``presets``, ``config``) belong to ``trainlab.cli.commands`` and are
passed straight to it, so they never load Textual, and the app never loads torch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from trainlab.cli import commands as engine_cli
from trainlab.core import config as config_mod
from trainlab.core import exits
from trainlab.core.config import Config, ConfigError
from trainlab.core.labs import find_lab

if TYPE_CHECKING:
    from trainlab.tui.app import TrainlabApp
    from trainlab.tui.lab_session import LabSession

APP_DESCRIPTION = """\
Open the trainlab app on a run: the default experiment (an MLP on scikit-learn's
digits), a CONFIG.toml, or a built-in preset, with --set overrides. Training starts
at once; press ? in the app for the keys. A lab (--preset LAB) opens on its
explanation; Enter trains its runs one after another, compared on one chart.

Runs outlive the app: q leaves a run training in the background; trainlab attach
[RUN] opens the app on it again, trainlab runs lists the runs, trainlab resume RUN
and trainlab fork RUN [--from STEP] [--set ...] go on from a checkpoint (in the app,
or with --headless / --detach without it).

Headless commands (trainlab COMMAND -h for each):
  run --headless, run --detach, runs, resume, fork, export,
  sweep --headless, probe, doctor, lr-find, presets, config"""


def build_app_parser() -> argparse.ArgumentParser:
    """The parser for opening the app."""
    parser = argparse.ArgumentParser(
        prog="trainlab", description=APP_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    engine_cli.add_config_args(parser)
    parser.add_argument("--inline", action="store_true",
                        help="train in a thread of the app's process instead of a child "
                        "process (slower for small models; for debugging)")
    return parser


APP_COMMANDS = ("run", "resume", "fork", "sweep")
"""Subcommands that open the app unless told to train without it."""
WITHOUT_APP = {"--headless", "--json", "--detach", "-h", "--help", "--show", "--best"}


def _wants_app(argv: list[str]) -> bool:
    if not argv or argv[0] == "attach" or argv[0] not in engine_cli.COMMANDS:
        return True
    return argv[0] in APP_COMMANDS and not WITHOUT_APP & set(argv)


def lab_session(args: argparse.Namespace) -> LabSession | None:
    """The lab ``--preset`` names, with its runs; None when it names no lab.

    Each run is the lab's variant over the base config (CONFIG.toml or the defaults),
    with the ``--set`` overrides applied last, so that they hold in every run even
    where the variant sets the same field: ``Lab.configs``, exactly as the headless
    lab (``trainlab.cli.lab_runner``) builds them, so the app accepts what it accepts.

    Raises:
        ConfigError: a bad CONFIG.toml or override (naming the lab, the run, the
            field and the value).
    """
    from trainlab.tui.lab_session import LabSession

    lab = find_lab(args.preset) if args.preset else None
    if lab is None:
        return None
    base = config_mod.load(args.config) if args.config else Config()
    return LabSession(lab, lab.configs(base, args.overrides))


def _finish(app: TrainlabApp) -> int:
    """Run the app until it quits; say where a run it left training goes on."""
    result = app.run()
    if app.detached_run:
        print(f"run {app.detached_run} trains on in the background: trainlab attach "
              f"{app.detached_run} shows it again; trainlab runs lists the runs")
    return result if isinstance(result, int) else exits.EXIT_OK


APP_MAX_EPOCHS = 3000
"""The app's default experiment trains this many epochs (1-3 minutes on a CPU) instead
of the config's 20 (about 3 s, over before a newcomer has tried a key): long enough to
steer it. ``trainlab run --headless`` and any CONFIG, preset or run length given keep
the config's own."""

LENGTH_KEYS = ("run.max_epochs", "run.max_steps")


def app_config(args: argparse.Namespace) -> Config:
    """The config the app trains: CONFIG, --preset and --set as everywhere, except that
    the bare default experiment runs ``APP_MAX_EPOCHS`` (a length set wins)."""
    config = engine_cli.config_from_args(args)
    sets_length = any(override.partition("=")[0].strip() in LENGTH_KEYS
                      for override in args.overrides)
    if args.config or args.preset or sets_length:
        return config
    return config.with_value("run.max_epochs", APP_MAX_EPOCHS)


def run_app(argv: list[str]) -> int:
    """Parse the app's arguments, load the config (or a lab), run the app until it quits."""
    args = build_app_parser().parse_args(argv)
    try:
        lab = lab_session(args)
        config = app_config(args) if lab is None else lab.runs[0][1]
    except ConfigError as exc:
        print(f"trainlab: error: {exc}", file=sys.stderr)
        return exits.EXIT_BAD_INPUT
    from trainlab.engine.host import ThreadEngine
    from trainlab.tui.app import TrainlabApp

    app = TrainlabApp(config, engine_factory=ThreadEngine, lab=lab) if args.inline \
        else TrainlabApp(config, lab=lab)
    return _finish(app)


def build_attach_parser() -> argparse.ArgumentParser:
    """``trainlab attach [RUN] [--view] [--dir DIR]``."""
    parser = argparse.ArgumentParser(
        prog="trainlab attach",
        description="Open the app on a run that trains in the background (or on a past "
        "run, from its store): its history from the run's store, live events from its "
        "engine. One app controls a run at a time; another one views it until it takes "
        "control (t). q leaves the run training.")
    engine_cli.add_run_args(parser, default="the newest run that trains, else the newest")
    parser.add_argument("--view", action="store_true",
                        help="only watch: never steer the run (t still takes control)")
    return parser


def attach_app(run_dir: Path, role: str = "control") -> int:
    """The app on the run in ``run_dir``; a restart (r) there starts a new run."""
    from trainlab.core import rundir
    from trainlab.tui.app import TrainlabApp
    from trainlab.tui.bridge import ServedEngine

    try:
        config = rundir.run_config(run_dir)
    except (ConfigError, OSError) as exc:
        print(f"trainlab: error: run {run_dir.name}: {exc}", file=sys.stderr)
        return exits.EXIT_BAD_INPUT
    engines: list[ServedEngine] = [ServedEngine(run_dir, role=role)]

    def engine_factory() -> ServedEngine:
        return engines.pop() if engines else ServedEngine()

    return _finish(TrainlabApp(config, engine_factory=engine_factory))


def _newest_live(root: str) -> Path:
    """Without a RUN: the newest run that trains (or is paused), else the newest run."""
    from trainlab.core import catalog
    live = [s for s in catalog.list_runs(root) if s.status in ("running", "paused")]
    return live[0].path if live else catalog.find_run(root, None)


def run_attach(argv: list[str]) -> int:
    """``trainlab attach``: find the run, open the app on it."""
    from trainlab.core import catalog, rundir
    args = build_attach_parser().parse_args(argv)
    try:
        run_dir = catalog.find_run(args.dir, args.run) if args.run else _newest_live(args.dir)
    except rundir.RunNotFound as exc:
        print(f"trainlab: error: {exc}", file=sys.stderr)
        return exits.EXIT_BAD_INPUT
    return attach_app(run_dir, "view" if args.view else "control")


def run_continued(argv: list[str]) -> int:
    """``trainlab resume`` / ``fork`` in the app: the engine's own command starts the
    run in the background (it loads the checkpoint, so torch stays out of this
    process), then the app attaches to it."""
    started = subprocess.run([sys.executable, "-m", "trainlab.cli", *argv, "--detach", "--json"],
                             stdout=subprocess.PIPE, text=True, check=False)
    if started.returncode != exits.EXIT_OK:
        return started.returncode  # its error is on stderr already
    try:
        run_dir = Path(json.loads(started.stdout.strip().splitlines()[-1])["run_dir"])
    except (ValueError, IndexError, KeyError) as exc:
        print(f"trainlab: error: the engine's answer was unreadable ({exc}): "
              f"{started.stdout[-200:]!r}", file=sys.stderr)
        return exits.EXIT_FAILED
    return attach_app(run_dir)


SWEEP_LOG = "sweep.log"
"""``trainlab sweep`` in the app: the sweep process's output, in the sweep's directory."""


def build_sweep_parser() -> argparse.ArgumentParser:
    """``trainlab sweep SWEEP.toml [--set ...]``: the sweep in the app."""
    parser = argparse.ArgumentParser(
        prog="trainlab sweep",
        description="Run a sweep in the background and open the app on its leaderboard "
        "(trainlab sweep -h --headless lists the sweep file's settings). q leaves the "
        "sweep running; the same command opens it again.")
    parser.add_argument("sweep_file", metavar="SWEEP.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE")
    return parser


def run_sweep_app(argv: list[str]) -> int:
    """``trainlab sweep SWEEP.toml``: start the sweep's process in the background (unless
    one of this machine works on it already), then the app on its leaderboard."""
    from trainlab.core import rundir, sweep
    from trainlab.core.engine_lock import engine_alive
    from trainlab.tui.app import TrainlabApp
    from trainlab.tui.sweep_session import SweepSession

    args = build_sweep_parser().parse_args(argv)
    try:
        spec = sweep.load(args.sweep_file, args.overrides)
    except ConfigError as exc:
        print(f"trainlab: error: {exc}", file=sys.stderr)
        return exits.EXIT_BAD_INPUT
    if not engine_alive(spec.directory):
        rundir.private_dirs(spec.directory)
        log = spec.directory / SWEEP_LOG
        rundir.private_file(log, create=True)
        sets = [word for key in args.overrides for word in ("--set", key)]
        with open(log, "ab") as out:
            subprocess.Popen([sys.executable, "-m", "trainlab.cli", "sweep", args.sweep_file,
                              "--headless", *sets], stdin=subprocess.DEVNULL, stdout=out,
                             stderr=out, start_new_session=True, close_fds=True)
    result = _finish(TrainlabApp(spec.base, sweep=SweepSession(spec)))
    if engine_alive(spec.directory):
        print(f"sweep {spec.name} goes on in the background (its output: "
              f"{spec.directory / SWEEP_LOG}); trainlab sweep {args.sweep_file} shows it "
              "again")
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trainlab`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if _wants_app(argv):
        if argv and argv[0] == "attach":
            return run_attach(argv[1:])
        if argv and argv[0] == "sweep":
            return run_sweep_app(argv[1:])
        if argv and argv[0] in ("resume", "fork"):
            return run_continued(argv)
        return run_app(argv[1:] if argv and argv[0] == "run" else argv)
    return engine_cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
