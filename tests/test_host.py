"""The thread host: events arrive in an asyncio.Queue, commands go back through it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import tiny_config
from trainlab.core import protocol
from trainlab.engine.host import ThreadHost


async def _next(host: ThreadHost, name: str, timeout: float = 30.0) -> Any:
    """The next event of class ``name`` (earlier events of other kinds are skipped)."""
    async def wait() -> Any:
        while True:
            event = await host.events.get()
            if type(event).__name__ == name:
                return event
    return await asyncio.wait_for(wait(), timeout)


def test_thread_host_delivers_events_and_obeys_commands():
    async def scenario() -> None:
        host = ThreadHost(tiny_config(run__max_steps=1_000_000))
        host.start()
        await _next(host, "RunStarted")
        host.send(protocol.Pause())
        paused = await _next(host, "StateChanged")
        while paused.state != "paused":
            paused = await _next(host, "StateChanged")
        host.send(protocol.Step(2))
        stepped = await _next(host, "StateChanged")
        assert (stepped.state, stepped.step) == ("paused", paused.step + 2)
        host.send(protocol.SetHyper("optim.lr", 0.05))
        changed = await _next(host, "HyperChanged")
        assert changed.new == 0.05 and changed.step == stepped.step
        assert host.stop(timeout=30)
        finished = await _next(host, "RunFinished")
        assert finished.reason == "stopped"
        assert not host.running

    asyncio.run(scenario())


def test_thread_host_reports_a_bad_config_as_an_event():
    async def scenario() -> None:
        host = ThreadHost(tiny_config(data__dataset="no_such_dataset"))
        host.start()
        failed = await _next(host, "EngineFailed")
        assert failed.kind == "config" and "no_such_dataset" in failed.message
        await _next(host, "RunFinished")
        assert host.stop(timeout=10)

    asyncio.run(scenario())


def test_send_refuses_what_is_not_a_command():
    host = ThreadHost(tiny_config())
    with pytest.raises(TypeError, match="not a protocol command"):
        host.send("pause")


def test_stop_ends_a_huge_single_step_request_promptly():
    async def scenario() -> None:
        host = ThreadHost(tiny_config(run__max_steps=10**9))
        host.start()
        await _next(host, "RunStarted")
        host.send(protocol.Pause())
        host.send(protocol.Step(10**8))
        await asyncio.sleep(0.3)
        assert host.stop(timeout=10)  # the loop saw the Stop between the steps
        assert (await _next(host, "RunFinished")).reason == "stopped"

    asyncio.run(scenario())
