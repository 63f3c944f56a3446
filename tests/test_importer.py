"""esmm import: raw CSV/Parquet logs -> dataset directory (vocabularies, splits, policies)."""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from esmm.data import load_schema, load_split
from esmm.importer import ImportSpec, LogImportError, import_logs
from esmm.vocab import Vocabulary

from rawlogs import HEADER, make_rows, write_csv

SPEC = ImportSpec(categorical=("user", "item", "city"), multi_categorical=("tags",),
                  dense=("price",), click="clicked", conversion="purchase", group="user",
                  valid_fraction=0.1)


@pytest.fixture()
def logs(tmp_path: Path) -> tuple[Path, Path, list[list[str]], list[list[str]]]:
    train = make_rows(1000, seed=1)
    # fixed rows first so their content is known: a weighted bag, a plain bag, an empty bag
    train[0][4], train[1][4], train[2][4] = "shoes:2|bags:0.5", "a|b", ""
    train[-1][3] = "valid_only_city"  # appears only in the valid tail of train
    test = make_rows(300, seed=2, prefix="t")
    test[0][3], test[1][2] = "atlantis", "99999"  # values never seen in train
    return (write_csv(tmp_path / "train.csv", train), write_csv(tmp_path / "test.csv", test),
            train, test)


def _vocab(data: Path, name: str) -> Vocabulary:
    return Vocabulary.from_dict(json.loads((data / "vocabularies.json").read_text())[name])


def test_import_writes_a_dataset_with_schema_labels_and_report(logs, tmp_path):
    train_csv, test_csv, train, test = logs
    out = tmp_path / "data"
    report = import_logs(train_csv, test_csv, out, SPEC)

    schema = load_schema(out)
    assert [(f.name, f.kind, f.encoding) for f in schema.features] == [
        ("user", "categorical", "vocab"), ("item", "categorical", "vocab"),
        ("city", "categorical", "vocab"), ("tags", "multi_categorical", "vocab"),
        ("price", "dense", "vocab")]
    assert schema.feature("tags").weight_column == "tags__weight"
    assert (schema.click, schema.conversion, schema.group) == ("click", "conversion", "group")
    for name in ("user", "item", "city", "tags"):
        assert schema.feature(name).vocab_size == _vocab(out, name).size

    assert report["rows"] == {"train": 900, "valid": 100, "test": 300}
    t = pq.read_table(out / "train.parquet")
    assert t.schema.field("click").type == pa.int8()
    assert t.schema.field("conversion").type == pa.int8()
    assert t.schema.field("group").type == pa.int64()
    clicks = sum(int(r[6]) for r in train[:900])
    assert report["clicks"]["train"] == clicks == int(np.sum(t.column("click").to_numpy()))
    assert report["conversions"]["test"] == sum(int(r[7]) for r in test)
    assert json.loads((out / "import_report.json").read_text()) == report
    assert report["orphan_conversions"]["train"]["rows"] == 0

    # every split loads and passes the dataset's own validation
    for split in ("train", "valid", "test"):
        load_split(out, split, schema)


def test_vocabulary_is_fitted_on_the_train_part_only(logs, tmp_path):
    train_csv, test_csv, train, _ = logs
    out = tmp_path / "data"
    report = import_logs(train_csv, test_csv, out, SPEC)
    city = _vocab(out, "city")
    assert "007" in city.tokens_ and "7" in city.tokens_  # raw ids stay tokens, not numbers
    assert "valid_only_city" not in city.tokens_  # the valid tail is not fitted on
    assert "atlantis" not in city.tokens_
    assert "99999" not in _vocab(out, "item").tokens_
    assert set(_vocab(out, "user").tokens_) == {r[1] for r in train[:900]}

    valid = pq.read_table(out / "valid.parquet")
    assert valid.column("city")[-1].as_py() == 0
    test = pq.read_table(out / "test.parquet")
    assert test.column("city")[0].as_py() == 0 and test.column("item")[1].as_py() == 0
    assert test.column("city")[2].as_py() > 0
    assert report["unknown_rate"]["test"]["city"] == pytest.approx(1 / 300)
    assert report["unknown_rate"]["valid"]["city"] == pytest.approx(1 / 100)
    assert report["unknown_rate"]["train"]["city"] == 0.0
    # the group is dictionary-encoded with one dictionary for both files
    g_train = pq.read_table(out / "train.parquet").column("group").to_numpy()
    users = [r[1] for r in train[:900]]
    first = {u: g for u, g in zip(users, g_train)}
    assert len(set(first.values())) == len(first)
    g_test = test.column("group").to_numpy()
    test_users = [r[1] for r in logs[3]]
    assert all(first[u] == g for u, g in zip(test_users, g_test) if u in first)


