"""Benchmark ``esmm aliccp prepare`` on a generated raw pair, against a straightforward parser.

    .venv/bin/python bench/bench_aliccp_prepare.py --workdir /tmp/aliccp_bench --rows 4500000

1. generates a raw train pair (skeleton + common features, about 2 GB at 4.5M rows
   with real-shaped user lines) unless it is already there;
2. runs ``esmm aliccp prepare`` on it in a subprocess and samples the memory of the
   whole process tree (sum of PSS, so pages shared between the forked workers
   count once; and the largest single RSS) and the load average every 0.2 s; the
   CPU seconds of the whole tree give MB per CPU-second, the per-core figure that
   does not depend on what else the machine runs;
3. with ``--scaling``, runs it again on the first half of the skeleton with the same
   common-features file: peak memory should not depend on the skeleton's size;
4. runs the straightforward line-by-line Python parser public repositories use
   (dict of common features, ``split`` per line, join per impression) on the first
   ``--naive-fraction`` of both files, in this process, and compares MB/s.
Prints a JSON summary (and writes it to WORKDIR/bench.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from esmm.aliccp.fake import FakeConfig, write_fake_raw


def _tree(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def _mem(pid: int) -> tuple[int, int]:
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
            elif line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, rss


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_measured(cmd: list[str]) -> dict:
    """Run ``cmd``; wall seconds, CPU seconds of the whole process tree (workers included),
    peak memory, and the machine's 1-minute load average (sampled every 0.2 s)."""
    start = time.perf_counter()
    cpu0 = _cpu_children()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"pss": 0, "rss": 0}
    loads: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            mems = [_mem(p) for p in _tree(proc.pid)]
            peak["pss"] = max(peak["pss"], sum(m[0] for m in mems))
            peak["rss"] = max(peak["rss"], max((m[1] for m in mems), default=0))
            loads.append(_loadavg())
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    output = proc.communicate()[0]
    done.set()
    t.join()
    if proc.returncode:
        sys.exit(f"{cmd} failed:\n{output}")
    return {"seconds": time.perf_counter() - start, "cpu_seconds": _cpu_children() - cpu0,
            "peak_pss_gb": peak["pss"] / 2**30, "peak_single_rss_gb": peak["rss"] / 2**30,
            "load_avg_min_mean_max": [min(loads, default=0), sum(loads) / max(1, len(loads)),
                                      max(loads, default=0)],
            "output": output}


