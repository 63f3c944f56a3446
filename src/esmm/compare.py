"""``esmm compare``: the paper's Table 2 -- every baseline, repeated seeds, one report.

For every model and seed this trains one run (``esmm.api.train``: train split,
early stopping on valid), evaluates it on test with the paper's protocol (CVR
AUC on clicked impressions, CTCVR AUC on all impressions, and on simulated data
pCVR over the entire space against the true propensity), and writes::

    REPORT/report.md        command, data, the table (mean +- std over seeds), discussion
    REPORT/results.json     every run's metrics, every failure, the hyperparameter searches
    REPORT/*.png            ROC curves, reliability plots per task, bars with error bars
    REPORT/runs/NAME-seedS/ the run directories (``NAME`` is the registry name trained)

Models with a hyperparameter the paper searches (AMAN's sampling rate,
OVERSAMPLING's copies) are searched first: each candidate is trained with the
first seed and scored on the **valid** split (``cvr_auc``); the chosen
candidate's first-seed run is then evaluated on test and reused as that seed's
result, and the other seeds train the chosen candidate. Test metrics take no
part in any choice.

The paper's protocol for the models other than ESMM and ESMM-NS (specs with
``reference_ctr``): for every seed one CTR network alone (model ``ctr``, run
``ctr-seedS``, early-stopped on valid ``ctr_auc``) is trained, and every such
model's test pCTCVR is that network's pCTR times the model's own pCVR, so
their CTCVR AUCs differ only through pCVR. These models early-stop on valid
``cvr_auc``: their CVR network is what they contribute, and a joint metric
would also cut their own CTR network short. Their metrics with their own CTR
network are kept as ``test_own_ctr``.

A run that raises is recorded with its error and the comparison goes on; with
``resume`` a run whose ``metrics.json`` exists is read back instead of trained,
so an interrupted comparison continues where it stopped, and re-running it only
rebuilds the report. Runs are seeded, so the same command gives the same numbers.

With ``jobs`` > 1 the trainings run first, that many at a time in worker
processes (a search's other seeds start as soon as its candidates are scored);
the usual sequential pass then only evaluates them on test, in the same order,
so the report does not depend on ``jobs``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from esmm import __version__
from esmm.cli import TRAIN_OPTIONS, add_training_options, resolve_run_config
from esmm.config import ConfigError, RunConfig
from esmm.cpu import free_threads
from esmm.registry import AMAN_RATES_PERCENT, MODELS, OVERSAMPLING_COPIES
from esmm.report import TABLE_METRICS

#: Table 2's models in the paper's order.
PAPER_MODELS = ("base", "aman", "oversampling", "unbias", "division", "esmm-ns", "esmm")

#: Models whose candidates are searched on valid; a model listed here trains the chosen candidate.
SEARCH_SPACES: dict[str, tuple[str, ...]] = {
    "aman": tuple(f"aman-r{r}" for r in AMAN_RATES_PERCENT),
    "oversampling": tuple(f"oversampling-k{k}" for k in OVERSAMPLING_COPIES),
}
SEARCH_METRIC = "cvr_auc"  # on the valid split; higher is better
REFERENCE_CTR_MODEL = "ctr"
REFERENCE_EARLY_STOP = "ctr_auc"  # the reference CTR network's valid metric
CVR_MODEL_EARLY_STOP = "cvr_auc"  # models with reference_ctr: their CVR network's valid metric

#: Test predictions of the first seed for the plots:
#: ``{"labels": {click, conversion, true_ctr, true_cvr}, "models": {model: {p_ctr, p_cvr, p_ctcvr}}}``
Predictions = dict[str, Any]

RESULTS_FILE = "results.json"
RUNS_DIR = "runs"


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-seed{seed}"


# --------------------------------------------------------------------------- progress


def _fmt_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


@dataclass
class Progress:
    """``[3/35] model=aman-r20 seed=2 ... elapsed 4m10s, ETA 21m05s`` lines on a stream.

    The ETA is the mean duration of the runs trained so far (runs read back
    with ``resume`` do not count) times the runs left, this one included.
    """

    total: int
    stream: TextIO | None = field(default_factory=lambda: sys.stderr)
    timing: bool = True  # False: no elapsed/ETA (the test pass after parallel training)
    done: int = 0
    trained: int = 0
    trained_seconds: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def begin(self, label: str) -> None:
        if self.stream is None:
            return
        if not self.timing:
            print(f"[{self.done + 1}/{self.total}] {label}", file=self.stream, flush=True)
            return
        elapsed = time.perf_counter() - self.start
        left = self.total - self.done
        eta = (_fmt_seconds(self.trained_seconds / self.trained * left) if self.trained
               else "?")
        print(f"[{self.done + 1}/{self.total}] {label} ... elapsed {_fmt_seconds(elapsed)}, "
              f"ETA {eta}", file=self.stream, flush=True)

    def end(self, seconds: float | None, message: str) -> None:
        self.done += 1
        if seconds is not None:
            self.trained += 1
            self.trained_seconds += seconds
        if self.stream is not None:
            print(f"    {message}", file=self.stream, flush=True)

    def skip(self, n: int) -> None:
        self.done += n

    def finished(self, label: str, seconds: float, message: str, workers: int) -> None:
        """One training of the parallel stage ended (``workers`` run at once)."""
        self.done += 1
        self.trained += 1
        self.trained_seconds += seconds
        if self.stream is None:
            return
        elapsed = time.perf_counter() - self.start
        eta = _fmt_seconds(self.trained_seconds / self.trained * (self.total - self.done)
                           / workers)
        print(f"[{self.done}/{self.total}] {label} {message}; elapsed {_fmt_seconds(elapsed)}, "
              f"ETA {eta}", file=self.stream, flush=True)


def _finite(scores: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in scores.items() if v is not None and math.isfinite(v)}


def _choose(scores: dict[str, float]) -> str | None:
    """The search's candidate with the best valid score; ties go to the first listed."""
    return max(scores, key=lambda v: scores[v]) if scores else None


