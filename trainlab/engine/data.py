"""Datasets and training-batch augmentation, built from the ``[data]`` config section.

:func:`load_dataset` turns a :class:`DataConfig` into a :class:`Dataset`: tensors split
into training and validation sets and preprocessed with statistics of the training split
only (fitting them on every row would leak the validation set into training).
:func:`augment_batch` perturbs one training batch at a time, on the batch's device, with
randomness from the given generator only, so a run with the same seed repeats exactly.

Sources: built-in generators and scikit-learn's bundled datasets (one registry, no
downloads), ``custom`` (a user function) and ``.csv`` / ``.npz`` files.
"""

from __future__ import annotations

import csv
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainlab.core.config import ConfigError, DataConfig, did_you_mean
from trainlab.engine.usercode import call_user, load_callable

MAX_AUTO_CLASSES = 50
"""task = auto: whole-number labels with at most this many distinct values are classes."""
STD_FLOOR = 1e-8
"""standardize: a feature whose training std is below this (a constant border pixel) is
only centred, since dividing by ~0 would blow it up."""
CHECKERBOARD_CELLS = 4  # the board is CELLS x CELLS squares over [-1, 1]^2
SPIRAL_TURNS = 1.0  # how far each spiral arm winds from the centre to the rim
CIRCLES_FACTOR = 0.5  # radius of the inner circle relative to the outer one
FLIP_PROB = 0.5  # each orientation equally likely, so the net cannot prefer one
ERASE_PROB = 0.5  # half the samples stay whole, so the net still sees complete images
ERASE_MAX_SIDE = 0.5  # rectangle sides up to half the image's: at most a quarter of it
IMAGE_AUGMENTATIONS = ("shift", "flip", "erase")
"""Augmentations that only make sense for (C, H, W) inputs."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field by field is ambiguous
class Dataset:
    """A dataset ready to train on: split, preprocessed, labels encoded."""

    name: str  # registry name, 'custom', or the file name
    task: str  # 'classification' or 'regression'
    x_train: torch.Tensor  # float32 (N, *input_shape)
    y_train: torch.Tensor  # classification: int64 (N,); regression: float32 (N, num_targets)
    x_val: torch.Tensor  # same layout; 0 rows when there is no validation set
    y_val: torch.Tensor
    input_shape: tuple[int, ...]  # per sample: (F,) tabular, (C, H, W) images
    num_classes: int  # 0 for regression
    num_targets: int  # output dimension; num_classes for classification
    class_names: tuple[str, ...]  # label names for classification; () for regression

    @property
    def is_image(self) -> bool:
        """True for (C, H, W) inputs."""
        return len(self.input_shape) == 3

    def class_counts(self, split: str = "train") -> tuple[int, ...]:
        """Samples per class in ``split`` ('train' or 'val'); () for regression."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {split!r}")
        if self.task != "classification":
            return ()
        y = self.y_train if split == "train" else self.y_val
        return tuple(int(c) for c in torch.bincount(y, minlength=self.num_classes))


@dataclass(frozen=True)
class _Source:
    """Arrays as a source delivers them, before label encoding, split and preprocessing."""

    x: np.ndarray
    y: np.ndarray
    val: tuple[np.ndarray, np.ndarray] | None = None
    """The source's own validation split, used as is."""
    label_names: tuple[str, ...] | None = None
    """Names of the integer labels 0..K-1 (scikit-learn's target_names)."""
    task: str | None = None
    """The task a built-in dataset is made for; None lets data.task = auto decide."""


# --- built-in datasets -------------------------------------------------------------


def _spirals(cfg: DataConfig, seed: int) -> _Source:
    rng = np.random.RandomState(seed)
    y = np.arange(cfg.samples) % cfg.classes  # classes as equal as the count allows
    r = rng.uniform(0.0, 1.0, cfg.samples)
    theta = 2 * np.pi * (y / cfg.classes + SPIRAL_TURNS * r)
    x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return _Source(x + rng.normal(0.0, cfg.noise, x.shape), y, task="classification")


