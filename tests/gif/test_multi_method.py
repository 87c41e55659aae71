"""One job, several methods (spec methods): each edits the same model on the same samples and validation data, is
measured alike, and the one with the best validation objective (never the eval data) is the job's result and
checkpoint; the others' checkpoints are kept and can be written."""

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from gif.data import Dataset, split_indices
from gif.edit import run
from gif.errors import InvalidSpecError
from gif.io.files import sha256_file
from gif.models.registry import build_model
from gif.report import render_report
from gif.result import EditResult
from gif.spec import JobSpec, RetrainSpec
from gif.training import reinitialised, train

REMOVED = list(range(0, 600, 10))
METHODS = ["gif", "first_order", "fine_tune", "neg_grad_plus"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_model(digits):
    """A float32 MLP (64→32→10) trained for 20 epochs on 80% of the digits; the rest split into validation and
    eval data."""
    train_idx, held_idx = split_indices(len(digits), 0.8, 0)
    train_data, held_out = digits.subset(train_idx), digits.subset(held_idx)
    half = len(held_out) // 2
    validation, eval_data = held_out.subset(torch.arange(half)), held_out.subset(torch.arange(half, len(held_out)))
    model = reinitialised(build_model({"name": "mlp", "config": {"sizes": [64, 32, 10]}}), 0)
    return train(model, train_data, RetrainSpec(epochs=20, batch_size=64, lr=0.05)), train_data, validation, eval_data


def compared(**extra) -> JobSpec:
    return JobSpec.model_validate(
        {
            "request": {"kind": "remove_samples", "indices": REMOVED},
            "methods": METHODS,
            "solver": {"max_iterations": 20},
            "training": {"epochs": 1, "learning_rates": [0.01, 0.1]},
            "evaluation": {"retain_samples": 300},
            "durability": {"int8": False},
            **extra,
        }
    )


@pytest.fixture(scope="module")
def outcome(digits_model):
    model, train_data, validation, eval_data = digits_model
    events: list = []
    done = run(
        compared(), model, train_data, eval_data, lambda *event: events.append(event), validation_data=validation
    )
    return done, events


def test_every_method_is_measured_and_the_best_validation_objective_is_chosen(outcome, digits_model):
    done, events = outcome
    result = EditResult.model_validate_json(done.result.model_dump_json())  # the contract's shape, read back
    comparison = result.comparison
    assert comparison is not None and [c.method for c in comparison] == METHODS
    objectives = [c.objective for c in comparison]
    assert all(o is not None for o in objectives) and len(set(objectives)) == len(METHODS)
    best = max(range(len(METHODS)), key=lambda i: objectives[i])
    assert [c.chosen for c in comparison] == [i == best for i in range(len(METHODS))]
    assert result.method == METHODS[best] and result.chosen_by is not None
    assert result.chosen_by.startswith(f"{METHODS[best]}: the highest validation objective")
    # the chosen entry is the result itself: its metrics, membership, durability, step
    entry = comparison[best]
    assert entry.metrics == result.metrics.after and entry.durability == result.durability
    assert entry.membership is not None and result.membership is not None
    assert entry.membership.forget_vs_heldout_auc == result.membership.forget_vs_heldout_auc
    assert entry.membership.histogram is None and entry.step.scale == result.step.scale
    # the eval data did not decide: another method has the lower loss on it, the chosen one the better objective
    assert any(c.metrics["test_loss"] < entry.metrics["test_loss"] for c in comparison if not c.chosen)
    for c in comparison:  # each one measured on its own: metrics, membership, durability and its own cost
        assert {"forget_accuracy", "test_accuracy", "retain_accuracy"} <= set(c.metrics)
        assert c.membership is not None and c.membership.status != "not_judged" and c.membership.heldout == "eval"
        assert c.durability is not None and c.timings.total_s > 0 and c.timings.evaluation_s > 0
        assert c.timings.total_s < result.timings.total_s
    by_name = {c.method: c for c in comparison}
    assert by_name["gif"].hessian_vector_products > 0
    assert by_name["first_order"].hessian_vector_products == 0 == by_name["fine_tune"].hessian_vector_products
    assert "validation data given" in result.chosen_by
    # progress stays within [0, 1] and each method reports its phases
    assert all(0.0 <= fraction <= 1.0 for _, fraction, *_ in events)
    assert sum(1 for phase, *_ in events if phase == "selection") >= 2 * len(METHODS)


def test_the_validation_objective_decides_never_the_eval_data(outcome, digits_model):
    """The same job with eval data whose labels are all wrong: other metrics, the same objectives and choice."""
    done, _ = outcome
    model, train_data, validation, eval_data = digits_model
    wrong = Dataset(eval_data.x, (eval_data.y + 1) % 10)
    again = run(compared(), model, train_data, wrong, validation_data=validation).result
    first = done.result
    assert again.comparison is not None and first.comparison is not None
    assert [c.objective for c in again.comparison] == [c.objective for c in first.comparison]
    assert again.method == first.method
    assert again.metrics.after["test_accuracy"] != first.metrics.after["test_accuracy"]


def test_every_method_s_checkpoint_is_kept_and_written_on_request(outcome, digits_model, tmp_path):
    done, _ = outcome
    model, *_ = digits_model
    chosen = done.result.method
    assert set(done.others) == set(METHODS) - {chosen} and done.methods[0] == chosen
    original = model.state_dict()
    states = [done.state_dict_of(m) for m in METHODS]
    for state in states:  # each method moved the weights, each its own way
        assert any(not torch.equal(state[k], original[k]) for k in original)
    assert not torch.equal(states[0]["layers.0.weight"], states[2]["layers.0.weight"])
    for method in METHODS:
        path = tmp_path / f"{method}.safetensors"
        written = done.write_checkpoint(path, method)
        assert written.sha256 == sha256_file(path)
        assert all(torch.equal(v, done.state_dict_of(method)[k]) for k, v in load_file(path).items())
    recorded = {c.method: c.checkpoint for c in done.result.comparison or []}
    assert all(
        recorded[m] is not None and recorded[m].sha256 == sha256_file(tmp_path / f"{m}.safetensors") for m in METHODS
    )
    assert done.result.checkpoint == recorded[chosen]
    assert done.result.output_of(None, "safetensors") == recorded[chosen]
    assert done.result.output_of("first_order", "safetensors") == recorded["first_order"]
    assert len(done.result.outputs) == len(METHODS)
    with pytest.raises(InvalidSpecError, match="did not run method pif"):
        done.state_dict_of("pif")
    with pytest.raises(KeyError):
        done.result.output_of("pif", "safetensors")


def test_the_report_compares_the_methods(outcome):
    done, _ = outcome
    page = render_report(done.result, compared().model_dump(mode="json"))
    assert "Methods compared" in page and page.count("<svg") >= 3
    for method in METHODS:
        assert f"<td>{method}" in page


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"methods": ["gif", "gif"]}, "must not repeat"),
        ({"methods": ["gif"]}, "at least 2"),
        ({"methods": ["gif", "fif", "pif", "if", "first_order", "fine_tune", "neg_grad_plus", "gif"]}, "at most 7"),
        ({"methods": ["gif", "first_order"], "method": "fine_tune"}, "not one of methods"),
        ({"methods": ["gif", "first_order"], "step": {"mode": "fixed", "scale": 1.0}}, "leave step auto"),
        ({"methods": ["gif", "sgd"]}, "Input should be"),
    ],
)
def test_the_spec_refuses_what_cannot_be_compared(extra, message):
    with pytest.raises(ValidationError, match=message):
        JobSpec.model_validate({"request": {"kind": "remove_class", "classes": [1]}, **extra})


def test_a_listed_method_or_the_default_method_is_accepted():
    spec = JobSpec.model_validate(
        {"request": {"kind": "remove_class", "classes": [1]}, "methods": ["first_order", "fine_tune"]}
    )
    assert spec.compared == ["first_order", "fine_tune"]
    assert JobSpec.model_validate(spec.model_dump()).compared == ["first_order", "fine_tune"]  # stored and read back
    single = JobSpec.model_validate({"request": {"kind": "remove_class", "classes": [1]}, "method": "fif"})
    assert single.compared == ["fif"]
