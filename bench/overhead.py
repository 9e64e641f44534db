"""Overhead of the engine and its instruments against a plain hand-written PyTorch loop.

Usage::

    python bench/overhead.py            # full run: 3 processes x 3 rounds, ~2 s a measurement
    python bench/overhead.py --quick    # smoke run: 1 process x 2 rounds, ~0.3 s

What is compared (issue 3, "Overhead benchmark"), for each model, on the CPU, one thread:

- ``mlp_8x256``: MLP with 8 hidden layers of 256 ReLU units, batch 256;
- ``cnn``: the engine's small CNN (``model.arch = cnn``, defaults), batch 64;

both on the bundled digits data set (inputs (1, 8, 8), standardized on the training split
as ``data.preprocess`` says), loaded once with the engine's own ``load_dataset`` so every
mode trains on the same tensors; Adam, lr 1e-3, seed 0, same initial weights
(``build_model`` + ``init_weights`` after ``torch.manual_seed``, as the engine does).

Modes:

- ``plain``: a hand-written loop: ``randperm`` per epoch and index slicing (the same
  batches as the engine, including its fold of a one-sample last batch),
  ``zero_grad(set_to_none=True)``, forward, ``cross_entropy``, ``backward``,
  ``optimizer.step()``; no logging, no ``.item()`` per step;
- ``off``: ``trainlab.engine.loop.run`` with ``stats.every = 0, stats.hist_every = 0``;
- ``default``: ``trainlab.engine.loop.run`` with the Config defaults for ``stats.*`` (scalars every
  10 steps, histograms every 50, both at least ``MIN_*_INTERVAL_S`` apart, and no more
  than ``stats.budget`` = 1% of training time);
- ``every_step``: ``stats.every = 1, stats.hist_every = 1, stats.budget = 0``, with
  ``trainlab.engine.stats.MIN_SCALAR_INTERVAL_S`` and ``MIN_HIST_INTERVAL_S`` patched to 0 for that
  mode only (restored after), so every quantity, histograms included, is measured on
  every step.

Engine runs use ``run.max_steps = N, run.max_epochs = 0, run.eval_every = N + 1`` (only the
final evaluation), ``run.threads = 1``, ``run.device = cpu``, ``queue.Queue()`` for the
commands.

Timing method (only the N training steps, for both sides):

- engine: ``emit`` stamps ``time.perf_counter()`` at two events. Start: the
  ``StateChanged('running', 0, 'started')`` event, emitted after everything is built
  (data, model, optimizer, the instruments' tracing pass and, where they are on, their
  buffers, ``RunStarted``) and immediately before the step loop. End: the ``MetricsBatch``
  whose last step is N; the loop flushes it right after step N, before the final
  evaluation. The interval therefore contains the N steps and everything the loop does
  between them (command polling, the periodic loss flushes, tracked steps, snapshot
  assembly and their emission), and excludes building the run and the final evaluation;
- plain: a fresh model and optimizer per measurement too (so the first step's lazy Adam
  state creation is paid on both sides), timed from before step 1 to after step N plus one
  ``loss.item()`` (the engine's last flush also brings its losses to the host).

Throughput is N / interval in steps/s. N is fixed per model (calibrated once from the plain
loop to take ``--seconds``). Each round runs plain, off, default and every_step in an order
rotated by one per round (so no mode always runs first or after the same neighbour). The
rounds are spread over ``--processes`` fresh worker processes, run one after another, each
after one untimed warm-up of every mode: a process's memory layout (where the allocator
happens to put weights, activations and optimizer state) moves one side's speed by a few
percent for that process's whole life. Measured before this was done: the engine with
instruments off, which does the plain loop's work, at 0.946, 0.955, 0.970, 0.994, 0.993
and 1.002 of it in six processes of one commit, each of 3-5 rounds. The reported ratio is
median(mode) / median(plain) over all rounds; the table also shows the median of the
per-round ratios ("paired"), which is less sensitive to slow drift of a noisy machine.
Every run also checks that the engine's loss at step N equals the plain loop's (same
work), and counts the snapshots.

Noise: both clocks are recorded. ``--clock wall`` (the default) is the throughput a user
sees; ``--clock cpu`` uses the process's CPU time over the same interval (the loop is
single-threaded and never sleeps, so on an idle machine the two agree), which is immune to
time-slicing with other processes but not to their use of shared caches and memory
bandwidth. glibc's malloc thresholds are fixed at start (``steady_malloc``;
``--default-malloc`` keeps them adaptive): with the adaptive defaults the number of page
faults per step varied from 0 to 130 between runs of either side, worth +-4% per run.
Neither choice changes the work measured. On a busy shared machine the same loop's speed
still varies by 10-40% between rounds; the table then says so, and a 1-3% target is only
resolved with more ``--processes`` and ``--rounds`` (the ``self`` column, the instruments'
own running estimate of their cost, is a steadier cross-check for the default schedule).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import math
import queue
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

import trainlab.engine.stats
from trainlab.core.config import Config
from trainlab.core.protocol import (
    EngineFailed,
    LayerStatsSnapshot,
    MetricsBatch,
    RunFinished,
    StateChanged,
)
from trainlab.engine.data import Dataset, load_dataset
from trainlab.engine.init import init_weights
from trainlab.engine.loop import run
from trainlab.engine.models import build_model

Times = tuple[float, float]
"""(wall seconds, CPU seconds)."""

SEED = 0
LR = 1e-3
THREADS = 1
MODES = ("plain", "off", "default", "every_step")
ENGINE_MODES = ("off", "default", "every_step")
TARGETS = {"off": 0.99, "default": 0.97, "every_step": 0.6}
"""Minimum throughput relative to the plain loop (issue 3)."""

MODELS: dict[str, dict[str, Any]] = {
    "mlp_8x256": {"model.arch": "mlp", "model.depth": 8, "model.width": 256,
                  "data.batch_size": 256},
    "cnn": {"model.arch": "cnn", "data.batch_size": 64},
}
STATS: dict[str, dict[str, Any]] = {
    "off": {"stats.every": 0, "stats.hist_every": 0},
    "default": {},  # the Config defaults
    "every_step": {"stats.every": 1, "stats.hist_every": 1, "stats.budget": 0.0},
}
LOSS_TOLERANCE = 1e-4
"""Relative difference allowed between the engine's and the plain loop's loss at step N."""


def base_config(model: str) -> Config:
    """The shared part of every run of ``model`` (run length set per measurement)."""
    return Config().with_values({
        "data.dataset": "digits",
        "optim.name": "adam",
        "optim.lr": LR,
        "run.seed": SEED,
        "run.device": "cpu",
        "run.threads": THREADS,
        **MODELS[model],
    })


def elapsed(start: Times, end: Times) -> Times:
    return end[0] - start[0], end[1] - start[1]


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum
TRIM_THRESHOLD = 2**30


def steady_malloc() -> bool:
    """Fix glibc's malloc thresholds (no mmap below 32 MiB, no trimming of the heap).

    With the defaults, whether a step's 256 KiB activations come from fresh pages (page
    faults, zeroing) depends on the allocator's adaptive thresholds, which differ from run
    to run: measured 0 to 130 minor faults per step and +-4% per run, on either side. Fixed
    thresholds remove that noise for the plain loop and the engine alike. False where
    this is not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


