"""Run directories: weights as safetensors plus JSON, never pickles.

A run directory holds everything needed to score raw rows later::

    RUN/config.json         resolved RunConfig (model name, sizes, training settings)
    RUN/schema.json         the dataset schema the model was built for
    RUN/vocabularies.json   raw value -> id maps (absent for pre-encoded data)
    RUN/weights.safetensors the model's state_dict
    RUN/history.json        one record per epoch (loss, speed, valid metrics)
    RUN/metrics.json        best-epoch valid metrics and, for reporting only, test metrics
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from esmm import __version__
from esmm.config import RunConfig
from esmm.registry import ModelSpec, get_model_spec
from esmm.schema import Schema

RUN_FILES = ("config.json", "schema.json", "vocabularies.json", "weights.safetensors",
             "history.json", "metrics.json")


class ArtifactError(RuntimeError):
    """A run directory is missing, incomplete or would be overwritten."""


def prepare_run_dir(path: str | Path, force: bool = False) -> Path:
    """Create ``path``; refuse a non-empty one unless ``force`` (then only our files are replaced)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"{path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise ArtifactError(f"{path}: run directory is not empty; pass --force (force=True) to "
                            "overwrite its run files")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")


def save_run(path: str | Path, *, config: RunConfig, schema: Schema, model: nn.Module,
             vocabularies: dict[str, Any] | None, history: list[dict[str, Any]],
             metrics: dict[str, Any]) -> Path:
    path = Path(path)
    write_json(path / "config.json", {"esmm_version": __version__, **config.to_dict()})
    schema.save(path / "schema.json")
    if vocabularies is not None:
        (path / "vocabularies.json").write_text(json.dumps(vocabularies))
    # contiguous() because safetensors refuses views that share storage
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(path / "weights.safetensors"))
    write_json(path / "history.json", history)
    write_json(path / "metrics.json", metrics)
    return path


@dataclass
class LoadedRun:
    path: Path
    config: RunConfig
    schema: Schema
    spec: ModelSpec
    model: nn.Module
    vocabularies: dict[str, Any] | None


def load_run(path: str | Path) -> LoadedRun:
    """Rebuild a trained model from its run directory, in eval mode."""
    path = Path(path)
    for required in ("config.json", "schema.json", "weights.safetensors"):
        if not (path / required).is_file():
            raise ArtifactError(f"{path}: not a complete run directory ({required} is missing)")
    raw = json.loads((path / "config.json").read_text())
    config = RunConfig.from_saved(raw, where=str(path / "config.json"))
    schema = Schema.load(path / "schema.json")
    spec = get_model_spec(config.model)
    model = spec.build(schema, config.model_config)
    model.load_state_dict(load_file(str(path / "weights.safetensors")))
    model.eval()
    vocab_path = path / "vocabularies.json"
    vocabularies = json.loads(vocab_path.read_text()) if vocab_path.is_file() else None
    return LoadedRun(path, config, schema, spec, model, vocabularies)
