"""The worker and the engine on the device this runs on (issue 8), written to bench/GPU.md.

1. Hessian-vector product cost: one HVP against one forward+backward of the same batch, for each
   implementation and for ``auto`` (which times them on the first batch and keeps the fastest), each timed in
   turns with a forward+backward, best of 3 rounds after a warm-up. On CUDA: TinyNet (MNIST), VGG-11 and
   ResNet-18 (3×3 stem) on CIFAR-sized inputs at batch 256, and torchvision's ViT-B/16 at 224² (batch 32); on
   the CPU: TinyNet and ResNet-18 (MNIST) at 256.
2. Job start overhead through a real stack (Redis, ``python -m worker``, the API): created → running, with
   the worker idle (its standby horse warm) and back to back, and submit → succeeded against the same edit
   in-process.
3. Healing: ``python -m service.tools.launch`` (``make run``), its worker killed with SIGKILL, a job submitted
   half a second later: seconds from the kill until the job runs and until it succeeds.

Every job wait is bounded (``bench.stack.wait_for_job``): a job that fails, or never ends, fails its section
with the job's error, the other sections still run, and the report says which failed (exit status 1).

Run: .venv/bin/python -m bench.gpu [--device auto|cpu|cuda|cuda:N] [--out FILE]
     (GIF_BENCH_QUICK=1: a smoke run in seconds, writes bench/GPU.quick.md). ``--device`` is where section 1 runs
     and the stack's worker (``GIF_WORKER_DEVICE``) runs the jobs of sections 2 and 3; ``make gpu-check``
     (``bench.gpu_check``) runs this as its last step and puts the report into its own bench/GPU.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import torch
import torchvision
from gif_client import Client

from bench.report import QUICK, device_description, host_description, markdown_table, report_file
from bench.setups import HVP_REPEATS, PRODUCT_COLUMNS, add_device_argument, hvp_row
from bench.stack import RESTARTED, demo_body, in_process, launched, start_stack, wait_for_job
from gif.demo import write_demo_assets
from gif.models.registry import build_model
from gif.spec import JobSpec
from worker import set_openmp_policy

OUT = report_file("GPU")
JOBS = 2 if QUICK else 7
KILL_SETTLE_S = 0.5  # a job posted in the very milliseconds the worker dies may be taken by it: see section 3
STANDBY_WARM_S = 6.0  # an idle worker's next job process is warm well within this (about 3 s on 2 cores)


def hvp_models(device: torch.device) -> list[tuple[str, torch.nn.Module, tuple[int, ...], int]]:
    """(name, model, sample shape, batch) for the device's table."""
    batch = 16 if QUICK else 256
    models: list[tuple[str, torch.nn.Module, tuple[int, ...], int]] = [
        ("TinyNet", build_model({"name": "tinynet", "config": {}}), (1, 28, 28), batch)
    ]
    if device.type == "cuda":
        models += [
            ("VGG-11", build_model({"name": "vgg11", "config": {"in_channels": 3}}), (3, 32, 32), batch),
            (
                "ResNet-18 (3×3 stem)",
                build_model({"name": "resnet18", "config": {"in_channels": 3}}),
                (3, 32, 32),
                batch,
            ),
            (
                "ViT-B/16 @224",
                torchvision.models.vit_b_16(weights=None, num_classes=10),
                (3, 224, 224),
                4 if QUICK else 32,
            ),
        ]
    else:
        models.append(("ResNet-18 (3×3 stem)", build_model({"name": "resnet18", "config": {}}), (1, 28, 28), batch))
    return models


def hvp_costs(device: torch.device) -> list[list[object]]:
    rows = []
    for name, model, shape, batch in hvp_models(device):
        rows.append(hvp_row(name, model, shape, batch, device))
        print(rows[-1], flush=True)
    return rows


def seconds_between(job: dict, start: str, end: str) -> float:
    begin, finish = (datetime.fromisoformat(job[k].replace("Z", "+00:00")) for k in (start, end))
    return (finish - begin).total_seconds()