# --- the plain loop ------------------------------------------------------------------


def stamp() -> Times:
    """(wall, CPU) clocks now: ``perf_counter`` and the process's CPU time."""
    return time.perf_counter(), time.process_time()


def plain_loop(cfg: Config, data: Dataset, n_steps: int) -> tuple[Times, float]:
    """((wall, CPU) seconds for ``n_steps`` steps, loss of the last step), hand-written."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    init_weights(model, cfg.init, cfg.model.activation, cfg.model.arch)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    x_all, y_all = data.x_train, data.y_train
    n, batch = len(x_all), cfg.data.batch_size
    generator = torch.Generator().manual_seed(SEED)
    order, pos = torch.randperm(n, generator=generator), 0
    loss = torch.zeros(())

    started = stamp()
    for _ in range(n_steps):
        take = n - pos if n - pos <= batch + 1 else batch  # the engine's batch rule
        idx = order[pos : pos + take]
        pos += take
        if pos >= n:
            order, pos = torch.randperm(n, generator=generator), 0
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        loss.backward()
        optimizer.step()
    last = loss.item()
    return elapsed(started, stamp()), last


# --- the engine ----------------------------------------------------------------------


@dataclass
class Recorder:
    """The ``emit`` of an engine run: stamps the start and end of the step loop."""

    n_steps: int
    start: Times | None = None
    end: Times | None = None
    last_loss: float | None = None
    snapshots: int = 0
    with_histograms: int = 0
    overhead: float | None = None
    failures: list[str] = field(default_factory=list)

    def __call__(self, event: Any) -> None:
        now = stamp()
        if isinstance(event, StateChanged) and event.state == "running" and self.start is None:
            self.start = now
        elif isinstance(event, MetricsBatch) and event.steps and event.steps[-1] == self.n_steps:
            self.end = now
            self.last_loss = event.losses[-1]
        elif isinstance(event, LayerStatsSnapshot):
            self.snapshots += 1
            self.with_histograms += bool(event.histograms)
            self.overhead = event.overhead
        elif isinstance(event, EngineFailed):
            self.failures.append(f"{event.kind}: {event.message}")


@contextmanager
def no_min_intervals() -> Iterator[None]:
    """Let the instruments track every step: the time floors of the schedule set to 0."""
    saved = trainlab.engine.stats.MIN_SCALAR_INTERVAL_S, trainlab.engine.stats.MIN_HIST_INTERVAL_S
    trainlab.engine.stats.MIN_SCALAR_INTERVAL_S = trainlab.engine.stats.MIN_HIST_INTERVAL_S = 0.0
    try:
        yield
    finally:
        stats = trainlab.engine.stats
        stats.MIN_SCALAR_INTERVAL_S, stats.MIN_HIST_INTERVAL_S = saved


def engine_loop(cfg: Config, mode: str, n_steps: int) -> tuple[Times, float, Recorder]:
    """((wall, CPU) seconds for ``n_steps`` engine steps, loss of the last step, recorder)."""
    config = cfg.with_values({
        "run.max_steps": n_steps,
        "run.max_epochs": 0,
        "run.eval_every": n_steps + 1,
        **STATS[mode],
    })
    recorder = Recorder(n_steps)
    with no_min_intervals() if mode == "every_step" else nullcontext():
        finished = run(config, queue.Queue(), emit=recorder)
    if not isinstance(finished, RunFinished) or finished.reason != "completed":
        reason = finished.reason if isinstance(finished, RunFinished) else finished
        raise SystemExit(f"engine run ({mode}) did not complete: {reason}; {recorder.failures}")
    if recorder.start is None or recorder.end is None or recorder.last_loss is None:
        raise SystemExit(f"engine run ({mode}): no start or no MetricsBatch with step {n_steps}")
    return elapsed(recorder.start, recorder.end), recorder.last_loss, recorder


# --- the benchmark ---------------------------------------------------------------------

CLOCKS = ("wall", "cpu")


@dataclass
class Result:
    """Every measurement of one model: steps/s per clock, per mode, one value per round."""

    n_steps: int
    rate: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {clock: {mode: [] for mode in MODES} for clock in CLOCKS})
    snapshots: dict[str, int] = field(default_factory=dict)
    with_histograms: dict[str, int] = field(default_factory=dict)
    self_overhead: dict[str, float | None] = field(default_factory=dict)

    def median(self, mode: str, clock: str = "wall") -> float:
        return statistics.median(self.rate[clock][mode])

    def ratio(self, mode: str, clock: str = "wall") -> float:
        """Median throughput of ``mode`` over the plain loop's median throughput."""
        return self.median(mode, clock) / self.median("plain", clock)

    def paired(self, mode: str, clock: str = "wall") -> float:
        """Median over rounds of the ratio within each round."""
        pairs = zip(self.rate[clock][mode], self.rate[clock]["plain"], strict=True)
        return statistics.median(m / p for m, p in pairs)

    def spread(self, mode: str, clock: str = "wall") -> float:
        """max / min throughput over the rounds: how noisy the machine was."""
        values = self.rate[clock][mode]
        return max(values) / min(values)


