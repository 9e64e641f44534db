"""Tests for trainlab.engine.data: every source, label handling, split, preprocessing, augmentation.

Expected values come from independent computations (numpy, scikit-learn's own loaders,
hand-written files), never from trainlab.engine.data itself.
"""

from __future__ import annotations

import math
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn.datasets
import torch

from trainlab.core.config import AUGMENTATIONS, ConfigError, DataConfig
from trainlab.engine.data import Dataset, augment_batch, load_dataset, validate_augment
from trainlab.engine.usercode import UserCodeError

RAW = {"preprocess": "none"}


def cfg(**kw: Any) -> DataConfig:
    return DataConfig(**kw)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


def all_rows(d: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return (torch.cat([d.x_train, d.x_val]).numpy(), torch.cat([d.y_train, d.y_val]).numpy())


# --- registry ------------------------------------------------------------------------

# name -> (config overrides, total samples, input_shape, task, num_classes, num_targets)
SYNTH = {"samples": 60}
REGISTRY = {
    "spirals": (dict(SYNTH, classes=4), 60, (2,), "classification", 4, 4),
    "moons": (SYNTH, 60, (2,), "classification", 2, 2),
    "circles": (SYNTH, 60, (2,), "classification", 2, 2),
    "xor": (SYNTH, 60, (2,), "classification", 2, 2),
    "blobs": (dict(SYNTH, classes=5, features=7), 60, (7,), "classification", 5, 5),
    "checkerboard": (SYNTH, 60, (2,), "classification", 2, 2),
    "sine": (SYNTH, 60, (1,), "regression", 0, 1),
    "unit_gaussian": (dict(SYNTH, classes=3, features=9), 60, (9,), "classification", 3, 3),
    "digits": ({}, 1797, (1, 8, 8), "classification", 10, 10),
    "iris": ({}, 150, (4,), "classification", 3, 3),
    "wine": ({}, 178, (13,), "classification", 3, 3),
    "breast_cancer": ({}, 569, (30,), "classification", 2, 2),
    "diabetes": ({}, 442, (10,), "regression", 0, 1),
}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_registry_entry_loads(name: str) -> None:
    overrides, total, shape, task, classes, targets = REGISTRY[name]
    d = load_dataset(cfg(dataset=name, **overrides), seed=0)
    assert (d.name, d.task, d.input_shape) == (name, task, shape)
    assert (d.num_classes, d.num_targets, d.is_image) == (classes, targets, len(shape) == 3)
    n_val = round(0.2 * total)
    assert d.x_train.shape == (total - n_val, *shape) and d.x_val.shape == (n_val, *shape)
    assert d.x_train.dtype == d.x_val.dtype == torch.float32
    assert torch.isfinite(d.x_train).all() and torch.isfinite(d.x_val).all()
    if task == "classification":
        assert d.y_train.dtype == torch.int64 and d.y_train.shape == (total - n_val,)
        y = torch.cat([d.y_train, d.y_val])
        assert set(y.tolist()) == set(range(classes))  # every class present, codes 0..K-1
        assert len(d.class_names) == classes
        assert d.class_counts() == tuple(np.bincount(d.y_train.numpy(), minlength=classes))
        assert d.class_counts("val") == tuple(np.bincount(d.y_val.numpy(), minlength=classes))
        with pytest.raises(ValueError, match="split"):
            d.class_counts("test")
    else:
        assert d.y_train.dtype == torch.float32 and d.y_train.shape == (total - n_val, 1)
        assert d.class_names == () and d.class_counts() == ()


def test_class_names_of_bundled_data() -> None:
    iris = load_dataset(cfg(dataset="iris"), 0)
    assert iris.class_names == tuple(sklearn.datasets.load_iris().target_names)
    assert load_dataset(cfg(dataset="digits"), 0).class_names == tuple(str(i) for i in range(10))


def test_bundled_digits_are_the_sklearn_images() -> None:
    d = load_dataset(cfg(dataset="digits", val_fraction=0.0, **RAW), 0)
    ref = sklearn.datasets.load_digits()
    got = {(int(y), xi.tobytes()) for xi, y in zip(d.x_train.numpy(), d.y_train.numpy(),
                                                   strict=True)}
    want = {(int(y), xi.astype(np.float32).reshape(1, 8, 8).tobytes())
            for xi, y in zip(ref.data, ref.target, strict=True)}
    assert got == want


def test_xor_labels_follow_the_quadrants() -> None:
    d = load_dataset(cfg(dataset="xor", samples=200, noise=0.0, **RAW), 3)
    x, y = all_rows(d)
    assert np.abs(x).max() <= 1.0
    np.testing.assert_array_equal(y, (np.sign(x[:, 0]) != np.sign(x[:, 1])).astype(int))


def test_checkerboard_labels_follow_the_squares() -> None:
    d = load_dataset(cfg(dataset="checkerboard", samples=400, noise=0.0, **RAW), 1)
    x, y = all_rows(d)
    col, row = np.floor((x[:, 0] + 1) * 2), np.floor((x[:, 1] + 1) * 2)  # 4 squares of 0.5
    np.testing.assert_array_equal(y, (col + row) % 2)


def test_sine_targets() -> None:
    d = load_dataset(cfg(dataset="sine", samples=100, noise=0.0, **RAW), 0)
    x, y = all_rows(d)
    assert x.min() >= -math.pi and x.max() <= math.pi
    np.testing.assert_allclose(y, np.sin(x), atol=1e-6)
    noisy = all_rows(load_dataset(cfg(dataset="sine", samples=2000, noise=0.3, **RAW), 0))
    assert np.std(noisy[1] - np.sin(noisy[0])) == pytest.approx(0.3, rel=0.1)


def test_unit_gaussian_is_unit_gaussian() -> None:
    d = load_dataset(cfg(dataset="unit_gaussian", samples=4000, features=20, **RAW), 0)
    x = all_rows(d)[0]
    assert abs(x.mean()) < 0.02 and x.std() == pytest.approx(1.0, abs=0.02)


# --- split ---------------------------------------------------------------------------


def test_split_sizes_and_no_validation() -> None:
    d = load_dataset(cfg(dataset="spirals", samples=101, val_fraction=0.3), 0)
    assert (len(d.x_train), len(d.x_val)) == (101 - round(30.3), round(30.3))
    d = load_dataset(cfg(dataset="moons", samples=50, val_fraction=0.0), 0)
    assert d.x_train.shape == (50, 2) and d.x_val.shape == (0, 2) and d.y_val.shape == (0,)


def test_split_needs_a_training_sample() -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset(cfg(dataset="spirals", samples=4, val_fraction=0.9), 0)


def test_split_is_a_partition_of_the_file_rows(tmp_path: Path) -> None:
    lines = ["a,b,label"] + [f"{i},{i * 10},{i % 3}" for i in range(40)]
    path = write_csv(tmp_path / "rows.csv", "\n".join(lines))
    d = load_dataset(cfg(dataset=str(path), val_fraction=0.25, **RAW), 5)
    rows = sorted(d.x_train[:, 0].tolist() + d.x_val[:, 0].tolist())
    assert rows == list(range(40)) and len(d.x_val) == 10
    # labels travel with their rows
    x, y = all_rows(d)
    np.testing.assert_array_equal(y, x[:, 0].astype(int) % 3)


def test_split_is_stratified() -> None:
    d = load_dataset(cfg(dataset="wine"), 0)
    counts = np.bincount(sklearn.datasets.load_wine().target)
    expected = counts * len(d.x_val) / counts.sum()
    assert np.all(np.abs(np.array(d.class_counts("val")) - expected) <= 1)


def test_same_seed_same_data_other_seed_other_split(tmp_path: Path) -> None:
    for name in ("spirals", "iris"):
        a, b = load_dataset(cfg(dataset=name), 7), load_dataset(cfg(dataset=name), 7)
        for field in ("x_train", "y_train", "x_val", "y_val"):
            assert torch.equal(getattr(a, field), getattr(b, field))
        c = load_dataset(cfg(dataset=name), 8)
        assert not torch.equal(a.x_val, c.x_val)
    lines = ["f,label"] + [f"{i},{i % 2}" for i in range(30)]
    path = str(write_csv(tmp_path / "d.csv", "\n".join(lines)))
    held = [set(load_dataset(cfg(dataset=path, **RAW), s).x_val[:, 0].tolist()) for s in (0, 1)]
    assert held[0] != held[1]


# --- preprocessing -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["center", "standardize"])
def test_preprocessing_uses_training_statistics_only(mode: str) -> None:
    raw = load_dataset(cfg(dataset="wine", **RAW), 2)
    done = load_dataset(cfg(dataset="wine", preprocess=mode), 2)
    train, val = raw.x_train.numpy().astype(np.float64), raw.x_val.numpy().astype(np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0) if mode == "standardize" else np.ones_like(mean)
    np.testing.assert_allclose(done.x_train.numpy(), (train - mean) / std, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(done.x_val.numpy(), (val - mean) / std, rtol=1e-4, atol=1e-4)
    assert np.abs(done.x_train.numpy().mean(axis=0)).max() < 1e-4
    assert np.abs(done.x_val.numpy().mean(axis=0)).max() > 1e-2  # val was not fitted
    if mode == "standardize":
        np.testing.assert_allclose(done.x_train.numpy().std(axis=0), 1.0, atol=1e-4)
        assert np.abs(done.x_val.numpy().std(axis=0) - 1).max() > 1e-2


def test_standardize_leaves_constant_pixels_finite() -> None:
    raw = load_dataset(cfg(dataset="digits", **RAW), 0)
    d = load_dataset(cfg(dataset="digits"), 0)
    flat = raw.x_train.numpy().reshape(len(raw.x_train), -1)
    constant = flat.std(axis=0) == 0
    assert constant.any()  # the digits' always-blank border pixels
    assert torch.isfinite(d.x_train).all() and torch.isfinite(d.x_val).all()
    got = d.x_train.numpy().reshape(len(d.x_train), -1)[:, constant]
    np.testing.assert_array_equal(got, 0.0)  # centred, not divided by ~0


# --- CSV -----------------------------------------------------------------------------


def test_csv_text_labels_and_named_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "pets.csv", """
a,kind,b
1.5,dog,10
2.5,cat,20
3.5,dog,30
4.5,bird,40
""")
    d = load_dataset(cfg(dataset="pets.csv", target="kind", val_fraction=0.0, **RAW), 0)
    assert (d.name, d.task, d.input_shape) == ("pets.csv", "classification", (2,))
    assert d.class_names == ("bird", "cat", "dog")
    kinds = {1.5: "dog", 2.5: "cat", 3.5: "dog", 4.5: "bird"}
    for (a, b), code in zip(d.x_train.tolist(), d.y_train.tolist(), strict=True):
        assert d.class_names[code] == kinds[a]
        assert b == {1.5: 10, 2.5: 20, 3.5: 30, 4.5: 40}[a]  # the row stayed together


def test_csv_label_types_decide_the_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "ints.csv", "x,y\n" + "\n".join(f"{i},{(i % 3) * 5}" for i in range(9)))
    write_csv(tmp_path / "floats.csv", "x,y\n" + "\n".join(f"{i},{i / 7}" for i in range(9)))
    ints = load_dataset(cfg(dataset="ints.csv", val_fraction=0.0), 0)
    assert ints.task == "classification" and ints.class_names == ("0", "5", "10")
    floats = load_dataset(cfg(dataset="floats.csv", val_fraction=0.0, **RAW), 0)
    assert floats.task == "regression" and floats.y_train.shape == (9, 1)
    np.testing.assert_allclose(floats.y_train[:, 0].numpy(), floats.x_train[:, 0].numpy() / 7,
                               rtol=1e-6)
    forced = load_dataset(cfg(dataset="ints.csv", task="regression"), 0)
    assert forced.task == "regression" and forced.y_train.dtype == torch.float32
    with pytest.raises(ConfigError, match="classification"):
        load_dataset(cfg(dataset="floats.csv", task="classification"), 0)


