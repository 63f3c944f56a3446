"""``esmm compare`` end to end on the tiny world, and the report's pieces on their own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import esmm.api
from esmm import compare as compare_mod
from esmm.cli import main
from esmm.compare import Progress, compare
from esmm.config import ConfigError
from esmm.metrics import auc
from esmm.model import SeparateTowers
from esmm.registry import MODELS, ModelSpec
from esmm.report import findings, reliability, roc_curve, summarise

TINY_TOML = """
[model_config]
embedding_dim = 8
tower = [16, 8]

[train]
epochs = 1
batch_size = 512
threads = 1
progress = false
"""


class _Broken:
    def __call__(self, outputs, batch):
        raise RuntimeError("deliberately broken objective")


@pytest.fixture()
def broken_model(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(MODELS, "broken", ModelSpec("broken", "raises in its objective",
                                                    SeparateTowers, _Broken()))
    return "broken"


@pytest.fixture()
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


def _count_trainings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = esmm.api.train

    def counting(data_dir, out_dir, config=None, **kw):
        calls.append(config.model)
        return real(data_dir, out_dir, config, **kw)

    monkeypatch.setattr(esmm.api, "train", counting)
    return calls


def test_compare_reports_a_failing_model_goes_on_and_resume_skips_finished_runs(
        tiny_world, toml, tmp_path, broken_model, monkeypatch, capsys) -> None:
    out = tmp_path / "report"
    argv = ["compare", "--data", str(tiny_world), "--models", "base,broken,esmm", "--seeds", "2",
            "--out", str(out), "--config", str(toml)]
    assert main(argv) == 1  # a run failed: the report is written, the status says so
    err = capsys.readouterr().err
    # each seed first trains the CTR network alone that BASE's pCTCVR takes its pCTR from
    assert "[1/8] model=ctr seed=0 ... elapsed" in err and "ETA" in err
    assert "[2/8] model=base seed=0 ... elapsed" in err
    assert "[8/8] model=esmm seed=1" in err
    assert "FAILED: RuntimeError: deliberately broken objective" in err

    results = json.loads((out / "results.json").read_text())
    by = {(r["model"], r["seed"]): r for r in results["runs"]}
    assert {k for k, r in by.items() if r["status"] == "ok"} == {("base", 0), ("base", 1),
                                                                ("esmm", 0), ("esmm", 1)}
    assert by[("broken", 1)]["error"] == "RuntimeError: deliberately broken objective"
    assert (out / "runs" / "broken-seed0" / "error.txt").read_text().count("Traceback") == 1
    assert results["summary"]["esmm"]["n_ok"] == 2
    assert results["summary"]["broken"]["n_ok"] == 0

    report = (out / "report.md").read_text()
    assert "esmm compare --data" in report and "--seeds 2" in report
    assert "| BROKEN | failed: seed 0: RuntimeError: deliberately broken objective" in report
    assert "| ESMM | " in report and "oracle (true propensities)" in report
    for png in ("roc.png", "bars.png", "calibration_ctr.png", "calibration_cvr.png",
                "calibration_ctcvr.png"):
        assert (out / png).stat().st_size > 5000
        assert f"]({png})" in report

    # without --resume or --force, finished runs are not silently retrained or overwritten
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err

    # --resume trains only what has no metrics.json (the broken model again); same numbers
    calls = _count_trainings(monkeypatch)
    assert main(argv + ["--resume"]) == 1
    assert calls == ["broken", "broken"]
    assert "resumed from" in capsys.readouterr().err
    again = json.loads((out / "results.json").read_text())
    assert [r.get("test") for r in again["runs"]] == [r.get("test") for r in results["runs"]]


def test_same_seeds_reproduce_the_numbers(tiny_world, tiny_config, tmp_path) -> None:
    cfg = tiny_config.replace(epochs=1)
    # AMAN draws its negatives at random: the run's seed must fix those draws too
    a = compare(tiny_world, tmp_path / "a", models=("aman-r50",), seeds=(0, 1), config=cfg,
                plots=False, stream=None)
    b = compare(tiny_world, tmp_path / "b", models=("aman-r50",), seeds=(0, 1), config=cfg,
                plots=False, stream=None)
    assert all(r["status"] == "ok" for r in a["runs"])
    assert [r["test"] for r in a["runs"]] == [r["test"] for r in b["runs"]]
    assert a["runs"][0]["test"] != a["runs"][1]["test"]  # a different seed is a different run


def test_search_chooses_on_valid_and_reuses_the_chosen_run_for_the_first_seed(
        tiny_world, tiny_config, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(compare_mod.SEARCH_SPACES, "aman", ("aman-r10", "aman-r100"))
    calls = _count_trainings(monkeypatch)
    res = compare(tiny_world, tmp_path / "r", models=("aman",), seeds=(0, 1),
                  config=tiny_config.replace(epochs=1), plots=False, stream=None)
    search = res["search"]["aman"]
    scores = {v: c["valid_cvr_auc"] for v, c in search["candidates"].items()}
    assert search["chosen"] == max(scores, key=scores.get)
    # seed 0 is the search run; each seed's reference CTR network comes first
    assert calls == ["ctr", "aman-r10", "aman-r100", "ctr", search["chosen"]]
    chosen, other = search["chosen"], ({"aman-r10", "aman-r100"} - {search["chosen"]}).pop()
    runs = tmp_path / "r" / "runs"
    # the test split is looked at only for the chosen candidate, after the choice
    assert "test" in json.loads((runs / f"{chosen}-seed0" / "metrics.json").read_text())
    assert "test" not in json.loads((runs / f"{other}-seed0" / "metrics.json").read_text())
    assert [(r["variant"], r["seed"]) for r in res["runs"]] == [(chosen, 0), (chosen, 1)]
    assert res["summary"]["aman"]["n_ok"] == 2


def test_non_esmm_models_take_pctr_from_one_independent_ctr_network(
        tiny_world, tiny_config, tmp_path) -> None:
    """The paper's protocol: pCTCVR = pCTR(reference CTR network) x pCVR(model) for BASE & co."""
    from esmm.artifacts import load_run
    from esmm.data import load_split
    from esmm.metrics import evaluate_predictions
    from esmm.training import predict_split

    res = compare(tiny_world, tmp_path / "r", models=("base", "unbias", "esmm"), seeds=(0,),
                  config=tiny_config.replace(epochs=2), plots=False, stream=None)
    runs = tmp_path / "r" / "runs"
    ref = res["reference_ctr"]["0"]
    assert ref["status"] == "ok" and ref["run_dir"] == "runs/ctr-seed0"
    assert set(ref["test"]) >= {"ctr_auc", "ctr_logloss"} and "cvr_auc" not in ref["test"]
    assert json.loads((runs / "ctr-seed0" / "config.json").read_text())["train"][
        "early_stop_metric"] == "ctr_auc"
    by = {r["model"]: r for r in res["runs"]}
    for model in ("base", "unbias"):
        assert by[model]["test"]["ctr_auc"] == ref["test"]["ctr_auc"]  # the same pCTR
        assert by[model]["pctr_from"] == "runs/ctr-seed0"
        saved = json.loads((runs / f"{model}-seed0" / "metrics.json").read_text())
        assert saved["test"] == by[model]["test"] and "test_own_ctr" not in saved
        assert json.loads((runs / f"{model}-seed0" / "config.json").read_text())["train"][
            "early_stop_metric"] == "cvr_auc"
    assert by["esmm"]["pctr_from"] is None  # ESMM keeps its own pCTR
    assert json.loads((runs / "esmm-seed0" / "config.json").read_text())["train"][
        "early_stop_metric"] == tiny_config.train.early_stop_metric

    # recomputed independently: reference pCTR x BASE's own pCVR
    test = load_split(tiny_world, "test")
    p_ref = predict_split(load_run(runs / "ctr-seed0").model, load_run(runs / "ctr-seed0").spec,
                          test)
    assert set(p_ref) == {"p_ctr"}
    base = load_run(runs / "base-seed0")
    p_base = predict_split(base.model, base.spec, test)
    want = evaluate_predictions(p_ref["p_ctr"], p_base["p_cvr"], test.click, test.conversion,
                                group=test.group, true_ctr=test.true_ctr, true_cvr=test.true_cvr)
    assert by["base"]["test"]["ctcvr_auc"] == pytest.approx(want["ctcvr_auc"], abs=1e-12)
    assert by["base"]["test"]["cvr_auc"] == pytest.approx(want["cvr_auc"], abs=1e-12)


