"""The worker's processes: a torch-free supervisor and RQ worker, a fresh interpreter per job, devices, reaping."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.core.context import ServiceContext
from service.core.processes import Supervised
from worker.supervisor import DeviceSettingError, visible_gpus, worker_devices


def loads_torch(pid: int) -> bool:
    """Whether a live process has torch's native library mapped (it imported torch)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def parent_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1])


def children_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")
def test_a_job_runs_in_a_fresh_interpreter_and_the_worker_never_loads_torch(api, inputs, worker, long_solve):
    job = api.submit({**inputs, "request": {"kind": "remove_class", "classes": [6]}, "solver": long_solve})
    api.wait(job["id"], until=("running",))
    horse = api.http.app.state.context.jobs.get(job["id"]).worker["pid"]
    runner = parent_of(horse)
    try:
        assert parent_of(runner) == worker.pid  # supervisor → RQ worker → the job's process
        command = Path(f"/proc/{horse}/cmdline").read_bytes().split(b"\0")
        assert command[1:3] == [b"-m", b"worker.horse"]  # exec'd anew: nothing inherited from the worker's memory
        assert loads_torch(horse)
        environ = Path(f"/proc/{horse}/environ").read_bytes().split(b"\0")
        assert any(entry.startswith(b"OMP_WAIT_POLICY=") for entry in environ)  # set by its worker (PASSIVE by default)
        assert not loads_torch(runner) and not loads_torch(worker.pid)
        standby = [pid for pid in children_of(runner) if pid != horse]
        assert len(standby) == 1  # the next job's process is already warming up
    finally:
        api.http.post(f"/v1/jobs/{job['id']}/cancel")
        api.wait(job["id"])


@pytest.mark.skipif(visible_gpus() > 0, reason="a host without GPUs")
def test_devices_follow_the_setting_on_a_host_without_gpus():
    assert worker_devices("cpu") == ["cpu"]
    assert worker_devices("auto") == ["cpu"]
    with pytest.raises(DeviceSettingError, match="no CUDA device"):
        worker_devices("cuda")
    with pytest.raises(DeviceSettingError, match="0 CUDA device"):
        worker_devices("cuda:1")


def test_a_worker_host_reaps_lost_jobs_without_any_api(isolated_settings, start_worker):
    """A job left running by a dead worker on its last attempt is failed by another worker's supervisor; no API
    process is up."""
    with isolated_settings(heartbeat_ttl_s=2.0, reaper_interval_s=0.5, job_max_attempts=1) as settings:
        reap_one_lost_job(settings, start_worker)


def reap_one_lost_job(settings, start_worker) -> None:
    jobs = ServiceContext.create(settings).jobs
    record = jobs.create("anonymous", {}, {}, settings.queue_name)
    assert record is not None and jobs.note_attempt(record.id) == 1
    assert jobs.start(record.id, worker={"host": "gone", "pid": 1})
    with start_worker(settings):
        deadline = time.monotonic() + 60
        while (found := jobs.get(record.id)) is not None and found.status == "running":
            assert time.monotonic() < deadline, found
            time.sleep(0.2)
    assert found is not None and found.status == "failed" and found.error is not None
    assert found.error["code"] == "worker-lost" and found.error["retryable"] is True
    assert "stopped answering" in found.error["detail"]
    assert jobs.delete(record.id)  # its empty spec is no job the shared API could list


def test_a_supervised_child_is_restarted_with_growing_back_off():
    started: list[float] = []

    def start() -> subprocess.Popen:
        started.append(time.monotonic())
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    child = Supervised("quitter", start, logging.getLogger("test"), first_delay_s=0.2, max_delay_s=0.8)
    try:
        while len(started) < 5:
            child.check()
            time.sleep(0.01)
    finally:
        child.stop()
    gaps = [b - a for a, b in zip(started, started[1:])]
    assert child.restarts == 4
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8 and gaps[3] >= 0.8
    assert child.delay_s == 0.8  # the back-off stops doubling at max_delay_s
