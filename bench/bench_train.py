"""One-epoch training throughput of ``esmm`` against torch-rechub's and DeepCTR-Torch's ESMM.

    .venv/bin/python bench/bench_train.py --rows 1000000 --batch-sizes 4096,1024 \\
        --impls esmm,torch-rechub,deepctr --out bench/results/bench_train.json

A benchmark, not a test. In one run it

1. generates one data set (in a child process, cached under ``--workdir``): ``--rows``
   train rows plus ``--test-rows`` test rows of 17 Ali-CCP-shaped categorical
   fields (vocabularies from 3 to 500k, Zipf-distributed ids), with click and
   conversion labels drawn from a hidden logistic model of the fields (click rate
   about 4 %, conversion rate among clicks about 20 %), so test AUCs measure
   learning, not noise. It is written once, as an ``esmm`` dataset directory
   (``schema.json`` + ``train.parquet`` + ``test.parquet``, identity-encoded
   categorical features) whose Parquet files the competitor scripts read too;
2. creates (once) the competitor venv ``--competitor-venv`` with ``python3 -m venv``
   and installs the project's torch version first, then torch-rechub and
   DeepCTR-Torch with ``torch==<that version>`` on the same pip command line;
3. for every batch size and implementation (``--repeats`` rounds, the
   implementations back to back inside each round), trains one epoch in a separate
   child process with the same sizes (embedding 16, towers 256-128, Adam lr 1e-3,
   ``--threads`` torch threads) and reads that child's peak RSS from ``wait4``;
4. prints a table (samples/s, ratio to torch-rechub at the same batch size, peak
   RSS, test CTR / CTCVR AUC) and writes everything to ``--out`` as JSON.

What is timed, identically for every implementation: the wall clock of the
library's own one-epoch training loop over data already in memory (for esmm a
wrapper around ``esmm.training.Trainer.train_epoch``; for torch-rechub
``MTLTrainer.train_one_epoch``; for DeepCTR-Torch ``fit``'s epoch, from a
callback's ``on_epoch_begin`` to its ``on_epoch_end``). Reading the data, building
the model and scoring the test split are not. samples/s = train rows / that time.
Peak RSS is the whole child process (imports, data, model, optimiser state,
evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
COMPETITORS = BENCH / "competitors"
IMPLS = ("esmm", "esmm-bf16", "esmm-dense", "torch-rechub", "deepctr")
#: esmm variants: the same library with one training option changed. esmm-bf16: --precision
#: bf16; esmm-dense: embeddings as ordinary parameters under dense Adam (model_config.sparse =
#: false), the quality reference for the row-wise optimiser (no speed target).
ESMM_VARIANTS = {"esmm": {"precision": "fp32", "sparse": True},
                 "esmm-bf16": {"precision": "bf16", "sparse": True},
                 "esmm-dense": {"precision": "fp32", "sparse": False}}
TARGETED = ("esmm", "esmm-bf16")  # the variants held to --targets
REFERENCE = "torch-rechub"
CHILD_SCRIPTS = {"torch-rechub": COMPETITORS / "rechub_esmm.py",
                 "deepctr": COMPETITORS / "deepctr_esmm.py"}
GENERATOR_VERSION = 1

# 17 single-valued fields named after Ali-CCP's field ids: (name, vocab_size, side).
# vocab_size counts id 0 (unknown), which the generator never draws. "side" splits
# them into torch-rechub ESMM's user_features / item_features.
FIELDS = (
    ("f101", 500_000, "user"),   # user id
    ("f121", 100, "user"),
    ("f122", 15, "user"),
    ("f124", 3, "user"),
    ("f125", 8, "user"),
    ("f126", 4, "user"),
    ("f127", 4, "user"),
    ("f128", 3, "user"),
    ("f205", 300_000, "item"),   # item id
    ("f206", 10_000, "item"),    # category
    ("f207", 100_000, "item"),   # shop
    ("f210", 50_000, "item"),    # intention node
    ("f216", 50_000, "item"),    # brand
    ("f508", 5_000, "item"),     # user x category
    ("f509", 20_000, "item"),    # user x shop
    ("f702", 2_000, "item"),     # user x brand
    ("f853", 1_000, "item"),     # user x intention
)
CLICK_RATE = 0.04
CVR_AMONG_CLICKS = 0.20
ZIPF_EXPONENT = 1.1


# ---------------------------------------------------------------------------
# data (runs in a child process so the parent stays small: a child's ru_maxrss
# starts from its parent's high-water mark at spawn time)


def data_config(args: argparse.Namespace) -> dict:
    return {"generator_version": GENERATOR_VERSION, "rows": args.rows,
            "test_rows": args.test_rows, "seed": args.seed,
            "fields": [{"name": n, "vocab_size": v, "side": s} for n, v, s in FIELDS],
            "click_rate": CLICK_RATE, "cvr_among_clicks": CVR_AMONG_CLICKS,
            "zipf_exponent": ZIPF_EXPONENT}


def generate(data_dir: Path, config: dict) -> None:
    import numpy as np
    import pyarrow as pa

    from esmm.data import write_dataset
    from esmm.metrics import auc
    from esmm.schema import Feature, Schema

    rng = np.random.default_rng(config["seed"])
    n = config["rows"] + config["test_rows"]
    ids: dict[str, np.ndarray] = {}
    z_ctr = np.zeros(n)
    z_cvr = np.zeros(n)
    for f in config["fields"]:
        v = f["vocab_size"]
        # Zipf over ranks 1..v-1, ranks shuffled onto ids 1..v-1 (popular ids are not the low ones)
        p = np.arange(1, v, dtype=np.float64) ** -config["zipf_exponent"]
        cdf = np.cumsum(p)
        cdf /= cdf[-1]
        rank = np.minimum(np.searchsorted(cdf, rng.random(n)), v - 2)
        col = (rng.permutation(v - 1) + 1)[rank]
        ids[f["name"]] = col.astype(np.int64)
        # hidden per-id effects; the CVR effects are correlated with the CTR ones
        sigma = 0.45 if v >= 50_000 else 0.3
        w_ctr = rng.normal(0.0, sigma, v)
        w_cvr = 0.5 * w_ctr + np.sqrt(1 - 0.25) * rng.normal(0.0, sigma, v)
        z_ctr += w_ctr[col]
        z_cvr += w_cvr[col]
    # one low-rank interaction per task, so the towers have something beyond a sum to learn
    for (a, b), z in ((("f121", "f206"), z_ctr), (("f122", "f216"), z_cvr)):
        va = next(f["vocab_size"] for f in config["fields"] if f["name"] == a)
        vb = next(f["vocab_size"] for f in config["fields"] if f["name"] == b)
        u, w = rng.normal(0, 0.5, (va, 4)), rng.normal(0, 0.5, (vb, 4))
        z += (u[ids[a]] * w[ids[b]]).sum(axis=1)

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x))

    def bias_for(z: np.ndarray, target: float) -> float:
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if sigmoid(z + mid).mean() < target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    true_ctr = sigmoid(z_ctr + bias_for(z_ctr, config["click_rate"]))
    click = rng.random(n) < true_ctr
    true_cvr = sigmoid(z_cvr + bias_for(z_cvr[click], config["cvr_among_clicks"]))
    conversion = click & (rng.random(n) < true_cvr)

    def table(rows: slice) -> pa.Table:
        cols = {name: pa.array(col[rows]) for name, col in ids.items()}
        cols["click"] = pa.array(click[rows].astype(np.int8))
        cols["conversion"] = pa.array(conversion[rows].astype(np.int8))
        cols["true_ctr"] = pa.array(true_ctr[rows].astype(np.float32))
        cols["true_cvr"] = pa.array(true_cvr[rows].astype(np.float32))
        return pa.table(cols)

    train, test = slice(0, config["rows"]), slice(config["rows"], n)
    schema = Schema(features=tuple(Feature(f["name"], "categorical", f["vocab_size"],
                                           encoding="identity") for f in config["fields"]),
                    description="bench/bench_train.py: synthetic Ali-CCP-shaped rows, "
                                "labels from a hidden logistic model of the fields")
    write_dataset(data_dir, schema, {"train": table(train), "test": table(test)})
    tc, tv, tk, tconv = true_ctr[test], true_cvr[test], click[test], conversion[test]
    stats = {
        "train_clicks": int(click[train].sum()), "train_conversions": int(conversion[train].sum()),
        "test_clicks": int(tk.sum()), "test_conversions": int(tconv.sum()),
        # what the hidden model itself scores: the ceiling for any learnt model
        "oracle_test_ctr_auc": float(auc(tk.astype(np.float64), tc)),
        "oracle_test_ctcvr_auc": float(auc(tconv.astype(np.float64), tc * tv)),
        "oracle_test_cvr_auc": float(auc(tconv[tk].astype(np.float64), tv[tk])),
    }
    # written last: its presence marks a complete data set
    (data_dir / "bench_meta.json").write_text(json.dumps({**config, "stats": stats}, indent=2) + "\n")


def ensure_data(args: argparse.Namespace) -> tuple[Path, dict]:
    config = data_config(args)
    data_dir = args.workdir / f"data-r{args.rows}-t{args.test_rows}-s{args.seed}"
    meta_path = data_dir / "bench_meta.json"
    if meta_path.is_file() and not args.regenerate:
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in config} == config:
            print(f"data: reusing {data_dir}", flush=True)
            return data_dir, meta
    if meta_path.exists():
        meta_path.unlink()
    print(f"data: generating {args.rows:,} train + {args.test_rows:,} test rows in {data_dir}",
          flush=True)
    start = time.perf_counter()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "gen_config.json").write_text(json.dumps(config))
    subprocess.run([sys.executable, __file__, "--child", "generate", "--data", str(data_dir)],
                   check=True)
    meta = json.loads(meta_path.read_text())
    print(f"data: done in {time.perf_counter() - start:.0f} s; {meta['stats']}", flush=True)
    return data_dir, meta


# ---------------------------------------------------------------------------
# competitor venv


def project_torch_version() -> str:
    return version("torch").split("+")[0]


def competitor_spec(args: argparse.Namespace) -> list[str]:
    return [f"torch=={project_torch_version()}", f"torch-rechub=={args.rechub_version}",
            f"deepctr-torch=={args.deepctr_version}",
            # deepctr-torch 0.3.0 imports requests and packaging without declaring them
            "requests", "packaging", "pandas", "scikit-learn", "pyarrow"]


def ensure_competitor_venv(args: argparse.Namespace) -> dict:
    venv = args.competitor_venv
    python = venv / "bin" / "python"
    marker = venv / ".bench_train-spec.json"
    spec = competitor_spec(args)
    if not (python.exists() and marker.is_file() and json.loads(marker.read_text()) == spec):
        log = args.workdir / "competitor-venv-pip.log"
        print(f"competitor venv: installing {' '.join(spec)} into {venv} (log: {log})", flush=True)
        start = time.perf_counter()
        with open(log, "w") as out:
            if not python.exists():
                subprocess.run(["python3", "-m", "venv", str(venv)], check=True, stdout=out,
                               stderr=subprocess.STDOUT)
            pip = [str(python), "-m", "pip", "install", *args.pip_arg]
            # torch alone first (the CPU build the pip configuration points at), then
            # the rest with torch pinned on the same line so pip cannot swap it
            for cmd in (pip + [spec[0]], pip + spec):
                out.write(f"$ {shlex.join(cmd)}\n")
                out.flush()
                r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
                if r.returncode:
                    sys.exit(f"competitor venv: pip failed (exit {r.returncode}); see {log}")
        marker.write_text(json.dumps(spec))
        print(f"competitor venv: ready in {time.perf_counter() - start:.0f} s", flush=True)
    probe = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
             "('torch', 'torch-rechub', 'deepctr-torch', 'numpy', 'pandas', 'scikit-learn', "
             "'pyarrow')}))")
    versions = json.loads(subprocess.run([str(python), "-c", probe], check=True,
                                         capture_output=True, text=True).stdout)
    if versions["torch"].split("+")[0] != project_torch_version():
        sys.exit(f"competitor venv has torch {versions['torch']}, the project has "
                 f"{version('torch')}; delete {venv} and rerun")
    return versions


# ---------------------------------------------------------------------------
# the esmm child


def child_esmm(args: argparse.Namespace) -> None:
    from esmm import api, training
    from esmm.config import ModelConfig, RunConfig, TrainConfig

    timing: dict = {"seconds": [], "n_params": None}
    # Time the library's own epoch loop, the same boundary as the competitors'.
    # If a refactor renames train_epoch, fall back to the whole fit (no valid split
    # here, so fit is the epoch loop plus bookkeeping).
    hook = "train_epoch" if hasattr(training.Trainer, "train_epoch") else "fit"
    original = getattr(training.Trainer, hook)

    def timed(self, *a, **k):
        timing["n_params"] = sum(p.numel() for p in self.model.parameters())
        start = time.perf_counter()
        out = original(self, *a, **k)
        timing["seconds"].append(time.perf_counter() - start)
        return out

    setattr(training.Trainer, hook, timed)
    cfg = RunConfig(model="esmm",
                    model_config=ModelConfig(embedding_dim=args.embedding_dim,
                                             tower=tuple(args.tower_sizes),
                                             sparse=ESMM_VARIANTS[args.variant]["sparse"]),
                    train=TrainConfig(epochs=1, batch_size=args.batch_size, lr=args.lr,
                                      progress=False, threads=args.threads, seed=args.seed,
                                      precision=ESMM_VARIANTS[args.variant]["precision"]))
    start = time.perf_counter()
    metrics = api.train(args.data, args.work, cfg, force=True)
    total = time.perf_counter() - start
    history = json.loads((Path(args.work) / "history.json").read_text())
    meta = json.loads((Path(args.data) / "bench_meta.json").read_text())
    rows = meta["rows"]
    seconds = sum(timing["seconds"])
    import torch

    try:
        esmm_version = version("esmm")
    except PackageNotFoundError:
        esmm_version = "?"
    result = {
        "impl": args.variant, "library": "esmm", "library_version": esmm_version,
        **ESMM_VARIANTS[args.variant],
        "torch_version": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "embedding_dim": args.embedding_dim, "tower": list(args.tower_sizes), "lr": args.lr,
        "train_rows": rows, "test_rows": meta["test_rows"],
        "train_seconds": seconds, "samples_per_s": rows / seconds,
        # esmm's own figure (history.json), for cross-checking the wrapper
        "self_reported_samples_per_s": history[0].get("samples_per_s"),
        "self_reported_seconds": history[0].get("seconds"),
        "api_train_seconds": total,
        "n_params": timing["n_params"],
        "test": {k: metrics["test"][k] for k in ("ctr_auc", "ctcvr_auc", "cvr_auc")},
        "train_loss": history[0].get("train_loss"),
        "timed": f"esmm.training.Trainer.{hook}",
    }
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    print(f"esmm batch {args.batch_size}: {result['samples_per_s']:,.0f} samples/s "
          f"({seconds:.1f} s), test {result['test']}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# running and measuring one child


def run_child(cmd: list[str], log_path: Path, threads: int, timeout: float) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONHASHSEED"] = "0"
    env.pop("PYTHONPATH", None)
    load_before = os.getloadavg()
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "wall_seconds": time.perf_counter() - start,
            "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


def child_command(impl: str, args: argparse.Namespace, data_dir: Path, batch: int, work: Path,
                  result: Path) -> list[str]:
    common = ["--data", str(data_dir), "--batch-size", str(batch), "--threads", str(args.threads),
              "--lr", repr(args.lr), "--seed", str(args.seed), "--work", str(work),
              "--result", str(result)]
    if impl in ESMM_VARIANTS:
        return [sys.executable, str(Path(__file__).resolve()), "--child", "esmm",
                "--variant", impl,
                "--embedding-dim", str(args.embedding_dim), "--tower", args.tower, *common]
    return [str(args.competitor_venv / "bin" / "python"), str(CHILD_SCRIPTS[impl]),
            "--embedding-dim", str(args.embedding_dim), "--tower", args.tower, *common]


# ---------------------------------------------------------------------------
# report


def summarise(runs: list[dict], impls: list[str], batches: list[int]) -> list[dict]:
    rows = []
    for b in batches:
        ref = [r for r in runs if r["impl"] == REFERENCE and r["batch_size"] == b and r["ok"]]
        ref_sps = statistics.median(r["samples_per_s"] for r in ref) if ref else None
        for impl in impls:
            mine = [r for r in runs if r["impl"] == impl and r["batch_size"] == b and r["ok"]]
            if not mine:
                rows.append({"impl": impl, "batch_size": b, "ok": False})
                continue
            sps = statistics.median(r["samples_per_s"] for r in mine)
            # ratio of each round's back-to-back pair, besides the ratio of medians
            paired = [m["samples_per_s"] / r["samples_per_s"] for m in mine for r in ref
                      if r["round"] == m["round"]]
            rows.append({
                "impl": impl, "batch_size": b, "ok": True, "runs": len(mine),
                "samples_per_s": sps,
                "samples_per_s_all": [r["samples_per_s"] for r in mine],
                "ratio_to_rechub": sps / ref_sps if ref_sps else None,
                "ratio_to_rechub_per_round": paired,
                "train_seconds": statistics.median(r["train_seconds"] for r in mine),
                "wall_seconds": statistics.median(r["wall_seconds"] for r in mine),
                "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in mine),
                # cores the child actually got over its life (at most --threads); well
                # below that means other processes were competing for the CPU
                "cpu_per_wall": statistics.median(r["cpu_seconds"] / r["wall_seconds"] for r in mine),
                "ctr_auc": statistics.fmean(r["test"]["ctr_auc"] for r in mine),
                "ctcvr_auc": statistics.fmean(r["test"]["ctcvr_auc"] for r in mine),
                "cvr_auc": statistics.fmean(r["test"]["cvr_auc"] for r in mine),
            })
    return rows


def format_table(rows: list[dict], meta: dict) -> str:
    head = ("impl", "batch", "samples/s", f"x {REFERENCE}", "peak RSS MB", "CTR AUC",
            "CTCVR AUC", "CVR AUC", "train s", "wall s", "CPU/wall")
    lines = [head]
    for r in rows:
        if not r["ok"]:
            lines.append((r["impl"], str(r["batch_size"]), "FAILED") + ("",) * 8)
            continue
        ratio = r["ratio_to_rechub"]
        lines.append((r["impl"], str(r["batch_size"]), f"{r['samples_per_s']:,.0f}",
                      "-" if ratio is None else f"{ratio:.2f}", f"{r['peak_rss_mb']:,.0f}",
                      f"{r['ctr_auc']:.4f}", f"{r['ctcvr_auc']:.4f}", f"{r['cvr_auc']:.4f}",
                      f"{r['train_seconds']:.1f}", f"{r['wall_seconds']:.1f}",
                      f"{r['cpu_per_wall']:.2f}"))
    s = meta["stats"]
    lines.append(("(hidden model)", "", "", "", "", f"{s['oracle_test_ctr_auc']:.4f}",
                  f"{s['oracle_test_ctcvr_auc']:.4f}", f"{s['oracle_test_cvr_auc']:.4f}", "", "", ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for k, line in enumerate(lines):
        out.append("| " + " | ".join(c.rjust(w) if i else c.ljust(w)
                                     for i, (c, w) in enumerate(zip(line, widths))) + " |")
        if k == 0:
            out.append("|" + "|".join("-" * (w + 1) + (":" if i else "-")
                                      for i, w in enumerate(widths)) + "|")
    return "\n".join(out)


def check_targets(rows: list[dict], targets: dict[int, float]) -> list[dict]:
    """esmm against torch-rechub: speed ratio, AUCs no worse, peak RSS no higher."""
    checks = []
    for (b, want), impl in ((t, i) for t in targets.items() for i in TARGETED):
        mine = next((r for r in rows if r["impl"] == impl and r["batch_size"] == b and r["ok"]), None)
        ref = next((r for r in rows if r["impl"] == REFERENCE and r["batch_size"] == b and r["ok"]), None)
        if mine is None or ref is None:
            continue
        checks += [{"impl": impl, **c} for c in [
            {"batch_size": b, "check": f"speed >= {want:g}x {REFERENCE}",
             "value": mine["ratio_to_rechub"], "pass": mine["ratio_to_rechub"] >= want},
            {"batch_size": b, "check": "CTR AUC >= rechub", "value": mine["ctr_auc"] - ref["ctr_auc"],
             "pass": mine["ctr_auc"] >= ref["ctr_auc"]},
            {"batch_size": b, "check": "CTCVR AUC >= rechub",
             "value": mine["ctcvr_auc"] - ref["ctcvr_auc"], "pass": mine["ctcvr_auc"] >= ref["ctcvr_auc"]},
            {"batch_size": b, "check": "CVR AUC >= rechub",
             "value": mine["cvr_auc"] - ref["cvr_auc"], "pass": mine["cvr_auc"] >= ref["cvr_auc"]},
            {"batch_size": b, "check": "peak RSS <= rechub (MB)",
             "value": mine["peak_rss_mb"] - ref["peak_rss_mb"],
             "pass": mine["peak_rss_mb"] <= ref["peak_rss_mb"]},
        ]]
    return checks


def machine_info() -> dict:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "vendor_id", "cpu family", "model", "flags") and key not in info:
                info[key] = value.strip()
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"cpu": info.get("model name", "?"), "cpu_vendor": info.get("vendor_id"),
            "cpu_family": info.get("cpu family"), "cpu_model": info.get("model"),
            "cpu_features": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16",
                                            "hypervisor"}),
            "cores": os.cpu_count(), "memory_gb": mem_gb,
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": version("torch"), "loadavg_at_start": os.getloadavg()}


# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="train rows (default 1,000,000)")
    p.add_argument("--test-rows", type=int, default=None, help="test rows (default rows / 5)")
    p.add_argument("--batch-sizes", default="4096,1024")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {IMPLS}")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds; each runs every batch size and implementation back to back; "
                        "the table shows medians")
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--tower", default="256,128", help="hidden sizes of each tower")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2, help="torch threads in every child")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=BENCH / "results" / "bench_train.json")
    p.add_argument("--workdir", type=Path, default=BENCH / "results" / "tmp",
                   help="data set cache, run directories and child logs")
    p.add_argument("--regenerate", action="store_true", help="regenerate the cached data set")
    p.add_argument("--competitor-venv", type=Path, default=BENCH / ".venv-competitors")
    p.add_argument("--rechub-version", default="0.9.0")
    p.add_argument("--deepctr-version", default="0.3.0")
    p.add_argument("--pip-arg", action="append", default=[],
                   help="extra argument for the competitor venv's pip install (repeatable), "
                        "e.g. an index URL for the CPU torch wheel")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per child run")
    p.add_argument("--targets", default="4096:6,1024:9",
                   help="BATCH:RATIO pairs esmm should reach against torch-rechub ('' for none)")
    # internal: child modes
    p.add_argument("--child", choices=("generate", "esmm"), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="esmm", choices=sorted(ESMM_VARIANTS),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.test_rows is None:
        args.test_rows = max(1, args.rows // 5)
    args.tower_sizes = [int(h) for h in args.tower.split(",") if h]
    args.batch_list = [int(b) for b in args.batch_sizes.split(",") if b]
    args.impl_list = [i.strip() for i in args.impls.split(",") if i.strip()]
    bad = [i for i in args.impl_list if i not in IMPLS]
    if bad:
        p.error(f"unknown implementation(s) {bad}; choose from {IMPLS}")
    args.target_map = {int(k): float(v) for k, v in
                       (t.split(":") for t in args.targets.split(",") if t)}
    args.workdir = args.workdir.resolve()
    args.competitor_venv = args.competitor_venv.absolute()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "generate":
        data_dir = Path(args.data)
        generate(data_dir, json.loads((data_dir / "gen_config.json").read_text()))
        return 0
    if args.child == "esmm":
        child_esmm(args)
        return 0

    bench_start = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
          f"load average {machine['loadavg_at_start']}", flush=True)
    data_dir, meta = ensure_data(args)
    competitor_versions = None
    if any(i not in ESMM_VARIANTS for i in args.impl_list):
        competitor_versions = ensure_competitor_venv(args)
        print(f"competitor venv: {competitor_versions}", flush=True)

    runs: list[dict] = []
    for rnd in range(args.repeats):
        for b in args.batch_list:
            for impl in args.impl_list:
                tag = f"{impl}-b{b}-r{rnd}"
                work = args.workdir / "runs" / tag
                work.mkdir(parents=True, exist_ok=True)
                result_path = work / "result.json"
                result_path.unlink(missing_ok=True)
                print(f"[round {rnd + 1}/{args.repeats}] {impl} batch {b} ...", end=" ", flush=True)
                m = run_child(child_command(impl, args, data_dir, b, work, result_path),
                              work / "log.txt", args.threads, args.timeout)
                record = {"impl": impl, "batch_size": b, "round": rnd, "log": str(work / "log.txt"),
                          **m}
                if m["returncode"] == 0 and result_path.is_file():
                    record.update(json.loads(result_path.read_text()))
                    record["ok"] = True
                    print(f"{record['samples_per_s']:,.0f} samples/s, {m['peak_rss_mb']:,.0f} MB, "
                          f"CTR AUC {record['test']['ctr_auc']:.4f}, "
                          f"CTCVR AUC {record['test']['ctcvr_auc']:.4f} "
                          f"({m['wall_seconds']:.0f} s)", flush=True)
                else:
                    record["ok"] = False
                    print(f"FAILED (exit {m['returncode']}); see {work / 'log.txt'}", flush=True)
                runs.append(record)

    rows = summarise(runs, args.impl_list, args.batch_list)
    checks = check_targets(rows, args.target_map)
    table = format_table(rows, meta)
    print()
    print(f"{meta['rows']:,} train rows, {meta['test_rows']:,} test rows "
          f"({meta['stats']['test_clicks']:,} clicks, {meta['stats']['test_conversions']:,} "
          f"conversions); embedding {args.embedding_dim}, towers {args.tower}, Adam lr {args.lr:g}, "
          f"{args.threads} threads, one epoch; medians of {args.repeats} round(s)")
    print(table)
    for c in checks:
        print(f"target {c['impl']} batch {c['batch_size']}: {c['check']}: {c['value']:+.4g} -> "
              f"{'PASS' if c['pass'] else 'FAIL'}")
    total = time.perf_counter() - bench_start
    print(f"benchmark wall time {total:.0f} s")
    report = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine, "parent_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "settings": {"embedding_dim": args.embedding_dim, "tower": args.tower_sizes, "lr": args.lr,
                     "threads": args.threads, "seed": args.seed, "repeats": args.repeats,
                     "batch_sizes": args.batch_list, "impls": args.impl_list},
        "data": {"dir": str(data_dir), **meta},
        "competitor_versions": competitor_versions,
        "summary": rows, "targets": checks, "table": table, "runs": runs,
        "benchmark_seconds": total,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
