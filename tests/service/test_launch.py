"""`make run` (python -m service.tools.launch): starts Redis, a worker and the API; restarts a child that dies;
Ctrl-C stops all of them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from bench.stack import REDIS_RESTARTED, RESTARTED, launched, launcher_env
from service.tools.launch import redis_answers


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_launcher_starts_the_stack_restarts_a_dead_worker_and_sigint_stops_everything(tmp_path):
    with launched(tmp_path) as running:
        base, redis_url, first_worker, api_pid = running.base, running.redis_url, running.worker_pid, running.api_pid
        with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
            assert response.status == 200
        assert redis_answers(redis_url) and alive(first_worker) and alive(api_pid)
        os.kill(first_worker, signal.SIGKILL)
        worker_pid = int(running.wait_for(RESTARTED).group(1))
        assert worker_pid != first_worker and alive(worker_pid) and alive(api_pid)
        assert any("the worker (pid" in line and "restarting in" in line for line in running.lines)
        with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
            assert response.status == 200
    assert running.process.returncode == 0, running.tail()  # stopped by Ctrl-C (SIGINT)
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


def test_redis_killed_under_the_launcher_comes_back_and_queued_jobs_run(tmp_path, demo, long_solve):
    """The launcher's own Redis is SIGKILLed with one job running and one queued: it is restarted from its
    append-only file, the API and worker reconnect, the queued job runs, and the running one ends."""
    import json

    from tests.support import SuiteClient

    env = {**os.environ, "GIF_HEARTBEAT_TTL_S": "3", "GIF_REAPER_INTERVAL_S": "0.5"}
    with launched(tmp_path, env=env) as running:
        base, redis_url = running.base, running.redis_url
        api = SuiteClient(base, timeout_s=30)
        inputs = api.upload_demo(demo["model"].parent)
        job = json.loads(demo["job"].read_text())
        busy = api.submit({**job, **inputs, "solver": long_solve})["id"]
        api.wait(busy, until=("running",), timeout_s=60)
        queued = api.submit({**job, **inputs})["id"]
        port = redis_url.rsplit(":", 1)[1].split("/")[0]
        redis_pid = next(  # redis-server retitles itself "redis-server 127.0.0.1:<port>"
            pid for pid, args in processes() if "redis-server" in args[0] and f":{port}" in " ".join(args)
        )
        os.kill(redis_pid, signal.SIGKILL)
        running.wait_for(REDIS_RESTARTED)
        deadline = time.monotonic() + 30
        while True:  # the API reconnects by itself
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, running.tail()
            time.sleep(0.2)
        assert api.job(queued)["status"] == "queued"  # kept by the append-only file
        api.http.post(f"/v1/jobs/{busy}/cancel")
        ended = api.wait(busy, timeout_s=60)
        assert ended["status"] in ("cancelled", "failed"), ended
        done = api.wait(queued, timeout_s=120)
        assert done["status"] == "succeeded", done
    assert running.process.returncode == 0, running.tail()
