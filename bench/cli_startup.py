"""Benchmark (not a test): wall and CPU time of the torch-free CLI paths, each in a fresh interpreter.

    python bench/cli_startup.py [--runs 5]

Runs ``loom validate workflows/default.json`` and ``loom nodes --json`` (as ``python cli.py ...``, the same code
as the ``loom`` entry point) ``--runs`` times each, plus ``python -c pass`` as the floor of any Python command on
this machine, and prints the median and best wall seconds, the median CPU seconds (user+sys of the child) and
whether torch was imported. Target (issue 10, item 2): under 1 s wall, torch not imported
(tests/test_torch_free.py asserts the latter).

Measured (Nov 30 2026, 2 cores shared with other jobs, load average 8-15): ``python -c pass`` median 0.9-1.4 s
wall (0.03 s CPU: the machine, not Python, sets the wall floor); validate 0.25-0.35 s CPU; nodes --json
0.3-0.4 s CPU; torch never imported. See the printed figures for this run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = ("import sys; "
         "import cli; rc = cli.main(sys.argv[1:]); "
         "sys.stderr.write('TORCH=%d\\n' % ('torch' in sys.modules)); sys.exit(rc)")


def timed(argv: list[str]) -> tuple[float, float, str]:
    """(wall s, child CPU s, stderr) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        sys.exit(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), r.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    cases = {"python -c pass": [sys.executable, "-c", "pass"],
             "loom validate workflows/default.json": [sys.executable, "-c", PROBE, "validate",
                                                      "workflows/default.json"],
             "loom nodes --json": [sys.executable, "-c", PROBE, "nodes", "--json"]}
    with open("/proc/loadavg") as f:
        print(f"load average: {f.read().split()[0]} on {os.cpu_count()} cores")
    for name, argv in cases.items():
        runs = [timed(argv) for _ in range(a.runs)]
        walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
        torch = None if name.startswith("python") else any("TORCH=1" in r[2] for r in runs)
        print(json.dumps({"command": name, "wall_median_s": round(statistics.median(walls), 3),
                          "wall_best_s": round(min(walls), 3), "cpu_median_s": round(statistics.median(cpus), 3),
                          "torch_imported": torch}))


if __name__ == "__main__":
    main()
