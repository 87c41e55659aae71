"""The training methods (``JobSpec.method`` fine_tune or neg_grad_plus): what a user would try instead of an influence
edit, with a budget (``JobSpec.training``) and tuned on what GIF's step is tuned on.

Each is a strategy registered by name in ``TRAINING_METHODS``: it says which batches a step learns from
(``TrainingData``). The rest is shared (``search_learning_rate``): plain SGD (momentum, optional weight decay, no
schedule) from the trained model, once per candidate learning rate, for ``epochs`` passes. After steps 1, 2, 4, 8, …,
``checks_per_epoch`` times per pass and at the end, the model is scored by the objective the automatic step maximises
(``gif.step``: the job's ``AutoStepPolicy``, on the same validation data), and the best checkpoint over every
candidate is kept, the unedited model included (ties keep the earlier: the smaller change). An unbounded ascent can
overshoot within a quarter pass, so the early checks come close together; a run whose loss is no longer finite stops
(later checkpoints cannot be better).

- ``fine_tune``: descent on the edited training data (``RequestPlan.edited_training_data``: the retained examples;
  for a relabel, the relabelled ones with their new labels too), in seeded shuffled passes.
- ``neg_grad_plus``: each step draws one batch of the examples an edit learns from (``gif.plan.gradient_pool``: for a
  class removal those outside the carved validation split) and ascends on it (a relabel: ascends on a batch under
  its old labels or descends on one under its new labels), and in the same step descends on a batch of retained
  examples: loss = w·L_retain − (1 − w)·L_forget with w = ``retain_weight``; w = 0 is plain gradient ascent (the
  benchmarks' baseline, ``bench.baselines.gradient_ascent``).

With ``selected_only`` only the parameters of the job's selection (``gif.selection``, as GIF edits them) are trained,
in eval mode (normalisation statistics and dropout frozen, every other entry bit-identical); otherwise every
parameter, in training mode (as retraining does). Progress: the training is the job's "solve" phase, the scoring of
checkpoints is timed as its "step_search".
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gif.data import Dataset
from gif.influence import InfluenceSolution
from gif.job import EditJob, WeightEdit
from gif.metrics import predict
from gif.parameters import ParameterSpace
from gif.plan import RequestPlan, gradient_pool
from gif.result import StepSummary, TrainingCandidate, TrainingSummary
from gif.selection import Selection, full_selection
from gif.spec import TrainingMethodSpec
from gif.step import AutoStepPolicy
from gif.training import shuffled_batches

ForgetBatch = tuple[Dataset, float]  # examples as stored (fed when drawn), sign of their loss: −1 ascends, +1 descends


@dataclass(frozen=True)
class TrainingData:
    """What a training method's steps learn from: each step draws one of the ``forget`` batches at random (if any)
    and the next batch of a shuffled pass over ``retain`` (if its weight is not 0)."""

    forget: list[ForgetBatch]
    retain: Dataset | None
    forget_weight: float
    retain_weight: float
    batch_size: int

    @property
    def steps_per_epoch(self) -> int:
        """One pass over the forget batches, or over the retained data when there are none."""
        if self.forget:
            return len(self.forget)
        assert self.retain is not None
        return -(-len(self.retain) // self.batch_size)

    @property
    def forget_samples(self) -> int:
        return sum(len(batch) for batch, sign in self.forget if sign < 0)

    @property
    def retain_samples(self) -> int:
        return len(self.retain) if self.retain is not None and self.retain_weight > 0 else 0


TrainingMethod = Callable[[RequestPlan, Dataset, torch.Tensor, TrainingMethodSpec], TrainingData]


def fine_tune_data(
    plan: RequestPlan, train: Dataset, validation: torch.Tensor, spec: TrainingMethodSpec
) -> TrainingData:
    return TrainingData([], plan.edited_training_data(train), 0.0, 1.0, spec.batch_size)


def neg_grad_plus_data(
    plan: RequestPlan, train: Dataset, validation: torch.Tensor, spec: TrainingMethodSpec
) -> TrainingData:
    """``validation``: the split carved from the training data (empty when held-out validation data is given)."""
    terms = plan.gradient_terms(train, gradient_pool(plan, validation))  # weight > 0: the removed data, or old labels
    forget = [
        (term.data.subset(range(start, min(start + spec.batch_size, len(term.data)))), -1.0 if term.weight > 0 else 1.0)
        for term in terms
        for start in range(0, len(term.data), spec.batch_size)
    ]
    retain = train.subset(plan.retained) if spec.retain_weight > 0 else None
    return TrainingData(forget, retain, 1.0 - spec.retain_weight, spec.retain_weight, spec.batch_size)


TRAINING_METHODS: dict[str, TrainingMethod] = {"fine_tune": fine_tune_data, "neg_grad_plus": neg_grad_plus_data}


def checkpoint_steps(total: int, steps_per_epoch: int, checks_per_epoch: int) -> list[int]:
    """The steps after which a run is scored: 1, 2, 4, 8, …, every ``steps_per_epoch // checks_per_epoch``, the last."""
    every = max(1, steps_per_epoch // checks_per_epoch)
    return [s for s in range(1, total + 1) if s & (s - 1) == 0 or s % every == 0 or s == total]


Score = Callable[[nn.Module], float]  # the validation objective of a model (higher is better)
Progress = Callable[[float, int], None]  # (fraction of the whole search, step of the current run); may raise


def _ignore(fraction: float, step: int) -> None:
    return None


def _untimed(phase: str, accumulate: bool = False) -> AbstractContextManager[None]:
    return nullcontext()


@dataclass
class LearningRateSearch:
    """The kept model and how it was found."""

    model: nn.Module
    learning_rate: float | None  # None: the unedited model was kept
    step: int
    objective: float
    unedited_objective: float
    steps_per_candidate: int
    candidates: list[TrainingCandidate] = field(default_factory=list)

    @property
    def evaluations(self) -> int:
        return 1 + sum(c.checkpoints for c in self.candidates)


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _restoring(model: nn.Module, original: nn.Module, trainable: torch.Tensor) -> Callable[[], None]:
    """A function that sets every parameter entry outside the flat mask ``trainable`` back to ``original``'s."""
    space = ParameterSpace.of(model)
    masks = space.unflatten(trainable)
    frozen = [
        (p, masks[name].to(p.device), q.detach())
        for (name, p), q in zip(model.named_parameters(), original.parameters())
        if not bool(masks[name].all())
    ]

    @torch.no_grad()
    def restore() -> None:
        for p, mask, value in frozen:
            p.copy_(torch.where(mask, p, value))

    return restore


def search_learning_rate(
    original: nn.Module,
    data: TrainingData,
    spec: TrainingMethodSpec,
    score: Score,
    trainable: torch.Tensor | None = None,
    progress: Progress = _ignore,
    clock: Callable[..., AbstractContextManager[None]] = _untimed,
) -> LearningRateSearch:
    """Train a copy of ``original`` (left untouched) on ``data`` once per learning rate of ``spec`` and keep the
    checkpoint that ``score``s best, ``original`` included (the module docstring). ``trainable``: a flat mask over
    ``original``'s parameters, the only entries trained (in eval mode); None: all, in training mode. ``progress``
    is called after every step; ``clock(phase, accumulate=True)`` times training ("solve") and scoring
    ("step_search")."""
    device = next(original.parameters()).device
    per_run = spec.epochs * data.steps_per_epoch
    checks = checkpoint_steps(per_run, data.steps_per_epoch, spec.checks_per_epoch)
    with clock("step_search", accumulate=True):
        unedited = score(original)
    best_value, best_rate, best_step, best_state = unedited, None, 0, None
    candidates = []
    for index, rate in enumerate(spec.learning_rates):
        model = copy.deepcopy(original)
        restore = _restoring(model, original, trainable) if trainable is not None else None
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=rate, momentum=spec.momentum, weight_decay=spec.weight_decay)
        forget_generator = torch.Generator().manual_seed(spec.seed)
        retain: Iterator[torch.Tensor] | None = None
        if data.retain is not None and data.retain_weight > 0:
            retain_seed = spec.seed + 1 if data.forget else spec.seed
            retain = shuffled_batches(len(data.retain), spec.batch_size, torch.Generator().manual_seed(retain_seed))
        step, scored, stopped = 0, 0, None
        run_best: tuple[float, int] | None = None
        for check in checks:
            with clock("solve", accumulate=True):
                model.train(trainable is None)
                while step < check:
                    loss = torch.zeros((), device=device)
                    if data.forget:
                        pick = int(torch.randint(len(data.forget), (1,), generator=forget_generator))
                        batch, sign = data.forget[pick]
                        inputs, labels = batch.inputs_at(slice(None)).to(device), batch.y.to(device)
                        loss = (data.forget_weight * sign) * F.cross_entropy(model(inputs), labels)
                    if retain is not None:
                        assert data.retain is not None
                        idx = next(retain)
                        batch_loss = F.cross_entropy(
                            model(data.retain.inputs_at(idx).to(device)), data.retain.y[idx].to(device)
                        )
                        loss = loss + data.retain_weight * batch_loss if data.forget else batch_loss
                    if not torch.isfinite(loss):
                        stopped = f"the loss was not finite at step {step + 1}"
                        break
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if restore is not None:
                        restore()
                    step += 1
                    progress((index + step / per_run) / len(spec.learning_rates), step)
            if stopped is not None:
                break
            with clock("step_search", accumulate=True):
                value = score(model) if _finite(model) else -math.inf
            scored += 1
            if math.isfinite(value) and (run_best is None or value > run_best[0]):
                run_best = (value, step)
            if value > best_value:
                best_value, best_rate, best_step = value, rate, step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        candidates.append(
            TrainingCandidate(
                learning_rate=rate,
                steps=step,
                checkpoints=scored,
                best_step=run_best[1] if run_best else None,
                objective=run_best[0] if run_best else None,
                stopped=stopped,
            )
        )
    kept = copy.deepcopy(original)
    if best_state is not None:
        kept.load_state_dict(best_state)
    return LearningRateSearch(kept.eval(), best_rate, best_step, best_value, unedited, per_run, candidates)