def _moons(cfg: DataConfig, seed: int) -> _Source:
    from sklearn.datasets import make_moons  # lazy: importing scikit-learn takes a while

    x, y = make_moons(cfg.samples, noise=cfg.noise, random_state=np.random.RandomState(seed))
    return _Source(x, y, task="classification")


def _circles(cfg: DataConfig, seed: int) -> _Source:
    from sklearn.datasets import make_circles

    rng = np.random.RandomState(seed)
    x, y = make_circles(cfg.samples, noise=cfg.noise, factor=CIRCLES_FACTOR, random_state=rng)
    return _Source(x, y, task="classification")


def _xor(cfg: DataConfig, seed: int) -> _Source:
    rng = np.random.RandomState(seed)
    x = rng.uniform(-1.0, 1.0, (cfg.samples, 2))
    y = (x[:, 0] > 0) != (x[:, 1] > 0)  # labelled before the noise, like the pattern itself
    noisy = x + rng.normal(0.0, cfg.noise, x.shape)
    return _Source(noisy, y.astype(np.int64), task="classification")


def _blobs(cfg: DataConfig, seed: int) -> _Source:
    rng = np.random.RandomState(seed)
    centres = rng.uniform(-1.0, 1.0, (cfg.classes, cfg.features))
    y = np.arange(cfg.samples) % cfg.classes
    x = centres[y] + rng.normal(0.0, cfg.noise, (cfg.samples, cfg.features))
    return _Source(x, y, task="classification")


def _checkerboard(cfg: DataConfig, seed: int) -> _Source:
    rng = np.random.RandomState(seed)
    x = rng.uniform(-1.0, 1.0, (cfg.samples, 2))
    cells = np.clip(np.floor((x + 1) / 2 * CHECKERBOARD_CELLS), 0, CHECKERBOARD_CELLS - 1)
    y = cells.sum(axis=1).astype(np.int64) % 2
    return _Source(x + rng.normal(0.0, cfg.noise, x.shape), y, task="classification")


def _sine(cfg: DataConfig, seed: int) -> _Source:
    rng = np.random.RandomState(seed)
    x = rng.uniform(-np.pi, np.pi, (cfg.samples, 1))
    return _Source(x, np.sin(x) + rng.normal(0.0, cfg.noise, x.shape), task="regression")


def _unit_gaussian(cfg: DataConfig, seed: int) -> _Source:
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((cfg.samples, cfg.features))
    return _Source(x, rng.randint(cfg.classes, size=cfg.samples), task="classification")


def _bundled(
    loader: str, image_shape: tuple[int, ...] | None = None
) -> Callable[[DataConfig, int], _Source]:
    """A builder for scikit-learn's ``load_*`` dataset (shipped with the package)."""

    def build(cfg: DataConfig, seed: int) -> _Source:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader)()
        x = bunch.data if image_shape is None else bunch.data.reshape(-1, *image_shape)
        names = getattr(bunch, "target_names", None)  # absent for regression (diabetes)
        return _Source(x, bunch.target, label_names=None if names is None else
                       tuple(str(n) for n in names),
                       task="regression" if names is None else "classification")

    return build


_BUILTINS: dict[str, Callable[[DataConfig, int], _Source]] = {
    "spirals": _spirals,
    "moons": _moons,
    "circles": _circles,
    "xor": _xor,
    "blobs": _blobs,
    "checkerboard": _checkerboard,
    "sine": _sine,
    "unit_gaussian": _unit_gaussian,
    "digits": _bundled("load_digits", image_shape=(1, 8, 8)),
    "iris": _bundled("load_iris"),
    "wine": _bundled("load_wine"),
    "breast_cancer": _bundled("load_breast_cancer"),
    "diabetes": _bundled("load_diabetes"),
}


# --- files and user code --------------------------------------------------------------


