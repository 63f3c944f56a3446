"""Generate raw Ali-CCP files (byte-exact format, realistic shape) for tests and benchmarks.

Shape, after the real data set and the real rows in shared/data/aliccp-samples:

- skeleton lines come in runs sharing one common_feature_index (about 58 lines
  per index in the real train: 42.3M lines / 730K indices); several indices
  belong to one user (field 101);
- a common-features line holds the user profile (101, 121, 122, 124-129, with
  126 sometimes absent as in the real rows) and four history bags
  (109_14, 110_14, 127_14, 150_14) of hundreds of entries in all (the real
  lines are 11-14 KB), values ln(1 + count) printed with 5 decimals;
- a skeleton line holds 205, 206, 207, 216, 301, a bag of 1-14 intention
  nodes (210) and, sometimes, the cross features 508/509/702 (one entry) and
  853 (up to 3 entries) with values like 0.69315;
- ids live in disjoint per-field ranges of one global id space and follow
  Zipf-like popularity; a few rows have conversion=1 with click=0 as the real data does.

Labels come from a hidden logistic model with signal a model can learn, so that a
comparison on prepared fake data is not noise: click depends on the item, the position,
cross feature 508 and the affinity of the user's segment (field 122) for the item's
category (206); conversion on the item, the category, cross feature 509 and a segment x
category affinity that is partly *opposite* to the click one (what users click is not
what they buy: the selection bias ESMM is about).

Everything is vectorised (NumPy ids, Arrow string kernels for the text).
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

USER_ORDER = ("121", "122", "101", "124", "125", "126", "127", "128", "129")
HISTORY = {"150_14": ("intent", 140), "127_14": ("brand", 150), "109_14": ("cat", 90),
           "110_14": ("shop", 240)}  # source entity, mean entries (x history_scale)
PROFILE_SIZES = {"121": 97, "122": 13, "124": 2, "125": 7, "126": 3, "127": 3, "128": 2, "129": 4}
_HEXCHARS = np.frombuffer(b"0123456789abcdef", np.uint8)
_VALUES = ["1.0"] + [f"{math.log1p(c):.5f}" for c in range(1, 200)]  # index 0: "1.0"


@dataclass(frozen=True)
class FakeConfig:
    rows: int = 100_000  # train impressions (skeleton lines)
    test_rows: int | None = None  # None: as many as train
    seed: int = 0
    mean_run: float = 58.0  # skeleton lines per common_feature_index
    history_scale: float = 1.0  # multiplies the mean history bag lengths (1.0: real, ~620)
    click_rate: float = 0.04
    conversion_rate: float = 0.01  # among clicks (real: 18k of 3.4M)
    orphan_rate: float = 2e-4  # rows with conversion=1 and click=0
    gzip: bool = False

    def __post_init__(self) -> None:
        if self.rows < 1 or (self.test_rows is not None and self.test_rows < 0):
            raise ValueError("rows must be >= 1 and test_rows >= 0")
        if self.mean_run < 1 or self.history_scale < 0:
            raise ValueError("mean_run must be >= 1 and history_scale >= 0")


class _World:
    """Entities shared by train and test: users, items and their attributes."""

    def __init__(self, cfg: FakeConfig, rng: np.random.Generator) -> None:
        total = cfg.rows + (cfg.rows if cfg.test_rows is None else cfg.test_rows)
        self.n_users = max(20, int(total / cfg.mean_run / 4))
        self.n_items = max(200, total // 20)
        self.sizes = {"item": self.n_items, "cat": int(np.clip(self.n_items // 600, 50, 7000)),
                      "shop": max(100, self.n_items // 10), "brand": max(100, self.n_items // 20),
                      "intent": max(100, self.n_items // 50), "pos": 3, "cross": 4 * self.n_items}
        bases, nxt = {}, 1_000_000
        for name in ("user", "item", "cat", "shop", "brand", "intent", "pos", "c508", "c509",
                     "c702", "c853", *PROFILE_SIZES):
            bases[name] = nxt
            nxt += 10 ** int(math.log10(max(self.n_users, 4 * self.n_items, 100)) + 1)
        self.base = bases
        self.profile = {f: rng.integers(0, s, self.n_users) for f, s in PROFILE_SIZES.items()}
        self.has_126 = rng.random(self.n_users) < 0.7
        self.item_attr = {k: zipf(rng, self.sizes[k], self.n_items, 1.6)
                          for k in ("cat", "shop", "brand")}
        self.item_nint = np.minimum(14, 1 + rng.geometric(0.35, self.n_items))
        self.item_int_ptr = np.concatenate([[0], np.cumsum(self.item_nint)])
        self.item_ints = zipf(rng, self.sizes["intent"], int(self.item_int_ptr[-1]), 1.5)
        self.item_ctr = rng.normal(0, 0.5, self.n_items)
        self.item_cvr = rng.normal(0, 0.5, self.n_items)
        n_seg, n_cat = PROFILE_SIZES["122"], self.sizes["cat"]
        self.seg_cat_ctr = rng.normal(0, 0.6, (n_seg, n_cat))
        self.seg_cat_cvr = -0.4 * self.seg_cat_ctr + rng.normal(0, 0.6, (n_seg, n_cat))
        self.cat_cvr = rng.normal(0, 0.6, n_cat)


def zipf(rng: np.random.Generator, n: int, size: int, skew: float) -> np.ndarray:
    """Ids in [0, n) with Zipf-like popularity (a power of a uniform; larger skew, heavier head)."""
    return np.minimum((n * rng.random(size) ** skew).astype(np.int64), n - 1)


def write_fake_raw(out_dir: str | Path, cfg: FakeConfig) -> dict[str, dict[str, int]]:
    """Write sample_skeleton_{train,test}.csv and common_features_{train,test}.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(cfg.seed).spawn(3)
    world = _World(cfg, np.random.default_rng(seeds[0]))
    stats = {}
    splits = {"train": cfg.rows, "test": cfg.rows if cfg.test_rows is None else cfg.test_rows}
    for (split, rows), seed in zip(splits.items(), seeds[1:]):
        if rows:
            stats[split] = _write_split(out, split, rows, cfg, world, np.random.default_rng(seed))
    return stats