def policy_score(policy: AutoStepPolicy) -> Score:
    """The automatic step's objective of a model, on its validation data."""

    @torch.no_grad()
    def score(model: nn.Module) -> float:
        return policy.objective(policy.data, lambda d: predict(model, d, policy.batch_size))

    return score


def every_parameter(model: nn.Module, sample: torch.Tensor) -> Selection:
    """Every parameter of ``model`` (what training without selection moves), its layers as ``full_selection``'s."""
    layers = full_selection(model, sample)
    everything = torch.ones_like(layers.mask)
    return Selection(everything, layers.layers, everything)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def train_edit(job: EditJob, selection: Selection) -> WeightEdit:
    """The job's training method on its model (left untouched): what ``gif.edit`` reports like an influence edit,
    with no solve (``solution.solve`` None: no iterations, no products) and the search in ``training``."""
    spec = job.spec.training
    policy = job.policy
    assert isinstance(policy, AutoStepPolicy), "the spec refuses a fixed step for a training method"
    data = TRAINING_METHODS[job.spec.method](job.plan, job.train_data, job.samples.validation, spec)
    trainable = selection.mask if spec.selected_only else None
    job.report("solve", 0.0)
    search = search_learning_rate(
        job.original,
        data,
        spec,
        policy_score(policy),
        trainable,
        lambda fraction, step: job.report("solve", fraction, step),
        job.clock,
    )
    job.report("step_search", 1.0)
    space = ParameterSpace.of(job.original)
    theta = space.flatten(dict(job.original.named_parameters())).detach()
    delta = space.flatten(dict(search.model.named_parameters())).detach() - theta
    modified = selection.mask.to(theta.device)
    edited = search.learning_rate is not None
    summary = TrainingSummary(
        learning_rate=search.learning_rate,
        step=search.step,
        objective=_finite_or_none(search.objective),
        unedited_objective=_finite_or_none(search.unedited_objective),
        steps_per_candidate=search.steps_per_candidate,
        batch_size=spec.batch_size,
        forget_samples=data.forget_samples,
        retain_samples=data.retain_samples,
        selected_only=spec.selected_only,
        candidates=search.candidates,
    )
    step = StepSummary(
        mode="auto",
        scale=1.0 if edited else 0.0,
        objective=_finite_or_none(search.objective),
        relative_change=float(delta[modified].norm() / theta[modified].norm().clamp_min(1e-12)),
        evaluations=search.evaluations,
        validation="provided" if policy.provided else "carved",
        validation_samples={"affected": len(policy.data.affected), "kept": len(policy.data.kept)},
    )
    return WeightEdit(search.model, selection, InfluenceSolution(delta, modified, None), None, step, summary)