def test_compare_refuses_unknown_models_and_missing_splits(tiny_world, tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        compare(tiny_world, tmp_path / "r", models=("base", "nope"), stream=None)
    (tmp_path / "nodata").mkdir()
    (tmp_path / "nodata" / "schema.json").write_text((tiny_world / "schema.json").read_text())
    with pytest.raises(ConfigError, match="no train split"):
        compare(tmp_path / "nodata", tmp_path / "r", models=("base",), stream=None)


# --------------------------------------------------------------------------- report pieces


def test_roc_curve_area_is_the_auc() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.1).astype(float)
    s = np.round(y * 0.3 + rng.random(5000), 2)  # ties on purpose
    fpr, tpr = roc_curve(y, s, max_points=10**6)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(auc(y, s), abs=1e-9)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1


def test_reliability_bins_have_equal_counts_and_recover_a_calibrated_model() -> None:
    rng = np.random.default_rng(1)
    p = rng.beta(1, 20, 200_000)
    y = (rng.random(p.size) < p).astype(float)
    pred, obs, n = reliability(y, p, bins=10)
    assert (n == 20_000).all() and np.all(np.diff(pred) > 0)
    np.testing.assert_array_less(np.abs(obs - pred), 4 * np.sqrt(pred / 20_000))  # 4 sigma


