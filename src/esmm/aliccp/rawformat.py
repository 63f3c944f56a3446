"""Parser for blocks of raw Ali-CCP lines (no Python loop over lines or entries).

Two scanners feed one assembly step: the compiled one (``_rawscan.c`` via
``cscan``, ~300-500 MB/s per core) for blocks whose every line is good, and the
vectorised NumPy one below (~30 MB/s per core), which runs where the C module
was not built and for any block the C scanner declines, and which explains
bad lines. Both yield the same :class:`~esmm.aliccp.cscan.Scan`, bit for bit
(``tests/test_aliccp.py``). The NumPy scanner:

Raw lines (separators are single bytes)::

    skeleton: sample_id,click,conversion,common_feature_index,feature_num,feature_list
    common:   common_feature_index,feature_num,feature_list
    feature_list: entry 0x01 entry 0x01 ...;  entry: field_id 0x02 feature_id 0x03 value

A block (whole lines) is viewed as one ``uint8`` array. One scan finds every
separator byte; per-line separator counts validate the structure; numbers are
parsed digit position by digit position over all entries at once. Lines that
fail a check are explained by a slow, exact Python routine (only bad lines go
through it), removed from the block, and the block is parsed again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from esmm.aliccp import cscan
from esmm.aliccp.cscan import Scan, read_float
from esmm.aliccp.fields import (ALL_FIELDS, FIELD_KEYS, ITEM_FIELDS, MULTI_FIELDS, USER_FIELDS,
                                key_name)

NL, COMMA, SEP1, SEP2, SEP3 = 10, 44, 1, 2, 3
KINDS = {"skeleton": (5, ITEM_FIELDS), "common": (2, USER_FIELDS)}
_FIELD_KEYS = np.array(FIELD_KEYS, dtype=np.uint64)
_KEY_ORDER = np.argsort(_FIELD_KEYS)
_SORTED_KEYS = _FIELD_KEYS[_KEY_ORDER]
_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_POW10U = (10 ** np.arange(20, dtype=np.uint64)).astype(np.uint64)
_POW10F = 10.0 ** np.arange(25)
_BATCH = 65536  # entries parsed per numeric batch
PAD = 32  # zero bytes (a multiple of 8) around a block so every 8-byte load stays inside
_M1 = np.uint64(0x000000FF000000FF)
_MUL1 = np.uint64(100 + (1000000 << 32))
_MUL2 = np.uint64(1 + (10000 << 32))
_ONES = np.uint64(0x0101010101010101)
_LO_NIB = np.uint64(0x0F0F0F0F0F0F0F0F)
_HI_NIB = np.uint64(0xF0F0F0F0F0F0F0F0)
_ASCII0 = np.uint64(0x3030303030303030)
_SIXES = np.uint64(0x0606060606060606)
_DOTS = np.uint64(0x2E2E2E2E2E2E2E2E)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
# _TOP[k]: keeps the k most significant bytes of a little-endian word (the last k characters)
_TOP = np.array([0] + [((1 << (8 * k)) - 1) << (8 * (8 - k)) for k in range(1, 9)], np.uint64)


@dataclass
class Block:
    """The accepted lines of one block, column-wise.

    ``line``: 0-based index of each accepted line within the block. ``single``:
    one raw id per line for each categorical field of this side (-1: absent).
    ``multi``: (lengths, ids, values) per multi-valued field of this side.
    ``header``: sample_id, click, conversion (skeleton), cfi, feature_num.
    """

    kind: str
    n_lines: int
    line: np.ndarray
    header: dict[str, np.ndarray]
    single: dict[str, np.ndarray]
    multi: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    bad: list[tuple[int, str]] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)  # entries of unknown/other-side fields

    def __len__(self) -> int:
        return int(self.line.shape[0])


class _Bad(Exception):
    def __init__(self, lines: np.ndarray, reason: str) -> None:
        super().__init__(reason)
        self.lines, self.reason = lines, reason


def parse_block(buf: bytes | memoryview, kind: str) -> Block:
    """Parse whole lines (the last one may lack its newline)."""
    b = np.frombuffer(buf, dtype=np.uint8)
    if b.size and b[-1] != NL:
        b = np.concatenate([b, np.array([NL], np.uint8)])
    keep = None  # original line index of each line of ``b``
    bad: list[tuple[int, str]] = []
    while True:
        try:
            out = _parse(b, kind)
        except _Bad as e:
            starts, ends = _line_bounds(b)
            orig = e.lines if keep is None else keep[e.lines]
            for i, o in zip(e.lines.tolist(), orig.tolist()):
                bad.append((o, explain_line(bytes(b[starts[i]:ends[i]]), kind) or e.reason))
            good = np.ones(len(starts), bool)
            good[e.lines] = False
            keep = np.flatnonzero(good) if keep is None else keep[good]
            b = b[np.repeat(good, ends - starts + 1)]
            continue
        if keep is not None:
            out.line = keep[out.line]
            out.n_lines = out.n_lines + len(bad)
        out.bad = sorted(bad)
        return out


def _line_bounds(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ends = np.flatnonzero(b == NL)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    return starts, ends


_CODE = np.full(256, 5, np.uint8)  # separator byte -> column of the per-line count matrix
_CODE[[NL, COMMA, SEP1, SEP2, SEP3]] = [0, 1, 2, 3, 4]


def _parse(b: np.ndarray, kind: str) -> Block:
    """One block: the compiled scanner where it is built and the block is clean, else NumPy."""
    found = cscan.scan(b, kind)
    return _assemble(found if found is not None else _scan_numpy(b, kind), kind)


def _scan_numpy(b: np.ndarray, kind: str) -> Scan:
    """Every line's header and entry, vectorised; raises _Bad naming the lines that break a rule."""
    n_commas = KINDS[kind][0]
    sep = np.flatnonzero(b < 45)  # \n, ',', 0x01-0x03 and every other byte that has no place here
    code = _CODE[b[sep]]
    ends, commas, s1, s2, s3, other = (sep[code == k] for k in range(6))
    n = len(ends)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    cnt = [np.diff(np.searchsorted(p, ends), prepend=0) for p in (commas, s1, s2, s3, other)]
    n_ent = cnt[2]
    ok = ((cnt[0] == n_commas) & (cnt[4] == 0) & (cnt[3] == n_ent)
          & (cnt[1] == np.maximum(n_ent - 1, 0)))
    if not ok.all():
        raise _Bad(np.flatnonzero(~ok), "wrong column count or bad separator")

    commas = commas.reshape(n, n_commas)
    list_start = commas[:, -1] + 1
    n_total = len(s2)
    first = np.zeros(n + 1, np.int64)
    np.cumsum(n_ent, out=first[1:])
    ent_line = np.repeat(np.arange(n), n_ent)
    has = n_ent > 0
    is_first = np.zeros(n_total, bool)
    is_first[first[:-1][has]] = True
    is_last = np.zeros(n_total, bool)
    is_last[first[1:][has] - 1] = True
    e_start = np.empty(n_total, np.int64)
    e_start[is_first] = list_start[has]
    e_start[~is_first] = s1 + 1
    e_end = np.empty(n_total, np.int64)
    e_end[is_last] = ends[has]
    e_end[~is_last] = s1
    bad = ~((e_start < s2) & (s2 + 1 < s3) & (s3 + 1 < e_end))
    if bad.any():
        raise _Bad(np.unique(ent_line[bad]), "bad separator")

    bp = np.zeros(PAD + len(b) + PAD + (-len(b)) % 8, np.uint8)
    bp[PAD:PAD + len(b)] = b
    v = bp.view("<u8")
    header, hbad = _header(v, kind, starts + PAD, commas + PAD)
    fkey = np.empty(n_total, np.uint64)
    ids = np.empty(n_total, np.int64)
    vals = np.empty(n_total, np.float64)
    eok = np.empty(n_total, bool)  # field id and feature id parse
    vok = np.empty(n_total, bool)  # value parses on the fast path
    for lo in range(0, n_total, _BATCH):  # cache-sized batches: the temporaries stay in L2
        sl = slice(lo, lo + _BATCH)
        a, b1, b2, b3 = e_start[sl] + PAD, s2[sl] + PAD, s3[sl] + PAD, e_end[sl] + PAD
        fkey[sl], fok = _field_keys(v, a, b1)
        ids[sl], iok = parse_uint(v, b1 + 1, b2, 18)
        vals[sl], vok[sl] = parse_decimal(v, b2 + 1, b3)
        eok[sl] = fok & iok
    vok = _fallback_floats(b, s3 + 1, e_end, vals, vok | ~eok)
    ebad = ~(eok & vok)
    if hbad.any() or ebad.any():
        raise _Bad(np.union1d(np.flatnonzero(hbad), ent_line[ebad]), "non-numeric value")
    bad_num = header["feature_num"] != n_ent
    if bad_num.any():
        raise _Bad(np.flatnonzero(bad_num), "feature_num differs from the number of entries")
    pos = np.minimum(np.searchsorted(_SORTED_KEYS, fkey), len(_SORTED_KEYS) - 1)
    fidx = np.where(_SORTED_KEYS[pos] == fkey, _KEY_ORDER[pos], -1).astype(np.int8)
    return Scan(header, n_ent, fkey, fidx, ids, vals)


