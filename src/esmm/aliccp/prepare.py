"""``esmm aliccp prepare``: raw Ali-CCP files -> a dataset directory (schema, vocabularies, shards).

Pipeline for one split (train, then test), every step on all cores:

1. common features: parsed in chunks; kept as a compact user table (per field
   one int array, or a CSR of ids + float32 values), looked up by
   common_feature_index through a sorted uint64 key array;
2. skeleton: parsed in chunks, spooled to a temporary file per chunk;
3. resolve + count: each impression finds its user (or is a bad line); the raw
   ids of the train part are counted (impression fields per row; user fields
   once per user, weighted by that user's train rows -- the same count as in
   the joined table);
4. vocabularies (train only, ``min_count``), the user table encoded in place;
5. write: the user table once, as the side table ``side/user/*.parquet`` (one row
   per common-features line; train lines, then test lines), and the impression
   fields, one Parquet shard per chunk (``train/part-*.parquet``), each row with
   ``user_row``, the row of its user in the side table. User features are never
   repeated per impression.

Memory: the user table (proportional to the common-features file) plus a few
chunks in flight; the skeleton is never held whole. Valid is the last
``valid_fraction`` of the train lines that parse, in file (log) order.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from esmm.aliccp import stages
from esmm.aliccp.fields import (ALL_FIELDS, CROSS_FIELDS, ITEM_FIELDS, MULTI_FIELDS,
                                USER_FIELDS, USER_ID_FIELD, kind, value_column, weight_column)
from esmm.aliccp.report import REPORT_FILE, BadInputError, BadLines, format_summary
from esmm.aliccp.sources import Member, Progress, has_split, split_members
from esmm.aliccp.vocabfit import Counter, FieldVocab, count_bag_ids, count_ids
from esmm.data import SCHEMA_FILE, SIDE_DIR, VOCAB_FILE
from esmm.malloc import keep_freed_memory
from esmm.schema import Feature, Schema

ORPHAN_POLICIES = ("zero", "drop", "error")
TMP_DIR = "_aliccp_tmp"


@dataclass(frozen=True)
class PrepareConfig:
    min_count: int = 10
    valid_fraction: float = 0.1
    max_bad_lines: int = 0
    orphan_policy: str = "zero"  # conversion=1 with click=0: zero it (= click AND conversion), drop, error
    workers: int = 0  # 0: every core
    chunk_mb: float = 32.0
    progress: bool = True
    force: bool = False

    def __post_init__(self) -> None:
        if self.min_count < 1:
            raise ValueError("min_count must be >= 1")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError("valid_fraction must be in [0, 1)")
        if self.max_bad_lines < 0:
            raise ValueError("max_bad_lines must be >= 0")
        if self.orphan_policy not in ORPHAN_POLICIES:
            raise ValueError(f"orphan policy must be one of {ORPHAN_POLICIES}")
        if self.chunk_mb <= 0:
            raise ValueError("chunk_mb must be > 0")


def _ordered(pool: Any, fn: Callable, tasks: Iterable, window: int) -> Iterator[Any]:
    """pool.imap with at most ``window`` tasks in flight (imap would read the input eagerly)."""
    pending: deque = deque()
    for t in tasks:
        pending.append(pool.apply_async(fn, (t,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


class _Run:
    def __init__(self, raw: Path, out: Path, cfg: PrepareConfig) -> None:
        self.raw, self.out, self.cfg = raw, out, cfg
        self.workers = cfg.workers or os.cpu_count() or 1
        self.ctx = mp.get_context("fork")
        self.tmp = out / TMP_DIR
        self.bad = BadLines(out, cfg.max_bad_lines)
        self.inputs: dict[str, dict] = {}
        self.ignored: dict[str, int] = {}
        self.orphans: dict[str, int] = {}
        self.vocabs: dict[str, FieldVocab] = {}
        self.phases: dict[str, float] = {}
        self.phase_cpu: dict[str, float] = {}  # CPU seconds of main + (finished) workers

    def pool(self) -> Any:
        # Objects alive now (torch's, when the CLI imported it) move to a permanent
        # generation: a collection in a worker would otherwise walk them and, by writing
        # their headers, copy every shared page of the parent (copy-on-write).
        gc.freeze()
        return self.ctx.Pool(self.workers)

    # -- step 1 + 2: read a split ----------------------------------------------------------
    def read_split(self, split: str) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
        users: dict[str, Any] | None = None
        chunks: list[dict[str, Any]] = []
        skel_name = ""
        stages.STATE.update(tmp=str(self.tmp), split=split, orphan_policy=self.cfg.orphan_policy)
        for member in split_members(self.raw, split, int(self.cfg.chunk_mb * 2**20)):
            prog = Progress(member.name, member.size, self.cfg.progress)
            cpu = cpu_seconds()
            with self.pool() as pool:
                if member.kind == "common":
                    users = self._read_common(pool, member, prog)
                else:
                    skel_name = member.name
                    chunks = self._read_skeleton(pool, member, prog, split)
            self.inputs[member.name] = prog.close()
            self.inputs[member.name]["cpu_seconds"] = round(cpu_seconds() - cpu, 2)
        assert users is not None
        return users, chunks, skel_name

    def _read_common(self, pool: Any, member: Member, prog: Progress) -> dict[str, Any]:
        blocks, base = [], 0
        for nbytes, block in _ordered(pool, stages.parse_common, member.chunks, 2 * self.workers):
            for line, reason in block.bad:
                self.bad.add(member.name, base + line + 1, reason)
            self._ignore(block.ignored)
            block.line = block.line + base
            base += block.n_lines
            prog.update(nbytes, block.n_lines)
            blocks.append(block)
        return self._user_table(blocks, member.name)

    def _user_table(self, blocks: list, name: str) -> dict[str, Any]:
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
        cfi = cat([b.header["cfi"] for b in blocks]).astype(np.uint64, copy=False)
        line = cat([b.line for b in blocks])
        users: dict[str, Any] = {"single": {}, "multi": {}}
        for f in USER_FIELDS:
            if f in MULTI_FIELDS:
                lens = cat([b.multi[f][0] for b in blocks])
                ptr = np.zeros(len(lens) + 1, np.int64)
                np.cumsum(lens, out=ptr[1:])
                users["multi"][f] = (ptr, cat([b.multi[f][1] for b in blocks]),
                                     cat([b.multi[f][2] for b in blocks]).astype(np.float32,
                                                                                copy=False))
                for b in blocks:
                    b.multi[f] = None
            else:
                users["single"][f] = cat([b.single[f] for b in blocks])
        raw_uid = users["single"][USER_ID_FIELD]
        # GAUC groups: the user id (field 101); a line without one is its own group
        users["group"] = np.where(raw_uid >= 0, raw_uid, -1 - np.arange(len(raw_uid)))
        order = np.argsort(cfi, kind="stable")
        keys = cfi[order]
        dup = np.flatnonzero(keys[1:] == keys[:-1]) + 1
        for i in dup.tolist():
            self.bad.add(name, int(line[order[i]]) + 1, "duplicate common_feature_index: "
                         f"{int(keys[i]):016x} (first at line {int(line[order[i - 1]]) + 1})")
        keep = np.ones(len(keys), bool)
        keep[dup] = False
        users.update(keys=keys[keep], order=order[keep], n=len(cfi))
        return users

    def _read_skeleton(self, pool: Any, member: Member, prog: Progress, split: str
                       ) -> list[dict[str, Any]]:
        chunks, base = [], 0
        for res in _ordered(pool, stages.parse_skeleton, member.chunks, 2 * self.workers):
            for line, reason in res["bad"]:
                self.bad.add(member.name, base + line + 1, reason)
            if res["orphan_lines"]:
                raise BadInputError(f"{member.name}:{base + res['orphan_lines'][0] + 1}: "
                                    "conversion=1 with click=0 (orphan policy 'error')")
            self._ignore(res["ignored"])
            self.orphans[split] = self.orphans.get(split, 0) + res["orphans"]
            chunks.append({"index": res["index"], "rows": res["rows"], "base": base})
            base += res["lines"]
            prog.update(res["bytes"], res["lines"])
        return chunks

    def _ignore(self, ignored: dict[str, int]) -> None:
        for k, v in ignored.items():
            self.ignored[k] = self.ignored.get(k, 0) + v

    # -- step 3 + 4: resolve users, count, fit ---------------------------------------------
    def resolve_and_count(self, users: dict[str, Any], chunks: list[dict[str, Any]],
                          limits: list[int], skel_name: str, common_name: str
                          ) -> tuple[dict[str, Counter], np.ndarray]:
        stages.STATE.update(user_keys=users["keys"], user_order=users["order"], n_users=users["n"])
        counters = {f: Counter() for f in ITEM_FIELDS}
        user_rows = np.zeros(users["n"], np.int64)
        with self.pool() as pool:
            tasks = [(c["index"], lim) for c, lim in zip(chunks, limits)]
            for c, res in zip(chunks, _ordered(pool, stages.count_chunk, tasks, 2 * self.workers)):
                for line, cfi in zip(res["unresolved"], res["unresolved_cfi"]):
                    self.bad.add(skel_name, c["base"] + line + 1, f"no line in {common_name} "
                                 f"for common_feature_index: {int(cfi):016x}")
                for f, (u, n) in res["counts"].items():
                    counters[f].add(u, n)
                if res["user_rows"] is not None:
                    user_rows += res["user_rows"]
        return counters, user_rows

    def fit(self, users: dict[str, Any], counters: dict[str, Counter], user_rows: np.ndarray) -> None:
        m = self.cfg.min_count
        for f in ITEM_FIELDS:
            self.vocabs[f] = FieldVocab.fit(f, *counters[f].result(), m)
        # one field after another on purpose: counting two at once in the workers saved 0.4 s
        # of 17 but added 0.7 GB to the peak (their sort temporaries)
        for f in USER_FIELDS:
            if f in MULTI_FIELDS:
                ptr, ids, _ = users["multi"][f]
                self.vocabs[f] = FieldVocab.fit(f, *count_bag_ids(ptr, ids, user_rows), m)
            else:
                raw = users["single"][f]
                self.vocabs[f] = FieldVocab.fit(f, *count_ids(raw, user_rows.astype(float)), m)

    def encode_users(self, users: dict[str, Any]) -> None:
        for f in USER_FIELDS:
            if f in MULTI_FIELDS:
                ptr, ids, vals = users["multi"][f]
                enc = np.empty(len(ids), np.int32)
                for lo in range(0, len(ids), 1 << 24):
                    enc[lo:lo + (1 << 24)] = self.vocabs[f].encode(ids[lo:lo + (1 << 24)])
                users["multi"][f] = (ptr, enc, vals)
            else:
                users["single"][f] = self.vocabs[f].encode(users["single"][f])

    # -- step 5: write ----------------------------------------------------------------------
    def write(self, users: dict[str, Any], tasks: list[tuple[int, list]], part: int,
              user_base: int) -> dict[str, dict]:
        """Write the user side table (shards ``side/user/<part>-*.parquet``: its rows follow
        the ``user_base`` rows written before) and the impression shards."""
        stages.STATE.update(users=users, vocabs=self.vocabs, out=str(self.out),
                            user_base=user_base)
        totals: dict[str, dict] = {}
        side = f"{SIDE_DIR}/{stages.USER_TABLE}"
        user_tasks = [(f"{side}/{part}-{k:05d}.parquet", lo, hi)
                      for k, (lo, hi) in enumerate(stages.user_slices(users))]
        with self.pool() as pool:
            written = sum(_ordered(pool, stages.write_users, user_tasks, 2 * self.workers))
            assert written == users["n"]
            for res in _ordered(pool, stages.encode_chunk, tasks, 2 * self.workers):
                for split, s in res["splits"].items():
                    t = totals.setdefault(split, {"rows": 0, "clicks": 0, "conversions": 0,
                                                  "bag_entries": {f: 0 for f in MULTI_FIELDS}})
                    for k in ("rows", "clicks", "conversions"):
                        t[k] += s[k]
                    for f, v in s["bag_entries"].items():
                        t["bag_entries"][f] += v
        return totals


def cpu_seconds() -> float:
    """CPU time of this process and of its finished (joined) worker processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def prepare(raw_dir: str | Path, out_dir: str | Path, cfg: PrepareConfig | None = None
            ) -> dict[str, Any]:
    """Prepare the raw Ali-CCP files in ``raw_dir`` as a dataset in ``out_dir``; returns the report."""
    cfg = cfg or PrepareConfig()
    start = time.perf_counter()
    raw, out = Path(raw_dir), Path(out_dir)
    if not has_split(raw, "train"):
        list(split_members(raw, "train", 1))  # raises the precise "which file is missing" error
    if out.exists() and any(out.iterdir()) and not cfg.force:
        raise ValueError(f"{out}: output directory is not empty; pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("train", "valid", "test", SIDE_DIR, TMP_DIR):
        shutil.rmtree(out / sub, ignore_errors=True)
    # chunk-sized temporaries are reused from the heap, in this process and in the forked
    # workers, instead of being mapped and zeroed again for every chunk (see esmm/malloc.py)
    keep_freed_memory(2 * int(cfg.chunk_mb * 2**20) + (1 << 20))
    run = _Run(raw, out, cfg)
    run.tmp.mkdir()
    try:
        splits = _train_then_test(run)
    finally:
        run.bad.close()
        shutil.rmtree(run.tmp, ignore_errors=True)
    report = _finish(run, splits, time.perf_counter() - start)
    if cfg.progress:
        print(format_summary(report))
    return report


def _train_then_test(run: _Run) -> dict[str, dict]:
    t, cpu = time.perf_counter(), cpu_seconds()

    def phase(name: str) -> None:
        nonlocal t, cpu
        now, now_cpu = time.perf_counter(), cpu_seconds()
        run.phases[name] = round(run.phases.get(name, 0.0) + now - t, 2)
        run.phase_cpu[name] = round(run.phase_cpu.get(name, 0.0) + now_cpu - cpu, 2)
        t, cpu = now, now_cpu

    users, chunks, skel = run.read_split("train")
    phase("read")
    common = next(n for n in run.inputs if "common" in n)
    n_rows = sum(c["rows"] for c in chunks)
    n_train = n_rows - int(round(n_rows * run.cfg.valid_fraction))
    limits = [int(np.clip(n_train - sum(c["rows"] for c in chunks[:i]), 0, c["rows"]))
              for i, c in enumerate(chunks)]
    counters, user_rows = run.resolve_and_count(users, chunks, limits, skel, common)
    phase("resolve_count")
    run.fit(users, counters, user_rows)
    phase("fit_vocabularies")
    run.encode_users(users)
    phase("encode_users")
    tasks = [(c["index"], [("train", 0, lim), ("valid", lim, c["rows"])])
             for c, lim in zip(chunks, limits)]
    splits = run.write(users, tasks, 0, 0)
    phase("write")
    n_train_users = users["n"]
    del users
    if has_split(run.raw, "test"):
        for f in list(run.tmp.iterdir()):
            f.unlink()
        users, chunks, skel = run.read_split("test")
        phase("read")
        common = next(n for n in run.inputs if "common" in n and "test" in n)
        run.resolve_and_count(users, chunks, [0] * len(chunks), skel, common)
        run.encode_users(users)
        phase("resolve_count")
        splits.update(run.write(users, [(c["index"], [("test", 0, c["rows"])]) for c in chunks],
                                1, n_train_users))
        phase("write")
    return splits


def build_schema(vocabs: dict[str, FieldVocab], description: str, extra: dict) -> Schema:
    """User fields live in the side table ``user`` (one row per common-features line), keyed
    by the impression column ``user_row``; impression fields in the split files."""
    feats = []
    for f in ALL_FIELDS:
        k = kind(f)
        feats.append(Feature(f, k, max(2, vocabs[f].size),
                             weight_column=weight_column(f) if k == "multi_categorical" else None,
                             table=stages.USER_TABLE if f in USER_FIELDS else None))
    feats += [Feature(value_column(f), "dense") for f in CROSS_FIELDS]
    return Schema(tuple(feats), group="group", description=description, extra=extra,
                  side_tables={stages.USER_TABLE: stages.USER_KEY})


def _finish(run: _Run, splits: dict[str, dict], seconds: float) -> dict[str, Any]:
    import json

    cfg = run.cfg
    report: dict[str, Any] = {
        "splits": {s: {k: v for k, v in t.items() if k != "bag_entries"} for s, t in splits.items()},
        "orphan_conversions": {**run.orphans, "policy": cfg.orphan_policy},
        "vocab_sizes": {f: run.vocabs[f].size for f in ALL_FIELDS},
        "mean_bag_length": {s: {f: t["bag_entries"][f] / max(t["rows"], 1) for f in ALL_FIELDS
                                if f in MULTI_FIELDS} for s, t in splits.items()},
        "rejected": {"total": run.bad.count, "by_reason": dict(run.bad.by_reason),
                     "file": str(run.bad.path)},
        "ignored_entries": run.ignored, "inputs": run.inputs,
        "settings": {"min_count": cfg.min_count, "valid_fraction": cfg.valid_fraction,
                     "max_bad_lines": cfg.max_bad_lines, "orphan_policy": cfg.orphan_policy,
                     "workers": run.workers},
        "seconds": round(seconds, 2), "phase_seconds": run.phases,
        "phase_cpu_seconds": run.phase_cpu, "out": str(run.out),
    }
    missing = [s for s in ("train", "valid") if s not in splits]
    if "train" in missing:
        raise BadInputError(f"{run.raw}: no train row survived (see {run.bad.path})")
    schema = build_schema(run.vocabs, "Ali-CCP (ESMM paper public data set), esmm aliccp prepare",
                          {"aliccp": report["settings"]})
    schema.save(run.out / SCHEMA_FILE)
    (run.out / VOCAB_FILE).write_text(json.dumps({f: v.to_json() for f, v in run.vocabs.items()}))
    (run.out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report