def test_many_distinct_integers_mean_regression(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", "x,y\n" + "\n".join(f"{i},{i * 3}" for i in range(60)))
    assert load_dataset(cfg(dataset=str(path)), 0).task == "regression"
    forced = load_dataset(cfg(dataset=str(path), task="classification"), 0)
    assert forced.num_classes == 60


def test_csv_bad_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "t.csv", "alpha,beta,gamma\n1,2,3\n4,5,6")
    with pytest.raises(ConfigError) as err:
        load_dataset(cfg(dataset="t.csv", target="delta"), 0)
    message = str(err.value)
    assert "data.target" in message and "delta" in message
    assert all(column in message for column in ("alpha", "beta", "gamma"))


def test_csv_non_numeric_feature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "bad.csv", "height,weight,label\n1,2,a\n3,heavy,b\n5,6,a")
    with pytest.raises(ConfigError) as err:
        load_dataset(cfg(dataset="bad.csv"), 0)
    message = str(err.value)
    assert "bad.csv" in message and "row 3" in message and "weight" in message
    assert "heavy" in message


def test_missing_file_and_unknown_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("nothere.csv", "nothere.npz"):
        with pytest.raises(ConfigError, match=f"data.dataset = '{name}': file not found"):
            load_dataset(cfg(dataset=name), 0)
    with pytest.raises(ConfigError, match="did you mean 'spirals'"):
        load_dataset(cfg(dataset="spiral"), 0)
    with pytest.raises(ConfigError) as err:
        load_dataset(cfg(dataset="zzzz"), 0)
    assert "moons" in str(err.value) and "custom" in str(err.value)


