"""Import raw impression logs (CSV or Parquet) into an encoded dataset directory.

``esmm import`` / :func:`import_logs` turns your own logs into the format of
``esmm.data``: vocabularies are fitted on the training part of the train file
only (ids seen fewer than ``min_count`` times, and ids never seen, become 0),
the valid split is the *tail* of the train file (logs are in time order, so
validation mimics scoring the future), and the test file is encoded with the
train vocabularies. The encoding itself is :func:`esmm.vocab.encode_raw`, the
same function ``esmm predict`` uses, so a raw value always gets the same id.

The raw-file helpers here (:func:`raw_format`, :func:`raw_columns`,
:func:`csv_convert_options`) are shared with :mod:`esmm.predict`.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from esmm.data import SCHEMA_FILE, SPLITS, VOCAB_FILE, write_dataset
from esmm.schema import RESERVED_COLUMNS, Feature, Schema
from esmm.vocab import EncodingError, Vocabulary, encode_raw, split_bags, vocabularies_to_json

ORPHAN_POLICIES = ("zero", "drop", "error")
REPORT_FILE = "import_report.json"
WEIGHT_SUFFIX = "__weight"
# Bytes per CSV block: large enough that parsing runs at full speed, small
# enough that reading a header or streaming a file stays cheap.
CSV_BLOCK_BYTES = 1 << 22
_ORPHAN_ACTIONS = {"zero": "set conversion to 0", "drop": "dropped the rows",
                   "error": "stopped"}


class LogImportError(ValueError):
    """Raw logs or import settings cannot be turned into a dataset."""


# ---------------------------------------------------------------------------
# raw files (shared with esmm.predict)


def raw_format(path: Path, error: type[Exception] = LogImportError) -> str:
    """``"csv"`` or ``"parquet"``, from the file name."""
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise error(f"{path}: unknown file type; expected .csv, .csv.gz, .parquet or .pq")


def raw_columns(path: Path, error: type[Exception] = LogImportError) -> list[str]:
    """The column names of a raw file, reading only its header (CSV) or footer (Parquet)."""
    fmt = raw_format(path, error)
    if not path.is_file():
        raise error(f"{path}: no such file")
    try:
        if fmt == "parquet":
            return list(pq.ParquetFile(path).schema_arrow.names)
        # only the first block is parsed; its inferred types are thrown away
        with pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES)) as r:
            return list(r.schema.names)
    except (pa.ArrowInvalid, OSError) as e:
        raise error(f"{path}: cannot read as {fmt} ({e})") from None


def csv_convert_options(columns: list[str]) -> pacsv.ConvertOptions:
    """Read exactly ``columns``, all as text.

    Text keeps raw ids like ``"007"`` as tokens, and leaves numbers (dense
    features, labels) to our own parsers, which name the row of a bad cell
    instead of failing inside the CSV reader. Only an empty cell is null.
    """
    return pacsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                include_columns=list(columns), null_values=[""],
                                strings_can_be_null=True)


def check_columns(path: Path, available: list[str], wanted: list[tuple[str, str]],
                  error: type[Exception] = LogImportError) -> None:
    """Raise naming the file and the first missing column; ``wanted`` is (column, role)."""
    for col, role in wanted:
        if col not in available:
            raise error(f"{path}: {role} column {col!r} is missing; the file's columns are "
                        f"{available}")


def read_raw(path: Path, columns: list[str]) -> pa.Table:
    """A whole raw file, only ``columns`` (which must exist), CSV columns as text."""
    fmt = raw_format(path)
    try:
        if fmt == "parquet":
            return pq.read_table(path, columns=columns)
        return pacsv.read_csv(path, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                              convert_options=csv_convert_options(columns))
    except (pa.ArrowInvalid, OSError) as e:
        raise LogImportError(f"{path}: cannot read as {fmt} ({e})") from None


# ---------------------------------------------------------------------------
# the import specification


@dataclass(frozen=True)
class ImportSpec:
    """Which raw columns are features of which kind, which are labels, and policies."""

    categorical: tuple[str, ...] = ()
    multi_categorical: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()
    click: str = "click"
    conversion: str = "conversion"
    group: str | None = None
    min_count: int = 1
    valid_fraction: float = 0.1
    on_orphan_conversion: str = "zero"  # "zero" | "drop" | "error"

    def __post_init__(self) -> None:
        for kind in ("categorical", "multi_categorical", "dense"):
            object.__setattr__(self, kind, tuple(getattr(self, kind)))  # lists are fine too
        features = self.feature_columns
        if not features:
            raise LogImportError("no feature columns given (categorical, multi_categorical, dense)")
        seen: dict[str, str] = {}
        for kind, name in self._kinds():
            if not name:
                raise LogImportError(f"empty column name among the {kind} columns")
            if name in seen:
                where = "twice" if seen[name] == kind else f"as {seen[name]} and as {kind}"
                raise LogImportError(f"column {name!r} is listed {where}; list each column once")
            seen[name] = kind
        if self.click == self.conversion:
            raise LogImportError(f"click and conversion are the same column {self.click!r}")
        for role, col in (("click", self.click), ("conversion", self.conversion)):
            if col in seen:
                raise LogImportError(f"column {col!r} is the {role} label and cannot also be a "
                                     f"{seen[col]} feature")
        if self.group in (self.click, self.conversion):
            raise LogImportError(f"group column {self.group!r} is also a label column")
        for name in features:
            # the dataset stores labels and the group under these names
            if name in RESERVED_COLUMNS:
                raise LogImportError(f"feature column {name!r} has a name the dataset reserves "
                                     f"for {RESERVED_COLUMNS}; rename it in the raw logs")
        for name in self.multi_categorical:
            if name + WEIGHT_SUFFIX in seen:
                raise LogImportError(f"feature {name + WEIGHT_SUFFIX!r} clashes with the weight "
                                     f"column of multi_categorical feature {name!r}")
        if self.min_count < 1:
            raise LogImportError(f"min_count must be >= 1, got {self.min_count}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise LogImportError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if self.on_orphan_conversion not in ORPHAN_POLICIES:
            raise LogImportError(f"on_orphan_conversion must be one of {ORPHAN_POLICIES}, got "
                                 f"{self.on_orphan_conversion!r}")

    def _kinds(self) -> list[tuple[str, str]]:
        return ([("categorical", c) for c in self.categorical]
                + [("multi_categorical", c) for c in self.multi_categorical]
                + [("dense", c) for c in self.dense])

    @property
    def feature_columns(self) -> list[str]:
        return [name for _, name in self._kinds()]

    def wanted(self) -> list[tuple[str, str]]:
        """Every raw column the import reads, as (column, role), each column once."""
        out = [(name, kind) for kind, name in self._kinds()]
        out += [(self.click, "click label"), (self.conversion, "conversion label")]
        if self.group and self.group not in self.feature_columns:
            out.append((self.group, "group"))
        return out

    def schema(self, vocabs: dict[str, Vocabulary], description: str) -> Schema:
        """The dataset schema; features keep their raw column names and the kinds' order."""
        def size(name: str) -> int:
            # an embedding table needs the unknown row plus one; a feature with no
            # known token in train is all-unknown (the report warns about it)
            return max(2, vocabs[name].size)

        features = ([Feature(c, "categorical", size(c)) for c in self.categorical]
                    + [Feature(c, "multi_categorical", size(c), weight_column=c + WEIGHT_SUFFIX)
                       for c in self.multi_categorical]
                    + [Feature(c, "dense") for c in self.dense])
        return Schema(features=tuple(features), click="click", conversion="conversion",
                      group="group" if self.group else None, description=description)


