"""Every experiment, in order, each in its own process; the results land in bench/RESULTS.md.

Run: python -m bench.run_all        (make bench)
     GIF_BENCH_QUICK=1 python -m bench.run_all   the smallest configuration of each (seconds, not hours), all
     in this one process: each ``python -m`` would import torch and the engine again (seconds apiece on 2 cores)
"""

from __future__ import annotations

import resource
import runpy
import subprocess
import sys
import time
import traceback

from bench.report import QUICK

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
    "bench.curvature",
    "bench.ingest",
    "bench.sample",
    "bench.sample_sizes",
    "bench.step_plateau",
    "bench.unlearning",
    "bench.backdoor_repair",
    "bench.transform_memory",
    "bench.converged_cost",
)


def in_this_process(module: str) -> int:
    """``python -m module`` without a new interpreter: its exit status (1 and the traceback when it raises)."""
    argv = sys.argv
    sys.argv = [module]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        sys.argv = argv
    return 0


def cpu_seconds() -> float:
    """User + system time of this process and its finished children: what a run costs when the cores are shared."""
    mine, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    failed = []
    for module in EXPERIMENTS:
        start, cpu = time.perf_counter(), cpu_seconds()
        print(f"== {module}", flush=True)
        code = in_this_process(module) if QUICK else subprocess.call([sys.executable, "-m", module])
        print(
            f"== {module}: exit {code} after {time.perf_counter() - start:.0f} s ({cpu_seconds() - cpu:.0f} s CPU)",
            flush=True,
        )
        if code:
            failed.append(module)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