def measure(cfg: Config, data: Dataset, mode: str, n_steps: int) -> tuple[Times, float, Any]:
    if mode == "plain":
        times, loss = plain_loop(cfg, data, n_steps)
        return times, loss, None
    return engine_loop(cfg, mode, n_steps)


def check_same_work(name: str, mode: str, loss: float, reference: float) -> None:
    """The engine must train exactly what the plain loop trains (same loss at step N)."""
    if not math.isclose(loss, reference, rel_tol=LOSS_TOLERANCE, abs_tol=1e-6):
        print(f"WARNING {name} {mode}: loss at the last step {loss:.6g} differs from the "
              f"plain loop's {reference:.6g}: not the same work", file=sys.stderr)


def calibrate(name: str, seconds: float) -> int:
    """Steps per measurement: what the plain loop does in ``seconds`` (after a warm-up)."""
    cfg = base_config(name)
    data = load_dataset(cfg.data, SEED)
    plain_loop(cfg, data, 20)
    # The fastest of 5 probes: on a busy machine a slow probe would make N small, and a
    # short measurement weighs each run's fixed costs (the first tracked step builds
    # the instruments' buffers) and the noise more.
    probe_steps = 30
    probe_s = min(plain_loop(cfg, data, probe_steps)[0][0] for _ in range(5))
    return max(50, round(seconds / (probe_s / probe_steps)))


