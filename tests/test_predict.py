"""esmm predict: raw rows -> scores, end to end from raw logs through import and training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from esmm import api
from esmm.cli import main
from esmm.config import ModelConfig, RunConfig
from esmm.importer import ImportSpec, import_logs
from esmm.predict import PredictError, Predictor, predict_file
from esmm.vocab import EncodingError

from rawlogs import HEADER, make_rows, write_csv

SPEC = ImportSpec(categorical=("user", "item", "city"), multi_categorical=("tags",),
                  dense=("price",), click="clicked", conversion="purchase", group="user")
CONFIG = RunConfig(model="esmm", model_config=ModelConfig(embedding_dim=4, tower=(8,))
                   ).replace(epochs=1, batch_size=256, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Raw logs -> import -> train (one tiny epoch); shared by the tests of this file."""
    root = tmp_path_factory.mktemp("e2e")
    train_csv = write_csv(root / "train.csv", make_rows(3000, seed=0, prefix="r"))
    test_csv = write_csv(root / "test.csv", make_rows(600, seed=1, prefix="t"))
    data, run = root / "data", root / "run"
    import_logs(train_csv, test_csv, data, SPEC)
    metrics = api.train(data, run, CONFIG)
    assert metrics["best_epoch"] == 1
    # rows to score: the test rows plus values the model never saw
    rows = make_rows(500, seed=2, prefix="p")
    rows[0][1], rows[1][2], rows[2][3], rows[3][4] = "u_new", "424242", "atlantis", "zz:2|shoes"
    rows[4][6], rows[4][7] = "7", "bad"  # label columns are ignored when scoring
    score_csv = write_csv(root / "score.csv", rows)
    score_pq = root / "score.parquet"
    pq.write_table(pacsv.read_csv(score_csv), score_pq)  # typed copy: int items, float prices
    return {"root": root, "data": data, "run": run, "csv": score_csv, "parquet": score_pq,
            "train_csv": train_csv, "test_csv": test_csv}


def test_evaluate_after_import_and_train(trained):
    m = api.evaluate(trained["run"], trained["data"], "test")
    assert 0.0 <= m["ctr_auc"] <= 1.0 and np.isfinite(m["ctcvr_logloss"])


def test_predict_file_scores_every_row(trained):
    out = trained["root"] / "scores.parquet"
    stats = predict_file(trained["run"], trained["csv"], out)
    t = pq.read_table(out)
    assert t.column_names == ["id", "p_ctr", "p_cvr", "p_ctcvr"]
    assert stats["rows"] == t.num_rows == 500 and stats["rows_per_s"] > 0
    assert t.column("id").to_pylist() == [f"p{i}" for i in range(500)]
    p = {k: t.column(k).to_numpy() for k in ("p_ctr", "p_cvr", "p_ctcvr")}
    assert all(v.dtype == np.float32 for v in p.values())
    np.testing.assert_allclose(p["p_ctcvr"], p["p_ctr"] * p["p_cvr"], rtol=1e-6)
    for v in p.values():
        assert ((v > 0) & (v < 1)).all()
    # the unseen user, item, city and bag token are counted
    for name in ("user", "item", "city", "tags"):
        assert stats["unknown_ids"][name] >= 1


def test_parquet_input_and_chunking_give_identical_scores(trained):
    root = trained["root"]
    predict_file(trained["run"], trained["csv"], root / "a.parquet")
    predict_file(trained["run"], trained["parquet"], root / "b.parquet")
    predict_file(trained["run"], trained["csv"], root / "c.parquet", chunk_rows=7)
    predict_file(trained["run"], trained["parquet"], root / "d.parquet", chunk_rows=7)
    a, b = pq.read_table(root / "a.parquet"), pq.read_table(root / "b.parquet")
    c, d = pq.read_table(root / "c.parquet"), pq.read_table(root / "d.parquet")
    for k in ("p_ctr", "p_cvr", "p_ctcvr"):
        # same rows, same batch: bit-identical whichever format the values came in
        np.testing.assert_array_equal(a.column(k).to_numpy(), b.column(k).to_numpy())
        np.testing.assert_array_equal(c.column(k).to_numpy(), d.column(k).to_numpy())
        # another batch size may round a matrix product differently in the last bit
        np.testing.assert_allclose(a.column(k).to_numpy(), c.column(k).to_numpy(), rtol=1e-6)
    assert a.column("id").to_pylist() == c.column("id").to_pylist() == [f"p{i}" for i in range(500)]
    assert b.column("id").to_pylist() == a.column("id").to_pylist()


def test_scores_match_the_encoded_dataset(trained):
    """Raw test rows scored by predict == the imported test split scored by the model."""
    from esmm.artifacts import load_run
    from esmm.data import load_split
    from esmm.training import predict_split

    run = load_run(trained["run"])
    want = predict_split(run.model, run.spec, load_split(trained["data"], "test", run.schema))
    got = Predictor(run).predict_table(pacsv.read_csv(trained["test_csv"]))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)


def test_id_column_choices(trained):
    root = trained["root"]
    rows = [r[1:] for r in make_rows(20, seed=3, prefix="x")]
    no_id = write_csv(root / "no_id.csv", rows, HEADER[1:])
    predict_file(trained["run"], no_id, root / "n.parquet")
    t = pq.read_table(root / "n.parquet")
    assert t.column_names[0] == "row_id" and t.schema.field("row_id").type == pa.int64()
    assert t.column("row_id").to_pylist() == list(range(20))
    predict_file(trained["run"], trained["parquet"], root / "u.parquet", id_column="user")
    assert pq.read_table(root / "u.parquet").column_names[0] == "user"
    with pytest.raises(PredictError, match=r"score\.csv: id column 'order' is missing"):
        predict_file(trained["run"], trained["csv"], root / "x.parquet", id_column="order")


