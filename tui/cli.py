"""``trainlab``: the app, or one of the engine's headless commands.

``trainlab [CONFIG.toml] [--preset NAME] [--set key=value ...]`` opens the app on a
run (the default experiment without arguments); ``trainlab run`` without
``--headless`` does the same. The other subcommands (``run --headless``, ``probe``,
``doctor``, ``lr-find``, ``presets``, ``config``) belong to ``engine.cli`` and are
passed straight to it, so they never load Textual, and the app never loads torch.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from engine import cli as engine_cli
from engine import config as config_mod
from engine.config import Config, ConfigError
from engine.labs import find_lab

if TYPE_CHECKING:
    from tui.lab_session import LabSession

APP_DESCRIPTION = """\
Open the trainlab app on a run: the default experiment (an MLP on scikit-learn's
digits), a CONFIG.toml, or a built-in preset, with --set overrides. Training starts
at once; press ? in the app for the keys. A lab (--preset LAB) opens on its
explanation; Enter trains its runs one after another, compared on one chart.

Headless commands: trainlab run --headless | probe | doctor | lr-find | presets |
config (trainlab COMMAND -h for each)."""


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


def _wants_app(argv: list[str]) -> bool:
    if not argv or argv[0] not in engine_cli.COMMANDS:
        return True
    return argv[0] == "run" and not {"--headless", "--json", "-h", "--help"} & set(argv)


def lab_session(args: argparse.Namespace) -> LabSession | None:
    """The lab ``--preset`` names, with its runs; None when it names no lab.

    Each run is the lab's variant over the base config (CONFIG.toml or the defaults),
    with the ``--set`` overrides applied last, so that they hold in every run even
    where the variant sets the same field: ``Lab.configs``, exactly as the headless
    lab (``engine.lab_runner``) builds them, so the app accepts what it accepts.

    Raises:
        ConfigError: a bad CONFIG.toml or override (naming the lab, the run, the
            field and the value).
    """
    from tui.lab_session import LabSession

    lab = find_lab(args.preset) if args.preset else None
    if lab is None:
        return None
    base = config_mod.load(args.config) if args.config else Config()
    return LabSession(lab, lab.configs(base, args.overrides))


def run_app(argv: list[str]) -> int:
    """Parse the app's arguments, load the config (or a lab), run the app until it quits."""
    args = build_app_parser().parse_args(argv)
    try:
        lab = lab_session(args)
        config = engine_cli.config_from_args(args) if lab is None else lab.runs[0][1]
    except ConfigError as exc:
        print(f"trainlab: error: {exc}", file=sys.stderr)
        return engine_cli.EXIT_BAD_INPUT
    from tui.app import TrainlabApp
    from tui.bridge import ThreadEngine

    app = TrainlabApp(config, engine_factory=ThreadEngine, lab=lab) if args.inline \
        else TrainlabApp(config, lab=lab)
    result = app.run()
    return result if isinstance(result, int) else engine_cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trainlab`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if _wants_app(argv):
        return run_app(argv[1:] if argv and argv[0] == "run" else argv)
    return engine_cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
