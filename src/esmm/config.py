"""Frozen configuration dataclasses that reject unknown keys.

A misspelt key in a TOML file is an error here, not a silently ignored
setting. Defaults follow the ESMM paper where it is specific (embedding 18,
towers 200-80, ReLU, Adam).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# Rows scored per forward pass when evaluating: measured fastest of 4k/16k/64k on 2 cores
# (activations of 16k rows stay in cache; 64k rows spill).
EVAL_BATCH_SIZE = 16384


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


T = TypeVar("T")


def _from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            v = data[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the shared parts of every model (all baselines use the same)."""

    embedding_dim: int = 18
    tower: tuple[int, ...] = (200, 80)
    dropout: float = 0.0
    pooling: str = "mean"  # how a multi-valued bag becomes one vector: "mean" or "sum" (weighted)
    sparse: bool = True  # row-wise (sparse) embedding gradients; see esmm.training
    # "base_rate": each tower's output bias starts at the log-odds of its task's rate in the
    # train split (CTR: clicks per impression, CVR: conversions per click, CTCVR: conversions
    # per impression), so the first steps are not spent learning the base rate -- worth
    # +0.02-0.03 test CVR AUC after one epoch at batch 4096 (docs/performance.md). "zero":
    # PyTorch's default initialisation.
    output_bias_init: str = "base_rate"

    def __post_init__(self) -> None:
        if self.embedding_dim < 1:
            raise ConfigError("model.embedding_dim must be >= 1")
        if not self.tower or any(int(h) < 1 for h in self.tower):
            raise ConfigError("model.tower must be a non-empty list of positive sizes")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model.dropout must be in [0, 1)")
        if self.output_bias_init not in ("base_rate", "zero"):
            raise ConfigError("model.output_bias_init must be 'base_rate' or 'zero'")
        if self.pooling not in ("mean", "sum"):
            raise ConfigError("model.pooling must be 'mean' or 'sum'")
        object.__setattr__(self, "tower", tuple(int(h) for h in self.tower))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4
    batch_size: int = 2048
    lr: float = 2e-3
    embedding_lr: float | None = None  # None: same as lr
    weight_decay: float = 0.0
    seed: int = 0
    early_stop_metric: str = "ctcvr_auc"
    patience: int = 1  # validations without improvement before stopping
    # validations per epoch, evenly spaced in its steps: on large data one epoch may be
    # the whole budget, and two tasks (ESMM's) may peak mid-epoch
    validations_per_epoch: int = 1
    eval_batch_size: int = EVAL_BATCH_SIZE
    threads: int = 0  # 0: the cores idle when training starts (esmm.cpu.free_threads)
    progress: bool = True
    # "bf16": the towers' hidden layers train in bfloat16 (mixed precision: fp32 master
    # weights, optimiser state, embeddings, output layer and loss). About 2x the matrix
    # throughput on CPUs with native bf16 dot products (AVX512_BF16, AMX); much slower
    # on CPUs without them. Valid/test scoring stays fp32.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError("train.epochs must be >= 1")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("train.batch_size and train.eval_batch_size must be >= 1")
        if self.lr <= 0 or (self.embedding_lr is not None and self.embedding_lr <= 0):
            raise ConfigError("train.lr and train.embedding_lr must be > 0")
        if self.patience < 0:
            raise ConfigError("train.patience must be >= 0")
        if self.validations_per_epoch < 1:
            raise ConfigError("train.validations_per_epoch must be >= 1")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"train.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.early_stop_metric.startswith("calibration"):
            raise ConfigError("train.early_stop_metric cannot be a calibration ratio")


#: Settings a saved run lacks because it predates them, with the behaviour it was trained
#: with (``output_bias_init`` arrived on 2026-12-04; before it, output biases started at 0).
SAVED_CONFIG_LEGACY: dict[str, dict[str, Any]] = {
    "model_config": {"output_bias_init": "zero"},
}


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs besides the data; saved as config.json."""

    model: str = "esmm"
    model_config: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "model_config": dataclasses.asdict(self.model_config),
                "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> RunConfig:
        unknown = sorted(set(data) - {"model", "model_config", "train"})
        if unknown:
            raise ConfigError(f"{where}: unknown section(s) {unknown}; "
                              "allowed: model, [model_config], [train]")
        return cls(model=data.get("model", "esmm"),
                   model_config=_from_dict(ModelConfig, data.get("model_config", {}),
                                           f"{where} [model_config]"),
                   train=_from_dict(TrainConfig, data.get("train", {}), f"{where} [train]"))

    @classmethod
    def from_saved(cls, data: dict[str, Any], where: str = "config.json") -> RunConfig:
        """A run's saved ``config.json``: keys added to the configuration after the run was
        written take the value that reproduces how it was trained, not today's default."""
        data = {k: v for k, v in data.items() if k != "esmm_version"}
        for section, legacy in SAVED_CONFIG_LEGACY.items():
            data[section] = {**legacy, **data.get(section, {})}
        return cls.from_dict(data, where=where)

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from None
        return cls.from_dict(data, where=str(path))

    def replace(self, *, model: str | None = None, **train_overrides: Any) -> RunConfig:
        """A copy with the model name and/or training fields overridden (None = keep)."""
        overrides = {k: v for k, v in train_overrides.items() if v is not None}
        try:
            train = dataclasses.replace(self.train, **overrides)
        except TypeError as e:
            raise ConfigError(str(e)) from None
        return RunConfig(model=model or self.model, model_config=self.model_config, train=train)
