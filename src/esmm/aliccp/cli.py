"""``esmm aliccp prepare`` and ``esmm aliccp fake-raw`` (registered by esmm.cli)."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("aliccp", help="the Ali-CCP public data set: prepare raw files, fake raw files",
                       description="Ali-CCP (the ESMM paper's public data set) in its raw format.")
    s = p.add_subparsers(dest="aliccp_command", required=True, metavar="SUBCOMMAND")

    prep = s.add_parser("prepare", help="raw sample_skeleton/common_features files -> dataset",
                        description="Write a dataset directory (schema.json, vocabularies.json, "
                        "train/ valid/ test/ Parquet shards of impressions, and side/user/: the "
                        "user features once per common-features line, which each impression "
                        "addresses by user_row). Vocabularies are fitted on train; valid is the "
                        "last --valid-fraction of the train file in log order; test is the test file.")
    prep.add_argument("--raw", required=True, help="folder with sample_skeleton_{train,test}.csv "
                      "and common_features_{train,test}.csv (plain or .gz), or sample_train.tar.gz "
                      "/ sample_test.tar.gz")
    prep.add_argument("--out", required=True, help="dataset directory to write")
    prep.add_argument("--min-count", type=int, default=10,
                      help="ids seen fewer times in train map to 0 (default 10)")
    prep.add_argument("--valid-fraction", type=float, default=0.1,
                      help="tail of the train file used as valid (default 0.1)")
    prep.add_argument("--max-bad-lines", type=int, default=0,
                      help="malformed lines to skip before stopping (default 0: stop at the first); "
                      "skipped lines are listed in OUT/aliccp_bad_lines.tsv")
    prep.add_argument("--on-orphan-conversion", choices=["zero", "drop", "error"], default="zero",
                      help="rows with conversion=1 and click=0: conversion := click AND conversion "
                      "(zero, default), drop the row, or stop")
    prep.add_argument("--workers", type=int, default=0, help="processes (default: every core)")
    prep.add_argument("--chunk-mb", type=float, default=32.0,
                      help="raw megabytes per work unit (default 32)")
    prep.add_argument("--quiet", action="store_true", help="no progress or summary on stderr/stdout")
    prep.add_argument("--force", action="store_true", help="write into a non-empty directory")
    prep.set_defaults(handler=_run_prepare)

    fake = s.add_parser("fake-raw", help="write generated raw files (exact byte format) for tests",
                        description="Write sample_skeleton_{train,test}.csv and "
                        "common_features_{train,test}.csv shaped like the real data.")
    fake.add_argument("--out", required=True, help="folder to write")
    fake.add_argument("--rows", type=int, required=True, help="train impressions")
    fake.add_argument("--test-rows", type=int, default=None, help="test impressions (default: --rows)")
    fake.add_argument("--seed", type=int, default=0)
    fake.add_argument("--history-scale", type=float, default=1.0,
                      help="scales user history bag lengths (1.0: like the real data, ~620 "
                      "entries per user line)")
    fake.add_argument("--mean-run", type=float, default=58.0,
                      help="impressions per common_feature_index (real train: 58)")
    fake.add_argument("--conversion-rate", type=float, default=0.01,
                      help="conversions per click (real: about 0.005)")
    fake.add_argument("--gzip", action="store_true", help="write .csv.gz files")
    fake.set_defaults(handler=_run_fake)


def _run_prepare(a: argparse.Namespace) -> int:
    from esmm.aliccp.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(min_count=a.min_count, valid_fraction=a.valid_fraction,
                        max_bad_lines=a.max_bad_lines, orphan_policy=a.on_orphan_conversion,
                        workers=a.workers, chunk_mb=a.chunk_mb, progress=not a.quiet, force=a.force)
    prepare(a.raw, a.out, cfg)
    return 0


def _run_fake(a: argparse.Namespace) -> int:
    from esmm.aliccp.fake import FakeConfig, write_fake_raw

    cfg = FakeConfig(rows=a.rows, test_rows=a.test_rows, seed=a.seed,
                     history_scale=a.history_scale, mean_run=a.mean_run,
                     conversion_rate=a.conversion_rate, gzip=a.gzip)
    stats = write_fake_raw(a.out, cfg)
    print(json.dumps(stats, indent=2), file=sys.stderr)
    return 0