def test_progress_eta_uses_trained_runs_only() -> None:
    import io

    s = io.StringIO()
    p = Progress(total=4, stream=s)
    p.begin("model=base seed=0")
    p.end(None, "resumed")  # a resumed run says nothing about speed
    p.begin("model=base seed=1")
    p.end(60.0, "done")
    p.begin("model=esmm seed=0")
    lines = s.getvalue().splitlines()
    assert lines[0].startswith("[1/4] model=base seed=0 ... elapsed") and lines[0].endswith("ETA ?")
    assert lines[-1].startswith("[3/4] model=esmm seed=0") and lines[-1].endswith("ETA 2m00s")


def _run(model: str, seed: int, cvr: float, truth: float, ctcvr: float = 0.7) -> dict:
    return {"model": model, "variant": model, "seed": seed, "status": "ok", "error": None,
            "test": {"cvr_auc": cvr, "ctcvr_auc": ctcvr, "cvr_auc_entire_truth": truth,
                     "oracle_cvr_auc": 0.8, "oracle_ctcvr_auc": 0.85,
                     "oracle_cvr_auc_entire_truth": 0.9}}


def test_findings_say_so_when_the_papers_ordering_does_not_hold() -> None:
    runs = [_run("base", 0, 0.70, 0.60), _run("base", 1, 0.71, 0.61),
            _run("esmm", 0, 0.69, 0.65), _run("esmm", 1, 0.74, 0.66),
            {"model": "unbias", "variant": "unbias", "seed": 0, "status": "failed",
             "error": "ValueError: x"}]
    results = {"models": ["base", "unbias", "esmm"], "runs": runs, "summary": summarise(runs),
               "search": {}, "data": {"has_truth": True}}
    text = "\n".join(findings(results))
    assert "CVR AUC, entire space vs truth: ESMM is ahead of BASE in every seed" in text
    assert "CVR AUC (clicked): ESMM is ahead of BASE on average but only in 1 of 2 seeds" in text
    assert "UNBIAS: 1 of 1 runs failed (seed 0: ValueError: x)" in text
    s = results["summary"]["esmm"]["metrics"]["cvr_auc"]
    assert s["mean"] == pytest.approx(0.715) and s["std"] == pytest.approx(np.std([0.69, 0.74], ddof=1))


