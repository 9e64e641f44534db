"""The pre-flight doctor: each check fails (or warns, where that is its worst) on a config
made to fail it, passes on the default config; exit codes and the --json shape."""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from tests.doctor_user_code import IMBALANCED_COUNTS
from trainlab.cli.commands import main
from trainlab.core.config import Config
from trainlab.core.exits import EXIT_CHECK_FAILED, EXIT_FAILED
from trainlab.doctor import checks as doctor
from trainlab.doctor.checks import (
    FAIL,
    IMBALANCE_WARN_RATIO,
    INIT_LOSS_FAIL_FACTOR,
    INIT_LOSS_REGRESSION_WARN_FACTOR,
    INIT_LOSS_WARN_FACTOR,
    INPUT_MEAN_FAIL,
    INPUT_SCALE_FAIL,
    INPUT_SCALE_WARN,
    LARGE_TRAINING_SET,
    OVERFIT_MAX_STEPS,
    OVERFIT_NEAR_ZERO_FRACTION,
    PASS,
    WARN,
    examine,
)
from trainlab.engine.loop import Trainer

USER = "tests.doctor_user_code:"
CHECK_NAMES = ["init_loss", "gradients", "input_scaling", "labels", "output_activation",
               "overfit_batch", "batch_size", "lr_range"]
TINY = ["--set", "data.dataset=blobs", "--set", "data.samples=200", "--set", "model.depth=1",
        "--set", "model.width=16", "--set", "run.threads=1"]


def _digits(**changes: Any) -> Trainer:
    """The default run (digits MLP) with ``changes`` (dotted keys with '__')."""
    values = {key.replace("__", "."): value for key, value in changes.items()}
    return Trainer(Config().with_values({"run.threads": 1, **values}))


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-strict JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


# --- the default config, through the CLI ---------------------------------------------------


def test_the_default_config_passes_every_check_and_exits_0(capsys):
    assert main(["doctor", "--json", "--set", "run.threads=1"]) == 0
    payload = _strict(capsys.readouterr().out)
    assert set(payload) == {"checks", "passed", "warned", "failed"}
    assert [c["name"] for c in payload["checks"]] == CHECK_NAMES
    assert all(set(c) == {"name", "status", "detail"} for c in payload["checks"])
    assert [c["name"] for c in payload["checks"] if c["status"] != PASS] == []
    assert (payload["passed"], payload["warned"], payload["failed"]) == (8, 0, 0)
    init = payload["checks"][0]["detail"]
    assert f"{math.log(10):.4g}" in init  # ln 10 for the ten digit classes


def test_a_failing_check_exits_with_its_own_code_in_text_and_json(capsys):
    assert EXIT_CHECK_FAILED not in (0, EXIT_FAILED)  # a verdict, not a crash
    argv = ["doctor", *TINY, "--set", "init.scheme=zeros"]
    assert main(argv) == EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    lines = out.splitlines()
    statuses = [line.split()[:2] for line in lines if line[:4] in ("PASS", "WARN", "FAIL")]
    assert [name for _, name in statuses] == CHECK_NAMES
    assert ["FAIL", "gradients"] in statuses
    assert all(line.startswith("      ") for line in lines[1:2])  # the detail is indented
    failed = sum(1 for status, _ in statuses if status == "FAIL")
    warned = sum(1 for status, _ in statuses if status == "WARN")
    assert lines[-1] == f"doctor: {8 - failed - warned} passed, {warned} warned, {failed} failed"
    assert main([*argv, "--json"]) == EXIT_CHECK_FAILED
    payload = _strict(capsys.readouterr().out)
    assert payload["failed"] == failed >= 1
    assert payload["passed"] + payload["warned"] + payload["failed"] == 8


def test_bad_config_exits_2_and_user_code_errors_exit_1(tmp_path, monkeypatch, capsys):
    assert main(["doctor", "--set", "model.depth=0"]) == 2
    err = capsys.readouterr().err
    assert "model.depth = 0" in err and "Traceback" not in err
    (tmp_path / "doctor_broken_data.py").write_text(textwrap.dedent("""
        def load():
            raise ValueError("no such table")
    """))
    monkeypatch.chdir(tmp_path)
    argv = ["doctor", "--set", "data.dataset=custom",
            "--set", "data.factory=doctor_broken_data:load"]
    assert main(argv) == EXIT_FAILED
    err = capsys.readouterr().err
    assert 'raise ValueError("no such table")' in err
    assert "data.factory doctor_broken_data:load raised ValueError: no such table" in err