def test_valid_is_the_tail_of_train(logs, tmp_path):
    train_csv, test_csv, train, _ = logs
    out = tmp_path / "data"
    import_logs(train_csv, None, out, SPEC)

    def price(split: str) -> np.ndarray:
        return pq.read_table(out / f"{split}.parquet").column("price").to_numpy()

    raw = np.array([float(r[5]) for r in train], dtype=np.float32)
    np.testing.assert_array_equal(price("train"), raw[:900])
    np.testing.assert_array_equal(price("valid"), raw[900:])
    assert not (out / "test.parquet").exists()


def test_bags_keep_weights_and_empty_bags(logs, tmp_path):
    train_csv, _, _, _ = logs
    out = tmp_path / "data"
    import_logs(train_csv, None, out, SPEC)
    t = pq.read_table(out / "train.parquet").slice(0, 3)
    tags = _vocab(out, "tags")
    ids = {tok: i + 1 for i, tok in enumerate(tags.tokens_)}
    assert t.column("tags").to_pylist() == [[ids["shoes"], ids["bags"]], [ids["a"], ids["b"]], []]
    assert t.column("tags__weight").to_pylist() == [[2.0, 0.5], [1.0, 1.0], []]


def test_min_count_maps_rare_values_to_zero(logs, tmp_path):
    train_csv, _, train, _ = logs
    out = tmp_path / "data"
    report = import_logs(train_csv, None, out, ImportSpec(
        categorical=("item",), click="clicked", conversion="purchase", min_count=5))
    counts = Counter(r[2] for r in train[:900])
    kept = {tok for tok, c in counts.items() if c >= 5}
    assert set(_vocab(out, "item").tokens_) == kept
    assert 0 < len(kept) < len(counts)
    assert report["min_count"] == 5 and report["vocab_sizes"]["item"] == len(kept) + 1
    ids = pq.read_table(out / "train.parquet").column("item").to_numpy()
    rare = np.array([counts[r[2]] < 5 for r in train[:900]])
    assert (ids[rare] == 0).all() and (ids[~rare] > 0).all()
    assert report["unknown_rate"]["train"]["item"] == pytest.approx(rare.mean())


def test_parquet_input_gives_the_same_dataset(logs, tmp_path):
    train_csv, test_csv, _, _ = logs
    # a typed copy: ints for item, floats for price (what a real Parquet export holds)
    for src in (train_csv, test_csv):
        pq.write_table(pacsv.read_csv(src), src.with_suffix(".parquet"))
    assert pq.read_schema(train_csv.with_suffix(".parquet")).field("item").type == pa.int64()
    gz = tmp_path / "train.csv.gz"
    gz.write_bytes(gzip.compress(train_csv.read_bytes()))
    import_logs(train_csv, test_csv, tmp_path / "a", SPEC)
    import_logs(train_csv.with_suffix(".parquet"), test_csv.with_suffix(".parquet"),
                tmp_path / "b", SPEC)
    import_logs(gz, test_csv, tmp_path / "c", SPEC)
    for other in ("b", "c"):
        for split in ("train", "valid", "test"):
            a = pq.read_table(tmp_path / "a" / f"{split}.parquet")
            b = pq.read_table(tmp_path / other / f"{split}.parquet")
            for col in a.column_names:
                assert a.column(col).to_pylist() == b.column(col).to_pylist(), (other, split, col)


