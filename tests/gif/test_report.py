"""The job report: built from a real edit (an MLP on the digits), it shows what the result holds and nothing it
could execute or fetch."""

from __future__ import annotations

import json
import re
from html import escape

import pytest

from gif.edit import run
from gif.io.datasets import read_dataset
from gif.metrics import predict
from gif.models.checkpoints import load_checkpoint
from gif.report import Axis, render_report, step_chart
from gif.spec import JobSpec

HOSTILE = '<script>alert("x")</script><img src="http://example.com/p.png">'


@pytest.fixture(scope="module")
def edited(demo):
    spec = JobSpec.model_validate({**json.loads(demo["job"].read_text()), "retrain": {"epochs": 2}})
    model = load_checkpoint(json.loads(demo["architecture"].read_text()), demo["model"])
    eval_data = read_dataset(demo["eval"])
    outcome = run(spec, model, read_dataset(demo["train"]), eval_data, device="cpu")
    return spec, model, eval_data, outcome


def test_per_class_accuracy_is_measured_on_the_eval_data(edited):
    _, model, eval_data, outcome = edited
    accuracy = outcome.result.class_accuracy
    assert accuracy is not None and accuracy.data == "eval" and accuracy.retrained is not None
    for name, measured in (("before", model), ("after", outcome.model)):
        predicted = predict(measured.eval(), eval_data.x).argmax(dim=1)
        expected = {str(c): float((predicted[eval_data.y == c] == c).float().mean()) for c in range(10)}
        assert getattr(accuracy, name) == pytest.approx(expected)
    assert accuracy.after["8"] < accuracy.before["8"]  # the removed class


def test_the_step_trace_holds_every_evaluation_and_the_chosen_scale(edited):
    step = edited[3].result.step
    assert step.mode == "auto" and len(step.trace) == step.evaluations > 10
    assert (step.scale, step.objective) in step.trace
    assert step.objective == max(value for _, value in step.trace)


def test_the_page_shows_every_part_of_the_result(edited):
    spec, _, _, outcome = edited
    result = outcome.result
    page = render_report(result, spec.model_dump(mode="json"), [("job", "job_123")])
    headings = (
        "Metrics",
        "Accuracy per class",
        "Solver residual",
        "Step search",
        "Membership",
        "Selected units per layer",
    )
    for heading in headings:
        assert f"<h2>{heading}</h2>" in page
    assert page.count("<svg") == 4  # per-class accuracy, residual, step search, loss distributions
    assert f"{result.metrics.after['score']:.4f}" in page and f"{result.metrics.retrained['score']:.4f}" in page
    assert "job_123" in page and "chosen s = " in page
    for layer in result.selection.layers:
        assert f"<td>{layer.module}</td>" in page
    bars = re.findall(r"<rect [^>]*><title>class (\d+), (\w+): ([0-9.]+)</title>", page)
    assert len(bars) == 30  # 10 classes × before, after, retrained
    assert all(
        float(value) == pytest.approx(getattr(result.class_accuracy, name)[c], abs=1e-4) for c, name, value in bars
    )


def test_the_membership_section_shows_the_verdict_its_aucs_and_the_loss_distributions(edited):
    spec, _, _, outcome = edited
    membership = outcome.result.membership
    assert membership is not None and membership.histogram is not None and membership.before is not None
    page = render_report(outcome.result, spec.model_dump(mode="json"))
    assert escape(membership.verdict) in page
    auc = f"{membership.forget_vs_heldout_auc:.3f} [{membership.interval[0]:.3f}, {membership.interval[1]:.3f}]"
    assert auc in page and f"{membership.before.retain_vs_heldout_auc:.3f}" in page
    curve = r'<path d="(M[^"]*)" fill="none" stroke="[^"]*" stroke-width="2"[^>]*><title>([^<]*)</title>'
    curves = {name: path for path, name in re.findall(curve, page)}
    assert set(curves) == {"removed", "held-out", "retained", "removed, before the edit"}
    assert all(path.count("L") == 2 * len(membership.histogram.removed) + 1 for path in curves.values())


def test_a_result_without_a_membership_verdict_says_why(edited):
    spec, _, _, outcome = edited
    page = render_report(outcome.result.model_copy(update={"membership": None}), spec.model_dump(mode="json"))
    assert "predates the membership verdict" in page and page.count("<svg") == 3
    relabel = outcome.result.model_copy(update={"membership": None, "request": "relabel"})
    assert "no membership verdict" in render_report(relabel, spec.model_dump(mode="json"))


def test_the_page_escapes_what_users_wrote_and_loads_nothing(edited):
    spec, _, _, outcome = edited
    result = outcome.result.model_copy(update={"warnings": [HOSTILE]})
    page = render_report(result, {**spec.model_dump(mode="json"), "note": HOSTILE}, [("model", HOSTILE)])
    assert "<script" not in page and "<img" not in page and "&lt;script&gt;" in page
    external = set(re.findall(r"(?:src|href)=\"([^\"]*)\"", page)) | set(re.findall(r"url\(([^)]*)\)", page))
    assert external == set()
    assert "<h2>Warnings</h2>" in page


def test_a_fixed_step_and_a_first_order_result_say_so(edited):
    spec, _, _, outcome = edited
    result = outcome.result
    first_order = result.model_copy(
        update={
            "solver": result.solver.model_copy(update={"residual_history": [], "kind": "none"}),
            "step": result.step.model_copy(update={"mode": "fixed", "trace": []}),
            "class_accuracy": None,
            "membership": None,
        }
    )
    page = render_report(first_order, spec.model_dump(mode="json"))
    assert "The step was fixed; no search ran." in page and "solves nothing" in page
    assert "predates per-class accuracy" in page and page.count("<svg") == 0


@pytest.mark.parametrize(
    "axis, expected",
    [
        (Axis(0, 1, 0, 100), [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (Axis(1, 2, 0, 100, integer=True), [1, 2]),
        (Axis(1e-3, 10, 0, 100, log=True), [1e-3, 1e-2, 1e-1, 1, 10]),
    ],
)
def test_axis_ticks_are_round_numbers(axis, expected):
    assert axis.ticks() == pytest.approx(expected)
    assert axis(axis.lo) == axis.start and axis(axis.hi) == pytest.approx(axis.end)


def test_scales_with_a_non_finite_objective_are_counted_not_drawn():
    chart = step_chart([(0.0, 0.1), (1.0, 0.5), (10.0, 0.9), (100.0, None), (1000.0, None)], 10.0)
    assert chart.count("<circle") == 3  # two points and the chosen step's ring
    assert "2 scales gave a non-finite objective" in chart and "chosen s = 10" in chart
