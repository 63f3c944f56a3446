"""High-level Python API behind ``esmm train`` and ``esmm evaluate``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from esmm import cpu
from esmm.artifacts import load_run, prepare_run_dir, save_run
from esmm.config import EVAL_BATCH_SIZE, RunConfig
from esmm.data import VOCAB_FILE, has_split, load_schema, load_split
from esmm.registry import get_model_spec
from esmm.training import Trainer, configure_threads, evaluate_split, set_seed


def train(data_dir: str | Path, out_dir: str | Path, config: RunConfig | None = None, *,
          force: bool = False, evaluate_test: bool = True) -> dict[str, Any]:
    """Train ``config.model`` on DIR/train, early-stopping on DIR/valid; save a run.

    Test metrics, when ``evaluate_test`` and a test split exists, are computed
    once after training, for the report only: no choice depends on them.
    Returns the contents of ``metrics.json``.
    """
    config = config or RunConfig()
    spec = get_model_spec(config.model)
    out = prepare_run_dir(out_dir, force=force)  # fail before spending time on training
    configure_threads(config.train.threads)
    schema = load_schema(data_dir)
    train_split = load_split(data_dir, "train", schema)
    valid_split = load_split(data_dir, "valid", schema) if has_split(data_dir, "valid") else None
    if valid_split is None and config.train.progress:
        print("no valid split: training all epochs without early stopping", file=sys.stderr)

    set_seed(config.train.seed)
    model = spec.build(schema, config.model_config)
    model.fit_inputs(train_split)
    start = time.perf_counter()
    fit = Trainer(model, spec, config.train).fit(train_split, valid_split)
    metrics: dict[str, Any] = {
        "model": config.model, "best_epoch": fit.best_epoch, "stopped_early": fit.stopped_early,
        "train_seconds": time.perf_counter() - start, "valid": fit.best_valid,
        # what the speed depended on (esmm/cpu.py): worth having beside train_seconds
        "threads": torch.get_num_threads(), "omp_wait_policy": dict(cpu.decision),
    }
    if evaluate_test and has_split(data_dir, "test"):
        metrics["test"] = evaluate_split(model, spec, load_split(data_dir, "test", schema),
                                         config.train.eval_batch_size)
    vocab_path = Path(data_dir) / VOCAB_FILE
    vocabularies = json.loads(vocab_path.read_text()) if vocab_path.is_file() else None
    save_run(out, config=config, schema=schema, model=model, vocabularies=vocabularies,
             history=fit.history, metrics=metrics)
    return metrics


def evaluate(run_dir: str | Path, data_dir: str | Path, split: str = "test",
             batch_size: int = EVAL_BATCH_SIZE, precision: str = "fp32") -> dict[str, float]:
    """The paper's metrics for a saved run on one split of an encoded dataset.

    ``precision="bf16"``: hidden layers scored in bfloat16 (see ``predict_split``).
    """
    run = load_run(run_dir)
    schema = load_schema(data_dir)
    if schema.features != run.schema.features:
        raise ValueError(f"{data_dir}: dataset features differ from the run's schema "
                         f"({run_dir}/schema.json); evaluate on data encoded the same way")
    return evaluate_split(run.model, run.spec, load_split(data_dir, split, schema), batch_size,
                          precision)