def worker(name: str, n_steps: int, rounds: int, first_round: int) -> None:
    """Rounds ``first_round``.. of one model in this process: one JSON line on stdout
    per measurement (read by ``bench_model``)."""
    cfg = base_config(name)
    data = load_dataset(cfg.data, SEED)
    for mode in MODES:  # warm-up (untimed): every mode once
        measure(cfg, data, mode, 20)
    losses: dict[str, float] = {}  # each mode's first: checked once plain has run
    for r in range(first_round, first_round + rounds):
        shift = r % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            times, loss, recorder = measure(cfg, data, mode, n_steps)
            losses.setdefault(mode, loss)
            line = {"round": r, "mode": mode, "wall": times[0], "cpu": times[1]}
            if recorder is not None:
                line |= {"snapshots": recorder.snapshots,
                         "with_histograms": recorder.with_histograms,
                         "overhead": recorder.overhead}
            print(json.dumps(line), flush=True)
    for mode, loss in losses.items():
        check_same_work(name, mode, loss, losses["plain"])


def bench_model(name: str, processes: int, rounds: int, seconds: float, verbose: bool,
                worker_flags: list[str]) -> Result:
    """``processes`` fresh processes of ``rounds`` rounds each, pooled into one Result."""
    result = Result(calibrate(name, seconds))
    total = processes * rounds
    for p in range(processes):
        command = [sys.executable, __file__, "--worker", "--model", name, "--steps",
                   str(result.n_steps), "--rounds", str(rounds), "--first-round",
                   str(p * rounds), *worker_flags]
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None
            for text in child.stdout:
                line = json.loads(text)
                mode = line["mode"]
                for clock in CLOCKS:
                    result.rate[clock][mode].append(result.n_steps / line[clock])
                if "snapshots" in line:
                    result.snapshots[mode] = line["snapshots"]
                    result.with_histograms[mode] = line["with_histograms"]
                    result.self_overhead[mode] = line["overhead"]
                if verbose:
                    print(f"  process {p + 1}/{processes} round {line['round'] + 1}/{total} "
                          f"{name:<10} {mode:<11} {result.n_steps / line['wall']:8.1f} steps/s "
                          f"wall ({line['wall']:.2f} s), "
                          f"{result.n_steps / line['cpu']:8.1f} steps/s cpu", flush=True)
        if child.returncode:
            raise SystemExit(f"worker process for {name} failed (exit {child.returncode})")
    return result


def count_processes(n: int) -> str:
    return f"{n} process{'es' if n > 1 else ''}"


