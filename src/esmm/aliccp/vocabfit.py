"""Counting raw ids and turning counts into vocabularies (id 0 = rare or unseen).

Raw Ali-CCP feature ids are integers, so counts are kept as sorted NumPy
arrays (never Python dicts) and merged by concatenation + ``np.unique``.
Ids are ordered like :class:`esmm.vocab.Vocabulary` orders tokens (most
frequent first, ties by the token's text), so ``vocabularies.json`` written
here is read back by the rest of the package as ordinary vocabularies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LUT_SPAN = 1 << 26  # ids spanning fewer values than this are encoded with a lookup table


def count_ids(ids: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids, how often each occurs, or the sum of its weights). Negative ids skipped."""
    ids = ids[ids >= 0] if weights is None else ids
    if weights is not None:
        keep = ids >= 0
        ids, weights = ids[keep], weights[keep]
    if not len(ids):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo < max(4 * len(ids), 1 << 16):  # dense enough for bincount (no sort)
        c = np.bincount(ids - lo, weights=weights, minlength=hi - lo + 1)
        nz = np.flatnonzero(c)
        return (nz + lo).astype(np.int64), np.rint(c[nz]).astype(np.int64)
    uniq, inv = np.unique(ids, return_inverse=True)
    return uniq.astype(np.int64), np.rint(np.bincount(inv, weights=weights)).astype(np.int64)


def count_bag_ids(ptr: np.ndarray, ids: np.ndarray, row_weights: np.ndarray,
                  slice_ids: int = 20_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Counts of the ids of a CSR bag column (rows ``ptr``, ``ids``), each id weighted by its
    row's weight (a user line's number of impressions), in slices of about ``slice_ids`` ids
    so the repeated weights stay small."""
    n = len(row_weights)
    step = max(1, n // max(1, len(ids) // slice_ids + 1))
    c = Counter()
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        weights = np.repeat(row_weights[lo:hi].astype(np.float64), np.diff(ptr[lo:hi + 1]))
        c.add(*count_ids(ids[ptr[lo]:ptr[hi]], weights))
    return c.result()


class Counter:
    """Running counts of one field, merged every few batches to bound memory."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending = 0

    def add(self, uniq: np.ndarray, counts: np.ndarray) -> None:
        self.parts.append((uniq, counts))
        self.pending += len(uniq)
        if len(self.parts) > 16:
            self.parts = [self.result()]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if len(self.parts) == 1:
            return self.parts[0]
        uniq = np.concatenate([p[0] for p in self.parts])
        counts = np.concatenate([p[1] for p in self.parts])
        u, inv = np.unique(uniq, return_inverse=True)
        return u, np.bincount(inv, weights=counts).astype(np.int64)


@dataclass
class FieldVocab:
    """Raw id -> id for one field: ``tokens[i]`` gets id ``i + 1``."""

    name: str
    min_count: int
    tokens: np.ndarray  # int64 raw ids in id order
    counts: np.ndarray  # their train counts

    @classmethod
    def fit(cls, name: str, uniq: np.ndarray, counts: np.ndarray, min_count: int) -> FieldVocab:
        keep = counts >= min_count
        uniq, counts = uniq[keep], counts[keep]
        order = np.lexsort((uniq.astype(str), -counts))  # same order as esmm.vocab.Vocabulary
        return cls(name, min_count, uniq[order], counts[order])

    @property
    def size(self) -> int:
        return len(self.tokens) + 1

    def __post_init__(self) -> None:
        self._sorted = np.argsort(self.tokens)
        self._keys = self.tokens[self._sorted]
        self._lut: np.ndarray | None = None
        if len(self._keys) and int(self._keys[-1]) - int(self._keys[0]) < LUT_SPAN:
            lut = np.zeros(int(self._keys[-1]) - int(self._keys[0]) + 1, np.int32)
            lut[self._keys - self._keys[0]] = (self._sorted + 1).astype(np.int32)
            self._lut = lut

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """int32 ids; rare, unseen and absent (-1) raw ids become 0."""
        if not len(self._keys):
            return np.zeros(len(raw), np.int32)
        if self._lut is not None:
            rel = raw - self._keys[0]
            inside = (rel >= 0) & (rel < len(self._lut))
            return np.where(inside, self._lut[np.where(inside, rel, 0)], 0).astype(np.int32)
        pos = np.minimum(np.searchsorted(self._keys, raw), len(self._keys) - 1)
        return np.where(self._keys[pos] == raw, self._sorted[pos] + 1, 0).astype(np.int32)

    def to_json(self) -> dict:
        return {"min_count": self.min_count, "tokens": [str(t) for t in self.tokens.tolist()]}
