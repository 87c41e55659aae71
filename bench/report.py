"""Where and how every benchmark reports: the quick flag, the output files, markdown tables, the machine line, timing.

One convention for every experiment:

- ``QUICK`` (``GIF_BENCH_QUICK=1``): the smallest configuration of every experiment, a smoke run whose numbers are
  not kept (the suite runs it so that the harness cannot rot).
- The numbered sections of ``RESULTS`` (bench/RESULTS.md, or ``GIF_BENCH_RESULTS``) are written by
  ``write_section``, each stamped with its command, the machine line and the date; plots and per-seed data go
  ``beside_results``.
- A benchmark with a report of its own writes ``report_file(NAME)``: bench/NAME.md, or bench/NAME.quick.md in a
  quick run (the committed numbers are never overwritten by a smoke run); ``kept_sections`` keeps the sections other
  benchmarks wrote into it.
"""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from gif.devices import device_report, synchronize

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = Path(os.environ.get("GIF_BENCH_RESULTS", BENCH_DIR / "RESULTS.md"))
QUICK = os.environ.get("GIF_BENCH_QUICK") == "1"


def report_file(name: str, quick: bool = QUICK) -> Path:
    """A benchmark's own report: bench/NAME.md, or bench/NAME.quick.md for a quick run."""
    return BENCH_DIR / f"{name}{'.quick' if quick else ''}.md"


def beside_results(name: str) -> Path:
    """A plot or data file of an experiment, beside the results it illustrates."""
    return RESULTS.parent / name


# --- timing --------------------------------------------------------------------------------------


def best_of(fn: Callable[[], Any], repeats: int = 3, device: torch.device | None = None) -> float:
    """Best wall time of ``repeats`` calls after one warm-up (timings swing when the cores are shared); with a CUDA
    ``device``, synchronised before and after each call so that the time covers the kernels."""
    return best_in_turns({"": fn}, repeats, device)[""]


def best_in_turns(
    fns: dict[str, Callable[[], Any]], repeats: int = 3, device: torch.device | None = None
) -> dict[str, float]:
    """Each function's best wall time over ``repeats`` rounds that call every one once in turn, after a warm-up
    round: two of them are then timed side by side, not minutes apart while the shared cores' load moves (a
    forward+backward timed before the products swung their ratios by a fifth from run to run). Synchronised on a
    CUDA ``device`` as ``best_of``."""
    seconds = dict.fromkeys(fns, math.inf)
    for round_ in range(repeats + 1):
        for label, fn in fns.items():
            if device is not None:
                synchronize(device)
            start = time.perf_counter()
            fn()
            if device is not None:
                synchronize(device)
            if round_:
                seconds[label] = min(seconds[label], time.perf_counter() - start)
    return seconds


# --- the machine line ------------------------------------------------------------------------------


def cpu_model() -> str:
    """The processor's name (Linux: /proc/cpuinfo), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_build() -> str:
    """torch's version, with the CUDA it was built for when it was (a CUDA build may still run on the CPU)."""
    return f"torch {torch.__version__}" + (f" (built for CUDA {torch.version.cuda})" if torch.version.cuda else "")


def device_description(device: torch.device) -> str:
    """The device in words: the GPU's name, index and memory on CUDA; the processor's name on the CPU."""
    where = device_report(device)
    if where["type"] != "cuda":
        return f"CPU ({where['name']})"
    memory = where.get("total_memory_bytes")
    return f"{where['name']} (cuda:{where['index']}" + (f", {memory / 2**30:.0f} GiB)" if memory else ")")


def machine(device: torch.device | None = None) -> str:
    """One line for a RESULTS.md section's header; with a CUDA ``device``, the GPU it ran on too."""
    line = f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    return line if device is None or device.type != "cuda" else f"{line}; on {device_description(device)}"


def host_description(device: torch.device | None = None) -> str:
    """The machine in one line for a report of its own, with its load: the service's numbers depend on what else
    shares the cores. With a ``device`` (where the edits run; default: the CPU) a CUDA device is named, GPU model and
    memory."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    where = "CPU" if device is None or device.type != "cuda" else device_description(device)
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), {memory:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {torch_build()}, edits on {where}, load average at start "
        f"{os.getloadavg()[0]:.2f}"
    )


# --- markdown --------------------------------------------------------------------------------------


def mean_std(values: list[float], digits: int = 4) -> str:
    """``mean ± standard deviation`` of values over seeds (the mean alone for one value)."""
    spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.{digits}f}{spread}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display here); imported only by plotting code."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_section(
    key: str, title: str, body: str, command: str, device: torch.device | None = None, target: Path = RESULTS
) -> None:
    """Replace (or append) one experiment's section of ``target`` (RESULTS.md), stamped with command, machine (and the
    GPU, when ``device`` is one) and date."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- section:{key} -->\n## {title}\n\n"
        f"Command: `{command}` · {stamp} · {machine(device)}\n\n{body.strip()}\n<!-- end:{key} -->\n"
    )
    text = target.read_text() if target.exists() else "# Benchmark results\n\n"
    pattern = re.compile(rf"<!-- section:{re.escape(key)} -->.*?<!-- end:{re.escape(key)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text + "\n" + section
    target.write_text(text)


def kept_sections(path: Path) -> str:
    """The ``write_section`` sections of ``path``, for a report that rewrites the rest of the file around them."""
    text = path.read_text() if path.exists() else ""
    return "".join(re.findall(r"<!-- section:.*?<!-- end:[^>]*-->\n", text, re.S))


def reaching(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """The products after which a solve's residual curve ((products, residual), in order) first reaches ``threshold``
    (None: not within the solve)."""
    return next((products for products, residual in curve if residual <= threshold), None)


def first_reaching(curve: list[tuple[int, float]], threshold: float) -> str:
    """``reaching`` as a table cell: "> N" where the curve of N products never reached it."""
    products = reaching(curve, threshold)
    return f"> {curve[-1][0]}" if products is None else str(products)
