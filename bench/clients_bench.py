"""Slow and greedy clients against a real stack (issue 25, item 5), written to bench/SERVICE.md's "slow-clients" section.

One key (the victim) polls a succeeded job from 10 connections every 100 ms, first alone, then while another key
1. polls as fast as 16 connections allow (over 1,000 requests a second unbounded) under
   ``GIF_QUOTA_REQUESTS_PER_SECOND``,
2. holds 500 connections open without sending a request head,
3. trickles an upload at a byte a second;
the victim's latency (p50, p99, max) in each phase, and what each greedy client got (answers by status, how long
until it was cut off). The stack is ``python -m service`` (uvicorn, its own settings: the defaults but the
request rate) and one worker, as ``bench.stack.start_stack`` starts it.

Run: .venv/bin/python -m bench.clients_bench   (about two minutes)
     GIF_BENCH_QUICK=1 …                        a smoke run (short phases; writes nothing)
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gif_client import Client

from bench.report import QUICK, host_description, markdown_table, report_file, write_section
from bench.stack import latency_summary, poll, start_stack, upload_demo, wait_for_job
from service.core.settings import Settings

SERVICE_MD = report_file("SERVICE", quick=False)
PHASE_S = 3.0 if QUICK else 15.0
LEAD_S = 1.0
VICTIM, GREEDY = "victim-key", "greedy-key"
VICTIM_POLLERS, POLL_INTERVAL_S = 10, 0.1
GREEDY_CONNECTIONS = 16
REQUESTS_PER_SECOND = 200  # the victim asks 100 a second: within it
IDLE_CONNECTIONS = 500
DEFAULTS = Settings()


def victim_latency(
    running: Clients, during: Callable[[int, str], dict[str, Any]] | None = None
) -> tuple[dict[str, float], dict[str, Any] | None]:
    """The victim's polls for one phase while ``during(port, the greedy key's job)`` runs beside them in a process of
    its own (in this one, its work would delay the victim's loop: the measure would be the bench's, not the API's)."""
    port, job_id = running.port, running.victim_job

    async def phase() -> tuple[list[float], dict[str, Any] | None]:
        polls = poll(port, f"/v1/jobs/{job_id}", PHASE_S, POLL_INTERVAL_S, VICTIM_POLLERS, api_key=VICTIM)
        if during is None:
            return await polls, None
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(pool, os.getpid)  # the process started and its imports done, off the clock
            misbehaving = loop.run_in_executor(pool, during, port, running.greedy_job)
            await asyncio.sleep(LEAD_S)  # the misbehaving process under way before the victim starts
            return await polls, await misbehaving

    latencies, outcome = asyncio.run(phase())
    return latency_summary(latencies, PHASE_S), outcome


def greedy_poller(port: int, job_id: str) -> dict[str, Any]:
    """16 keep-alive connections asking for the job as fast as answers come, whatever the answer: statuses counted."""
    statuses: Counter[int] = Counter()
    request = f"GET /v1/jobs/{job_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {GREEDY}\r\n\r\n"
    seconds = LEAD_S + PHASE_S

    async def connection(stop_at: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop_at:
            writer.write(request.encode())
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            await reader.readexactly(
                next(int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length"))
            )
            statuses[int(lines[0].split(b" ", 2)[1])] += 1
        writer.close()

    async def run() -> None:
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(connection(stop_at) for _ in range(GREEDY_CONNECTIONS)))

    asyncio.run(run())
    return {"statuses": dict(sorted(statuses.items())), "per_second": sum(statuses.values()) / seconds}


def idle_connections(port: int, job_id: str) -> dict[str, Any]:
    """500 connections opened at once that never send a request head; when the server closed each."""
    closed_after: list[float] = []

    async def run() -> None:
        opened = time.perf_counter()
        pairs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(IDLE_CONNECTIONS)]

        async def wait_closed(reader: asyncio.StreamReader) -> None:
            try:
                await asyncio.wait_for(reader.read(), LEAD_S + PHASE_S + DEFAULTS.request_head_timeout_s)
                closed_after.append(time.perf_counter() - opened)
            except TimeoutError:
                pass

        await asyncio.gather(*(wait_closed(reader) for reader, _ in pairs))
        for _, writer in pairs:
            writer.close()

    asyncio.run(run())
    return {"closed": len(closed_after), "closed_after_s": max(closed_after, default=float("nan"))}


def trickled_upload(port: int, job_id: str) -> dict[str, Any]:
    """An upload declaring 1 MiB and sending a byte a second: what it gets back, and when."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {GREEDY}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1048576\r\n\r\n".encode()
    )
    started, answer = time.perf_counter(), b""
    sock.settimeout(1.0)
    while not answer and time.perf_counter() - started < 2 * DEFAULTS.body_idle_timeout_s:
        try:
            sock.sendall(b"-")
            answer = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # cut off
            break
    sock.close()
    return {"answer": answer.split(b"\r\n", 1)[0].decode(), "after_s": time.perf_counter() - started}


@dataclass
class Clients:
    port: int
    victim_job: str
    greedy_job: str


def start(stack: ExitStack, workdir: Path, **limits: Any) -> Clients:
    """A stack whose two keys each have a succeeded demo job."""
    running = start_stack(stack, workdir, api_keys=[VICTIM, GREEDY], **limits)
    greedy = stack.enter_context(Client(running.base, api_key=GREEDY))
    greedy_body = {**running.body, **upload_demo(greedy, running.demo)}
    jobs = [
        wait_for_job(api, api.submit(body)["id"])["id"]
        for api, body in ((running.api, running.body), (greedy, greedy_body))
    ]
    return Clients(running.port, *jobs)


def main() -> int:
    host = host_description()
    phases: dict[str, tuple[dict[str, float], Any]] = {}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gif-clients-")))
        unlimited = start(stack, workdir / "unlimited")
        phases["greedy poller, no request limit"] = victim_latency(unlimited, greedy_poller)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gif-clients-")))
        running = start(stack, workdir, quota_requests_per_second=REQUESTS_PER_SECOND)
        phases["alone"] = victim_latency(running)
        phases["greedy poller"] = victim_latency(running, greedy_poller)
        phases["500 idle connections"] = victim_latency(running, idle_connections)
        phases["a byte-a-second upload"] = victim_latency(running, trickled_upload)
    for name, (latency, outcome) in phases.items():
        print(name, latency, outcome, flush=True)
    if QUICK:
        return 0
    rows = [
        [name, f"{latency['p50_ms']:.1f}", f"{latency['p99_ms']:.1f}", f"{latency['max_ms']:.1f}", describe(outcome)]
        for name, (latency, outcome) in phases.items()
    ]
    body = f"""{host}. {VICTIM_POLLERS} connections of one key poll a succeeded job every {POLL_INTERVAL_S * 1000:.0f} ms
for {PHASE_S:.0f} s per phase while another key misbehaves; the API runs its defaults
(`GIF_REQUEST_HEAD_TIMEOUT_S` {DEFAULTS.request_head_timeout_s:g} s, `GIF_BODY_IDLE_TIMEOUT_S`
{DEFAULTS.body_idle_timeout_s:g} s, `GIF_BODY_MIN_BYTES_PER_S` {DEFAULTS.body_min_bytes_per_s:g},
`GIF_MAX_CONNECTIONS` {DEFAULTS.max_connections}) with `GIF_QUOTA_REQUESTS_PER_SECOND` {REQUESTS_PER_SECOND}
(the first row: a second stack without it). Each misbehaving client runs in a process of its own, started
{LEAD_S:g} s before the victim's phase. Target: the victim's p99 ≤ 50 ms in every phase.

{markdown_table(["phase", "victim p50 ms", "victim p99 ms", "victim max ms", "what the greedy client got"], rows)}
"""
    write_section(
        "slow-clients",
        "7. Slow and greedy clients (issue 25, item 5)",
        body,
        "python -m bench.clients_bench",
        target=SERVICE_MD,
    )
    return 0


def describe(outcome: Any) -> str:
    if outcome is None:
        return "—"
    if "statuses" in outcome:
        return f"{outcome['per_second']:.0f} answers/s: " + ", ".join(
            f"{n:,}× {s}" for s, n in outcome["statuses"].items()
        )
    if "closed" in outcome:
        return f"{outcome['closed']} of {IDLE_CONNECTIONS} closed by the server, the last after {outcome['closed_after_s']:.1f} s"
    return f"`{outcome['answer']}` after {outcome['after_s']:.1f} s"


if __name__ == "__main__":
    sys.exit(main())