def test_the_doctor_writes_nothing_and_leaves_the_run_as_it_was(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = Trainer(tiny_config(**{"model__dropout": 0.2}))
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng, order = torch.get_rng_state(), trainer.batches.generator.get_state()
    report = examine(trainer)
    assert [c.name for c in report.checks] == CHECK_NAMES
    assert all(torch.equal(weights[k], v) for k, v in trainer.model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert torch.equal(order, trainer.batches.generator.get_state())
    assert trainer.step == 0 and all(p.grad is None for p in trainer.model.parameters())
    assert list(tmp_path.iterdir()) == []


# --- each check on a config made to fail it ---------------------------------------------------


@pytest.mark.parametrize("bias", [1.0, 4.0, 12.0])
def test_init_loss_follows_the_loss_of_an_uninformed_guess(bias):
    # A head that ignores its input and favours class 0 by `bias`: the loss is known in
    # closed form on the 160 training samples the check sees (all of them).
    trainer = Trainer(tiny_config())
    with torch.no_grad():
        trainer.model.head.weight.zero_()
        trainer.model.head.bias.copy_(torch.tensor([bias, 0.0, 0.0]))
    y = trainer.data.y_train.numpy()
    expected = float(np.mean(np.log(math.exp(bias) + 2) - bias * (y == 0)))
    ratio = expected / math.log(3)
    status, detail = doctor.check_init_loss(trainer)
    want = FAIL if ratio > INIT_LOSS_FAIL_FACTOR else WARN if ratio > INIT_LOSS_WARN_FACTOR \
        else PASS
    assert status == want
    assert f"loss at init {expected:.4g}" in detail and f"{math.log(3):.4g}" in detail


def test_init_loss_fails_on_a_too_large_init():
    status, detail = doctor.check_init_loss(_digits(init__scheme="normal", init__std=1.0,
                                                    model__activation="tanh"))
    assert status == FAIL and "confidently wrong" in detail and "xavier_normal" in detail


def test_regression_init_loss_is_judged_against_unit_variance_outputs():
    trainer = Trainer(tiny_config(**{"data__dataset": "sine"}))
    with torch.no_grad():  # outputs of std ~3 that ignore the input: ~10x mean(y^2) + 1
        trainer.model.head.weight.zero_()
        trainer.model.head.bias.fill_(3.0)
    y = trainer.data.y_train.numpy()
    expected, reference = float(np.mean((y - 3.0) ** 2)), float(np.mean(y**2) + 1)
    status, detail = doctor.check_init_loss(trainer)
    assert expected / reference > INIT_LOSS_FAIL_FACTOR and status == FAIL
    assert f"{expected:.4g}" in detail and f"{reference:.4g}" in detail


@pytest.mark.parametrize(("task", "changes"), [
    ("classification", {}), ("regression", {"data__dataset": "sine"})])
def test_init_loss_at_1_3x_its_reference_warns_for_classes_and_passes_for_regression(
        task, changes):
    # Outputs that ignore the input, tuned to score 1.3x the reference: a confident class
    # guess is already wrong at 1.1x; a regression net of unit-scale outputs is not.
    trainer = Trainer(tiny_config(**changes))
    assert trainer.data.task == task
    x, target = doctor._probe_batch(trainer)
    with torch.no_grad():
        trainer.model.head.weight.zero_()
        _, _, upper, _ = doctor._uninformed(trainer, trainer.model(x), target)
        if task == "classification":  # logits (b, 0, 0): find b for loss = 1.3 ln 3
            bias = next(b / 100 for b in range(1000) if _bias_loss(b / 100, target) > 1.3 * upper)
            trainer.model.head.bias.copy_(torch.tensor([bias, 0.0, 0.0]))
        else:  # a constant c: mean((y - c)^2) = 1.3 * upper
            y = target.double()
            c = math.sqrt(1.3 * upper - (y**2).mean().item() + y.mean().item() ** 2)
            trainer.model.head.bias.fill_(y.mean().item() + c)
    status, detail = doctor.check_init_loss(trainer)
    if task == "classification":
        assert status == WARN and f"warn above {INIT_LOSS_WARN_FACTOR:g}x" in detail
    else:
        assert status == PASS and f"pass up to {INIT_LOSS_REGRESSION_WARN_FACTOR:g}x" in detail
    assert "1.3x" in detail


def _bias_loss(bias: float, target: torch.Tensor) -> float:
    """Cross-entropy of logits (bias, 0, 0) on ``target``, in closed form."""
    y = target.numpy()
    return float(np.mean(np.log(math.exp(bias) + 2) - bias * (y == 0)))


def test_init_loss_advice_for_a_custom_model_is_to_scale_its_last_layer():
    trainer = Trainer(tiny_config(**{"model__arch": "custom",
                                     "model__factory": USER + "relu_net_no_activation"}))
    with torch.no_grad():
        trainer.model[-1].weight.mul_(30.0)  # logits far too large: confidently wrong
    status, detail = doctor.check_init_loss(trainer)
    assert status in (WARN, FAIL)
    assert "scale your model's last layer down" in detail and "init.scheme = auto" not in detail


def test_gradients_fail_with_zero_init_naming_the_layers():
    status, detail = doctor.check_gradients(Trainer(tiny_config(**{"init__scheme": "zeros"})))
    assert status == FAIL
    assert "blocks.0.linear.weight" in detail and "all zeros" in detail
    assert "head.bias" not in detail  # the output bias still learns the class prior


def test_gradients_fail_for_an_unused_parameter():
    trainer = Trainer(tiny_config(**{"model__arch": "custom",
                                     "model__factory": USER + "unused_parameter_net"}))
    status, detail = doctor.check_gradients(trainer)
    assert status == FAIL
    assert "forgotten.weight, forgotten.bias" in detail and "not used by forward()" in detail


def test_input_scaling_fails_on_raw_digits_and_names_the_worst_pixel():
    trainer = _digits(data__preprocess="none")
    status, detail = doctor.check_input_scaling(trainer)
    x = trainer.x_train.numpy().reshape(len(trainer.x_train), -1).astype(np.float64)
    means = x.mean(axis=0)
    worst = int(np.argmax(np.abs(means)))
    assert abs(means[worst]) > INPUT_MEAN_FAIL and status == FAIL
    row, col = divmod(worst, 8)
    assert f"|mean| at most {abs(means[worst]):.3g}" in detail
    assert f"pixel (channel 0, row {row}, col {col}) mean {means[worst]:.3g}" in detail
    assert "data.preprocess = standardize" in detail


def test_input_scaling_warns_when_centred_but_not_scaled():
    trainer = _digits(data__preprocess="center")
    std = trainer.x_train.numpy().reshape(len(trainer.x_train), -1).std(axis=0)
    assert INPUT_SCALE_WARN < std.max() < INPUT_SCALE_FAIL  # the premise, measured
    status, detail = doctor.check_input_scaling(trainer)
    assert status == WARN and f"{std.max():.3g}" in detail


def test_labels_warn_on_imbalanced_classes_with_the_counts():
    trainer = Trainer(tiny_config(**{"data__dataset": "custom",
                                     "data__factory": USER + "imbalanced_classes"}))
    counts = np.bincount(trainer.data.y_train.numpy())
    assert counts.max() / counts.min() > IMBALANCE_WARN_RATIO
    assert counts.sum() == round(0.8 * sum(IMBALANCED_COUNTS))
    status, detail = doctor.check_labels(trainer)
    assert status == WARN
    assert f"0:{counts[0]} 1:{counts[1]}" in detail
    assert f"{counts.max() / counts.min():.3g}" in detail


def test_labels_fail_when_a_class_has_no_training_sample():
    trainer = Trainer(tiny_config(**{"data__dataset": "custom",
                                     "data__factory": USER + "class_missing_from_training"}))
    status, detail = doctor.check_labels(trainer)
    assert status == FAIL and "2:0" in detail and "no training sample of 2" in detail


@pytest.mark.parametrize(("changes", "status", "words"), [
    ({"model__factory": USER + "softmax_net"}, FAIL, ["ends in Softmax", "below 0.551"]),
    ({"model__factory": USER + "functional_softmax_net"}, FAIL, ["softmax in forward()"]),
    ({"model__factory": USER + "log_softmax_net"}, WARN, ["LogSoftmax", "idempotent"]),
    ({"model__factory": USER + "sigmoid_net", "data__dataset": "moons",
      "loss__name": "bce_with_logits"}, FAIL, ["[0.5, 0.73]"]),
    ({"model__factory": USER + "relu_net", "data__dataset": "sine"}, FAIL,
     ["ReLU", "cannot output part of them"]),
])
def test_output_activation_that_fights_the_loss(changes, status, words):
    trainer = Trainer(tiny_config(**{"model__arch": "custom", **changes}))
    got, detail = doctor.check_output_activation(trainer)
    assert got == status
    assert all(word in detail for word in words), detail


def test_softmax_before_cross_entropy_floor_is_the_best_case_loss():
    # Logits in [0, 1]: at best 1 for the right class and 0 for the other two.
    best = -math.log(math.e / (math.e + 2))
    _, detail = doctor.check_output_activation(Trainer(tiny_config(**{
        "model__arch": "custom", "model__factory": USER + "softmax_net"})))
    assert f"{best:.3g}" in detail


def test_output_activation_warns_for_mse_on_classes_and_passes_a_linear_head():
    status, detail = doctor.check_output_activation(Trainer(tiny_config(**{
        "loss__name": "mse"})))
    assert status == WARN and "cross_entropy trains faster" in detail
    status, detail = doctor.check_output_activation(Trainer(tiny_config()))
    assert status == PASS and "Linear (head)" in detail


def test_overfit_batch_fails_with_a_learning_rate_far_too_low():
    status, detail = doctor.check_overfit_batch(Trainer(tiny_config(**{"optim__lr": 1e-7})))
    assert status == FAIL and f"after {OVERFIT_MAX_STEPS} steps" in detail
    status, detail = doctor.check_overfit_batch(Trainer(tiny_config(**{"optim__lr": 0.1})))
    assert status == PASS


def test_batch_size_warns_below_the_number_of_classes():
    status, detail = doctor.check_batch_size(_digits(data__batch_size=2))
    assert status == WARN and "fewer samples than classes" in detail and "~100" in detail
    assert doctor.check_batch_size(_digits())[0] == PASS


def test_batch_size_warns_for_batch_1_and_full_batch_on_a_large_set():
    large = {"data__samples": round(LARGE_TRAINING_SET / 0.8)}
    assert doctor.check_batch_size(Trainer(tiny_config(**large, data__batch_size=1)))[0] == WARN
    status, detail = doctor.check_batch_size(Trainer(tiny_config(**large, data__batch_size=0)))
    assert status == WARN and "the full batch" in detail
    lbfgs = Trainer(tiny_config(**large, data__batch_size=0, optim__name="lbfgs"))
    assert doctor.check_batch_size(lbfgs)[0] == PASS  # what L-BFGS is made for
    status, detail = doctor.check_batch_size(Trainer(tiny_config(optim__name="lbfgs")))
    assert status == WARN and "data.batch_size = 0" in detail


def test_lr_range_warns_for_a_learning_rate_far_off():
    status, detail = doctor.check_lr_range(Trainer(tiny_config(**{"optim__lr": 1e-7})))
    assert status == WARN and "training will crawl" in detail and "--set optim.lr=" in detail
    status, detail = doctor.check_lr_range(Trainer(tiny_config(**{"optim__lr": 5.0})))
    assert status == WARN and "starts to rise" in detail


def test_input_scaling_fails_on_inputs_far_below_unit_scale():
    trainer = Trainer(tiny_config())
    trainer.x_train = trainer.x_train * 0.05  # as if the preprocessing had shrunk them
    rms = float(np.sqrt(np.mean(trainer.x_train.numpy().std(axis=0) ** 2)))
    status, detail = doctor.check_input_scaling(trainer)
    assert rms < 1 / INPUT_SCALE_FAIL and status == FAIL
    assert f"root-mean-square std {rms:.3g}" in detail and "smaller than unit scale" in detail


def test_labels_fail_when_a_label_is_outside_the_model_outputs():
    # The loader always encodes 0..C-1; data handed over some other way may not be.
    trainer = Trainer(tiny_config())
    trainer.data = dataclasses.replace(trainer.data, y_val=trainer.data.y_val + 1)
    status, detail = doctor.check_labels(trainer)
    assert status == FAIL and "validation labels span 1..3" in detail and "0..2" in detail


def test_dropout_off_is_said_only_when_the_model_drops_something():
    _, without = doctor.check_overfit_batch(Trainer(tiny_config(**{"model__dropout": 0.0})))
    _, with_dropout = doctor.check_overfit_batch(Trainer(tiny_config(**{"model__dropout": 0.3})))
    assert "(dropout off)" not in without
    assert "(dropout off)" in with_dropout


# --- the tolerances say their numbers ---------------------------------------------------------


def _init_ratio(trainer: Trainer) -> float:
    """Loss at init on the doctor's probe samples over ln C, computed here."""
    x, target = doctor._probe_batch(trainer)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(trainer.model(x), target).item()
    return loss / math.log(trainer.data.num_classes)


def test_a_kaiming_output_layer_is_not_as_expected_and_auto_is():
    # A Kaiming output layer starts 23% above ln 10 (the issue saw 3.1 against 2.30): it
    # passed "as expected" under the old 1.5x tolerance.
    kaiming = _digits(init__scheme="kaiming_normal")
    ratio = _init_ratio(kaiming)
    assert ratio > 1.2
    status, detail = doctor.check_init_loss(kaiming)
    assert status == WARN
    assert f"{ratio:.3g}x the {math.log(10):.4g} of ln 10" in detail
    assert f"warn above {INIT_LOSS_WARN_FACTOR:g}x" in detail and "init.scheme = auto" in detail
    default = _digits()  # init.scheme = auto: a small output layer
    ratio = _init_ratio(default)
    status, detail = doctor.check_init_loss(default)
    assert status == PASS and ratio < INIT_LOSS_WARN_FACTOR
    assert f"{ratio:.3g}x the {math.log(10):.4g} of ln 10" in detail
    assert f"pass up to {INIT_LOSS_WARN_FACTOR:g}x" in detail


class _Losses:
    """Sandbox.step replaced by a given loss sequence (the last one repeats): the
    overfit check's verdict on exactly the losses the issue reported."""

    def __init__(self, losses: list[float]) -> None:
        self.losses, self.steps = list(losses), 0

    def step(self, x: Any, target: Any, lr: float) -> float:
        self.steps += 1
        return self.losses.pop(0) if len(self.losses) > 1 else self.losses[0]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> _Losses:
        from trainlab.engine.sandbox import Sandbox

        monkeypatch.setattr(Sandbox, "step", lambda sandbox, x, target, lr: self.step(
            x, target, lr))
        return self


def test_overfit_batch_needs_near_zero_not_only_a_drop_from_the_start(monkeypatch):
    # init-relu-large: 3.3e13 -> 4.7e11 is 1.4% of the start, and passed on that alone.
    losses = _Losses([3.3e13, 4.7e11]).install(monkeypatch)
    status, detail = doctor.check_overfit_batch(Trainer(tiny_config()))  # 3 classes
    bound = OVERFIT_NEAR_ZERO_FRACTION * math.log(3)
    assert status == FAIL and losses.steps == OVERFIT_MAX_STEPS
    assert f"near zero: below {bound:.3g}" in detail
    assert f"10% of the {math.log(3):.4g} of ln 3" in detail
    _Losses([3.3e13, 4.7e11, 0.5 * bound]).install(monkeypatch)
    status, detail = doctor.check_overfit_batch(Trainer(tiny_config()))
    assert status == PASS and "in 3 steps" in detail


def test_overfit_batch_near_zero_for_regression_is_a_tenth_of_the_batch_variance(monkeypatch):
    from trainlab.engine.sandbox import Sandbox

    trainer = Trainer(tiny_config(data__dataset="sine"))
    _, target = next(Sandbox(trainer).batches(32, augment=False))  # the batch it will see
    variance = float(np.var(target.numpy()))
    _Losses([100 * variance, 1.5 * variance / 10]).install(monkeypatch)
    status, detail = doctor.check_overfit_batch(trainer)  # 0.15% of the start: not enough
    assert status == FAIL
    assert f"below {variance / 10:.3g}" in detail and f"{variance:.4g} of predicting" in detail
