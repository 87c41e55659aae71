"""Input transforms fed batch by batch: the memory of an edit on uint8 images with a model's resize and crop.

The engine keeps a dataset's images as stored (uint8) and converts and transforms only the batches it feeds the model
(``gif.data.Dataset.inputs_at``). The same class removal runs twice in this process on seeded 3×64×64 uint8 images,
for an MLP on 3×56×56 inputs: with the model's transform (resize 64 → centre crop 56 → normalise) applied as fed, and
on the same images transformed whole in advance into float32, what the engine used to hold. Each run's peak resident
memory rise is read from /proc (VmHWM, reset before each run), after a small edit that pays the one-time costs
(imports, the allocator's first pools), and the two edits' metrics are compared.

    python -m bench.transform_memory            # bench/RESULTS.md, section 17
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.report import QUICK, markdown_table, write_section
from gif.data import Dataset
from gif.edit import EditOutcome, run
from gif.models.registry import build_model
from gif.models.transforms import InputTransform
from gif.spec import JobSpec, RetrainSpec
from gif.training import reinitialised, train

SIDE, FED_SIDE, CLASSES = 64, 56, 10
TRANSFORM = InputTransform(resize=SIDE, crop=FED_SIDE, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
SPEC = JobSpec.model_validate(
    {
        "request": {"kind": "remove_class", "classes": [1]},
        "solver": {"max_iterations": 10},
        "step": {"mode": "fixed", "scale": 1.0},
    }
)


def images(count: int, seed: int) -> Dataset:
    """Seeded uint8 images whose class is a brighter horizontal band, so that a model can learn it."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(count) % CLASSES
    x = torch.randint(0, 160, (count, 3, SIDE, SIDE), dtype=torch.uint8, generator=generator)
    band = SIDE // CLASSES
    for label in range(CLASSES):
        x[y == label, :, label * band : (label + 1) * band] += 90
    return Dataset(x, y)


def transformed_whole(data: Dataset) -> Dataset:
    """The images converted to float32 and transformed all at once, as the engine used to hold them."""
    return Dataset(TRANSFORM(data.x.float() / 255), data.y)


def resident_kib() -> dict[str, int]:
    """This process's resident set now (VmRSS) and at its peak since the last reset (VmHWM), in KiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def peak_rise(edit: Callable[[], EditOutcome]) -> tuple[EditOutcome, float, float]:
    """``edit()`` with its peak resident memory rise (MiB) over the resident set before it, and its seconds."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    before = resident_kib()["VmRSS"]
    started = time.perf_counter()
    outcome = edit()
    return outcome, (resident_kib()["VmHWM"] - before) / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600 if QUICK else 6000)
    args = parser.parse_args()
    train_data, eval_data = images(args.images, 0), images(args.images // 5, 1)
    model = reinitialised(build_model({"name": "mlp", "config": {"sizes": [3 * FED_SIDE**2, 32, CLASSES]}}), 0)
    train(model, transformed_whole(train_data), RetrainSpec(epochs=1, batch_size=128, lr=0.05))
    stored_mib = (train_data.x.nbytes + eval_data.x.nbytes) / 2**20
    copy_mib = (len(train_data) + len(eval_data)) * 3 * FED_SIDE**2 * 4 / 2**20
    run(SPEC, model, train_data.subset(range(100)), device="cpu", input_transform=TRANSFORM)  # one-time costs first
    fed, fed_rise, fed_s = peak_rise(
        lambda: run(SPEC, model, train_data, eval_data, device="cpu", input_transform=TRANSFORM)
    )
    whole, whole_rise, whole_s = peak_rise(
        lambda: run(SPEC, model, transformed_whole(train_data), transformed_whole(eval_data), device="cpu")
    )
    after = fed.result.metrics.after
    largest = max(abs(after[k] - whole.result.metrics.after[k]) for k in after)
    table = markdown_table(
        ["data given to `gif.edit.run`", "images held (MiB)", "peak RSS rise of the run (MiB)", "run (s)"],
        [
            ["uint8, transform applied as fed", f"{stored_mib:.0f}", f"{fed_rise:.0f}", f"{fed_s:.1f}"],
            ["float32, transformed whole in advance", f"{copy_mib:.0f}", f"{whole_rise:.0f}", f"{whole_s:.1f}"],
        ],
    )
    body = (
        f"A class removal (`{SPEC.request.model_dump_json()}`, 10 solver iterations, a fixed step) on {len(train_data):,} "
        f"training and {len(eval_data):,} eval images of 3×{SIDE}×{SIDE} uint8 ({stored_mib:.0f} MiB stored), for an "
        f"MLP on 3×{FED_SIDE}×{FED_SIDE} inputs declared with `{TRANSFORM.describe()}`. The same images transformed "
        f"whole into float32 take {copy_mib:.0f} MiB (a 100,000-image 224×224 training set: "
        f"{100_000 * 3 * 224**2 * 4 / 2**30:.0f} GiB, against {100_000 * 3 * 224**2 / 2**30:.0f} GiB stored as uint8). "
        "The rise is the process's peak resident set during the run (VmHWM, reset before it) over its resident set "
        f"before; the second run's includes building its transformed copy.\n\n{table}\n\n"
        f"Largest difference over the {len(after)} metrics after the two edits: {largest:.1e} (target: within 1e-5)."
    )
    command = "python -m bench.transform_memory" + (f" --images {args.images}" if args.images != 6000 else "")
    write_section("transform-memory", "17. Input transforms fed batch by batch (issue 22)", body, command)


if __name__ == "__main__":
    main()
