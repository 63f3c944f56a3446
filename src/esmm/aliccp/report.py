"""Rejected lines (listed in a report file, never silently dropped) and the end-of-run summary."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

BAD_LINES_FILE = "aliccp_bad_lines.tsv"
REPORT_FILE = "aliccp_report.json"


class BadInputError(ValueError):
    """Malformed raw input beyond what ``--max-bad-lines`` allows (names file and line)."""


class BadLines:
    """Every rejected line goes to ``aliccp_bad_lines.tsv`` (file, line number, reason)."""

    def __init__(self, out_dir: Path, max_bad: int) -> None:
        self.path = out_dir / BAD_LINES_FILE
        self.max_bad = max_bad
        self.count = 0
        self.by_reason: Counter[str] = Counter()
        self._fh = open(self.path, "w")
        self._fh.write("file\tline\treason\n")
        self.first: str | None = None

    def add(self, file: str, line: int, reason: str) -> None:
        """``line`` is 1-based. Raises once more lines are bad than allowed."""
        self.count += 1
        self.by_reason[_category(reason)] += 1
        self._fh.write(f"{file}\t{line}\t{reason}\n")
        if self.first is None:
            self.first = f"{file}:{line}: {reason}"
        if self.count > self.max_bad:
            self._fh.close()
            more = f" ({self.count} bad lines so far)" if self.count > 1 else ""
            raise BadInputError(f"{file}:{line}: {reason}{more}; --max-bad-lines is {self.max_bad} "
                                f"(pass a larger value to skip such lines; they are listed in "
                                f"{self.path})")

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def _category(reason: str) -> str:
    """The reason without the offending text, to count reasons."""
    return re.sub(r"\s+\d+", " N", reason.split(":")[0]).strip()


def format_summary(rep: dict[str, Any]) -> str:
    lines = ["Ali-CCP prepared:"]
    for split, s in rep["splits"].items():
        ctr = s["clicks"] / max(s["rows"], 1)
        cvr = s["conversions"] / max(s["clicks"], 1)
        lines.append(f"  {split:5s}: {s['rows']:>12,} rows  {s['clicks']:>10,} clicks ({ctr:.4f})  "
                     f"{s['conversions']:>8,} conversions ({cvr:.4f} of clicks)")
    o = rep["orphan_conversions"]
    lines.append(f"  conversion=1 with click=0: {sum(v for k, v in o.items() if k != 'policy'):,} "
                 f"rows ({', '.join(f'{k} {v:,}' for k, v in o.items() if k != 'policy')}); "
                 f"policy {o['policy']!r}")
    lines.append("  vocabulary sizes (incl. id 0): " + ", ".join(
        f"{f} {n:,}" for f, n in rep["vocab_sizes"].items()))
    bags = rep["mean_bag_length"].get("train", {})
    lines.append("  mean bag length (train): " + ", ".join(f"{f} {v:.2f}" for f, v in bags.items()))
    rej = rep["rejected"]
    why = ", ".join(f"{k}: {v:,}" for k, v in rej["by_reason"].items()) or "none"
    lines.append(f"  rejected lines: {rej['total']:,} ({why}); listed in {rej['file']}")
    if rep.get("ignored_entries"):
        lines.append(f"  entries of unknown fields (kept out): {rep['ignored_entries']}")
    for name, p in rep["inputs"].items():
        lines.append(f"  read {name}: {p['bytes'] / 1e6:,.0f} MB, {p['lines']:,} lines, "
                     f"{p['mb_per_s']:,.1f} MB/s, {p['lines_per_s']:,} lines/s")
    lines.append(f"  total {rep['seconds']:.1f} s; written to {rep['out']}")
    return "\n".join(lines)
