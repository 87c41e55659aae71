"""The ``gif`` command's remote commands: ``gif submit``, ``status``, ``cancel``, ``download``, ``workers``, ``usage``.

They live with the client so that the engine never imports it: installing this package registers them in the
``gif.commands`` entry-point group, and the engine's ``gif`` command adds what that group holds. The engine lends
them a ``host`` with its JSON argument reader, its result printer and the error type it reports in one line, so a
job's metrics print as ``gif edit`` prints them and a failed request ends as any bad input does (exit status 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, Protocol

import httpx

from gif_client.client import Client, IntegrityError, UploadError, progress_line
from gif_client.problems import ProblemError

DATASET_FIELDS = (
    ("train_dataset_id", "train_data"),
    ("eval_dataset_id", "eval_data"),
    ("validation_dataset_id", "validation_data"),
    ("attack_dataset_id", "attack_data"),
)


class Host(Protocol):
    """What the ``gif`` command lends the commands it adds."""

    error: type[Exception]  # raised with one line saying why: ``gif: error: …``, exit status 2

    def json_argument(self, value: str) -> Any: ...

    def print_result(self, result: dict[str, Any]) -> None: ...


def remote_client(args: argparse.Namespace, host: Host) -> Client:
    server = args.server or os.environ.get("GIF_SERVER")
    if not server:
        raise host.error("no server: give --server URL or set GIF_SERVER")
    return Client(server, api_key=os.environ.get("GIF_API_KEY"))


@contextmanager
def connected(args: argparse.Namespace, host: Host) -> Iterator[Client]:
    """A client of ``--server``; the service's problems, a changed download and a failed connection become
    ``host.error``."""
    try:
        with remote_client(args, host) as client:
            yield client
    except (ProblemError, IntegrityError, UploadError, httpx.HTTPError) as exc:
        raise host.error(str(exc)) from None


def submit(args: argparse.Namespace, host: Host) -> int:
    """Upload what the job needs (reusing uploads the server already holds), submit, and optionally wait."""
    spec = host.json_argument(args.spec)
    if args.methods:
        spec["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    architecture = host.json_argument(args.architecture) if args.architecture else None
    with connected(args, host) as client:
        transform = host.json_argument(args.input_transform) if args.input_transform else None
        spec["model_id"] = client.upload_once("models", args.model, architecture, transform)["id"]
        for field, argument in DATASET_FIELDS:
            if value := getattr(args, argument):
                in_bucket = str(value).startswith("s3://")  # already in S3: the service reads it there
                dataset = client.register_dataset(value) if in_bucket else client.upload_once("datasets", value)
                spec[field] = dataset["id"]
        job = client.submit(spec)
        print(f"job {job['id']} {job['status']}", file=sys.stderr)
        if not args.wait:
            print(job["id"])
            return 0
        job = client.wait(job["id"])
        if job["status"] != "succeeded":
            error = job["error"] or {}
            print(f"gif: job {job['id']} {job['status']}: {error.get('detail')}", file=sys.stderr)
            return 1
        host.print_result(job["result"])
        if args.out:
            client.download(job["id"], args.out, "pt2" if str(args.out).endswith(".pt2") else "safetensors")
            print(
                f"edited checkpoint: {args.out} (job {job['id']}, method {job['result']['method']}, model "
                f"{job['result'].get('model_id')})"
            )
        if args.report:
            print(f"report: {client.report(job['id'], args.report)}")
    return 0


def status(args: argparse.Namespace, host: Host) -> int:
    with connected(args, host) as client:
        job = client.job(args.job)
    print(progress_line(job))
    if job["status"] == "succeeded":
        host.print_result(job["result"])
    elif job["error"]:
        print(f"{job['error']['code']}: {job['error']['detail']}")
    return 0


def cancel(args: argparse.Namespace, host: Host) -> int:
    with connected(args, host) as client:
        job = client.cancel(args.job)
    print(f"job {job['id']} {job['status']}" + (" (cancel requested)" if job.get("cancel_requested") else ""))
    return 0


def download(args: argparse.Namespace, host: Host) -> int:
    if not (args.out or args.report):
        raise host.error("nothing to download: give --out, --report or both")
    with connected(args, host) as client:
        if args.out:
            print(client.download(args.job, args.out, args.format, args.method))
        if args.report:
            print(client.report(args.job, args.report))
    return 0


def worker_line(worker: dict[str, Any]) -> str:
    """One worker of ``GET /v1/workers`` as ``gif workers`` prints it."""
    device = worker["device"]
    where = device["type"] + (f":{device['index']}" if device.get("index") is not None else "")
    if device.get("name"):
        memory = device.get("total_memory_bytes")
        where += f" ({device['name']}" + (f", {memory / 1024**3:.0f} GiB" if memory else "") + ")"
    state = {"running": f"running {worker.get('job_id')}", "unhealthy": f"unhealthy: {worker.get('reason')}"}
    return (
        f"{worker['name']}  {worker['host']}  {where}  {state.get(worker['state'], worker['state'])}  "
        f"jobs done: {worker['jobs_done']}"
    )


def workers(args: argparse.Namespace, host: Host) -> int:
    with connected(args, host) as client:
        fleet = client.workers()
    for worker in fleet["workers"]:
        print(worker_line(worker))
    if not fleet["healthy"]:
        print(f"gif: {fleet['reason']}", file=sys.stderr)
        return 1
    return 0


def usage(args: argparse.Namespace, host: Host) -> int:
    with connected(args, host) as client:
        used = client.usage()
    for name in ("active_jobs", "stored_bytes"):
        limit = used[name]["limit"]
        print(f"{name}: {used[name]['usage']} of {'no limit' if limit is None else limit}")
    rate = used["submits_per_minute"]
    print(
        "submits_per_minute: "
        + ("no limit" if rate["limit"] is None else f"{rate['available']:.1f} of {rate['limit']} left")
    )
    print("jobs: " + ", ".join(f"{n} {state}" for state, n in used["jobs"].items()))
    print(f"models: {used['models']}, datasets: {used['datasets']}")
    return 0


Command = Callable[[argparse.Namespace, Host], int]


def register(commands: Any, host: Host) -> None:
    """Add the remote commands to the ``gif`` command's subparsers (``commands``: ``add_subparsers()``'s result)."""

    def add(name: str, command: Command, text: str) -> argparse.ArgumentParser:
        @wraps(command)
        def handler(args: argparse.Namespace) -> int:
            return command(args, host)

        parser: argparse.ArgumentParser = commands.add_parser(name, help=text)
        parser.add_argument("--server", help="the service's base URL (default: $GIF_SERVER)")
        parser.set_defaults(handler=handler)
        return parser

    job = add("submit", submit, "run a job on a GIF server (uploads what it needs)")
    job.add_argument("--spec", required=True, help="the job specification (JSON file or string)")
    job.add_argument("--model", required=True, help="weights or a .pt2 program (reused if the server has it)")
    job.add_argument("--architecture", help="for weights: the architecture (JSON or a JSON file)")
    job.add_argument(
        "--input-transform",
        help="the preprocessing the model was trained with (JSON or a JSON file: resize, crop, mean, std, channels)",
    )
    job.add_argument(
        "--train-data",
        required=True,
        help="tensors (.safetensors, .npz), an image archive (ImageFolder .zip/.tar/.tar.gz, WebDataset .tar) or a "
        "folder of class folders or of WebDataset .tar shards (sent joined as one); gif submit also takes an s3:// "
        "URL (or s3://…/prefix/ of shards) the service allows (the other --*-data take the same)",
    )
    for _, argument in DATASET_FIELDS[1:]:
        job.add_argument("--" + argument.replace("_", "-"))
    job.add_argument(
        "--methods",
        help="compare methods in one job, e.g. gif,first_order,fine_tune,neg_grad_plus: the best by the validation "
        "objective is the job's checkpoint (--out); gif download --method NAME fetches another",
    )
    job.add_argument("--wait", action="store_true", help="wait with a progress bar and print the metrics")
    job.add_argument("--out", help="with --wait: where to download the edited checkpoint (.pt2 for a program)")
    job.add_argument("--report", help="with --wait: where to write the job report (HTML)")
    add("status", status, "a job's progress, metrics or error").add_argument("job")
    add("cancel", cancel, "cancel a queued or running job").add_argument("job")
    fetch = add("download", download, "download a job's edited checkpoint")
    fetch.add_argument("job")
    fetch.add_argument("--out", help="where to write the edited checkpoint")
    fetch.add_argument("--report", help="where to write the job report (HTML)")
    fetch.add_argument("--format", choices=["safetensors", "pt2"], default="safetensors")
    fetch.add_argument("--method", help="a job of several methods: this method's checkpoint (default: the chosen one)")
    add("workers", workers, "the server's live workers: device, state, jobs done")
    add("usage", usage, "your API key's usage and limits: active jobs, stored bytes, submits")
