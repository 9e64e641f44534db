"""The commands a run takes at its step boundaries: pause, step, stop, live changes,
snapshots, checkpoints and the LR range test.

``Control.at_boundary`` drains the queue between two steps, so every change applies to a
whole step and is acknowledged by an event (the change itself, or ``CommandRejected``
with the reason). While paused it blocks on the queue, waking every PAUSED_WAKE_S. A
``Step(n)`` runs its n steps as a unit: commands that arrive meanwhile wait until they
are done, except a Stop or Pause with nothing queued ahead of it, which cuts the steps
short (commands still apply in order).
"""

from __future__ import annotations

import collections
import queue
from typing import Protocol, assert_never

from trainlab.core import protocol
from trainlab.core.protocol import Command, CommandRejected, Emit, Notice, StateChanged

PAUSED_WAKE_S = 0.5
"""A paused loop wakes this often with nothing to do: a signal the kernel delivered to
another thread runs its Python handler only when the main thread runs again, and one
blocked in a lock wait without a timeout would never do so (SIGTERM ignored while
paused). Two wake-ups a second cost nothing measurable."""


def wait_for_command(commands: queue.Queue[Command]) -> Command:
    """The next command, waiting as long as it takes, without a busy loop."""
    while True:
        try:
            return commands.get(timeout=PAUSED_WAKE_S)
        except queue.Empty:
            continue


RunCommand = (protocol.SetHyper | protocol.RequestSnapshot | protocol.SaveCheckpoint
              | protocol.FindLr)
"""The commands the run itself applies (``Controlled.apply``); the rest are the flow's."""


class Controlled(Protocol):
    """What the commands act on (the loop's Trainer)."""

    step: int
    """Steps taken."""
    emit: Emit

    def finished(self) -> bool:
        """Has the run reached its end?"""
        ...

    def flush(self) -> object:
        """Ship the pending losses and snapshots."""
        ...

    def restart_clock(self) -> None:
        """Throughput is counted from now."""
        ...

    def apply(self, command: RunCommand) -> None:
        """Apply a command that changes the run itself, and acknowledge it."""
        ...


class Control:
    """What the commands asked for (paused, steps left to take, stop); the commands that
    change the run itself go to ``run.apply``."""

    def __init__(self, commands: queue.Queue[Command], run: Controlled) -> None:
        self.commands = commands
        self.run = run
        self.paused = False
        self.step_budget = 0
        """Steps a Step command still allows while paused."""
        self.stop_requested = False
        self.stop_why = ""
        """Stop.why: the reason the final StateChanged gives."""
        self.deferred: collections.deque[Command] = collections.deque()
        """Commands that arrived during a Step(n): applied once its n steps are done."""

    @property
    def may_step(self) -> bool:
        return not self.stop_requested and (not self.paused or self.step_budget > 0)

    def spend_step(self) -> bool:
        """Count a step just taken against a Step command's budget; True when it was the
        budget's last (the run pauses again)."""
        if not self.paused:
            return False
        self.step_budget -= 1
        return self.step_budget == 0

    def at_boundary(self) -> None:
        """Apply the commands due before the next step; while paused, wait for them
        (everything up to the pause flushed first, the throughput clock restarted after)."""
        commands, run = self.commands, self.run
        while not self.stop_requested:
            if self.step_budget > 0:
                try:
                    command = commands.get_nowait()
                except queue.Empty:
                    return
                if isinstance(command, protocol.Stop | protocol.Pause) and not self.deferred:
                    self.step_budget = 0
                    if isinstance(command, protocol.Pause):
                        run.emit(StateChanged("paused", run.step, "steps interrupted"))
                        continue
                    self.apply(command)
                else:
                    self.deferred.append(command)
                continue
            if self.deferred:
                self.apply(self.deferred.popleft())
                continue
            if not self.may_step:
                if run.finished():
                    return  # nothing left to wait for: end the run, paused or not
                run.flush()  # everything up to the pause is shown before waiting
                command = wait_for_command(commands)
                run.restart_clock()
            elif not commands.queue:  # the loop is the only reader: not empty means one
                # waits. The deque itself, without the queue's lock: a command put during
                # this look is seen at the next step. (get_nowait's Empty exception cost
                # ~15 us a step on the CNN, empty()'s lock ~7.)
                return
            else:
                command = commands.get_nowait()
            self.apply(command)

    def apply(self, command: Command) -> None:
        """Apply one command and emit its acknowledgement."""
        run = self.run
        emit, step = run.emit, run.step

        def reject(reason: str) -> None:
            emit(CommandRejected(type(command).__name__, reason, step))

        match command:
            case protocol.Pause():
                if self.paused:
                    return reject("already paused")
                self.paused, self.step_budget = True, 0
                emit(StateChanged("paused", step, "pause requested"))
            case protocol.Resume():
                if not self.paused:
                    return reject("not paused")
                self.paused, self.step_budget = False, 0
                emit(StateChanged("running", step, "resumed"))
            case protocol.Step(n=n):
                if not self.paused:
                    return reject("single steps work while paused")
                if not isinstance(n, int) or n < 1:
                    return reject(f"Step.n = {n!r}: expected an integer >= 1")
                self.step_budget += n
            case protocol.Stop(why=why):
                self.stop_requested = True
                self.stop_why = str(why)
            case (protocol.SetHyper() | protocol.RequestSnapshot() | protocol.SaveCheckpoint()
                  | protocol.FindLr()):
                run.apply(command)
                if isinstance(command, protocol.RequestSnapshot) and self.paused:
                    emit(Notice(step, "info", "the snapshot comes with the next step"))
            case _:
                assert_never(command)
        return None
