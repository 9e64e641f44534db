"""run.precision on the CPU: bf16 and fp16 autocast, fp16's loss scaler, and a step path
that never waits for the device."""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import sys
from typing import Any

import pytest
import torch

from tests.conftest import of_type, run_loop, tiny_config
from tests.test_nonfinite_policy import nan_output
from trainlab.engine.loop import Trainer, run
from trainlab.engine.precision import Precision


def _forward_dtypes(trainer: Trainer) -> list[torch.dtype]:
    """The dtype of every Linear output in one training step of ``trainer``."""
    seen: list[torch.dtype] = []
    handles = [m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
               for m in trainer.model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        trainer.train_step()
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize(("precision", "dtype"), [
    ("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_the_forward_pass_computes_in_the_precision_and_the_weights_stay_fp32(
        precision: str, dtype: torch.dtype) -> None:
    trainer = Trainer(tiny_config(run__precision=precision, optim__name="adam"))
    assert set(_forward_dtypes(trainer)) == {dtype}
    for _ in range(5):
        trainer.train_step()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    moments = [s["exp_avg"] for s in trainer.optimizer.state.values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)


def test_a_bf16_run_learns_and_its_layer_statistics_are_fp32_figures() -> None:
    events = run_loop(tiny_config(run__precision="bf16", run__max_steps=60,
                                  stats__every=10, stats__hist_every=10))
    (finished,) = of_type(events, "RunFinished")
    assert finished.reason == "completed"
    losses = [x for batch in of_type(events, "MetricsBatch") for x in batch.losses]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    snapshot = of_type(events, "LayerStatsSnapshot")[-1]
    assert all(math.isfinite(row.act_std) and row.act_std > 0 for row in snapshot.layers
               if row.act_std is not None)
    assert all(math.isfinite(row.grad_norm) for row in snapshot.layers)


@pytest.fixture
def amplified(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The steps (1-based) of any run started in the test whose loss is multiplied by
    1e6: finite in float32, but its float16 gradients overflow once scaled."""
    steps: set[int] = set()
    original = Trainer.train_step

    def train_step(self: Trainer) -> int:
        if self.step + 1 not in steps:
            return original(self)
        fn = self.objective.fn
        self.objective = dataclasses.replace(self.objective, fn=lambda o, t: fn(o, t) * 1e6)
        try:
            return original(self)
        finally:
            self.objective = dataclasses.replace(self.objective, fn=fn)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return steps


def test_the_fp16_scalers_skipped_updates_are_reported_apart_from_non_finite_losses(
        monkeypatch: pytest.MonkeyPatch, amplified: set[int]) -> None:
    amplified.update({3, 4, 20})
    # An independent count: the scale after every step, read from the scaler itself.
    scales: list[float] = []
    original = Precision.step

    def step(self: Precision, optimizer: Any, closure: Any) -> None:
        original(self, optimizer, closure)
        if self.scaler is not None:
            scales.append(self.scaler.get_scale())

    monkeypatch.setattr(Precision, "step", step)
    events = run_loop(tiny_config(run__precision="fp16", run__max_steps=40))
    assert len(scales) == 40
    drops = sum(b < a for a, b in zip([65536.0, *scales], scales, strict=False))
    assert drops >= 3  # each amplified step at least once
    reported = [n for n in of_type(events, "Notice") if "fp16 loss scaler" in n.message]
    assert sum(int(n.message.split(": ")[1].split(" ")[0]) for n in reported) == drops
    assert "not a non-finite loss" in reported[0].message
    assert of_type(events, "RunFinished")[0].reason == "completed"


def test_fp16_with_lbfgs_is_refused_naming_the_fields() -> None:
    events = run_loop(tiny_config(run__precision="fp16", optim__name="lbfgs",
                                  data__batch_size=0))
    (failed,) = of_type(events, "EngineFailed")
    assert failed.kind == "config"
    assert "run.precision = fp16" in failed.message and "lbfgs" in failed.message


def test_a_withheld_fp16_step_leaves_the_scaler_ready_for_the_next() -> None:
    # skip withholds the update after the scaler unscaled the gradients; the next step
    # must not find a half-finished scaler step ("unscale_() has already been called").
    trainer = Trainer(tiny_config(run__precision="fp16", run__on_nonfinite="skip"))
    trainer.train_step()
    with nan_output(trainer):
        trainer.train_step()
    assert trainer.nonfinite.update_skipped
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_step()
    assert not trainer.nonfinite.update_skipped
    assert trainer.precision.scale() is not None
    assert not all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(),
                                                      strict=True))


def test_a_resumed_fp16_run_goes_on_with_its_loss_scale(amplified: set[int]) -> None:
    amplified.add(5)
    config = tiny_config(run__precision="fp16")
    first = Trainer(config)
    for _ in range(12):
        first.train_step()
    first.flush()
    payload = first.checkpoint_payload()
    assert payload["scaler"]["scale"] == first.precision.scale() < 65536.0
    second = Trainer(config)
    second.restore(payload)
    assert second.precision.scale() == first.precision.scale()


def test_an_untracked_step_reads_nothing_back_from_the_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # What would wait for a GPU: a tensor's value read on the host by our code. With the
    # instruments off and run.on_nonfinite = continue, steps read none; the losses stay
    # tensors until the flush brings them over together. (torch.optim's CPU step
    # counters are its own: on a GPU they live on the host and are not device reads.)
    trainer = Trainer(tiny_config(stats__every=0, stats__hist_every=0,
                                  run__on_nonfinite="continue"))
    trainer.train_step()  # the first step may build what it keeps
    reads: list[str] = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def spy(self: torch.Tensor, *args: Any, _name: str = name, _orig: Any = original
                ) -> Any:
            caller = sys._getframe(1).f_code.co_filename
            if f"{os.sep}trainlab{os.sep}" in caller:
                reads.append(f"{_name} in {caller}")
            return _orig(self, *args)

        monkeypatch.setattr(torch.Tensor, name, spy)
    for _ in range(5):
        trainer.train_step()
    monkeypatch.undo()
    assert reads == []
    assert len(trainer.metrics.losses) == 6
    assert all(isinstance(loss, torch.Tensor) for loss in trainer.metrics.losses)


def test_the_loop_runs_with_every_precision_from_a_queue() -> None:
    for precision in ("bf16", "fp16"):
        events: list[Any] = []
        finished = run(tiny_config(run__precision=precision, run__max_steps=5),
                       queue.Queue(), events.append)
        assert finished.reason == "completed", of_type(events, "EngineFailed")


# --- run.device ----------------------------------------------------------------------


def test_run_device_takes_cuda_n_and_names_what_is_allowed() -> None:
    from trainlab.core.config import Config, ConfigError

    assert Config().with_value("run.device", "cuda:3").run.device == "cuda:3"
    for bad in ("gpu", "cuda:", "cuda:x", "cuda:1:2"):
        with pytest.raises(ConfigError) as caught:
            Config().with_value("run.device", bad)
        message = str(caught.value)
        assert f"run.device = {bad!r}" in message
        assert "auto, cpu, cuda, mps, or cuda:N" in message


def test_a_device_this_machine_lacks_is_a_config_error_naming_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from trainlab.core.config import ConfigError
    from trainlab.engine.build import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for name, words in (("cuda", "no CUDA device"), ("cuda:1", "no CUDA device"),
                        ("mps", "MPS is not available")):
        with pytest.raises(ConfigError, match=words):
            resolve_device(name)
    # Two CUDA devices: cuda:1 is one of them, cuda:2 is not; auto prefers CUDA to MPS.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"has 2 CUDA device\(s\): use cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("mps")


async def test_the_config_view_offers_a_cuda_n_device_as_it_is() -> None:
    # A run configured for cuda:1 opens in the app: the Select shows that value too.
    from textual.app import App, ComposeResult
    from textual.widgets import Select

    from trainlab.core.config import Config
    from trainlab.tui.widgets.config_panel import ConfigPanel, widget_id

    class Host(App[None]):
        def compose(self) -> ComposeResult:
            yield ConfigPanel(Config().with_value("run.device", "cuda:1"))

    async with Host().run_test() as pilot:
        select = pilot.app.query_one(f"#{widget_id('run.device')}", Select)
        assert select.value == "cuda:1"
