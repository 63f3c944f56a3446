"""esmm aliccp: raw-format parser, prepare pipeline, generator, bad input (fast, seeded, offline)."""

from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from esmm.aliccp.fake import FakeConfig, write_fake_raw
from esmm.aliccp.fields import ALL_FIELDS, CROSS_FIELDS, MULTI_FIELDS, USER_FIELDS
from esmm.aliccp.prepare import PrepareConfig, prepare
from esmm.aliccp import cscan
from esmm.aliccp.rawformat import _scan_numpy, parse_block
from esmm.aliccp.report import BAD_LINES_FILE, BadInputError
from esmm.cli import main
from esmm.data import load_schema, load_split, side_files, split_files

SAMPLES = Path(__file__).resolve().parents[2] / "shared/data/aliccp-samples"
CFG = dict(workers=2, chunk_mb=0.05, progress=False)  # tiny chunks: many work units even here


def needs_samples() -> None:
    if not SAMPLES.is_dir():
        pytest.skip(f"real Ali-CCP sample rows not found at {SAMPLES}")


# --------------------------------------------------------------------------- reference


def naive_rows(raw: Path, split: str) -> list[dict]:
    """Straightforward line-by-line join (the obviously correct, slow way)."""
    users = {}
    for line in (raw / f"common_features_{split}.csv").read_bytes().decode().splitlines():
        cfi, _, feats = line.split(",")
        users[cfi] = _entries(feats)
    rows = []
    for line in (raw / f"sample_skeleton_{split}.csv").read_bytes().decode().splitlines():
        sid, click, conv, cfi, _, feats = line.split(",")
        row = {f: [] for f in ALL_FIELDS}
        for f, i, v in users[cfi] + _entries(feats):
            row[f].append((i, v))
        row.update(sample_id=int(sid), click=int(click), conversion=int(click) & int(conv))
        rows.append(row)
    return rows


def _entries(feats: str) -> list[tuple[str, int, float]]:
    out = []
    for e in feats.split("\x01") if feats else []:
        f, rest = e.split("\x02")
        i, v = rest.split("\x03")
        out.append((f, int(i), float(v)))
    return out


def prepared_rows(out: Path, split: str) -> list[dict]:
    """Read a prepared split back as raw ids (through vocabularies.json), each impression
    joined with its user's row of the side table (plain Python, row by row)."""
    vocab = json.loads((out / "vocabularies.json").read_text())
    users = pq.ParquetDataset(side_files(out, "user")).read().to_pylist()
    table = pq.ParquetDataset(split_files(out, split)).read().to_pylist()
    rows = []
    for r in table:
        assert not set(r) & set(USER_FIELDS)  # user fields are not repeated per impression
        r.update(users[r["user_row"]])
        row = {"sample_id": r["sample_id"], "click": r["click"], "conversion": r["conversion"]}
        for f in ALL_FIELDS:
            toks = vocab[f]["tokens"]
            dec = lambda i: int(toks[i - 1]) if i else 0  # noqa: E731
            if f in MULTI_FIELDS:
                row[f] = [(dec(i), w) for i, w in zip(r[f], r[f + "__weight"])]
            else:
                row[f] = [] if r[f] == 0 else [(dec(r[f]), 1.0)]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- real rows


