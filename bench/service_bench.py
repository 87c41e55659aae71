"""The service's performance numbers (issues 3, 13, 14 and 25), measured on a real stack, written to bench/SERVICE.md.

1. ``GET /v1/jobs/{id}`` latency, 50 concurrent pollers for 20 s: closed loop (each poller asks again as
   soon as it has an answer) and at a 100 ms poll interval (what a client would do).
2. A 1 GiB safetensors checkpoint uploaded, edited and downloaded through the local-directory store and
   through S3 (SeaweedFS when ``weed`` is on PATH, else moto's server), with the API's memory rise and speed.
3. End-to-end overhead: submit → succeeded through the service, against the same edit run in-process
   with ``gif.edit.run`` (same spec, same data, same machine, one run of this script).
4. Eight concurrent 256 MiB uploads while a job is polled every 100 ms: the API's memory rise, the polls' p99.
5. Schema fuzzing: ``tests/service/test_api_fuzz.py`` (Schemathesis against the committed schema, the app on the
   loopback) with ``FUZZ_EXAMPLES`` examples per operation: operations, responses by status, failures.

Run: .venv/bin/python -m bench.service_bench   (not part of the test suite; about ten minutes)
     GIF_BENCH_QUICK=1 …                         a smoke run in seconds (writes bench/SERVICE.quick.md)
The stack is real: a redis-server (REDIS_URL when it answers), ``python -m service`` under uvicorn and
``python -m worker``, all started here on free ports with throwaway storage.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from gif_client import Client

from bench.report import QUICK, host_description, kept_sections, report_file
from bench.stack import (
    JOB_TIMEOUT_S,
    Stack,
    in_process,
    latency_summary,
    poll,
    start_stack,
    wait_for_job,
)
from gif.io.files import write_safetensors
from gif.spec import JobSpec
from service.tools.local_s3 import local_s3, new_bucket, seaweedfs_binary
from worker import set_openmp_policy

OUT = report_file("SERVICE")
POLLERS = 50
POLL_SECONDS = 3.0 if QUICK else 20.0
POLL_INTERVAL_S = 0.1
E2E_RUNS = 2 if QUICK else 7
FUZZ_EXAMPLES = 2 if QUICK else 150  # quick: the entry point only; the suite fuzzes with 40
FUZZ_TEST = "tests/service/test_api_fuzz.py"
BIG_SIZES = [2048, 2048, 4] if QUICK else [16384, 16384, 4]  # 16384²+…: 268,500,996 float32 parameters, 1.00 GiB
WRITE_CHUNK = 64 << 20
UPLOADS, UPLOAD_POLLERS, UPLOAD_REPEATS = 8, 10, 1 if QUICK else 3
S3_SERVERS = {"seaweedfs": "SeaweedFS, `weed mini`, on this disk", "moto": "moto's server, in memory"}
UPLOAD_SIZES = [1024, 1024, 4] if QUICK else [8192, 8192, 4]  # 67,141,636 float32 parameters: 256 MiB


# --- 1. polling latency -------------------------------------------------------------------------


def polling_latency(port: int, job_id: str) -> dict[str, dict[str, float]]:
    results = {}
    for name, interval in (("closed loop", None), (f"every {POLL_INTERVAL_S * 1000:.0f} ms", POLL_INTERVAL_S)):
        latencies = asyncio.run(poll(port, f"/v1/jobs/{job_id}", POLL_SECONDS, interval, POLLERS))
        results[name] = latency_summary(latencies, POLL_SECONDS)
        print(name, results[name], flush=True)
    return results


# --- 2. a 1 GiB checkpoint through the store: memory while it is uploaded ---------------------------


def write_big_checkpoint(path: Path, sizes: list[int] = BIG_SIZES, seed: int = 0) -> int:
    """A safetensors file for ``mlp`` ``sizes``, written in chunks (this process never holds it whole)."""
    shapes = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"layers.{2 * i}.weight"] = [fan_out, fan_in]
        shapes[f"layers.{2 * i}.bias"] = [fan_out]
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    pattern = np.random.default_rng(seed).standard_normal(WRITE_CHUNK // 4, dtype=np.float32).tobytes()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        remaining = offset
        while remaining:
            fh.write(pattern[: min(remaining, len(pattern))])
            remaining -= min(remaining, len(pattern))
    return path.stat().st_size


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakMemory:
    """The peak resident memory of process ``pid`` while the ``with`` block runs: sampled every 20 ms, and the
    kernel's own high-water mark (VmHWM, reset on entry). ``result`` is filled in on exit."""

    def __init__(self, pid: int):
        self.pid, self.done = pid, threading.Event()
        self.result: dict[str, float] = {}

    def __enter__(self) -> PeakMemory:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        self.before = self.peak = rss_bytes(self.pid)
        self.sampler = threading.Thread(target=self._sample)
        self.sampler.start()
        self.started = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self.started
        self.done.set()
        self.sampler.join()
        kernel = rss_bytes(self.pid, "VmHWM")
        self.result = {
            "seconds": seconds,
            "rss_before_mib": self.before / 2**20,
            "rss_peak_sampled_mib": self.peak / 2**20,
            "rss_peak_kernel_mib": kernel / 2**20,
            "increase_mib": (max(self.peak, kernel) - self.before) / 2**20,
        }


