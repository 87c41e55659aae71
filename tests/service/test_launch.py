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
