"""Shared by the competitor child scripts of ``bench/bench_train.py``.

These scripts run inside the competitor virtual environment (torch pinned to the
project's version, torch-rechub, DeepCTR-Torch, pyarrow, scikit-learn); they never
import ``esmm``. Each one trains one implementation for one epoch on the data set
that ``bench_train.py`` generated, and writes one JSON result:

- ``train_seconds``: wall clock (``time.perf_counter``) of the library's own
  one-epoch training loop over data already in memory, from the first line of the
  epoch (building the shuffled batch iterator included) to the end of the last
  optimiser step; reading Parquet, building the model and scoring the test split
  are outside it. ``samples_per_s`` = train rows / ``train_seconds``.
- ``test``: CTR AUC (click vs pCTR), CTCVR AUC (click AND conversion vs pCTCVR),
  both over every test impression, and CVR AUC (conversion vs pCVR over clicked
  test impressions), all with ``sklearn.metrics.roc_auc_score`` on the full split.

Peak RSS is not measured here: the parent reads it from ``wait4`` on this process.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

EVAL_BATCH = 65536


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help="data set directory written by bench_train.py")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--tower", default="256,128", help="hidden sizes of each tower")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", required=True, help="scratch directory for this run")
    p.add_argument("--result", required=True, help="where to write the result JSON")
    args = p.parse_args()
    args.tower = [int(h) for h in args.tower.split(",") if h]
    return args


def setup(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    Path(args.work).mkdir(parents=True, exist_ok=True)


class Data:
    """The generated data set as NumPy columns (pyarrow, no pandas: cheapest load)."""

    def __init__(self, data_dir: str) -> None:
        d = Path(data_dir)
        start = time.perf_counter()
        self.meta = json.loads((d / "bench_meta.json").read_text())
        self.fields = self.meta["fields"]  # [{"name", "vocab_size", "side"}]
        self.train = self._read(d / "train.parquet")
        self.test = self._read(d / "test.parquet")
        self.load_seconds = time.perf_counter() - start

    def _read(self, path: Path) -> dict[str, np.ndarray]:
        names = [f["name"] for f in self.fields] + ["click", "conversion"]
        table = pq.read_table(path, columns=names)
        # copies: Arrow's zero-copy arrays are read-only, which torch.from_numpy warns about
        out = {n: np.array(table.column(n).to_numpy()) for n in names}
        out["click"] = out["click"].astype(np.float32)
        out["conversion"] = out["conversion"].astype(np.float32)
        return out

    def x(self, split: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {f["name"]: split[f["name"]].astype(np.int64, copy=False) for f in self.fields}

    def n_train(self) -> int:
        return len(self.train["click"])


def aucs(click: np.ndarray, conversion: np.ndarray, p_ctr: np.ndarray, p_cvr: np.ndarray,
         p_ctcvr: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    clicked = click == 1
    return {
        "ctr_auc": float(roc_auc_score(click, p_ctr)),
        "ctcvr_auc": float(roc_auc_score(conversion, p_ctcvr)),
        "cvr_auc": float(roc_auc_score(conversion[clicked], p_cvr[clicked])),
    }


def write_result(args: argparse.Namespace, impl: str, library: str, library_version: str,
                 data: Data, train_seconds: float, test: dict[str, float], *,
                 eval_seconds: float, n_params: int, extra: dict | None = None) -> None:
    import torch

    n = data.n_train()
    result = {
        "impl": impl,
        "library": library,
        "library_version": library_version,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "embedding_dim": args.embedding_dim,
        "tower": args.tower,
        "lr": args.lr,
        "train_rows": n,
        "test_rows": len(data.test["click"]),
        "train_seconds": train_seconds,
        "samples_per_s": n / train_seconds,
        "load_seconds": data.load_seconds,
        "eval_seconds": eval_seconds,
        "n_params": n_params,
        "test": test,
        **(extra or {}),
    }
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{impl} batch {args.batch_size}: {result['samples_per_s']:,.0f} samples/s "
          f"({train_seconds:.1f} s), test {test}", file=sys.stderr, flush=True)
