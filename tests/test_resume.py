"""Resume and fork: a run continued in a new process is the run that never stopped."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import losses_by_step, of_type, tiny_config
from trainlab.core import protocol
from trainlab.core.config import ConfigError
from trainlab.core.protocol import Pause, Resume, SaveCheckpoint, SetHyper, Step, Stop
from trainlab.core.rundir import CHECKPOINT_DIR
from trainlab.engine.checkpoint import CheckpointError, Checkpoints, load
from trainlab.engine.data import load_dataset
from trainlab.engine.loop import Trainer, run
from trainlab.engine.models import build_model
from trainlab.engine.resume import fork_plan, resume_plan

REPO = Path(__file__).resolve().parents[1]

RESUME_CHILD = textwrap.dedent("""
    import json, queue, sys
    from pathlib import Path
    from trainlab.core import protocol
    from trainlab.engine.checkpoint import Checkpoints
    from trainlab.engine.loop import run
    from trainlab.engine.resume import resume_plan

    run_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    config, loaded = resume_plan(run_dir)
    print(json.dumps({"path": str(loaded.path),
                      "skipped": [[str(p), why] for p, why in loaded.skipped]}))
    keep = ("RunStarted", "StateChanged", "MetricsBatch", "Notice", "EngineFailed",
            "CheckpointSaved", "RunFinished")
    def emit(event):
        if type(event).__name__ in keep:
            print(protocol.to_json(event), flush=True)
    run(config, queue.Queue(), emit, checkpoints=Checkpoints(out), start_from=loaded.payload)
""")


def train(config, directory: Path, commands: list[Any] = ()) -> list[Any]:
    """Run in this process with the run's checkpoints in ``directory``; every event."""
    q: queue.Queue[Any] = queue.Queue()
    for command in commands:
        q.put(command)
    events: list[Any] = []
    run(config, q, events.append, checkpoints=Checkpoints(directory))
    return events