def naive_parse(skeleton: Path, common: Path, fraction: float) -> dict:
    """The straightforward way: a dict of parsed common features, split() per line, join."""
    start = time.perf_counter()
    cpu = time.process_time()
    limit = fraction * common.stat().st_size
    users, nbytes, nlines, entries = {}, 0, 0, 0
    with open(common, encoding="ascii") as f:
        for line in f:
            nbytes += len(line)
            nlines += 1
            cfi, _, feats = line.rstrip("\n").split(",")
            d: dict[str, list] = {}
            for e in feats.split("\x01"):
                fid, rest = e.split("\x02")
                i, v = rest.split("\x03")
                d.setdefault(fid, []).append((int(i), float(v)))
            users[cfi] = d
            if nbytes >= limit:
                break
    limit = fraction * skeleton.stat().st_size
    missing = 0
    with open(skeleton, encoding="ascii") as f:
        for line in f:
            if nbytes >= limit + fraction * common.stat().st_size:
                break
            nbytes += len(line)
            nlines += 1
            sid, click, conv, cfi, _, feats = line.rstrip("\n").split(",")
            user = users.get(cfi)
            if user is None:
                missing += 1
                continue
            row = {k: list(v) for k, v in user.items()}  # the join: user + impression fields
            for e in feats.split("\x01"):
                fid, rest = e.split("\x02")
                i, v = rest.split("\x03")
                row.setdefault(fid, []).append((int(i), float(v)))
            entries += sum(len(x) for x in row.values())
    dt = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return {"bytes": nbytes, "lines": nlines, "seconds": dt, "mb_per_s": nbytes / dt / 1e6,
            "cpu_seconds": cpu, "mb_per_cpu_second": nbytes / cpu / 1e6,
            "lines_per_s": nlines / dt, "joined_rows_without_user": missing,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/aliccp_bench")
    ap.add_argument("--rows", type=int, default=4_500_000)
    ap.add_argument("--history-scale", type=float, default=1.0)
    ap.add_argument("--naive-fraction", type=float, default=0.25)
    ap.add_argument("--scaling", action="store_true", help="also prepare half the skeleton")
    ap.add_argument("--workers", type=int, default=0)
    a = ap.parse_args()
    work = Path(a.workdir)
    raw = work / "raw"
    skel, common = raw / "sample_skeleton_train.csv", raw / "common_features_train.csv"
    if not skel.is_file():
        t = time.perf_counter()
        write_fake_raw(raw, FakeConfig(rows=a.rows, test_rows=0, history_scale=a.history_scale))
        print(f"generated in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    raw_bytes = skel.stat().st_size + common.stat().st_size
    esmm = [sys.executable, "-m", "esmm", "aliccp", "prepare", "--force", "--workers",
            str(a.workers)]
    from esmm.aliccp import cscan

    res: dict = {"scanner": "compiled" if cscan.available() else "numpy (ESMM_NO_C_SCAN or not built)",
                 "machine": {"cores": os.cpu_count(),
                             "ram_gb": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30},
                 "raw": {"skeleton_mb": skel.stat().st_size / 1e6,
                         "common_mb": common.stat().st_size / 1e6}}
    runs = [("full", raw)]
    if a.scaling:
        half = work / "raw_half"
        half.mkdir(exist_ok=True)
        if not (half / skel.name).is_file():
            with open(skel, "rb") as f:
                f.seek(skel.stat().st_size // 2)
                f.readline()
                cut = f.tell()
            with open(skel, "rb") as f, open(half / skel.name, "wb") as g:
                g.write(f.read(cut))
            (half / common.name).unlink(missing_ok=True)
            (half / common.name).symlink_to(common)
        runs.append(("half_skeleton", half))
    for name, d in runs:
        nbytes = (d / skel.name).stat().st_size + common.stat().st_size
        r = run_measured(esmm + ["--raw", str(d), "--out", str(work / f"out_{name}")])
        rep = json.loads((work / f"out_{name}" / "aliccp_report.json").read_text())
        lines = sum(p["lines"] for p in rep["inputs"].values())
        read_s = sum(p["seconds"] for p in rep["inputs"].values())
        cores = a.workers or os.cpu_count()
        res[name] = {"raw_mb": nbytes / 1e6, "seconds": round(r["seconds"], 1),
                     "prepare_seconds_inside": rep["seconds"],
                     "cpu_seconds": round(r["cpu_seconds"], 1),
                     "mb_per_s": round(nbytes / r["seconds"] / 1e6, 1),
                     "mb_per_s_per_core": round(nbytes / r["seconds"] / 1e6 / cores, 1),
                     "mb_per_cpu_second": round(nbytes / r["cpu_seconds"] / 1e6, 1),
                     "lines_per_s": round(lines / r["seconds"]),
                     "lines_per_cpu_second": round(lines / r["cpu_seconds"]),
                     "load_avg_min_mean_max": [round(x, 1) for x in r["load_avg_min_mean_max"]],
                     "read_phase_mb_per_s": round(nbytes / read_s / 1e6, 1),
                     "peak_pss_gb": round(r["peak_pss_gb"], 2),
                     "peak_single_rss_gb": round(r["peak_single_rss_gb"], 2),
                     "rows": {k: v["rows"] for k, v in rep["splits"].items()},
                     "phase_seconds": rep["phase_seconds"],
                     "output_mb": round(sum(p.stat().st_size for p in (work / f"out_{name}").rglob("*")
                                            if p.is_file()) / 1e6)}
        print(json.dumps({name: res[name]}), file=sys.stderr)
    load0 = _loadavg()
    res["naive"] = {k: round(v, 2) for k, v in naive_parse(skel, common, a.naive_fraction).items()}
    res["naive"]["load_avg_start_end"] = [load0, _loadavg()]
    res["speedup_vs_naive_end_to_end"] = round(res["full"]["mb_per_s"] / res["naive"]["mb_per_s"], 1)
    res["speedup_vs_naive_read_phase"] = round(res["full"]["read_phase_mb_per_s"]
                                               / res["naive"]["mb_per_s"], 1)
    res["speedup_vs_naive_per_cpu_second"] = round(res["full"]["mb_per_cpu_second"]
                                                   / res["naive"]["mb_per_cpu_second"], 1)
    res["raw_total_mb"] = raw_bytes / 1e6
    print(json.dumps(res, indent=2))
    (work / "bench.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