def upload_memory(base: str, api_pid: int, workdir: Path, sizes: list[int] = BIG_SIZES) -> dict[str, float]:
    path = workdir / "big.safetensors"
    size = write_big_checkpoint(path, sizes)
    with httpx.Client(base_url=base, timeout=600) as http, PeakMemory(api_pid) as memory:
        record = Client(http=http).upload_model(path, {"name": "mlp", "config": {"sizes": sizes}})
    path.unlink()
    result = {"file_bytes": size, "num_parameters": record["num_parameters"], "model_id": record["id"], **memory.result}
    print(result, flush=True)
    return result


# --- 2. (continued) edited and downloaded, on the local directory and on S3 -----------------------


def big_job_inputs(api: Client, workdir: Path, model_id: str) -> dict[str, str]:
    """Training data for the 1 GiB MLP: 64 random inputs of its width (a few MiB)."""
    width, classes = BIG_SIZES[0], BIG_SIZES[-1]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, width, generator=generator)
    path = workdir / "big-train.safetensors"
    write_safetensors(path, {"x": x, "y": torch.arange(64) % classes})
    return {"model_id": model_id, "train_dataset_id": api.upload_dataset(path)["id"]}


# A job whose output is the whole 1 GiB checkpoint, as cheap as an edit of it gets: the first-order ablation
# (no Hessian), a fixed step, a small evaluation.
BIG_JOB = {
    "request": {"kind": "remove_samples", "indices": list(range(8))},
    "method": "first_order",
    "step": {"mode": "fixed", "scale": 1.0},
    "solver": {"gradient_samples": 8},
    "evaluation": {"retain_samples": 32},
}


def artifact_round_trip(running: Stack, workdir: Path) -> dict[str, dict[str, float]]:
    """Upload the 1 GiB checkpoint, edit it (the worker writes 1 GiB back to the store), download the edit;
    the API's memory is watched during the upload and the download."""
    upload = upload_memory(running.base, running.api_pid, workdir)
    api = running.api
    body = {**BIG_JOB, **big_job_inputs(api, workdir, str(upload["model_id"]))}
    job = wait_for_job(api, api.submit(body)["id"], timeout_s=max(JOB_TIMEOUT_S, 1800))
    with PeakMemory(running.api_pid) as memory:
        path = api.download(job["id"], workdir / "edited.safetensors")
    size = path.stat().st_size
    path.unlink()
    download = {"file_bytes": size, **memory.result}
    print("download", download, flush=True)
    return {"upload": upload, "download": download, "edit_s": job["result"]["timings"]["total_s"]}


# --- 4. eight concurrent 256 MiB uploads while a job is polled ---------------------------------


def poll_until(port: int, path: str, polling: Any, stop: Any, results: Any) -> None:
    """``UPLOAD_POLLERS`` clients polling ``path`` every ``POLL_INTERVAL_S`` until ``stop`` is set (in a process
    of its own; it sets ``polling`` once its interpreter is up); puts (latencies, seconds) on ``results``."""
    polling.set()
    started = time.perf_counter()
    latencies = asyncio.run(poll(port, path, 3600, POLL_INTERVAL_S, UPLOAD_POLLERS, stop=stop))
    results.put((latencies, time.perf_counter() - started))


