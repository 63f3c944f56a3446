"""Finding the raw files (plain, .gz, or inside sample_{split}.tar.gz) and cutting them into chunks.

A chunk is whole lines. For a plain file it is a byte range (offset, length) that
a worker reads itself, so nothing is copied between processes; for compressed
input the main process decompresses a stream and hands the workers bytes.
"""

from __future__ import annotations

import gzip
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

KIND_FILES = {"skeleton": "sample_skeleton_{split}.csv", "common": "common_features_{split}.csv"}


class RawInputError(ValueError):
    """The raw directory does not hold the files prepare needs."""


@dataclass
class Chunk:
    index: int
    offset: int  # byte offset of the chunk in the (uncompressed) file
    length: int
    path: str | None = None  # a plain file the worker reads itself
    data: bytes | None = None  # or the bytes themselves

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.length)


@dataclass
class Member:
    """One raw file of one split, ready to be cut into chunks."""

    kind: str  # "skeleton" or "common"
    name: str  # for messages: the file name, or archive.tar.gz:member
    size: int | None  # uncompressed bytes when known
    chunks: Iterator[Chunk]


def _plain_chunks(path: Path, chunk_bytes: int) -> Iterator[Chunk]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        start, index = 0, 0
        while start < size:
            end = min(size, start + chunk_bytes)
            if end < size:
                f.seek(end)
                tail = f.read(1 << 20)
                while b"\n" not in tail and end + len(tail) < size:
                    tail += f.read(1 << 20)
                nl = tail.find(b"\n")
                end = size if nl < 0 else end + nl + 1
            yield Chunk(index, start, end - start, path=str(path))
            start, index = end, index + 1


def _stream_chunks(stream: BinaryIO, chunk_bytes: int) -> Iterator[Chunk]:
    carry, offset, index = b"", 0, 0
    while True:
        block = stream.read(chunk_bytes)
        if not block:
            break
        data = carry + block
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data
            continue
        carry = data[cut:]
        yield Chunk(index, offset, cut, data=data[:cut])
        offset, index = offset + cut, index + 1
    if carry:
        yield Chunk(index, offset, len(carry), data=carry)


def split_members(raw_dir: str | Path, split: str, chunk_bytes: int) -> Iterator[Member]:
    """The skeleton and common-features files of a split, in the order they can be read.

    Plain or gzipped files are yielded common features first; members of
    ``sample_{split}.tar.gz`` in archive order (the pipeline does not need a
    particular order). Raises :class:`RawInputError` when the split is missing.
    """
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise RawInputError(f"{raw}: raw directory not found")
    found: dict[str, Path] = {}
    for kind in ("common", "skeleton"):
        base = KIND_FILES[kind].format(split=split)
        for cand in (raw / base, raw / (base + ".gz")):
            if cand.is_file():
                found[kind] = cand
                break
    if len(found) == 2:
        for kind in ("common", "skeleton"):
            path = found[kind]
            if path.suffix == ".gz":
                with gzip.open(path, "rb") as g:
                    yield Member(kind, path.name, None, _stream_chunks(g, chunk_bytes))
            else:
                yield Member(kind, path.name, path.stat().st_size, _plain_chunks(path, chunk_bytes))
        return
    archive = raw / f"sample_{split}.tar.gz"
    if not archive.is_file():
        missing = [KIND_FILES[k].format(split=split) for k in ("skeleton", "common") if k not in found]
        raise RawInputError(f"{raw}: no {' or '.join(missing)} (plain or .gz) and no "
                            f"{archive.name}")
    wanted = {KIND_FILES[k].format(split=split): k for k in ("skeleton", "common")}
    seen = set()
    with tarfile.open(archive, mode="r|gz") as tar:
        for info in tar:
            kind = wanted.get(Path(info.name).name)
            if kind is None or not info.isfile():
                continue
            f = tar.extractfile(info)
            assert f is not None
            seen.add(kind)
            yield Member(kind, f"{archive.name}:{info.name}", info.size,
                         _stream_chunks(f, chunk_bytes))  # type: ignore[arg-type]
    if len(seen) < 2:
        raise RawInputError(f"{archive}: holds no {' or '.join(n for n, k in wanted.items() if k not in seen)}")


def has_split(raw_dir: str | Path, split: str) -> bool:
    raw = Path(raw_dir)
    plain = all((raw / KIND_FILES[k].format(split=split)).is_file()
                or (raw / (KIND_FILES[k].format(split=split) + ".gz")).is_file()
                for k in KIND_FILES)
    return plain or (raw / f"sample_{split}.tar.gz").is_file()


class Progress:
    """Bytes and lines per second of one raw file, on stderr, at most every ``every`` s."""

    def __init__(self, name: str, total: int | None, enabled: bool = True, every: float = 1.0):
        self.name, self.total, self.enabled, self.every = name, total, enabled, every
        self.start = self.last = time.perf_counter()
        self.bytes = self.lines = 0
        self.tty = sys.stderr.isatty()

    def update(self, nbytes: int, nlines: int) -> None:
        self.bytes += nbytes
        self.lines += nlines
        now = time.perf_counter()
        if self.enabled and now - self.last >= (self.every if self.tty else 10 * self.every):
            self.last = now
            self._print(end="\r" if self.tty else "\n")

    def _print(self, end: str) -> None:
        dt = max(time.perf_counter() - self.start, 1e-9)
        done = f"{self.bytes / 1e6:,.0f}" + (f"/{self.total / 1e6:,.0f}" if self.total else "")
        print(f"  {self.name}: {done} MB, {self.lines:,} lines, {self.bytes / dt / 1e6:,.1f} MB/s, "
              f"{self.lines / dt:,.0f} lines/s", end=end, file=sys.stderr, flush=True)

    def close(self) -> dict[str, float]:
        if self.enabled:
            self._print(end="\n")
        dt = max(time.perf_counter() - self.start, 1e-9)
        return {"bytes": self.bytes, "lines": self.lines, "seconds": round(dt, 3),
                "mb_per_s": round(self.bytes / dt / 1e6, 2), "lines_per_s": round(self.lines / dt)}
