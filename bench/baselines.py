"""What a user would try instead of GIF, each with a stated budget and tuned on what GIF's step is tuned on.

- Fine-tuning: the reference recipe (its learning rate, momentum and cosine schedule) for ``FINETUNE_EPOCHS``
  epochs on the data a retrained model would see (retained examples; relabelled ones for a relabel), starting
  from the trained model. Three epochs are a fifth of the 15-epoch recipe: the cost the benchmarks allow an edit.
- Gradient ascent: SGD with the recipe's learning rate and momentum on the forgotten examples' loss, negated
  (a relabel descends on the new labels and ascends on the old), for up to ``ASCENT_EPOCHS`` passes over them
  (it stops when the loss is no longer finite). After steps 1, 2, 4, 8, … and ``CHECKS_PER_EPOCH`` times per
  pass the model is scored by the objective GIF's automatic step maximises, on the same validation data, and
  the best checkpoint (the unedited model included) is kept: an unbounded ascent can overshoot within a quarter
  pass, so the early checks come close together. The earlier budget
  (lr 0.01 without momentum, 60 steps) left a trained TinyNet unchanged: confident predictions have tiny
  gradients until the ascent has built up speed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bench.setups import Prepared
from gif.data import Dataset
from gif.metrics import predict
from gif.plan import RequestPlan, Samples, gradient_pool
from gif.spec import JobSpec
from gif.step import AutoStepPolicy, step_policy
from gif.training import train

FINETUNE_EPOCHS = 3
ASCENT_EPOCHS = 5
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

    def score(model: nn.Module) -> float:
        return policy.objective(policy.data, lambda d: predict(model.eval(), d.x))

    recipe = prepared.setup.recipe
    terms = plan.gradient_terms(prepared.train, gradient_pool(plan, samples.validation))
    batches = [(x, y, -1.0 if term.weight > 0 else 1.0) for term in terms for x, y in term.data.batches(64)]
    model = copy.deepcopy(prepared.model)
    if device is not None:
        model = model.to(device)
    where = next(model.parameters()).device
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    generator = torch.Generator().manual_seed(spec.solver.seed)
    best, best_state = score(model), copy.deepcopy(model.state_dict())
    every = max(1, len(batches) // CHECKS_PER_EPOCH)
    for step in range(1, ASCENT_EPOCHS * len(batches) + 1):
        x, y, sign = batches[int(torch.randint(len(batches), (1,), generator=generator))]
        optimizer.zero_grad(set_to_none=True)
        loss = sign * torch.nn.functional.cross_entropy(model.train()(x.to(where)), y.to(where))
        if not torch.isfinite(loss):
            break  # the ascent has blown up; later checkpoints cannot be better
        loss.backward()
        optimizer.step()
        if step & (step - 1) == 0 or step % every == 0:  # early checks double their spacing
            value = score(model)
            if value > best:
                best, best_state = value, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval()
