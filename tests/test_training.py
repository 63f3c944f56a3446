from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from esmm.api import evaluate, train
from esmm.artifacts import ArtifactError, load_run
from esmm.cli import main
from esmm.data import load_split
from esmm.training import Callback, Trainer, predict_split


def test_same_seed_same_metrics(tiny_world, tiny_config, tmp_path) -> None:
    a = train(tiny_world, tmp_path / "a", tiny_config)
    b = train(tiny_world, tmp_path / "b", tiny_config)
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    c = train(tiny_world, tmp_path / "c", tiny_config.replace(seed=7))
    assert c["test"]["ctr_auc"] != a["test"]["ctr_auc"]


@pytest.mark.parametrize("model", ["esmm", "esmm-ns", "base"])
def test_artifact_round_trip_gives_the_same_predictions(tiny_world, tiny_config, tmp_path,
                                                        model: str) -> None:
    cfg = tiny_config.replace(model=model, epochs=1)
    metrics = train(tiny_world, tmp_path / "run", cfg)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "schema.json", "weights.safetensors", "history.json",
            "metrics.json"} <= files
    assert not any(f.endswith((".pt", ".pkl", ".pickle")) for f in files)
    run = load_run(tmp_path / "run")
    assert run.config == cfg
    test = load_split(tiny_world, "test")
    p = predict_split(run.model, run.spec, test)
    np.testing.assert_allclose(p["p_ctcvr"], p["p_ctr"] * p["p_cvr"], rtol=1e-6)
    again = evaluate(tmp_path / "run", tiny_world, "test")
    assert again == pytest.approx(metrics["test"], rel=1e-6, nan_ok=True)