def start_overhead(workdir: Path, device: torch.device) -> dict[str, Any]:
    """Jobs through a real stack whose worker runs on ``device``: created → running when the worker is idle and
    back to back; end-to-end overhead against the same edit in this process on ``device``."""
    with ExitStack() as stack:
        running = start_stack(stack, workdir, worker_device=str(device))
        api, body, demo = running.api, running.body, running.demo
        idle, end_to_end, where = [], [], None
        for _ in range(JOBS):
            time.sleep(0.5 if QUICK else STANDBY_WARM_S)
            started = time.perf_counter()
            job = wait_for_job(api, api.submit(body)["id"], poll_s=0.005)
            end_to_end.append(time.perf_counter() - started)
            idle.append(seconds_between(job, "created_at", "started_at"))
            where = job["result"]["device"]
        back_to_back = []
        for _ in range(JOBS):
            job = wait_for_job(api, api.submit(body)["id"], poll_s=0.005)
            back_to_back.append(seconds_between(job, "created_at", "started_at"))
    local = in_process(demo, JobSpec.model_validate(body), JOBS, device)
    in_process_s = statistics.median(local["edit_s"][1:]) + statistics.median(local["load_s"][1:])
    return {
        "idle": idle,
        "back_to_back": back_to_back,
        "end_to_end": end_to_end,
        "in_process_s": in_process_s,
        "device": where,
    }


def healing(workdir: Path, device: torch.device) -> dict[str, float]:
    """``make run``'s launcher (its worker on ``device``): kill its worker, submit a job at once; seconds until it
    runs and succeeds."""
    with launched(workdir, str(device)) as running, httpx.Client(base_url=running.base, timeout=60) as http:
        demo = workdir / "demo"
        write_demo_assets(demo)
        api = Client(http=http)
        body = demo_body(api, demo)
        wait_for_job(api, api.submit(body)["id"])
        time.sleep(0.5 if QUICK else STANDBY_WARM_S)
        killed = time.perf_counter()
        os.kill(running.worker_pid, signal.SIGKILL)
        time.sleep(KILL_SETTLE_S)
        job_id = api.submit(body)["id"]
        wait_for_job(api, job_id, poll_s=0.01, until=("running", "succeeded"))
        to_running = time.perf_counter() - killed
        wait_for_job(api, job_id, poll_s=0.01)
        succeeded = time.perf_counter() - killed
        restarted = int(running.wait_for(RESTARTED).group(1))
    return {
        "to_running_s": to_running,
        "to_succeeded_s": succeeded,
        "restarted": float(restarted != running.worker_pid),
    }


def hvp_section(rows: list[list[object]]) -> str:
    return f"""{markdown_table(["model", "batch", "forward+backward ms", *PRODUCT_COLUMNS], rows)}

Targets (issue 8): ≤ 2.5× on CUDA for VGG-11, ResNet-18 and ViT-B/16; ≤ 3× on the CPU for TinyNet and ResNet-18.
`auto` times one product of each implementation on the first batch and keeps the fastest; the cache
budget is half of the device's free memory. Attention runs on the math kernel inside curvature code."""


def jobs_section(jobs: dict[str, Any]) -> str:
    median = statistics.median
    overhead = median(jobs["end_to_end"][1:] or jobs["end_to_end"]) - jobs["in_process_s"]
    return f"""Jobs ran on {jobs["device"]["type"]} ({jobs["device"]["name"]}).

| | median s | max s | runs |
| --- | --- | --- | --- |
| created → running, worker idle (its standby job process warm) | {median(jobs["idle"]):.3f} | {max(jobs["idle"]):.3f} | {len(jobs["idle"])} |
| created → running, jobs back to back | {median(jobs["back_to_back"]):.3f} | {max(jobs["back_to_back"]):.3f} | {len(jobs["back_to_back"])} |
| submit → succeeded seen by a client polling every 5 ms | {median(jobs["end_to_end"][1:] or jobs["end_to_end"]):.3f} | {max(jobs["end_to_end"]):.3f} | {len(jobs["end_to_end"])} |
| the same edit in-process (loading + `gif.edit.run`) | {jobs["in_process_s"]:.3f} | | |
| **overhead over the in-process edit** | **{overhead:.3f}** | | |

Target: ≤ 1 s. Each job runs in a fresh interpreter that was started and warmed up before the job came
(`worker.horse`); the next one starts as a job is handed over. Back to back, a job that comes before the
next standby is warm waits for it: that row is the price of a fresh process per job for jobs shorter than
a standby's start (imports and a warm-up edit, a few CPU-seconds, here on cores shared with the running
job). Real edits take seconds to minutes, long enough for the next standby to be warm when they end.
The in-process row runs in this benchmark's own process; a negative overhead means the worker's fresh,
warmed-up process ran the edit a little faster than this long-lived one."""


