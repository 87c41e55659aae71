"""Every experiment, in order, each in its own process; the results land in bench/RESULTS.md.

Run: python -m bench.run_all        (make bench)
     GIF_BENCH_QUICK=1 python -m bench.run_all   the smallest configuration of each (seconds, not hours)
"""

from __future__ import annotations

import subprocess
import sys
import time

EXPERIMENTS = (
    "bench.removal_cost",
    "bench.selection_criteria",
    "bench.gif_baselines",
    "bench.backdoor",
    "bench.regression_toy",
    "bench.alternatives",
    "bench.solver_curvature",
    "bench.service",
    "bench.solvers",
)


def main() -> int:
    failed = []
    for module in EXPERIMENTS:
        start = time.perf_counter()
        print(f"== {module}", flush=True)
        code = subprocess.call([sys.executable, "-m", module])
        print(f"== {module}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(module)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
