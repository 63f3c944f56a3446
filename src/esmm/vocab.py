"""Vocabularies and the encoding of raw values into ids, vectorised with Arrow.

The same :func:`encode_raw` runs at import time and at prediction time, so a
raw value always becomes the same id. Id 0 is reserved for unknown and rare
values (seen fewer than ``min_count`` times in train, or never).

Raw formats:

- ``categorical``: any scalar column (ints or strings); null -> 0.
- ``multi_categorical``: a list column, or a string ``a|b|c`` with optional
  weights ``a:0.5|b:2``; an empty string or null is an empty bag.
- ``dense``: numbers; anything that does not parse is an error naming the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from esmm.schema import Feature, Schema

BAG_SEPARATOR = "|"
WEIGHT_SEPARATOR = ":"


class EncodingError(ValueError):
    """Raw input cannot be encoded (missing column, non-numeric value, bad label)."""


@dataclass
class Vocabulary:
    """Raw token -> id map fitted on training data (id 0 = unknown/rare)."""

    min_count: int = 1
    tokens_: list[str] | None = None

    def fit(self, values: pa.Array | pa.ChunkedArray) -> Vocabulary:
        counts = pc.value_counts(_as_strings(values).drop_null())
        if len(counts):
            tokens = counts.field("values").to_numpy(zero_copy_only=False)
            freq = counts.field("counts").to_numpy()
            keep = freq >= self.min_count
            tokens, freq = tokens[keep], freq[keep]
            # most frequent first, ties broken by token: the same data gives the same ids
            order = np.lexsort((tokens.astype(str), -freq))
            self.tokens_ = [str(t) for t in tokens[order]]
        else:
            self.tokens_ = []
        return self

    @property
    def size(self) -> int:
        """Rows of the embedding table: known tokens plus the unknown id 0."""
        return len(self._fitted()) + 1

    def _fitted(self) -> list[str]:
        if self.tokens_ is None:
            raise RuntimeError("Vocabulary is not fitted; call fit() first")
        return self.tokens_

    def transform(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        idx = pc.index_in(_as_strings(values), value_set=pa.array(self._fitted(), pa.string()))
        return pc.fill_null(pc.add(idx, 1), 0).to_numpy().astype(np.int32)

    def to_dict(self) -> dict[str, Any]:
        return {"min_count": self.min_count, "tokens": self._fitted()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(min_count=int(data["min_count"]), tokens_=list(data["tokens"]))


def _as_strings(values: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    if pa.types.is_floating(values.type):
        # 3.0 and 3 must be the same token whichever way a reader typed the column
        as_int = pc.cast(values, pa.int64(), safe=False)
        if pc.all(pc.or_kleene(pc.is_null(values), pc.equal(values, pc.cast(as_int, values.type)))
                  ).as_py():
            values = as_int
    if pa.types.is_dictionary(values.type):
        values = pc.cast(values, values.type.value_type)
    return pc.cast(values, pa.string())


def split_bags(col: pa.ChunkedArray, name: str, where: str, *, row_offset: int = 0
               ) -> tuple[pa.ListArray, np.ndarray | None]:
    """A raw multi-valued column as (list<string> tokens, float weights or None)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lists = col
        flat = _as_strings(lists.flatten()).combine_chunks()
        lists = pa.ListArray.from_arrays(_list_offsets(lists), flat)
        return lists, None
    strings = pc.fill_null(pc.cast(col, pa.string()), "")
    lists = pc.split_pattern(strings, BAG_SEPARATOR)
    # "" splits into [""]: an empty bag, not a bag holding the empty token
    lens = pc.list_value_length(lists).to_numpy().copy()
    flat = lists.flatten()
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    if not keep.all():
        row_of = np.repeat(np.arange(len(lens)), lens)
        lens = lens - np.bincount(row_of[~keep], minlength=len(lens))
        flat = flat.filter(pa.array(keep))
    offsets = np.zeros(len(lens) + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    has_weight = pc.match_substring(flat, WEIGHT_SEPARATOR)
    weights = None
    if pc.any(has_weight).as_py():
        parts = pc.extract_regex(flat, r"^(?P<tok>.*?)(?::(?P<w>[^:]*))?$")
        tok = pc.struct_field(parts, "tok")
        wstr = pc.utf8_trim_whitespace(pc.if_else(has_weight, pc.struct_field(parts, "w"), "1"))
        try:
            weights = pc.cast(wstr, pa.float32()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid as e:
            bad = np.flatnonzero(~pc.match_substring_regex(wstr, _NUMBER)
                                 .to_numpy(zero_copy_only=False))
            at = ""
            if len(bad):  # name the first offending token and the data row holding it
                row = int(np.searchsorted(offsets, bad[0], side="right")) - 1
                at = f" ({flat[int(bad[0])].as_py()!r} at data row {row_offset + row + 1})"
            raise EncodingError(f"{where}: multi-valued field {name!r} has a weight that is not a "
                                f"number{at}; expected 'id:weight|id:weight' ({e})") from None
        if not np.isfinite(weights).all():  # "nan"/"inf" parse, but no model can pool them
            i = int(np.flatnonzero(~np.isfinite(weights))[0])
            row = int(np.searchsorted(offsets, i, side="right")) - 1
            raise EncodingError(f"{where}: multi-valued field {name!r} has a non-finite weight "
                                f"{flat[i].as_py()!r} at data row {row_offset + row + 1}")
        flat = tok
    lists = pa.ListArray.from_arrays(pa.array(offsets), flat)
    return lists, weights


def _list_offsets(lists: pa.ListArray) -> pa.Array:
    lens = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
    offsets = np.zeros(len(lens) + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    return pa.array(offsets)


# What a dense cell may hold once trimmed (Arrow also takes nan/inf, refused later as non-finite)
_NUMBER = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"


def dense_values(col: pa.ChunkedArray, name: str, where: str, *, row_offset: int = 0
                 ) -> np.ndarray:
    """A raw dense column as float32; nulls are errors, strings must parse as numbers.

    ``row_offset`` is the data row of ``col[0]`` minus one, so that errors in a
    chunk of a streamed file name the row of the file, not of the chunk.
    """
    if col.null_count:
        first = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
        raise EncodingError(f"{where}: dense column {name!r} is empty at data row "
                            f"{row_offset + first + 1}")
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        # Arrow's parser refuses surrounding blanks (" 1.5"), which CSV writers produce
        col = pc.utf8_trim_whitespace(col)
        try:
            parsed = pc.cast(col, pa.float64())
        except pa.ArrowInvalid as e:
            ok = pc.match_substring_regex(col, _NUMBER).to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(~ok)
            if not len(bad):  # the regex accepted what Arrow refused: no row to point at
                raise EncodingError(f"{where}: dense column {name!r} is not numeric "
                                    f"({e})") from None
            row = int(bad[0])
            raise EncodingError(f"{where}: dense column {name!r} has a non-numeric value "
                                f"{col[row].as_py()!r} at data row {row_offset + row + 1} "
                                f"({len(bad)} bad value(s) in all)") from None
        col = parsed
    try:
        v = pc.cast(col, pa.float64()).to_numpy().astype(np.float32)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise EncodingError(f"{where}: dense column {name!r} is not numeric ({e})") from None
    if not np.isfinite(v).all():
        row = int(np.flatnonzero(~np.isfinite(v))[0])
        raise EncodingError(f"{where}: dense column {name!r} is not finite at data row "
                            f"{row_offset + row + 1}")
    return v


def encode_raw(table: pa.Table, schema: Schema, vocabularies: dict[str, Vocabulary] | None,
               *, where: str, raw_names: dict[str, str] | None = None,
               row_offset: int = 0) -> pa.Table:
    """Encode a table of raw feature values into the schema's id columns.

    ``raw_names`` maps a feature name to its column in ``table`` where they
    differ. Label, group and truth columns are not touched here. ``row_offset``
    (data rows before ``table[0]`` in its file) makes error row numbers refer to
    the file when ``table`` is one chunk of it.
    """
    raw_names = raw_names or {}
    out: dict[str, pa.Array] = {}
    for f in schema.features:
        src = raw_names.get(f.name, f.name)
        if src not in table.column_names:
            raise EncodingError(f"{where}: column {src!r} (feature {f.name!r}) is missing; "
                                f"columns are {table.column_names}")
        col = table.column(src)
        if f.kind == "dense":
            out[f.name] = pa.array(dense_values(col, src, where, row_offset=row_offset))
        elif f.kind == "categorical":
            out[f.name] = pa.array(_encode_ids(col, f, vocabularies, where))
        else:
            lists, weights = split_bags(col, src, where, row_offset=row_offset)
            ids = _encode_ids(lists.values, f, vocabularies, where)
            out[f.name] = pa.ListArray.from_arrays(lists.offsets, pa.array(ids))
            if f.weight_column:
                w = weights if weights is not None else np.ones(len(ids), dtype=np.float32)
                out[f.weight_column] = pa.ListArray.from_arrays(lists.offsets, pa.array(w))
    return pa.table(out)


def _encode_ids(values: pa.Array | pa.ChunkedArray, f: Feature,
                vocabularies: dict[str, Vocabulary] | None, where: str = "<table>") -> np.ndarray:
    if f.encoding == "identity":
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            values = pc.utf8_trim_whitespace(values)  # CSV readers hand ids over as text
        try:
            ids = pc.fill_null(pc.cast(values, pa.int64()), 0).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise EncodingError(f"{where}: feature {f.name!r} takes integer ids ({e})") from None
        # ids the model has no row for are unknown, exactly like unseen tokens
        return np.where((ids > 0) & (ids < f.vocab_size), ids, 0).astype(np.int32)
    if not vocabularies or f.name not in vocabularies:
        raise EncodingError(f"{where}: feature {f.name!r} needs a vocabulary and none was saved")
    return vocabularies[f.name].transform(values)


def vocabularies_to_json(vocabs: dict[str, Vocabulary]) -> dict[str, Any]:
    return {name: v.to_dict() for name, v in vocabs.items()}


def vocabularies_from_json(data: dict[str, Any] | None) -> dict[str, Vocabulary] | None:
    return None if data is None else {k: Vocabulary.from_dict(v) for k, v in data.items()}