def concurrent_uploads(running: Stack, workdir: Path, job_id: str) -> dict[str, Any]:
    """``UPLOADS`` different 256 MiB checkpoints uploaded at once, while ``UPLOAD_POLLERS`` clients poll a job
    every 100 ms: the API's memory rise and the polls' latency meanwhile."""
    paths = [workdir / f"upload-{i}.safetensors" for i in range(UPLOADS)]
    for i, path in enumerate(paths):
        write_big_checkpoint(path, UPLOAD_SIZES, seed=i + 1)
    spawn = multiprocessing.get_context("spawn")
    polling, done, results = spawn.Event(), spawn.Event(), spawn.Queue()

    def upload(path: Path) -> float:
        started = time.perf_counter()
        with Client(running.base, timeout_s=600) as client:
            client.upload_model(path, {"name": "mlp", "config": {"sizes": UPLOAD_SIZES}})
        return time.perf_counter() - started

    # The pollers run in a process of their own: the uploading threads here would otherwise delay reading the
    # answers, and the measured latency would be this process's, not the API's.
    poller = spawn.Process(target=poll_until, args=(running.port, f"/v1/jobs/{job_id}", polling, done, results))
    poller.start()
    if not polling.wait(timeout=300):  # its interpreter takes seconds to start, more on busy cores
        raise RuntimeError("the polling process did not start")
    time.sleep(1.0)  # the pollers poll alone for a while before the uploads start
    with PeakMemory(running.api_pid) as memory, ThreadPoolExecutor(UPLOADS) as pool:
        upload_s = list(pool.map(upload, paths))
    done.set()
    latencies, polled = results.get(timeout=120)  # the pollers stop within one interval of ``done``
    poller.join(timeout=60)
    sizes = [path.stat().st_size for path in paths]
    for path in paths:
        path.unlink()
    result = {
        "file_bytes": sizes[0],
        "upload_s": upload_s,
        "polls": latency_summary(latencies, polled),
        **memory.result,
    }
    print("concurrent uploads", result, flush=True)
    return result


# --- 3. end-to-end overhead -----------------------------------------------------------------------


def through_service(api: Client, body: dict) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"submit_to_succeeded_s": [], "worker_edit_s": [], "queue_wait_s": []}
    for _ in range(E2E_RUNS + 1):
        started = time.perf_counter()
        job = wait_for_job(api, api.submit(body)["id"], poll_s=0.005)
        times["submit_to_succeeded_s"].append(time.perf_counter() - started)
        times["worker_edit_s"].append(job["result"]["timings"]["total_s"])
        created, begun = (datetime.fromisoformat(job[k].replace("Z", "+00:00")) for k in ("created_at", "started_at"))
        times["queue_wait_s"].append((begun - created).total_seconds())
    return times


def median(values: list[float], skip_first: bool = True) -> float:
    return statistics.median(values[1:] if skip_first else values)


# --- report ---------------------------------------------------------------------------------------


def schema_fuzzing() -> dict[str, Any]:
    """The suite's fuzzing test at ``FUZZ_EXAMPLES`` examples per operation: its summary line, outcome and time."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", FUZZ_TEST],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "GIF_FUZZ_EXAMPLES": str(FUZZ_EXAMPLES)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    summary = re.search(r"fuzz: (\d+) operations, (\d+) responses, statuses (\[.*\])", done.stdout)
    outcome = re.findall(r"^(\d+ (?:passed|failed).*) in ", done.stdout, re.M)
    return {
        "seconds": time.perf_counter() - started,
        "operations": int(summary.group(1)) if summary else 0,
        "responses": int(summary.group(2)) if summary else 0,
        "statuses": summary.group(3) if summary else "(no summary: the run failed before it)",
        "outcome": outcome[-1] if outcome else f"exit status {done.returncode}",
        "failed": done.returncode != 0,
    }


def report(
    started: datetime,
    host: str,
    redis_url: str,
    polling: dict,
    body_bytes: int,
    stores: dict[str, dict],
    uploads: list[dict],
    local: dict,
    service: dict,
    fuzzing: dict,
) -> str:
    edit, load = median(local["edit_s"]), median(local["load_s"])
    e2e = median(service["submit_to_succeeded_s"])
    rows = "\n".join(
        f"| {name} | {r['requests']:,} | {r['per_second']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
        f"{'yes' if r['p99_ms'] < 20 else 'no'} |"
        for name, r in polling.items()
    )
    memory = stores["local directory"]["upload"]
    store_rows = "\n".join(
        f"| {name} | {direction} | {r['rss_before_mib']:.0f} MiB | {max(r['rss_peak_sampled_mib'], r['rss_peak_kernel_mib']):.0f} MiB | "
        f"**{r['increase_mib']:.0f} MiB** | {r['seconds']:.1f} s | {r['file_bytes'] / 2**20 / r['seconds']:.0f} MiB/s |"
        for name, result in stores.items()
        for direction, r in (("upload + validation", result["upload"]), ("download", result["download"]))
    )
    upload_rows = "\n".join(
        f"| {i + 1} | {u['rss_before_mib']:.0f} MiB | {max(u['rss_peak_sampled_mib'], u['rss_peak_kernel_mib']):.0f} MiB | **{u['increase_mib']:.0f} MiB** | "
        f"{u['seconds']:.1f} s | {max(u['upload_s']):.1f} s | {u['polls']['requests']:,} | {u['polls']['p50_ms']:.1f} ms | **{u['polls']['p99_ms']:.1f} ms** | {u['polls']['max_ms']:.1f} ms |"
        for i, u in enumerate(uploads)
    )
    return f"""# Service performance (issues 3, 13, 14 and 25)

