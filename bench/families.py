"""Users' own models, family by family (issue 10), written to bench/FAMILIES.md.

For one model of each family — torchvision's ResNet-18, MobileNetV3-Small, EfficientNet-B0, ConvNeXt-T,
ViT-B/16 and Swin-T, a timm ViT, and ResNet-18 as an exported ``.pt2`` program read by the validating
loader — at 32×32 inputs (the CPU's budget; 224² where a GPU runs this):

1. one Hessian-vector product against one forward+backward of the same batch, for each implementation and
   for ``auto`` (``bench.gpu.hvp_row``: best of 3 after a warm-up);
2. a class removal through ``gif.edit.run`` at the default sample sizes (Hessian 512, gradient 256,
   selection 10%, auto step, the default CG cap): its wall time, phase by phase, and its HVP count.

Run: .venv/bin/python -m bench.families   (GIF_BENCH_QUICK=1: a smoke run, writes bench/FAMILIES.quick.md)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench.common import markdown_table
from bench.gpu import IMPLEMENTATIONS, hvp_row
from bench.service_bench import machine
from gif.architectures import build_model
from gif.data import Dataset
from gif.devices import device_report, resolve_device
from gif.edit import run
from gif.programs import load_program
from gif.spec import JobSpec

QUICK = os.environ.get("GIF_BENCH_QUICK") == "1"
OUT = Path(__file__).with_name("FAMILIES.quick.md" if QUICK else "FAMILIES.md")
SHAPE = (3, 32, 32)
CLASSES = 10
FAMILIES: list[tuple[str, dict]] = [
    ("ResNet", {"name": "torchvision.resnet18", "config": {"num_classes": CLASSES}}),
    ("MobileNetV3 (depthwise)", {"name": "torchvision.mobilenet_v3_small", "config": {"num_classes": CLASSES}}),
    ("EfficientNet (depthwise)", {"name": "torchvision.efficientnet_b0", "config": {"num_classes": CLASSES}}),
    ("ConvNeXt (depthwise 7×7)", {"name": "torchvision.convnext_tiny", "config": {"num_classes": CLASSES}}),
    ("ViT", {"name": "torchvision.vit_b_16", "config": {"num_classes": CLASSES, "image_size": 32}}),
    ("Swin", {"name": "torchvision.swin_t", "config": {"num_classes": CLASSES}}),
    ("timm ViT", {"name": "timm.vit_tiny_patch16_224", "config": {"num_classes": CLASSES, "img_size": 32}}),
]
EXPORTED = ("exported .pt2 (ResNet-18)", {"name": "torchvision.resnet18", "config": {"num_classes": CLASSES}})
BATCH = 8 if QUICK else 32
EDIT_SAMPLES = 64 if QUICK else 1200  # 120 per class: the gradient sample (256) takes all of one class


def exported(architecture: dict, folder: Path) -> torch.nn.Module:
    """The model saved with torch.export and read back by the validating loader."""
    model = build_model(architecture).eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(model, (torch.rand(2, *SHAPE),), dynamic_shapes={"x": {0: batch}})
    path = folder / "model.pt2"
    torch.export.save(program, str(path))
    return load_program(path)


def edit_timing(model: torch.nn.Module, device: torch.device) -> list[object]:
    """A class removal at the default sample sizes: total seconds, phase seconds, HVPs, residual."""
    generator = torch.Generator().manual_seed(0)
    data = Dataset(torch.rand(EDIT_SAMPLES, *SHAPE, generator=generator), torch.arange(EDIT_SAMPLES) % CLASSES)
    spec = JobSpec.model_validate(
        {"request": {"kind": "remove_class", "classes": [3]}, "solver": {"max_iterations": 2} if QUICK else {}}
    )
    started = time.perf_counter()
    result = run(spec, model, data, data, device=device).result
    wall = time.perf_counter() - started
    t = result.timings
    return [
        f"{wall:.1f}",
        f"{t.selection_s:.1f}",
        f"{t.solve_s:.1f}",
        f"{t.step_search_s:.1f}",
        f"{t.evaluation_s:.1f}",
        result.solver.hvp_count,
        result.solver.hvp_method,
        f"{result.selection.modification_ratio:.3f}",
    ]


def main() -> int:
    started = datetime.now(timezone.utc)
    device = resolve_device("auto")
    print(machine(), device, flush=True)
    hvp_rows: list[list[object]] = []
    edit_rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="gif-bench-") as tmp:
        models = [(label, arch["name"], build_model(arch)) for label, arch in FAMILIES]
        models.append((EXPORTED[0], "exported", exported(EXPORTED[1], Path(tmp))))
        for label, name, model in models:
            row = hvp_row(f"{label}: `{name}`", model, SHAPE, BATCH, device)
            hvp_rows.append(row)
            print(row, flush=True)
            edit_rows.append([f"{label}: `{name}`", f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"])
            edit_rows[-1] += edit_timing(model, device)
            print(edit_rows[-1], flush=True)
    where = device_report(device)
    text = f"""# Users' own models, family by family, on {where["name"]} ({device.type})

Command: `.venv/bin/python -m bench.families` (this file is written by it)
Date: {started:%Y-%m-%d %H:%M} UTC
Machine: {machine()}; at the end {os.getloadavg()[0]:.2f}
Inputs: {SHAPE[1]}×{SHAPE[2]} RGB, {CLASSES} classes, random weights (speed does not depend on training).

## 1. One Hessian-vector product against one forward+backward of the same batch (best of 3 after a warm-up)

{markdown_table(["model", "batch", "forward+backward ms", *IMPLEMENTATIONS, "auto (its choice: ratio)"], hvp_rows)}

## 2. A class removal at the default sample sizes ({EDIT_SAMPLES} training samples; Hessian 512, gradient 256;
Top-k outputs 10%; CG capped at {2 if QUICK else "the default"} iterations; auto step; evaluation on the training data)

{
        markdown_table(
            [
                "model",
                "parameters",
                "wall s",
                "selection s",
                "solve s",
                "step search s",
                "evaluation s",
                "HVPs",
                "HVP method",
                "modified share",
            ],
            edit_rows,
        )
    }
"""
    OUT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
