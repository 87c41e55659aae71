"""What a user would try instead of GIF, each with a stated budget and tuned on what GIF's step is tuned on.

- Fine-tuning: the reference recipe (its learning rate, momentum and cosine schedule) for ``FINETUNE_EPOCHS``
  epochs on the data a retrained model would see (retained examples; relabelled ones for a relabel), starting
  from the trained model. Three epochs are a fifth of the 15-epoch recipe: the cost the benchmarks allow an edit.
- Gradient ascent: the engine's ``neg_grad_plus`` without its retained term (``gif.training_methods``,
  ``retain_weight`` 0): SGD with the recipe's learning rate and momentum on the forgotten examples' loss, negated
  (a relabel descends on the new labels and ascends on the old), for up to ``ASCENT_EPOCHS`` passes over them
  (it stops when the loss is no longer finite). After steps 1, 2, 4, 8, …, ``CHECKS_PER_EPOCH`` times per
  pass and at the end the model is scored by the objective GIF's automatic step maximises, on the same validation
  data, and the best checkpoint (the unedited model included) is kept: an unbounded ascent can overshoot within a
  quarter pass, so the early checks come close together. The earlier budget
  (lr 0.01 without momentum, 60 steps) left a trained TinyNet unchanged: confident predictions have tiny
  gradients until the ascent has built up speed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bench.setups import Prepared
from gif.data import Dataset
from gif.plan import RequestPlan, Samples
from gif.spec import JobSpec, TrainingMethodSpec
from gif.step import AutoStepPolicy, step_policy
from gif.training import train
from gif.training_methods import neg_grad_plus_data, policy_score, search_learning_rate

FINETUNE_EPOCHS = 3
ASCENT_EPOCHS = 5
ASCENT_BATCH = 64
CHECKS_PER_EPOCH = 4


def fine_tune(prepared: Prepared, spec: JobSpec, seed: int, device: torch.device | None = None) -> nn.Module:
    """The trained model, trained on for ``FINETUNE_EPOCHS`` epochs on the edited training data (on ``device``,
    default: where the model is)."""
    plan = RequestPlan.of(spec.request, prepared.train)
    recipe = prepared.setup.recipe.model_copy(update={"epochs": FINETUNE_EPOCHS, "seed": seed})
    model = copy.deepcopy(prepared.model)
    return train(model.to(device) if device is not None else model, plan.edited_training_data(prepared.train), recipe)


def gradient_ascent(
    prepared: Prepared, spec: JobSpec, validation: Dataset | None = None, device: torch.device | None = None
) -> nn.Module:
    """Ascend the forgotten examples' loss; keep the checkpoint that scores best on the automatic step's objective
    (``validation`` held-out data when given, else the split a job carves from the training data); on ``device``
    (default: where the model is)."""
    plan = RequestPlan.of(spec.request, prepared.train)
    samples = Samples.draw(spec, plan, len(prepared.train), carve_validation=validation is None)
    policy = step_policy(spec, plan, prepared.train, samples.validation, validation, prepared.model)
    assert isinstance(policy, AutoStepPolicy), "gradient ascent is tuned like the automatic step"
    budget = TrainingMethodSpec(
        epochs=ASCENT_EPOCHS,
        batch_size=ASCENT_BATCH,
        learning_rates=[prepared.setup.recipe.lr],
        momentum=prepared.setup.recipe.momentum,
        retain_weight=0.0,
        checks_per_epoch=CHECKS_PER_EPOCH,
        seed=spec.solver.seed,
    )
    data = neg_grad_plus_data(plan, prepared.train, samples.validation, budget)
    model = copy.deepcopy(prepared.model)
    return search_learning_rate(
        model.to(device) if device is not None else model, data, budget, policy_score(policy)
    ).model
