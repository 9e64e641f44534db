"""Tests for trainlab.core.protocol: every message through strict JSON and back, tags,
rejections."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from trainlab.core import protocol
from trainlab.core.config import Config
from trainlab.core.protocol import (
    COMMANDS,
    EVENTS,
    AlertRaised,
    Attach,
    Attached,
    CheckpointSaved,
    CommandRejected,
    ControlChanged,
    DatasetInfo,
    EngineFailed,
    EvalDone,
    FinalMetrics,
    FindLr,
    Fix,
    Histogram,
    HyperChanged,
    LayerInfo,
    LayerStats,
    LayerStatsSnapshot,
    LrFound,
    MetricsBatch,
    ModelInfo,
    NonFiniteDetected,
    Notice,
    Pause,
    RequestSnapshot,
    Resume,
    RunFinished,
    RunStarted,
    SaveCheckpoint,
    SetHyper,
    StateChanged,
    Step,
    Stop,
    TakeControl,
    from_dict,
    from_json,
    to_dict,
    to_json,
)

NAN, INF = math.nan, math.inf

MODEL = ModelInfo(
    arch="mlp",
    layers=(
        LayerInfo("0", "Linear", (2,), 6),
        LayerInfo("1", "ReLU", (2,), 0),
        LayerInfo("head", "Conv2d", (8, 4, 4), 80),
    ),
    params=86,
)
DATASET = DatasetInfo(
    name="spirals",
    task="classification",
    input_shape=(1, 8, 8),
    num_classes=3,
    train_size=90,
    val_size=30,
    class_names=("a", "b", "ünïcode \"quoted\""),
    train_counts=(30, 30, 30),
    val_counts=(10, 10, 10),
)
FINAL_NONE = FinalMetrics(
    step=0, epoch=0, train_loss=None, val_loss=None, val_accuracy=None,
    best_val_loss=None, best_step=None, elapsed_s=0.0,
)
FINAL_NONFINITE = FinalMetrics(
    step=12, epoch=3, train_loss=NAN, val_loss=INF, val_accuracy=0.5,
    best_val_loss=-INF, best_step=7, elapsed_s=1.25,
)

# Representative instances of every command and event: non-finite floats in float
# fields, None in optional ones, nested dataclasses filled in.
EXAMPLES: dict[type, list[Any]] = {
    Pause: [Pause()],
    Resume: [Resume()],
    Step: [Step(), Step(5)],
    Stop: [Stop(), Stop("SIGTERM")],
    Attach: [Attach(), Attach("view")],
    TakeControl: [TakeControl()],
    Attached: [Attached("20261201-210000-ab12", 3, "view", 0), Attached("r", 1, "control", 99)],
    ControlChanged: [ControlChanged(0), ControlChanged(2, "client 2 took control")],
    SetHyper: [
        SetHyper("optim.lr", 0.01),
        SetHyper("optim.lr", INF),
        SetHyper("optim.lr", -INF),
        SetHyper("optim.lr", NAN),
        SetHyper("data.batch_size", 32),
        SetHyper("optim.name", "sgd"),
        SetHyper("data.augment", ("noise", "flip")),
        SetHyper("data.augment", ()),
        SetHyper("model.residual", True),
        SetHyper("reg.clip_norm", None),
        SetHyper("optim.lr", 5e-4, "fix: divergence"),
    ],
    SaveCheckpoint: [SaveCheckpoint(), SaveCheckpoint("/tmp/ck pt/step_1.pt")],
    RunStarted: [
        RunStarted(
            config=Config().to_dict(),
            model=MODEL,
            dataset=DATASET,
            loss="cross_entropy",
            device="cpu",
            threads=3,
            steps_per_epoch=2,
            total_steps=40,
        ),
        RunStarted(
            config={},
            model=ModelInfo("custom", (), 0),
            dataset=dataclasses.replace(
                DATASET, task="regression", num_classes=0, class_names=(), train_counts=(),
                val_counts=(),
            ),
            loss="mse",
            device="cuda",
            threads=1,
            steps_per_epoch=1,
            total_steps=1,
        ),
    ],
    MetricsBatch: [
        MetricsBatch(
            steps=(1, 2, 3, 4),
            losses=(0.5, NAN, INF, -INF),
            lrs=(1e-3, 0.0, INF, NAN),
            epoch=0,
            steps_per_sec=INF,
            samples_per_sec=NAN,
        ),
        MetricsBatch(steps=(), losses=(), lrs=(), epoch=2, steps_per_sec=0.0,
                     samples_per_sec=-INF),
    ],
    EvalDone: [
        EvalDone(step=10, epoch=1, val_loss=NAN, val_accuracy=None, train_loss=INF,
                 best_val_loss=-INF),
        EvalDone(step=20, epoch=2, val_loss=0.25, val_accuracy=NAN, train_loss=0.5,
                 best_val_loss=0.25),
        EvalDone(step=30, epoch=3, val_loss=0.2, val_accuracy=INF, train_loss=0.4,
                 best_val_loss=0.2),
    ],
    StateChanged: [StateChanged("running", 0), StateChanged("failed", 9, "loss was nan")],
    HyperChanged: [
        HyperChanged(3, "optim.lr", 0.001, 0.01),
        HyperChanged(3, "optim.lr", NAN, INF, "odd but encodable"),
        HyperChanged(4, "data.augment", ("noise",), ("noise", "flip"), "note"),
        HyperChanged(5, "reg.clip_norm", None, -INF),
        HyperChanged(6, "optim.name", "adam", "sgd", "optimizer state reset"),
        HyperChanged(7, "optim.lr", 1e-3, 1e-4, "rollback to step 5 after a non-finite loss "
                     "at step 7", rollback=True),
    ],
    CommandRejected: [CommandRejected("Resume", "not paused", 0)],
    CheckpointSaved: [CheckpointSaved(7, "checkpoints/step_7.pt")],
    Notice: [Notice(1, "warning", "line one\nline two \u2713")],
    EngineFailed: [
        EngineFailed(0, "config", "bad"),
        EngineFailed(3, "internal", "boom", 'Traceback:\n  File "x.py"\n'),
    ],
    RunFinished: [RunFinished("failed", FINAL_NONE), RunFinished("completed", FINAL_NONFINITE)],
    RequestSnapshot: [RequestSnapshot(), RequestSnapshot(histograms=False)],
    LayerStatsSnapshot: [
        LayerStatsSnapshot(
            step=10,
            layers=(
                LayerStats("blocks.0.linear", "Linear", "Tanh", 0.01, 0.5, -1.0, 1.0, 0.2, None,
                           0.0, 1e-4, 3.2, 0.05, 0.1, 1e-3, 0.02, 1e-3),
                LayerStats("head", "Linear", "", NAN, INF, -INF, INF, None, None, 0.0, None,
                           NAN, NAN, INF, NAN, INF, None),
            ),
            histograms=(Histogram("head", "weight", -0.5, 0.5, (1, 2, 3)),
                        Histogram("head", "act", NAN, INF, ())),
            sample_rows=256,
            overhead=0.012,
        ),
        LayerStatsSnapshot(step=0, layers=(), histograms=(), sample_rows=64),
    ],
    NonFiniteDetected: [NonFiniteDetected(12, "blocks.3.linear", "gradient", "went inf")],
    FindLr: [FindLr(), FindLr(1e-6, 1.0, 50)],
    AlertRaised: [
        AlertRaised(40, "exploding_gradients", "critical", ("blocks.0.linear", "head"),
                    {"grad_norm": (1.0, 1e3, INF), "ratio": NAN},
                    "gradient norms grow with depth",
                    (Fix("clip the gradient norm at 1 now", {"reg.clip_norm": 1.0}),
                     Fix("Kaiming init and restart", {"init.scheme": "kaiming_normal",
                                                     "data.augment": ("noise",)}, True))),
        AlertRaised(0, "plateau", "info", (), {}, "", ()),
    ],
    LrFound: [LrFound(3, (1e-7, 1e-6, 1e-5), (2.3, NAN, INF), 1e-6, "steepest descent"),
              LrFound(0, (), (), None, "the loss never fell")],
}

ALL = [pytest.param(x, id=f"{type(x).__name__}-{i}")
       for xs in EXAMPLES.values() for i, x in enumerate(xs)]


def same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN and insists on identical types."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name))
                   for f in dataclasses.fields(a))
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {name} in output")


def test_same_helper() -> None:
    assert same(NAN, NAN) and same((1.0, NAN), (1.0, NAN))
    assert not same(NAN, 1.0) and not same(INF, -INF)
    assert not same((1, 2), [1, 2]) and not same(1, 1.0) and not same(True, 1)
    assert not same(EvalDone(1, 1, NAN, None, 0.0, 0.0), EvalDone(1, 1, NAN, 0.5, 0.0, 0.0))


def test_every_message_class_has_examples() -> None:
    registered = set(EVENTS.values()) | set(COMMANDS.values())
    assert set(EXAMPLES) == registered, "add an instance of each new message class to EXAMPLES"
    assert all(EXAMPLES[cls] for cls in EXAMPLES)
    assert not set(EVENTS) & set(COMMANDS)


@pytest.mark.parametrize("message", ALL)
def test_json_round_trip(message: Any) -> None:
    line = to_json(message)
    assert "\n" not in line
    json.loads(line, parse_constant=_reject_constant)  # strict: no NaN/Infinity literals
    back = from_json(line)
    assert type(back) is type(message)
    assert same(back, message), (back, message)
    if not _has_nan(message):
        assert back == message


@pytest.mark.parametrize("message", ALL)
def test_dict_round_trip_and_tag(message: Any) -> None:
    d = to_dict(message)
    name = type(message).__name__
    tag = "event" if name in EVENTS else "command"
    assert d[tag] == name
    if tag == "command":
        assert "event" not in d
    assert set(d) - {tag} == {f.name for f in dataclasses.fields(message)}
    assert same(from_dict(d), message)
    json.dumps(d, allow_nan=False)


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if dataclasses.is_dataclass(value):
        return any(_has_nan(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (tuple, list)):
        return any(_has_nan(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    return False


def test_no_message_has_a_field_named_like_a_tag() -> None:
    # A field called "event" or "command" would clash with the JSON tags: a client that
    # tells commands from events by the key it finds would misread the message.
    for cls in (*EVENTS.values(), *COMMANDS.values()):
        names = {f.name for f in dataclasses.fields(cls)}
        assert not names & {"event", "command"}, cls.__name__
    d = to_dict(CommandRejected("Resume", "not paused", 4))
    assert d["event"] == "CommandRejected" and "command" not in d
    assert d["command_type"] == "Resume"


def test_nonfinite_floats_are_written_as_strings() -> None:
    d = to_dict(MetricsBatch((1, 2, 3), (NAN, INF, -INF), (0.5, 0.5, 0.5), 0, 1.0, 2.0))
    assert d["losses"] == ["NaN", "Infinity", "-Infinity"]
    d = to_dict(EvalDone(1, 0, INF, None, -INF, NAN))
    assert (d["val_loss"], d["val_accuracy"], d["train_loss"], d["best_val_loss"]) == (
        "Infinity", None, "-Infinity", "NaN")


def test_tuples_come_back_as_tuples() -> None:
    started = EXAMPLES[RunStarted][0]
    back = from_json(to_json(started))
    assert isinstance(back.model.layers, tuple)
    assert all(isinstance(layer, LayerInfo) for layer in back.model.layers)
    assert isinstance(back.model.layers[2].output_shape, tuple)
    assert back.model.layers[2].output_shape == (8, 4, 4)
    for name in ("input_shape", "class_names", "train_counts", "val_counts"):
        assert isinstance(getattr(back.dataset, name), tuple), name
    batch = from_json(to_json(EXAMPLES[MetricsBatch][0]))
    assert isinstance(batch.steps, tuple) and isinstance(batch.losses, tuple)
    hyper = from_json(to_json(HyperChanged(1, "data.augment", ("noise",), ("noise", "flip"))))
    assert hyper.old == ("noise",) and hyper.new == ("noise", "flip")


def test_float_fields_come_back_as_floats() -> None:
    # JSON writes 2.0 as 2.0, but a hand-written or other-language sender may write 2.
    event = from_dict({"event": "EvalDone", "step": 1, "epoch": 0, "val_loss": 2,
                       "val_accuracy": 1, "train_loss": "NaN", "best_val_loss": 0})
    assert type(event.val_loss) is float and event.val_loss == 2.0
    assert type(event.val_accuracy) is float
    assert math.isnan(event.train_loss)


# --- rejections ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "part"),
    [
        ({"event": "NoSuchEvent", "step": 1}, "NoSuchEvent"),
        ({"command": "Explode"}, "Explode"),
        ({"command": "RunStarted"}, "RunStarted"),  # an event name under the command tag
        ({"event": "Pause"}, "Pause"),  # a command name under the event tag
        ({"step": 1, "path": "x"}, "'event' or 'command'"),
        ({}, "'event' or 'command'"),
        ({"command": "Pause", "extra": 1}, "extra"),
        ({"command": "Step", "n": 1, "m": 2}, "field(s) m"),
        ({"event": "CheckpointSaved", "step": 1}, "CheckpointSaved"),  # missing field
        ({"event": "RunFinished", "reason": "completed",
          "final": {"step": 1, "bogus": 2}}, "bogus"),  # nested unknown field
        ({"event": "EvalDone", "step": 1, "epoch": 0, "val_loss": "nan",
          "val_accuracy": None, "train_loss": 0.0, "best_val_loss": 0.0}, "EvalDone.val_loss"),
        ({"event": "LrFound", "step": 0, "lrs": [1e-3], "losses": [1, "x"],
          "suggested_lr": None, "reason": ""}, "LrFound.losses"),  # the field is named
    ],
)
def test_from_dict_rejects(data: dict[str, Any], part: str) -> None:
    with pytest.raises(ValueError) as info:
        from_dict(data)
    assert part in str(info.value)


def test_from_dict_does_not_mutate_its_argument() -> None:
    data = to_dict(Step(3))
    copy = dict(data)
    assert from_dict(data) == Step(3)
    assert data == copy


def test_from_json_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        from_json("not json")
    with pytest.raises(ValueError):
        from_json('{"event": "Nope"}')


def test_to_dict_rejects_non_messages() -> None:
    with pytest.raises(TypeError):
        to_dict(LayerInfo("0", "Linear", (1,), 2))  # a part of a message, not a message
    with pytest.raises(TypeError):
        to_dict({"command": "Pause"})


def test_messages_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Step(2).n = 3  # type: ignore[misc]


# --- plain data only ---------------------------------------------------------------------

# Config.to_dict() writes tuples as lists (as TOML does), so RunStarted.config holds lists.
PLAIN = (int, float, str, bool, type(None), tuple, list, dict)


def assert_plain(value: Any, where: str) -> None:
    """Fail if anything but plain data (or a dataclass of it) hides in ``value``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            assert_plain(getattr(value, f.name), f"{where}.{f.name}")
        return
    assert type(value) in PLAIN, f"{where} is a {type(value).__name__}"
    if isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            assert_plain(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            assert type(k) is str, f"{where} has a {type(k).__name__} key"
            assert_plain(v, f"{where}[{k!r}]")


@pytest.mark.parametrize("message", ALL)
def test_no_tensor_hides_in_a_message(message: Any) -> None:
    assert_plain(message, type(message).__name__)


def test_plain_data_check_catches_tensors() -> None:
    with pytest.raises(AssertionError, match="Tensor"):
        assert_plain(SetHyper("optim.lr", torch.tensor(0.1)), "SetHyper")
    with pytest.raises(AssertionError, match="Tensor"):
        assert_plain(MetricsBatch((1,), (torch.tensor(1.0),), (0.1,), 0, 1.0, 1.0), "m")
    with pytest.raises(AssertionError, match="float32"):
        assert_plain(EvalDone(1, 0, np.float32(1.0), None, 0.0, 0.0), "e")


def test_tensor_in_a_message_is_not_silently_encoded() -> None:
    with pytest.raises(TypeError):
        to_json(SetHyper("optim.lr", torch.tensor(0.1)))


def test_module_exports_match_registries() -> None:
    for name, cls in {**EVENTS, **COMMANDS}.items():
        assert getattr(protocol, name) is cls
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_is_command_tells_commands_from_events_and_other_objects() -> None:
    for cls, examples in EXAMPLES.items():
        for example in examples:
            session = cls in (Attach, TakeControl)
            assert protocol.is_session_command(example) is session
            assert protocol.is_command(example) is (cls.__name__ in protocol.COMMANDS
                                                    and not session)
    assert not protocol.is_command("Pause") and not protocol.is_command(None)
    assert not protocol.is_session_command("Attach")


@pytest.mark.parametrize("line", ["[1, 2, 3]", "42", '"Pause"', "null"])
def test_a_line_that_is_not_an_object_is_refused_in_words(line: str) -> None:
    with pytest.raises(ValueError, match="a message is a JSON object with an 'event' or "
                                         "'command' field"):
        protocol.from_json(line)