def _assemble(found: Scan, kind: str) -> Block:
    """Entries -> the side's columns: one raw id per line per single-valued field, bags for
    the multi-valued ones (file order kept); entries of other fields are counted by name."""
    side = KINDS[kind][1]
    n, ids = len(found.n_ent), found.ids
    ent_line = np.repeat(np.arange(n, dtype=np.int64), found.n_ent)
    # the entry's slot among this side's fields (-1: the other side's field or unknown);
    # index -1 of the table (unknown fields) is its last cell, which stays -1
    to_slot = np.full(len(ALL_FIELDS) + 1, -1, np.int8)
    to_slot[[ALL_FIELDS.index(f) for f in side]] = np.arange(len(side))
    slot = to_slot[found.fidx]
    ignored: dict[str, int] = {}
    off = slot < 0
    if off.any():
        uk, uc = np.unique(found.fkey[off], return_counts=True)
        ignored = {key_name(int(k)): int(c) for k, c in zip(uk, uc)}
    # one stable radix sort groups the entries by field, each group in file order
    order = np.argsort(slot, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(slot + 1, minlength=len(side) + 1))])
    single: dict[str, np.ndarray] = {}
    multi: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    dup_lines = []
    for j, name in enumerate(side):
        sel = order[bounds[j + 1]:bounds[j + 2]]
        lines = ent_line[sel]
        lens = np.bincount(lines, minlength=n)
        if name in MULTI_FIELDS:
            multi[name] = (lens.astype(np.int32), ids[sel], found.vals[sel].astype(np.float32))
        else:
            if (lens > 1).any():
                dup_lines.append(np.flatnonzero(lens > 1))
            col = np.full(n, -1, np.int64)
            col[lines] = ids[sel]
            single[name] = col
    if dup_lines:
        raise _Bad(np.unique(np.concatenate(dup_lines)), "a single-valued field appears twice")
    return Block(kind, n, np.arange(n, dtype=np.int64), found.header, single, multi,
                 ignored=ignored)


