"""Score raw rows with a trained run: ``esmm predict`` and the :class:`Predictor` behind it.

Raw values are encoded exactly as at import (:func:`esmm.vocab.encode_raw` with
the run's saved vocabularies): values never seen in train, or rarer than the
import's ``min_count``, become the unknown id 0; identity-encoded features
(e.g. the simulated world's integer ids) take ids as they are, and ids the
model has no embedding row for become 0. Label columns in the input are
ignored.

:func:`predict_file` streams its input in chunks of ``chunk_rows`` rows and
writes each chunk's scores to Parquet before reading the next, so memory stays
flat however large the input is.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from esmm.artifacts import LoadedRun, load_run
from esmm.config import EVAL_BATCH_SIZE
from esmm.data import EncodedSplit, encode_table
from esmm.importer import (CSV_BLOCK_BYTES, check_columns, csv_convert_options, raw_columns,
                           raw_format)
from esmm.schema import Schema
from esmm.training import configure_threads, predict_split
from esmm.vocab import Vocabulary, encode_raw, vocabularies_from_json

ROW_ID = "row_id"


class PredictError(ValueError):
    """The input of a prediction cannot be read or lacks a column."""


class Predictor:
    """A trained run ready to score raw rows (tables whose columns are raw feature values)."""

    def __init__(self, run: LoadedRun, batch_size: int = EVAL_BATCH_SIZE,
                 precision: str = "fp32") -> None:
        self.run = run
        self.schema: Schema = run.schema
        self.vocabularies: dict[str, Vocabulary] | None = vocabularies_from_json(run.vocabularies)
        self.batch_size = batch_size
        self.precision = precision  # "bf16": hidden layers in bfloat16 (see predict_split)

    @classmethod
    def load(cls, run_dir: str | Path, precision: str = "fp32") -> Predictor:
        return cls(load_run(run_dir), precision=precision)

    @property
    def feature_columns(self) -> list[str]:
        """The raw columns an input must have (one per feature; weights ride in the bags)."""
        return [f.name for f in self.schema.features]

    def encode(self, table: pa.Table, *, where: str = "<table>", row_offset: int = 0
               ) -> tuple[pa.Table, EncodedSplit]:
        """Raw rows -> (the encoded Arrow table, the model's input arrays)."""
        encoded = encode_raw(table, self.schema, self.vocabularies, where=where,
                             row_offset=row_offset)
        return encoded, encode_table(encoded, self.schema, path=where, labels=False)

    def predict_table(self, table: pa.Table, *, where: str = "<table>", row_offset: int = 0
                      ) -> dict[str, np.ndarray]:
        """``p_ctr``, ``p_cvr`` and ``p_ctcvr`` (float32, one per row, in row order)."""
        return self._score(table, where, row_offset)[0]

    def _score(self, table: pa.Table, where: str, row_offset: int
               ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        encoded, split = self.encode(table, where=where, row_offset=row_offset)
        probs = predict_split(self.run.model, self.run.spec, split, self.batch_size,
                              self.precision)
        return probs, unknown_counts(table, encoded, self.schema)


def unknown_counts(raw: pa.Table, encoded: pa.Table, schema: Schema) -> dict[str, int]:
    """Per sparse feature: non-empty raw values (bag tokens) that became the unknown id 0."""
    counts: dict[str, int] = {}
    for f in schema.categorical:
        present = ~pc.is_null(raw.column(f.name)).to_numpy(zero_copy_only=False)
        counts[f.name] = int(((encoded.column(f.name).to_numpy() == 0) & present).sum())
    for f in schema.multi_categorical:
        ids = encoded.column(f.name).combine_chunks().flatten().to_numpy()
        counts[f.name] = int((ids == 0).sum())
    return counts


# ---------------------------------------------------------------------------
# streaming a file


def _rechunk(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Tables of exactly ``rows`` rows (the last may be shorter) from batches of any size."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)  # zero-copy; carried into the next chunk
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)


def _input_batches(path: Path, columns: list[str], chunk_rows: int
                   ) -> tuple[Iterator[pa.RecordBatch], pa.Schema]:
    """Batches of ``columns`` and their Arrow schema, without reading the file whole."""
    if raw_format(path, PredictError) == "parquet":
        pf = pq.ParquetFile(path)
        return (pf.iter_batches(batch_size=chunk_rows, columns=columns),
                pa.schema([pf.schema_arrow.field(c) for c in columns]))
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                            convert_options=csv_convert_options(columns))
    return iter(reader), reader.schema


def _resolve_id_column(path: Path, available: list[str], id_column: str | None) -> str | None:
    if id_column is not None:
        check_columns(path, available, [(id_column, "id")], PredictError)
        return id_column
    return "id" if "id" in available else None


def predict_file(run_dir: str | Path, input_path: str | Path, output_path: str | Path, *,
                 id_column: str | None = None, chunk_rows: int = 262144,
                 precision: str = "fp32") -> dict[str, Any]:
    """Score every row of a raw CSV/Parquet file; write ``id, p_ctr, p_cvr, p_ctcvr`` to Parquet.

    The id column is ``id_column`` copied as it is (CSV columns are read as
    text), else the input's ``id`` column if it has one, else ``row_id``
    (0-based int64). ``precision="bf16"`` scores the hidden layers in
    bfloat16 (see ``esmm.training.predict_split``). The output appears only once every row is scored; a
    failure leaves no partial file. Returns rows, seconds, rows per second and,
    per sparse feature, how many non-empty values were unknown to the model.
    """
    start = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    if chunk_rows < 1:
        raise PredictError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if input_path.resolve() == output_path.resolve():
        raise PredictError(f"{output_path}: output would overwrite the input")
    configure_threads(0)
    predictor = Predictor.load(run_dir, precision)
    available = raw_columns(input_path, PredictError)
    check_columns(input_path, available, [(c, "feature") for c in predictor.feature_columns],
                  PredictError)
    id_col = _resolve_id_column(input_path, available, id_column)
    columns = list(dict.fromkeys(predictor.feature_columns + ([id_col] if id_col else [])))
    try:
        batches, in_schema = _input_batches(input_path, columns, chunk_rows)
    except (pa.ArrowInvalid, OSError) as e:
        raise PredictError(f"{input_path}: cannot read ({e})") from None
    id_field = in_schema.field(id_col).with_name(id_col) if id_col else pa.field(ROW_ID, pa.int64())
    score_columns = predictor.run.spec.outputs
    out_schema = pa.schema([id_field] + [pa.field(k, pa.float32()) for k in score_columns])

    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.partial")
    rows = 0
    unknown = {f.name: 0 for f in predictor.schema.features if f.is_sparse}
    try:
        with pq.ParquetWriter(tmp, out_schema, compression="zstd") as writer:
            for chunk in _rechunk(_reading(batches, input_path), chunk_rows):
                probs, unk = predictor._score(chunk, str(input_path), rows)
                ids = (chunk.column(id_col) if id_col
                       else pa.array(np.arange(rows, rows + chunk.num_rows, dtype=np.int64)))
                writer.write_table(pa.table([ids] + [probs[k] for k in score_columns],
                                            schema=out_schema))
                for name, k in unk.items():
                    unknown[name] += k
                rows += chunk.num_rows
        os.replace(tmp, output_path)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    return {"input": str(input_path), "output": str(output_path), "rows": rows,
            "id_column": id_col or ROW_ID, "precision": precision, "seconds": round(seconds, 4),
            "rows_per_s": rows / max(seconds, 1e-9), "unknown_ids": unknown}


def _reading(batches: Iterator[pa.RecordBatch], path: Path) -> Iterator[pa.RecordBatch]:
    """``batches`` with a read error (a malformed line mid-file) named after the file."""
    try:
        yield from batches
    except (pa.ArrowInvalid, OSError) as e:
        raise PredictError(f"{path}: cannot read ({e})") from None
