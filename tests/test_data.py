from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esmm.data import DataError, encode_table, load_split, split_files
from esmm.schema import Feature, Schema, SchemaError


def test_shuffled_batches_equal_direct_gathers(tiny_world) -> None:
    split = load_split(tiny_world, "valid")
    rows = np.array([5, 0, 17, 3, 3, 1999])
    b = split.batch(rows)
    np.testing.assert_array_equal(b.cat.numpy(), split.cat[rows])
    np.testing.assert_array_equal(b.click.numpy(), split.click[rows])
    # bag layout: row-major, so bag k of the batch is (row k // Fm, field k % Fm)
    fm = split.n_bag_fields
    offsets = np.append(b.bag_offsets.numpy(), len(b.bag_ids))
    for k in range(len(rows) * fm):
        r, f = rows[k // fm], k % fm
        lo, hi = split.bag_ptr[r * fm + f], split.bag_ptr[r * fm + f + 1]
        np.testing.assert_array_equal(b.bag_ids.numpy()[offsets[k]:offsets[k + 1]],
                                      split.bag_ids[lo:hi])
        np.testing.assert_array_equal(b.bag_weights.numpy()[offsets[k]:offsets[k + 1]],
                                      split.bag_weights[lo:hi])


def test_slice_batches_equal_gathered_batches(tiny_world) -> None:
    split = load_split(tiny_world, "valid")
    a, b = split.batch(slice(100, 300)), split.batch(np.arange(100, 300))
    for name in ("cat", "bag_ids", "bag_offsets", "bag_weights", "dense", "click", "conversion"):
        np.testing.assert_array_equal(getattr(a, name).numpy(), getattr(b, name).numpy())


def test_an_epoch_visits_every_row_once(tiny_world) -> None:
    split = load_split(tiny_world, "valid")
    seen = sum(len(b) for b in split.iter_batches(333, shuffle=True, rng=np.random.default_rng(0)))
    total_clicks = sum(float(b.click.sum()) for b in
                       split.iter_batches(333, shuffle=True, rng=np.random.default_rng(0)))
    assert seen == len(split) and total_clicks == split.click.sum()


def test_multi_valued_bags_survive_the_round_trip_untruncated(tiny_world) -> None:
    table = pq.read_table(split_files(tiny_world, "valid")[0])
    split = load_split(tiny_world, "valid")
    lens = np.diff(split.bag_ptr)
    raw = table.column("user_hist_cats").to_pylist()
    assert lens.tolist() == [len(x) for x in raw]
    assert max(lens) > 3  # the world's history bags really are multi-valued


def test_subset_keeps_rows(tiny_world) -> None:
    split = load_split(tiny_world, "valid")
    clicked = np.flatnonzero(split.click == 1)
    sub = split.subset(clicked)
    assert len(sub) == len(clicked) and sub.click.all()
    np.testing.assert_array_equal(sub.batch(slice(0, 5)).bag_ids.numpy(),
                                  split.batch(clicked[:5]).bag_ids.numpy())


SCHEMA = Schema(features=(Feature("c", "categorical", 4), Feature("d", "dense")))


@pytest.mark.parametrize("table,message", [
    (pa.table({"c": [1, 2], "d": [0.5, 1.0], "click": [1, 0]}), "column 'conversion' is missing"),
    (pa.table({"c": [1, 9], "d": [0.5, 1.0], "click": [1, 0], "conversion": [0, 0]}),
     "outside [0, 4)"),
    (pa.table({"c": [1, 2], "d": [0.5, 1.0], "click": [2, 0], "conversion": [0, 0]}),
     "outside {0, 1}"),
    (pa.table({"c": [1, 2], "d": [0.5, 1.0], "click": [1, 0], "conversion": [0, 1]}),
     "conversion=1 with click=0"),
    (pa.table({"c": [1, 2], "d": [0.5, float("nan")], "click": [1, 0], "conversion": [0, 0]}),
     "non-finite"),
    (pa.table({"c": [1, None], "d": [0.5, 1.0], "click": [1, 0], "conversion": [0, 0]}),
     "null"),
])
def test_bad_datasets_are_rejected_with_the_column_named(table: pa.Table, message: str) -> None:
    with pytest.raises(DataError, match=re.escape(message)):
        encode_table(table, SCHEMA, path="f.parquet")


def test_missing_split_and_bad_schema_are_clear(tmp_path) -> None:
    with pytest.raises(DataError, match="no split 'train'"):
        split_files(tmp_path, "train")
    (tmp_path / "schema.json").write_text('{"features": [{"name": "x", "kind": "categorical", '
                                          '"vocab_size": 5, "typo": 1}]}')
    with pytest.raises(SchemaError, match="unknown key"):
        Schema.load(tmp_path / "schema.json")
    with pytest.raises(SchemaError, match="vocab_size must be >= 2"):
        Feature("x", "categorical", 1)


def test_shards_are_read_in_order(tmp_path, tiny_world) -> None:
    table = pq.read_table(split_files(tiny_world, "valid")[0])
    (tmp_path / "valid").mkdir()
    pq.write_table(table.slice(0, 700), tmp_path / "valid" / "part-00000.parquet")
    pq.write_table(table.slice(700), tmp_path / "valid" / "part-00001.parquet")
    (tmp_path / "schema.json").write_text((tiny_world / "schema.json").read_text())
    a, b = load_split(tmp_path, "valid"), load_split(tiny_world, "valid")
    np.testing.assert_array_equal(a.cat, b.cat)
    np.testing.assert_array_equal(a.bag_ids, b.bag_ids)