def _real_raw(tmp: Path) -> Path:
    """Re-assemble the raw layout of the real rows: the README's raw first skeleton line, plus
    PaddleRec's first 10 rows of the same user, split back into skeleton and common features."""
    raw = tmp / "raw"
    raw.mkdir()
    first = (SAMPLES / "raw_skeleton_train_line1.csv").read_bytes().rstrip(b"\n")
    cfi = first.split(b",")[3].decode()
    for split in ("train", "test"):
        skel, user = [], None
        for k, line in enumerate((SAMPLES / f"paddlerec_esmm_small_{split}.txt").read_text()
                                 .splitlines()):
            sid, click, conv, *pairs = line.split(",")
            items = [p.split(":") for p in pairs]
            imp = [(f, i) for f, i in items if f not in USER_FIELDS]
            if user is None:
                user = [(f, i) for f, i in items if f in USER_FIELDS]
            if k == 0 and split == "train":
                skel.append(first.decode())  # the real raw bytes (labels 0,0; real ids and values)
                continue
            body = "\x01".join(f"{f}\x02{i}\x031.0" for f, i in imp)
            skel.append(f"{sid},{click},{conv},{cfi},{len(imp)},{body}")
        (raw / f"sample_skeleton_{split}.csv").write_text("\n".join(skel) + "\n")
        body = "\x01".join(f"{f}\x02{i}\x031.0" for f, i in user)
        (raw / f"common_features_{split}.csv").write_text(f"{cfi},{len(user)},{body}\n")
    return raw


def test_real_rows_fields_bag_lengths_and_labels(tmp_path):
    needs_samples()
    raw = _real_raw(tmp_path)
    out = tmp_path / "ds"
    rep = prepare(raw, out, PrepareConfig(min_count=1, valid_fraction=0.0, **CFG))
    assert rep["rejected"]["total"] == 0
    vocab = {f: set(map(int, v["tokens"]))
             for f, v in json.loads((out / "vocabularies.json").read_text()).items()}
    for split in ("train", "test"):
        got = prepared_rows(out, split)
        src = (SAMPLES / f"paddlerec_esmm_small_{split}.txt").read_text().splitlines()
        assert len(got) == len(src) == 10
        for k, (row, line) in enumerate(zip(got, src)):
            sid, click, conv, *pairs = line.split(",")
            want: dict[str, list[int]] = {f: [] for f in ALL_FIELDS}
            for p in pairs:
                f, i = p.split(":")
                want[f].append(int(i))
            if k == 0 and split == "train":  # the raw line: real ids, labels 0,0
                click, conv = "0", "0"
                want.update({"210": [9052218, 9064553, 9093445], "216": [9154780],
                             "301": [9351665], "205": [4186222], "206": [8316799],
                             "207": [8416205], "508": [9355039]})
                assert row["508"] == [(9355039, pytest.approx(0.69315))]
            assert (row["click"], row["conversion"]) == (int(click), int(conv)), (split, k)
            for f in ALL_FIELDS:  # every field, every id, in order: nothing truncated or merged
                exp = [i if i in vocab[f] else 0 for i in want[f]]  # unseen in train -> 0
                if f not in MULTI_FIELDS:
                    exp = [i for i in exp if i]
                assert [i for i, _ in row[f]] == exp, (split, k, f)
    bags = rep["mean_bag_length"]["train"]
    assert bags["150_14"] == 191 and bags["127_14"] == 209 and bags["109_14"] == 117
    assert bags["110_14"] == 342
    # row 4 of the real rows holds three 853 entries, row 6 fourteen 210 entries
    assert len(prepared_rows(out, "test")[3]["853"]) == 3
    assert len(prepared_rows(out, "test")[5]["210"]) == 14


def test_real_first_line_parses_exactly():
    needs_samples()
    b = parse_block((SAMPLES / "raw_skeleton_train_line1.csv").read_bytes(), "skeleton")
    assert len(b) == 1 and not b.bad
    assert f"{int(b.header['cfi'][0]):016x}" == "bacff91692951881"
    assert b.multi["210"][1].tolist() == [9052218, 9064553, 9093445]
    assert b.single["205"].tolist() == [4186222] and b.single["301"].tolist() == [9351665]
    assert b.multi["508"][2].tolist() == [pytest.approx(0.69315)]


# --------------------------------------------------------------------------- generated data


@pytest.fixture(scope="module")
def fake_raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("fake")
    write_fake_raw(raw, FakeConfig(rows=3000, test_rows=800, seed=3, history_scale=0.1,
                                   mean_run=20, orphan_rate=0.01))
    return raw


