"""Users' own models, family by family (issue 10), written to bench/FAMILIES.md.

For one model of each family — torchvision's ResNet-18, MobileNetV3-Small, EfficientNet-B0, ConvNeXt-T,
ViT-B/16 and Swin-T, a timm ViT, and ResNet-18 as an exported ``.pt2`` program read by the validating
loader — at 32×32 inputs (the CPU's budget; 224² where a GPU runs this):

1. one Hessian-vector product against one forward+backward of the same batch, for each implementation, for
   ``auto`` and for the Gauss-Newton product (``bench.setups.hvp_row``: each timed in turns with a
   forward+backward, best of 3 rounds); with ``--compiled``, each curvature's compiled product and its compile
   seconds too (minutes per product on a CPU, so an option: rows measured without it say so);
2. a class removal through ``gif.edit.run`` at the default sample sizes (Hessian 512, gradient 256,
   selection 10%, auto step, CG at 5 iterations): its wall time, phase by phase, and its HVP count.

Run: .venv/bin/python -m bench.families [--device auto|cpu|cuda|cuda:N] [--compiled] [FAMILY …]   (names: only the families whose
label starts so; the rows of the others are kept from bench/FAMILIES.json, each stamped with the device it was
measured on)   GIF_BENCH_QUICK=1: a smoke run, writes bench/FAMILIES.quick.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.report import BENCH_DIR, QUICK, device_description, host_description, markdown_table, report_file
from bench.setups import COMPILED_COLUMNS, PRODUCT_COLUMNS, add_device_argument, hvp_row
from gif.data import Dataset
from gif.edit import run
from gif.io.programs import load_program
from gif.models.registry import build_model
from gif.spec import JobSpec

OUT = report_file("FAMILIES")
ROWS = BENCH_DIR / "FAMILIES.json"  # the measured rows, so that a run of some families keeps the others
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
EDIT_ITERATIONS = 2 if QUICK else 5  # fixed, so that rows measured on different days compare
EDIT_HEADERS = [
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
]


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
        {
            "request": {"kind": "remove_class", "classes": [3]},
            "solver": {"kind": "cg", "max_iterations": EDIT_ITERATIONS},
        }
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


def render(rows: dict[str, dict], device: torch.device) -> str:
    hvp_headers = ["model", "batch", "forward+backward ms", *PRODUCT_COLUMNS, *COMPILED_COLUMNS]
    hvp_rows = [r["hvp"] + ["not measured"] * (len(hvp_headers) - len(r["hvp"])) for r in rows.values()]
    edit_rows = [r["edit"] for r in rows.values() if r.get("edit")]
    measured = "\n".join(f"- {label}: {r['measured']} (load average {r['load']})" for label, r in rows.items())
    return f"""# Users' own models, family by family, on {device_description(device)}

Command: `.venv/bin/python -m bench.families --device {device} [--compiled] [FAMILY …]` (this file is written by it;
with families named, only their rows are measured again and the others kept, each row stamped below with when and
where it was measured; the compiled columns only with `--compiled`).
Machine: {host_description(device)}
Inputs: {SHAPE[1]}×{SHAPE[2]} RGB, {CLASSES} classes, random weights (speed does not depend on training).

## 1. One Hessian-vector product against one forward+backward of the same batch (timed in turns, best of 3 rounds after a warm-up)

{markdown_table(hvp_headers, hvp_rows)}

## 2. A class removal at the default sample sizes ({EDIT_SAMPLES} training samples; Hessian 512, gradient 256;
Top-k outputs 10%; CG, {EDIT_ITERATIONS} iterations; auto step; evaluation on the training data)

{markdown_table(EDIT_HEADERS, edit_rows)}

The solve's cost is its HVP count times one HVP: with the default solver (LSMR to a relative residual of
0.02, bench/RESULTS.md section 8) a TinyNet-sized system takes about 25 HVPs instead of the 13 here.

## When each row was measured

{measured}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_argument(parser)
    parser.add_argument("--compiled", action="store_true", help="the compiled products too (minutes each on a CPU)")
    parser.add_argument("families", nargs="*", help="only the families whose label starts so (default: all)")
    args = parser.parse_args(argv)
    only, device = args.families, args.device
    print(host_description(device), device, flush=True)
    rows: dict[str, dict] = json.loads(ROWS.read_text()) if ROWS.exists() and not QUICK else {}
    with tempfile.TemporaryDirectory(prefix="gif-bench-") as tmp:
        for label, arch in [*FAMILIES, EXPORTED]:
            if only and not any(label.startswith(prefix) for prefix in only):
                continue
            model = exported(arch, Path(tmp)) if (label, arch) == EXPORTED else build_model(arch)
            name = "exported" if (label, arch) == EXPORTED else arch["name"]
            key = f"{label}: `{name}`"
            rows[key] = {"hvp": hvp_row(key, model, SHAPE, BATCH, device, args.compiled)}
            print(rows[key]["hvp"], flush=True)
            rows[key]["edit"] = [key, f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"]
            rows[key]["edit"] += edit_timing(model, device)
            rows[key]["measured"] = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {device_description(device)}"
            rows[key]["load"] = f"{os.getloadavg()[0]:.2f}"
            print(rows[key]["edit"], flush=True)
            if not QUICK:
                ROWS.write_text(json.dumps(rows, indent=1))
            OUT.write_text(render(rows, device))
    print(OUT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
