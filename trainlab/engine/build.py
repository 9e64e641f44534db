"""Building a run: the data, objective, model and optimizer a config describes.

``BuiltRun(config)`` does it once, in a fixed order (seed, data, objective, model, init,
checks, tensors on the device, optimizer), so a seeded build always gives the same
weights. The lr schedule is the Trainer's: its length follows the data order, which
only a run in progress has. Everything that needs a run but does not train it uses a
``BuiltRun``: the doctor's pre-flight checks, the init probe, the LR range test and its
sandbox. The loop's ``Trainer`` is a ``BuiltRun`` with the counters of a run in progress.

Build errors raise here, before any step: ``ConfigError`` for a setting that cannot work
(named, with what is allowed), ``UserCodeError`` for a user's factory or model that raised.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from trainlab.core.config import Config, ConfigError
from trainlab.engine.batches import steps_per_epoch
from trainlab.engine.data import Dataset, load_dataset, validate_augment
from trainlab.engine.init import init_weights
from trainlab.engine.losses import Objective, build_objective
from trainlab.engine.models import build_model
from trainlab.engine.optim import build_optimizer
from trainlab.engine.precision import Precision, check_precision
from trainlab.engine.usercode import UserCodeError


def usable_cores() -> int:
    """Cores this process may run on (affinity-limited on shared servers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 2


def resolve_device(name: str) -> torch.device:
    """run.device as a torch device: auto picks CUDA, then MPS, then the CPU; a device
    that is not there is a config error naming what is."""
    mps = torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name == "mps" and not mps:
        raise ConfigError(f"run.device = 'mps' but MPS is not available (torch "
                          f"{torch.__version__}, an Apple-silicon GPU): use auto or cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if count == 0:
            raise ConfigError(f"run.device = {name!r} but no CUDA device is available "
                              f"(torch {torch.__version__}); use auto or cpu")
        if index >= count:
            raise ConfigError(f"run.device = {name!r} but this machine has {count} CUDA "
                              f"device(s): use cuda:0 to cuda:{count - 1}")
    return torch.device(name)


def check_batch_size(config: Config, n_train: int) -> None:
    """Raise ConfigError when ``config``'s data.batch_size cannot train on ``n_train``
    samples (larger than the set, or 1 under BatchNorm)."""
    size = config.data.batch_size
    if size > n_train:
        raise ConfigError(
            f"data.batch_size = {size} is larger than the {n_train} training samples: "
            "use at most that, or 0 for the full batch"
        )
    if size == 1 and config.model.norm == "batch":
        raise ConfigError(
            "data.batch_size = 1 cannot train BatchNorm (it needs 2+ samples per batch): "
            "use a larger batch or model.norm = layer"
        )


class BuiltRun:
    """The data, objective, model and optimizer of ``config``, built and checked.

    The training and validation tensors live on the run's device, targets already in
    the objective's form. Costs one forward pass on two samples beyond the build itself
    (the model check). The attributes a live change replaces (``config``, ``optimizer``)
    are plain attributes: the loop's ``Trainer`` swaps them.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.step = 0
        """Optimizer steps taken on ``model`` (a Trainer's count; 0 as built)."""
        run = config.run
        torch.set_num_threads(run.threads or max(1, usable_cores() - 1))
        self.device = resolve_device(run.device)
        self.on_cpu = self.device.type == "cpu"  # read every step: device.type costs ~7 us cold
        torch.manual_seed(run.seed)

        data = load_dataset(config.data, run.seed)
        validate_augment(config.data, data.is_image, data.input_shape)
        self.data: Dataset = data
        check_batch_size(config, len(data.x_train))
        self.objective: Objective = build_objective(
            config.loss.name, data.task, data.num_classes, data.num_targets
        )
        self.model: nn.Module = build_model(config.model, data.input_shape,
                                            self.objective.num_outputs)
        init_weights(self.model, config.init, config.model.activation, config.model.arch)
        self.model.to(self.device)
        self._check_model()
        check_precision(config)
        self.precision = Precision(run.precision, self.device)
        """How a step computes (run.precision): autocast, and fp16's loss scaler."""

        self.x_train = data.x_train.to(self.device)
        self.x_val = data.x_val.to(self.device)
        self.t_train = self.objective.targets(data.y_train).to(self.device)
        self.t_val = self.objective.targets(data.y_val).to(self.device)
        self.y_val = data.y_val.to(self.device)
        self.optimizer = build_optimizer(self.model.parameters(), config.optim)

    @property
    def batch_size(self) -> int:
        """The effective batch size (0 in the config means the full training set)."""
        return self.config.data.batch_size or len(self.x_train)

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the training set at the current batch size."""
        return steps_per_epoch(len(self.x_train), self.batch_size)

    def _check_model(self) -> None:
        """A model that cannot train on this data fails now, with the reason, not mid-run."""
        config = self.config
        source = "model.factory" if config.model.arch == "custom" else "model.arch"
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError(f"{source}: the model has no trainable parameters")
        self.model.eval()
        example = self.data.x_train[:2].to(self.device)
        try:
            with torch.no_grad():
                out = self.model(example)
        except Exception as exc:
            if config.model.arch != "custom":
                raise
            shape = tuple(example.shape)
            raise UserCodeError(f"model.factory {config.model.factory}: the model on a "
                                f"batch of shape {shape}", exc) from exc
        finally:
            self.model.train()
        want = self.objective.num_outputs
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(out), want):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                f"{source}: the model's output is {got} for a batch of 2; the "
                f"{self.objective.name} loss on this data needs (batch, {want})"
            )
        needs_val = [key for key, on in (
            ("reg.early_stop_patience", config.reg.early_stop_patience),
            ("schedule.name = reduce_on_plateau", config.schedule.name == "reduce_on_plateau"),
        ) if on]
        if needs_val and len(self.data.x_val) == 0:
            raise ConfigError(f"{needs_val[0]} needs a validation set, and there is none "
                              "(data.val_fraction is 0): set data.val_fraction > 0")