# ---------------------------------------------------------------------------
# labels and groups


def _labels(table: pa.Table, column: str, path: Path) -> np.ndarray:
    """A raw 0/1 label column as int8; anything else (or an empty cell) is an error."""
    col = table.column(column)
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    if pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.int8())
    # compare as text: ints, floats (1.0 casts to "1") and CSV text alike
    text = pc.utf8_trim_whitespace(pc.cast(col, pa.string()))
    one = pc.is_in(text, value_set=pa.array(["1", "1.0"])).to_numpy(zero_copy_only=False)
    zero = pc.is_in(text, value_set=pa.array(["0", "0.0"])).to_numpy(zero_copy_only=False)
    bad = ~(one | zero)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = text[row].as_py()
        shown = "an empty cell" if value is None else repr(value)
        raise LogImportError(f"{path}: label column {column!r} has {int(bad.sum())} value(s) "
                             f"outside {{0, 1}} (first at data row {row + 1}: {shown})")
    return one.astype(np.int8)


def _group_ids(columns: list[tuple[pa.ChunkedArray, Path]], name: str) -> list[np.ndarray]:
    """Dictionary-encode the group column of every file with one shared dictionary."""
    texts = []
    for col, path in columns:
        if pa.types.is_dictionary(col.type):
            col = pc.cast(col, col.type.value_type)
        if col.null_count:
            row = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
            raise LogImportError(f"{path}: group column {name!r} is empty at data row {row + 1}")
        texts.append(pc.cast(col, pa.string()))
    dictionary = pc.unique(pa.chunked_array([c for t in texts for c in t.chunks], pa.string()))
    return [pc.index_in(t, value_set=dictionary).to_numpy().astype(np.int64) for t in texts]


