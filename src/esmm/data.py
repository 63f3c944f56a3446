"""Encoded datasets on disk (Parquet) and in memory (contiguous NumPy arrays).

On disk a dataset is a directory::

    DIR/schema.json            # esmm.schema.Schema
    DIR/vocabularies.json      # optional: raw value -> id maps (esmm.vocab)
    DIR/train.parquet          # or DIR/train/*.parquet (shards, read in name order)
    DIR/valid.parquet
    DIR/test.parquet
    DIR/side/<name>.parquet    # or DIR/side/<name>/*.parquet: one per side table of the schema

A split file holds one row per impression (the *impression table*). A schema may
put some features in *side tables* (``Schema.side_tables``, ``Feature.table``):
e.g. user features, stored once per user in ``DIR/side/user.parquet`` and shared
by every split, and addressed from each impression by an int64 key column
(``user_row``: row ``i`` of the side table is index ``i``). The batches the model
sees are the same as for the denormalised table.

In memory a split becomes an :class:`EncodedSplit`: one int64 matrix for the
categorical fields, one CSR pool for every multi-valued field (bags stored
row-major, so a contiguous range of rows is a contiguous range of the pool and
needs no gather), one float32 matrix for dense fields, and the label vectors.
Side tables are held once (:class:`SideTable`, shared by the splits of one
dataset) and gathered through the key at batch time. Batches are cut from these
arrays with vectorised slicing or fancy indexing, never a Python loop over rows.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from esmm.schema import Feature, Schema

if TYPE_CHECKING:
    import torch

# torch is imported where batches are cut (first use), not with this module: writers of
# datasets (esmm aliccp prepare, esmm import) need only the file layout and validation.

SPLITS = ("train", "valid", "test")
SCHEMA_FILE = "schema.json"
VOCAB_FILE = "vocabularies.json"
SIDE_DIR = "side"
_INTERLEAVE_BLOCK = 1 << 22  # bag entries moved at once while building a CSR pool


class DataError(ValueError):
    """A dataset file is missing, malformed or inconsistent with its schema."""


# ---------------------------------------------------------------------------
# locating files


def _single_or_shards(single: Path, folder: Path, what: str, missing: str) -> list[Path]:
    """``single`` if it is a file, else the ``*.parquet`` shards of ``folder`` in name order."""
    if single.is_file():
        return [single]
    if folder.is_dir():
        shards = sorted(folder.glob("*.parquet"))
        if shards:
            return shards
        raise DataError(f"{folder}: {what} folder holds no .parquet shards")
    raise DataError(missing)


def split_files(data_dir: str | Path, split: str) -> list[Path]:
    """The Parquet file(s) of one split: ``split.parquet`` or ``split/*.parquet``."""
    data_dir = Path(data_dir)
    single, folder = data_dir / f"{split}.parquet", data_dir / split
    return _single_or_shards(single, folder, "split", f"{data_dir}: no split {split!r} "
                             f"(expected {single.name} or {folder.name}/)")


def side_files(data_dir: str | Path, name: str) -> list[Path]:
    """The Parquet file(s) of side table ``name``: ``side/name.parquet`` or
    ``side/name/*.parquet`` (shards, read in name order)."""
    side = Path(data_dir) / SIDE_DIR
    single, folder = side / f"{name}.parquet", side / name
    return _single_or_shards(single, folder, "side table", f"{data_dir}: no side table "
                             f"{name!r} (expected {SIDE_DIR}/{single.name} or {SIDE_DIR}/{name}/)")


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


@dataclass(eq=False)
class SideTable:
    """One side table in memory, rows addressed by position (row i = key i).

    Arrays hold the table's own features (``features``, schema order within each
    kind), in the same layout as an :class:`EncodedSplit`: ``cat`` [m, Fc_t] int64,
    a row-major CSR pool of its bags (``bag_ptr`` [m*Fm_t + 1]; ids int32 when the
    vocabularies allow, to halve the largest array) and ``dense`` [m, Fd_t].
    """

    name: str
    features: tuple[Feature, ...]
    n_rows: int
    cat: np.ndarray
    bag_ptr: np.ndarray
    bag_ids: np.ndarray
    bag_weights: np.ndarray
    dense: np.ndarray
    path: str = "<side table>"

    @classmethod
    def from_table(cls, table: pa.Table, name: str, features: tuple[Feature, ...],
                   path: str = "<side table>") -> SideTable:
        """Encode (and validate) an Arrow table holding a side table's feature columns."""
        sizes = [f.vocab_size for f in features if f.kind == "multi_categorical"]
        small = max(sizes, default=0) <= np.iinfo(np.int32).max
        cat, (ptr, ids, w), dense = _encode_features(table, features, path,
                                                     np.int32 if small else np.int64)
        return cls(name, tuple(features), table.num_rows, cat, ptr, ids, w, dense, path)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.cat, self.bag_ptr, self.bag_ids, self.bag_weights,
                                      self.dense))


def _bag_index(rows: np.ndarray, fm: int) -> np.ndarray:
    """[len(rows), fm] index of each (row, field) bag in a row-major CSR pointer."""
    return rows[:, None] * fm + np.arange(fm, dtype=np.int64)


def _gather_csr(ptr: np.ndarray, fm: int, rows: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bag offsets in the output, pool position of every output entry, bag lengths) for the
    bags of ``rows`` (row-major); the positions index the pool that ``ptr`` points into."""
    bags = _bag_index(rows, fm).ravel()
    starts = ptr[bags]
    lens = ptr[bags + 1] - starts
    return _positions(starts, lens) + (lens,)


def _positions(starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of bags laid end to end, and the source position of every entry."""
    off = np.zeros(len(lens), dtype=np.int64)
    if len(lens) > 1:
        np.cumsum(lens[:-1], out=off[1:])
    total = int(lens.sum()) if len(lens) else 0
    # position of every kept id = its bag's start in the pool + rank inside the bag
    pos = np.repeat(starts - off, lens) + np.arange(total, dtype=np.int64)
    return off, pos


@dataclass
class EncodedSplit:
    """One split held as contiguous arrays (see module docstring).

    Without side tables every array covers every feature. With side tables
    (``side`` and ``keys`` non-empty), ``cat`` and the bag pool (``bag_ptr``,
    ``bag_ids``, ``bag_weights``; ``bag_ptr`` has ``n * Fm_i + 1`` entries) hold
    the *impression-table* features only; the side tables' features are read
    through ``keys[name]`` (row of ``side[name]`` for each impression) when a
    batch is cut. ``dense`` always holds every dense feature in schema order
    (side-table ones gathered at load: 4 bytes per row and feature).
    :meth:`batch` gives the same :class:`Batch` either way.
    """

    schema: Schema
    cat: np.ndarray  # [n, Fc] int64 (Fc: impression-table categorical features)
    bag_ptr: np.ndarray  # [n*Fm + 1] int64 CSR pointer over bags, row-major
    bag_ids: np.ndarray  # [nnz] int64
    bag_weights: np.ndarray  # [nnz] float32
    dense: np.ndarray  # [n, Fd] float32 (every dense feature)
    click: np.ndarray  # [n] float32
    conversion: np.ndarray  # [n] float32
    group: np.ndarray | None = None  # [n] int64
    true_ctr: np.ndarray | None = None  # [n] float32
    true_cvr: np.ndarray | None = None  # [n] float32
    keys: dict[str, np.ndarray] = field(default_factory=dict)  # side table -> [n] int64 row
    side: dict[str, SideTable] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = list(self.schema.side_tables)
        if sorted(self.side) != sorted(names) or sorted(self.keys) != sorted(names):
            raise DataError(f"side tables {sorted(self.side)} / keys {sorted(self.keys)} do not "
                            f"match the schema's {sorted(self.schema.side_tables)}")
        # where each batch column comes from: (table or None, output columns)
        cats, bags = self.schema.categorical, self.schema.multi_categorical
        self._cat_plan = [(t, np.array([i for i, f in enumerate(cats) if f.table == t], np.int64))
                          for t in [None, *names]]
        self._bag_plan = [(t, np.array([i for i, f in enumerate(bags) if f.table == t], np.int64))
                          for t in [None, *names]]
        self._fm_imp = len(self._bag_plan[0][1])
        # the bag pools, one virtual address space: impression pool, then each side pool
        self._pools: list[tuple[int, np.ndarray, np.ndarray]] = [(0, self.bag_ids,
                                                                  self.bag_weights)]
        base = len(self.bag_ids)
        for t in names:
            self._pools.append((base, self.side[t].bag_ids, self.side[t].bag_weights))
            base += len(self.side[t].bag_ids)

    def __len__(self) -> int:
        return int(self.click.shape[0])

    @property
    def n_bag_fields(self) -> int:
        """Bags per row in a :class:`Batch` (every multi_categorical feature)."""
        return len(self.schema.multi_categorical)

    def batch(self, rows: slice | np.ndarray) -> Batch:
        """Cut rows out as a :class:`Batch`; without side tables a slice avoids every gather."""
        if self.side:
            return self._side_batch(rows)
        import torch

        fm = self.n_bag_fields
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(len(self))
            ptr = self.bag_ptr[start * fm: stop * fm + 1]
            lo, hi = int(ptr[0]), int(ptr[-1])
            bag_ids, bag_w = self.bag_ids[lo:hi], self.bag_weights[lo:hi]
            bag_off = ptr[:-1] - lo
        else:
            rows = np.asarray(rows, dtype=np.int64)
            bag_off, pos, _ = _gather_csr(self.bag_ptr, fm, rows)
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

    def _side_batch(self, rows: slice | np.ndarray) -> Batch:
        import torch

        if isinstance(rows, slice):
            start, stop, _ = rows.indices(len(self))
            idx = np.arange(start, max(start, stop), dtype=np.int64)
        else:
            idx = rows = np.asarray(rows, dtype=np.int64)
        b = len(idx)
        keys = {t: k[rows] for t, k in self.keys.items()}
        cat = np.empty((b, len(self.schema.categorical)), np.int64)
        for t, cols in self._cat_plan:
            if len(cols):
                cat[:, cols] = self.cat[rows] if t is None else self.side[t].cat[keys[t]]
        fm = self.n_bag_fields
        starts = np.empty((b, fm), np.int64)
        lens = np.empty((b, fm), np.int64)
        for (t, cols), (base, _, _) in zip(self._bag_plan, self._pools):
            if not len(cols):
                continue
            ptr, r = (self.bag_ptr, idx) if t is None else (self.side[t].bag_ptr, keys[t])
            bags = _bag_index(r, len(cols))
            s = ptr[bags]
            lens[:, cols] = ptr[bags + 1] - s
            starts[:, cols] = s + base
        bag_off, pos = _positions(starts.ravel(), lens.ravel())
        bag_ids, bag_w = self._gather_pools(pos)
        return Batch(
            cat=torch.from_numpy(cat),
            bag_ids=torch.from_numpy(bag_ids),
            bag_offsets=torch.from_numpy(bag_off),
            bag_weights=torch.from_numpy(bag_w),
            dense=torch.from_numpy(np.ascontiguousarray(self.dense[rows])),
            click=torch.from_numpy(np.ascontiguousarray(self.click[rows])),
            conversion=torch.from_numpy(np.ascontiguousarray(self.conversion[rows])),
        )

    def _gather_pools(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids (int64) and weights at virtual pool positions ``pos`` (see ``_pools``): the
        largest pool is read at every position (clipped), the others then patch theirs."""
        used = [p for (_, cols), p in zip(self._bag_plan, self._pools) if len(cols)]
        used.sort(key=lambda p: -len(p[1]))
        base, ids, w = used[0] if used else (0, self.bag_ids, self.bag_weights)
        if not len(pos) or not len(ids):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        p = pos - base if base else pos
        out_ids = ids.take(p, mode="clip").astype(np.int64, copy=False)
        out_w = w.take(p, mode="clip")
        for base, ids, w in used[1:]:
            if not len(ids):
                continue
            sel = pos < base + len(ids)
            if base:
                sel &= pos >= base
            sel = np.flatnonzero(sel)
            p = pos[sel] - base
            out_ids[sel] = ids[p]
            out_w[sel] = w[p]
        return out_ids, out_w

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
        """A new split holding only ``rows`` (used e.g. for clicked-only views); side tables
        are shared, not copied."""
        rows = np.asarray(rows, dtype=np.int64)
        fm = self._fm_imp if self.side else self.n_bag_fields
        _, pos, lens = _gather_csr(self.bag_ptr, fm, rows)
        ptr = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=ptr[1:])
        opt = lambda a: None if a is None else a[rows]  # noqa: E731
        return EncodedSplit(self.schema, self.cat[rows], ptr, self.bag_ids[pos],
                            self.bag_weights[pos], self.dense[rows], self.click[rows],
                            self.conversion[rows], opt(self.group), opt(self.true_ctr),
                            opt(self.true_cvr), keys={t: k[rows] for t, k in self.keys.items()},
                            side=dict(self.side))


# ---------------------------------------------------------------------------
# reading


def _column(table: pa.Table, name: str, path: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise DataError(f"{path}: column {name!r} is missing (columns: {table.column_names})")
    return table.column(name)


def _numeric(col: pa.ChunkedArray, name: str, path: str, dtype: type | None) -> np.ndarray:
    """The column as a NumPy array of ``dtype`` (None: as stored), rejecting nulls."""
    if col.null_count:
        raise DataError(f"{path}: column {name!r} has {col.null_count} null value(s)")
    try:
        arr = col.to_numpy()
        if dtype is None:
            if not np.issubdtype(arr.dtype, np.number):
                raise TypeError(f"type {col.type}")
            return arr
        return arr.astype(dtype, copy=False)
    except (pa.ArrowInvalid, ValueError, TypeError) as e:
        raise DataError(f"{path}: column {name!r} is not numeric ({e})") from None


def _check_ids(ids: np.ndarray, f: Feature, path: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= f.vocab_size):
        bad = int(((ids < 0) | (ids >= f.vocab_size)).sum())
        raise DataError(f"{path}: feature {f.name!r} has {bad} id(s) outside [0, {f.vocab_size})")


def _read_bags(table: pa.Table, f: Feature, path: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lengths, ids (integers as stored: no int64 copy of int32 data) and weights of a
    multi-valued column."""
    col = _column(table, f.name, path).combine_chunks()
    if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
        raise DataError(f"{path}: multi_categorical feature {f.name!r} must be a list column, "
                        f"got {col.type}")
    lens = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
    ids = _numeric(pa.chunked_array([col.flatten()]), f.name, path, None)
    if not np.issubdtype(ids.dtype, np.signedinteger):
        ids = ids.astype(np.int64)
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


def _read_parquet(files: list[Path], columns: list[str]) -> pa.Table:
    tables = []
    for p in files:
        try:
            t = pq.read_table(p, columns=[c for c in columns if c in pq.read_schema(p).names])
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"{p}: cannot read Parquet ({e})") from None
        tables.append(t)
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowInvalid as e:
        raise DataError(f"{files[0].parent}: shards do not share one schema ({e})") from None


def read_table(files: list[Path], schema: Schema) -> pa.Table:
    """The impression-table columns of a split's files (``schema.columns()``)."""
    return _read_parquet(files, schema.columns())


def _encode_features(table: pa.Table, features: tuple[Feature, ...], path: str,
                     id_dtype: type = np.int64
                     ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """(cat [n, Fc] int64, CSR bag pool (ptr, ids, weights), dense [n, Fd] float32) of
    ``features`` (schema order within each kind), validated."""
    n = table.num_rows
    cat_f = [f for f in features if f.kind == "categorical"]
    cats = [_numeric(_column(table, f.name, path), f.name, path, np.int64) for f in cat_f]
    for f, ids in zip(cat_f, cats):
        _check_ids(ids, f, path)
    cat = np.stack(cats, axis=1) if cats else np.zeros((n, 0), dtype=np.int64)
    del cats
    pool = _interleave_bags([_read_bags(table, f, path) for f in features
                             if f.kind == "multi_categorical"], n, id_dtype)
    dense_f = [f for f in features if f.kind == "dense"]
    dense_cols = [_numeric(_column(table, f.name, path), f.name, path, np.float32)
                  for f in dense_f]
    for f, v in zip(dense_f, dense_cols):
        if not np.isfinite(v).all():
            raise DataError(f"{path}: dense feature {f.name!r} has non-finite values")
    dense = np.stack(dense_cols, axis=1) if dense_cols else np.zeros((n, 0), dtype=np.float32)
    return cat, pool, dense


def _side_keys(table: pa.Table, schema: Schema, side: dict[str, SideTable], path: str
               ) -> dict[str, np.ndarray]:
    missing = sorted(set(schema.side_tables) - set(side))
    if missing:
        raise DataError(f"{path}: side table(s) {missing} of the schema were not given")
    keys = {}
    for name, key_col in schema.side_tables.items():
        t = side[name]
        if t.features != schema.table_features(name):
            raise DataError(f"{t.path}: side table {name!r} was encoded for other features than "
                            "the schema's")
        k = _numeric(_column(table, key_col, path), key_col, path, np.int64)
        bad = (k < 0) | (k >= t.n_rows)
        if bad.any():
            raise DataError(f"{path}: key column {key_col!r} has {int(bad.sum())} value(s) "
                            f"outside [0, {t.n_rows}) (side table {name!r}, {t.path}, has "
                            f"{t.n_rows} rows; first at data row {int(np.flatnonzero(bad)[0]) + 1}"
                            f", value {int(k[bad][0])})")
        keys[name] = k
    return keys


def encode_table(table: pa.Table, schema: Schema, path: str = "<table>",
                 labels: bool = True, side: dict[str, SideTable] | None = None) -> EncodedSplit:
    """Turn an encoded Arrow table into an :class:`EncodedSplit`, validating it.

    For a schema with side tables, ``side`` holds them (see :func:`load_side_tables`)
    and ``table`` the impression-table columns with the key columns. Without
    ``side``, a table that holds every side-table feature inline (denormalised rows,
    e.g. raw rows encoded for scoring) is read with :meth:`Schema.flattened`: the
    batches are the same.
    """
    if schema.side_tables and side is None:
        inline = [c for t in schema.side_tables for c in schema.side_columns(t)]
        missing = [c for c in inline if c not in table.column_names]
        if missing:
            raise DataError(f"{path}: the schema stores features in side table(s) "
                            f"{sorted(schema.side_tables)}; read the split with load_split (which "
                            f"reads DIR/{SIDE_DIR}/) or pass side=, or give every feature column "
                            f"inline (missing: {missing})")
        schema = schema.flattened()
    n = table.num_rows
    keys = _side_keys(table, schema, side, path) if schema.side_tables else {}
    cat, (bag_ptr, bag_ids, bag_w), dense_imp = _encode_features(
        table, schema.table_features(None), path)
    if schema.side_tables and any(f.table for f in schema.dense):
        dense = np.empty((n, len(schema.dense)), np.float32)
        for t in [None, *schema.side_tables]:
            cols = [i for i, f in enumerate(schema.dense) if f.table == t]
            if cols:
                dense[:, cols] = dense_imp if t is None else side[t].dense[keys[t]]
    else:
        dense = dense_imp

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
                        optional(schema.group, np.int64), truth["true_ctr"], truth["true_cvr"],
                        keys=keys, side={t: side[t] for t in schema.side_tables} if keys else {})


def _interleave_bags(fields: list, n: int, id_dtype: type = np.int64
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-field CSR bags ``[(lens, ids, weights), ...]`` into one row-major pool
    (row 0 field 0, row 0 field 1, ...).

    Each field's entries are scattered to their place in blocks, and each field is
    released from ``fields`` once placed, so the temporaries stay small beside the pool."""
    fm = len(fields)
    if fm == 0:
        return (np.zeros(1, dtype=np.int64), np.zeros(0, dtype=id_dtype),
                np.zeros(0, dtype=np.float32))
    lens = np.stack([f[0] for f in fields], axis=1)  # [n, Fm]
    ptr = np.zeros(n * fm + 1, dtype=np.int64)
    np.cumsum(lens.ravel(), out=ptr[1:])
    total = int(ptr[-1])
    ids = np.empty(total, dtype=id_dtype)
    w = np.empty(total, dtype=np.float32)
    for j in range(fm):
        flens, fids, fw = fields[j]
        fields[j] = None
        src = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(flens, out=src[1:])
        dst = ptr[j:n * fm:fm]  # start of (row, field j) in the pool
        lo = 0
        while lo < n:  # rows in blocks of about _INTERLEAVE_BLOCK entries
            hi = int(np.searchsorted(src, src[lo] + _INTERLEAVE_BLOCK, side="right"))
            hi = min(n, max(hi - 1, lo + 1))
            ln = flens[lo:hi]
            pos = np.repeat(dst[lo:hi] - (src[lo:hi] - src[lo]), ln) + np.arange(
                src[hi] - src[lo], dtype=np.int64)
            ids[pos] = fids[src[lo]:src[hi]]
            w[pos] = fw[src[lo]:src[hi]]
            lo = hi
    return ptr, ids, w


# Side tables already in memory, shared by the splits of a dataset while any of them lives
# (api.train loads train, valid and test one after another: the user table is read once).
_SIDE_CACHE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def load_side_tables(data_dir: str | Path, schema: Schema) -> dict[str, SideTable]:
    """The schema's side tables of a dataset directory (``DIR/side/<name>.parquet``), encoded
    and validated; reused while a split loaded earlier from the same files still holds them."""
    out = {}
    for name in schema.side_tables:
        files = side_files(data_dir, name)
        feats = schema.table_features(name)
        stamp = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
        key = (stamp, tuple(json.dumps(f.to_dict(), sort_keys=True) for f in feats))
        table = _SIDE_CACHE.get(key)
        if table is None:
            where = str(files[0] if len(files) == 1 else files[0].parent)
            raw = _read_parquet(files, schema.side_columns(name))
            table = SideTable.from_table(raw, name, feats, where)
            del raw
            _SIDE_CACHE[key] = table
        out[name] = table
    return out


def load_split(data_dir: str | Path, split: str, schema: Schema | None = None) -> EncodedSplit:
    """Read one split of a dataset directory into memory (with the schema's side tables)."""
    schema = schema or load_schema(data_dir)
    files = split_files(data_dir, split)
    side = load_side_tables(data_dir, schema) if schema.side_tables else None
    return encode_table(read_table(files, schema), schema,
                        path=str(files[0] if len(files) == 1 else files[0].parent), side=side)


# ---------------------------------------------------------------------------
# writing


def write_dataset(out_dir: str | Path, schema: Schema, splits: dict[str, pa.Table],
                  vocabularies: dict[str, list[str]] | None = None,
                  extra_files: dict[str, dict] | None = None,
                  side_tables: dict[str, pa.Table] | None = None) -> Path:
    """Write a dataset directory; every split and side table is validated by reading it back.

    ``side_tables`` holds one Arrow table per side table of the schema (its feature
    columns; row i is key i), written once as ``DIR/side/<name>.parquet`` and
    shared by every split; each split then holds the key columns.
    """
    side_tables = side_tables or {}
    unknown = sorted(set(side_tables) - set(schema.side_tables))
    missing = sorted(set(schema.side_tables) - set(side_tables))
    if unknown or missing:
        raise DataError(f"side tables given {sorted(side_tables)} do not match the schema's "
                        f"{sorted(schema.side_tables)} (missing {missing}, unknown {unknown})")
    side = {name: SideTable.from_table(t, name, schema.table_features(name),
                                       path=f"<side table {name!r} being written>")
            for name, t in side_tables.items()}
    for name, table in splits.items():
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {SPLITS}")
        encode_table(table, schema, path=f"<{name} split being written>",
                     side=side if schema.side_tables else None)
    del side
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in splits.items():
        pq.write_table(table, out / f"{name}.parquet", compression="zstd")
    for name, table in side_tables.items():
        (out / SIDE_DIR).mkdir(exist_ok=True)
        pq.write_table(table.select(schema.side_columns(name)),
                       out / SIDE_DIR / f"{name}.parquet", compression="zstd")
    schema.save(out / SCHEMA_FILE)
    if vocabularies is not None:
        (out / VOCAB_FILE).write_text(json.dumps(vocabularies))
    for fname, payload in (extra_files or {}).items():
        (out / fname).write_text(json.dumps(payload, indent=2) + "\n")
    return out