@pytest.fixture(scope="module")
def fake_prepared(fake_raw, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prep") / "ds"
    rep = prepare(fake_raw, out, PrepareConfig(min_count=2, valid_fraction=0.2, **CFG))
    return out, rep


def test_prepare_matches_straightforward_join(fake_raw, fake_prepared):
    out, rep = fake_prepared
    ref = naive_rows(fake_raw, "train")
    n_valid = round(len(ref) * 0.2)
    vocab = json.loads((out / "vocabularies.json").read_text())
    for split, want in (("train", ref[:-n_valid]), ("valid", ref[-n_valid:]),
                        ("test", naive_rows(fake_raw, "test"))):
        got = prepared_rows(out, split)
        assert [r["sample_id"] for r in got] == [r["sample_id"] for r in want]
        for g, w in zip(got, want):
            assert (g["click"], g["conversion"]) == (w["click"], w["conversion"])
            for f in ALL_FIELDS:
                known = set(map(int, vocab[f]["tokens"]))
                exp = [(i if i in known else 0, v) for i, v in w[f]]
                if f not in MULTI_FIELDS:
                    exp = [(i, 1.0) for i, _ in exp if i]
                assert [i for i, _ in g[f]] == [i for i, _ in exp], f
                assert np.allclose([v for _, v in g[f]], [v for _, v in exp]), f
    assert rep["splits"]["train"]["rows"] == len(ref) - n_valid


def test_vocabulary_is_fitted_on_train_only_with_min_count(fake_raw, fake_prepared):
    from esmm.vocab import Vocabulary

    out, _ = fake_prepared
    ref = naive_rows(fake_raw, "train")
    train = ref[:-round(len(ref) * 0.2)]
    vocab = json.loads((out / "vocabularies.json").read_text())
    import pyarrow as pa
    for f in ("205", "150_14", "101", "210"):
        values = [i for r in train for i, _ in r[f]]
        v = Vocabulary(min_count=2).fit(pa.array([str(x) for x in values]))
        assert vocab[f]["tokens"] == v.tokens_, f


def test_schema_loads_and_orphans_are_reported(fake_prepared):
    out, rep = fake_prepared
    schema = load_schema(out)
    assert [f.name for f in schema.features][:23] == list(ALL_FIELDS)
    assert {f.name for f in schema.multi_categorical} == set(MULTI_FIELDS)
    assert all(f.weight_column == f"{f.name}__weight" for f in schema.multi_categorical)
    assert [f.name for f in schema.dense] == [f"{c}__value" for c in CROSS_FIELDS]
    assert schema.group == "group"
    split = load_split(out, "train", schema)  # the package's own reader validates everything
    assert len(split) == rep["splits"]["train"]["rows"]
    assert rep["orphan_conversions"]["train"] > 0 and rep["orphan_conversions"]["policy"] == "zero"
    assert not ((split.conversion == 1) & (split.click == 0)).any()


def test_gz_and_tar_inputs_give_the_same_dataset(fake_raw, fake_prepared, tmp_path):
    out, _ = fake_prepared
    gz, tar = tmp_path / "gz", tmp_path / "tar"
    gz.mkdir()
    tar.mkdir()
    for p in fake_raw.iterdir():
        (gz / (p.name + ".gz")).write_bytes(gzip.compress(p.read_bytes()))
    for split in ("train", "test"):
        with tarfile.open(tar / f"sample_{split}.tar.gz", "w:gz") as t:
            for name in (f"sample_skeleton_{split}.csv", f"common_features_{split}.csv"):
                t.add(fake_raw / name, arcname=name)  # skeleton first: order must not matter
    for raw in (gz, tar):
        o = tmp_path / (raw.name + "_ds")
        prepare(raw, o, PrepareConfig(min_count=2, valid_fraction=0.2, **CFG))
        for split in ("train", "valid", "test"):
            assert prepared_rows(o, split) == prepared_rows(out, split), (raw.name, split)


def test_fake_raw_cli_writes_the_exact_byte_format(tmp_path):
    assert main(["aliccp", "fake-raw", "--out", str(tmp_path), "--rows", "500",
                 "--test-rows", "0", "--history-scale", "0.5"]) == 0
    skel = (tmp_path / "sample_skeleton_train.csv").read_bytes().splitlines()
    common = (tmp_path / "common_features_train.csv").read_bytes().splitlines()
    assert len(skel) == 500 and not (tmp_path / "sample_skeleton_test.csv").exists()
    cfis = [line.split(b",")[3] for line in skel]
    assert all(len(c) == 16 and int(c, 16) >= 0 for c in cfis)
    runs = sum(1 for a, b in zip(cfis, cfis[1:]) if a != b) + 1
    assert runs == len(common) == len(set(cfis))  # one run of lines per common_feature_index
    for line in skel[:50] + common[:5]:
        cols = line.split(b",")
        entries = cols[-1].split(b"\x01")
        assert int(cols[-2]) == len(entries)
        assert all(e.count(b"\x02") == 1 and e.count(b"\x03") == 1 for e in entries)
    assert np.mean([len(c) for c in common]) > 2000  # hundreds of history entries per user


# --------------------------------------------------------------------------- bad input


GOOD_COMMON = b"00000000000000aa,2,101\x021\x031.0\x01150_14\x027\x030.69315\n"
GOOD = b"1,0,0,00000000000000aa,2,205\x0211\x031.0\x01210\x0221\x031.0\n"
BAD_CASES = {
    "wrong column count": (b"2,0,0,00000000000000aa,205\x0211\x031.0\n", "comma-separated columns"),
    "bad separator": (b"2,0,0,00000000000000aa,1,205\x0211\x011.0\n", "bad separator"),
    "separator missing": (b"2,0,0,00000000000000aa,1,20511\x031.0\n", "bad separator"),
    "non-numeric id": (b"2,0,0,00000000000000aa,1,205\x021a1\x031.0\n", "unexpected byte"),
    "non-numeric value": (b"2,0,0,00000000000000aa,1,205\x0211\x03x.5\n", "unexpected byte"),
    "bad value": (b"2,0,0,00000000000000aa,1,205\x0211\x031..5\n", "value is not a number"),
    "bad label": (b"2,2,0,00000000000000aa,1,205\x0211\x031.0\n", "click must be 0 or 1"),
    "bad cfi": (b"2,0,0,00000000000000zz,1,205\x0211\x031.0\n", "not 1-16 hex digits"),
    "feature_num mismatch": (b"2,0,0,00000000000000aa,3,205\x0211\x031.0\n", "feature_num is 3"),
    "single field twice": (b"2,0,0,00000000000000aa,2,205\x0211\x031.0\x01205\x0212\x031.0\n",
                           "single-valued field 205 appears 2 times"),
    "unknown user": (b"2,0,0,00000000000000bb,1,205\x0211\x031.0\n",
                     "no line in common_features_train.csv"),
    "empty line": (b"\n", "empty line"),
}


def _bad_raw(tmp: Path, bad_line: bytes) -> Path:
    raw = tmp / "raw"
    raw.mkdir()
    (raw / "common_features_train.csv").write_bytes(GOOD_COMMON)
    (raw / "sample_skeleton_train.csv").write_bytes(GOOD + bad_line + GOOD.replace(b"1,", b"3,", 1))
    return raw


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_line_stops_with_file_and_line(case, tmp_path, capsys):
    raw = _bad_raw(tmp_path, BAD_CASES[case][0])
    code = main(["aliccp", "prepare", "--raw", str(raw), "--out", str(tmp_path / "o"),
                 "--min-count", "1", "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "sample_skeleton_train.csv:2: " in err and BAD_CASES[case][1] in err, err


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_line_skipped_counted_and_listed(case, tmp_path):
    raw = _bad_raw(tmp_path, BAD_CASES[case][0])
    out = tmp_path / "o"
    rep = prepare(raw, out, PrepareConfig(min_count=1, valid_fraction=0, max_bad_lines=1,
                                          workers=1, progress=False))
    assert rep["rejected"]["total"] == 1 and rep["splits"]["train"]["rows"] == 2
    listed = (out / BAD_LINES_FILE).read_text().splitlines()
    assert len(listed) == 2 and listed[1].startswith("sample_skeleton_train.csv\t2\t")
    assert BAD_CASES[case][1] in listed[1]


def test_bad_common_features_line_and_duplicate_index(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "common_features_train.csv").write_bytes(
        GOOD_COMMON + b"00000000000000cc,1,101\x025\n" + GOOD_COMMON)
    (raw / "sample_skeleton_train.csv").write_bytes(GOOD)
    with pytest.raises(BadInputError, match=r"common_features_train.csv:2: bad separator"):
        prepare(raw, tmp_path / "o", PrepareConfig(min_count=1, workers=1, progress=False))
    rep = prepare(raw, tmp_path / "o2", PrepareConfig(min_count=1, valid_fraction=0,
                                                      max_bad_lines=5, workers=1, progress=False))
    assert rep["rejected"]["by_reason"] == {"bad separator in entry N": 1,
                                            "duplicate common_feature_index": 1}


@pytest.mark.parametrize("policy,rows,conv", [("zero", 3, 0), ("drop", 2, 0)])
def test_orphan_conversion_policies(policy, rows, conv, tmp_path):
    raw = _bad_raw(tmp_path, b"2,0,1,00000000000000aa,1,205\x0211\x031.0\n")
    rep = prepare(raw, tmp_path / "o", PrepareConfig(min_count=1, valid_fraction=0,
                                                     orphan_policy=policy, workers=1,
                                                     progress=False))
    assert rep["orphan_conversions"]["train"] == 1
    assert rep["splits"]["train"]["rows"] == rows and rep["splits"]["train"]["conversions"] == conv
    with pytest.raises(BadInputError, match=r"sample_skeleton_train.csv:2: conversion=1 with click=0"):
        prepare(raw, tmp_path / "e", PrepareConfig(min_count=1, orphan_policy="error", workers=1,
                                                   progress=False))


def test_missing_raw_files_are_a_clear_error(tmp_path, capsys):
    assert main(["aliccp", "prepare", "--raw", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no sample_skeleton_train.csv or common_features_train.csv" in capsys.readouterr().err


# --------------------------------------------------------------------------- numbers


def test_vectorised_numbers_agree_with_python():
    rng = np.random.default_rng(0)
    ids = [int(x) for x in rng.integers(0, 10 ** 12, 300)] + [0, 7, 10 ** 17 + 3]
    vals = ["1.0", "0.69315", "12", "0.5", "3.14159265", "1e-05", "-2.5", "100.000"]
    body = b"\x01".join(f"205\x02{i}\x03{v}".encode() for i, v in zip(ids[:8], vals))
    b = parse_block(b"1,1,0,ff,8," + body.replace(b"205", b"210") + b"\n", "skeleton")
    assert not b.bad
    assert b.multi["210"][1].tolist() == ids[:8]
    assert b.multi["210"][2].tolist() == pytest.approx([float(v) for v in vals])
    lines = b"".join(f"{k},0,0,{k:x},1,205\x02{i}\x031.0\n".encode() for k, i in enumerate(ids))
    b = parse_block(lines, "skeleton")
    assert b.single["205"].tolist() == ids and b.header["cfi"].tolist() == list(range(len(ids)))


def test_train_runs_on_prepared_data_with_weighted_bags(fake_prepared, tmp_path):
    from esmm.api import train
    from esmm.config import ModelConfig, RunConfig, TrainConfig

    out, _ = fake_prepared
    for pooling in ("mean", "sum"):
        cfg = RunConfig(model="esmm", model_config=ModelConfig(pooling=pooling, embedding_dim=4,
                                                               tower=(8,)),
                        train=TrainConfig(epochs=1, batch_size=256, progress=False))
        m = train(out, tmp_path / pooling, cfg)
        assert "test" in m and np.isfinite(m["test"]["ctr_auc"])


def test_user_features_are_stored_once_per_user(fake_raw, fake_prepared):
    from esmm.data import encode_table

    out, _ = fake_prepared
    schema = load_schema(out)
    assert schema.side_tables == {"user": "user_row"}
    assert [f.name for f in schema.features if f.table == "user"] == list(USER_FIELDS)
    side = pq.ParquetDataset(side_files(out, "user")).read()
    common = [line for s in ("train", "test")
              for line in (fake_raw / f"common_features_{s}.csv").read_bytes().splitlines()]
    assert side.num_rows == len(common)  # one row per common-features line, train then test
    entries = sum(line.count(b"\x01150_14\x02") + line.split(b",")[2].startswith(b"150_14\x02")
                  for line in common)
    assert len(side.column("150_14").combine_chunks().flatten()) == entries
    # the reader's batches equal those of the joined (denormalised) table
    for split in ("train", "test"):
        flat = imp = pq.ParquetDataset(split_files(out, split)).read()
        taken = side.take(imp.column("user_row"))
        for c in schema.side_columns("user"):
            flat = flat.append_column(c, taken.column(c))
        a = load_split(out, split, schema)
        b = encode_table(flat, schema.flattened())
        rows = np.random.default_rng(0).permutation(len(a))[:300]
        for r in (rows, slice(7, 400)):
            x, y = a.batch(r), b.batch(r)
            for name in ("cat", "bag_ids", "bag_offsets", "bag_weights", "dense", "click"):
                np.testing.assert_array_equal(getattr(x, name).numpy(), getattr(y, name).numpy())


# --------------------------------------------------------------------------- compiled scanner


def _same_scan(a, b) -> None:
    for k in a.header:
        assert a.header[k].dtype == b.header[k].dtype and np.array_equal(a.header[k], b.header[k]), k
    for name in ("n_ent", "fkey", "fidx", "ids"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.vals, b.vals)  # bit for bit: both read a value as Python's float()


def test_compiled_scanner_agrees_with_numpy_path(fake_raw):
    if not cscan.available():
        pytest.skip("the C scanner was not built (no compiler at install time, or ESMM_NO_C_SCAN)")
    odd = (b"5,1,1,0Ab,7,205\x0211\x031e-05\x01210\x0221\x03-2.5\x01210\x0222\x03.5\x01"
           b"999\x021\x031.0\x01210\x0223\x032.\x01853\x020\x030.693147180559945309\x01"
           b"210\x0224\x0312345678901234567890\n6,0,0,1,0,\n")
    blocks = [(GOOD + odd, "skeleton"), (GOOD_COMMON, "common"),
              ((fake_raw / "sample_skeleton_train.csv").read_bytes()[:3_000_000], "skeleton"),
              ((fake_raw / "common_features_train.csv").read_bytes()[:3_000_000], "common")]
    for raw, kind in blocks:
        raw = raw[:raw.rindex(b"\n") + 1]
        b = np.frombuffer(raw, np.uint8)
        c_scan = cscan.scan(b, kind)
        assert c_scan is not None
        _same_scan(c_scan, _scan_numpy(b, kind))
    # a bad line: the C path declines the block, the NumPy path names the line (a repeated
    # single-valued field and an unknown user are found after the scan, by shared code)
    for case, (line, _) in BAD_CASES.items():
        if case not in ("unknown user", "single field twice"):
            assert cscan.scan(np.frombuffer(GOOD + line, np.uint8), "skeleton") is None, case
    assert cscan.scan(np.frombuffer(GOOD.replace(b"1.0\n", b"nan\n"), np.uint8),
                      "skeleton") is None
