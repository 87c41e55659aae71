"""Does the edit survive what happens to models next? The edited model re-measured after a bf16 cast, after int8
weights, and (on request) after a short fine-tune on retained data only.

Published work finds forgotten content coming back after quantisation and after a little more training (relearning
attacks). Each check measures the request's forgotten quantity on the job's evaluation plan, the same examples the
metrics use: held-out accuracy on a removed class, accuracy on removed samples, or the backdoor's attack success, and
reports how much of what the edit took away comes back: (probe − after) / (before − after).

- ``bf16``: weights, buffers and inputs rounded to bfloat16, computed in float32: what a bf16 cast does to the
  numbers the model holds and sees (accumulation stays float32, as bf16 kernels accumulate). Running in bfloat16
  itself would cost 12× a float32 evaluation on CPUs without bf16 units (TinyNet, 1,000 images: 2.3 s against 0.19).
- ``int8``: every Linear and Conv weight rounded to int8, symmetric, one scale per output unit, then used in float
  (what int8 weight quantisation does to them; activations stay float). torch.ao's dynamic quantisation is deprecated
  and CPU-only, so the rounding is done here, on any device.
- ``fine_tune``: ``steps`` SGD steps (momentum 0.9) on the retained training examples only, at ``lr``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gif.data import Dataset
from gif.metrics import EvaluationPlan, Measurement, measure
from gif.plan import RequestPlan
from gif.result import Durability, DurabilityCheck
from gif.spec import DurabilitySpec

DEFAULT_FINE_TUNE_LR = 0.01  # without a retrain recipe to take the training's learning rate from
RECOVERED_WARNING = 0.25  # a probe that gives back more than this share of the edit's effect is reported
FINE_TUNE_BATCH = 64


def forgotten_key(after: dict[str, float]) -> str | None:
    """The metric that says what the edit took away, most telling first; None when the job measured none."""
    keys = ("heldout_attack_success_rate", "attack_success_rate", "forget_test_accuracy", "forget_accuracy")
    return next((key for key in keys if key in after), None)


class _RoundedInputs(nn.Module):
    """A model whose inputs are rounded to ``dtype`` on the way in (and computed in their own dtype)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x.to(self.dtype).to(x.dtype))
        return out


@torch.no_grad()
def in_bf16(model: nn.Module) -> nn.Module:
    """A copy whose floating-point weights, buffers and inputs are rounded to bfloat16 (computed in float32)."""
    rounded = copy.deepcopy(model)
    for tensor in [*rounded.parameters(), *rounded.buffers()]:
        if tensor.is_floating_point():
            tensor.copy_(tensor.to(torch.bfloat16).to(tensor.dtype))
    return _RoundedInputs(rounded, torch.bfloat16).eval()


@torch.no_grad()
def with_int8_weights(model: nn.Module) -> nn.Module:
    """A copy whose Linear and Conv weights are rounded to int8 (symmetric, per output unit) and used in float."""
    rounded = copy.deepcopy(model)
    for module in rounded.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            weight = module.weight
            scale = weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True).clamp_min(1e-12) / 127
            weight.copy_((weight / scale).round().clamp(-127, 127) * scale)
    return rounded.eval()


def fine_tuned(model: nn.Module, plan: RequestPlan, train: Dataset, steps: int, lr: float, seed: int) -> nn.Module:
    """A copy trained ``steps`` SGD steps on the retained examples only (never the removed or relabelled ones)."""
    tuned = copy.deepcopy(model).train()
    device = next(tuned.parameters()).device
    optimizer = torch.optim.SGD(tuned.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    retained = plan.retained
    for _ in range(steps):
        batch = retained[torch.randint(len(retained), (min(FINE_TUNE_BATCH, len(retained)),), generator=generator)]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(tuned(train.inputs_at(batch).to(device)), train.y[batch].to(device)).backward()
        optimizer.step()
    return tuned.eval()


def assess_durability(
    edited: nn.Module,
    eval_plan: EvaluationPlan,
    before: Measurement,
    after: Measurement,
    probes: dict[str, Callable[[nn.Module], nn.Module]],
) -> Durability | None:
    """Each probe of ``probes`` (name → the edited model transformed) measured on ``eval_plan``; None when the job
    measures nothing forgotten or asks for no check."""
    key = forgotten_key(after.metrics)
    if key is None or not probes:
        return None
    original, edited_value = before.metrics[key], after.metrics[key]
    effect = original - edited_value
    checks = []
    for name, probe in probes.items():
        try:
            value = measure(probe(edited), eval_plan).metrics[key]
        except (RuntimeError, NotImplementedError) as exc:  # e.g. an exported program that cannot change dtype
            checks.append(DurabilityCheck(name=name, error=str(exc).splitlines()[0]))
            continue
        recovered = (value - edited_value) / effect if abs(effect) > 1e-9 else None
        checks.append(DurabilityCheck(name=name, value=value, recovered=recovered))
    returned = [c for c in checks if c.recovered is not None and c.recovered > RECOVERED_WARNING]
    if returned:
        worst = max(returned, key=lambda c: c.recovered or 0.0)
        verdict = (
            f"the edit does not survive {', '.join(c.name for c in returned)}: {key} comes back from "
            f"{edited_value:.3f} to {worst.value:.3f} after {worst.name} ({worst.recovered:.0%} of what the edit "
            f"took away; before the edit {original:.3f})"
        )
    else:
        survived = ", ".join(c.name for c in checks if c.error is None) or "none of the checks (each failed to run)"
        verdict = f"the edit survives {survived}: less than {RECOVERED_WARNING:.0%} of what it took away from {key} "
        verdict += "comes back"
    return Durability(metric=key, before=original, after=edited_value, checks=checks, verdict=verdict,
                      holds=not returned)  # fmt: skip


def probes_of(
    spec: DurabilitySpec, plan: RequestPlan, train: Dataset, lr: float, seed: int
) -> dict[str, Callable[[nn.Module], nn.Module]]:
    """The checks a job asked for, by name, in the order they run."""
    probes: dict[str, Callable[[nn.Module], nn.Module]] = {}
    if spec.bf16:
        probes["bf16"] = in_bf16
    if spec.int8:
        probes["int8"] = with_int8_weights
    if spec.fine_tune_steps:
        steps = spec.fine_tune_steps
        probes[f"fine_tune ({steps} steps)"] = lambda m: fine_tuned(
            m, plan, train, steps, spec.fine_tune_lr or lr, seed
        )
    return probes