def test_missing_feature_column_names_file_and_column(trained):
    root = trained["root"]
    rows = [r[:3] + r[4:] for r in make_rows(10, seed=4, prefix="m")]
    path = write_csv(root / "no_city.csv", rows, HEADER[:3] + HEADER[4:])
    with pytest.raises(PredictError, match=r"no_city\.csv: feature column 'city' is missing"):
        predict_file(trained["run"], path, root / "x.parquet")
    assert not (root / "x.parquet").exists()


def test_bad_dense_value_names_the_file_row_across_chunks(trained):
    root = trained["root"]
    rows = make_rows(40, seed=5, prefix="b")
    rows[22][5] = "cheap"
    path = write_csv(root / "bad_price.csv", rows)
    with pytest.raises(EncodingError, match=r"bad_price\.csv: dense column 'price' has a "
                                            r"non-numeric value 'cheap' at data row 23"):
        predict_file(trained["run"], path, root / "bp.parquet", chunk_rows=7)
    assert not (root / "bp.parquet").exists()  # no partial output


def test_predictor_predict_table(trained):
    predictor = Predictor.load(trained["run"])
    table = pa.table({"user": ["u1", "nobody"], "item": [3, 5], "city": ["007", None],
                      "tags": ["shoes:2|bags", ""], "price": [10.0, 20.5]})
    p = predictor.predict_table(table)
    assert set(p) == {"p_ctr", "p_cvr", "p_ctcvr"} and len(p["p_ctr"]) == 2
    np.testing.assert_allclose(p["p_ctcvr"], p["p_ctr"] * p["p_cvr"], rtol=1e-6)


def test_cli_import_and_predict(trained, capsys):
    root = trained["root"]
    data = root / "cli_data"
    args = ["import", "--train", str(trained["train_csv"]), "--test", str(trained["test_csv"]),
            "--categorical", "user,item,city", "--multi-categorical", "tags", "--dense", "price",
            "--click", "clicked", "--conversion", "purchase", "--group", "user", "--out", str(data)]
    assert main(args) == 0
    assert '"rows"' in capsys.readouterr().out
    assert main(args) == 2  # the directory is not empty now
    assert "not empty" in capsys.readouterr().err
    out = root / "cli_scores.parquet"
    assert main(["predict", "--run", str(trained["run"]), "--input", str(trained["csv"]),
                 "--output", str(out), "--chunk-rows", "100"]) == 0
    assert pq.read_table(out).num_rows == 500
    capsys.readouterr()
    assert main(["predict", "--run", str(trained["run"]), "--input", str(root / "nope.csv"),
                 "--output", str(out)]) == 2
    assert "nope.csv: no such file" in capsys.readouterr().err
    assert main(args[:-1] + [str(root / "cli_data2"), "--dense", "city"]) == 2
    assert "'city' is listed as categorical and as dense" in capsys.readouterr().err


def test_identity_encoded_run_scores_raw_ints(tmp_path):
    """A simulated world (identity ids) scores raw CSV ints; ids beyond the tables become 0."""
    from esmm.synth import WorldConfig, write_world

    data = write_world(tmp_path / "world", WorldConfig(rows=2000, seed=0), verbose=False)
    api.train(data, tmp_path / "run", CONFIG, evaluate_test=False)
    test = pq.read_table(data / "test.parquet").slice(0, 30)
    cols = {c: test.column(c) for c in test.column_names if c not in ("user_hist_cats_weight",)}
    table = pa.table(cols)
    pacsv.write_csv(table.drop_columns(["user_hist_cats"]).append_column(
        "user_hist_cats", pa.array(["|".join(map(str, b)) for b in
                                    table.column("user_hist_cats").to_pylist()])),
        tmp_path / "raw.csv")
    stats = predict_file(tmp_path / "run", tmp_path / "raw.csv", tmp_path / "s.parquet")
    assert stats["rows"] == 30
    p = pq.read_table(tmp_path / "s.parquet").column("p_ctcvr").to_numpy()
    assert ((p > 0) & (p < 1)).all()


def test_bf16_scoring_stays_within_1e3_of_fp32_and_keeps_the_product(trained):
    """bf16 hidden layers (the fast scoring path) change scores by well under 1e-3 here."""
    out32, out16 = trained["root"] / "s32.parquet", trained["root"] / "s16.parquet"
    predict_file(trained["run"], trained["parquet"], out32)
    stats = main(["predict", "--run", str(trained["run"]), "--input", str(trained["parquet"]),
                  "--output", str(out16), "--precision", "bf16"])
    assert stats == 0
    a, b = pq.read_table(out32), pq.read_table(out16)
    assert a.column_names == b.column_names
    for k in ("p_ctr", "p_cvr", "p_ctcvr"):
        x, y = a.column(k).to_numpy(), b.column(k).to_numpy()
        assert np.abs(x - y).max() < 1e-3 and not np.array_equal(x, y)  # bf16 really ran
    np.testing.assert_allclose(b.column("p_ctcvr").to_numpy(),
                               b.column("p_ctr").to_numpy() * b.column("p_cvr").to_numpy(),
                               rtol=1e-6)
    fp32 = api.evaluate(trained["run"], trained["data"], "test")
    bf16 = api.evaluate(trained["run"], trained["data"], "test", precision="bf16")
    assert abs(fp32["ctcvr_auc"] - bf16["ctcvr_auc"]) < 5e-3
    with pytest.raises(ValueError, match="precision must be one of"):
        api.evaluate(trained["run"], trained["data"], "test", precision="fp8")
