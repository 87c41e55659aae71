"""One edit's inputs resolved once (``EditJob``), what its weight phases produce (``WeightEdit``), and how it
reports: progress mapped onto the whole job, and each phase's wall time."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from gif import devices
from gif.checks import check_inputs
from gif.curvature import HessianOperator, LossFn
from gif.data import Dataset
from gif.devices import synchronize
from gif.errors import InvalidSpecError
from gif.influence import METHODS, InfluenceSolution, Method
from gif.plan import RequestPlan, Samples
from gif.result import StepSummary, TrainingSummary
from gif.selection import Selection
from gif.spec import TRAINING_METHODS, JobSpec
from gif.step import StepPolicy, step_policy

# Share of the progress bar each phase covers (retraining, when asked for, takes the last part).
PHASES = {"selection": (0.0, 0.1), "solve": (0.1, 0.6), "step_search": (0.6, 0.8), "evaluation": (0.8, 1.0)}
PHASES_WITH_RETRAIN = {**{k: (a * 0.5, b * 0.5) for k, (a, b) in PHASES.items()}, "retrain": (0.5, 1.0)}


class ProgressSink(Protocol):
    """Receives progress; raising ``EditCancelled`` (or any error) from it stops the edit."""

    def __call__(
        self, phase: str, fraction: float, iteration: int | None = None, relative_residual: float | None = None
    ) -> None: ...


def _ignore_progress(
    phase: str, fraction: float, iteration: int | None = None, relative_residual: float | None = None
) -> None:
    return None


class JobProgress:
    """Maps phase-local fractions onto the whole job and forwards them to the sink."""

    def __init__(self, sink: ProgressSink, with_retrain: bool):
        self.sink = sink
        self.ranges = PHASES_WITH_RETRAIN if with_retrain else PHASES

    def __call__(self, phase: str, local: float, iteration: int | None = None, residual: float | None = None) -> None:
        start, end = self.ranges[phase]
        self.sink(phase, start + (end - start) * min(max(local, 0.0), 1.0), iteration, residual)


class PhaseClock:
    """Wall-clock seconds per phase, as the result's ``timings`` names them (``<phase>_s``); the device's queued
    kernels are waited for at each end, so that a phase's time is its own (CUDA runs them asynchronously)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str, accumulate: bool = False) -> Iterator[None]:
        """Time one phase; ``accumulate``: add to the phase's time so far (a phase run in several pieces)."""
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            key = f"{phase}_s"
            self.seconds[key] = (self.seconds.get(key, 0.0) if accumulate else 0.0) + time.perf_counter() - start


@dataclass
class WeightEdit:
    """What was selected, solved, stepped and applied on the model's weights; a training method's edit has no solve
    (``solution.solve`` None, ``delta`` the trained change) and says how it trained (``training``)."""

    model: nn.Module
    selection: Selection
    solution: InfluenceSolution
    hessian: HessianOperator | None
    step: StepSummary
    training: TrainingSummary | None = None


@dataclass(frozen=True)
class EditJob:
    """One edit's inputs, resolved once by ``run``: what every phase reads (a retry with a smaller batch is the same
    job with another ``spec``)."""

    spec: JobSpec
    original: nn.Module  # the model to edit, on the device, in eval mode; never changed
    train_data: Dataset
    eval_data: Dataset | None
    validation_data: Dataset | None  # held-out data given for the step search (never the carved split)
    attack_data: Dataset | None
    plan: RequestPlan
    samples: Samples
    policy: StepPolicy
    loss_fn: LossFn
    report: JobProgress
    clock: PhaseClock

    @property
    def trains(self) -> bool:
        """A training method (``gif.training_methods``), not an influence method."""
        return self.spec.method in TRAINING_METHODS

    @property
    def method(self) -> Method:
        """The influence method (``gif.influence.METHODS``); a training method has none."""
        assert not self.trains, f"{self.spec.method} is a training method (gif.training_methods)"
        return METHODS[self.spec.method]

    @classmethod
    def prepare(
        cls,
        spec: JobSpec,
        model: nn.Module,
        train_data: Dataset,
        eval_data: Dataset | None,
        validation_data: Dataset | None,
        attack_data: Dataset | None,
        loss_fn: LossFn,
        progress: ProgressSink | None,
        device: torch.device,
    ) -> EditJob:
        """A copy of ``model`` on ``device``, checked against the job and its data (refused before any work if it does
        not fit); the request resolved, the samples drawn, the step policy chosen."""
        if spec.retrain is not None and isinstance(model, torch.fx.GraphModule):
            raise InvalidSpecError(
                "retrain needs an architecture that can be trained from scratch; an exported program has no "
                "initialisation"
            )
        # devices.tensor_device is looked up at each call: the CPU tests replace it with their CUDA double's
        original = copy.deepcopy(model).to(devices.tensor_device(device)).eval()
        check_inputs(original, spec, train_data, eval_data, validation_data, attack_data)
        plan = RequestPlan.of(spec.request, train_data, spec.train_size)
        samples = Samples.draw(spec, plan, len(train_data), carve_validation=validation_data is None)
        policy = step_policy(spec, plan, train_data, samples.validation, validation_data, original)
        report = JobProgress(progress or _ignore_progress, spec.retrain is not None)
        parts = (original, train_data, eval_data, validation_data, attack_data, plan, samples, policy, loss_fn, report)
        return cls(spec, *parts, PhaseClock(device))
