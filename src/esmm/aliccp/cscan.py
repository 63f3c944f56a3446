"""ctypes binding of the compiled raw-line scanner (``_rawscan.c``), with a NumPy fallback.

:func:`scan` returns ``None`` whenever the compiled path cannot answer -- no compiled
module (no compiler at install time, or ``ESMM_NO_C_SCAN=1``), a bad line, a value
Python cannot read -- and the caller then runs the NumPy path, which also explains
bad lines. So the two paths can never disagree about what a line holds: the C path
only ever handles blocks whose every line is good.
"""

from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from esmm.aliccp.fields import FIELD_KEYS

SCAN_OK = 0
MAX_ODD = 1 << 16  # values outside the exact fast path per block (signs, exponents)
_KINDS = {"skeleton": 0, "common": 1}
_KNOWN_KEYS = np.array(FIELD_KEYS, dtype=np.uint64)


@dataclass
class Scan:
    """Every line's header and every entry of one block, in file order."""

    header: dict[str, np.ndarray]
    n_ent: np.ndarray  # entries per line
    fkey: np.ndarray  # field id bytes as a little-endian uint64 (fields.field_key)
    fidx: np.ndarray  # int8 index of the field in fields.ALL_FIELDS, -1: not an Ali-CCP field
    ids: np.ndarray  # int64 feature ids
    vals: np.ndarray  # float64 values


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("ESMM_NO_C_SCAN"):
        return None
    try:
        from esmm.aliccp import _rawscan
    except ImportError:
        return None
    lib = ctypes.CDLL(_rawscan.__file__)
    p = ctypes.c_void_p
    i64 = ctypes.c_int64
    lib.esmm_scan_block.restype = ctypes.c_int
    lib.esmm_scan_block.argtypes = [p, i64, ctypes.c_int, i64, i64, i64, p, i64] + [p] * 15
    return lib


def read_float(raw: bytes) -> float | None:
    """A value as Python's float() reads it; None unless finite and within float32 range
    (values become float32 weights). The one reader of values off the fast paths."""
    try:
        v = float(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return v if math.isfinite(v) and abs(v) < 3e38 else None


def available() -> bool:
    """Whether the compiled scanner is built and enabled."""
    return _library() is not None


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def scan(b: np.ndarray, kind: str) -> Scan | None:
    """Scan a block (uint8, whole lines ending in a newline); None: use the NumPy path."""
    lib = _library()
    if lib is None:
        return None
    b = np.ascontiguousarray(b)
    max_lines = int(np.count_nonzero(b == 10))
    max_entries = int(np.count_nonzero(b == 2))  # exactly one 0x02 per entry of a good line
    sample_id = np.empty(max_lines, np.int64)
    click = np.empty(max_lines, np.int8)
    conversion = np.empty(max_lines, np.int8)
    cfi = np.empty(max_lines, np.uint64)
    n_ent = np.empty(max_lines, np.int64)
    fkey = np.empty(max_entries, np.uint64)
    fidx = np.empty(max_entries, np.int8)
    ids = np.empty(max_entries, np.int64)
    vals = np.empty(max_entries, np.float64)
    odd = [np.empty(MAX_ODD, np.int64) for _ in range(3)]
    counts = [np.zeros(1, np.int64) for _ in range(3)]
    rc = lib.esmm_scan_block(
        _ptr(b), b.size, _KINDS[kind], max_lines, max_entries, MAX_ODD, _ptr(_KNOWN_KEYS),
        len(_KNOWN_KEYS),
        *(_ptr(a) for a in (sample_id, click, conversion, cfi, n_ent, fkey, fidx, ids, vals,
                            *odd, *counts)))
    if rc != SCAN_OK:
        return None
    n, n_entries, n_odd = (int(c[0]) for c in counts)
    vals = vals[:n_entries]
    if n_odd:
        entry, start, end = (a[:n_odd] for a in odd)
        for i, s, e in zip(entry.tolist(), start.tolist(), end.tolist()):
            v = read_float(b[s:e].tobytes())
            if v is None:
                return None  # the NumPy path says which line and why
            vals[i] = v
    n_ent = n_ent[:n]
    header = {"cfi": cfi[:n], "feature_num": n_ent}
    if kind == "skeleton":
        header = {"sample_id": sample_id[:n], "click": click[:n], "conversion": conversion[:n],
                  **header}
    return Scan(header, n_ent, fkey[:n_entries], fidx[:n_entries], ids[:n_entries], vals)