def healing_section(heal: dict[str, float]) -> str:
    return f"""| worker killed (SIGKILL) → | seconds |
| --- | --- |
| a job submitted {KILL_SETTLE_S} s later is running | {heal["to_running_s"]:.2f} |
| … and has succeeded | {heal["to_succeeded_s"]:.2f} |

Target: back and taking jobs within 10 s. The launcher restarts the worker after 1 s (doubling to 30 s
while it keeps dying); the API stays up throughout. A job posted in the very milliseconds the worker dies
can be taken off the queue by the dying worker: the reaper (API or any worker host) puts it back once it
has been queued for a heartbeat window (`GIF_HEARTBEAT_TTL_S`, 15 s) and the queue no longer holds it (not
waiting, and no live worker's lease on it), so it runs within about 25 s instead (up to RQ's 90 s lease if the
dying worker had already leased it)."""


@dataclass
class Section:
    """One section of the report: its title, and its body, or the error that stopped it."""

    title: str
    run: Callable[[], Any]
    render: Callable[[Any], str]
    body: str = ""
    failed: str | None = None
    seconds: float = 0.0

    def measure(self) -> None:
        started = time.perf_counter()
        try:
            self.body = self.render(self.run())
        except Exception as exc:  # the next section still runs; the report says what stopped this one
            self.failed = f"{type(exc).__name__}: {exc}"
            print(f"{self.title}: failed: {self.failed}", file=sys.stderr, flush=True)
        self.seconds = time.perf_counter() - started

    def text(self) -> str:
        if self.failed is None:
            return f"## {self.title}\n\n{self.body}\n"
        return f"## {self.title}\n\n**Failed** after {self.seconds:.0f} s:\n\n```\n{self.failed.strip()[-3000:]}\n```\n"


def report(started: datetime, device: torch.device, host: str, sections: list[Section]) -> str:
    failed = [s.title.split(".")[0] for s in sections if s.failed is not None]
    verdict = f"**sections {', '.join(failed)} failed**" if failed else "every section ran"
    quick = " (GIF_BENCH_QUICK=1: smoke-run sizes, numbers not kept)" if QUICK else ""
    body = "\n".join(section.text() for section in sections)
    return f"""# The worker and the engine on {device_description(device)}

Command: `.venv/bin/python -m bench.gpu --device {device}` (this file is written by it){quick}
Date: {started:%Y-%m-%d %H:%M} UTC
Machine: {host}; at the end {os.getloadavg()[0]:.2f}
Device: {device_description(device)}; {verdict}

{body}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_argument(parser)
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the report goes (default: {OUT})")
    args = parser.parse_args(argv)
    set_openmp_policy(os.environ)  # the worker's OpenMP policy, for the processes it starts and the report
    device: torch.device = args.device
    started = datetime.now(UTC)
    host = host_description(device)
    print(host, device, flush=True)
    with tempfile.TemporaryDirectory(prefix="gif-bench-") as tmp:
        sections = [
            Section(
                "1. One Hessian-vector product against one forward+backward of the same batch (timed in turns, best of "
                f"{HVP_REPEATS} rounds after a warm-up)",
                lambda: hvp_costs(device),
                hvp_section,
            ),
            Section(
                "2. Job start overhead (demo job: MLP on the digits, CG 20 iterations, auto step)",
                lambda: start_overhead(Path(tmp) / "stack", device),
                jobs_section,
            ),
            Section(
                "3. Healing under `make run` (`python -m service.tools.launch`)",
                lambda: healing(Path(tmp) / "launch", device),
                healing_section,
            ),
        ]
        for section in sections:
            section.measure()
    text = report(started, device, host, sections)
    args.out.write_text(text)
    print(text)
    return 1 if any(section.failed for section in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
