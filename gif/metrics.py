"""Every metric key of the public contract, computed the same way for before, after and retrained.

Keys (fractions in [0, 1]; a key is absent where it does not apply):
``test_accuracy``, ``test_loss`` (eval data, removed classes excluded), ``forget_test_accuracy``,
``forget_test_loss`` (eval examples of removed classes), ``forget_accuracy`` (the removed training
examples), ``retain_accuracy``, ``score`` (paper eq. 32), ``mia_efficacy``, and for relabel
``relabel_accuracy``, ``attack_success_rate`` (relabelled examples whose label changes, still predicted as
their old label), ``clean_accuracy`` and ``heldout_attack_success_rate`` (held-out triggered inputs whose true
label is not the attack target, predicted as the target).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gif.data import Dataset, sample_indices
from gif.plan import RequestPlan
from gif.spec import JobSpec, Relabel, RemoveClass, SampleCount

METRIC_KEYS = (
    "test_accuracy",
    "test_loss",
    "forget_test_accuracy",
    "forget_test_loss",
    "forget_accuracy",
    "retain_accuracy",
    "score",
    "mia_efficacy",
    "relabel_accuracy",
    "attack_success_rate",
    "clean_accuracy",
    "heldout_attack_success_rate",
)
MIA_MAX_PER_SIDE = 2000


@torch.no_grad()
def predict(model: nn.Module, inputs: Dataset | torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits in eval mode for a dataset's inputs (made as it is fed: ``Dataset.batches``) or for model-ready tensors,
    batch by batch, on the model's device; returned on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    batches = (
        (x for x, _ in inputs.batches(batch_size))
        if isinstance(inputs, Dataset)
        else (inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size))
    )
    return torch.cat([model(x.to(device)).float().cpu() for x in batches])


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")


def mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(F.cross_entropy(logits, labels)) if len(labels) else float("nan")


def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each example's cross-entropy (what a loss-threshold membership attack looks at: ``gif.membership``), in float64:
    in float32 every margin above about 17 gives a loss of exactly 0, and a confident model's examples would tie."""
    return F.cross_entropy(logits.double(), labels, reduction="none")


def removal_score(test_accuracy: float, forget_test_accuracy: float) -> float:
    """Paper eq. 32: the harmonic mean of test accuracy and 1 − self-accuracy."""
    forgotten = 1.0 - forget_test_accuracy
    total = test_accuracy + forgotten
    return 2.0 * test_accuracy * forgotten / total if total > 0 else 0.0


def true_label_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    return logits.softmax(1).gather(1, labels.unsqueeze(1)).squeeze(1).numpy()


def mia_efficacy(
    retain: tuple[torch.Tensor, torch.Tensor],
    unseen: tuple[torch.Tensor, torch.Tensor],
    forget: tuple[torch.Tensor, torch.Tensor],
    seed: int = 0,
) -> float:
    """Share of forget examples that a membership-inference attack calls non-members.

    The attack (SalUn / ℓ1-sparse): an RBF SVM (C=3, gamma='auto') on the softmax confidence of
    the true label, trained with retained examples as members and unseen examples as non-members,
    balanced and capped at ``MIA_MAX_PER_SIDE`` per side. Each argument is (logits, labels).
    """
    from sklearn.svm import SVC

    rng = np.random.default_rng(seed)
    members = true_label_confidence(*retain)
    non_members = true_label_confidence(*unseen)
    n = min(len(members), len(non_members), MIA_MAX_PER_SIDE)
    features = np.concatenate([rng.choice(members, n, replace=False), rng.choice(non_members, n, replace=False)])
    targets = np.concatenate([np.ones(n), np.zeros(n)])
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features.reshape(-1, 1), targets)
    verdict = attack.predict(true_label_confidence(*forget).reshape(-1, 1))
    return float((verdict == 0).mean())


@dataclass(frozen=True)
class EvaluationPlan:
    """The fixed data every model of one job is measured on, so before/after/retrained compare."""

    affected: Dataset  # removed or relabelled training examples, original labels
    new_labels: torch.Tensor | None  # relabel: the labels the affected examples should get
    retain: Dataset  # a seeded sample of the retained training examples
    eval_kept: Dataset | None  # eval data without removed classes
    eval_forgotten: Dataset | None  # eval examples of removed classes (remove_class only)
    removal: bool
    class_level: bool
    batch_size: int = 512
    attack: Dataset | None = None  # held-out triggered inputs, true labels (relabel only)
    attack_target: int | None = None  # the class the backdoor sends them to

    @classmethod
    def for_job(
        cls, spec: JobSpec, train: Dataset, eval_data: Dataset | None, attack: Dataset | None, plan: RequestPlan
    ) -> EvaluationPlan:
        """What a job's metrics measure every model on (the original, the edited, the retrained; the benchmarks'
        baselines too), seeded by the job."""
        return evaluation_plan(
            train,
            eval_data,
            plan.affected,
            plan.retained,
            plan.new_labels,
            spec.request.classes if isinstance(spec.request, RemoveClass) else None,
            spec.evaluation.retain_samples,
            spec.solver.seed,
            spec.evaluation.batch_size,
            attack=attack,
            attack_target=spec.request.attack_target if isinstance(spec.request, Relabel) else None,
        )


@dataclass
class Measurement:
    """One model measured on an evaluation plan: the metric keys, and its accuracy per true class."""

    metrics: dict[str, float]
    by_class: dict[str, float]  # class index (as a string) → accuracy
    by_class_data: Literal["eval", "retain"]  # the held-out eval data when there is some, else the retain sample
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # per example, by the plan's field it was measured on


