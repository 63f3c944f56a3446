"""Work done in the worker processes, one chunk at a time.

Workers are forked from the main process, so the user table and the
vocabularies (``STATE``, set by the main process before each pool starts) are
shared copy-on-write, never pickled. Every function takes a chunk and returns
small summaries; bulky results go to files in the temporary folder.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from esmm.aliccp.fields import (CROSS_FIELDS, ITEM_FIELDS, MULTI_FIELDS, USER_FIELDS,
                                value_column, weight_column)
from esmm.aliccp.rawformat import parse_block
from esmm.aliccp.sources import Chunk
from esmm.aliccp.vocabfit import count_ids

STATE: dict[str, Any] = {}
SLICE_ENTRIES = 8_000_000  # user-side bag entries per side-table shard
USER_TABLE = "user"  # the side table of user features (one row per common-features line)
USER_KEY = "user_row"  # impression column: the row of the user's features in that table


def _tmp(index: int) -> Path:
    return Path(STATE["tmp"]) / f"{STATE['split']}-{index:05d}.pkl"


def parse_common(chunk: Chunk) -> tuple[int, Any]:
    block = parse_block(chunk.read(), "common")
    return chunk.length, block


def parse_skeleton(chunk: Chunk) -> dict[str, Any]:
    """Parse a skeleton chunk, apply the orphan-conversion policy, spool it to a temp file."""
    block = parse_block(chunk.read(), "skeleton")
    h = block.header
    click, conv = h["click"], h["conversion"]
    orphan = (conv == 1) & (click == 0)
    out: dict[str, Any] = {"index": chunk.index, "bytes": chunk.length, "lines": block.n_lines,
                           "bad": block.bad, "ignored": block.ignored,
                           "orphans": int(orphan.sum()), "orphan_lines": []}
    policy = STATE["orphan_policy"]
    keep = np.ones(len(block), bool)
    if orphan.any():
        if policy == "error":
            out["orphan_lines"] = block.line[orphan][:1].tolist()
        elif policy == "drop":
            keep = ~orphan
        else:
            conv = conv & click
    data = {"line": block.line[keep].astype(np.int64), "sample_id": h["sample_id"][keep],
            "click": click[keep], "conversion": conv[keep], "cfi": h["cfi"][keep]}
    for f in ITEM_FIELDS:
        if f in MULTI_FIELDS:
            lens, ids, vals = block.multi[f]
            ek = np.repeat(keep, lens)
            data[f] = (lens[keep], ids[ek], vals[ek])
        else:
            data[f] = block.single[f][keep]
    out["rows"] = int(keep.sum())
    with open(_tmp(chunk.index), "wb") as fh:
        pickle.dump(data, fh, protocol=5)
    return out


def _load(index: int) -> dict[str, Any]:
    with open(_tmp(index), "rb") as fh:
        return pickle.load(fh)


def resolve(cfi: np.ndarray) -> np.ndarray:
    """Row of the user table for each common_feature_index; -1 where there is none."""
    keys, order = STATE["user_keys"], STATE["user_order"]
    if not len(keys):
        return np.full(len(cfi), -1, np.int64)
    pos = np.minimum(np.searchsorted(keys, cfi), len(keys) - 1)
    return np.where(keys[pos] == cfi, order[pos], -1)


def count_chunk(task: tuple[int, int]) -> dict[str, Any]:
    """Resolve users; count raw ids of the first ``limit`` rows (the train part) of a chunk."""
    index, limit = task
    d = _load(index)
    uidx = resolve(d["cfi"])
    out: dict[str, Any] = {"index": index, "unresolved": d["line"][uidx < 0].tolist(),
                           "unresolved_cfi": d["cfi"][uidx < 0].tolist(), "counts": {}}
    n_users = STATE["n_users"]
    rows = np.arange(len(uidx)) < limit
    rows &= uidx >= 0
    out["user_rows"] = np.bincount(uidx[rows], minlength=n_users) if limit else None
    if not limit:
        return out
    for f in ITEM_FIELDS:
        if f in MULTI_FIELDS:
            lens, ids, _ = d[f]
            out["counts"][f] = count_ids(ids[np.repeat(rows, lens)])
        else:
            out["counts"][f] = count_ids(d[f][rows])
    return out


def _list(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    if len(values) < 2**31:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))


def _offsets(lens: np.ndarray) -> np.ndarray:
    off = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    return off


def _writer(path: Path, table: pa.Table) -> pq.ParquetWriter:
    path.parent.mkdir(parents=True, exist_ok=True)
    return pq.ParquetWriter(path, table.schema, compression="zstd", compression_level=1,
                            write_statistics=False)


def encode_chunk(task: tuple[int, list[tuple[str, int, int]]]) -> dict[str, Any]:
    """Encode one spooled chunk and write it as Parquet: ``[(split, row_from, row_to), ...]``.

    Only the impression side is written here; each row points at its user's row of
    the side table (``user_row``), which :func:`write_users` writes once per user."""
    index, parts = task
    d = _load(index)
    uidx = resolve(d["cfi"])
    stats: dict[str, Any] = {}
    for split, lo, hi in parts:
        rows = np.arange(lo, hi)
        rows = rows[uidx[rows] >= 0]
        if not len(rows):
            continue
        table, stats[split] = _table(d, uidx, rows)
        writer = _writer(Path(STATE["out"]) / split / f"part-{index:05d}.parquet", table)
        writer.write_table(table)
        writer.close()
    return {"index": index, "splits": stats}


def _table(d: dict[str, Any], uidx: np.ndarray, rows: np.ndarray
           ) -> tuple[pa.Table, dict[str, Any]]:
    users, vocabs = STATE["users"], STATE["vocabs"]
    u = uidx[rows]
    n = len(rows)
    stats: dict[str, Any] = {"rows": n, "bag_entries": {}}
    cols: dict[str, pa.Array] = {}
    for f in ITEM_FIELDS:
        if f not in MULTI_FIELDS:
            cols[f] = pa.array(vocabs[f].encode(d[f][rows]))
            continue
        lens_all, raw_ids, vals = d[f]
        ptr = _offsets(lens_all)
        starts = ptr[rows]
        lens = ptr[rows + 1] - starts
        off = _offsets(lens)
        pos = np.repeat(starts - off[:-1], lens) + np.arange(off[-1])
        bag_w = vals[pos]
        cols[f] = _list(off, vocabs[f].encode(raw_ids[pos]))
        cols[weight_column(f)] = _list(off, bag_w)
        if f in CROSS_FIELDS:
            row_of = np.repeat(np.arange(n), lens)
            cols[value_column(f)] = pa.array(np.bincount(row_of, weights=bag_w, minlength=n)
                                             .astype(np.float32))
        stats["bag_entries"][f] = int(off[-1])
    for f in USER_FIELDS:  # the user's bags are stored once, in the side table; counted per row
        if f in MULTI_FIELDS:
            stats["bag_entries"][f] = int(np.diff(users["multi"][f][0])[u].sum())
    click, conv = d["click"][rows], d["conversion"][rows]
    cols[USER_KEY] = pa.array(u + STATE["user_base"])
    cols["click"] = pa.array(click)
    cols["conversion"] = pa.array(conv)
    cols["group"] = pa.array(users["group"][u])
    cols["sample_id"] = pa.array(d["sample_id"][rows])
    stats["clicks"] = int(click.sum())
    stats["conversions"] = int(conv.sum())
    return pa.table(cols), stats


def user_slices(users: dict[str, Any]) -> list[tuple[int, int]]:
    """Row ranges of the user table, each about ``SLICE_ENTRIES`` bag entries (one shard each)."""
    n = users["n"]
    per_row = sum(np.diff(users["multi"][f][0]) for f in USER_FIELDS if f in MULTI_FIELDS)
    cum = np.concatenate([[0], np.cumsum(per_row)]) if n else np.zeros(1, np.int64)
    bounds = [0]
    while bounds[-1] < n:
        lo = bounds[-1]
        hi = int(np.searchsorted(cum, cum[lo] + SLICE_ENTRIES, side="right")) - 1
        bounds.append(min(n, max(hi, lo + 1)))
    return list(zip(bounds[:-1], bounds[1:])) or [(0, 0)]


def write_users(task: tuple[str, int, int]) -> int:
    """Write user rows ``lo:hi`` (every user field, encoded) as one side-table shard."""
    name, lo, hi = task
    users = STATE["users"]
    cols: dict[str, pa.Array] = {}
    for f in USER_FIELDS:
        if f in MULTI_FIELDS:
            ptr, ids, vals = users["multi"][f]
            a, b = int(ptr[lo]), int(ptr[hi])
            off = ptr[lo:hi + 1] - a
            cols[f] = _list(off, ids[a:b])
            cols[weight_column(f)] = _list(off, vals[a:b])
        else:
            cols[f] = pa.array(users["single"][f][lo:hi])
    table = pa.table(cols)
    writer = _writer(Path(STATE["out"]) / name, table)
    writer.write_table(table)
    writer.close()
    return hi - lo
