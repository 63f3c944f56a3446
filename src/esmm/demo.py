"""The main job on the built-in simulated world: BASE vs ESMM, side by side.

``run_demo`` writes a world, trains each model with identical settings (and,
with several seeds, a fresh world and fresh initialisation per seed), and
returns the test metrics per model. ``summarise`` turns repeated runs into
mean and standard deviation, the paper's protocol of repeated experiments.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from esmm.api import train
from esmm.config import RunConfig
from esmm.data import has_split
from esmm.metrics import format_metrics_table
from esmm.synth import WorldConfig, write_world

# The rows a reader of the demo table cares about, in reading order.
DEMO_METRICS = ("cvr_auc_entire_truth", "oracle_cvr_auc_entire_truth", "cvr_auc", "ctcvr_auc",
                "ctr_auc", "oracle_ctr_auc", "ctr_gauc", "cvr_logloss", "ctcvr_logloss",
                "calibration_ctr", "calibration_cvr", "calibration_ctcvr", "n_impressions",
                "n_clicks", "n_conversions")


def run_demo(out_dir: str | Path, *, models: tuple[str, ...] = ("base", "esmm"),
             seeds: tuple[int, ...] = (0,), world: WorldConfig | None = None,
             config: RunConfig | None = None, force: bool = False) -> dict[str, list[dict]]:
    """Train every model on the world of every seed; return {model: [test metrics per seed]}.

    Runs already finished in ``out_dir`` are reused unless ``force``.
    """
    out = Path(out_dir)
    world = world or WorldConfig()
    config = config or RunConfig()
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    for seed in seeds:
        data = out / f"world-seed{seed}"
        if not has_split(data, "test"):
            print(f"== writing the simulated world (seed {seed}, {world.rows:,} rows)",
                  file=sys.stderr)
            write_world(data, WorldConfig(**{**world.__dict__, "seed": seed}))
        for model in models:
            run = out / f"{model}-seed{seed}"
            if (run / "metrics.json").is_file() and not force:
                # finished earlier: reuse it, so an interrupted demo picks up where it stopped
                print(f"== {model} (seed {seed}) already trained in {run}", file=sys.stderr)
                results[model].append(json.loads((run / "metrics.json").read_text())["test"])
                continue
            print(f"== training {model} (seed {seed})", file=sys.stderr)
            cfg = config.replace(model=model, seed=seed)
            metrics = train(data, run, cfg, force=force)
            results[model].append(metrics["test"])
    (out / "demo_results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def summarise(results: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """(mean, sample std) of every metric per model over the repeated runs."""
    summary: dict[str, dict[str, tuple[float, float]]] = {}
    for model, runs in results.items():
        keys = runs[0].keys()
        summary[model] = {}
        for k in keys:
            v = np.array([r[k] for r in runs], dtype=np.float64)
            summary[model][k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    return summary


def format_demo_table(results: dict[str, list[dict[str, float]]]) -> str:
    """Models side by side (mean +- std when repeated), plus ESMM's gain over BASE."""
    summary = summarise(results)
    models = list(summary)
    n_runs = len(next(iter(results.values())))
    rows = [["metric", *models]]
    gain = "esmm" in summary and "base" in summary
    if gain:
        rows[0].append("esmm - base")
    for name in DEMO_METRICS:
        if not all(name in summary[m] for m in models):
            continue
        cells = [name]
        for m in models:
            mean, std = summary[m][name]
            if name.startswith("n_"):
                cells.append(f"{mean:,.0f}")
            else:
                cells.append(f"{mean:.4f}" + (f" ± {std:.4f}" if n_runs > 1 else ""))
        if gain:
            cells.append("" if name.startswith(("n_", "oracle")) else
                         f"{summary['esmm'][name][0] - summary['base'][name][0]:+.4f}")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


__all__ = ["run_demo", "summarise", "format_demo_table", "format_metrics_table"]
