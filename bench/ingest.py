"""Image ingest: how fast POST /v1/datasets takes an ImageFolder zip of PNGs, and how much memory the API needs for it.

The archive is the shared CIFAR-10 subset (4,000 training and 1,000 test images) written as PNGs, repeated under new
names until it holds ``--images`` (50,000 by default, 2,000 in a quick run); it is uploaded through the users' client
to a real stack (Redis, a worker, the API), and the API process's resident memory is read from /proc before the upload
and at its peak (VmHWM) after. Beside it, the same conversion in this process (``convert_images``) times the decoding
alone.

    python -m bench.ingest                 # bench/RESULTS.md, section 10
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
import zipfile
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path

import torch

from bench.datasets import load_cifar10
from bench.report import QUICK, markdown_table, write_section
from bench.setups import CACHE_DIR
from bench.stack import Stack, start_stack, wait_for_job
from gif.data import Dataset, shared_data_dir
from gif.demo import write_demo_assets
from gif.io.datasets import read_dataset
from gif.io.images import convert_images, write_png

TARGET_IMAGES_PER_S = 2000
TARGET_RISE_MIB = 256


def png_zip(path: Path, images: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Images (uint8, C × H × W) as the PNG members of a stored zip (uncompressed: PNG already is)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, pixels in images:
            buffer = io.BytesIO()
            write_png(buffer, pixels)
            zf.writestr(name, buffer.getvalue())


def cifar_zip(path: Path, count: int) -> Path:
    """``count`` CIFAR images as ``<class>/<n>.png`` in a stored (uncompressed: PNG already is) zip, made once."""
    if path.exists():
        return path
    names = (shared_data_dir() / "cifar10" / "batches.meta.txt").read_text().split()
    data = [load_cifar10("train"), load_cifar10("test")]
    pixels = torch.cat([(d.x * 255).round().to(torch.uint8) for d in data])
    labels = torch.cat([d.y for d in data]).tolist()
    partial = path.with_suffix(".part")
    png_zip(partial, ((f"{names[labels[n % len(labels)]]}/{n:06d}.png", pixels[n % len(labels)]) for n in range(count)))
    partial.rename(path)
    return path


def as_image_folder(data: Dataset, path: Path) -> Dataset:
    """``data`` written as an ImageFolder zip of PNGs (pixels rounded to uint8), and the same pixels as float32
    tensors in the order the service reads the folder in (by class, then name), so both hold the same examples."""
    pixels = (data.x * 255).round().to(torch.uint8)
    png_zip(path, ((f"{int(data.y[i])}/{i:05d}.png", pixels[i]) for i in range(len(data))))
    order = torch.argsort(data.y, stable=True)
    return Dataset(pixels[order].float() / 255, data.y[order])


def compare_formats(running: Stack, directory: Path) -> dict[str, dict[str, float]]:
    """The demo's class removal twice through the stack: float32 tensors with the plain model, and PNG images with
    the model declared with an identity input transform; same pixels, same order, same seeds."""
    demo = directory / "demo"
    write_demo_assets(demo, "digits" if QUICK else "mnist")
    architecture = json.loads((demo / "architecture.json").read_text())
    spec = json.loads((demo / "job.json").read_text())
    files: dict[str, dict[str, Path]] = {"float32": {}, "uint8 + transform": {}}
    for split in ("train", "eval"):
        zipped = directory / f"{split}.zip"
        as_image_folder(read_dataset(demo / f"{split}.safetensors"), zipped).save(directory / f"{split}.safetensors")
        files["float32"][split], files["uint8 + transform"][split] = directory / f"{split}.safetensors", zipped
    rows = {}
    for kind, paths in files.items():
        transform = {"mean": [0.0], "std": [1.0]} if kind != "float32" else None
        started = time.perf_counter()
        model = running.api.upload_model(demo / "model.safetensors", architecture, transform)
        ids = {split: running.api.upload_dataset(path)["id"] for split, path in paths.items()}
        upload_s = time.perf_counter() - started
        job = {**spec, "model_id": model["id"], "train_dataset_id": ids["train"], "eval_dataset_id": ids["eval"]}
        ended = wait_for_job(running.api, running.api.submit(job)["id"])
        rows[kind] = {
            "bytes": sum(path.stat().st_size for path in paths.values()),
            "upload_s": upload_s,
            "job_s": ended["result"]["timings"]["total_s"],
            **ended["result"]["metrics"]["after"],
        }
    return rows


def memory_kib(pid: int) -> dict[str, int]:
    """The process's resident set now (VmRSS) and at its peak so far (VmHWM), in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def measure(archive: Path, count: int) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        started = time.perf_counter()
        facts = convert_images(archive, Path(scratch) / "converted.safetensors")
        in_process_s = time.perf_counter() - started
        assert facts.num_images == count
        running = start_stack(stack, Path(scratch) / "stack")
        before = memory_kib(running.api_pid)
        started = time.perf_counter()
        record = running.api.upload_dataset(archive)
        upload_s = time.perf_counter() - started
        after = memory_kib(running.api_pid)
        assert record["num_samples"] == count and record["source"] == "imagefolder"
        formats = compare_formats(running, Path(scratch))
        return formats, {
            "images": count,
            "archive_mib": archive.stat().st_size / 2**20,
            "stored_mib": record["size_bytes"] / 2**20,
            "upload_s": upload_s,
            "in_process_s": in_process_s,
            "rss_before_mib": before["VmRSS"] / 1024,
            "peak_rise_mib": (after["VmHWM"] - before["VmRSS"]) / 1024,
        }