def _header(b: np.ndarray, kind: str, starts: np.ndarray, commas: np.ndarray
            ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    if kind == "skeleton":
        sid, ok1 = parse_uint(b, starts, commas[:, 0], 18)
        click, ok2 = parse_uint(b, commas[:, 0] + 1, commas[:, 1], 1)
        conv, ok3 = parse_uint(b, commas[:, 1] + 1, commas[:, 2], 1)
        cfi, ok4 = parse_hex(b, commas[:, 2] + 1, commas[:, 3])
        num, ok5 = parse_uint(b, commas[:, 3] + 1, commas[:, 4], 9)
        ok = ok1 & ok2 & ok3 & ok4 & ok5 & (click <= 1) & (conv <= 1)
        return ({"sample_id": sid, "click": click.astype(np.int8),
                 "conversion": conv.astype(np.int8), "cfi": cfi, "feature_num": num}, ~ok)
    cfi, ok1 = parse_hex(b, starts, commas[:, 0])
    num, ok2 = parse_uint(b, commas[:, 0] + 1, commas[:, 1], 9)
    return {"cfi": cfi, "feature_num": num}, ~(ok1 & ok2)


def load64(v: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Bytes ``pos .. pos+7`` of the block as one little-endian uint64 each (two aligned loads)."""
    q = pos >> 3
    r = (pos & 7).astype(np.uint64) * np.uint64(8)
    return (v[q] >> r) | (v[q + 1] << (np.uint64(64) - r))


def _top_bytes(k: np.ndarray) -> np.ndarray:
    """Masks keeping the k most significant bytes of a word (k clipped to 0..8)."""
    return _TOP[np.clip(k, 0, 8)]


def _digit_word(w: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(digit values per byte, ok): every masked byte must be an ASCII digit."""
    lo = w & _LO_NIB & mask
    ok = ((w & _HI_NIB & mask) == (_ASCII0 & mask)) & (((lo + _SIXES) & _HI_NIB) == 0)
    return lo, ok


def _swar8(v: np.ndarray) -> np.ndarray:
    """Eight digit values (one per byte, first digit in the lowest byte) -> their number."""
    v = v * np.uint64(10) + (v >> np.uint64(8))
    return (((v & _M1) * _MUL1) + (((v >> np.uint64(16)) & _M1) * _MUL2)) >> np.uint64(32)


def parse_uint(v: np.ndarray, start: np.ndarray, end: np.ndarray, maxlen: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Decimal digits in ``[start, end)`` of the block for every span at once: (int64, ok)."""
    length = end - start
    ok = (length >= 1) & (length <= min(maxlen, 18))
    nw = -(-int(length[ok].max()) // 8) if ok.any() else 1
    val = np.zeros(len(start), np.uint64)
    for j in range(nw):
        after = 8 * (nw - 1 - j)  # span bytes to the right of this word
        w, good = _digit_word(load64(v, end - after - 8), _top_bytes(length - after))
        ok &= good
        val = val * np.uint64(10 ** 8) + _swar8(w)
    return val.astype(np.int64), ok


def parse_decimal(v: np.ndarray, start: np.ndarray, end: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Plain decimals ``123``, ``0.69315`` (at most 16 bytes): (float64 values, ok).

    The dot is read as a 0 digit: A = digits with the dot as 0, and with f digits
    after the dot the mantissa is (A - A mod 10^f) / 10 + A mod 10^f.
    Anything else (exponents, signs) fails here and goes to the fallback.
    """
    length = end - start
    ok = (length >= 1) & (length <= 16)
    nw = 2 if (ok & (length > 8)).any() else 1
    a = np.zeros(len(start), np.uint64)
    ndot = np.zeros(len(start), np.uint64)
    frac = np.zeros(len(start), np.int64)
    for j in range(nw):
        after = 8 * (nw - 1 - j)
        mask = _top_bytes(length - after)
        w = load64(v, end - after - 8)
        x = w ^ _DOTS
        zero = ~(((x & _LOW7) + _LOW7) | x | _LOW7) & mask  # 0x80 on every '.' byte
        w ^= (zero >> np.uint64(7)) * np.uint64(0x2E ^ 0x30)  # '.' -> '0'
        d, good = _digit_word(w, mask)
        ok &= good
        a = a * np.uint64(10 ** 8) + _swar8(d)
        ndot += ((zero >> np.uint64(7)) * _ONES) >> np.uint64(56)
        has = zero != 0
        bit = np.frexp(zero[has].astype(np.float64))[1] - 1  # 8 * byte + 7
        frac[has] = 7 - bit // 8 + after
    ok &= (ndot <= 1) & (length - ndot.astype(np.int64) >= 1)
    frac[ndot != 1] = 0
    low = a % _POW10U[frac]
    mant = np.where(ndot == 1, (a - low) // np.uint64(10) + low, a)
    return mant.astype(np.float64) / _POW10F[frac], ok


def parse_hex(v: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1 to 16 hex digits per span as uint64."""
    length = end - start
    ok = (length >= 1) & (length <= 16)
    raw = np.stack([load64(v, end - 16), load64(v, end - 8)], axis=1)
    m = np.ascontiguousarray(raw).view(np.uint8).reshape(len(start), 16)
    present = np.arange(16)[None, :] >= (16 - length)[:, None]
    nib = _HEX[m]
    ok &= ((nib < 16) | ~present).all(1)
    nib[~present | (nib > 15)] = 0
    packed = (nib[:, 0::2] << np.uint8(4)) | nib[:, 1::2]
    return np.ascontiguousarray(packed).view(">u8").ravel().astype(np.uint64), ok


def _fallback_floats(b: np.ndarray, start: np.ndarray, end: np.ndarray, vals: np.ndarray,
                     ok: np.ndarray) -> np.ndarray:
    """Values the fast path rejects (``1e-05``, ``-0.5``): Python's float, one by one (rare)."""
    odd = np.flatnonzero(~ok)
    if not odd.size:
        return ok
    ok = ok.copy()
    for i in odd[:100000].tolist():
        v = read_float(bytes(b[start[i]:end[i]]))
        if v is not None:
            vals[i], ok[i] = v, True
    return ok


def _field_keys(v: np.ndarray, start: np.ndarray, end: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The field id's bytes as a little-endian integer (see fields.field_key)."""
    length = end - start
    ok = (length >= 1) & (length <= 8)
    key = load64(v, end - 8) & _top_bytes(length)
    return key >> (np.uint64(8) * (8 - np.clip(length, 0, 8)).astype(np.uint64)), ok


# --------------------------------------------------------------------------- slow path


def explain_line(line: bytes, kind: str) -> str | None:
    """What is wrong with one raw line, exactly (plain Python; used for bad lines only)."""
    n_commas, side = KINDS[kind]
    names = ("sample_id", "click", "conversion", "common_feature_index", "feature_num",
             "feature_list") if kind == "skeleton" else ("common_feature_index", "feature_num",
                                                          "feature_list")
    if not line.strip():
        return "empty line"
    cols = line.split(b",")
    if len(cols) != n_commas + 1:
        return f"expected {n_commas + 1} comma-separated columns, found {len(cols)}"
    head = dict(zip(names, cols))
    for name in ("sample_id", "feature_num"):
        if name in head and not _is_digits(head[name], 18):
            return f"{name} is not a non-negative integer: {_show(head[name])}"
    for name in ("click", "conversion"):
        if name in head and head[name] not in (b"0", b"1"):
            return f"{name} must be 0 or 1, got {_show(head[name])}"
    cfi = head["common_feature_index"]
    if not (1 <= len(cfi) <= 16 and all(c in b"0123456789abcdefABCDEF" for c in cfi)):
        return f"common_feature_index is not 1-16 hex digits: {_show(cfi)}"
    body = head["feature_list"]
    for c in set(body) - set(b"0123456789._-+eE\x01\x02\x03_"):
        return f"unexpected byte {_show(bytes([c]))} in feature_list"
    entries = body.split(b"\x01") if body else []
    seen: dict[bytes, int] = {}
    for j, e in enumerate(entries, 1):
        if e.count(b"\x02") != 1 or e.count(b"\x03") != 1 or e.index(b"\x02") > e.index(b"\x03"):
            return f"bad separator in entry {j}: {_show(e)} is not field\\x02id\\x03value"
        fid, rest = e.split(b"\x02")
        fval, val = rest.split(b"\x03")
        if not fid or not fval or not val:
            return f"empty part in entry {j}: {_show(e)}"
        if not _is_digits(fval, 18):
            return f"feature id is not a non-negative integer in entry {j}: {_show(fval)}"
        if read_float(val) is None:
            return f"value is not a number in entry {j}: {_show(val)}"
        seen[fid] = seen.get(fid, 0) + 1
    if int(head["feature_num"]) != len(entries):
        return f"feature_num is {int(head['feature_num'])} but the line has {len(entries)} entries"
    for fid, count in seen.items():
        name = fid.decode("latin-1")
        if name in side and name not in MULTI_FIELDS and count > 1:
            return f"single-valued field {name} appears {count} times"
    return None


def _is_digits(raw: bytes, maxlen: int) -> bool:
    return 1 <= len(raw) <= maxlen and raw.isdigit() and raw.isascii()


def _show(raw: bytes, limit: int = 60) -> str:
    text = raw[:limit].decode("latin-1").encode("unicode_escape").decode("ascii")
    return repr(text + ("..." if len(raw) > limit else ""))