def print_table(name: str, result: Result, clock: str, processes: int, rounds: int) -> None:
    other = "cpu" if clock == "wall" else "wall"
    print(f"\n{name}: batch {MODELS[name]['data.batch_size']}, {result.n_steps} steps per "
          f"measurement, {count_processes(processes)} x {rounds} rounds, {THREADS} thread; "
          f"steps/s by the {clock} clock")
    header = (f"{'mode':<11} {'median':>8} {'min':>8} {'max':>8} {'ratio':>7} {'target':>7} "
              f"{'ok':<3} {'paired':>7} {other + ' ratio':>9} {'snapshots':>14} {'self':>6}")
    print(header)
    print("-" * len(header))
    for mode in MODES:
        values = result.rate[clock][mode]
        cells = (f"{mode:<11} {result.median(mode, clock):8.1f} {min(values):8.1f} "
                 f"{max(values):8.1f}")
        if mode == "plain":
            print(f"{cells} {1.0:7.3f}")
            continue
        ratio, target = result.ratio(mode, clock), TARGETS[mode]
        snaps = f"{result.snapshots[mode]}/{result.n_steps} h{result.with_histograms[mode]}"
        own = result.self_overhead[mode]
        ok = "yes" if ratio >= target else "NO"
        print(f"{cells} {ratio:7.3f} {'>=' + f'{target:.2f}':>7} {ok:<3} "
              f"{result.paired(mode, clock):7.3f} {result.ratio(mode, other):9.3f} {snaps:>14} "
              f"{'-' if own is None else f'{own:.1%}':>6}")
    noisy = max(result.spread(mode, clock) for mode in MODES)
    if noisy > 1.1:
        advice = "more --processes and --rounds" + (
            ", or --clock cpu" if clock == "wall" else "")
        print(f"note: throughput of one mode varied up to x{noisy:.2f} between rounds: the "
              f"machine was busy;\nratios are uncertain by about that much ({advice})")


LEGEND = """\
columns: median/min/max steps/s over the rounds; ratio = median(mode) / median(plain) (the
figure the targets and the last lines use); paired = median of the per-round ratios; the
other clock's ratio; snapshots = tracked steps/N in the last run, h = how many had
histograms; self = the instruments' own estimate of their overhead (LayerStatsSnapshot)"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=None,
                        help="fresh processes per model (default 3; quick 1)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per process (default 3; quick 2)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="target seconds per measurement (default 2; quick 0.3)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help="wall: throughput as seen (default); cpu: the process's CPU "
                        "time, immune to time-slicing with other processes")
    parser.add_argument("--model", choices=tuple(MODELS), action="append",
                        help="only this model (repeatable; default all)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's adaptive malloc thresholds (noisier; see steady_malloc)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every measurement")
    # A worker process (started by the benchmark itself): its rounds as JSON lines.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first-round", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    processes = args.processes if args.processes is not None else (1 if args.quick else 3)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 3)
    seconds = args.seconds if args.seconds is not None else (0.3 if args.quick else 2.0)
    if processes < 1 or rounds < 1 or seconds <= 0:
        parser.error("--processes and --rounds must be >= 1 and --seconds > 0")

    torch.set_num_threads(THREADS)
    fixed = not args.default_malloc and steady_malloc()
    if args.worker:
        worker(args.model[0], args.steps, rounds, args.first_round)
        return 0
    print(f"torch {torch.__version__}, {THREADS} thread, {count_processes(processes)} x "
          f"{rounds} rounds, ~{seconds:g} s per "
          f"measurement, clock {args.clock}, malloc "
          f"{'fixed thresholds' if fixed else 'default'}")
    print(LEGEND)
    worker_flags = ["--default-malloc"] if args.default_malloc else []
    results = {}
    for name in args.model or list(MODELS):
        results[name] = bench_model(name, processes, rounds, seconds, args.verbose,
                                    worker_flags)
        print_table(name, results[name], args.clock, processes, rounds)
    print()
    for name, result in results.items():
        for mode in ENGINE_MODES:
            print(f"{name} {mode} ratio={result.ratio(mode, args.clock):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
