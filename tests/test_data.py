from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from esmm.data import DataError, encode_table, load_schema, load_split, split_files, write_dataset
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


# --------------------------------------------------------------------------- side tables


def _side_world(rng: np.random.Generator, n: int = 400, n_users: int = 37, n_shops: int = 11
                ) -> tuple[Schema, dict[str, pa.Table], dict[str, pa.Table], Schema, pa.Table]:
    """(schema with side tables 'user' and 'shop', its impression splits, its side tables,
    the same schema denormalised, the denormalised train table)."""

    def bags(m: int, vocab: int, max_len: int) -> tuple[list, list]:
        lens = rng.integers(0, max_len + 1, m)
        ids = [rng.integers(0, vocab, k).tolist() for k in lens]
        return ids, [rng.random(len(x)).astype(np.float32).tolist() for x in ids]

    feats = (Feature("item", "categorical", 13),
             Feature("u_hist", "multi_categorical", 11, weight_column="u_hist__w", table="user"),
             Feature("u_cat", "categorical", 7, table="user"),
             Feature("tags", "multi_categorical", 5, weight_column="tags__w"),
             Feature("price", "dense"),
             Feature("s_tags", "multi_categorical", 6, table="shop"),
             Feature("u_dense", "dense", table="user"),
             Feature("s_cat", "categorical", 3, table="shop"),
             Feature("u_long", "multi_categorical", 9, table="user"))
    schema = Schema(feats, group="group", side_tables={"user": "user_row", "shop": "shop_row"})
    uh, uhw = bags(n_users, 11, 30)
    user = pa.table({"u_hist": uh, "u_hist__w": uhw,
                     "u_cat": rng.integers(0, 7, n_users),
                     "u_dense": rng.normal(size=n_users).astype(np.float32),
                     "u_long": bags(n_users, 9, 300)[0]})
    shop = pa.table({"s_tags": bags(n_shops, 6, 4)[0], "s_cat": rng.integers(0, 3, n_shops)})
    tg, tgw = bags(n, 5, 3)
    click = (rng.random(n) < 0.3).astype(np.int8)
    conv = (click & (rng.random(n) < 0.5)).astype(np.int8)
    urow, srow = rng.integers(0, n_users, n), rng.integers(0, n_shops, n)
    imp = pa.table({"item": rng.integers(0, 13, n), "tags": tg, "tags__w": tgw,
                    "price": rng.normal(size=n), "user_row": urow, "shop_row": srow,
                    "click": click, "conversion": conv, "group": urow})
    flat_schema = schema.flattened()
    flat = imp.drop_columns(["user_row", "shop_row"])
    for name, side, key in (("user", user, urow), ("shop", shop, srow)):
        taken = side.take(pa.array(key))
        for c in schema.side_columns(name):
            flat = flat.append_column(c, taken.column(c))
    splits = {"train": imp.slice(0, 300), "test": imp.slice(300)}
    return schema, splits, {"user": user, "shop": shop}, flat_schema, flat


def _same_batch(a, b) -> None:
    for name in ("cat", "bag_ids", "bag_offsets", "bag_weights", "dense", "click", "conversion"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=name)


@pytest.fixture()
def side_world(tmp_path):
    schema, splits, side, flat_schema, flat = _side_world(np.random.default_rng(5))
    write_dataset(tmp_path / "norm", schema, splits, side_tables=side)
    write_dataset(tmp_path / "flat", flat_schema, {"train": flat.slice(0, 300),
                                                   "test": flat.slice(300)})
    return tmp_path / "norm", tmp_path / "flat"


def test_side_tables_give_the_same_batches_as_the_denormalised_table(side_world) -> None:
    norm, flat = side_world
    assert (norm / "side" / "user.parquet").is_file() and (norm / "side" / "shop.parquet").is_file()
    assert "u_hist" not in pq.read_schema(norm / "train.parquet").names
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        a, b = load_split(norm, split), load_split(flat, split)
        assert a.side and not b.side and len(a) == len(b)
        n = len(a)
        for rows in (slice(0, n), slice(13, 97), slice(n - 1, n + 5), slice(5, 5),
                     np.sort(rng.permutation(n)[:64]), rng.permutation(n)[:50],
                     np.array([3, 3, 0, n - 1]), np.zeros(0, np.int64)):
            _same_batch(a.batch(rows), b.batch(rows))
        for bs in (1, 64, 1000):
            for x, y in zip(a.iter_batches(bs, shuffle=True, rng=np.random.default_rng(1)),
                            b.iter_batches(bs, shuffle=True, rng=np.random.default_rng(1))):
                _same_batch(x, y)
        np.testing.assert_array_equal(a.dense, b.dense)  # what model.fit_dense reads
        np.testing.assert_array_equal(a.group, b.group)
        rows = np.flatnonzero(a.click == 1)
        sa, sb = a.subset(rows), b.subset(rows)
        assert sa.side["user"] is a.side["user"]  # shared, not copied
        _same_batch(sa.batch(slice(0, len(rows))), sb.batch(slice(0, len(rows))))
        _same_batch(sa.batch(np.array([2, 0, 1])), sb.batch(np.array([2, 0, 1])))


def test_side_tables_are_loaded_once_per_dataset(side_world) -> None:
    norm, _ = side_world
    a, b = load_split(norm, "train"), load_split(norm, "test")
    assert a.side["user"] is b.side["user"] and a.side["shop"] is b.side["shop"]
    # the bags of the side table are held once, not per impression
    assert a.bag_ptr.shape == (len(a) * 1 + 1,)
    assert len(a.side["user"].bag_ptr) == 37 * 2 + 1


