"""``trainlab``: which arguments open the app and which go to the headless commands."""

from __future__ import annotations

import pytest

from trainlab.cli import main as cli
from trainlab.core.config import Config


@pytest.mark.parametrize(("argv", "app"), [
    ([], True),
    (["my.toml"], True),
    (["--preset", "init-small"], True),
    (["--set", "optim.lr=0.1"], True),
    (["run"], True),
    (["run", "my.toml", "--set", "optim.lr=0.1"], True),
    (["run", "--headless"], False),
    (["run", "--json"], False),
    (["run", "--help"], False),
    (["probe"], False),
    (["presets"], False),
    (["config", "--defaults"], False),
])
def test_what_opens_the_app(argv: list[str], app: bool) -> None:
    assert cli._wants_app(argv) is app


def test_bad_override_is_refused_before_the_app_starts(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--set", "optim.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "-1" in err and "> 0" in err


def test_missing_config_file_is_refused(capsys: pytest.CaptureFixture, tmp_path) -> None:
    missing = tmp_path / "nope.toml"
    assert cli.main(["run", str(missing)]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_headless_commands_go_to_the_engine_cli(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["presets"]) == 0
    assert "init-small" in capsys.readouterr().out


def test_help_names_the_app_and_the_headless_commands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--inline" in out and "run --headless" in out and "--preset" in out
    headless = out[out.index("Headless commands"):]
    from trainlab.cli.commands import COMMANDS

    for command in COMMANDS:  # every command the engine's CLI has, named
        assert f" {command}" in headless, command


def test_the_apps_default_experiment_runs_long_enough_to_steer() -> None:
    # Issue 19: the default experiment ended in ~3 s, before a newcomer tried a key.
    from trainlab.cli.main import APP_MAX_EPOCHS, app_config, build_app_parser

    def config(*argv: str) -> Config:
        return app_config(build_app_parser().parse_args(list(argv)))

    assert config().run.max_epochs == APP_MAX_EPOCHS > 20 * Config().run.max_epochs
    assert config().with_value("run.max_epochs", 20) == Config()  # nothing else changes
    assert config("--set", "run.max_epochs=7").run.max_epochs == 7  # a length set wins
    assert config("--set", "run.max_steps=50").run.max_epochs == Config().run.max_epochs
    assert config("--preset", "init-small").run.max_epochs != APP_MAX_EPOCHS
    assert Config().run.max_epochs == 20  # the headless default is the config's own
