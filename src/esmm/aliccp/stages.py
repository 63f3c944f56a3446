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
SLICE_ENTRIES = 8_000_000  # user-side bag entries materialised at once while writing


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
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))


def _offsets(lens: np.ndarray) -> np.ndarray:
    off = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    return off


def encode_chunk(task: tuple[int, list[tuple[str, int, int]]]) -> dict[str, Any]:
    """Encode one spooled chunk and write it as Parquet: ``[(split, row_from, row_to), ...]``."""
    index, parts = task
    d = _load(index)
    uidx = resolve(d["cfi"])
    stats: dict[str, Any] = {}
    for split, lo, hi in parts:
        rows = np.arange(lo, hi)
        rows = rows[uidx[rows] >= 0]
        if not len(rows):
            continue
        path = Path(STATE["out"]) / split / f"part-{index:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        stats[split] = _write_rows(path, d, uidx, rows)
    return {"index": index, "splits": stats}


def _write_rows(path: Path, d: dict[str, Any], uidx: np.ndarray, rows: np.ndarray
                ) -> dict[str, Any]:
    users, vocabs = STATE["users"], STATE["vocabs"]
    item_off = {f: _offsets(d[f][0]) for f in ITEM_FIELDS if f in MULTI_FIELDS}
    per_row = sum(np.diff(users["multi"][f][0])[uidx[rows]] for f in USER_FIELDS
                  if f in MULTI_FIELDS)
    stats: dict[str, Any] = {"rows": 0, "clicks": 0, "conversions": 0,
                             "bag_entries": {f: 0 for f in MULTI_FIELDS}}
    writer = None
    lo = 0
    cum = np.cumsum(per_row)
    while lo < len(rows):
        hi = max(lo + 1, int(np.searchsorted(cum, (cum[lo - 1] if lo else 0) + SLICE_ENTRIES)))
        hi = min(hi, lo + 262144, len(rows))
        table = _table(d, uidx, rows[lo:hi], users, vocabs, item_off, stats)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd", compression_level=1,
                                      write_statistics=False)
        writer.write_table(table)
        lo = hi
    if writer is not None:
        writer.close()
    return stats


def _tiled(runs: tuple[np.ndarray, np.ndarray], starts: np.ndarray, lens: np.ndarray,
           ids: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first, count = runs
    pieces_i, pieces_w = [], []
    for r, k in zip(first.tolist(), count.tolist()):
        a, b = int(starts[r]), int(starts[r] + lens[r])
        pieces_i.append(np.tile(ids[a:b], k))
        pieces_w.append(np.tile(vals[a:b], k))
    return np.concatenate(pieces_i), np.concatenate(pieces_w)


def _table(d: dict[str, Any], uidx: np.ndarray, rows: np.ndarray, users: dict[str, Any],
           vocabs: dict[str, Any], item_off: dict[str, np.ndarray], stats: dict[str, Any]
           ) -> pa.Table:
    u = uidx[rows]
    n = len(rows)
    first = np.flatnonzero(np.diff(u)) + 1
    # rows of one user come in runs: copy each user's bag once per run (np.tile), no gather
    runs = (np.concatenate([[0], first]), np.diff(np.concatenate([[0], first, [n]])))
    runs = runs if len(runs[0]) * 8 <= n else None
    cols: dict[str, pa.Array] = {}
    for f in USER_FIELDS + ITEM_FIELDS:
        if f not in MULTI_FIELDS:
            cols[f] = pa.array(users["single"][f][u] if f in USER_FIELDS
                               else vocabs[f].encode(d[f][rows]))
            continue
        if f in USER_FIELDS:
            ptr, ids, vals = users["multi"][f]
            starts = ptr[u]
        else:
            lens_all, raw_ids, vals = d[f]
            ptr = item_off[f]
            starts = ptr[rows]
            ids = raw_ids
        lens = ptr[rows + 1 if f in ITEM_FIELDS else u + 1] - starts
        off = _offsets(lens)
        if f in USER_FIELDS and runs is not None:
            bag_ids, bag_w = _tiled(runs, starts, lens, ids, vals)
        else:
            pos = np.repeat(starts - off[:-1], lens) + np.arange(off[-1])
            bag_ids = ids[pos] if f in USER_FIELDS else vocabs[f].encode(ids[pos])
            bag_w = vals[pos]
        cols[f] = _list(off, bag_ids)
        cols[weight_column(f)] = _list(off, bag_w)
        if f in CROSS_FIELDS:
            row_of = np.repeat(np.arange(n), lens)
            cols[value_column(f)] = pa.array(np.bincount(row_of, weights=bag_w, minlength=n)
                                             .astype(np.float32))
        stats["bag_entries"][f] += int(off[-1])
    click, conv = d["click"][rows], d["conversion"][rows]
    cols["click"] = pa.array(click)
    cols["conversion"] = pa.array(conv)
    cols["group"] = pa.array(users["group"][u])
    cols["sample_id"] = pa.array(d["sample_id"][rows])
    stats["rows"] += n
    stats["clicks"] += int(click.sum())
    stats["conversions"] += int(conv.sum())
    return pa.table(cols)
