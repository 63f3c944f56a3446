"""Scoring throughput: rows/s of `predict_split` (encoded data) and `esmm predict` (raw file).

Usage:
    .venv/bin/python bench/bench_eval.py [--rows 1000000] [--workdir /tmp/esmm_bench_eval]

Writes a simulated world (test split only is scored), builds an untrained model of the
default sizes (scoring cost does not depend on the weights' values), then times:
  1. predict_split on the in-memory encoded split, for several batch sizes;
  2. the full metric set (evaluate_predictions) on those predictions;
  3. predict_file on the raw Parquet test file (read, encode, score, write).
Not a test: timings depend on the machine and its load (print the load average beside them).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from esmm.artifacts import save_run
from esmm.config import RunConfig
from esmm.data import load_schema, load_split
from esmm.metrics import evaluate_predictions
from esmm.predict import predict_file
from esmm.registry import get_model_spec
from esmm.synth import WorldConfig, write_world
from esmm.training import configure_threads, predict_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the world (test = 25%%)")
    ap.add_argument("--workdir", default="/tmp/esmm_bench_eval")
    ap.add_argument("--batch-sizes", default="4096,16384,65536")
    ap.add_argument("--model", default="esmm")
    args = ap.parse_args()
    work = Path(args.workdir)
    data = work / "world"
    if not (data / "test.parquet").is_file():
        write_world(data, WorldConfig(rows=args.rows, test_fraction=0.25))
    configure_threads(0)
    schema = load_schema(data)
    split = load_split(data, "test", schema)
    spec = get_model_spec(args.model)
    cfg = RunConfig(model=args.model)
    torch.manual_seed(0)
    model = spec.build(schema, cfg.model_config)
    model.fit_inputs(split)
    result: dict = {"rows": len(split), "load_average": os.getloadavg(), "threads":
                    torch.get_num_threads(), "predict_split_rows_per_s": {}}
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        predict_split(model, spec, split, bs)  # warm-up
        t = time.perf_counter()
        p = predict_split(model, spec, split, bs)
        result["predict_split_rows_per_s"][bs] = len(split) / (time.perf_counter() - t)
    t = time.perf_counter()
    evaluate_predictions(p["p_ctr"], p["p_cvr"], split.click, split.conversion, group=split.group,
                         true_ctr=split.true_ctr, true_cvr=split.true_cvr)
    result["metrics_rows_per_s"] = len(split) / (time.perf_counter() - t)
    run = work / "run"
    run.mkdir(parents=True, exist_ok=True)
    save_run(run, config=cfg, schema=schema, model=model, vocabularies=None, history=[],
             metrics={})
    stats = predict_file(run, data / "test.parquet", work / "scores.parquet")
    result["predict_file_rows_per_s"] = stats["rows_per_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