class _WorkerError(Exception):
    """A training that failed in a worker process, with the worker's traceback."""

    def __init__(self, error: str, traceback_text: str) -> None:
        super().__init__(error)
        self.traceback = traceback_text


def _train_in_worker(data_dir: Path, run_dir: Path, config: RunConfig) -> dict[str, Any]:
    """One training in a worker process: ``{"metrics": ...}`` or ``{"error", "traceback"}``.

    Errors come back as text rather than as exceptions, so that a model that fails
    is reported like in the sequential pass, with its traceback in ``error.txt``.
    """
    from esmm.api import train

    try:
        return {"metrics": train(data_dir, run_dir, config, force=True, evaluate_test=False)}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


# --------------------------------------------------------------------------- one run


@dataclass
class Comparison:
    """Everything one comparison needs; :meth:`run` does it."""

    data_dir: Path
    out_dir: Path
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    config: RunConfig
    resume: bool = False
    force: bool = False
    command: str | None = None
    notes: str | None = None
    plots: bool = True
    jobs: int = 1
    stream: TextIO | None = field(default_factory=lambda: sys.stderr)
    # filled in by run()
    #: (variant, seed) -> None (trained in a worker) or the worker's error
    _parallel: dict[tuple[str, int], tuple[str, str] | None] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    search: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: dict[int, dict[str, Any]] = field(default_factory=dict)
    _test_split: Any = None
    _reference_p_ctr: dict[int, np.ndarray] = field(default_factory=dict)
    _searched: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.data_dir, self.out_dir = Path(self.data_dir), Path(self.out_dir)
        if not self.models:
            raise ConfigError("no models to compare")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"models listed twice: {list(self.models)}")
        unknown = [m for m in self.models if m not in SEARCH_SPACES and m not in MODELS]
        if unknown:
            raise ConfigError(f"unknown model(s) {unknown}; choose from "
                              f"{sorted(set(MODELS) | set(SEARCH_SPACES))}")
        if not self.seeds:
            raise ConfigError("at least one seed is needed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds listed twice: {list(self.seeds)}")
        if self.jobs < 1:
            raise ConfigError(f"jobs must be >= 1, got {self.jobs}")

    # ---- the plan

    @property
    def search_seed(self) -> int:
        return self.seeds[0]

    @property
    def needs_reference(self) -> bool:
        """Whether some model listed takes its pCTR from the reference CTR network."""
        variants = [v for m in self.models for v in SEARCH_SPACES.get(m, (m,))]
        return any(MODELS[v].reference_ctr for v in variants)

    def n_jobs(self) -> int:
        n = sum(len(SEARCH_SPACES[m]) + len(self.seeds) - 1 if m in SEARCH_SPACES
                else len(self.seeds) for m in self.models)
        return n + (len(self.seeds) if self.needs_reference else 0)

    def run_config(self, variant: str, seed: int) -> RunConfig:
        """The comparison's settings for one run (the protocol's early-stopping metric)."""
        if variant == REFERENCE_CTR_MODEL:
            return self.config.replace(model=variant, seed=seed,
                                       early_stop_metric=REFERENCE_EARLY_STOP)
        if MODELS[variant].reference_ctr:
            return self.config.replace(model=variant, seed=seed,
                                       early_stop_metric=CVR_MODEL_EARLY_STOP)
        return self.config.replace(model=variant, seed=seed)

    def _check_out_dir(self) -> None:
        runs = self.out_dir / RUNS_DIR
        finished = sorted(p.parent.name for p in runs.glob("*/metrics.json")) if runs.is_dir() else []
        if finished and not (self.resume or self.force):
            raise ConfigError(f"{self.out_dir}: holds finished runs ({', '.join(finished[:3])}"
                              f"{', ...' if len(finished) > 3 else ''}); pass --resume to keep "
                              "them or --force to train them again")
        runs.mkdir(parents=True, exist_ok=True)

    # ---- running

    def run(self) -> dict[str, Any]:
        from esmm.data import has_split

        for split in ("train", "valid", "test"):
            if not has_split(self.data_dir, split):
                raise ConfigError(f"{self.data_dir}: no {split} split; compare needs train, "
                                  "valid (early stopping and searches) and test")
        self._check_out_dir()
        started = time.perf_counter()
        if self.jobs > 1:
            self._train_in_parallel()
        progress = Progress(self.n_jobs(), self.stream, timing=self.jobs == 1)
        chosen: dict[str, str | None] = {}
        # Seed-major order: after the first pass every model has one result, which is
        # what the report's plots need, and an interrupted comparison is balanced.
        for i, seed in enumerate(self.seeds):
            if self.needs_reference:
                self.reference[seed] = self._run_reference(seed, progress)
            for model in self.models:
                if i == 0 and model in SEARCH_SPACES:
                    chosen[model] = self._search(model, progress)
                variant = chosen.get(model, model) if model in SEARCH_SPACES else model
                if variant is None:  # every candidate of the search failed
                    self.runs.append(self._failed_record(model, model, seed, "search failed: "
                                                         + self.search[model]["error"]))
                    if i > 0:
                        progress.skip(1)
                    continue
                if i == 0 and model in SEARCH_SPACES:
                    # the chosen candidate's search run *is* this seed's run: test it now
                    self.runs.append(self._final_from_search(model, variant, seed))
                    continue
                self.runs.append(self._run_one(model, variant, seed, progress, search=False))
        results = self._results(time.perf_counter() - started)
        self._write(results)
        return results

    def _train_in_parallel(self) -> None:
        """Train every run the comparison needs, ``jobs`` at a time, in worker processes.

        Only training happens here; :meth:`run`'s sequential pass then finds the
        runs in ``_parallel`` and evaluates them on test. Searched models' other
        seeds are queued as soon as every candidate of the search has ended.
        """
        if self.config.train.threads == 0:  # "the idle cores", shared out between the workers
            self.config = self.config.replace(threads=max(1, free_threads() // self.jobs))
        queue: list[tuple[str, int]] = []
        for seed in self.seeds:
            if self.needs_reference:
                queue.append((REFERENCE_CTR_MODEL, seed))
            for model in self.models:
                if model not in SEARCH_SPACES:
                    queue.append((model, seed))
                elif seed == self.search_seed:
                    queue.extend((v, seed) for v in SEARCH_SPACES[model])
        searching = {m: set(SEARCH_SPACES[m]) for m in self.models if m in SEARCH_SPACES}
        progress = Progress(self.n_jobs(), self.stream)
        if self.stream is not None:
            print(f"training {self.n_jobs()} runs, {self.jobs} at a time "
                  f"({self.config.train.threads} torch thread(s) each)", file=self.stream,
                  flush=True)

        def search_ended(variant: str) -> list[tuple[str, int]]:
            """The runs a search that has just scored its last candidate lets start."""
            for model, left in searching.items():
                left.discard(variant)
                if not left and model not in self._searched:
                    self._searched.add(model)
                    scores = {}
                    for v in SEARCH_SPACES[model]:
                        f = self._run_dir(v, self.search_seed) / "metrics.json"
                        if f.is_file():
                            scores[v] = json.loads(f.read_text())["valid"].get(SEARCH_METRIC)
                    best = _choose(_finite(scores))
                    if best is not None:
                        return [(best, s) for s in self.seeds if s != self.search_seed]
            return []

        import multiprocessing

        # spawn, not fork: the parent may hold torch's OpenMP threads, which a fork breaks
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.jobs, mp_context=ctx) as pool:
            running: dict[Future[dict[str, Any]], tuple[str, int, float]] = {}
            while queue or running:
                while queue and len(running) < self.jobs:
                    variant, seed = queue.pop(0)
                    run_dir = self._run_dir(variant, seed)
                    if self.resume and (run_dir / "metrics.json").is_file():
                        progress.skip(1)  # read back by the sequential pass
                        queue.extend(search_ended(variant))
                        continue
                    # no per-batch bars: N workers' bars would interleave on one terminal
                    fut = pool.submit(_train_in_worker, self.data_dir, run_dir,
                                      self.run_config(variant, seed).replace(progress=False))
                    running[fut] = (variant, seed, time.perf_counter())
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    variant, seed, start = running.pop(fut)
                    seconds = time.perf_counter() - start
                    out = fut.result()
                    label = f"model={variant} seed={seed}"
                    if "error" in out:
                        self._parallel[variant, seed] = (out["error"], out["traceback"])
                        progress.finished(label, seconds, f"FAILED: {out['error']}", self.jobs)
                    else:
                        self._parallel[variant, seed] = None
                        m = out["metrics"]
                        shown = ", ".join(f"valid {k} {m['valid'][k]:.4f}"
                                          for k in ("cvr_auc", "ctcvr_auc", "ctr_auc")
                                          if k in m["valid"])
                        progress.finished(label, seconds, f"trained in {_fmt_seconds(seconds)} "
                                          f"(best epoch {m['best_epoch']}): {shown}", self.jobs)
                    queue.extend(search_ended(variant))
        if self.stream is not None:
            print("evaluating every run on test", file=self.stream, flush=True)

    def _search(self, model: str, progress: Progress) -> str | None:
        seed = self.search_seed
        candidates: dict[str, dict[str, Any]] = {}
        for variant in SEARCH_SPACES[model]:
            rec = self._run_one(model, variant, seed, progress, search=True)
            score = (rec.get("valid") or {}).get(SEARCH_METRIC)
            candidates[variant] = {"valid_" + SEARCH_METRIC: score, "status": rec["status"],
                                   "error": rec.get("error"), "run_dir": rec["run_dir"],
                                   "best_epoch": rec.get("best_epoch")}
        scored = {v: c["valid_" + SEARCH_METRIC] for v, c in candidates.items()
                  if c["status"] == "ok"}
        scored = _finite(scored)
        best = _choose(scored)
        entry: dict[str, Any] = {"metric": f"valid {SEARCH_METRIC}", "seed": seed,
                                 "candidates": candidates, "chosen": best}
        if best is None:
            entry["error"] = "; ".join(f"{v}: {c['error'] or 'no valid ' + SEARCH_METRIC}"
                                       for v, c in candidates.items())
        self.search[model] = entry
        if self.stream is not None:
            verdict = f"chose {best}" if best else "every candidate failed"
            print(f"    search for {model} on valid {SEARCH_METRIC}: " + ", ".join(
                f"{v}={s:.4f}" for v, s in scored.items()) + f" -> {verdict}",
                file=self.stream, flush=True)
        return best

    def _run_reference(self, seed: int, progress: Progress) -> dict[str, Any]:
        """Train (or resume) the seed's CTR network alone; its record without the model key."""
        rec = self._run_one(REFERENCE_CTR_MODEL, REFERENCE_CTR_MODEL, seed, progress,
                            search=False)
        return {k: rec.get(k) for k in ("run_dir", "status", "error", "best_epoch",
                                        "train_seconds", "valid", "test")}

    def _test(self) -> Any:
        from esmm.data import load_split

        if self._test_split is None:
            self._test_split = load_split(self.data_dir, "test")
        return self._test_split

    def _predict_test(self, run_dir: Path, seed: int) -> dict[str, np.ndarray]:
        """A run's test scores; with ``reference_ctr``, pCTR (and pCTCVR) from the reference."""
        from esmm.artifacts import load_run
        from esmm.training import predict_split

        run = load_run(run_dir)
        p = predict_split(run.model, run.spec, self._test(), self.config.train.eval_batch_size)
        if run.spec.reference_ctr:
            ref = self._reference_p_ctr.get(seed)
            if ref is None:
                info = self.reference.get(seed) or {}
                if info.get("status") != "ok":
                    raise RuntimeError(f"the reference CTR network of seed {seed} failed: "
                                       f"{info.get('error')}")
                ref = self._reference_p_ctr[seed] = self._predict_test(
                    self.out_dir / info["run_dir"], seed)["p_ctr"]
            p = {**p, "p_ctr": ref, "p_ctcvr": ref * p["p_cvr"]}
        return p

    def _test_metrics(self, run_dir: Path, variant: str, seed: int,
                      metrics: dict[str, Any]) -> dict[str, Any]:
        """``metrics`` with test metrics under the protocol, written back to metrics.json."""
        from esmm.artifacts import write_json
        from esmm.metrics import evaluate_predictions

        test = self._test()
        p = self._predict_test(run_dir, seed)
        out = {**metrics, "test": evaluate_predictions(
            p["p_ctr"], p.get("p_cvr"), test.click, test.conversion, group=test.group,
            true_ctr=test.true_ctr, true_cvr=test.true_cvr)}
        if MODELS[variant].reference_ctr:
            if "test" in metrics and metrics.get("pctr_from") is None:
                out["test_own_ctr"] = metrics["test"]
            out["pctr_from"] = str(Path(RUNS_DIR) / run_name(REFERENCE_CTR_MODEL, seed))
        write_json(run_dir / "metrics.json", out)
        return out

    def _has_test_metrics(self, variant: str, metrics: dict[str, Any]) -> bool:
        return "test" in metrics and (not MODELS[variant].reference_ctr
                                      or metrics.get("pctr_from") is not None)

    def _run_dir(self, variant: str, seed: int) -> Path:
        return self.out_dir / RUNS_DIR / run_name(variant, seed)

    def _run_one(self, model: str, variant: str, seed: int, progress: Progress, *,
                 search: bool) -> dict[str, Any]:
        from esmm.api import train

        run_dir = self._run_dir(variant, seed)
        label = f"model={variant} seed={seed}" + (f" (search for {model})" if search else "")
        progress.begin(label)
        cfg = self.run_config(variant, seed)
        record = self._base_record(model, variant, seed)
        metrics_file = run_dir / "metrics.json"
        try:
            if (variant, seed) in self._parallel:
                failure = self._parallel[variant, seed]
                if failure is not None:
                    raise _WorkerError(*failure)
                metrics = json.loads(metrics_file.read_text())
                if not search:
                    metrics = self._test_metrics(run_dir, variant, seed, metrics)
                record.update(self._from_metrics(metrics))
                progress.end(None, f"trained by a worker in {_fmt_seconds(metrics['train_seconds'])}"
                             f" (best epoch {metrics['best_epoch']}): {self._shown(metrics, search)}")
                return record
            if self.resume and metrics_file.is_file():
                self._check_same_config(run_dir, cfg)
                metrics = json.loads(metrics_file.read_text())
                if not search and not self._has_test_metrics(variant, metrics):
                    metrics = self._test_metrics(run_dir, variant, seed, metrics)
                record.update(self._from_metrics(metrics), resumed=True)
                progress.end(None, f"resumed from {run_dir}")
                return record
            start = time.perf_counter()
            metrics = train(self.data_dir, run_dir, cfg, force=True, evaluate_test=False)
            if not search:
                metrics = self._test_metrics(run_dir, variant, seed, metrics)
            seconds = time.perf_counter() - start
            record.update(self._from_metrics(metrics))
            progress.end(seconds, f"done in {_fmt_seconds(seconds)} (best epoch "
                         f"{metrics['best_epoch']}): {self._shown(metrics, search)}")
        except Exception as e:  # one failing model must not stop the others
            error = str(e) if isinstance(e, _WorkerError) else f"{type(e).__name__}: {e}"
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(
                e.traceback if isinstance(e, _WorkerError) else traceback.format_exc())
            record.update(status="failed", error=error)
            progress.end(0.0, f"FAILED: {error} (traceback in {run_dir / 'error.txt'})")
        return record

    @staticmethod
    def _shown(metrics: dict[str, Any], search: bool) -> str:
        """What a progress line says of a finished run."""
        if search:
            return f"valid {SEARCH_METRIC} {metrics['valid'][SEARCH_METRIC]:.4f}"
        return ", ".join(f"{k} {metrics['test'][k]:.4f}" for k in
                         [*(k for k, _ in TABLE_METRICS), "ctr_auc"]
                         if k in metrics.get("test", {}))

    def _final_from_search(self, model: str, variant: str, seed: int) -> dict[str, Any]:
        run_dir = self._run_dir(variant, seed)
        record = self._base_record(model, variant, seed)
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
            if not self._has_test_metrics(variant, metrics):
                metrics = self._test_metrics(run_dir, variant, seed, metrics)
            record.update(self._from_metrics(metrics), from_search=True)
        except Exception as e:
            record.update(status="failed", error=f"{type(e).__name__}: {e}")
        return record

    def _check_same_config(self, run_dir: Path, cfg: RunConfig) -> None:
        raw = json.loads((run_dir / "config.json").read_text())
        saved = RunConfig.from_saved(raw, where=str(run_dir / "config.json"))
        # the progress display and the thread count (how fast, not what is learnt) are
        # not settings of the run; --jobs changes the threads a run gets
        if saved.replace(progress=cfg.train.progress, threads=cfg.train.threads) != cfg:
            raise ConfigError(f"{run_dir}: trained with other settings than this comparison "
                              f"({run_dir / 'config.json'}); use --force to train it again")

    def _base_record(self, model: str, variant: str, seed: int) -> dict[str, Any]:
        return {"model": model, "variant": variant, "seed": seed,
                "run_dir": str(Path(RUNS_DIR) / run_name(variant, seed)), "status": "ok",
                "error": None}

    def _failed_record(self, model: str, variant: str, seed: int, error: str) -> dict[str, Any]:
        return {**self._base_record(model, variant, seed), "status": "failed", "error": error,
                "run_dir": None}

    @staticmethod
    def _from_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
        return {k: metrics.get(k) for k in ("best_epoch", "stopped_early", "train_seconds",
                                            "valid", "test", "pctr_from")}

    # ---- results and report

    def _results(self, seconds: float) -> dict[str, Any]:
        from esmm import report

        import torch

        return {
            "command": self.command,
            "esmm_version": __version__,
            "torch_version": torch.__version__,
            "data": report.describe_data(self.data_dir),
            "models": list(self.models),
            "seeds": list(self.seeds),
            "config": self.config.to_dict(),
            "search_metric": f"valid {SEARCH_METRIC}",
            "search": self.search,
            "reference_ctr": {str(k): v for k, v in self.reference.items()},
            "runs": self.runs,
            "summary": report.summarise(self.runs),
            "seconds": seconds,
        }

    def _write(self, results: dict[str, Any]) -> None:
        from esmm import report
        from esmm.artifacts import write_json

        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.out_dir / RESULTS_FILE, results)
        predictions = self._first_seed_predictions() if self.plots else None
        report.write_report(self.out_dir, results, predictions, notes=self.notes,
                            stream=self.stream)

    def _first_seed_predictions(self) -> Predictions:
        """Test predictions of every model's first-seed run (what the plots draw)."""
        test = self._test()
        preds: dict[str, dict[str, np.ndarray]] = {}
        for rec in self.runs:
            if rec["seed"] != self.search_seed or rec["status"] != "ok":
                continue
            try:
                preds[rec["model"]] = self._predict_test(self.out_dir / rec["run_dir"],
                                                         rec["seed"])
            except Exception as e:  # a plot is not worth losing the report for
                if self.stream is not None:
                    print(f"    no plot for {rec['model']}: {type(e).__name__}: {e}",
                          file=self.stream)
        labels = {"click": test.click, "conversion": test.conversion * test.click,
                  "true_ctr": test.true_ctr, "true_cvr": test.true_cvr}
        return {"labels": labels, "models": preds, "seed": self.search_seed}



