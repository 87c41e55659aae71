"""``make gpu-check``: the GPU acceptance run (issue 20) in one command, written to bench/GPU.md.

The steps run in order, each under a time limit; each is recorded (passed, failed or skipped, its seconds and its
key numbers), a failed one does not stop the next, and the exit status is 1 when any failed:

1. ``python -m pytest -q -m cuda tests/gpu`` (skipped tests without CUDA).
2. The README walk-through through ``make run``'s launcher (``python -m service.tools.launch``) with its default
   settings, on a free port in a directory of its own: ``gif demo-assets`` and ``gif submit … --wait --out …
   --report …``; the job must run on the device asked for.
3. A zoo model by name: ``torchvision.resnet18`` (random weights) on 4,000 CIFAR-sized synthetic inputs, one class
   removed with the default solver.
4. A long job, then a short one: ``torchvision.vit_b_16`` at 224² on 1,000 synthetic inputs (its solve bounded:
   ``VIT_SOLVER``), and the demo job submitted right after it; both must succeed (the standby process that starts
   while the long job holds the GPU must still find memory for its warm-up).
5. ``python -m bench.gpu --device D``, whose report is appended to this one: at its full sizes when they fit in
   what is left of the 8 minutes (``BENCH_FULL_S``), else at its quick ones (``--bench full|quick`` decides).

Steps 2–4 share one launcher. Every wait is bounded: a job that fails or never ends fails its step with the job's
error (``bench.stack.wait_for_job``), and each step has a time limit besides (``Step.limit_s``).

Without a GPU it runs end to end on the CPU in its quick mode (the default there): tiny sizes (ResNet-18 on 256
inputs; timm's ViT-Tiny at 32² on 32 inputs stands in for ViT-B/16, whose Hessian-vector products take half a minute
each on two CPU cores; ``bench.gpu`` with GIF_BENCH_QUICK=1), written to bench/GPU.quick.md, saying that no GPU was
present.

Run: python -m bench.gpu_check [--device auto|cpu|cuda|cuda:N] [--quick | --full] [--bench auto|quick|full]
                               [--out FILE] [--logs DIR]
     (``make gpu-check``, which first installs the project into a venv that uses the host's torch; README)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from gif_client import Client

from bench.report import device_description, host_description, markdown_table, report_file, torch_build
from bench.setups import add_device_argument, parse_device
from bench.stack import JOB_TIMEOUT_S, Launched, demo_body, launched, wait_for_job
from gif.data import Dataset, shared_data_dir
from gif.demo import write_demo_assets
from gif.io.files import write_safetensors
from gif.models.registry import build_model

ROOT = Path(__file__).resolve().parents[1]
OUT = report_file("GPU", quick=False)
QUICK_OUT = report_file("GPU", quick=True)
TARGET_S = 480  # issue 20: the whole check within 8 minutes on one GPU
BENCH_FULL_S = 240  # bench.gpu at its full sizes on one GPU (estimated: its sections 2 and 3 alone wait ~80 s)
BENCH_JOB_TIMEOUT_S = 120
CLASSES = 10
REMOVED_CLASS = 3
# The ViT-B/16 job's solve, bounded so that it takes a minute or two on one GPU (the defaults: Hessian sample 512,
# up to 50 LSMR iterations, ran over 120 s on an H200).
VIT_SOLVER = {"max_iterations": 10, "hessian_samples": 256, "gradient_samples": 128, "batch_size": 64}
VIT_EVALUATION = {"batch_size": 128, "retain_samples": 500}
QUICK_SOLVER = {"max_iterations": 2, "hessian_samples": 32, "gradient_samples": 32, "batch_size": 32}


@dataclass(frozen=True)
class Sizes:
    """What steps 3 and 4 run on: the full check, or the quick one (the CPU's)."""

    zoo_inputs: int
    vit: dict[str, Any]  # the long job's architecture
    vit_inputs: int
    vit_image: int
    zoo_solver: dict[str, Any]
    vit_solver: dict[str, Any]
    vit_evaluation: dict[str, Any]
    limits: dict[str, float]  # seconds per step


FULL_SIZES = Sizes(
    zoo_inputs=4000,
    vit={"name": "torchvision.vit_b_16", "config": {"num_classes": CLASSES, "image_size": 224}},
    vit_inputs=1000,
    vit_image=224,
    zoo_solver={},
    vit_solver=VIT_SOLVER,
    vit_evaluation=VIT_EVALUATION,
    limits={"tests": 300, "walkthrough": 240, "zoo": 180, "long_short": 360, "bench": 420},
)
# ViT-B/16 (86M parameters) on 2 shared CPU cores: a job of 7 HVPs took 250 s at 64² on 32 inputs and 170 s at 32²
# with a Hessian sample of 16; timm's ViT-Tiny (5.7M) at 32², about 50 s.
QUICK_SIZES = Sizes(
    zoo_inputs=256,
    vit={"name": "timm.vit_tiny_patch16_224", "config": {"num_classes": CLASSES, "img_size": 32}},
    vit_inputs=32,
    vit_image=32,
    zoo_solver=QUICK_SOLVER,
    vit_solver=QUICK_SOLVER,
    vit_evaluation={"batch_size": 32, "retain_samples": 32},
    limits={"tests": 300, "walkthrough": 300, "zoo": 240, "long_short": 420, "bench": 420},
)


class StepSkipped(Exception):
    """The step does not apply here; the message says why."""


class StepTimeout(Exception):
    """The step ran past its time limit."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """``StepTimeout`` in this (main) thread once ``seconds`` have passed: no step can hang the check."""

    def expire(signum: int, frame: object) -> None:
        raise StepTimeout(f"still running after its limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Step:
    """One step's record: what it is, its limit, and how it went."""

    number: int
    title: str
    limit_s: float
    outcome: str = "not run"  # passed | failed | skipped
    seconds: float = 0.0
    numbers: list[str] = field(default_factory=list)  # the key numbers, as "name: value" phrases
    detail: str = ""  # why it failed or was skipped (a log's tail)

    def run(self, body: Callable[[Step], None]) -> None:
        """Run ``body(self)`` under the step's limit; any exception fails the step (and only the step)."""
        print(f"== step {self.number}: {self.title} (limit {self.limit_s:.0f} s)", flush=True)
        started = time.perf_counter()
        try:
            with time_limit(self.limit_s):
                body(self)
            self.outcome = "passed"
        except StepSkipped as exc:
            self.outcome, self.detail = "skipped", str(exc)
        except Exception as exc:
            self.outcome, self.detail = "failed", f"{type(exc).__name__}: {exc}"
        self.seconds = time.perf_counter() - started
        print(f"== step {self.number}: {self.outcome} after {self.seconds:.1f} s {'; '.join(self.numbers)}", flush=True)
        if self.detail:
            print(self.detail[-2000:], flush=True)


class CommandFailed(RuntimeError):
    """A command of a step exited with a non-zero status; the message ends with its output's tail."""


@dataclass
class Check:
    """What the steps share: the device, the sizes, a work directory, logs, the launcher and its client."""

    device: torch.device
    quick: bool
    workdir: Path
    logs: Path
    stack: ExitStack
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    bench: str = "auto"  # bench.gpu's sizes: auto | quick | full
    started: float = field(default_factory=time.perf_counter)
    launcher: Launched | None = None
    launch_error: str | None = None
    api: Client | None = None
    demo_body: dict[str, Any] | None = None

    @property
    def sizes(self) -> Sizes:
        return QUICK_SIZES if self.quick else FULL_SIZES

    @property
    def worker_device(self) -> str | None:
        """The launcher's ``GIF_WORKER_DEVICE``: left at its default when that picks the same device."""
        return None if self.device == parse_device("auto") else str(self.device)

    def command(self, args: list[str], log: str, timeout_s: float, env: dict[str, str] | None = None) -> str:
        """Run ``args`` (output to ``logs/<log>``) within ``timeout_s``; its output, or ``CommandFailed``."""
        path = self.logs / log
        with open(path, "w") as out:
            out.write("$ " + " ".join(args) + "\n")
            out.flush()
            try:
                done = subprocess.run(
                    args, cwd=ROOT, env=env or self.env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s
                )
            except subprocess.TimeoutExpired:
                raise CommandFailed(f"`{log}` ran past {timeout_s:.0f} s:\n{tail(path)}") from None
        if done.returncode != 0:
            raise CommandFailed(f"exit status {done.returncode}:\n{tail(path)}")
        return path.read_text()

    def start_launcher(self) -> tuple[Launched, Client]:
        """The launcher shared by steps 2–4, started once (a failure to start is reported by each step)."""
        if self.launch_error is not None:
            raise RuntimeError(f"the launcher did not start (see step 2): {self.launch_error}")
        if self.launcher is None or self.api is None:
            try:
                self.launcher = self.stack.enter_context(launched(self.workdir / "launch", self.worker_device))
            except Exception as exc:
                self.launch_error = str(exc)
                raise
            self.stack.callback(lambda: (self.logs / "launcher.log").write_text(self.launcher_log()))
            self.api = self.stack.enter_context(Client(self.launcher.base, timeout_s=300))
        return self.launcher, self.api

    def launcher_log(self) -> str:
        return "".join(self.launcher.lines) if self.launcher else ""

    def demo(self) -> tuple[Path, dict[str, Any]]:
        """The demo assets (written by step 2's ``gif demo-assets``, or here) and a job body with them uploaded."""
        _, api = self.start_launcher()
        demo = self.workdir / "demo"
        if not (demo / "job.json").exists():
            write_demo_assets(demo)
        if self.demo_body is None:
            self.demo_body = demo_body(api, demo)
        return demo, self.demo_body


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def gif_command() -> list[str]:
    """The ``gif`` console script beside this interpreter (``.venv/bin/gif`` in the README), else ``-m gif.cli``."""
    script = Path(sys.executable).with_name("gif")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gif.cli"]


def expect_device(job: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The job's ``result.device``, which must be of ``device``'s type (a CUDA job must not have run on the CPU)."""
    where = job["result"]["device"]
    if where["type"] != device.type:
        raise AssertionError(f"job {job['id']} ran on {where['type']} ({where['name']}), not on {device.type}")
    return where


def job_numbers(job: dict[str, Any], label: str = "") -> list[str]:
    """A succeeded job's key numbers: where it ran, its seconds, its solve, its peak memory, the forgotten class."""
    result = job["result"]
    where, solver, timings = result["device"], result["solver"], result["timings"]
    after, before = result["metrics"]["after"], result["metrics"]["before"]
    peak = where.get("peak_memory_bytes")
    numbers = [
        f"{label}on {where['type']} ({where['name']})",
        f"{label}job {timings['total_s']:.1f} s (solve {timings.get('solve_s', 0):.1f} s, {solver['hvp_count']} HVPs, "
        f"residual {solver['relative_residual']:.3g})",
    ]
    if peak:
        numbers.append(f"{label}peak memory {peak / 2**30:.2f} GiB")
    if "forget_accuracy" in after:
        numbers.append(f"{label}forget accuracy {before['forget_accuracy']:.2f} → {after['forget_accuracy']:.2f}")
    return numbers


def synthetic(count: int, image: int, seed: int) -> Dataset:
    """``count`` RGB ``image``² inputs of uniform noise, labels cycling through the classes."""
    generator = torch.Generator().manual_seed(seed)
    return Dataset(torch.rand(count, 3, image, image, generator=generator), torch.arange(count) % CLASSES)


def upload_zoo_job(api: Client, folder: Path, architecture: dict, count: int, image: int) -> dict[str, str]:
    """Random weights of a zoo model and synthetic train/eval data, uploaded; returns the job body's ids."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    write_safetensors(folder / "model.safetensors", build_model(architecture).state_dict())
    synthetic(count, image, 0).save(folder / "train.safetensors")
    synthetic(max(count // 4, 2 * CLASSES), image, 1).save(folder / "eval.safetensors")
    return {
        "model_id": api.upload_model(folder / "model.safetensors", architecture)["id"],
        "train_dataset_id": api.upload_dataset(folder / "train.safetensors")["id"],
        "eval_dataset_id": api.upload_dataset(folder / "eval.safetensors")["id"],
    }


# --- the steps ----------------------------------------------------------------------------------------------------

SUMMARY = re.compile(r"^=*\s*(\d+ (?:passed|failed|skipped|errors?|deselected).*?) in ([\d.]+)s", re.M)


def tests_step(check: Check, step: Step) -> None:
    env = dict(check.env)
    carried = ROOT / "wheelhouse" / "data"  # ``make wheelhouse`` copies the MNIST test digits there
    if not (shared_data_dir() / "mnist").is_dir() and (carried / "mnist").is_dir():
        env["GIF_DATA_DIR"] = str(carried)
        step.numbers.append(f"MNIST from {carried.relative_to(ROOT)}")
    args = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/gpu", "-p", "no:cacheprovider"]
    try:
        output = check.command(args, "tests.log", step.limit_s - 5, env)
    finally:
        found = SUMMARY.findall(check.logs.joinpath("tests.log").read_text())
        if found:
            step.numbers.append(found[-1][0].strip())
    if not torch.cuda.is_available():
        step.numbers.append("no CUDA here: the cuda tests skip themselves")
    if "passed" not in output and torch.cuda.is_available():
        raise AssertionError("no test passed")


def walkthrough_step(check: Check, step: Step) -> None:
    started = time.perf_counter()
    launcher, api = check.start_launcher()
    step.numbers.append(f"launcher ready in {time.perf_counter() - started:.1f} s")
    demo, out = check.workdir / "demo", check.workdir / "walkthrough"
    out.mkdir(exist_ok=True)
    check.command([*gif_command(), "demo-assets", "--out", str(demo)], "demo-assets.log", 180)
    env = {**check.env, "GIF_SERVER": launcher.base}
    args = [
        *gif_command(), "submit", "--spec", str(demo / "job.json"), "--model", str(demo / "model.safetensors"),
        "--architecture", str(demo / "architecture.json"), "--train-data", str(demo / "train.safetensors"),
        "--eval-data", str(demo / "eval.safetensors"), "--wait", "--out", str(out / "edited.safetensors"),
        "--report", str(out / "report.html"),
    ]  # fmt: skip
    submitted = time.perf_counter()
    output = check.command(args, "submit.log", max(30.0, step.limit_s - (submitted - started) - 10), env)
    step.numbers.append(f"`gif submit --wait` {time.perf_counter() - submitted:.1f} s")
    found = re.search(r"^job (\S+) ", output, re.M)
    if not found:
        raise AssertionError(f"gif submit printed no job id:\n{output[-2000:]}")
    job = api.job(found.group(1))
    if job["status"] != "succeeded":
        raise AssertionError(f"job {job['id']} is {job['status']}: {job['error']}")
    expect_device(job, check.device)
    for name in ("edited.safetensors", "report.html"):
        if not (out / name).is_file() or (out / name).stat().st_size == 0:
            raise AssertionError(f"gif submit wrote no {name}")
    step.numbers += job_numbers(job)


def zoo_step(check: Check, step: Step) -> None:
    _, api = check.start_launcher()
    count = check.sizes.zoo_inputs
    architecture = {"name": "torchvision.resnet18", "config": {"num_classes": CLASSES}}
    ids = upload_zoo_job(api, check.workdir / "zoo", architecture, count, 32)
    body = {"request": {"kind": "remove_class", "classes": [REMOVED_CLASS]}, "solver": check.sizes.zoo_solver, **ids}
    job = wait_for_job(api, api.submit(body)["id"], timeout_s=step.limit_s)
    expect_device(job, check.device)
    step.numbers += [f"`torchvision.resnet18`, {count} inputs 3×32×32", *job_numbers(job)]


def long_short_step(check: Check, step: Step) -> None:
    if check.device.type != "cuda" and not check.quick:
        raise StepSkipped("skipped on the CPU: ViT-B/16 at 224² on 1,000 inputs needs a GPU (--quick runs a small one)")
    _, api = check.start_launcher()
    _, demo_body = check.demo()
    sizes = check.sizes
    uploading = time.perf_counter()
    ids = upload_zoo_job(api, check.workdir / "vit", sizes.vit, sizes.vit_inputs, sizes.vit_image)
    step.numbers.append(
        f"`{sizes.vit['name']}` at {sizes.vit_image}², {sizes.vit_inputs} inputs (uploaded in "
        f"{time.perf_counter() - uploading:.0f} s), solver {json.dumps(sizes.vit_solver)}"
    )
    long_body = {
        "request": {"kind": "remove_class", "classes": [REMOVED_CLASS]},
        "solver": sizes.vit_solver,
        "evaluation": sizes.vit_evaluation,
        **ids,
    }
    deadline = uploading + step.limit_s - 10  # the step's own limit, less time to report

    def left() -> float:
        return max(30.0, deadline - time.perf_counter())

    long_id = api.submit(long_body)["id"]
    wait_for_job(api, long_id, timeout_s=left(), until=("running", "succeeded"))
    short_id = api.submit(demo_body)["id"]  # while the long job holds the device
    errors = []
    long_job = short_job = None
    try:
        long_job = wait_for_job(api, long_id, timeout_s=left())
        step.numbers += job_numbers(long_job, "ViT: ")
    except Exception as exc:
        errors.append(f"the long job: {exc}")
    try:
        short_job = wait_for_job(api, short_id, timeout_s=left())
        waited = (
            datetime.fromisoformat(short_job["started_at"].replace("Z", "+00:00"))
            - datetime.fromisoformat(short_job["created_at"].replace("Z", "+00:00"))
        ).total_seconds()
        step.numbers += [f"demo job queued {waited:.1f} s behind it", *job_numbers(short_job, "demo: ")[1:2]]
    except Exception as exc:
        errors.append(f"the demo job after it: {exc}")
    if errors:
        raise AssertionError("; ".join(errors))
    for job in (long_job, short_job):
        assert job is not None
        expect_device(job, check.device)


BENCH_RATIO = re.compile(r"^\| ([^|]+?) \| \d+ \|.*\*\*([\d.]+×)\*\* \|$", re.M)
BENCH_OVERHEAD = re.compile(r"\*\*overhead over the in-process edit\*\* \| \*\*(-?[\d.]+)\*\*")
BENCH_HEALED = re.compile(r"\| … and has succeeded \| ([\d.]+) \|")


def bench_step(check: Check, step: Step, report: Path) -> None:
    used = time.perf_counter() - check.started
    if check.bench == "auto":
        quick = check.quick or used + BENCH_FULL_S > TARGET_S
        why = "quick check" if check.quick else f"steps 1–4 took {used:.0f} s of the {TARGET_S} s"
        step.numbers.append(f"at its {'quick' if quick else 'full'} sizes ({why})")
    else:
        quick = check.bench == "quick"
        step.numbers.append(f"at its {check.bench} sizes (--bench {check.bench})")
    # Its jobs are the demo's (seconds): a job that has not ended in 2 minutes fails its section, and the benchmark
    # still writes its report within the step's limit.
    env = {
        **check.env,
        "GIF_BENCH_JOB_TIMEOUT_S": str(BENCH_JOB_TIMEOUT_S),
        **({"GIF_BENCH_QUICK": "1"} if quick else {}),
    }
    args = [sys.executable, "-m", "bench.gpu", "--device", str(check.device), "--out", str(report)]
    try:
        check.command(args, "bench-gpu.log", step.limit_s - 5, env)
    finally:
        if report.exists():
            text = report.read_text()
            ratios = ", ".join(f"{name} {ratio}" for name, ratio in BENCH_RATIO.findall(text))
            if ratios:
                step.numbers.append(f"HVP / forward+backward (auto): {ratios}")
            if found := BENCH_OVERHEAD.search(text):
                step.numbers.append(f"service overhead {found.group(1)} s")
            if found := BENCH_HEALED.search(text):
                step.numbers.append(f"healed in {found.group(1)} s")


# --- the report ---------------------------------------------------------------------------------------------------


def commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown (no git here)"


def demoted(markdown: str) -> str:
    """A report's headings two levels down, for embedding it under a section (``##``) of this one."""
    return re.sub(r"^(#+) ", lambda m: "##" + m.group(1) + " ", markdown, flags=re.M)


def render(started: datetime, check: Check, steps: list[Step], total_s: float, command: str, bench: str) -> str:
    failed = [s for s in steps if s.outcome == "failed"]
    passed = sum(s.outcome == "passed" for s in steps)
    verdict = (
        f"**{len(failed)} of {len(steps)} steps failed** ({', '.join(str(s.number) for s in failed)})"
        if failed
        else f"**{passed} of {len(steps)} steps passed**"
        + (f", {len(steps) - passed} skipped" if passed < len(steps) else "")
    )
    gpu = check.device.type == "cuda"
    presence = (
        ""
        if gpu
        else "\n**No GPU was used**: "
        + ("this machine has no CUDA device" if not torch.cuda.is_available() else f"--device {check.device}")
        + "; the steps ran on the CPU"
        + (" at the quick sizes" if check.quick else "")
        + ", which checks the harness, not the GPU.\n"
    )
    rows = [
        [f"{s.number}. {s.title}", s.outcome, f"{s.seconds:.1f} ({s.limit_s:.0f})", "; ".join(s.numbers) or "–"]
        for s in steps
    ]
    sizes = check.sizes
    failures = "".join(
        f"### {s.number}. {s.title}: {s.outcome}\n\n```\n{s.detail.strip()[-4000:]}\n```\n\n"
        for s in steps
        if s.outcome != "passed" and s.detail
    )
    if failures:
        failures = "## What failed or was skipped\n\n" + failures
    return f"""# GPU acceptance check on {device_description(check.device)}

Command: `{command}` (this file is written by it; `python -m bench.gpu_check --device {check.device}{" --quick" if check.quick else ""}`)
Date: {started:%Y-%m-%d %H:%M} UTC · commit {commit()}
Device: {device_description(check.device)}; {torch_build()}; Python {platform.python_version()}
Machine: {host_description(check.device)}
Result: {verdict} in {total_s:.0f} s (target: ≤ {TARGET_S} s on one GPU{"" if gpu else "; not a GPU run"})
{presence}
{markdown_table(["step", "outcome", "seconds (limit)", "key numbers"], rows)}

Steps 3 and 4 use random weights and synthetic inputs (uniform noise, labels cycling through {CLASSES} classes;
the GPU host has none of the project's data): they check that the jobs run, on the device, through the service,
not what an edit achieves. Step 3: `torchvision.resnet18` on {sizes.zoo_inputs:,} inputs of 3×32×32, class
{REMOVED_CLASS} removed, solver {json.dumps(sizes.zoo_solver) if sizes.zoo_solver else "defaults"}. Step 4:
`{sizes.vit["name"]}` at {sizes.vit_image}² on {sizes.vit_inputs:,} inputs{"" if sizes is FULL_SIZES else " (standing in for `torchvision.vit_b_16` at 224² on 1,000, a GPU's job)"}, solver bounded to
{json.dumps(sizes.vit_solver)} (evaluation {json.dumps(sizes.vit_evaluation)}), and the demo job submitted as soon as
it runs. Steps 2–4 share one `python -m service.tools.launch` with its default settings
(GIF_WORKER_DEVICE {check.worker_device or "default: auto"}), on a free port, in a temporary directory.

{failures}## 5. `bench.gpu` (its own report, below)

{demoted(bench) if bench else "(no report: see step 5)"}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_argument(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", default=None, help="tiny sizes (the default without CUDA)")
    mode.add_argument("--full", dest="quick", action="store_false", help="the full sizes (the default on CUDA)")
    parser.add_argument(
        "--bench", choices=("auto", "quick", "full"), default="auto", help="bench.gpu's sizes (auto: full if they fit)"
    )
    parser.add_argument("--out", type=Path, help=f"the report (default: {OUT.name}, quick: {QUICK_OUT.name})")
    parser.add_argument("--logs", type=Path, help="keep each step's log here (default: a temporary folder)")
    parser.add_argument("--command", help="how this was started, for the report (make gpu-check says so)")
    args = parser.parse_args(argv)
    device: torch.device = args.device
    quick = args.quick if args.quick is not None else device.type != "cuda"
    out = args.out or (QUICK_OUT if quick else OUT)
    command = args.command or "python -m bench.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:])
    started, clock = datetime.now(UTC), time.perf_counter()
    print(f"GPU check on {device_description(device)} ({'quick' if quick else 'full'}), report {out}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gif-gpu-check-") as tmp, ExitStack() as services:
        workdir = Path(tmp)
        logs = args.logs or workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GIF_BENCH_JOB_TIMEOUT_S": str(JOB_TIMEOUT_S), "PYTHONUNBUFFERED": "1"}
        check = Check(device, quick, workdir, logs, services, env, args.bench, clock)
        limits = check.sizes.limits
        bench_report = workdir / "bench-gpu.md"
        steps = [
            (Step(1, "`tests/gpu` (marker cuda)", limits["tests"]), lambda s: tests_step(check, s)),
            (Step(2, "README walk-through through `make run`'s launcher", limits["walkthrough"]),
             lambda s: walkthrough_step(check, s)),
            (Step(3, "a zoo model by name", limits["zoo"]), lambda s: zoo_step(check, s)),
            (Step(4, "a long job, then a short one", limits["long_short"]), lambda s: long_short_step(check, s)),
            (Step(5, "`bench.gpu`", limits["bench"]), lambda s: bench_step(check, s, bench_report)),
        ]  # fmt: skip
        for step, body in steps:
            if step.number == 5:
                services.close()  # the launcher of steps 2–4 stops before the benchmark starts its own stacks
            step.run(body)
        bench = bench_report.read_text() if bench_report.exists() else ""
        total = time.perf_counter() - clock
        text = render(started, check, [s for s, _ in steps], total, command.strip(), bench)
    out.write_text(text)
    print(text)
    return 1 if any(step.outcome == "failed" for step, _ in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
