"""An edit's job: its inputs resolved once, progress mapped onto the whole job, phases timed."""

import pytest
import torch

from gif.checks import JobMismatchError
from gif.errors import InvalidSpecError
from gif.job import PHASES, PHASES_WITH_RETRAIN, EditJob, JobProgress, PhaseClock
from gif.spec import JobSpec


def test_progress_is_mapped_onto_the_whole_job_and_clamped():
    events = []
    progress = JobProgress(lambda *event: events.append(event), with_retrain=False)
    progress("selection", 0.5)
    progress("solve", 2.0, 7, 0.01)  # a phase never reports past its own end
    progress("evaluation", -1.0)
    assert events == [("selection", 0.05, None, None), ("solve", 0.6, 7, 0.01), ("evaluation", 0.8, None, None)]


def test_the_phases_cover_the_bar_once_in_order_with_or_without_retraining():
    for phases in (PHASES, PHASES_WITH_RETRAIN):
        bounds = list(phases.values())
        assert bounds[0][0] == 0.0 and bounds[-1][1] == 1.0
        assert all(previous[1] == following[0] for previous, following in zip(bounds, bounds[1:]))
    assert list(PHASES_WITH_RETRAIN)[-1] == "retrain"


def test_the_clock_records_each_phase_under_its_result_name():
    clock = PhaseClock(torch.device("cpu"))
    with clock("solve"):
        pass
    with pytest.raises(RuntimeError), clock("step_search"):
        raise RuntimeError("a phase that fails is timed too")
    assert set(clock.seconds) == {"solve_s", "step_search_s"} and all(s >= 0 for s in clock.seconds.values())


def prepare(spec: dict, model, data, **datasets) -> EditJob:
    return EditJob.prepare(
        JobSpec.model_validate(spec),
        model,
        data,
        datasets.get("eval_data"),
        datasets.get("validation_data"),
        None,
        loss_fn=torch.nn.functional.cross_entropy,
        progress=None,
        device=torch.device("cpu"),
    )


def test_a_job_works_on_its_own_copy_of_the_model_with_its_request_resolved(tanh_mlp, digits_double):
    job = prepare({"request": {"kind": "remove_class", "classes": [3]}}, tanh_mlp, digits_double)
    assert job.original is not tanh_mlp and not job.original.training
    assert all(torch.equal(a, b) for a, b in zip(job.original.parameters(), tanh_mlp.parameters()))
    assert bool((digits_double.y[job.plan.affected] == 3).all())
    assert len(job.samples.validation) > 0  # no validation data given: a split is carved from the training data
    assert job.method.uses_curvature and not job.method.full_selection


def test_a_job_that_does_not_fit_is_refused_before_any_work(tanh_mlp, digits_double):
    with pytest.raises(JobMismatchError, match="model has 10 classes"):
        prepare({"request": {"kind": "remove_class", "classes": [12]}}, tanh_mlp, digits_double)


def test_an_exported_program_cannot_be_retrained(tanh_mlp, digits_double):
    program = torch.fx.symbolic_trace(tanh_mlp)
    spec = {"request": {"kind": "remove_class", "classes": [3]}, "retrain": {"epochs": 1}}
    with pytest.raises(InvalidSpecError, match="no initialisation"):
        prepare(spec, program, digits_double)