# ---------------------------------------------------------------------------
# one raw file


@dataclass
class _RawFile:
    """A raw file read, its labels parsed and its orphan conversions handled."""

    path: Path
    table: pa.Table  # raw columns, every row of the file
    click: np.ndarray  # int8, every row
    conversion: np.ndarray  # int8, every row, orphans already zeroed
    keep: np.ndarray  # int64 indices of the rows that go into the dataset
    orphans: dict[str, Any]


def _read_file(path: Path, spec: ImportSpec, role: str) -> _RawFile:
    check_columns(path, raw_columns(path), spec.wanted())
    table = read_raw(path, [c for c, _ in spec.wanted()])
    if table.num_rows == 0:
        raise LogImportError(f"{path}: the {role} file has no data rows")
    click = _labels(table, spec.click, path)
    conv = _labels(table, spec.conversion, path)
    orphan = (conv == 1) & (click == 0)
    n_orphans = int(orphan.sum())
    policy = spec.on_orphan_conversion
    keep = np.arange(table.num_rows, dtype=np.int64)
    if n_orphans:
        what = (f"{n_orphans} row(s) have {spec.conversion}=1 with {spec.click}=0 (a conversion "
                f"without a click)")
        if policy == "error":
            raise LogImportError(f"{path}: {what}, first at data row "
                                 f"{int(np.flatnonzero(orphan)[0]) + 1}; fix the logs or choose "
                                 f"on_orphan_conversion 'zero' or 'drop'")
        if policy == "zero":
            conv = np.where(orphan, 0, conv).astype(np.int8)
        else:
            keep = np.flatnonzero(~orphan).astype(np.int64)
        # ESMM models conversions only through clicks, so these rows are changed
        # or dropped; say so, since it changes the data the user gave us
        print(f"esmm import: {path}: {what}; {_ORPHAN_ACTIONS[policy]} "
              f"(on_orphan_conversion={policy!r})", file=sys.stderr)
    orphans = {"file": str(path), "rows": n_orphans,
               "action": _ORPHAN_ACTIONS[policy] if n_orphans else "none"}
    return _RawFile(path, table, click, conv, keep, orphans)


