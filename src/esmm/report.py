"""The comparison report: mean +- std tables, markdown, and plots (ROC, reliability, bars).

Pure functions of ``results.json`` (see :mod:`esmm.compare`) and, for the
plots, of one seed's test predictions. Plots need matplotlib (the ``report``
extra, ``pip install 'esmm[report]'``); without it the report is written with
a note instead of the pictures. Figures are drawn with the object API
(``matplotlib.figure.Figure``), so no global backend is switched.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy as np

REPORT_FILE = "report.md"

DISPLAY_NAMES = {"base": "BASE", "aman": "AMAN", "oversampling": "OVERSAMPLING",
                 "unbias": "UNBIAS", "division": "DIVISION", "esmm-ns": "ESMM-NS",
                 "esmm": "ESMM"}

#: The table's columns: (metric key, heading); the oracle's key for each.
TABLE_METRICS = (("cvr_auc", "CVR AUC (clicked)"), ("ctcvr_auc", "CTCVR AUC (all)"),
                 ("cvr_auc_entire_truth", "CVR AUC, entire space vs truth"))
ORACLE_KEYS = {"cvr_auc": "oracle_cvr_auc", "ctcvr_auc": "oracle_ctcvr_auc",
               "cvr_auc_entire_truth": "oracle_cvr_auc_entire_truth"}
#: The secondary table: (metric key, heading).
OTHER_METRICS = (("ctr_auc", "CTR AUC"), ("cvr_logloss", "CVR logloss (clicked)"),
                 ("ctcvr_logloss", "CTCVR logloss"), ("calibration_cvr", "calib. CVR (clicked)"),
                 ("calibration_ctcvr", "calib. CTCVR"))


# --------------------------------------------------------------------------- data


def describe_data(data_dir: str | Path) -> dict[str, Any]:
    """Rows, clicks and conversions per split (read from the label columns), plus world.json."""
    import pyarrow.parquet as pq

    from esmm.data import SPLITS, has_split, load_schema, split_files

    data_dir = Path(data_dir)
    schema = load_schema(data_dir)
    out: dict[str, Any] = {"dir": str(data_dir), "description": schema.description,
                           "has_truth": bool(schema.true_ctr and schema.true_cvr), "splits": {}}
    for split in SPLITS:
        if not has_split(data_dir, split):
            continue
        rows = clicks = conversions = 0
        for f in split_files(data_dir, split):
            t = pq.read_table(f, columns=[schema.click, schema.conversion])
            c = t.column(schema.click).to_numpy().astype(np.int64)
            v = t.column(schema.conversion).to_numpy().astype(np.int64)
            rows += len(c)
            clicks += int(c.sum())
            conversions += int((c * v).sum())
        out["splits"][split] = {"rows": rows, "clicks": clicks, "conversions": conversions}
    world = data_dir / "world.json"
    if world.is_file():
        out["world"] = json.loads(world.read_text()).get("config")
    return out


# --------------------------------------------------------------------------- summaries


def display_name(model: str, search: dict[str, Any] | None = None) -> str:
    name = DISPLAY_NAMES.get(model, model.upper())
    chosen = (search or {}).get(model, {}).get("chosen")
    if chosen:
        name += f" ({_variant_setting(chosen)})"
    return name


def _variant_setting(variant: str) -> str:
    if variant.startswith("aman-r"):
        return f"rate {variant.removeprefix('aman-r')}%"
    if variant.startswith("oversampling-k"):
        return f"k = {variant.removeprefix('oversampling-k')}"
    return variant


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else None,
            "std": float(v.std(ddof=1)) if v.size > 1 else None,
            "n": int(v.size), "values": [float(x) for x in v]}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: runs ok / attempted, errors, and mean, sample std and values of every metric."""
    out: dict[str, dict[str, Any]] = {}
    for rec in runs:
        m = out.setdefault(rec["model"], {"variant": rec["variant"], "n_runs": 0, "n_ok": 0,
                                          "errors": [], "seeds_ok": [], "_tests": []})
        m["n_runs"] += 1
        if rec["status"] == "ok" and rec.get("test"):
            m["n_ok"] += 1
            m["seeds_ok"].append(rec["seed"])
            m["_tests"].append({**rec["test"], "best_epoch": rec.get("best_epoch"),
                                "train_seconds": rec.get("train_seconds")})
        else:
            m["errors"].append(f"seed {rec['seed']}: {rec.get('error') or 'no test metrics'}")
    for m in out.values():
        tests = m.pop("_tests")
        keys = sorted({k for t in tests for k, v in t.items() if isinstance(v, (int, float))})
        m["metrics"] = {k: _mean_std([t.get(k) for t in tests]) for k in keys}
    return out


