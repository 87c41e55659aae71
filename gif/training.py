"""Training from scratch: the ``retrain`` ground truth, demo assets and benchmark reference models.

The recipe is the paper's: SGD with momentum and weight decay, a cosine learning-rate schedule
over all steps, seeded initialisation and shuffling.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from gif.data import Dataset
from gif.spec import RetrainSpec

EpochCallback = Callable[[int, int], None]  # (epochs done, epochs in all); may raise to cancel


def reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with fresh, seeded weights: every module's own ``reset_parameters``,
    innermost first, so that a model's own initialisation scheme has the last word.

    The initialisers draw from torch's global generator, so they run on a CPU copy with the CPU generator
    seeded by ``seed`` and restored afterwards: a model on any device gets the same weights, and the
    caller's random state is left as it was."""
    device = next(model.parameters()).device
    fresh = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        for module in reversed(list(fresh.modules())):
            for reset in ("reset_parameters", "reset_running_stats"):
                if callable(method := getattr(module, reset, None)):
                    method()
    return fresh.to(device)


def shuffled_batches(num_examples: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of seeded passes over ``num_examples`` examples, each pass in a fresh random order, for ever
    (the last batch of a pass may be smaller)."""
    while True:
        order = torch.randperm(num_examples, generator=generator)
        yield from order.split(batch_size)


def train(model: nn.Module, data: Dataset, recipe: RetrainSpec, on_epoch: EpochCallback | None = None) -> nn.Module:
    """Train ``model`` in place on ``data`` with ``recipe``; returns it in eval mode."""
    device = next(model.parameters()).device
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    steps_per_epoch = -(-len(data) // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs * steps_per_epoch)
    batches = shuffled_batches(len(data), recipe.batch_size, torch.Generator().manual_seed(recipe.seed))
    model.train()
    for epoch in range(recipe.epochs):
        for _ in range(steps_per_epoch):
            idx = next(batches)
            x, y = data.inputs_at(idx).to(device), data.y[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            schedule.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, recipe.epochs)
    return model.eval()
