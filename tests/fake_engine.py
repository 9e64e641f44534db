"""A fake engine for the app's tests: canned events in, commands recorded, acknowledged.

It has the interface of ``trainlab.tui.bridge.Engine`` and feeds the app's real queue and pump.
Commands are answered the way the real loop answers them (an acknowledgement event,
or ``CommandRejected``) so a test can follow key -> command -> acknowledgement ->
screen. Nothing here trains: a test that needs real training uses the real engines.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from trainlab.core import protocol
from trainlab.core.config import Config, ConfigError, check_value, field_info

LAYERS = ("blocks.0.linear", "blocks.1.linear", "head")


def started(config: Config, total_steps: int = 1000) -> protocol.RunStarted:
    """The RunStarted of a 3-layer MLP on a 10-class dataset."""
    model = protocol.ModelInfo("mlp", tuple(
        protocol.LayerInfo(name, "Linear", (32,), 1000) for name in LAYERS), 3000)
    dataset = protocol.DatasetInfo(
        "digits", "classification", (64,), 10, 1438, 359, tuple(str(i) for i in range(10)),
        (144,) * 10, (36,) * 10)
    return protocol.RunStarted(config.to_dict(), model, dataset, "cross_entropy", "cpu", 1,
                               23, total_steps)


def metrics(first: int, count: int, lr: float = 1e-3, epoch: int = 0) -> protocol.MetricsBatch:
    """``count`` steps from ``first`` with a smoothly falling loss."""
    steps = tuple(range(first, first + count))
    losses = tuple(2.3 * math.exp(-s / 200) + 0.05 for s in steps)
    return protocol.MetricsBatch(steps, losses, (lr,) * count, epoch, 500.0, 32000.0)


def layer_stats(name: str, scale: float, *, saturated: float | None = None,
                dead: float | None = 0.0) -> protocol.LayerStats:
    """One layer's row; ``scale`` sets its activation std and gradient figures."""
    return protocol.LayerStats(
        name=name, kind="Linear", activation="ReLU" if name != "head" else "",
        act_mean=0.1 * scale, act_std=scale, act_min=-scale, act_max=3 * scale,
        saturated_frac=saturated, dead_frac=dead, zero_frac=0.3, grad_out_std=1e-3 * scale,
        weight_norm=5.0, weight_std=0.05, grad_norm=0.01 * scale, grad_std=1e-4,
        grad_max=0.02, update_ratio=1e-3)


def snapshot(step: int, *, scales: tuple[float, ...] = (1.0, 0.8, 0.6),
             histograms: bool = True, dead: float = 0.0) -> protocol.LayerStatsSnapshot:
    """A snapshot of the three layers, with a weight and grad histogram of each."""
    rows = tuple(layer_stats(name, s, dead=dead if name != "head" else None)
                 for name, s in zip(LAYERS, scales, strict=True))
    hists = tuple(
        protocol.Histogram(name, quantity, -1.0, 1.0,
                           tuple(int(100 * math.exp(-((i - 16) / 6) ** 2)) for i in range(32)))
        for name in LAYERS for quantity in ("weight", "grad")
    ) if histograms else ()
    return protocol.LayerStatsSnapshot(step, rows, hists, 64, overhead=0.01, interval=10)


def opening(config: Config, steps: int = 200) -> list[Any]:
    """A run's first events: started, running, some steps, an evaluation, a snapshot."""
    return [
        started(config),
        protocol.StateChanged("running", 0, "started"),
        metrics(1, steps // 2),
        metrics(steps // 2 + 1, steps - steps // 2, epoch=1),
        protocol.EvalDone(steps, 1, 0.4, 0.9, 0.35, 0.4),
        snapshot(steps),
    ]


class FakeEngine:
    """Records commands; answers them like the loop does; feeds canned events.

    Like a served engine it is detachable: ``detach`` leaves the (canned) run as it is,
    ``stop`` stops it.
    """

    detachable = True
    replays_history = False
    run_dir = None

    def __init__(self, script: list[Any] | None = None) -> None:
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.detached = False
        self.script = script
        self.commands: list[Any] = []
        self.config: Config | None = None
        self.stopped = False
        self.step = 0
        self.state = "starting"

    async def start(self, config: Config) -> None:
        self.config = config
        for event in self.script if self.script is not None else opening(config):
            self.feed(event)

    def feed(self, event: Any) -> None:
        """Put one event in the app's queue (and track step and state like the loop)."""
        if isinstance(event, protocol.MetricsBatch) and event.steps:
            self.step = event.steps[-1]
        if isinstance(event, protocol.StateChanged):
            self.state = event.state
        self.events.put_nowait(event)

    def send(self, command: Any) -> None:
        self.commands.append(command)
        name = type(command).__name__
        if self.state not in ("running", "paused"):
            return  # a finished loop reads no more commands
        if isinstance(command, protocol.Pause):
            self.feed(protocol.StateChanged("paused", self.step, "pause requested"))
        elif isinstance(command, protocol.Resume):
            self.feed(protocol.StateChanged("running", self.step, "resumed"))
        elif isinstance(command, protocol.Step):
            self.feed(metrics(self.step + 1, command.n))
            self.feed(protocol.StateChanged("paused", self.step, "single step done"))
        elif isinstance(command, protocol.SetHyper):
            assert self.config is not None
            try:
                if not field_info(command.key).spec.hot:
                    raise ConfigError(f"{command.key} is cold")
                new = check_value(command.key, command.value)
            except ConfigError as exc:
                self.feed(protocol.CommandRejected(name, str(exc), self.step))
                return
            old = self.config.get(command.key)
            self.config = self.config.with_value(command.key, new)
            self.feed(protocol.HyperChanged(self.step, command.key, old, new, command.note))
        elif isinstance(command, protocol.SaveCheckpoint):
            self.feed(protocol.CheckpointSaved(self.step, f"checkpoints/step_{self.step}.pt"))
        elif isinstance(command, protocol.Stop):
            self.finish("stopped")

    def finish(self, reason: str = "completed") -> None:
        """End the run the way the loop does."""
        self.feed(protocol.StateChanged("finished", self.step, reason))
        self.feed(protocol.RunFinished(reason, protocol.FinalMetrics(
            self.step, 1, 0.3, 0.4, 0.9, 0.4, self.step, 1.0)))

    async def detach(self) -> None:
        self.detached = True

    async def stop(self) -> None:
        self.stopped = True


class FakeEngines:
    """An engine factory for the app that keeps every engine it made."""

    def __init__(self, script: list[Any] | None = None, *, detachable: bool = True,
                 replays_history: bool = False) -> None:
        self.made: list[FakeEngine] = []
        self.script = script
        self.detachable = detachable
        """False: engines like the thread engine's (--inline), whose run ends with the app."""
        self.replays_history = replays_history
        """True: like an attached engine, the script is history up to its Attached."""

    def __call__(self) -> FakeEngine:
        engine = FakeEngine(self.script)
        engine.detachable = self.detachable
        engine.replays_history = self.replays_history
        self.made.append(engine)
        return engine

    @property
    def current(self) -> FakeEngine:
        return self.made[-1]


def record_notifications(app: Any) -> list[str]:
    """The messages ``app`` notifies from now on, in order (still shown as usual)."""
    notified: list[str] = []
    real_notify = app.notify

    def recording_notify(message: str, **kwargs: Any) -> None:
        notified.append(message)
        real_notify(message, **kwargs)

    app.notify = recording_notify
    return notified