def resume_in_new_process(run_dir: Path, out: Path) -> tuple[dict, list[Any]]:
    """``resume_plan`` and the loop in a fresh interpreter: what it chose, its events."""
    done = subprocess.run([sys.executable, "-c", RESUME_CHILD, str(run_dir), str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    first, *lines = done.stdout.splitlines()
    return json.loads(first), [protocol.from_json(line) for line in lines]


def assert_same_state(a: dict, b: dict) -> None:
    """Bit-identical weights and optimizer state (torch.equal: every bit of every value)."""
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for key, value in state_a[index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b[index][key]))


@pytest.mark.slow
def test_resume_in_a_new_process_is_bit_identical_to_the_straight_run(tmp_path: Path):
    # Dropout and every augmentation draw random numbers each step; a live change of the
    # learning rate and of dropout comes before the stop; digits' epoch is 45 steps at
    # 32, so the resumed half crosses an epoch boundary (a new permutation of the data).
    config = tiny_config(data__dataset="digits", model__depth=2, model__width=32,
                         model__dropout=0.3, data__augment=["noise", "shift", "flip", "erase"],
                         optim__name="adam", run__max_steps=60, run__eval_every=20)
    changes = [SetHyper("optim.lr", 0.003, "fix: plateau"), SetHyper("model.dropout", 0.1)]
    straight = train(config, tmp_path / "straight", [Pause(), Step(10), *changes, Resume()])
    assert finished_step(straight) == 60
    first = tmp_path / "first"
    half = train(config, first / CHECKPOINT_DIR, [Pause(), Step(10), *changes, Step(20), Stop()])
    assert finished_step(half) == 30 and of_type(half, "RunFinished")[0].reason == "stopped"
    stopped = load(first / CHECKPOINT_DIR / "last.pt")
    assert (stopped["step"], stopped["epoch"]) == (30, 0)

    chosen, resumed = resume_in_new_process(first, tmp_path / "resumed")

    assert Path(chosen["path"]).name == "last_good.pt" and chosen["skipped"] == []
    started = resumed[0]
    assert isinstance(started, protocol.RunStarted) and started.resumed_from_step == 30
    assert started.config["model"]["dropout"] == 0.1  # the effective config, changes kept
    assert (resumed[1].state, resumed[1].step, resumed[1].reason) == (
        "running", 30, "resumed from step 30")
    # The resumed run's events continue the step count, with the straight run's losses.
    straight_losses, resumed_losses = losses_by_step(straight), losses_by_step(resumed)
    assert sorted(resumed_losses) == list(range(31, 61))
    assert resumed_losses == {s: straight_losses[s] for s in range(31, 61)}
    end, reference = load(tmp_path / "resumed" / "last.pt"), load(tmp_path / "straight" /
                                                                  "last.pt")
    assert (end["step"], end["epoch"], reference["epoch"]) == (60, 1, 1)
    assert_same_state(end, reference)
    assert end["changes"] == reference["changes"] == [
        {"step": 10, "key": "optim.lr", "old": 0.001, "new": 0.003, "why": "fix: plateau"},
        {"step": 10, "key": "model.dropout", "old": 0.3, "new": 0.1, "why": ""},
    ]


def finished_step(events: list[Any]) -> int:
    return of_type(events, "RunFinished")[0].final.step


@pytest.mark.slow
def test_a_crashed_run_resumes_from_its_newest_whole_checkpoint(tmp_path: Path):
    # checkpoint_every = 7 against 5-step epochs: the checkpoint falls mid-epoch. The
    # plateau schedule's state (its factor, best loss, patience) decides the lr after it.
    config = tiny_config(model__depth=2, model__dropout=0.2, data__augment=["noise"],
                         run__max_steps=21, run__checkpoint_every=7, run__eval_every=3,
                         schedule__name="reduce_on_plateau", schedule__patience=1,
                         optim__lr=0.05)
    straight = tmp_path / "straight"
    train(config, straight)
    assert Checkpoints(straight).steps() == [7, 14, 21]
    assert load(straight / "step_00000014.pt")["schedule"]["plateau_factor"] < 1
    # What a crash can leave: step 14 written whole, but not yet linked as last.pt, and
    # a last_good.pt that the disk has since mangled (half of step 21).
    crashed = tmp_path / "crashed" / CHECKPOINT_DIR
    crashed.mkdir(parents=True)
    shutil.copyfile(straight / "step_00000014.pt", crashed / "step_00000014.pt")
    whole = (straight / "step_00000021.pt").read_bytes()
    (crashed / "last_good.pt").write_bytes(whole[: len(whole) // 2])

    chosen, resumed = resume_in_new_process(crashed.parent, tmp_path / "resumed")

    assert Path(chosen["path"]).name == "step_00000014.pt"
    assert [(Path(p).name, "truncated" in why) for p, why in chosen["skipped"]] == [
        ("last_good.pt", True)]
    assert resumed[0].resumed_from_step == 14
    assert sorted(losses_by_step(resumed)) == list(range(15, 22))
    assert_same_state(load(tmp_path / "resumed" / "last.pt"), load(straight / "last.pt"))


def test_nothing_to_resume_is_said(tmp_path: Path):
    with pytest.raises(CheckpointError, match="it has none"):
        resume_plan(tmp_path)
    train(tiny_config(run__max_steps=5), tmp_path / CHECKPOINT_DIR)
    with pytest.raises(CheckpointError, match=r"reached run.max_steps = 5 \(step 5\).*fork"):
        resume_plan(tmp_path)


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 15 steps with checkpoints at 5, 10 and 15 (adam, lr 0.01)."""
    run_dir = tmp_path_factory.mktemp("parent")
    train(tiny_config(run__max_steps=15, run__checkpoint_every=5, optim__name="adam",
                      optim__lr=0.01), run_dir / CHECKPOINT_DIR)
    return run_dir


def test_a_fork_whose_weights_do_not_fit_names_the_parameter_and_both_shapes(parent: Path):
    saved = load(parent / CHECKPOINT_DIR / "step_00000010.pt")["model"]
    config = tiny_config(model__width=32)
    data = load_dataset(config.data, config.run.seed)
    new = build_model(config.model, data.input_shape, data.num_classes).state_dict()
    name = next(n for n in new if new[n].shape != saved[n].shape)  # the first misfit
    old_shape, new_shape = tuple(saved[name].shape), tuple(new[name].shape)
    with pytest.raises(ConfigError) as caught:
        fork_plan(parent, 10, ["model.width=32"])
    message = str(caught.value)
    assert message.startswith("model.width = 32 (was 16) does not fit the checkpoint's weights")
    assert f"{name} is {old_shape} in the checkpoint and {new_shape} in the new model" in message
    with pytest.raises(ConfigError, match=r"model.depth = 2 \(was 1\).*the new model has "
                                          r"blocks\.1\.linear\.weight \(16, 16\), which the "
                                          "checkpoint lacks"):
        fork_plan(parent, None, {"model.depth": 2})
    # The engine refuses it too, should anyone pass it the payload anyway.
    payload = load(parent / CHECKPOINT_DIR / "last.pt")
    events: list[Any] = []
    run(tiny_config(model__width=32), queue.Queue(), events.append, start_from=payload)
    failed = of_type(events, "EngineFailed")[0]
    assert failed.kind == "config" and "model.width = 32 (was 16)" in failed.message


def test_a_fork_from_a_step_with_another_optimizer_and_lr(parent: Path):
    plan = fork_plan(parent, 5, ["optim.name=sgd", "optim.lr=0.2"])
    assert (plan.parent, plan.parent_step) == (parent.name, 5)
    assert plan.source == parent / CHECKPOINT_DIR / "step_00000005.pt"
    assert (plan.config.optim.name, plan.config.optim.lr) == ("sgd", 0.2)
    trainer = Trainer(plan.config)
    notes = trainer.restore(plan.payload)
    assert notes == ["optim.name = sgd (the checkpoint's is adam): the optimizer starts with "
                     "empty state"]
    assert trainer.optimizer.state == {}  # Adam's moments are not SGD's
    assert trainer.step == 5
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, plan.payload["model"][name])
    events: list[Any] = []
    run(plan.config, queue.Queue(), events.append, start_from=plan.payload)
    assert events[0].resumed_from_step == 5
    lrs = {lr for batch in of_type(events, "MetricsBatch") for lr in batch.lrs}
    assert lrs == {0.2}  # the fork's lr, not the parent's
    assert sorted(losses_by_step(events)) == list(range(6, 16))
    assert "starts with empty state" in of_type(events, "Notice")[0].message


def test_a_fork_with_another_seed_draws_fresh_streams(parent: Path):
    plan = fork_plan(parent, 10, ["run.seed=5"])
    trainer = Trainer(plan.config)
    notes = trainer.restore(plan.payload)
    assert len(notes) == 1 and notes[0].startswith("fresh data order, augmentation and dropout "
                                                   "streams from run.seed = 5 (run.seed")
    assert trainer.batches.epoch == plan.payload["epoch"] == 2


def test_a_fork_that_would_end_at_once_is_refused_and_a_longer_one_is_not(parent: Path):
    # The parent ran its 15 steps: a fork of its last checkpoint has nothing left to do.
    with pytest.raises(CheckpointError, match=r"the fork would end before its first step: "
                                              r"it reached run.max_steps = 15 \(step 15\)"):
        fork_plan(parent, None)
    plan = fork_plan(parent, None, ["run.max_steps=30"])
    assert plan.parent_step == 15 and plan.config.run.max_steps == 30


def test_a_missing_fork_step_names_the_steps_there_are(parent: Path):
    with pytest.raises(CheckpointError, match=r"no loadable checkpoint of step 7 .*steps: 5, "
                                              r"10, 15"):
        fork_plan(parent, 7)


def test_a_checkpoint_of_another_format_is_a_config_failure(parent: Path):
    payload = {**load(parent / CHECKPOINT_DIR / "last.pt"), "format": 99}
    events: list[Any] = []
    run(tiny_config(run__max_steps=20), queue.Queue(), events.append, start_from=payload)
    failed = of_type(events, "EngineFailed")[0]
    assert failed.kind == "config" and "checkpoint format 99" in failed.message


def test_rollback_state_survives_a_checkpoint(tmp_path: Path):
    config = tiny_config(run__on_nonfinite="rollback", run__max_steps=20)
    path = tmp_path / "c.pt"
    q: queue.Queue[Any] = queue.Queue()
    for command in (Pause(), Step(3), SaveCheckpoint(str(path)), Stop()):
        q.put(command)
    run(config, q, lambda event: None)
    payload = load(path)
    assert payload["good_state"]["step"] == 0  # kept before the first update
    trainer = Trainer(config)
    trainer.restore(payload)
    assert trainer.nonfinite.good_state is not None and trainer.nonfinite.good_state.step == 0
    for name, tensor in trainer.nonfinite.good_state.model.items():
        assert torch.equal(tensor, payload["good_state"]["model"][name])


def test_a_checkpoint_of_another_shape_does_not_crash_the_plan(parent: Path, tmp_path: Path):
    # A payload whose counters and epoch are not what the loop writes: the plan is made,
    # and restoring it is what reports the problem (an EngineFailed, not a traceback).
    payload = {**load(parent / CHECKPOINT_DIR / "step_00000005.pt"), "counters": "odd",
               "epoch": "1"}
    config = payload["config"]
    config["run"]["max_epochs"] = 100  # so that both are looked at
    config["reg"]["early_stop_patience"] = 3
    target = tmp_path / CHECKPOINT_DIR
    Checkpoints(target).save(payload, 5, finite=True)
    assert resume_plan(tmp_path).checkpoint.payload["counters"] == "odd"
    assert fork_plan(tmp_path, 5).parent_step == 5
