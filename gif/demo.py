"""Small trained models with their data, for the README walk-through and smoke tests.

Everything comes from data on disk (scikit-learn's bundled digits, or the shared MNIST files);
nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gif.data import Dataset, load_digits, load_mnist, split_indices
from gif.io.files import write_safetensors
from gif.io.images import write_png
from gif.models.registry import build_model
from gif.models.transforms import InputTransform
from gif.spec import RetrainSpec
from gif.training import reinitialised, train

DEMOS: dict[str, dict[str, Any]] = {
    "digits": {
        "architecture": {"name": "mlp", "config": {"sizes": [64, 32, 10], "activation": "relu"}},
        "recipe": RetrainSpec(epochs=30, batch_size=64, lr=0.05, weight_decay=5e-4),
        "load": load_digits,
    },
    "mnist": {
        "architecture": {"name": "tinynet", "config": {"in_channels": 1, "num_classes": 10}},
        "recipe": RetrainSpec(epochs=3, batch_size=128, lr=0.05, weight_decay=5e-4),
        "load": load_mnist,
    },
}


# The image demo: the digits as grayscale PNGs in class folders, and torchvision's ResNet-18 trained on them through
# the preprocessing a user would declare with such a model (resized, three channels, normalised).
IMAGES_ARCHITECTURE = {"name": "torchvision.resnet18", "config": {"num_classes": 10}}
IMAGES_TRANSFORM = InputTransform(resize=16, channels=3, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
IMAGES_RECIPE = RetrainSpec(epochs=4, batch_size=64, lr=0.05, weight_decay=5e-4)


def demo_model(dataset: str, seed: int = 0) -> tuple[dict[str, Any], torch.nn.Module, Dataset, Dataset]:
    """(architecture, trained model, train split, eval split) for a demo dataset; 80/20 seeded split."""
    demo = DEMOS[dataset]
    data: Dataset = demo["load"]()
    train_idx, eval_idx = split_indices(len(data), 0.8, seed)
    train_data, eval_data = data.subset(train_idx), data.subset(eval_idx)
    model = reinitialised(build_model(demo["architecture"]), seed)
    train(model, train_data, demo["recipe"].model_copy(update={"seed": seed}))
    return demo["architecture"], model, train_data, eval_data


def write_image_demo(out: Path, seed: int = 0) -> list[Path]:
    """``train/`` and ``eval/`` folders of 8×8 grayscale PNGs (``<digit>/<n>.png``), ResNet-18 trained on them
    through ``IMAGES_TRANSFORM`` (``input.json``), its architecture and a job that forgets the 8s."""
    data = load_digits()
    pixels = (data.x * 255).round().to(torch.uint8)
    train_idx, eval_idx = split_indices(len(data), 0.8, seed)
    for split, indices in (("train", train_idx), ("eval", eval_idx)):
        for i in indices.tolist():
            folder = out / split / str(int(data.y[i]))
            folder.mkdir(parents=True, exist_ok=True)
            write_png(folder / f"{i:04d}.png", pixels[i, 0])
    model = reinitialised(build_model(IMAGES_ARCHITECTURE), seed)
    fed = data.subset(train_idx).fed(IMAGES_TRANSFORM, torch.device("cpu"))
    train(model, fed, IMAGES_RECIPE.model_copy(update={"seed": seed}))
    job = {
        "request": {"kind": "remove_class", "classes": [8]},
        "solver": {"max_iterations": 15, "hessian_samples": 128},
    }
    files = {
        "model.safetensors": None,
        "architecture.json": IMAGES_ARCHITECTURE,
        "input.json": IMAGES_TRANSFORM.model_dump(exclude_none=True),
        "job.json": job,
    }
    write_safetensors(out / "model.safetensors", model.state_dict())
    for name, content in files.items():
        if content is not None:
            (out / name).write_text(json.dumps(content, indent=2))
    return [out / "train", out / "eval", *(out / name for name in files)]


def write_demo_assets(out: Path, dataset: str = "digits", seed: int = 0) -> list[Path]:
    architecture, model, train_data, eval_data = demo_model(dataset, seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "model": out / "model.safetensors",
        "architecture": out / "architecture.json",
        "train": out / "train.safetensors",
        "eval": out / "eval.safetensors",
        "job": out / "job.json",
    }
    write_safetensors(paths["model"], model.state_dict())
    paths["architecture"].write_text(json.dumps(architecture))
    train_data.save(paths["train"])
    eval_data.save(paths["eval"])
    job = {
        "request": {"kind": "remove_class", "classes": [8]},
        "method": "gif",
        "selection": {"criterion": "topk_outputs", "ratio": 0.1},
        "solver": {"kind": "cg", "max_iterations": 20},
    }
    paths["job"].write_text(json.dumps(job, indent=2))
    return list(paths.values())
