"""What the app costs training: throughput with the TUI running vs a headless run.

For each model the same config is trained headless (served from a run directory in
this process, as ``trainlab run --headless`` does) and under the app (its default
engine: the run served in a process of its own, the screen drawn by Textual's headless
driver at 120x40), interleaved over
several rounds because this machine is noisy. Throughput is the engine's own count of
training: the steps of every ``MetricsBatch`` over the time they took (evaluations and
the build, which a fresh child process pays with cold imports, are not training).
Then the chart benchmark: drawing the loss chart from 1,000,000 steps vs 1,000.

Ends with ``tui_tax ratio=<x.xxx>`` (the default experiment), one ``tui_tax_<model>
ratio=`` line per other model, and ``chart_1m_vs_1k ratio=<x.xxx>``.

    python bench/tui.py [--rounds N] [--quick] [--inline]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.chart import chart_draw_ratio
from trainlab.core import protocol
from trainlab.core.config import Config

MODELS: dict[str, dict[str, Any]] = {
    # The default experiment: a 3x128 MLP on digits, Python-bound.
    "default": {},
    # Compute-bound: 8x256 at batch 256.
    "mlp_8x256": {"model.depth": 8, "model.width": 256, "data.batch_size": 256,
                  "run.max_epochs": 40},
}


class TrainingClock:
    """Adds up the steps and training seconds that the metrics batches report."""

    def __init__(self) -> None:
        self.steps = 0
        self.seconds = 0.0

    def __call__(self, event: Any) -> None:
        if isinstance(event, protocol.MetricsBatch) and event.steps_per_sec > 0:
            self.steps += len(event.steps)
            self.seconds += len(event.steps) / event.steps_per_sec

    @property
    def rate(self) -> float:
        return self.steps / self.seconds


RUNS = Path(tempfile.mkdtemp(prefix="trainlab-bench-runs-"))
"""run.dir of the benchmark's runs (never the current directory's ./runs)."""


def headless_rate(config: Config) -> float:
    """Training steps per second of the run in this process, as the headless CLI runs it."""
    from trainlab.core import catalog
    from trainlab.engine.serve import serve

    clock = TrainingClock()
    serve(catalog.new_run(RUNS, config), config, show=clock)
    return clock.rate


class _TappedQueue(asyncio.Queue):  # type: ignore[type-arg]
    """The app's event queue, also showing every event to a clock."""

    def __init__(self, clock: TrainingClock) -> None:
        super().__init__()
        self.clock = clock

    def put_nowait(self, item: Any) -> None:
        self.clock(item)
        super().put_nowait(item)


def app_rate(config: Config, inline: bool) -> float:
    """Training steps per second of the same run under the app, until it finishes."""
    from trainlab.engine.host import ThreadEngine
    from trainlab.tui.app import TrainlabApp, default_engine_factory

    clock = TrainingClock()

    def engine() -> Any:
        made = ThreadEngine() if inline else default_engine_factory()
        made.events = _TappedQueue(clock)
        return made

    app = TrainlabApp(config, engine_factory=engine)

    async def drive() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            while app.run_state.finished is None:
                await pilot.pause(0.1)
            await app.shutdown()

    asyncio.run(drive())
    return clock.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds, shorter runs")
    parser.add_argument("--inline", action="store_true",
                        help="measure the thread engine instead of the child process")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    ratios: dict[str, float] = {}
    for name, changes in MODELS.items():
        config = Config().with_values({**changes, "run.dir": str(RUNS)})
        if args.quick:
            config = config.with_value("run.max_epochs", max(2, config.run.max_epochs // 4))
        headless, tui = [], []
        headless_rate(config.with_value("run.max_epochs", 1))  # warm-up: imports, caches
        for _ in range(rounds):  # interleaved: drifts in machine load hit both alike
            headless.append(headless_rate(config))
            tui.append(app_rate(config, args.inline))
        h, t = statistics.median(headless), statistics.median(tui)
        ratios[name] = t / h
        print(f"{name}: headless {h:,.0f} steps/s, app {t:,.0f} steps/s "
              f"(rounds: {', '.join(f'{x:,.0f}' for x in headless)} | "
              f"{', '.join(f'{x:,.0f}' for x in tui)})", flush=True)
    chart = chart_draw_ratio()
    for name, ratio in ratios.items():
        label = "tui_tax" if name == "default" else f"tui_tax_{name}"
        print(f"{label} ratio={ratio:.3f}")
    print(f"chart_1m_vs_1k ratio={chart:.3f}")


if __name__ == "__main__":
    main()