# --- NPZ -----------------------------------------------------------------------------


def test_npz_without_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 3)), rng.integers(0, 4, 50)
    np.savez(tmp_path / "plain.npz", X=x, y=y)
    d = load_dataset(cfg(dataset=str(tmp_path / "plain.npz"), val_fraction=0.2, **RAW), 0)
    assert (d.name, d.input_shape, d.num_classes) == ("plain.npz", (3,), 4)
    assert (len(d.x_train), len(d.x_val)) == (40, 10)
    got = {(tuple(r), int(c)) for r, c in zip(*all_rows(d), strict=True)}
    assert got == {(tuple(r), int(c)) for r, c in zip(x.astype(np.float32), y, strict=True)}


def test_npz_with_split_ignores_val_fraction(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    parts = {"x_train": rng.normal(size=(30, 2)), "y_train": rng.normal(size=30),
             "x_val": rng.normal(size=(7, 2)), "y_val": rng.normal(size=7)}
    np.savez(tmp_path / "split.npz", **parts)
    d = load_dataset(cfg(dataset=str(tmp_path / "split.npz"), val_fraction=0.5, **RAW), 0)
    assert d.task == "regression"
    np.testing.assert_array_equal(d.x_train.numpy(), parts["x_train"].astype(np.float32))
    np.testing.assert_array_equal(d.y_val[:, 0].numpy(), parts["y_val"].astype(np.float32))


@pytest.mark.parametrize("shape", [(12, 3, 5, 6), (12, 5, 6)])
def test_npz_images(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.savez(tmp_path / "img.npz", x=np.ones(shape), y=np.arange(12) % 2)
    d = load_dataset(cfg(dataset=str(tmp_path / "img.npz")), 0)
    assert d.is_image and d.input_shape == ((3, 5, 6) if len(shape) == 4 else (1, 5, 6))


def test_npz_text_labels_and_unknown_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "text.npz", x=np.ones((6, 2)), y=np.array(list("cabcab")))
    d = load_dataset(cfg(dataset=str(tmp_path / "text.npz")), 0)
    assert d.class_names == ("a", "b", "c") and d.num_classes == 3
    np.savez(tmp_path / "odd.npz", data=np.ones((3, 2)))
    with pytest.raises(ConfigError, match="found data"):
        load_dataset(cfg(dataset=str(tmp_path / "odd.npz")), 0)


# --- custom factory ------------------------------------------------------------------


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Write a factory module (unique name, so sys.modules never serves an old one)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_callable adds the cwd

    def make(body: str) -> str:
        module = f"userdata_{uuid.uuid4().hex}"
        (tmp_path / f"{module}.py").write_text(
            "import numpy as np\nimport torch\n\n\ndef make():\n" + body, encoding="utf-8")
        return f"{module}:make"

    return make


def test_custom_pair(factory: Callable[[str], str]) -> None:
    name = factory("    return np.arange(20.0).reshape(10, 2), np.arange(10) % 2\n")
    d = load_dataset(cfg(dataset="custom", factory=name, val_fraction=0.0, **RAW), 0)
    assert (d.name, d.task, d.num_classes, d.input_shape) == ("custom", "classification", 2, (2,))
    np.testing.assert_array_equal(d.y_train.numpy(), (d.x_train[:, 0].numpy() // 2) % 2)


def test_custom_four_tensors(factory: Callable[[str], str]) -> None:
    name = factory("    return (torch.zeros(8, 1, 4, 4), torch.arange(8) % 2,\n"
                   "            torch.ones(3, 1, 4, 4), torch.tensor([0, 1, 1]))\n")
    d = load_dataset(cfg(dataset="custom", factory=name, val_fraction=0.5, **RAW), 0)
    assert d.is_image and (len(d.x_train), len(d.x_val)) == (8, 3)
    assert torch.equal(d.x_val, torch.ones(3, 1, 4, 4)) and d.y_val.tolist() == [0, 1, 1]


def test_custom_raising(factory: Callable[[str], str]) -> None:
    name = factory("    raise RuntimeError('no data today')  # the user's line\n")
    with pytest.raises(UserCodeError) as err:
        load_dataset(cfg(dataset="custom", factory=name), 0)
    assert "raise RuntimeError('no data today')" in err.value.traceback_text


@pytest.mark.parametrize("ret", ["42", "(np.ones(3), np.ones(3), np.ones(3))",
                                 "(np.ones(3), [1, 2, 3])"])
def test_custom_garbage(factory: Callable[[str], str], ret: str) -> None:
    with pytest.raises(ConfigError, match=r"returned .*expected \(x, y\)"):
        load_dataset(cfg(dataset="custom", factory=factory(f"    return {ret}\n")), 0)


def test_custom_length_mismatch(factory: Callable[[str], str]) -> None:
    name = factory("    return np.ones((5, 2)), np.ones(4)\n")
    with pytest.raises(ConfigError, match="5 inputs but 4 labels"):
        load_dataset(cfg(dataset="custom", factory=name), 0)


# --- augmentation --------------------------------------------------------------------


def images(n: int = 32, border: int = 0) -> torch.Tensor:
    """Distinct positive pixel values, optionally inside a zero border."""
    x = torch.arange(1, n * 2 * 8 * 8 + 1, dtype=torch.float32).reshape(n, 2, 8, 8)
    if border:
        x[..., :border, :] = 0
        x[..., -border:, :] = 0
        x[..., :border] = 0
        x[..., -border:] = 0
    return x


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_augment_changes_a_copy_reproducibly(name: str) -> None:
    x = images()
    before = x.clone()
    c = cfg(augment=(name,), augment_shift=2)
    out = augment_batch(x, c, True, gen(3))
    assert torch.equal(x, before)  # not modified in place
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.equal(out, augment_batch(x, c, True, gen(3)))
    assert not torch.equal(out, augment_batch(x, c, True, gen(4)))


def test_noise_on_tabular_data_has_the_configured_std() -> None:
    x = torch.zeros(4000, 5)
    out = augment_batch(x, cfg(augment=("noise",), augment_noise=0.5), False, gen())
    assert out.std().item() == pytest.approx(0.5, rel=0.05)


def test_flip_mirrors_about_half_exactly() -> None:
    x = images(200)
    out = augment_batch(x, cfg(augment=("flip",)), True, gen())
    flipped = [bool(torch.equal(o, xi.flip(-1))) for o, xi in zip(out, x, strict=True)]
    for o, xi, f in zip(out, x, flipped, strict=True):
        assert f or torch.equal(o, xi)
        assert torch.equal(o.flatten().sort().values, xi.flatten().sort().values)
    assert 60 < sum(flipped) < 140


def test_shift_moves_images_by_at_most_the_limit() -> None:
    s = 2
    x = images(100, border=s)
    out = augment_batch(x, cfg(augment=("shift",), augment_shift=s), True, gen())
    seen = set()
    for o, xi in zip(out, x, strict=True):
        # the zero border absorbs the shift, so no pixel is lost
        assert torch.equal(o.flatten().sort().values, xi.flatten().sort().values)
        src = xi.numpy()
        shifts = [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)
                  if np.array_equal(o.numpy(), np.roll(src, (dy, dx), axis=(1, 2)))]
        assert len(shifts) == 1
        seen.add(shifts[0])
    assert len(seen) > 10  # many of the 25 shifts occur


def test_shift_fills_with_zeros() -> None:
    x = torch.ones(64, 1, 6, 6)
    out = augment_batch(x, cfg(augment=("shift",), augment_shift=1), True, gen())
    for o in out[:, 0].numpy():
        rows, cols = np.nonzero(o)
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert o.sum() in (36, 30, 25)  # unshifted, shifted along one axis, or both


def test_erase_zeroes_one_small_rectangle() -> None:
    x = images(200)
    out = augment_batch(x, cfg(augment=("erase",)), True, gen())
    erased = 0
    for o, xi in zip(out, x, strict=True):
        changed = (o != xi).any(dim=0).numpy()  # same rectangle in every channel
        assert torch.equal(o[:, ~torch.from_numpy(changed)], xi[:, ~torch.from_numpy(changed)])
        if not changed.any():
            continue
        erased += 1
        assert (o[:, torch.from_numpy(changed)] == 0).all()
        rows, cols = np.nonzero(changed)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert changed.sum() == h * w and h * w <= 64 / 4
    assert 60 < erased < 140


def test_augmentations_compose_in_order() -> None:
    x = images(16)
    c = cfg(augment=("flip", "noise"), augment_noise=0.0)
    assert torch.equal(augment_batch(x, c, True, gen(1)),
                       augment_batch(x, cfg(augment=("flip",)), True, gen(1)))


def test_validate_augment_rejects_image_augmentations_for_tabular_data() -> None:
    validate_augment(cfg(dataset="iris", augment=("noise",)), is_image=False)
    validate_augment(cfg(augment=("shift", "flip", "erase")), is_image=True)
    for name in ("shift", "flip", "erase"):
        with pytest.raises(ConfigError) as err:
            validate_augment(cfg(dataset="iris", augment=("noise", name)), False, (4,))
        assert f"'{name}'" in str(err.value) and "iris" in str(err.value)
        assert "(4,)" in str(err.value)
    with pytest.raises(ConfigError, match="'flip' needs image data"):
        augment_batch(torch.zeros(4, 4), cfg(augment=("flip",)), False, gen())


def test_npz_that_is_not_an_archive_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("junk.npz").write_text("not an archive")
    np.save("single.npy", np.zeros(3))
    Path("single.npy").rename("single.npz")
    with pytest.raises(ConfigError, match=r"'junk\.npz' is not a \.npz archive"):
        load_dataset(DataConfig(dataset="junk.npz"), seed=0)
    with pytest.raises(ConfigError, match=r"is a single array, not a \.npz archive"):
        load_dataset(DataConfig(dataset="single.npz"), seed=0)
