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
from gif.models.registry import build_model
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


def demo_model(dataset: str, seed: int = 0) -> tuple[dict[str, Any], torch.nn.Module, Dataset, Dataset]:
    """(architecture, trained model, train split, eval split) for a demo dataset; 80/20 seeded split."""
    demo = DEMOS[dataset]
    data: Dataset = demo["load"]()
    train_idx, eval_idx = split_indices(len(data), 0.8, seed)
    train_data, eval_data = data.subset(train_idx), data.subset(eval_idx)
    model = reinitialised(build_model(demo["architecture"]), seed)
    train(model, train_data, demo["recipe"].model_copy(update={"seed": seed}))
    return demo["architecture"], model, train_data, eval_data


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