def formats_text(rows: dict[str, dict[str, float]]) -> str:
    """The same job on float32 tensors and on PNGs with an identity transform, side by side."""
    metrics = [k for k, v in rows["float32"].items() if isinstance(v, float) and k not in ("upload_s", "job_s")]
    largest = max(abs(rows["float32"][k] - rows["uint8 + transform"][k]) for k in metrics)
    table = markdown_table(
        ["data", "bytes uploaded", "uploads (s)", "job (s)", "test accuracy after", "forget test accuracy after"],
        [
            [kind, f"{r['bytes']:,}", f"{r['upload_s']:.1f}", f"{r['job_s']:.1f}", f"{r['test_accuracy']:.4f}",
             f"{r['forget_test_accuracy']:.4f}"]
            for kind, r in rows.items()
        ],
    )  # fmt: skip
    return (
        f"The demo's class removal ({'the digits MLP' if QUICK else 'TinyNet trained on MNIST'}, `gif demo-assets`) "
        "on the same pixels "
        "uploaded two ways: float32 tensors (safetensors) with the plain model, and an ImageFolder zip of PNGs with "
        'the model declared with the identity transform `{"mean": [0], "std": [1]}`, in the same order with the '
        f"same seeds.\n\n{table}\n\nLargest difference over the {len(metrics)} metrics after the edit: "
        f"{largest:.1e} (target: within 1e-5)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000 if QUICK else 50_000)
    args = parser.parse_args()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    formats, m = measure(cifar_zip(CACHE_DIR / f"cifar-{args.images}.zip", args.images), args.images)
    command = "python -m bench.ingest" + (f" --images {args.images}" if args.images != 50_000 else "")
    rate, decode_rate = m["images"] / m["upload_s"], m["images"] / m["in_process_s"]
    table = markdown_table(
        ["images", "zip (MiB)", "stored (MiB)", "upload → 201 (s)", "images/s", "decode alone (s)", "images/s",
         "API RSS before (MiB)", "API peak rise (MiB)"],
        [[m["images"], f"{m['archive_mib']:.0f}", f"{m['stored_mib']:.0f}", f"{m['upload_s']:.1f}", f"{rate:.0f}",
          f"{m['in_process_s']:.1f}", f"{decode_rate:.0f}", f"{m['rss_before_mib']:.0f}", f"{m['peak_rise_mib']:.0f}"]],
    )  # fmt: skip
    verdict = (
        f"Targets (issue 22): ≥ {TARGET_IMAGES_PER_S} images/s end to end — "
        f"{'met' if rate >= TARGET_IMAGES_PER_S else 'missed'}; a peak memory rise ≤ {TARGET_RISE_MIB} MiB — "
        f"{'met' if m['peak_rise_mib'] <= TARGET_RISE_MIB else 'missed'}."
    )
    body = (
        "An ImageFolder zip of 32×32 PNGs (the shared CIFAR-10 images, repeated under new names) uploaded with "
        "`Client.upload_dataset` to a real stack: *upload → 201* covers streaming, hashing, checking every member, "
        "decoding and storing the uint8 tensors; *decode alone* is `convert_images` on the same file in one process. "
        "The API's memory is read from /proc: its resident set before the upload and its peak (VmHWM) after.\n\n"
        f"{table}\n\n{verdict}\n\n{formats_text(formats)}"
    )
    write_section("ingest", f"10. Image ingest: a {m['images']:,}-image ImageFolder zip (issue 22)", body, command)


if __name__ == "__main__":
    main()