def _open(path: Path, cfg: FakeConfig) -> BinaryIO:
    if cfg.gzip:
        return gzip.open(path.with_name(path.name + ".gz"), "wb", compresslevel=1)  # type: ignore[return-value]
    return open(path, "wb")


def _write_split(out: Path, split: str, rows: int, cfg: FakeConfig, w: _World,
                 rng: np.random.Generator) -> dict[str, int]:
    runs = np.maximum(1, rng.geometric(1.0 / cfg.mean_run, int(rows / cfg.mean_run) + 10))
    while runs.sum() < rows:
        runs = np.concatenate([runs, rng.geometric(1.0 / cfg.mean_run, len(runs))])
    ends = np.cumsum(runs)
    n_cfi = int(np.searchsorted(ends, rows)) + 1
    runs = runs[:n_cfi]
    runs[-1] -= int(ends[n_cfi - 1] - rows)
    keys = np.unique(rng.integers(0, 2**63, n_cfi + 16, dtype=np.int64).astype(np.uint64))
    keys = rng.permutation(keys)[:n_cfi]
    users = zipf(rng, w.n_users, n_cfi, 1.2)
    stats = {"skeleton_lines": rows, "common_lines": n_cfi, "clicks": 0, "conversions": 0,
             "orphan_conversions": 0}
    with _open(out / f"common_features_{split}.csv", cfg) as f:
        for lo in range(0, n_cfi, 2000):
            f.write(_common_lines(keys[lo:lo + 2000], users[lo:lo + 2000], cfg, w, rng))
    row_cfi = np.repeat(np.arange(n_cfi), runs)
    with _open(out / f"sample_skeleton_{split}.csv", cfg) as f:
        for lo in range(0, rows, 100_000):
            rc = row_cfi[lo:lo + 100_000]
            text, st = _skeleton_lines(lo, rc, users[rc], keys, cfg, w, rng)
            f.write(text)
            for k, v in st.items():
                stats[k] += v
    return stats


def _hex(keys: np.ndarray) -> pa.Array:
    nib = (keys[:, None] >> (np.arange(15, -1, -1, dtype=np.uint64) * np.uint64(4))) & np.uint64(15)
    chars = _HEXCHARS[nib.astype(np.int64)]
    return pc.cast(pa.array(np.ascontiguousarray(chars).view("S16").ravel()), pa.string())


def _text(head: list[pa.Array], line: np.ndarray, names: np.ndarray, name_table: list[str],
          ids: np.ndarray, vals: np.ndarray, n: int) -> bytes:
    """Lines ``head,...,name^Bid^Cvalue^A...`` joined; entries given in any order, stable by line."""
    order = np.argsort(line, kind="stable")
    fname = pa.array(name_table).take(pa.array(names[order]))
    ent = pc.binary_join_element_wise(fname, pc.cast(pa.array(ids[order]), pa.string()), "\x02")
    ent = pc.binary_join_element_wise(ent, pa.array(_VALUES).take(pa.array(vals[order])), "\x03")
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(np.bincount(line, minlength=n), out=offsets[1:])
    lists = pa.ListArray.from_arrays(pa.array(offsets), ent)
    num = pc.cast(pa.array(np.diff(offsets)), pa.string())
    body = pc.binary_join_element_wise(*head, num, pc.binary_join(lists, "\x01"), ",")
    text = pc.binary_join_element_wise(body, pa.scalar(""), "\n")
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    offs = np.frombuffer(text.buffers()[1], np.int32)[text.offset:text.offset + len(text) + 1]
    return bytes(text.buffers()[2])[int(offs[0]):int(offs[-1])]