def test_refuses_to_overwrite_a_run_without_force(tiny_world, tiny_config, tmp_path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not empty"):
        train(tiny_world, tmp_path / "run", tiny_config)
    train(tiny_world, tmp_path / "run", tiny_config.replace(epochs=1), force=True)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # force replaces only our files


def test_early_stopping_keeps_the_best_epoch_weights(tiny_world, tiny_config) -> None:
    from esmm.registry import get_model_spec

    spec = get_model_spec("esmm")
    train_split, valid = load_split(tiny_world, "train"), load_split(tiny_world, "valid")
    torch.manual_seed(0)
    model = spec.build(train_split.schema, tiny_config.model_config)

    class Snapshots(Callback):
        def __init__(self) -> None:
            self.states: dict[int, dict] = {}

        def on_epoch_end(self, trainer, epoch, record) -> None:  # noqa: ANN001
            self.states[epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    snaps = Snapshots()
    # lr high enough that validation gets worse after a while, patience 0
    cfg = tiny_config.train.__class__(**{**tiny_config.train.__dict__, "epochs": 6,
                                         "lr": 0.05, "patience": 0})
    result = Trainer(model, spec, cfg, callbacks=[snaps]).fit(train_split, valid)
    scores = [r["valid"]["ctcvr_auc"] for r in result.history]
    assert result.best_epoch == 1 + int(np.argmax(scores))
    best = snaps.states[result.best_epoch]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, best[k])
    if result.stopped_early:
        assert len(result.history) == result.best_epoch + 1


def _fit_checked(world, tiny_config, **train):  # noqa: ANN001, ANN202
    """ESMM on the tiny world, batch 128, validated several times per epoch."""
    from esmm.registry import get_model_spec

    spec = get_model_spec("esmm")
    train_split, valid = load_split(world, "train"), load_split(world, "valid")
    torch.manual_seed(0)
    model = spec.build(train_split.schema, tiny_config.model_config)
    cfg = tiny_config.replace(lr=0.05, batch_size=128, **train).train
    result = Trainer(model, spec, cfg).fit(train_split, valid)
    checks = [c for r in result.history for c in r["validations"]]
    return result, checks, model, spec, valid, -(-len(train_split) // 128)


def test_several_validations_per_epoch_keep_the_best_checks_weights(tiny_world,
                                                                    tiny_config) -> None:
    from esmm.training import evaluate_split

    result, checks, model, spec, valid, n_batches = _fit_checked(
        tiny_world, tiny_config, epochs=3, patience=100, validations_per_epoch=4)
    assert n_batches >= 8  # enough steps for four distinct checks
    # four checks per epoch, evenly spaced by steps, the last at the epoch's end
    bounds = [-(-j * n_batches // 4) / n_batches for j in (1, 2, 3, 4)]
    assert [c["position"] for c in checks] == pytest.approx(
        [e + b for e in range(3) for b in bounds], abs=1e-6)
    assert [r["valid"] for r in result.history] == [r["validations"][-1]["valid"]
                                                   for r in result.history]
    scores = [c["valid"]["ctcvr_auc"] for c in checks]
    best = checks[int(np.argmax(scores))]
    assert result.best_epoch == pytest.approx(best["position"])
    # the weights kept are the best check's: scoring them again gives its valid metrics
    again = evaluate_split(model, spec, valid)
    assert again["ctcvr_auc"] == pytest.approx(best["valid"]["ctcvr_auc"], abs=1e-9)


def test_patience_counts_validations_and_can_stop_mid_epoch(tiny_world, tiny_config) -> None:
    result, checks, *_ = _fit_checked(tiny_world, tiny_config, epochs=6, patience=0,
                                      validations_per_epoch=3)
    scores = [c["valid"]["ctcvr_auc"] for c in checks]
    assert result.stopped_early
    # patience 0: training ends at the first check that does not improve on the best
    first_worse = next(i for i in range(1, len(scores)) if scores[i] <= max(scores[:i]))
    assert len(checks) == first_worse + 1
    assert result.best_epoch == pytest.approx(checks[int(np.argmax(scores))]["position"])
    # on this seeded world the first worse check comes before an epoch's end: training
    # stopped there, not at the end of the epoch
    assert not float(checks[-1]["position"]).is_integer()
    assert len(result.history) == int(checks[-1]["position"]) + 1


def test_without_a_valid_split_every_epoch_runs_to_its_end(tiny_world, tiny_config) -> None:
    from esmm.registry import get_model_spec

    spec = get_model_spec("esmm")
    train_split = load_split(tiny_world, "train")
    torch.manual_seed(0)
    model = spec.build(train_split.schema, tiny_config.model_config)
    cfg = tiny_config.replace(batch_size=128, epochs=2, validations_per_epoch=3).train
    result = Trainer(model, spec, cfg).fit(train_split)
    assert [r["epoch"] for r in result.history] == [1, 2] and result.best_epoch == 2
    assert not result.stopped_early and all("valid" not in r for r in result.history)
    assert all(r["samples_per_s"] * r["seconds"] == pytest.approx(len(train_split))
               for r in result.history)


def test_validations_per_epoch_must_be_positive() -> None:
    from esmm.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="validations_per_epoch"):
        TrainConfig(validations_per_epoch=0)


def test_cli_synth_train_evaluate(tmp_path, capsys) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["synth", "--out", str(data), "--rows", "5000", "--seed", "3"]) == 0
    cfg = tmp_path / "small.toml"
    cfg.write_text("[model_config]\nembedding_dim = 4\ntower = [8]\n")
    assert main(["train", "--data", str(data), "--model", "esmm", "--out", str(run),
                 "--config", str(cfg), "--epochs", "1", "--batch-size", "256",
                 "--early-stop-metric", "cvr_auc", "--no-progress"]) == 0
    assert "cvr_auc_entire_truth" in capsys.readouterr().out
    history = json.loads((run / "history.json").read_text())
    assert history[0]["epoch"] == 1 and "valid" in history[0]
    out_json = tmp_path / "m.json"
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["n_impressions"] == 1250
    # re-running into the same directory without --force is refused with a clear message
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1",
                 "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    # --precision bf16 reaches the saved config; the run trains and scores
    bf16 = tmp_path / "bf16"
    assert main(["train", "--data", str(data), "--out", str(bf16), "--config", str(cfg),
                 "--epochs", "1", "--batch-size", "256", "--precision", "bf16",
                 "--no-progress"]) == 0
    assert json.loads((bf16 / "config.json").read_text())["train"]["precision"] == "bf16"
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "bad"),
                 "--precision", "fp16", "--no-progress"]) == 2
    assert "precision" in capsys.readouterr().err