# --------------------------------------------------------------------------- bad input


def test_missing_column_names_file_and_column(logs, tmp_path):
    train_csv, test_csv, _, _ = logs
    spec = ImportSpec(categorical=("user", "colour"), click="clicked", conversion="purchase")
    with pytest.raises(LogImportError, match=r"train\.csv.*'colour'.*columns are"):
        import_logs(train_csv, test_csv, tmp_path / "o", spec)
    spec = ImportSpec(categorical=("user",), click="click", conversion="purchase")
    with pytest.raises(LogImportError, match=r"train\.csv: click label column 'click'"):
        import_logs(train_csv, test_csv, tmp_path / "o", spec)
    # the test file is checked too, and named
    rows = [r[:7] for r in make_rows(50, seed=3)]
    bad_test = write_csv(tmp_path / "t2.csv", rows, HEADER[:7])
    with pytest.raises(LogImportError, match=r"t2\.csv: conversion label column 'purchase'"):
        import_logs(train_csv, bad_test, tmp_path / "o", SPEC)
    assert not (tmp_path / "o" / "schema.json").exists()


def test_non_numeric_dense_names_file_column_row_and_value(tmp_path):
    rows = make_rows(100)
    rows[16][5] = "12.5kg"
    path = write_csv(tmp_path / "train.csv", rows)
    with pytest.raises(LogImportError,
                       match=r"train\.csv: dense column 'price' has a non-numeric value '12.5kg' "
                             r"at data row 17"):
        import_logs(path, None, tmp_path / "o", SPEC)
    rows[16][5] = ""
    write_csv(path, rows)
    with pytest.raises(LogImportError, match=r"train\.csv: dense column 'price' is empty at "
                                             r"data row 17"):
        import_logs(path, None, tmp_path / "o", SPEC)
    rows[16][5] = " 12.5 "  # blanks around a number are fine
    write_csv(path, rows)
    import_logs(path, None, tmp_path / "o", SPEC)


def test_label_outside_0_1_names_file_column_count_and_row(tmp_path):
    rows = make_rows(100)
    rows[9][6], rows[40][6] = "2", "yes"
    path = write_csv(tmp_path / "train.csv", rows)
    with pytest.raises(LogImportError, match=r"train\.csv: label column 'clicked' has 2 value\(s\) "
                                             r"outside \{0, 1\} \(first at data row 10: '2'\)"):
        import_logs(path, None, tmp_path / "o", SPEC)


def _orphan_logs(tmp_path: Path) -> tuple[Path, list[int]]:
    rows = make_rows(200)
    orphan_rows = [i for i, r in enumerate(rows) if r[6] == "0"][:3]
    for i in orphan_rows:
        rows[i][7] = "1"
    return write_csv(tmp_path / "train.csv", rows), orphan_rows


def test_orphan_conversions_zero_policy(tmp_path, capsys):
    path, orphan_rows = _orphan_logs(tmp_path)
    report = import_logs(path, None, tmp_path / "o", SPEC)  # "zero" is the default
    entry = report["orphan_conversions"]["train"]
    assert entry["rows"] == 3 and entry["action"] == "set conversion to 0"
    assert report["orphan_conversions"]["policy"] == "zero"
    assert "3 row(s)" in capsys.readouterr().err
    t = pq.read_table(tmp_path / "o" / "train.parquet")
    assert report["rows"]["train"] + report["rows"]["valid"] == 200
    conv = t.column("conversion").to_numpy()
    assert (conv[orphan_rows] == 0).all()


