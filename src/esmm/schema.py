"""The dataset schema: which columns are features, labels, groups and truth.

A dataset directory holds ``schema.json`` (this module) beside Parquet splits
(``esmm.data``). The schema is the single source of truth for how a column is
read, how large its embedding table is, and how raw values are encoded at
serving time, so it is saved with every trained run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

FeatureKind = Literal["categorical", "multi_categorical", "dense"]
FEATURE_KINDS: tuple[str, ...] = ("categorical", "multi_categorical", "dense")
SCHEMA_VERSION = 1
RESERVED_COLUMNS = ("click", "conversion", "group", "true_ctr", "true_cvr")
_TABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class SchemaError(ValueError):
    """A schema file or schema object is inconsistent."""


def _reject_unknown(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SchemaError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


@dataclass(frozen=True)
class Feature:
    """One input feature.

    - ``categorical``: one integer id per row in ``[0, vocab_size)``; 0 means unknown/rare.
    - ``multi_categorical``: a variable-length bag of ids per row (Parquet ``list<int>``),
      with optional per-id float weights in the column ``weight_column`` (same lengths).
    - ``dense``: one float per row.

    ``encoding`` says how raw values become ids at prediction time: ``vocab`` looks
    them up in the saved vocabulary, ``identity`` takes integer ids as they are
    (ids outside the vocabulary become 0).

    ``table`` says where the feature is stored: ``None`` (the default) in the
    impression table (the split files), or the name of a side table (see
    :attr:`Schema.side_tables`) whose row each impression addresses through a
    key column -- e.g. user features stored once per user instead of once per
    impression. The model sees the same input either way.
    """

    name: str
    kind: FeatureKind
    vocab_size: int = 0
    weight_column: str | None = None
    encoding: Literal["vocab", "identity"] = "vocab"
    table: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise SchemaError("feature name must be non-empty")
        if self.kind not in FEATURE_KINDS:
            raise SchemaError(f"feature {self.name!r}: kind {self.kind!r} not in {FEATURE_KINDS}")
        if self.kind == "dense":
            if self.vocab_size or self.weight_column:
                raise SchemaError(f"dense feature {self.name!r} takes no vocab_size or weight_column")
        elif self.vocab_size < 2:
            raise SchemaError(
                f"feature {self.name!r}: vocab_size must be >= 2 (id 0 is reserved for unknown), "
                f"got {self.vocab_size}"
            )
        if self.weight_column is not None and self.kind != "multi_categorical":
            raise SchemaError(f"feature {self.name!r}: only multi_categorical features have weights")
        if self.encoding not in ("vocab", "identity"):
            raise SchemaError(f"feature {self.name!r}: encoding must be 'vocab' or 'identity'")
        if self.table is not None and (not isinstance(self.table, str)
                                       or not _TABLE_NAME.fullmatch(self.table)):
            raise SchemaError(f"feature {self.name!r}: table must be null or a side-table name "
                              f"(letters, digits, '_', '.', '-'), got {self.table!r}")

    @property
    def is_sparse(self) -> bool:
        return self.kind != "dense"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind != "dense":
            out["vocab_size"] = self.vocab_size
            out["encoding"] = self.encoding
        if self.weight_column:
            out["weight_column"] = self.weight_column
        if self.table is not None:
            out["table"] = self.table
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Feature:
        _reject_unknown(data, {"name", "kind", "vocab_size", "weight_column", "encoding", "table"},
                        f"feature {data.get('name', '?')!r}")
        return cls(**data)


@dataclass(frozen=True)
class Schema:
    """Features plus the label, group and truth columns of a dataset.

    ``side_tables`` maps a side-table name to the impression-table column that
    holds, per impression, the int64 row index into that side table (e.g.
    ``{"user": "user_row"}``). Features with ``table=<name>`` live in the side
    table (``DIR/side/<name>.parquet``), stored once per entity instead of once
    per impression. Labels, group and truth columns are always in the
    impression table.
    """

    features: tuple[Feature, ...]
    click: str = "click"
    conversion: str = "conversion"
    group: str | None = None
    true_ctr: str | None = None
    true_cvr: str | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    side_tables: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "side_tables", dict(self.side_tables or {}))
        if not self.features:
            raise SchemaError("schema has no features")
        for name, key in self.side_tables.items():
            if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
                raise SchemaError(f"side table name {name!r} must be letters, digits, '_', '.', "
                                  "'-' (it names the file side/<name>.parquet)")
            if not isinstance(key, str) or not key:
                raise SchemaError(f"side table {name!r}: key column must be a non-empty string, "
                                  f"got {key!r}")
        names: set[str] = set()
        for f in self.features:
            if f.name in names:
                raise SchemaError(f"feature {f.name!r} appears twice in the schema")
            names.add(f.name)
            if f.table is not None and f.table not in self.side_tables:
                raise SchemaError(f"feature {f.name!r}: table {f.table!r} is not a side table of "
                                  f"the schema (side_tables: {sorted(self.side_tables)})")
        for name in self.side_tables:
            if not any(f.table == name for f in self.features):
                raise SchemaError(f"side table {name!r} holds no feature")
        seen: set[str] = set()
        for col in self.columns():
            if col in seen:
                raise SchemaError(f"column {col!r} appears twice in the schema")
            seen.add(col)
        for name in self.side_tables:
            for col in self.side_columns(name):
                if col in seen:
                    raise SchemaError(f"column {col!r} appears twice in the schema "
                                      f"(side table {name!r})")
                seen.add(col)

    # Views used everywhere downstream; kept as properties so order is schema order.
    @property
    def categorical(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == "categorical")

    @property
    def multi_categorical(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == "multi_categorical")

    @property
    def dense(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == "dense")

    @property
    def has_truth(self) -> bool:
        return self.true_ctr is not None and self.true_cvr is not None

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature named {name!r}")

    def table_features(self, table: str | None) -> tuple[Feature, ...]:
        """The features stored in one table (``None``: the impression table), in schema order."""
        return tuple(f for f in self.features if f.table == table)

    def columns(self) -> list[str]:
        """Every impression-table (split file) column the schema reads, in a stable order:
        impression-side features (+ weight columns), side-table key columns, labels, group,
        truth."""
        cols: list[str] = []
        for f in self.table_features(None):
            cols.append(f.name)
            if f.weight_column:
                cols.append(f.weight_column)
        cols += list(self.side_tables.values())
        cols += [self.click, self.conversion]
        cols += [c for c in (self.group, self.true_ctr, self.true_cvr) if c]
        return cols

    def side_columns(self, table: str) -> list[str]:
        """Every column of side table ``table``: its features (+ weight columns), schema order."""
        if table not in self.side_tables:
            raise KeyError(f"no side table named {table!r} "
                           f"(side_tables: {sorted(self.side_tables)})")
        cols: list[str] = []
        for f in self.table_features(table):
            cols.append(f.name)
            if f.weight_column:
                cols.append(f.weight_column)
        return cols

    def flattened(self) -> Schema:
        """The same features, all in the impression table (no side tables): the schema of the
        denormalised rows (e.g. raw rows to score). Feature order -- hence the model input --
        is unchanged."""
        if not self.side_tables:
            return self
        return replace(self, features=tuple(replace(f, table=None) for f in self.features),
                       side_tables={})

    def to_dict(self) -> dict[str, Any]:
        out = {
            "version": SCHEMA_VERSION,
            "description": self.description,
            "features": [f.to_dict() for f in self.features],
            "labels": {"click": self.click, "conversion": self.conversion},
            "group": self.group,
            "truth": {"true_ctr": self.true_ctr, "true_cvr": self.true_cvr},
            "extra": self.extra,
        }
        if self.side_tables:  # absent when empty: schemas without side tables are unchanged
            out["side_tables"] = dict(self.side_tables)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schema:
        _reject_unknown(data, {"version", "description", "features", "labels", "group", "truth",
                               "extra", "side_tables"}, "schema")
        side = data.get("side_tables") or {}
        if not isinstance(side, dict):
            raise SchemaError(f"schema.side_tables must be an object {{name: key column}}, "
                              f"got {type(side).__name__}")
        version = data.get("version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise SchemaError(f"schema version {version} is not supported (expected {SCHEMA_VERSION})")
        labels = data.get("labels", {})
        _reject_unknown(labels, {"click", "conversion"}, "schema.labels")
        truth = data.get("truth") or {}
        _reject_unknown(truth, {"true_ctr", "true_cvr"}, "schema.truth")
        return cls(
            features=tuple(Feature.from_dict(f) for f in data["features"]),
            click=labels.get("click", "click"),
            conversion=labels.get("conversion", "conversion"),
            group=data.get("group"),
            true_ctr=truth.get("true_ctr"),
            true_cvr=truth.get("true_cvr"),
            description=data.get("description", ""),
            extra=data.get("extra") or {},
            side_tables=side,
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SchemaError(f"{path}: no schema file") from None
        except json.JSONDecodeError as e:
            raise SchemaError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(data)
        except (SchemaError, TypeError, KeyError) as e:
            raise SchemaError(f"{path}: {e}") from None