def _fit_vocabularies(raw: _RawFile, fit_rows: np.ndarray, spec: ImportSpec
                      ) -> dict[str, Vocabulary]:
    """Vocabularies from the rows ``fit_rows`` of the train file only."""
    vocabs: dict[str, Vocabulary] = {}
    idx = pa.array(fit_rows)
    for name in spec.categorical:
        vocabs[name] = Vocabulary(spec.min_count).fit(raw.table.column(name).take(idx))
    for name in spec.multi_categorical:
        # split the whole column so a malformed bag is reported with its file row
        try:
            lists, _ = split_bags(raw.table.column(name), name, str(raw.path))
        except EncodingError as e:
            raise LogImportError(str(e)) from None
        vocabs[name] = Vocabulary(spec.min_count).fit(lists.take(idx).flatten())
    return vocabs


def _encode_file(raw: _RawFile, schema: Schema, vocabs: dict[str, Vocabulary],
                 group: np.ndarray | None) -> pa.Table:
    """Every row of the file encoded (errors name file rows), then only the kept rows."""
    try:
        encoded = encode_raw(raw.table, schema, vocabs, where=str(raw.path))
    except EncodingError as e:
        raise LogImportError(str(e)) from None
    encoded = (encoded.append_column("click", pa.array(raw.click, pa.int8()))
               .append_column("conversion", pa.array(raw.conversion, pa.int8())))
    if group is not None:
        encoded = encoded.append_column("group", pa.array(group, pa.int64()))
    return encoded.take(pa.array(raw.keep))


def _unknown_rates(raw: _RawFile, rows: np.ndarray, encoded: pa.Table, schema: Schema
                   ) -> dict[str, float]:
    """Per sparse feature: the share of non-empty raw values (bag tokens) mapped to id 0.

    ``rows`` are the raw-file rows behind ``encoded``'s rows. Id 0 covers both
    values never seen in train and values rarer than ``min_count``.
    """
    rates: dict[str, float] = {}
    for f in schema.categorical:
        present = ~pc.is_null(raw.table.column(f.name)).to_numpy(zero_copy_only=False)[rows]
        ids = encoded.column(f.name).to_numpy()
        rates[f.name] = float(((ids == 0) & present).sum() / max(1, present.sum()))
    for f in schema.multi_categorical:
        ids = encoded.column(f.name).combine_chunks().flatten().to_numpy()
        rates[f.name] = float((ids == 0).sum() / max(1, len(ids)))
    return rates


# ---------------------------------------------------------------------------
# the output directory


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise LogImportError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise LogImportError(f"{out}: dataset directory is not empty; pass --force "
                                 "(force=True) to replace its dataset files")
        # Remove the files a dataset consists of, so that a split this import does
        # not write (no test file, no valid tail) cannot survive from a previous one.
        for name in (SCHEMA_FILE, VOCAB_FILE, REPORT_FILE, *(f"{s}.parquet" for s in SPLITS)):
            (out / name).unlink(missing_ok=True)
        for split in SPLITS:
            if (out / split).is_dir():
                shutil.rmtree(out / split)


# ---------------------------------------------------------------------------
# the import


