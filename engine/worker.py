"""``python -m engine.worker``: one run in a child process, protocol over stdin/stdout.

The app starts this process so that training has an interpreter (and a GIL) of its
own: a small, Python-bound model in a thread beside the UI loses about a third of its
speed to the UI (DESIGN.md section 3). The wire format is the protocol's strict JSON:

- stdin: the first line is the run's config (``Config.to_dict()`` as JSON), then one
  command per line. End of input (the app went away) stops the run at the next step
  boundary, so the loop's cleanup always runs.
- stdout: one event per line, nothing else. The user's own code may print: file
  descriptor 1 is pointed at stderr (the app sends that to a log file) before any of
  it is imported, and events go out on a private duplicate of the original stdout.
  Likewise commands come in on a private duplicate of stdin; fd 0 reads /dev/null.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from typing import Any, TextIO

from engine import protocol
from engine.config import ConfigError, from_dict


class EventWriter:
    """Writes events as JSON lines from the loop's thread and the command reader."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.closed = False

    def __call__(self, event: Any) -> None:
        line = protocol.to_json(event) + "\n"
        with self.lock:
            if self.closed:
                return
            try:
                self.stream.write(line)
                self.stream.flush()  # ~10 lines a second: the loop batches its metrics
            except (OSError, ValueError):  # the app is gone; keep training to a stop
                self.closed = True


def read_commands(stdin: TextIO, commands: queue.Queue[Any], emit: EventWriter) -> None:
    """Parse command lines into ``commands`` until end of input, then ask for a stop."""
    for line in stdin:
        if not line.strip():
            continue
        try:
            command = protocol.from_json(line)
        except (ValueError, TypeError, KeyError) as exc:
            emit(protocol.CommandRejected("unknown", f"unreadable command {line.strip()!r}: "
                                          f"{exc}", -1))
            continue
        if not protocol.is_command(command):
            emit(protocol.CommandRejected(type(command).__name__,
                                          "an event is not a command", -1))
            continue
        commands.put(command)
    commands.put(protocol.Stop())


def _private_pipes() -> tuple[TextIO, TextIO]:
    """The original stdin and stdout, for commands and events only.

    Afterwards fd 1 (and ``sys.stdout``) lead to stderr and fd 0 to /dev/null, so the
    user's prints cannot corrupt the event stream nor an ``input()`` eat a command.
    """
    events_fd = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    commands_fd = os.dup(sys.stdin.fileno())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, sys.stdin.fileno())
    os.close(devnull)
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as we do
    return (os.fdopen(commands_fd, encoding="utf-8"),
            os.fdopen(events_fd, "w", encoding="utf-8"))


def main() -> int:
    """Run one training run as the protocol over stdin/stdout; 0 unless the wire broke."""
    commands_in, events_out = _private_pipes()
    emit = EventWriter(events_out)
    first = commands_in.readline()
    try:
        config = from_dict(json.loads(first))
    except (ValueError, ConfigError) as exc:
        # Nothing was built yet: the same ending a refused run has in-process.
        message = f"the engine could not read its config: {exc}"
        kind = "config" if isinstance(exc, ConfigError) else "internal"
        for event in protocol.failure_events(kind, message):
            emit(event)
        return 0
    commands: queue.Queue[Any] = queue.Queue()
    reader = threading.Thread(target=read_commands, args=(commands_in, commands, emit),
                              name="trainlab-commands", daemon=True)
    reader.start()
    from engine.loop import run  # torch: only once the config is known to be readable

    run(config, commands, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