def test_compare_on_data_without_ground_truth(tiny_world, tiny_config, tmp_path) -> None:
    """A real data set (e.g. prepared Ali-CCP) has no true propensities: no truth column, no oracle."""
    import shutil

    data = tmp_path / "observed"
    shutil.copytree(tiny_world, data)
    schema = json.loads((data / "schema.json").read_text())
    schema["truth"] = {}
    (data / "schema.json").write_text(json.dumps(schema))
    res = compare(data, tmp_path / "r", models=("base",), seeds=(0,),
                  config=tiny_config.replace(epochs=1), stream=None)
    assert res["data"]["has_truth"] is False and res["runs"][0]["status"] == "ok"
    report = (tmp_path / "r" / "report.md").read_text()
    assert "CVR AUC (clicked)" in report and "entire space vs truth |" not in report
    assert "oracle (true propensities)" not in report
    assert (tmp_path / "r" / "calibration_cvr.png").is_file()


def test_parallel_jobs_give_the_sequential_numbers_and_keep_the_protocol(
        tiny_world, tiny_config, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(compare_mod.SEARCH_SPACES, "oversampling",
                        ("oversampling-k2", "oversampling-k10"))
    cfg = tiny_config.replace(epochs=1)
    models, seeds = ("oversampling", "esmm"), (0, 1)
    one = compare(tiny_world, tmp_path / "one", models=models, seeds=seeds, config=cfg,
                  plots=False, stream=None)
    # the parent plans (searches included); the workers, separate processes, only train
    two = compare(tiny_world, tmp_path / "two", models=models, seeds=seeds, config=cfg,
                  plots=False, jobs=2, stream=sys.stderr)
    err = capsys.readouterr().err
    assert "training 7 runs, 2 at a time (1 torch thread(s) each)" in err
    assert "evaluating every run on test" in err and "trained by a worker" in err
    assert two["search"]["oversampling"]["chosen"] == one["search"]["oversampling"]["chosen"]
    key = [(r["variant"], r["seed"]) for r in one["runs"]]
    assert [(r["variant"], r["seed"]) for r in two["runs"]] == key
    assert [r["test"] for r in two["runs"]] == [r["test"] for r in one["runs"]]
    assert two["reference_ctr"]["1"]["test"] == one["reference_ctr"]["1"]["test"]
    # the candidate that lost the search was never looked at on test
    lost = ({"oversampling-k2", "oversampling-k10"} - {two["search"]["oversampling"]["chosen"]}).pop()
    assert "test" not in json.loads((tmp_path / "two" / "runs" / f"{lost}-seed0" /
                                     "metrics.json").read_text())
    # resuming a parallel comparison sequentially trains nothing
    calls = _count_trainings(monkeypatch)
    again = compare(tiny_world, tmp_path / "two", models=models, seeds=seeds, config=cfg,
                    plots=False, resume=True, stream=None)
    assert calls == [] and [r["test"] for r in again["runs"]] == [r["test"] for r in one["runs"]]


def test_a_model_failing_in_a_worker_is_reported_and_the_rest_go_on(
        tiny_world, tiny_config, tmp_path) -> None:
    # an unknown early-stopping metric raises once training has started, in the worker
    res = compare(tiny_world, tmp_path / "r", models=("esmm",), seeds=(0,),
                  config=tiny_config.replace(epochs=1, early_stop_metric="no_such_metric"),
                  plots=False, jobs=2, stream=None)
    (run,) = res["runs"]
    assert run["status"] == "failed" and "no_such_metric" in run["error"]
    assert "Traceback" in (tmp_path / "r" / "runs" / "esmm-seed0" / "error.txt").read_text()
