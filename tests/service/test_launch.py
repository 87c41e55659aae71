"""`make run` (python -m service.tools.launch): starts Redis, a worker and the API; restarts a child that dies;
Ctrl-C stops all of them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from service.tools.launch import free_port, redis_answers

READY = re.compile(r"ready on (\S+) .*Redis (\S+); worker pid (\d+), api pid (\d+)")
RESTARTED = re.compile(r"the worker was restarted \(pid (\d+)\)")


def launcher_env(port: int) -> dict[str, str]:
    """No REDIS_URL: the launcher must start its own Redis."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "GIF_REDIS_URL")}
    return {**env, "GIF_PORT": str(port)}


def launch(cwd, port: int) -> tuple[subprocess.Popen, list[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "service.tools.launch"],
        cwd=cwd,
        env=launcher_env(port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    return process, lines


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_line(process: subprocess.Popen, lines: list[str], pattern: re.Pattern) -> re.Match:
    deadline = time.monotonic() + 120
    while not (found := next((m for m in map(pattern.search, list(lines)) if m), None)):
        assert process.poll() is None, "".join(lines)
        assert time.monotonic() < deadline, "".join(lines)
        time.sleep(0.2)
    return found


def test_launcher_starts_the_stack_restarts_a_dead_worker_and_sigint_stops_everything(tmp_path):
    process, lines = launch(tmp_path, free_port())
    try:
        ready = wait_for_line(process, lines, READY)
        base, redis_url, first_worker, api_pid = (
            ready.group(1),
            ready.group(2),
            int(ready.group(3)),
            int(ready.group(4)),
        )
        with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
            assert response.status == 200
        assert redis_answers(redis_url) and alive(first_worker) and alive(api_pid)
        os.kill(first_worker, signal.SIGKILL)
        worker_pid = int(wait_for_line(process, lines, RESTARTED).group(1))
        assert worker_pid != first_worker and alive(worker_pid) and alive(api_pid)
        assert any("the worker (pid" in line and "restarting in" in line for line in lines)
        with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
            assert response.status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
    assert not alive(worker_pid) and not alive(api_pid)
    assert not redis_answers(redis_url)
    assert (tmp_path / "var" / "redis" / "appendonlydir").is_dir()


def test_launcher_refuses_a_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "service.tools.launch"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=launcher_env(taken.getsockname()[1]),
            timeout=60,
        )
    assert result.returncode == 1
    assert "already in use" in result.stderr
    assert not (tmp_path / "var").exists()  # nothing was started


def processes() -> list[tuple[int, list[str]]]:
    """(pid, argv) of every process this user can see."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    found.append((int(entry), fh.read().decode(errors="replace").split("\0")))
            except OSError:
                continue
    return found


REDIS_RESTARTED = re.compile(r"the Redis was restarted \(pid (\d+)\)")


def test_redis_killed_under_the_launcher_comes_back_and_queued_jobs_run(tmp_path, demo, long_solve):
    """The launcher's own Redis is SIGKILLed with one job running and one queued: it is restarted from its
    append-only file, the API and worker reconnect, the queued job runs, and the running one ends."""
    import json

    from tests.support import SuiteClient

    env_port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service.tools.launch"],
        cwd=tmp_path,
        env={**launcher_env(env_port), "GIF_HEARTBEAT_TTL_S": "3", "GIF_REAPER_INTERVAL_S": "0.5"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    try:
        base, redis_url = wait_for_line(process, lines, READY).group(1, 2)
        api = SuiteClient(base, timeout_s=30)
        inputs = api.upload_demo(demo["model"].parent)
        job = json.loads(demo["job"].read_text())
        running = api.submit({**job, **inputs, "solver": long_solve})["id"]
        api.wait(running, until=("running",), timeout_s=60)
        queued = api.submit({**job, **inputs})["id"]
        port = redis_url.rsplit(":", 1)[1].split("/")[0]
        redis_pid = next(  # redis-server retitles itself "redis-server 127.0.0.1:<port>"
            pid for pid, args in processes() if "redis-server" in args[0] and f":{port}" in " ".join(args)
        )
        os.kill(redis_pid, signal.SIGKILL)
        wait_for_line(process, lines, REDIS_RESTARTED)
        deadline = time.monotonic() + 30
        while True:  # the API reconnects by itself
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        assert api.job(queued)["status"] == "queued"  # kept by the append-only file
        api.http.post(f"/v1/jobs/{running}/cancel")
        ended = api.wait(running, timeout_s=60)
        assert ended["status"] in ("cancelled", "failed"), ended
        done = api.wait(queued, timeout_s=120)
        assert done["status"] == "succeeded", done
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