def test_denormalised_rows_are_read_with_a_side_table_schema(side_world) -> None:
    """Raw rows scored with a run (esmm predict) hold every feature inline."""
    norm, flat = side_world
    schema = load_schema(norm)
    table = pq.read_table(flat / "test.parquet")
    a = encode_table(table, schema)  # as esmm predict does it (there with labels=False)
    _same_batch(a.batch(slice(0, 40)), load_split(flat, "test").batch(slice(0, 40)))
    with pytest.raises(DataError, match="side table"):
        encode_table(pq.read_table(norm / "test.parquet"), schema)


@pytest.mark.parametrize("key,message", [
    ([0, 37], "key column 'user_row' has 1 value(s) outside [0, 37)"),
    ([-1, 0], "outside [0, 37)"),
    ([0, None], "column 'user_row' has 1 null"),
])
def test_bad_side_keys_are_rejected(tmp_path, key, message) -> None:
    schema, splits, side, _, _ = _side_world(np.random.default_rng(5))
    out = write_dataset(tmp_path / "d", schema, splits, side_tables=side)
    bad = splits["train"].slice(0, 2).set_column(
        splits["train"].column_names.index("user_row"), "user_row", pa.array(key, pa.int64()))
    pq.write_table(bad, out / "train.parquet")
    with pytest.raises(DataError, match=re.escape(message)) as e:
        load_split(out, "train")
    assert "train.parquet" in str(e.value)
    if "outside" in message:
        assert "user.parquet" in str(e.value)
    with pytest.raises(DataError, match=re.escape(message)):
        write_dataset(tmp_path / "w", schema, {"train": bad}, side_tables=side)


def test_side_table_files_and_arguments_are_checked(tmp_path) -> None:
    schema, splits, side, _, _ = _side_world(np.random.default_rng(5))
    with pytest.raises(DataError, match=r"missing \['shop'\]"):
        write_dataset(tmp_path / "a", schema, splits, side_tables={"user": side["user"]})
    with pytest.raises(DataError, match="'u_cat' has 1 id"):
        bad = side["user"].set_column(2, "u_cat", pa.array([7] + [0] * 36))
        write_dataset(tmp_path / "b", schema, splits, side_tables={**side, "user": bad})
    out = write_dataset(tmp_path / "c", schema, splits, side_tables=side)
    (out / "side" / "shop.parquet").unlink()
    with pytest.raises(DataError, match="no side table 'shop'"):
        load_split(out, "train")
    (out / "side" / "shop").mkdir()
    pq.write_table(side["shop"].slice(0, 6), out / "side" / "shop" / "part-0.parquet")
    pq.write_table(side["shop"].slice(6), out / "side" / "shop" / "part-1.parquet")
    a, b = load_split(out, "train"), load_split(out, "test")
    assert a.side["shop"].n_rows == 11 and a.side["shop"] is b.side["shop"]


def test_schema_side_tables_round_trip_and_validation(tmp_path) -> None:
    schema = _side_world(np.random.default_rng(5))[0]
    assert schema.columns() == ["item", "tags", "tags__w", "price", "user_row", "shop_row",
                                "click", "conversion", "group"]
    assert schema.side_columns("user") == ["u_hist", "u_hist__w", "u_cat", "u_dense", "u_long"]
    assert Schema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema
    schema.save(tmp_path / "s.json")
    assert Schema.load(tmp_path / "s.json") == schema
    assert [f.name for f in schema.flattened().features] == [f.name for f in schema.features]
    with pytest.raises(SchemaError, match="not a side table"):
        Schema((Feature("a", "categorical", 3, table="user"),))
    with pytest.raises(SchemaError, match="holds no feature"):
        Schema((Feature("a", "categorical", 3),), side_tables={"user": "user_row"})
    with pytest.raises(SchemaError, match="appears twice"):
        Schema((Feature("a", "categorical", 3, table="user"),), side_tables={"user": "a"})
    with pytest.raises(SchemaError, match="side table name"):
        Schema((Feature("a", "categorical", 3, table="u"),), side_tables={"../u": "k"})
    d = schema.to_dict()
    d["side_tables"]["typo"] = 1
    with pytest.raises(SchemaError):
        Schema.from_dict(d)
    d = schema.to_dict()
    d["features"][0]["tabel"] = "user"
    with pytest.raises(SchemaError, match="unknown key"):
        Schema.from_dict(d)


def test_old_schema_files_without_side_tables_load(tmp_path) -> None:
    old = {"version": 1, "description": "",
           "labels": {"click": "click", "conversion": "conversion"},
           "features": [{"name": "x", "kind": "categorical", "vocab_size": 5, "encoding": "vocab"},
                        {"name": "h", "kind": "multi_categorical", "vocab_size": 4,
                         "encoding": "vocab", "weight_column": "h__w"}],
           "group": None, "truth": {"true_ctr": None, "true_cvr": None}, "extra": {}}
    (tmp_path / "schema.json").write_text(json.dumps(old))
    s = Schema.load(tmp_path / "schema.json")
    assert s.side_tables == {} and all(f.table is None for f in s.features)
    assert s.to_dict() == old  # written back unchanged
    pq.write_table(pa.table({"x": [1, 4], "h": [[1], []], "h__w": [[0.5], []],
                             "click": [1, 0], "conversion": [0, 0]}), tmp_path / "train.parquet")
    assert len(load_split(tmp_path, "train")) == 2