def _common_lines(keys: np.ndarray, users: np.ndarray, cfg: FakeConfig, w: _World,
                  rng: np.random.Generator) -> bytes:
    n = len(keys)
    table = list(USER_ORDER) + list(HISTORY)
    parts = []  # (line, name index, id, value index)
    for j, f in enumerate(USER_ORDER):
        rows = np.arange(n) if f != "126" else np.flatnonzero(w.has_126[users])
        raw = users[rows] if f == "101" else w.profile[f][users[rows]]
        base = w.base["user" if f == "101" else f]
        parts.append((rows, np.full(len(rows), j), raw + base, np.zeros(len(rows), np.int64)))
    for j, (f, (src, mean)) in enumerate(HISTORY.items(), len(USER_ORDER)):
        mu = mean * cfg.history_scale
        lens = (np.round(rng.lognormal(math.log(max(mu, 1e-9)) - 0.32, 0.8, n)).astype(np.int64)
                if mu > 0 else np.zeros(n, np.int64))
        lens = np.minimum(lens, 20 * max(1, int(mu)))
        rows = np.repeat(np.arange(n), lens)
        ids = zipf(rng, w.sizes[src], len(rows), 1.6) + w.base[src]
        vals = np.minimum(rng.geometric(0.45, len(rows)), len(_VALUES) - 1)
        parts.append((rows, np.full(len(rows), j), ids, vals))
    line, names, ids, vals = (np.concatenate([p[i] for p in parts]) for i in range(4))
    return _text([_hex(keys)], line, names, table, ids, vals, n)


def _skeleton_lines(first: int, row_cfi: np.ndarray, row_user: np.ndarray, keys: np.ndarray,
                    cfg: FakeConfig, w: _World, rng: np.random.Generator
                    ) -> tuple[bytes, dict[str, int]]:
    n = len(row_cfi)
    item = zipf(rng, w.n_items, n, 1.8)
    pos = rng.integers(0, w.sizes["pos"], n)
    table = ["210", "216", "301", "205", "206", "207", "508", "509", "702", "853"]
    nint = w.item_nint[item]
    rows210 = np.repeat(np.arange(n), nint)
    ids210 = w.item_ints[np.repeat(w.item_int_ptr[item], nint)
                         + np.arange(len(rows210)) - np.repeat(np.cumsum(nint) - nint, nint)]
    parts = [(rows210, np.zeros(len(rows210), np.int64), ids210 + w.base["intent"],
              np.zeros(len(rows210), np.int64))]
    single = {"216": w.item_attr["brand"][item] + w.base["brand"], "301": pos + w.base["pos"],
              "205": item + w.base["item"], "206": w.item_attr["cat"][item] + w.base["cat"],
              "207": w.item_attr["shop"][item] + w.base["shop"]}
    for f, ids in single.items():
        parts.append((np.arange(n), np.full(n, table.index(f)), ids, np.zeros(n, np.int64)))
    has_cross = {}
    for f, p, most in (("508", 0.35, 1), ("509", 0.12, 1), ("702", 0.15, 1), ("853", 0.25, 3)):
        cnt = (rng.random(n) < p) * rng.integers(1, most + 1, n)
        rows = np.repeat(np.arange(n), cnt)
        ids = zipf(rng, w.sizes["cross"], len(rows), 1.5) + w.base[f"c{f}"]
        vals = np.minimum(rng.geometric(0.5, len(rows)), len(_VALUES) - 1)
        parts.append((rows, np.full(len(rows), table.index(f)), ids, vals))
        has_cross[f] = cnt > 0
    line, names, ids, vals = (np.concatenate([p[i] for p in parts]) for i in range(4))
    seg, cat = w.profile["122"][row_user], w.item_attr["cat"][item]
    logit = (math.log(cfg.click_rate / (1 - cfg.click_rate)) + w.item_ctr[item]
             + w.seg_cat_ctr[seg, cat] + np.array([0.4, 0.0, -0.4])[pos]
             + 0.5 * has_cross["508"] - 0.5)
    click = rng.random(n) < 1 / (1 + np.exp(-logit))
    cl = (math.log(cfg.conversion_rate / (1 - cfg.conversion_rate)) + w.item_cvr[item]
          + w.cat_cvr[cat] + w.seg_cat_cvr[seg, cat] + 0.4 * has_cross["509"] - 0.5)
    conv = click & (rng.random(n) < 1 / (1 + np.exp(-cl)))
    orphan = ~click & (rng.random(n) < cfg.orphan_rate)
    conv |= orphan
    head = [pc.cast(pa.array(np.arange(first + 1, first + n + 1)), pa.string()),
            pc.cast(pa.array(click.astype(np.int8)), pa.string()),
            pc.cast(pa.array(conv.astype(np.int8)), pa.string()), _hex(keys[row_cfi])]
    stats = {"clicks": int(click.sum()), "conversions": int((conv & click).sum()),
             "orphan_conversions": int(orphan.sum())}
    return _text(head, line, names, table, ids, vals, n), stats
