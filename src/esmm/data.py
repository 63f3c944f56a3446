"""Encoded datasets on disk (Parquet) and in memory (contiguous NumPy arrays).

On disk a dataset is a directory::

    DIR/schema.json            # esmm.schema.Schema
    DIR/vocabularies.json      # optional: raw value -> id maps (esmm.vocab)
    DIR/train.parquet          # or DIR/train/*.parquet (shards, read in name order)
    DIR/valid.parquet
    DIR/test.parquet

In memory a split becomes an :class:`EncodedSplit`: one int64 matrix for the
categorical fields, one CSR pool for every multi-valued field (bags stored
row-major, so a contiguous range of rows is a contiguous range of the pool and
needs no gather), one float32 matrix for dense fields, and the label vectors.
Batches are cut from these arrays with vectorised slicing or fancy indexing,
never a Python loop over rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from esmm.schema import Feature, Schema

SPLITS = ("train", "valid", "test")
SCHEMA_FILE = "schema.json"
VOCAB_FILE = "vocabularies.json"


class DataError(ValueError):
    """A dataset file is missing, malformed or inconsistent with its schema."""


# ---------------------------------------------------------------------------
# locating files


def split_files(data_dir: str | Path, split: str) -> list[Path]:
    """The Parquet file(s) of one split: ``split.parquet`` or ``split/*.parquet``."""
    data_dir = Path(data_dir)
    single = data_dir / f"{split}.parquet"
    folder = data_dir / split
    if single.is_file():
        return [single]
    if folder.is_dir():
        shards = sorted(folder.glob("*.parquet"))
        if shards:
            return shards
        raise DataError(f"{folder}: split folder holds no .parquet shards")
    raise DataError(f"{data_dir}: no split {split!r} (expected {single.name} or {folder.name}/)")


def has_split(data_dir: str | Path, split: str) -> bool:
    data_dir = Path(data_dir)
    return (data_dir / f"{split}.parquet").is_file() or (data_dir / split).is_dir()


def load_schema(data_dir: str | Path) -> Schema:
    return Schema.load(Path(data_dir) / SCHEMA_FILE)


# ---------------------------------------------------------------------------
# in-memory representation


@dataclass
class Batch:
    """Tensors for one mini-batch of B rows.

    cat:          [B, Fc] int64 ids, field-local (the model adds table offsets)
    bag_ids:      [nnz]   int64 ids of every multi-valued bag, row-major then field
    bag_offsets:  [B*Fm]  int64 start of each bag in ``bag_ids`` (EmbeddingBag layout)
    bag_weights:  [nnz]   float32 per-id weights (1.0 where the data has none)
    dense:        [B, Fd] float32
    click, conversion: [B] float32 in {0, 1}; conversion is 0 wherever click is 0
    """

    cat: torch.Tensor
    bag_ids: torch.Tensor
    bag_offsets: torch.Tensor
    bag_weights: torch.Tensor
    dense: torch.Tensor
    click: torch.Tensor
    conversion: torch.Tensor

    def __len__(self) -> int:
        return int(self.click.shape[0])


@dataclass
class EncodedSplit:
    """One split held as contiguous arrays (see module docstring)."""

    schema: Schema
    cat: np.ndarray  # [n, Fc] int64
    bag_ptr: np.ndarray  # [n*Fm + 1] int64 CSR pointer over bags, row-major
    bag_ids: np.ndarray  # [nnz] int64
    bag_weights: np.ndarray  # [nnz] float32
    dense: np.ndarray  # [n, Fd] float32
    click: np.ndarray  # [n] float32
    conversion: np.ndarray  # [n] float32
    group: np.ndarray | None = None  # [n] int64
    true_ctr: np.ndarray | None = None  # [n] float32
    true_cvr: np.ndarray | None = None  # [n] float32

    def __len__(self) -> int:
        return int(self.click.shape[0])

    @property
    def n_bag_fields(self) -> int:
        return len(self.schema.multi_categorical)

    def batch(self, rows: slice | np.ndarray) -> Batch:
        """Cut rows out as a :class:`Batch`; a slice avoids every gather."""
        fm = self.n_bag_fields
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(len(self))
            ptr = self.bag_ptr[start * fm: stop * fm + 1]
            lo, hi = int(ptr[0]), int(ptr[-1])
            bag_ids, bag_w = self.bag_ids[lo:hi], self.bag_weights[lo:hi]
            bag_off = ptr[:-1] - lo
        else:
            rows = np.asarray(rows, dtype=np.int64)
            bags = (rows[:, None] * fm + np.arange(fm, dtype=np.int64)).ravel()
            starts = self.bag_ptr[bags]
            lens = self.bag_ptr[bags + 1] - starts
            bag_off = np.zeros(len(bags), dtype=np.int64)
            if len(bags) > 1:
                np.cumsum(lens[:-1], out=bag_off[1:])
            total = int(lens.sum())
            # position of every kept id = its bag's start in the pool + rank inside the bag
            pos = np.repeat(starts - bag_off, lens) + np.arange(total, dtype=np.int64)
            bag_ids, bag_w = self.bag_ids[pos], self.bag_weights[pos]
        return Batch(
            cat=torch.from_numpy(np.ascontiguousarray(self.cat[rows])),
            bag_ids=torch.from_numpy(np.ascontiguousarray(bag_ids)),
            bag_offsets=torch.from_numpy(np.ascontiguousarray(bag_off)),
            bag_weights=torch.from_numpy(np.ascontiguousarray(bag_w)),
            dense=torch.from_numpy(np.ascontiguousarray(self.dense[rows])),
            click=torch.from_numpy(np.ascontiguousarray(self.click[rows])),
            conversion=torch.from_numpy(np.ascontiguousarray(self.conversion[rows])),
        )

    def iter_batches(self, batch_size: int, *, shuffle: bool = False,
                     rng: np.random.Generator | None = None) -> Iterator[Batch]:
        n = len(self)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if shuffle:
            if rng is None:
                raise ValueError("shuffle=True needs an explicit rng, so runs are reproducible")
            order = rng.permutation(n)
            for s in range(0, n, batch_size):
                # sorted rows inside a batch read memory in order; the batch's
                # content (what the optimiser sees) is unchanged
                yield self.batch(np.sort(order[s:s + batch_size]))
        else:
            for s in range(0, n, batch_size):
                yield self.batch(slice(s, min(n, s + batch_size)))

    def subset(self, rows: np.ndarray) -> EncodedSplit:
        """A new split holding only ``rows`` (used e.g. for clicked-only views)."""
        rows = np.asarray(rows, dtype=np.int64)
        b = self.batch(rows)
        fm = self.n_bag_fields
        lens = np.diff(self.bag_ptr)[(rows[:, None] * fm + np.arange(fm)).ravel()]
        ptr = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=ptr[1:])
        opt = lambda a: None if a is None else a[rows]  # noqa: E731
        return EncodedSplit(self.schema, b.cat.numpy(), ptr, b.bag_ids.numpy(),
                            b.bag_weights.numpy(), b.dense.numpy(), b.click.numpy(),
                            b.conversion.numpy(), opt(self.group), opt(self.true_ctr),
                            opt(self.true_cvr))


# ---------------------------------------------------------------------------
# reading


def _column(table: pa.Table, name: str, path: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise DataError(f"{path}: column {name!r} is missing (columns: {table.column_names})")
    return table.column(name)


def _numeric(col: pa.ChunkedArray, name: str, path: str, dtype: type) -> np.ndarray:
    if col.null_count:
        raise DataError(f"{path}: column {name!r} has {col.null_count} null value(s)")
    try:
        return col.to_numpy().astype(dtype, copy=False)
    except (pa.ArrowInvalid, ValueError, TypeError) as e:
        raise DataError(f"{path}: column {name!r} is not numeric ({e})") from None


def _check_ids(ids: np.ndarray, f: Feature, path: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= f.vocab_size):
        bad = int(((ids < 0) | (ids >= f.vocab_size)).sum())
        raise DataError(f"{path}: feature {f.name!r} has {bad} id(s) outside [0, {f.vocab_size})")


def _read_bags(table: pa.Table, f: Feature, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lengths, ids and weights of a multi-valued column."""
    col = _column(table, f.name, path).combine_chunks()
    if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
        raise DataError(f"{path}: multi_categorical feature {f.name!r} must be a list column, "
                        f"got {col.type}")
    lens = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
    ids = _numeric(pa.chunked_array([col.flatten()]), f.name, path, np.int64)
    _check_ids(ids, f, path)
    if f.weight_column:
        wcol = _column(table, f.weight_column, path).combine_chunks()
        wlens = pc.fill_null(pc.list_value_length(wcol), 0).to_numpy()
        if not np.array_equal(wlens, lens):
            row = int(np.flatnonzero(wlens != lens)[0])
            raise DataError(f"{path}: weights {f.weight_column!r} and ids {f.name!r} differ in "
                            f"length at row {row}")
        w = _numeric(pa.chunked_array([wcol.flatten()]), f.weight_column, path, np.float32)
        if not np.isfinite(w).all():
            raise DataError(f"{path}: weights {f.weight_column!r} hold non-finite values")
    else:
        w = np.ones(len(ids), dtype=np.float32)
    return lens, ids, w


def _labels(table: pa.Table, schema: Schema, path: str) -> tuple[np.ndarray, np.ndarray]:
    click = _numeric(_column(table, schema.click, path), schema.click, path, np.float32)
    conv = _numeric(_column(table, schema.conversion, path), schema.conversion, path, np.float32)
    for name, v in ((schema.click, click), (schema.conversion, conv)):
        bad = (v != 0) & (v != 1)
        if bad.any():
            raise DataError(f"{path}: label {name!r} has {int(bad.sum())} value(s) outside {{0, 1}} "
                            f"(first at data row {int(np.flatnonzero(bad)[0]) + 1})")
    orphan = (conv == 1) & (click == 0)
    if orphan.any():
        raise DataError(f"{path}: {int(orphan.sum())} row(s) have {schema.conversion}=1 with "
                        f"{schema.click}=0; a dataset must hold conversions only on clicks "
                        f"(first at data row {int(np.flatnonzero(orphan)[0]) + 1})")
    return click, conv


def read_table(files: list[Path], schema: Schema) -> pa.Table:
    tables = []
    for p in files:
        try:
            t = pq.read_table(p, columns=[c for c in schema.columns()
                                          if c in pq.read_schema(p).names])
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"{p}: cannot read Parquet ({e})") from None
        tables.append(t)
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowInvalid as e:
        raise DataError(f"{files[0].parent}: shards do not share one schema ({e})") from None


def encode_table(table: pa.Table, schema: Schema, path: str = "<table>",
                 labels: bool = True) -> EncodedSplit:
    """Turn an encoded Arrow table into an :class:`EncodedSplit`, validating it."""
    n = table.num_rows
    cats = [_numeric(_column(table, f.name, path), f.name, path, np.int64)
            for f in schema.categorical]
    for f, ids in zip(schema.categorical, cats):
        _check_ids(ids, f, path)
    cat = np.stack(cats, axis=1) if cats else np.zeros((n, 0), dtype=np.int64)

    bag_ptr, bag_ids, bag_w = _interleave_bags(
        [_read_bags(table, f, path) for f in schema.multi_categorical], n)

    dense_cols = [_numeric(_column(table, f.name, path), f.name, path, np.float32)
                  for f in schema.dense]
    for f, v in zip(schema.dense, dense_cols):
        if not np.isfinite(v).all():
            raise DataError(f"{path}: dense feature {f.name!r} has non-finite values")
    dense = np.stack(dense_cols, axis=1) if dense_cols else np.zeros((n, 0), dtype=np.float32)

    if labels:
        click, conv = _labels(table, schema, path)
    else:
        click = conv = np.zeros(n, dtype=np.float32)

    def optional(name: str | None, dtype: type) -> np.ndarray | None:
        if not name or name not in table.column_names:
            return None
        return _numeric(table.column(name), name, path, dtype)

    truth = {k: optional(getattr(schema, k), np.float32) for k in ("true_ctr", "true_cvr")}
    for k, v in truth.items():
        if v is not None and ((v < 0) | (v > 1) | ~np.isfinite(v)).any():
            raise DataError(f"{path}: truth column {k!r} has values outside [0, 1]")
    return EncodedSplit(schema, cat, bag_ptr, bag_ids, bag_w, dense, click, conv,
                        optional(schema.group, np.int64), truth["true_ctr"], truth["true_cvr"])


def _interleave_bags(fields: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-field CSR bags into one row-major pool (row 0 field 0, row 0 field 1, ...)."""
    fm = len(fields)
    if fm == 0:
        return (np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64),
                np.zeros(0, dtype=np.float32))
    lens = np.stack([f[0] for f in fields], axis=1)  # [n, Fm]
    src_start = np.stack([np.concatenate([[0], np.cumsum(f[0])[:-1]]) if n else
                          np.zeros(0, np.int64) for f in fields], axis=1)
    field_base = np.concatenate([[0], np.cumsum([len(f[1]) for f in fields])[:-1]])
    src_start = (src_start + field_base[None, :]).ravel()
    flat_lens = lens.ravel()
    ptr = np.zeros(n * fm + 1, dtype=np.int64)
    np.cumsum(flat_lens, out=ptr[1:])
    pos = np.repeat(src_start - ptr[:-1], flat_lens) + np.arange(ptr[-1], dtype=np.int64)
    ids = np.concatenate([f[1] for f in fields])[pos]
    w = np.concatenate([f[2] for f in fields])[pos]
    return ptr, ids, w


def load_split(data_dir: str | Path, split: str, schema: Schema | None = None) -> EncodedSplit:
    """Read one split of a dataset directory into memory."""
    schema = schema or load_schema(data_dir)
    files = split_files(data_dir, split)
    return encode_table(read_table(files, schema), schema, path=str(files[0] if len(files) == 1
                                                                    else files[0].parent))


# ---------------------------------------------------------------------------
# writing


def write_dataset(out_dir: str | Path, schema: Schema, splits: dict[str, pa.Table],
                  vocabularies: dict[str, list[str]] | None = None,
                  extra_files: dict[str, dict] | None = None) -> Path:
    """Write a dataset directory; every split is validated by reading it back."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in splits.items():
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {SPLITS}")
        encode_table(table, schema, path=f"<{name} split being written>")
        pq.write_table(table, out / f"{name}.parquet", compression="zstd")
    schema.save(out / SCHEMA_FILE)
    if vocabularies is not None:
        (out / VOCAB_FILE).write_text(json.dumps(vocabularies))
    for fname, payload in (extra_files or {}).items():
        (out / fname).write_text(json.dumps(payload, indent=2) + "\n")
    return out