def _is_number(text: str) -> bool:
    try:
        return bool(np.isfinite(float(text)))
    except ValueError:
        return False


def _read_csv(path: Path, cfg: DataConfig) -> _Source:
    where = f"data.dataset = {str(path)!r}"
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: drop Excel's BOM
            reader = csv.reader(f)
            header = [name.strip() for name in next(reader, [])]
            numbered = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{where}: cannot read it: {exc}") from None
    if not header or not numbered:
        raise ConfigError(f"{where}: expected a header row and at least one data row")
    for line, row in numbered:
        if len(row) != len(header):
            raise ConfigError(f"{where}: row {line} has {len(row)} values, the header "
                              f"{len(header)} columns")
    label = cfg.target or header[-1]
    if label not in header:
        raise ConfigError(f"data.target = {cfg.target!r}: {path.name} has no such column; "
                          f"columns: {', '.join(header)}")
    target = header.index(label)
    features = [i for i in range(len(header)) if i != target]
    if not features:
        raise ConfigError(f"{where}: no feature columns besides the label {label!r}")

    try:  # all cells at once; only on failure look for the cell to name
        x = np.array([[row[i] for i in features] for _, row in numbered]).astype(np.float64)
    except ValueError:
        x = None
    if x is None or not np.isfinite(x).all():
        line, row, i = next((line, row, i) for line, row in numbered for i in features
                            if not _is_number(row[i]))
        raise ConfigError(f"{where}: row {line}, column {header[i]!r}: {row[i]!r} is not a "
                          "finite number")
    labels = [row[target].strip() for _, row in numbered]
    if "" in labels:
        line = numbered[labels.index("")][0]
        raise ConfigError(f"{where}: row {line}: empty label in column {label!r}")
    try:
        y = np.array([float(v) for v in labels])
    except ValueError:
        y = np.array(labels)  # text labels: classes
    return _Source(x, y)


_NPZ_SPLIT = ("x_train", "y_train", "x_val", "y_val")


def _read_npz(path: Path, cfg: DataConfig) -> _Source:
    where = f"data.dataset = {str(path)!r}"
    try:
        loaded = np.load(path, allow_pickle=False)  # no pickle: no code from the file runs
    except (OSError, ValueError):
        raise ConfigError(
            f"{where} is not a .npz archive (expected arrays saved with numpy.savez)"
        ) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a single .npy array renamed
        raise ConfigError(f"{where} is a single array, not a .npz archive of x and y")
    try:
        with loaded as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot read it as .npz: {exc}") from None
    if all(key in arrays for key in _NPZ_SPLIT):
        x_train, y_train, x_val, y_val = (arrays[key] for key in _NPZ_SPLIT)
        return _Source(x_train, y_train, val=(x_val, y_val))
    x = arrays.get("x", arrays.get("X"))
    y = arrays.get("y", arrays.get("Y"))
    if x is None or y is None:
        raise ConfigError(f"{where}: expected arrays x and y, or {', '.join(_NPZ_SPLIT)}; "
                          f"found {', '.join(sorted(arrays)) or 'none'}")
    return _Source(x, y)


_FILE_READERS: dict[str, Callable[[Path, DataConfig], _Source]] = {
    ".csv": _read_csv,
    ".npz": _read_npz,
}


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        kinds = ", ".join(type(v).__name__ for v in value)
        return f"a {type(value).__name__} of {len(value)} ({kinds})"
    return f"{type(value).__name__} {reprlib.repr(value)}"


def _custom(cfg: DataConfig) -> _Source:
    fn = load_callable(cfg.factory, "data.factory")
    out = call_user(fn, "data.factory " + cfg.factory)
    if not (isinstance(out, (tuple, list)) and len(out) in (2, 4)
            and all(isinstance(a, (np.ndarray, torch.Tensor)) for a in out)):
        raise ConfigError(f"data.factory = {cfg.factory!r} returned {_describe(out)}; expected "
                          "(x, y) or (x_train, y_train, x_val, y_val) as numpy arrays or "
                          "torch tensors")
    arrays = [a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a for a in out]
    return _Source(arrays[0], arrays[1], val=(arrays[2], arrays[3]) if len(arrays) == 4 else None)


