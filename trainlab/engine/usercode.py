"""Calling the user's own code (a model or dataset named 'package.module:function').

Two kinds of failure are kept apart, because the user fixes them differently:
a name that cannot be imported is a config error (the message names the field),
while an exception raised *inside* the user's function is a ``UserCodeError``
that carries the user's traceback, so the CLI and the app can show it.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainlab.core.config import ConfigError

_user_files: set[str] = set()
"""Source files of the user modules loaded so far: a traceback through one of them
during training (e.g. in the model's forward) is the user's error, not ours."""


class UserCodeError(Exception):
    """The user's function raised; ``traceback_text`` is its formatted traceback."""

    def __init__(self, what: str, exc: BaseException) -> None:
        super().__init__(f"{what} raised {type(exc).__name__}: {exc}")
        self.traceback_text = "".join(traceback.format_exception(exc))


def load_callable(path: str, key: str) -> Callable[..., Any]:
    """Import 'package.module:function' for config field ``key``.

    The current directory is searched first, so a module next to the config works
    without installing it.
    """
    module_name, _, attr = path.partition(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{key} = {path!r}: cannot import module {exc.name!r}") from None
    except Exception as exc:  # the module itself raised while importing
        raise UserCodeError(f"importing {module_name!r} ({key})", exc) from exc
    file = getattr(module, "__file__", None)  # a built-in module has none
    if file:
        _user_files.add(str(Path(file).resolve()))
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError(f"{key} = {path!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ConfigError(f"{key} = {path!r}: {attr!r} is not callable")
    return fn


def call_user(fn: Callable[..., Any], what: str, *args: Any) -> Any:
    """Call user code; anything it raises becomes a UserCodeError naming ``what``."""
    try:
        return fn(*args)
    except Exception as exc:
        raise UserCodeError(what, exc) from exc


def raised_in_user_code(exc: BaseException) -> bool:
    """Did ``exc`` pass through a user module (one loaded by ``load_callable``)?"""
    frames = traceback.extract_tb(exc.__traceback__)
    return any(str(Path(frame.filename).resolve()) in _user_files for frame in frames)