def oracle(summary: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The true propensities' score on the same test set (identical for every run)."""
    out: dict[str, float | None] = {}
    for key, oracle_key in ORACLE_KEYS.items():
        vals = [m["metrics"][oracle_key]["mean"] for m in summary.values()
                if oracle_key in m["metrics"] and m["metrics"][oracle_key]["mean"] is not None]
        out[key] = vals[0] if vals else None
    return out


def paired_gain(summary: dict[str, dict[str, Any]], runs: list[dict[str, Any]], model: str,
                reference: str, metric: str) -> dict[str, Any] | None:
    """``model - reference`` per seed both finished: mean, sample std, seeds ahead."""
    by_seed: dict[str, dict[int, float]] = {model: {}, reference: {}}
    for rec in runs:
        if rec["model"] in by_seed and rec["status"] == "ok" and metric in (rec.get("test") or {}):
            v = rec["test"][metric]
            if v is not None and math.isfinite(v):
                by_seed[rec["model"]][rec["seed"]] = v
    seeds = sorted(set(by_seed[model]) & set(by_seed[reference]))
    if not seeds:
        return None
    d = np.array([by_seed[model][s] - by_seed[reference][s] for s in seeds])
    return {"mean": float(d.mean()), "std": float(d.std(ddof=1)) if d.size > 1 else None,
            "ahead": int((d > 0).sum()), "n": int(d.size)}


def _cell(stat: dict[str, Any] | None, digits: int = 4) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    s = f"{stat['mean']:.{digits}f}"
    if stat.get("std") is not None:
        s += f" ± {stat['std']:.{digits}f}"
    return s


def _status(m: dict[str, Any]) -> str:
    s = f"{m['n_ok']}/{m['n_runs']}"
    return s


# --------------------------------------------------------------------------- tables


def table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Heading and rows of the main table (the paper's Table 2 plus truth and oracle)."""
    summary, search = results["summary"], results.get("search", {})
    has_truth = results.get("data", {}).get("has_truth", True)
    metrics = [(k, h) for k, h in TABLE_METRICS if has_truth or "truth" not in k]
    gain = "base" in summary and summary["base"]["n_ok"] > 0
    heading = ["model", *(h for _, h in metrics), "runs ok"]
    rows = []
    for model in results["models"]:
        m = summary.get(model)
        if m is None:
            continue
        cells = [display_name(model, search)]
        if m["n_ok"] == 0:
            err = m["errors"][0] if m["errors"] else "no result"
            cells += [f"failed: {_md_escape(err)}"] + [""] * (len(metrics) - 1)
        else:
            for key, _ in metrics:
                cell = _cell(m["metrics"].get(key))
                if gain and model != "base" and m["metrics"].get(key, {}).get("mean") is not None:
                    base_mean = summary["base"]["metrics"].get(key, {}).get("mean")
                    if base_mean is not None:
                        cell += f" ({m['metrics'][key]['mean'] - base_mean:+.4f})"
                cells.append(cell)
        cells.append(_status(m))
        rows.append(cells)
    orc = oracle(summary)
    if any(orc.get(k) is not None for k, _ in metrics):
        rows.append(["oracle (true propensities)",
                     *(f"{orc[k]:.4f}" if orc.get(k) is not None else "–" for k, _ in metrics),
                     "–"])
    return heading, rows


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown_table(heading: list[str], rows: list[list[str]], align_first_left: bool = True
                   ) -> str:
    sep = [":---" if i == 0 and align_first_left else "---:" for i in range(len(heading))]
    lines = ["| " + " | ".join(heading) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def format_text_table(results: dict[str, Any]) -> str:
    """The main table as aligned plain text, for the terminal."""
    heading, rows = table_rows(results)
    widths = [max(len(r[i]) for r in [heading, *rows]) for i in range(len(heading))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([fmt(heading), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def other_metrics_table(results: dict[str, Any]) -> str:
    summary, search = results["summary"], results.get("search", {})
    heading = ["model", *(h for _, h in OTHER_METRICS), "best epoch", "train min"]
    rows = []
    for model in results["models"]:
        m = summary.get(model)
        if not m or m["n_ok"] == 0:
            continue
        cells = [display_name(model, search)]
        cells += [_cell(m["metrics"].get(k)) for k, _ in OTHER_METRICS]
        ep = m["metrics"].get("best_epoch", {}).get("values", [])
        cells.append(",".join(f"{e:g}" for e in ep) or "–")
        ts = m["metrics"].get("train_seconds", {}).get("mean")
        cells.append(f"{ts / 60:.1f}" if ts is not None else "–")
        rows.append(cells)
    return markdown_table(heading, rows)


def _stopping_text(train: dict[str, Any]) -> str:
    k = train.get("validations_per_epoch", 1)
    if k == 1:
        return f"early stopping (patience {train['patience']}, the best epoch's weights kept)"
    return (f"{k} validations per epoch, early stopping (patience {train['patience']} "
            "validations, the best validation's weights kept; best epochs below are positions "
            "in epochs, 1.5 = half-way through the second)")


def search_table(results: dict[str, Any]) -> str:
    parts = []
    for model, s in results.get("search", {}).items():
        rows = []
        for variant, c in s["candidates"].items():
            score = c.get("valid_" + s["metric"].split()[-1])
            val = f"{score:.4f}" if score is not None else f"failed: {_md_escape(c['error'] or '')}"
            mark = " ← chosen" if variant == s["chosen"] else ""
            rows.append([variant, _variant_setting(variant), val + mark])
        parts.append(f"**{DISPLAY_NAMES.get(model, model)}** (seed {s['seed']}, "
                     f"{s['metric']}):\n\n" + markdown_table(["candidate", "setting", s["metric"]],
                                                             rows))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- discussion


def findings(results: dict[str, Any]) -> list[str]:
    """Facts the numbers support, stated whether or not they favour ESMM."""
    summary, runs, search = results["summary"], results["runs"], results.get("search", {})
    has_truth = results.get("data", {}).get("has_truth", True)
    metrics = [(k, h) for k, h in TABLE_METRICS if has_truth or "truth" not in k]
    ok = [m for m in results["models"] if summary.get(m, {}).get("n_ok")]
    out: list[str] = []
    if "esmm" in ok and "base" in ok:
        for key, heading in metrics:
            g = paired_gain(summary, runs, "esmm", "base", key)
            if g is None:
                continue
            spread = f" ± {g['std']:.4f}" if g["std"] is not None else ""
            if g["mean"] > 0 and g["ahead"] == g["n"]:
                verdict = "ESMM is ahead of BASE in every seed"
            elif g["mean"] > 0:
                verdict = (f"ESMM is ahead of BASE on average but only in {g['ahead']} of "
                           f"{g['n']} seeds")
            else:
                verdict = (f"ESMM is **not** ahead of BASE on average (it is ahead in "
                           f"{g['ahead']} of {g['n']} seeds)")
            out.append(f"{heading}: {verdict}; ESMM − BASE = {g['mean']:+.4f}{spread} "
                       f"(paired by seed, mean ± std over {g['n']} seeds).")
    for key, heading in metrics:
        ranked = sorted((m for m in ok if summary[m]["metrics"].get(key, {}).get("mean")
                         is not None), key=lambda m: -summary[m]["metrics"][key]["mean"])
        if len(ranked) < 2:
            continue
        out.append(f"Ranking by {heading}: " + " > ".join(
            f"{DISPLAY_NAMES.get(m, m)} {summary[m]['metrics'][key]['mean']:.4f}" for m in ranked)
            + ".")
        if "esmm" in ranked and ranked[0] != "esmm":
            top = ranked[0]
            e, t = summary["esmm"]["metrics"][key], summary[top]["metrics"][key]
            spread = max(e.get("std") or 0.0, t.get("std") or 0.0)
            within = ("within one standard deviation" if t["mean"] - e["mean"] <= spread
                      else "by more than one standard deviation")
            out.append(f"The paper's ordering (ESMM first) does **not** hold for {heading}: "
                       f"{display_name(top, search)} leads ESMM by "
                       f"{t['mean'] - e['mean']:.4f}, {within}.")
        if "esmm-ns" in ranked and "esmm" in ranked and ranked[:2] != ["esmm", "esmm-ns"]:
            pos = ranked.index("esmm-ns") + 1
            out.append(f"ESMM-NS, second in the paper, is number {pos} of {len(ranked)} "
                       f"by {heading}.")
    failed = [(m, summary[m]) for m in results["models"] if summary.get(m, {}).get("errors")]
    for m, s in failed:
        out.append(f"{display_name(m, search)}: {len(s['errors'])} of {s['n_runs']} runs "
                   f"failed ({_md_escape(s['errors'][0])}).")
    return out


# --------------------------------------------------------------------------- markdown


def _reference_summary(results: dict[str, Any]) -> str:
    """``; its test CTR AUC 0.7443 ± 0.0010`` from the reference CTR runs, or ''."""
    refs = [r for r in (results.get("reference_ctr") or {}).values()
            if r.get("status") == "ok" and r.get("test")]
    if not refs:
        return ""
    return "; its test CTR AUC " + _cell(_mean_std([r["test"]["ctr_auc"] for r in refs]))


def markdown_report(results: dict[str, Any], plots: list[str], notes: str | None = None,
                    plot_note: str | None = None) -> str:
    data = results["data"]
    cfg = results["config"]
    seeds = results["seeds"]
    lines = ["# ESMM and the paper's baselines (Table 2 protocol)", ""]
    if results.get("command"):
        lines += ["Made by:", "", "```bash", results["command"], "```", ""]
    n_search = sum(len(s["candidates"]) - (1 if s.get("chosen") else 0)
                   for s in results.get("search", {}).values())
    train_min = sum(r.get("train_seconds") or 0.0 for r in results["runs"]) / 60
    lines += [f"esmm {results.get('esmm_version')}, torch {results.get('torch_version')}; "
              f"{len(results['models'])} models × {len(seeds)} seed(s) "
              f"({', '.join(map(str, seeds))}) = {len(results['runs'])} runs in the table, plus "
              f"{n_search} search run(s) not chosen; training time of the table's runs "
              f"{train_min:.1f} min (sum; the machine was shared).", ""]
    lines += ["## Data", "", f"`{data['dir']}`" + (f": {data['description']}"
                                                   if data.get("description") else ""), ""]
    split_rows = [[s, f"{v['rows']:,}", f"{v['clicks']:,}", f"{v['conversions']:,}",
                   f"{v['clicks'] / max(v['rows'], 1):.4f}",
                   f"{v['conversions'] / max(v['clicks'], 1):.4f}"]
                  for s, v in data["splits"].items()]
    lines += [markdown_table(["split", "impressions", "clicks", "conversions", "CTR",
                              "CVR (of clicks)"], split_rows), ""]
    train = cfg["train"]
    mc = cfg["model_config"]
    lines += ["## Protocol", "",
              f"Every model has the same embedding ({mc['embedding_dim']}) and towers "
              f"({'-'.join(map(str, mc['tower']))}, ReLU) and the same training settings: "
              f"at most {train['epochs']} epoch(s), batch {train['batch_size']}, lr {train['lr']}, "
              + _stopping_text(train) + " on "
              f"valid `{train['early_stop_metric']}` for ESMM and ESMM-NS and on valid "
              "`cvr_auc` for the other models (their CVR network is what they contribute). "
              "Each seed changes the "
              "initialisation and the batch order; the data is the same. Test metrics: CVR AUC "
              "on clicked impressions, CTCVR AUC (pCTR × pCVR) on all impressions, and, where the "
              "data is simulated, pCVR over *all* impressions scored against the true conversion "
              "propensity (`cvr_auc_entire_truth`, the space ESMM claims to fix). As in the paper, "
              "every model other than ESMM and ESMM-NS gets pCTCVR = pCTR × its pCVR with pCTR "
              "from one independently trained CTR network of ESMM's CTR structure (one per seed, "
              "early-stopped on valid `ctr_auc`" + _reference_summary(results) + "), so their "
              "CTCVR AUCs differ only through pCVR. AMAN's sampling rate and OVERSAMPLING's copies were "
              f"searched with seed {seeds[0]} on the **valid** split ({results['search_metric']}); "
              "the test split took part in no choice. Cells: mean ± sample std over seeds; "
              "in brackets the difference of means to BASE.", ""]
    heading, rows = table_rows(results)
    lines += ["## Results (test split)", "", markdown_table(heading, rows), ""]
    lines += ["### Findings", "", *(f"- {f}" for f in findings(results)), ""]
    if notes:
        lines += ["## Discussion", "", notes.strip(), ""]
    if plots or plot_note:
        lines += ["## Plots", ""]
        if plot_note:
            lines += [plot_note, ""]
        captions = {"bars.png": "Mean ± std over seeds (dashed: oracle)",
                    "roc.png": f"ROC curves, seed {seeds[0]}",
                    "calibration_ctr.png": "Reliability of pCTR (equal-count bins)",
                    "calibration_cvr.png": "Reliability of pCVR: on clicked impressions against "
                    "observed conversions, and (simulated data) on all impressions against the "
                    "true CVR",
                    "calibration_ctcvr.png": "Reliability of pCTCVR on all impressions"}
        for p in plots:
            lines += [f"![{captions.get(p, p)}]({p})", "", f"*{captions.get(p, p)}.*", ""]
    lines += ["## Other test metrics", "", other_metrics_table(results), ""]
    if results.get("search"):
        lines += ["## Hyperparameter searches (valid split)", "", search_table(results), ""]
    lines += ["Every run's metrics (valid and test) are in `results.json`.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def roc_curve(labels: np.ndarray, scores: np.ndarray, max_points: int = 2000
              ) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, thinned."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # end of each tie block
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    p, n = max(tp[-1], 1e-12), max(fp[-1], 1e-12)
    fpr, tpr = np.r_[0.0, fp / n], np.r_[0.0, tp / p]
    if len(fpr) > max_points:
        keep = np.unique(np.r_[np.linspace(0, len(fpr) - 1, max_points).astype(int)])
        fpr, tpr = fpr[keep], tpr[keep]
    return fpr, tpr


def reliability(target: np.ndarray, probs: np.ndarray, bins: int = 20
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean prediction, mean target, rows) per equal-count bin of the sorted predictions.

    ``target`` is a 0/1 label or, on simulated data, a true propensity.
    """
    order = np.argsort(probs, kind="stable")
    chunks = np.array_split(order, min(bins, max(1, len(order))))
    chunks = [c for c in chunks if len(c)]
    pred = np.array([probs[c].mean() for c in chunks])
    obs = np.array([target[c].mean() for c in chunks])
    return pred, obs, np.array([len(c) for c in chunks])


def _colors(models: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(models)}


def plot_roc(path: Path, predictions: dict[str, Any], names: dict[str, str]) -> None:
    from matplotlib.figure import Figure

    lab = predictions["labels"]
    models = list(predictions["models"])
    colors = _colors(models)
    clicked = lab["click"] == 1
    fig = Figure(figsize=(12, 5.2), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = [("CVR on clicked impressions", lambda p: p["p_cvr"][clicked],
               lab["conversion"][clicked],
               None if lab.get("true_cvr") is None else lab["true_cvr"][clicked]),
              ("CTCVR on all impressions", lambda p: p["p_ctr"] * p["p_cvr"], lab["conversion"],
               None if lab.get("true_cvr") is None or lab.get("true_ctr") is None
               else lab["true_ctr"] * lab["true_cvr"])]
    from esmm.metrics import auc

    for ax, (title, score, y, truth) in zip(axes, panels):
        for m in models:
            s = score(predictions["models"][m])
            fpr, tpr = roc_curve(y, s)
            ax.plot(fpr, tpr, color=colors[m], lw=1.3, label=f"{names[m]} ({auc(y, s):.4f})")
        if truth is not None:
            fpr, tpr = roc_curve(y, truth)
            ax.plot(fpr, tpr, color="black", ls="--", lw=1.0, label=f"oracle ({auc(y, truth):.4f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
        ax.set(title=title, xlabel="false positive rate", ylabel="true positive rate",
               xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="lower right", fontsize=8, title="model (AUC)", title_fontsize=8)
    fig.suptitle(f"ROC on the test split, seed {predictions.get('seed', 0)}")
    fig.savefig(path, dpi=110)


def plot_calibration(path: Path, task: str, predictions: dict[str, Any],
                     names: dict[str, str], bins: int = 20) -> None:
    from matplotlib.figure import Figure

    lab = predictions["labels"]
    models = list(predictions["models"])
    colors = _colors(models)
    clicked = lab["click"] == 1
    if task == "ctr":
        panels = [("pCTR on all impressions vs clicks", lambda p: p["p_ctr"], lab["click"], None)]
    elif task == "cvr":
        panels = [("pCVR on clicked impressions vs conversions", lambda p: p["p_cvr"][clicked],
                   lab["conversion"][clicked], None)]
        if lab.get("true_cvr") is not None:
            panels.append(("pCVR on all impressions vs true CVR", lambda p: p["p_cvr"],
                           lab["true_cvr"], None))
    elif task == "ctcvr":
        panels = [("pCTCVR on all impressions vs conversions", lambda p: p["p_ctr"] * p["p_cvr"],
                   lab["conversion"], None)]
    else:
        raise ValueError(f"unknown task {task!r}")
    fig = Figure(figsize=(6.2 * len(panels), 5.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, score, target, _) in zip(axes, panels):
        lo, hi = math.inf, 0.0
        for m in models:
            pred, obs, _ = reliability(np.asarray(target, dtype=np.float64),
                                       np.asarray(score(predictions["models"][m]),
                                                  dtype=np.float64), bins)
            ok = (pred > 0) & (obs > 0)
            if ok.any():
                ax.plot(pred[ok], obs[ok], marker="o", ms=3, lw=1.1, color=colors[m],
                        label=names[m])
                lo, hi = min(lo, pred[ok].min(), obs[ok].min()), max(hi, pred[ok].max(),
                                                                      obs[ok].max())
        if hi > 0:
            ax.plot([lo, hi], [lo, hi], color="grey", ls=":", lw=0.8, label="perfect")
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set(title=title, xlabel="mean prediction in bin", ylabel="observed rate in bin")
        ax.legend(fontsize=8)
    fig.suptitle(f"Reliability ({bins} equal-count bins), test split, seed "
                 f"{predictions.get('seed', 0)}")
    fig.savefig(path, dpi=110)


def plot_bars(path: Path, results: dict[str, Any]) -> None:
    from matplotlib.figure import Figure

    summary, search = results["summary"], results.get("search", {})
    has_truth = results.get("data", {}).get("has_truth", True)
    metrics = [(k, h) for k, h in TABLE_METRICS if has_truth or "truth" not in k]
    models = [m for m in results["models"] if summary.get(m, {}).get("n_ok")]
    colors = _colors(list(results["models"]))
    orc = oracle(summary)
    fig = Figure(figsize=(4.6 * len(metrics), 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, (key, heading) in zip(axes, metrics):
        stats = [summary[m]["metrics"].get(key, {}) for m in models]
        means = np.array([s.get("mean") if s.get("mean") is not None else np.nan for s in stats])
        stds = np.array([s.get("std") or 0.0 for s in stats])
        x = np.arange(len(models))
        ax.bar(x, means, yerr=stds, capsize=4, color=[colors[m] for m in models])
        ax.set_xticks(x, [DISPLAY_NAMES.get(m, m) for m in models], rotation=40, ha="right",
                      fontsize=8)
        finite = np.isfinite(means)
        if finite.any():
            lo = float(np.min(means[finite] - stds[finite]))
            hi = float(np.max(means[finite] + stds[finite]))
            if orc.get(key) is not None:
                ax.axhline(orc[key], color="black", ls="--", lw=1.0, label="oracle")
                hi = max(hi, orc[key])
                ax.legend(fontsize=8, loc="lower right")
            pad = 0.15 * max(hi - lo, 1e-3)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(heading, fontsize=10)
    n = len(results["seeds"])
    fig.suptitle(f"Test AUC, mean ± std over {n} seed(s)")
    fig.savefig(path, dpi=110)


def write_plots(out_dir: Path, results: dict[str, Any],
                predictions: dict[str, Any] | None) -> list[str]:
    """Every PNG the report shows; returns their file names."""
    out_dir = Path(out_dir)
    names = {m: display_name(m, results.get("search")) for m in results["models"]}
    written = ["bars.png"]
    plot_bars(out_dir / "bars.png", results)
    if predictions and predictions.get("models"):
        plot_roc(out_dir / "roc.png", predictions, names)
        written.append("roc.png")
        for task in ("ctr", "cvr", "ctcvr"):
            plot_calibration(out_dir / f"calibration_{task}.png", task, predictions, names)
            written.append(f"calibration_{task}.png")
    return written


def write_report(out_dir: str | Path, results: dict[str, Any],
                 predictions: dict[str, Any] | None, *, notes: str | None = None,
                 stream: TextIO | None = sys.stderr) -> Path:
    """report.md plus its plots (when matplotlib is installed and ``predictions`` given)."""
    out_dir = Path(out_dir)
    plots: list[str] = []
    plot_note = None
    if predictions is not None:
        try:
            import matplotlib  # noqa: F401
        except ModuleNotFoundError:
            plot_note = ("Plots skipped: matplotlib is not installed "
                         "(`pip install 'esmm[report]'`).")
            if stream is not None:
                print(f"esmm compare: {plot_note}", file=stream)
        else:
            plots = write_plots(out_dir, results, predictions)
    path = out_dir / REPORT_FILE
    path.write_text(markdown_report(results, plots, notes, plot_note))
    return path