def _source(cfg: DataConfig, seed: int) -> tuple[str, _Source]:
    """The dataset's display name and its raw arrays."""
    builder = _BUILTINS.get(cfg.dataset)
    if builder is not None:
        return cfg.dataset, builder(cfg, seed)
    if cfg.dataset == "custom":
        return "custom", _custom(cfg)
    path = Path(cfg.dataset)
    reader = _FILE_READERS.get(path.suffix.lower())
    if reader is None:
        known = [*_BUILTINS, "custom"]
        raise ConfigError(f"data.dataset = {cfg.dataset!r} is not a built-in dataset, 'custom' "
                          "or a .csv/.npz path" + did_you_mean(cfg.dataset, known))
    if not path.is_file():
        raise ConfigError(f"data.dataset = {cfg.dataset!r}: file not found "
                          f"(looked for {path.absolute()})")
    return path.name, reader(path, cfg)


# --- from raw arrays to a Dataset -----------------------------------------------------


def _inputs(x: np.ndarray, where: str) -> np.ndarray:
    """Inputs as float32 (N, F) or (N, C, H, W)."""
    if x.dtype.kind not in "biuf":
        raise ConfigError(f"{where}: inputs must be numbers, not dtype {x.dtype}")
    if x.ndim in (1, 3):
        x = x[:, None]  # (N,) is one feature; (N, H, W) is one channel
    elif x.ndim not in (2, 4):
        raise ConfigError(f"{where}: inputs of shape {x.shape}: expected (N, F), (N, H, W) "
                          "or (N, C, H, W)")
    if not np.isfinite(x).all():
        raise ConfigError(f"{where}: the inputs contain NaN or inf")
    return x.astype(np.float32)


def _encode_labels(
    y: np.ndarray, task: str, names: tuple[str, ...] | None, where: str
) -> tuple[np.ndarray, str, int, tuple[str, ...]]:
    """(encoded labels, task, num_classes or num_targets, class names) for all samples."""
    if y.ndim == 0 or y.ndim > 2:
        raise ConfigError(f"{where}: labels of shape {y.shape}: expected (N,) or (N, k)")
    single = y.ndim == 1 or y.shape[1] == 1  # one label per sample
    if y.dtype.kind in "OUS":  # text
        if task == "regression" or not single:
            raise ConfigError(f"{where}: text labels (e.g. {str(y.flat[0])!r}) need "
                              "classification with one label per sample")
        values, codes = np.unique(y.reshape(len(y)).astype(str), return_inverse=True)
        return codes.astype(np.int64), "classification", len(values), tuple(values.tolist())
    if y.dtype.kind not in "biuf":
        raise ConfigError(f"{where}: labels must be numbers or text, not dtype {y.dtype}")
    y = y.astype(np.float64)
    column = y.reshape(len(y)) if single else None
    if not np.isfinite(y).all():
        raise ConfigError(f"{where}: the labels contain NaN or inf")
    whole = column is not None and bool(np.all(column == np.round(column)))
    if task == "classification" and not whole:
        bad = "labels of shape " + str(y.shape) if column is None else \
            f"non-integer labels (e.g. {column[column != np.round(column)][0]:g})"
        raise ConfigError(f"data.task = 'classification' but {where} has {bad}")
    # The labels as classes: one whole number per sample (auto: and few distinct ones).
    classes = column if whole and task in ("auto", "classification") else None
    if task == "auto" and classes is not None and len(np.unique(classes)) > MAX_AUTO_CLASSES:
        classes = None
    if classes is None:
        targets = y.reshape(len(y), -1).astype(np.float32)
        return targets, "regression", targets.shape[1], ()
    values, codes = np.unique(classes, return_inverse=True)
    labels = tuple(names[int(v)] if names and 0 <= v < len(names) else str(int(v))
                   for v in values)
    return codes.astype(np.int64), "classification", len(values), labels