def test_orphan_conversions_drop_policy(tmp_path):
    path, orphan_rows = _orphan_logs(tmp_path)
    spec = dataclasses.replace(SPEC, on_orphan_conversion="drop")
    report = import_logs(path, None, tmp_path / "o", spec)
    assert report["orphan_conversions"]["train"]["rows"] == 3
    assert report["orphan_conversions"]["train"]["action"] == "dropped the rows"
    assert report["rows"] == {"train": 177, "valid": 20}  # the valid tail is cut after dropping
    prices = np.concatenate([pq.read_table(tmp_path / "o" / f"{s}.parquet").column("price")
                             .to_numpy() for s in ("train", "valid")])
    raw = np.array([float(r[5]) for r in make_rows(200)], dtype=np.float32)
    np.testing.assert_array_equal(prices, np.delete(raw, orphan_rows))


def test_orphan_conversions_error_policy(tmp_path):
    path, orphan_rows = _orphan_logs(tmp_path)
    spec = dataclasses.replace(SPEC, on_orphan_conversion="error")
    with pytest.raises(LogImportError, match=rf"train\.csv: 3 row\(s\) have purchase=1 with "
                                             rf"clicked=0.*first at data row {orphan_rows[0] + 1}"):
        import_logs(path, None, tmp_path / "o", spec)


def test_out_dir_must_be_empty_unless_force(logs, tmp_path):
    train_csv, test_csv, _, _ = logs
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(LogImportError, match=r"o: dataset directory is not empty.*force"):
        import_logs(train_csv, test_csv, out, SPEC)
    import_logs(train_csv, test_csv, out, SPEC, force=True)
    assert (out / "test.parquet").exists() and (out / "notes.txt").exists()
    # a forced re-import without a test file leaves no stale test split behind
    import_logs(train_csv, None, out, SPEC, force=True)
    assert not (out / "test.parquet").exists()


def test_empty_train_file_is_rejected(tmp_path):
    path = write_csv(tmp_path / "train.csv", [])
    with pytest.raises(LogImportError, match=r"train\.csv: the train file has no data rows"):
        import_logs(path, None, tmp_path / "o", SPEC)
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(LogImportError, match=r"blank\.csv: cannot read"):
        import_logs(tmp_path / "blank.csv", None, tmp_path / "o", SPEC)


@pytest.mark.parametrize("kwargs, message", [
    ({"categorical": ("user", "user")}, r"'user' is listed twice"),
    ({"categorical": ("user",), "dense": ("user",)},
     r"'user' is listed as categorical and as dense"),
    ({"categorical": ("clicked",)}, r"'clicked' is the click label"),
    ({"categorical": ("group",)}, r"'group' has a name the dataset reserves"),
    ({}, r"no feature columns"),
    ({"categorical": ("user",), "min_count": 0}, r"min_count"),
    ({"categorical": ("user",), "valid_fraction": 1.0}, r"valid_fraction"),
    ({"categorical": ("user",), "on_orphan_conversion": "ignore"}, r"on_orphan_conversion"),
])
def test_bad_spec_is_rejected(kwargs, message):
    with pytest.raises(LogImportError, match=message):
        ImportSpec(click="clicked", conversion="purchase", **kwargs)


def test_unknown_file_type_and_missing_file(tmp_path):
    with pytest.raises(LogImportError, match=r"logs\.json: unknown file type"):
        import_logs(tmp_path / "logs.json", None, tmp_path / "o", SPEC)
    with pytest.raises(LogImportError, match=r"nope\.csv: no such file"):
        import_logs(tmp_path / "nope.csv", None, tmp_path / "o", SPEC)


def test_bad_bag_weight_names_the_row(tmp_path):
    rows = make_rows(50)
    rows[4][4] = "shoes:x|bags"
    path = write_csv(tmp_path / "train.csv", rows)
    with pytest.raises(LogImportError, match=r"train\.csv: multi-valued field 'tags' has a weight "
                                             r"that is not a number \('shoes:x' at data row 5\)"):
        import_logs(path, None, tmp_path / "o", SPEC)
