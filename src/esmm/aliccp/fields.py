"""The 23 Ali-CCP fields, which side of the raw data they live on, and how they are stored.

Field ids are the dataset's own (``101``, ``109_14``, ...); they are also the
feature names of the prepared schema. Every field has a fixed kind:

- ``categorical``: at most one entry per line; a second entry makes the line bad.
  The raw float value of these entries is always 1.0 in the data and is not kept.
- ``multi_categorical``: any number of entries; every id is kept, in file order,
  with its float value as the weight (column ``<name>__weight``).

The cross features 508, 509, 702 and 853 (history x item combinations) carry a
real-valued strength (e.g. 0.69315 = ln 2). They are bags with the value as the
weight (853 crosses the multi-valued 210, so it can hold several entries), and
the sum of their values is also written as a dense column ``<name>__value`` so a
model that mean-pools bags still sees the magnitude (torch-rechub's D508...).
"""

from __future__ import annotations

USER_FIELDS: tuple[str, ...] = ("101", "121", "122", "124", "125", "126", "127", "128", "129",
                                "109_14", "110_14", "127_14", "150_14")
ITEM_FIELDS: tuple[str, ...] = ("205", "206", "207", "210", "216", "508", "509", "702", "853",
                                "301")
ALL_FIELDS: tuple[str, ...] = USER_FIELDS + ITEM_FIELDS
MULTI_FIELDS: frozenset[str] = frozenset({"109_14", "110_14", "127_14", "150_14", "210",
                                          "508", "509", "702", "853"})
CROSS_FIELDS: tuple[str, ...] = ("508", "509", "702", "853")
USER_ID_FIELD = "101"


def kind(name: str) -> str:
    return "multi_categorical" if name in MULTI_FIELDS else "categorical"


def weight_column(name: str) -> str:
    return f"{name}__weight"


def value_column(name: str) -> str:
    return f"{name}__value"


def field_key(name: str) -> int:
    """The field name's bytes as a little-endian integer (how the parser recognises it)."""
    raw = name.encode("ascii")
    if len(raw) > 8:
        raise ValueError(f"field name {name!r} longer than 8 bytes")
    return int.from_bytes(raw.ljust(8, b"\0"), "little")


#: field_key of every field, in ALL_FIELDS order: what both raw-line scanners match against
FIELD_KEYS: tuple[int, ...] = tuple(field_key(f) for f in ALL_FIELDS)


def key_name(key: int) -> str:
    return int(key).to_bytes(8, "little").rstrip(b"\0").decode("latin-1")