def _split(
    n: int, fraction: float, seed: int, codes: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled (train, val) indices; with class codes, every class held out in proportion."""
    n_val = round(fraction * n)
    if n - n_val < 1:
        raise ConfigError(f"data.val_fraction = {fraction:g} holds out {n_val} of {n} samples, "
                          "leaving none to train on")
    rng = np.random.RandomState(seed)
    order = rng.permutation(n)
    if n_val == 0:
        return order, order[:0]
    if codes is not None:  # group by class, still shuffled within each class
        order = order[np.argsort(codes[order], kind="stable")]
    # Evenly spaced picks along that order take each class in proportion (a stratified
    # split without per-class bookkeeping); picks are distinct since n / n_val >= 1.
    picks = ((np.arange(n_val) + 0.5) * n / n_val).astype(np.int64)
    held = np.zeros(n, dtype=bool)
    held[picks] = True
    return rng.permutation(order[~held]), rng.permutation(order[held])


def _preprocess(train: np.ndarray, val: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Centre or standardize per feature with statistics of the training split only."""
    if mode == "none":
        return train, val
    flat = train.reshape(len(train), -1).astype(np.float64)
    mean = flat.mean(axis=0)
    scale = np.ones_like(mean)
    if mode == "standardize":
        std = flat.std(axis=0)
        scale = np.where(std < STD_FLOOR, 1.0, std)

    def apply(a: np.ndarray) -> np.ndarray:
        flat_a = a.reshape(len(a), mean.size)  # not -1: the validation set may be empty
        return ((flat_a - mean) / scale).astype(np.float32).reshape(a.shape)

    return apply(train), apply(val)


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Build, split and preprocess the dataset ``cfg`` names; ``seed`` fixes generation
    and split. Raises ConfigError for bad settings or data, UserCodeError when a custom
    factory raises."""
    name, src = _source(cfg, seed)
    where = f"data.dataset = {cfg.dataset!r}"
    parts = [(src.x, src.y)] if src.val is None else [(src.x, src.y), src.val]
    xs = [_inputs(np.asarray(x), where) for x, _ in parts]
    ys = [np.asarray(y) for _, y in parts]
    for x, y in zip(xs, ys, strict=True):
        if len(x) != len(y):
            raise ConfigError(f"{where}: {len(x)} inputs but {len(y)} labels")
    if len({x.shape[1:] for x in xs}) > 1 or len({y.shape[1:] for y in ys}) > 1:
        raise ConfigError(f"{where}: the training and validation splits differ in shape: "
                          f"inputs {[x.shape for x in xs]}, labels {[y.shape for y in ys]}")
    # Labels of both splits are encoded together, so a class code means the same in each.
    # data.task = auto trusts a built-in dataset's own task (spirals with 10000 classes
    # and 100 samples is still classification) and guesses only for user data.
    wanted = src.task if cfg.task == "auto" and src.task else cfg.task
    y, task, count, class_names = _encode_labels(np.concatenate(ys), wanted,
                                                 src.label_names, where)
    x = np.concatenate(xs)
    if src.val is None:
        train, val = _split(len(x), cfg.val_fraction, seed,
                            y if task == "classification" else None)
    elif len(xs[0]) == 0:
        raise ConfigError(f"{where}: the training split is empty")
    else:
        train, val = np.arange(len(xs[0])), np.arange(len(xs[0]), len(x))
    x_train, x_val = _preprocess(x[train], x[val], cfg.preprocess)
    return Dataset(
        name=name,
        task=task,
        x_train=torch.from_numpy(x_train),
        y_train=torch.from_numpy(y[train]),
        x_val=torch.from_numpy(x_val),
        y_val=torch.from_numpy(y[val]),
        input_shape=tuple(int(d) for d in x.shape[1:]),
        num_classes=count if task == "classification" else 0,
        num_targets=count,
        class_names=class_names,
    )


# --- augmentation ----------------------------------------------------------------------


def _uniform(
    shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device (torch requires that), moved to the batch's."""
    return torch.rand(shape, generator=generator, device=generator.device).to(like.device)


def _noise(x: torch.Tensor, cfg: DataConfig, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return x + cfg.augment_noise * noise.to(x.device)


def _shift(x: torch.Tensor, cfg: DataConfig, generator: torch.Generator) -> torch.Tensor:
    s = cfg.augment_shift
    if s == 0:
        return x
    n, _, h, w = x.shape
    offsets = torch.randint(-s, s + 1, (2, n), generator=generator, device=generator.device)
    offsets = offsets.to(x.device)
    padded = torch.nn.functional.pad(x, (s, s, s, s))  # the zeros that move in at the edges
    # Output pixel (i, j) of sample k reads padded pixel (s - dy_k + i, s - dx_k + j).
    rows = (s - offsets[0])[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = (s - offsets[1])[:, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    crops = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N,H,W,C)
    return crops.permute(0, 3, 1, 2).contiguous()


def _flip(x: torch.Tensor, cfg: DataConfig, generator: torch.Generator) -> torch.Tensor:
    chosen = _uniform((len(x),), generator, x) < FLIP_PROB
    return torch.where(chosen[:, None, None, None], x.flip(-1), x)


def _erase(x: torch.Tensor, cfg: DataConfig, generator: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    u = _uniform((5, n), generator, x)
    max_h, max_w = max(1, int(h * ERASE_MAX_SIDE)), max(1, int(w * ERASE_MAX_SIDE))
    eh = 1 + (u[1] * max_h).long().clamp(max=max_h - 1)  # in [1, max_h]
    ew = 1 + (u[2] * max_w).long().clamp(max=max_w - 1)
    top = (u[3] * (h - eh + 1)).long()
    left = (u[4] * (w - ew + 1)).long()
    r, c = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (r >= top[:, None]) & (r < (top + eh)[:, None])  # (N, H)
    in_cols = (c >= left[:, None]) & (c < (left + ew)[:, None])  # (N, W)
    mask = (u[0] < ERASE_PROB)[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]
    return x.masked_fill(mask[:, None], 0.0)  # every channel of the rectangle


_AUGMENTS: dict[str, Callable[[torch.Tensor, DataConfig, torch.Generator], torch.Tensor]] = {
    "noise": _noise,
    "shift": _shift,
    "flip": _flip,
    "erase": _erase,
}


def validate_augment(
    cfg: DataConfig, is_image: bool, input_shape: tuple[int, ...] | None = None
) -> None:
    """Raise ConfigError when ``cfg.augment`` names an augmentation the data cannot take;
    ``input_shape``, when given, goes into the message."""
    for name in cfg.augment:
        if name not in _AUGMENTS:
            raise ConfigError(f"data.augment: unknown augmentation {name!r}"
                              + did_you_mean(name, list(_AUGMENTS)))
        if name in IMAGE_AUGMENTATIONS and not is_image:
            has = "is not image data" if input_shape is None else \
                f"has input shape {tuple(input_shape)}"
            raise ConfigError(f"data.augment: {name!r} needs image data (C, H, W); "
                              f"dataset {cfg.dataset!r} {has}")


def augment_batch(
    x: torch.Tensor, cfg: DataConfig, is_image: bool, generator: torch.Generator
) -> torch.Tensor:
    """A new, augmented copy of training batch ``x``: each of ``cfg.augment`` in order.

    Runs on ``x``'s device; all randomness comes from ``generator`` (drawn on its device),
    so the same generator state gives the same batch. ``x`` itself is never modified.
    """
    validate_augment(cfg, is_image, tuple(x.shape[1:]))
    out = x
    for name in cfg.augment:
        out = _AUGMENTS[name](out, cfg, generator)  # each one is out-of-place
    return x.clone() if out is x else out