def compare(data_dir: str | Path, out_dir: str | Path, *,
            models: tuple[str, ...] = PAPER_MODELS, seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
            config: RunConfig | None = None, resume: bool = False, force: bool = False,
            command: str | None = None, notes: str | None = None, plots: bool = True,
            jobs: int = 1, stream: TextIO | None | str = "stderr") -> dict[str, Any]:
    """Train and evaluate every model with every seed; write REPORT (see module docstring).

    ``jobs`` trainings run at once in worker processes (1: all in this process);
    with ``threads`` 0 in ``config`` each gets its share of the idle cores.
    Progress lines go to ``stream`` (``"stderr"``: the current ``sys.stderr``; None: silent).
    Returns the contents of ``results.json``.
    """
    if stream == "stderr":
        stream = sys.stderr
    return Comparison(Path(data_dir), Path(out_dir), tuple(models), tuple(seeds),
                      config or RunConfig(), resume=resume, force=force, command=command,
                      notes=notes, plots=plots, jobs=jobs, stream=stream).run()


# --------------------------------------------------------------------------- CLI


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="the paper's comparison: every baseline x seeds, one report with plots",
        description="Train every model with every seed (same settings), evaluate on test with "
        "the paper's protocol, and write REPORT/report.md, REPORT/results.json and PNG plots. "
        "AMAN's rate and OVERSAMPLING's copies are searched on the valid split first.")
    p.add_argument("--data", required=True, help="dataset directory with train, valid, test")
    p.add_argument("--models", type=_csv_list, default=list(PAPER_MODELS),
                   help=f"comma-separated (default {','.join(PAPER_MODELS)}); 'aman' and "
                   "'oversampling' are searched, e.g. 'aman-r20' is trained as is")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    p.add_argument("--out", required=True, help="report directory to write")
    add_training_options(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no per-batch progress bars inside each run (the per-run lines stay)")
    p.add_argument("--resume", action="store_true",
                   help="read back runs whose metrics.json exists instead of training them")
    p.add_argument("--force", action="store_true", help="train again runs that already finished")
    p.add_argument("--notes", help="markdown file whose text becomes the report's discussion")
    p.add_argument("--no-plots", action="store_true", help="write report.md and results.json only")
    p.add_argument("--jobs", type=int, default=1,
                   help="trainings at once, each in its own process (default 1); the numbers "
                   "do not depend on it. With --jobs N give --threads too, or each run gets "
                   "1/N of the idle cores")
    p.set_defaults(handler=_run_compare)


def command_line(a: argparse.Namespace) -> str:
    """The canonical command for a parsed namespace (recorded in the report)."""
    parts = ["esmm", "compare", "--data", str(a.data), "--models", ",".join(a.models),
             "--seeds", str(a.seeds), "--out", str(a.out)]
    if a.config:
        parts += ["--config", str(a.config)]
    for flag, key, _, _ in TRAIN_OPTIONS:
        v = getattr(a, key)
        if v is not None:
            parts += [flag, str(v)]
    for flag in ("no_progress", "no_plots"):
        if getattr(a, flag):
            parts.append("--" + flag.replace("_", "-"))
    if getattr(a, "jobs", 1) != 1:
        parts += ["--jobs", str(a.jobs)]
    if a.notes:
        parts += ["--notes", str(a.notes)]
    return shlex.join(parts)


def _run_compare(a: argparse.Namespace) -> int:
    from esmm import report

    if a.seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    cfg = resolve_run_config(a)
    notes = Path(a.notes).read_text() if a.notes else None
    results = compare(a.data, a.out, models=tuple(a.models), seeds=tuple(range(a.seeds)),
                      config=cfg, resume=a.resume, force=a.force, command=command_line(a),
                      notes=notes, plots=not a.no_plots, jobs=a.jobs)
    print(report.format_text_table(results))
    print(f"\nreport in {Path(a.out) / report.REPORT_FILE}")
    failed = [r for r in results["runs"] if r["status"] != "ok"]
    return 1 if failed else 0