Command: `.venv/bin/python -m bench.service_bench` (this file is written by it)
Date: {started:%Y-%m-%d %H:%M} UTC
Machine: {host}; at the end {os.getloadavg()[0]:.2f} (a load above ~0.3 means other processes shared the cores)
Stack: Redis at {redis_url}, `python -m service` (uvicorn, one process, JSON access log on, to a file) and
`python -m worker` (one RQ worker; each job in a fresh, pre-warmed interpreter), all on this machine with default settings; the load generator runs
here too and competes for the same cores.

## 1. `GET /v1/jobs/{{id}}` with {POLLERS} concurrent pollers for {POLL_SECONDS:.0f} s (a succeeded job: {body_bytes:,} B of JSON)

| polling | requests | per second | p50 ms | p99 ms | max ms | p99 < 20 ms |
| --- | --- | --- | --- | --- | --- | --- |
{rows}

Closed loop measures saturation: 50 clients asking again the moment they are answered keep ~50 requests
queued, so each waits for the ~49 ahead of it and latency is 50 / throughput. The 100 ms interval is what
a polling client does; that is the case the < 20 ms p99 target is about.

## 2. A {memory["file_bytes"] / 2**30:.2f} GiB safetensors checkpoint through the artifact store: local directory and S3

`mlp` {BIG_SIZES} ({memory["num_parameters"]:,} parameters): uploaded (`Client.upload_model`), edited by a
job that writes the whole edited checkpoint back to the store (the first-order ablation, a fixed step; the
worker's edit took {", ".join(f"{result['edit_s']:.0f} s ({name})" for name, result in stores.items())}), and downloaded
(`Client.download`, sha256 checked against the ETag). One stack per store, one after the other in this run; the
S3 server runs on this machine too.

| store | transfer | API RSS before | peak (sampled every 20 ms, and VmHWM) | increase | time | throughput |
| --- | --- | --- | --- | --- | --- | --- |
{store_rows}

Uploads stream to a staging file (hashed on the way), `gif.io.files.scan_safetensors` checks shapes, dtypes and
finiteness in 8 MiB chunks; on S3 the validated file then goes up in 16 MiB parts, four at a time. Downloads are
a file response from the local directory, and from S3 a stream of 1 MiB chunks through the API (or, with
`GIF_S3_PRESIGN_EXPIRY_S`, a redirect that takes the API out of the path).

## 3. End-to-end overhead (demo job: `remove_class` [8], MLP 64-32-10 on the digits, CG 20 iterations, auto step)

Median of {E2E_RUNS} runs after one warm-up run each:

| | seconds |
| --- | --- |
| in-process `gif.edit.run` (the edit alone) | {edit:.3f} |
| in-process model and data loading | {load:.3f} |
| service: submit → `succeeded` seen by a client polling every 5 ms | {e2e:.3f} |
| of which the worker's `gif.edit.run` (`result.timings.total_s`) | {median(service["worker_edit_s"]):.3f} |
| of which waiting in the queue (created → started) | {median(service["queue_wait_s"]):.3f} |
| **overhead: service − (in-process edit + loading)** | **{e2e - edit - load:.3f}** |

First runs: in-process edit {local["edit_s"][0]:.3f} s; service {service["submit_to_succeeded_s"][0]:.3f} s ({service["queue_wait_s"][0]:.3f} s of it in the queue).
Lazy first-use costs are paid before a job comes, not by the job: each job's process runs one tiny edit while
it waits for its job, and the API runs its meta-device check once at start-up. That is also what the queue row
measures: every job runs in a fresh interpreter, started when the previous job was handed over, which needs about
3 s on this machine to import torch and warm up; a job submitted the moment the previous one ended waits for it
(these runs are back to back), while a job that finds the worker idle starts at once (the first run). Both sides compute alike: {torch.get_num_threads()} torch threads and
`OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY")}` (the worker's default, see `worker/__init__.py`).

## 4. {UPLOADS} concurrent {uploads[0]["file_bytes"] / 2**20:.0f} MiB uploads while {UPLOAD_POLLERS} clients poll a job every {POLL_INTERVAL_S * 1000:.0f} ms ({UPLOAD_REPEATS} rounds)

{UPLOADS} different checkpoints (`mlp` {UPLOAD_SIZES}), each from its own client thread, all started at once against
the local-directory stack; the pollers run in a process of their own from 3 s before the first upload to the end
of the last. The uploaders, the pollers and the API share this machine's cores.

| round | API RSS before | peak | increase (target < 512 MiB) | uploads done in | slowest upload | polls | poll p50 | poll p99 (target < 50 ms) | poll max |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{upload_rows}

Uploads are CPU-bound here (multipart parsing, sha256, the finiteness scan): the API parses, hashes and validates
one upload at a time (`service.web.uploads.upload_limiter`), so that the event loop keeps a core for the polls;
before that limit, with eight threads at it, polls had p50 9 ms and p99 118–373 ms on this machine.

## 5. Schema fuzzing ({FUZZ_EXAMPLES} examples per operation)

`GIF_FUZZ_EXAMPLES={FUZZ_EXAMPLES} python -m pytest -q -s {FUZZ_TEST}` (the suite runs it with 40): Schemathesis
generates requests from the committed schema (seeded: the same ones every run) and sends them with the API key to
the app served on the loopback (real Redis, no worker); every response must be no 5xx and conform to the schema
(status codes, content types, headers, problem+json bodies), schema-breaking and key-less requests must be refused.

| operations | responses | by status | outcome | seconds | failures |
| --- | --- | --- | --- | --- | --- |
| {fuzzing["operations"]} | {fuzzing["responses"]:,} | {fuzzing["statuses"]} | {fuzzing["outcome"]} | {fuzzing["seconds"]:.0f} | **{"yes" if fuzzing["failed"] else "none"}** |

What it found and what was fixed (issue 25): a cursor of non-ASCII digits (`cursor=²`: `str.isdigit()` let it
through and `int()` failed: a 500) is now refused by the schema's pattern with a 422; a 405's `Allow` named only
the first route at the path (`POST` on `/v1/models`, which has `GET` too); a query parameter an operation does not
take was ignored (`?statu=failed` listed every job) and is now a 422 naming it; `POST /v1/jobs`'s 400 (a body that
is not JSON) was undocumented.
"""


def main() -> int:
    set_openmp_policy(os.environ)  # the worker's OpenMP policy, for the processes it starts and the report
    started = datetime.now(UTC)
    host = host_description()
    print(host, flush=True)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gif-bench-")))
        running = start_stack(stack, workdir)
        api, body = running.api, running.body
        service = through_service(api, body)
        local = in_process(running.demo, JobSpec.model_validate(body), E2E_RUNS)
        job_id = wait_for_job(api, api.submit(body)["id"])["id"]
        polling = polling_latency(running.port, job_id)
        body_bytes = len(api.http.get(f"/v1/jobs/{job_id}").content)
        uploads = [concurrent_uploads(running, workdir, job_id) for _ in range(UPLOAD_REPEATS)]
        stores = {"local directory": artifact_round_trip(running, workdir)}
        kind = "seaweedfs" if seaweedfs_binary() else "moto"
        endpoint = stack.enter_context(local_s3(kind, workdir / "s3-server"))
        bucket = new_bucket(endpoint, "bench")
        on_s3 = start_stack(stack, workdir / "s3", storage_url=f"s3://{bucket}/gif", s3_endpoint_url=endpoint)
        stores[f"S3 ({S3_SERVERS[kind]})"] = artifact_round_trip(on_s3, workdir)
    fuzzing = schema_fuzzing()
    text = report(started, host, running.redis_url, polling, body_bytes, stores, uploads, local, service, fuzzing)
    OUT.write_text(text + ("\n" + kept if (kept := kept_sections(OUT)) else ""))  # other benches' sections stay
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