def import_logs(train_path: str | Path, test_path: str | Path | None, out_dir: str | Path,
                spec: ImportSpec, *, force: bool = False) -> dict[str, Any]:
    """Encode raw train (and test) logs into a dataset directory; return the report.

    The report (also saved as ``import_report.json`` in the dataset) holds rows,
    clicks and conversions per split, orphan conversions per file and what was
    done with them, the vocabulary size of each feature, and the share of values
    mapped to the unknown id 0 per split and feature.
    """
    train_path, out = Path(train_path), Path(out_dir)
    test = Path(test_path) if test_path is not None else None
    _prepare_out(out, force)  # fail before reading gigabytes
    warnings: list[str] = []

    train_raw = _read_file(train_path, spec, "train")
    test_raw = _read_file(test, spec, "test") if test is not None else None

    # valid = the last valid_fraction of the (kept) train rows: logs are in time order
    n = len(train_raw.keep)
    n_valid = int(round(n * spec.valid_fraction))
    n_fit = n - n_valid
    if n_fit < 1:
        raise LogImportError(f"{train_path}: {n} usable row(s) leave none for training after "
                             f"taking valid_fraction={spec.valid_fraction} as valid")
    if spec.valid_fraction > 0 and n_valid == 0:
        warnings.append(f"valid_fraction={spec.valid_fraction} of {n} rows is 0 rows: "
                        "no valid split written")
    fit_rows, valid_rows = train_raw.keep[:n_fit], train_raw.keep[n_fit:]

    vocabs = _fit_vocabularies(train_raw, fit_rows, spec)
    for name, v in vocabs.items():
        if v.size < 2:
            warnings.append(f"feature {name!r}: no value occurs >= {spec.min_count} time(s) in "
                            "train; every row gets the unknown id 0")
    schema = spec.schema(vocabs, description=f"imported by esmm import from {train_path}"
                         + (f" and {test}" if test is not None else ""))

    groups: list[np.ndarray | None] = [None, None]
    if spec.group:
        files = [train_raw] + ([test_raw] if test_raw is not None else [])
        ids = _group_ids([(f.table.column(spec.group), f.path) for f in files], spec.group)
        groups = ids + [None] * (2 - len(ids))

    train_enc = _encode_file(train_raw, schema, vocabs, groups[0])
    splits = {"train": train_enc.slice(0, n_fit)}
    rows = {"train": fit_rows}
    if n_valid:
        splits["valid"], rows["valid"] = train_enc.slice(n_fit), valid_rows
    if test_raw is not None:
        splits["test"] = _encode_file(test_raw, schema, vocabs, groups[1])
        rows["test"] = test_raw.keep

    report = _report(spec, train_raw, test_raw, splits, rows, vocabs, schema, warnings)
    write_dataset(out, schema, splits, vocabularies=vocabularies_to_json(vocabs),
                  extra_files={REPORT_FILE: report})
    for w in warnings:
        print(f"esmm import: warning: {w}", file=sys.stderr)
    return report


def _report(spec: ImportSpec, train_raw: _RawFile, test_raw: _RawFile | None,
            splits: dict[str, pa.Table], rows: dict[str, np.ndarray],
            vocabs: dict[str, Vocabulary], schema: Schema, warnings: list[str]
            ) -> dict[str, Any]:
    def total(t: pa.Table, col: str) -> int:
        return int(pc.sum(t.column(col)).as_py() or 0)

    orphans: dict[str, Any] = {"policy": spec.on_orphan_conversion, "train": train_raw.orphans}
    if test_raw is not None:
        orphans["test"] = test_raw.orphans
    raw_of = {"train": train_raw, "valid": train_raw, "test": test_raw}
    return {
        "train_file": str(train_raw.path),
        "test_file": str(test_raw.path) if test_raw is not None else None,
        "rows": {k: t.num_rows for k, t in splits.items()},
        "clicks": {k: total(t, "click") for k, t in splits.items()},
        "conversions": {k: total(t, "conversion") for k, t in splits.items()},
        "orphan_conversions": orphans,
        "features": {"categorical": list(spec.categorical),
                     "multi_categorical": list(spec.multi_categorical),
                     "dense": list(spec.dense)},
        "group": spec.group,
        "min_count": spec.min_count,
        "valid_fraction": spec.valid_fraction,
        "vocab_sizes": {f.name: f.vocab_size for f in schema.features if f.is_sparse},
        "known_tokens": {name: v.size - 1 for name, v in vocabs.items()},
        # share of non-empty values mapped to id 0 (unseen in train or below min_count)
        "unknown_rate": {k: _unknown_rates(raw_of[k], rows[k], t, schema)  # type: ignore[arg-type]
                         for k, t in splits.items()},
        "warnings": warnings,
    }
