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
import tempfile
import time
import zipfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.datasets import load_cifar10
from bench.report import QUICK, markdown_table, write_section
from bench.setups import CACHE_DIR
from bench.stack import start_stack
from gif.data import shared_data_dir
from gif.io.images import convert_images

TARGET_IMAGES_PER_S = 2000
TARGET_RISE_MIB = 256


def cifar_zip(path: Path, count: int) -> Path:
    """``count`` CIFAR images as ``<class>/<n>.png`` in a stored (uncompressed: PNG already is) zip, made once."""
    if path.exists():
        return path
    names = (shared_data_dir() / "cifar10" / "batches.meta.txt").read_text().split()
    data = [load_cifar10("train"), load_cifar10("test")]
    pixels = torch.cat([(d.x * 255).round().to(torch.uint8) for d in data]).permute(0, 2, 3, 1).numpy()
    labels = torch.cat([d.y for d in data]).numpy()
    partial = path.with_suffix(".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as zf:
        for n in range(count):
            i = n % len(labels)
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(pixels[i])).save(buffer, "PNG")
            zf.writestr(f"{names[labels[i]]}/{n:06d}.png", buffer.getvalue())
    partial.rename(path)
    return path


def memory_kib(pid: int) -> dict[str, int]:
    """The process's resident set now (VmRSS) and at its peak so far (VmHWM), in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def measure(archive: Path, count: int) -> dict[str, float]:
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
        return {
            "images": count,
            "archive_mib": archive.stat().st_size / 2**20,
            "stored_mib": record["size_bytes"] / 2**20,
            "upload_s": upload_s,
            "in_process_s": in_process_s,
            "rss_before_mib": before["VmRSS"] / 1024,
            "peak_rise_mib": (after["VmHWM"] - before["VmRSS"]) / 1024,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000 if QUICK else 50_000)
    args = parser.parse_args()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    m = measure(cifar_zip(CACHE_DIR / f"cifar-{args.images}.zip", args.images), args.images)
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
        f"{table}\n\n{verdict}"
    )
    write_section("ingest", f"10. Image ingest: a {m['images']:,}-image ImageFolder zip (issue 22)", body, command)


if __name__ == "__main__":
    main()
