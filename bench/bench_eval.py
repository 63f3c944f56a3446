"""Scoring throughput: rows/s of `predict_split` (encoded data) and `esmm predict` (raw file).

Usage:
    .venv/bin/python bench/bench_eval.py [--rows 1000000] [--workdir /tmp/esmm_bench_eval]

Writes a simulated world (test split only is scored), builds a model of the default sizes
(untrained unless --trained: scoring cost does not depend on the weights' values), then times:
  1. predict_split on the in-memory encoded split, for several batch sizes, in fp32 and in
     bf16 (hidden layers in bfloat16), with the largest score difference and the AUCs of both;
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

import esmm  # noqa: F401 -- first: it chooses how torch's OpenMP threads wait (esmm/cpu.py)
import numpy as np
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
    ap.add_argument("--batch-sizes", default="4096,8192,16384,65536")
    ap.add_argument("--model", default="esmm")
    ap.add_argument("--precisions", default="fp32,bf16", help="scoring precisions to time")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per setting (best kept)")
    ap.add_argument("--trained", action="store_true",
                    help="train the model for one epoch first, so the bf16-vs-fp32 AUCs are "
                    "those of a real model (timings do not depend on the weights)")
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
    if args.trained:
        from esmm.training import Trainer

        Trainer(model, spec, cfg.train.__class__(epochs=1, progress=False)).fit(
            load_split(data, "train", schema))
    result: dict = {"rows": len(split), "load_average": os.getloadavg(), "threads":
                    torch.get_num_threads(), "predict_split_rows_per_s": {}}
    scores: dict[str, dict] = {}
    for precision in args.precisions.split(","):
        rates = result["predict_split_rows_per_s"][precision] = {}
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            predict_split(model, spec, split, bs, precision)  # warm-up
            best = 0.0
            for _ in range(args.repeats):  # best of N: the machine's other jobs only slow it
                t = time.perf_counter()
                scores[precision] = predict_split(model, spec, split, bs, precision)
                best = max(best, len(split) / (time.perf_counter() - t))
            rates[bs] = best
    p = scores["fp32"] if "fp32" in scores else next(iter(scores.values()))
    if "fp32" in scores and "bf16" in scores:
        a, b = scores["fp32"], scores["bf16"]
        result["bf16_vs_fp32"] = {
            **{f"max_abs_diff_{k}": float(np.abs(a[k] - b[k]).max()) for k in a},
            **{f"{name}_{prec}": v for prec, sc in (("fp32", a), ("bf16", b)) for name, v in
               evaluate_predictions(sc["p_ctr"], sc["p_cvr"], split.click, split.conversion,
                                    true_cvr=split.true_cvr).items()
               if name in ("ctr_auc", "cvr_auc", "ctcvr_auc", "cvr_auc_entire_truth")}}
    t = time.perf_counter()
    evaluate_predictions(p["p_ctr"], p["p_cvr"], split.click, split.conversion, group=split.group,
                         true_ctr=split.true_ctr, true_cvr=split.true_cvr)
    result["metrics_rows_per_s"] = len(split) / (time.perf_counter() - t)
    run = work / "run"
    run.mkdir(parents=True, exist_ok=True)
    save_run(run, config=cfg, schema=schema, model=model, vocabularies=None, history=[],
             metrics={})
    for precision in args.precisions.split(","):
        stats = predict_file(run, data / "test.parquet", work / "scores.parquet",
                             precision=precision)
        result.setdefault("predict_file_rows_per_s", {})[precision] = stats["rows_per_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