def metric_columns(
    metrics: Mapping[str, Mapping[str, float] | None],
) -> tuple[dict[str, Mapping[str, float]], list[str]]:
    """A result's metrics as a table: its columns (before, after, retrained where measured) and the metric keys
    any of them has, in ``METRIC_KEYS`` order (what ``gif edit`` prints and the job report shows)."""
    columns = {name: values for name in ("before", "after", "retrained") if (values := metrics.get(name))}
    return columns, [k for k in METRIC_KEYS if any(k in values for values in columns.values())]


def evaluate(model: nn.Module, plan: EvaluationPlan) -> dict[str, float]:
    return measure(model, plan).metrics


def measure(model: nn.Module, plan: EvaluationPlan) -> Measurement:
    """Every metric key, and accuracy per class from the same predictions (each dataset is predicted once)."""

    def logits(d: Dataset) -> torch.Tensor:
        return predict(model, d, plan.batch_size)

    affected_logits = logits(plan.affected)
    retain_logits = logits(plan.retain)
    metrics: dict[str, float] = {"retain_accuracy": accuracy(retain_logits, plan.retain.y)}
    kept = None  # (logits, labels) of the eval data the request keeps
    if plan.eval_kept is not None and len(plan.eval_kept):
        kept = (logits(plan.eval_kept), plan.eval_kept.y)
        metrics["test_accuracy"] = accuracy(*kept)
        metrics["test_loss"] = mean_loss(*kept)
    forgotten = None  # (logits, labels) of the eval examples of removed classes
    if plan.eval_forgotten is not None and len(plan.eval_forgotten):
        forgotten = (logits(plan.eval_forgotten), plan.eval_forgotten.y)
    if plan.removal:
        metrics["forget_accuracy"] = accuracy(affected_logits, plan.affected.y)
        if plan.class_level and forgotten is not None:
            metrics["forget_test_accuracy"] = accuracy(*forgotten)
            metrics["forget_test_loss"] = mean_loss(*forgotten)
            if "test_accuracy" in metrics:
                metrics["score"] = removal_score(metrics["test_accuracy"], metrics["forget_test_accuracy"])
        if kept is not None:
            metrics["mia_efficacy"] = mia_efficacy(
                (retain_logits, plan.retain.y), kept, (affected_logits, plan.affected.y)
            )
    else:
        assert plan.new_labels is not None
        metrics["relabel_accuracy"] = accuracy(affected_logits, plan.new_labels)
        changed = plan.affected.y != plan.new_labels  # an example relabelled to its own label carries no attack
        if changed.any():
            metrics["attack_success_rate"] = accuracy(affected_logits[changed], plan.affected.y[changed])
        if "test_accuracy" in metrics:
            metrics["clean_accuracy"] = metrics["test_accuracy"]
        if plan.attack is not None and plan.attack_target is not None:
            victims = plan.attack.subset(torch.nonzero(plan.attack.y != plan.attack_target).flatten())
            if len(victims):
                target = torch.full_like(victims.y, plan.attack_target)
                metrics["heldout_attack_success_rate"] = accuracy(logits(victims), target)
    losses = {
        "affected": example_losses(affected_logits, plan.affected.y),
        "retain": example_losses(retain_logits, plan.retain.y),
    }
    losses |= {
        name: example_losses(*part)
        for name, part in (("eval_kept", kept), ("eval_forgotten", forgotten))
        if part is not None
    }
    held_out = [part for part in (kept, forgotten) if part is not None]
    if held_out:
        by_class = class_accuracy(torch.cat([p[0] for p in held_out]), torch.cat([p[1] for p in held_out]))
        return Measurement(metrics, by_class, "eval", losses)
    return Measurement(metrics, class_accuracy(retain_logits, plan.retain.y), "retain", losses)


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy per true class (keys are the class indices as strings), for the report's per-class plot."""
    correct = (logits.argmax(dim=1) == labels).float()
    return {str(int(c)): float(correct[labels == c].mean()) for c in torch.unique(labels)}


def evaluation_plan(
    train: Dataset,
    eval_data: Dataset | None,
    affected: torch.Tensor,
    retained: torch.Tensor,
    new_labels: torch.Tensor | None,
    removed_classes: list[int] | None,
    retain_samples: SampleCount,
    seed: int,
    batch_size: int,
    attack: Dataset | None = None,
    attack_target: int | None = None,
) -> EvaluationPlan:
    """The data every model of one job is measured on. ``attack_target`` defaults to the most common old label
    among the relabelled examples whose label changes (the class a backdoor sends triggered inputs to)."""
    eval_kept = eval_forgotten = None
    if eval_data is not None:
        if removed_classes:
            eval_forgotten, eval_kept = eval_data.split(torch.isin(eval_data.y, torch.tensor(removed_classes)))
        else:
            eval_kept = eval_data
    return EvaluationPlan(
        affected=train.subset(affected),
        new_labels=new_labels,
        retain=train.subset(sample_indices(retained, retain_samples, seed)),
        eval_kept=eval_kept,
        eval_forgotten=eval_forgotten,
        removal=new_labels is None,
        class_level=bool(removed_classes),
        batch_size=batch_size,
        attack=attack,
        attack_target=attack_target
        if attack_target is not None
        else _most_common_old_label(train, affected, new_labels),
    )


def _most_common_old_label(train: Dataset, affected: torch.Tensor, new_labels: torch.Tensor | None) -> int | None:
    if new_labels is None:
        return None
    old = train.y[affected]
    changed = old[old != new_labels]
    return int(torch.mode(changed).values) if len(changed) else None
