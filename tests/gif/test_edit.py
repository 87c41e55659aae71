"""gif.edit.run end to end on real MNIST, its guarantees, and its refusals."""

import copy

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from gif.data import Dataset, split_indices
from gif.edit import run
from gif.errors import EditCancelled, InvalidSpecError, NonFiniteError, OutOfMemoryError
from gif.io.files import sha256_file
from gif.models.registry import build_model
from gif.report import render_report
from gif.result import EditResult
from gif.spec import JobSpec, RetrainSpec
from gif.training import reinitialised, train
from tests.support import assert_the_same_edit

FAST_SOLVER = {"max_iterations": 5, "hessian_samples": 512, "gradient_samples": 256}


def job(**fields) -> JobSpec:
    return JobSpec.model_validate({"solver": FAST_SOLVER, **fields})


def test_an_edit_summed_in_other_batches_is_the_same_edit(mnist_tinynet, mnist_split):
    """Batches of another size sum every statistic, gradient and Hessian product in another order, as another device
    does: the edit selects the same units and moves them alike (tests/gpu compares the CPU with CUDA so)."""
    train, _ = mnist_split
    original = {k: v.detach().clone() for k, v in mnist_tinynet.state_dict().items()}
    edits = {
        batch_size: run(
            job(
                request={"kind": "remove_class", "classes": [8]},
                step={"mode": "fixed", "scale": 1.0},
                solver={"hessian_samples": 256, "gradient_samples": 128, "batch_size": batch_size, "max_iterations": 5},
                evaluation={"retain_samples": 256},
            ),
            mnist_tinynet,
            train,
        ).state_dict
        for batch_size in (256, 100)
    }
    assert_the_same_edit(edits, original)


@pytest.fixture(scope="module")
def class_removal(mnist_tinynet, mnist_split):
    train, held_out = mnist_split
    events = []
    outcome = run(
        job(request={"kind": "remove_class", "classes": [8]}),
        mnist_tinynet,
        train,
        held_out,
        lambda *event: events.append(event),
    )
    return outcome, events


def test_removing_a_class_forgets_it_and_keeps_the_rest(class_removal):
    outcome, _ = class_removal
    before, after = outcome.result.metrics.before, outcome.result.metrics.after
    assert before["forget_test_accuracy"] > 0.8
    assert after["forget_test_accuracy"] < 0.05
    assert after["test_accuracy"] >= before["test_accuracy"] - 0.05
    assert after["score"] > 0.9 and after["score"] > before["score"]
    assert after["mia_efficacy"] > before["mia_efficacy"]
    assert outcome.result.step.mode == "auto" and outcome.result.step.scale > 0
    assert outcome.result.step.validation == "carved"
    durability = outcome.result.durability  # on by default: bf16 and int8, one evaluation each
    assert durability.metric == "forget_test_accuracy" and [c.name for c in durability.checks] == ["bf16", "int8"]
    assert durability.before == before["forget_test_accuracy"] and durability.after == after["forget_test_accuracy"]
    assert all(0.0 <= c.value <= 1.0 and c.recovered is not None for c in durability.checks)
    assert (durability.verdict in outcome.result.warnings) != durability.holds


def test_a_class_removal_that_worked_leaves_the_class_indistinguishable_from_unseen_data(class_removal, mnist_split):
    """The membership attack compares the removed training 8s with unseen 8s of the eval data: after the class is gone
    neither looks learned, and the result says so without a warning."""
    result = class_removal[0].result
    train, held_out = mnist_split
    membership = result.membership
    assert membership is not None and membership.status == "not_distinguishable" and membership.heldout == "eval"
    assert membership.interval[0] <= 0.55 and abs(membership.forget_vs_heldout_auc - 0.5) < 0.1
    assert membership.verdict.startswith("removed examples are not distinguishable from unseen data: AUC 0.")
    assert membership.verdict not in result.warnings
    assert membership.samples["removed"] == int((train.y == 8).sum())
    assert membership.samples["heldout"] == int((held_out.y == 8).sum())
    assert membership.before is not None and membership.histogram is not None


def test_every_parameter_outside_the_selection_is_bit_identical(class_removal, mnist_tinynet):
    outcome, _ = class_removal
    original = mnist_tinynet.state_dict()
    changed = 0
    for name, value in outcome.state_dict.items():
        differs = value != original[name]
        changed += int(differs.sum())
    selected = outcome.result.selection.num_selected
    assert 0 < changed <= selected
    assert abs(outcome.result.selection.modification_ratio - 0.1) <= 0.01


def test_progress_reports_phases_in_order_and_ends_at_one(class_removal):
    _, events = class_removal
    phases = [e[0] for e in events]
    assert phases[0] == "selection" and phases[-1] == "evaluation"
    order = ["selection", "solve", "step_search", "evaluation"]
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == order
    fractions = [e[1] for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    solve_events = [e for e in events if e[0] == "solve" and e[2] is not None]
    assert solve_events and all(e[3] is not None for e in solve_events)


def test_result_has_the_contract_shape(class_removal):
    result = class_removal[0].result
    assert set(result.solver.model_dump()) >= {
        "kind",
        "iterations",
        "hvp_count",
        "relative_residual",
        "converged",
        "scale",
    }
    assert set(result.timings.model_dump()) >= {
        "selection_s",
        "solve_s",
        "step_search_s",
        "evaluation_s",
        "total_s",
        "retrain_s",
    }
    assert result.metrics.retrained is None
    assert result.solver.hvp_count >= 2 * result.solver.iterations
    assert result.solver.hvp_method in result.solver.hvp_trial_seconds


def test_the_result_names_the_device_and_its_peak_memory(class_removal):
    device = class_removal[0].result.device
    assert device.type == "cpu" and device.name
    assert 0 < device.peak_memory_bytes <= device.total_memory_bytes


@pytest.mark.parametrize(
    ("curvature", "uncached_product"), [("hessian", "double_backward"), ("gauss_newton", "jvp_vjp")]
)
def test_out_of_memory_is_retried_once_with_half_the_batch_and_no_cache(
    mnist_tinynet, mnist_split, monkeypatch, curvature, uncached_product
):
    """CUDA's out-of-memory cannot happen on the CPU, so the products raise it while the batch is the default's. The
    retry runs the curvature's own product without a graph cache (the Hessian's double backward is no Gauss-Newton
    product: a Gauss-Newton job's retry once failed on it)."""
    from gif.curvature import HessianOperator

    product = HessianOperator.__call__
    seen = []

    def oom_at_full_batch(self, v):
        seen.append((self.objective.batches[0][0].shape[0], self.method))
        if seen[-1][0] == 256:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return product(self, v)

    monkeypatch.setattr(HessianOperator, "__call__", oom_at_full_batch)
    train, held_out = mnist_split
    spec = job(request={"kind": "remove_class", "classes": [8]}, solver={**FAST_SOLVER, "curvature": curvature})
    outcome = run(spec, mnist_tinynet, train, held_out)
    assert seen[0][0] == 256 and set(seen[1:]) == {(128, uncached_product)}
    assert any("out of memory" in w and "batch_size 128" in w for w in outcome.result.warnings)
    assert outcome.result.solver.hvp_method == uncached_product


def test_out_of_memory_twice_names_what_to_lower(mnist_tinynet, mnist_split, monkeypatch):
    from gif.curvature import HessianOperator

    monkeypatch.setattr(HessianOperator, "__call__", lambda self, v: (_ for _ in ()).throw(torch.OutOfMemoryError("x")))
    train, held_out = mnist_split
    with pytest.raises(OutOfMemoryError, match="lower solver.batch_size"):
        run(job(request={"kind": "remove_class", "classes": [8]}), mnist_tinynet, train, held_out)


def test_a_fixed_step_is_applied_exactly(mnist_tinynet, mnist_split):
    train, _ = mnist_split
    spec = job(
        request={"kind": "remove_class", "classes": [1]},
        step={"mode": "fixed", "scale": 2.0},
        method="fif",
        durability={"bf16": False, "int8": False},
    )
    one = run(
        job(**{**spec.model_dump(exclude_none=True), "step": {"mode": "fixed", "scale": 1.0}}), mnist_tinynet, train
    )
    two = run(spec, mnist_tinynet, train)
    original = mnist_tinynet.state_dict()
    for name in original:
        d1 = one.state_dict[name] - original[name]
        d2 = two.state_dict[name] - original[name]
        assert torch.allclose(d2, 2 * d1, rtol=1e-4, atol=1e-6), name
    assert one.result.durability is None  # every check off


@pytest.fixture(scope="module")
def backdoored(mnist_split):
    """TinyNet trained on MNIST with 10% of the images carrying the paper's checkerboard trigger, labelled 4."""
    from bench.datasets import poison
    from gif.models.registry import build_model
    from gif.spec import RetrainSpec
    from gif.training import reinitialised, train

    clean_train, held_out = mnist_split
    poisoned, indices = poison(clean_train, 0.1, target=4, seed=0)
    model = reinitialised(build_model({"name": "tinynet", "config": {}}), 0)
    train(model, poisoned, RetrainSpec(epochs=3, batch_size=64, lr=0.05))
    return model, poisoned, indices, clean_train.y[indices], held_out


def test_relabel_repairs_a_backdoor(backdoored):
    from bench.datasets import checkerboard_trigger
    from gif.metrics import predict

    model, poisoned, indices, true_labels, held_out = backdoored
    attack = Dataset(checkerboard_trigger(held_out.x), held_out.y)  # triggered, with their true labels
    spec = job(
        request={"kind": "relabel", "indices": indices.tolist(), "labels": true_labels.tolist()},
        durability={"fine_tune_steps": 30},
    )
    outcome = run(spec, model, poisoned, held_out, attack_data=attack)
    before, after = outcome.result.metrics.before, outcome.result.metrics.after
    # over the relabelled examples whose label changes (true label not 4), as the contract defines it
    changed = true_labels != 4
    still_four = predict(model, poisoned.x[indices[changed]]).argmax(1) == 4
    assert before["attack_success_rate"] == pytest.approx(float(still_four.float().mean()))
    assert before["attack_success_rate"] > 0.9
    assert after["attack_success_rate"] < 0.5 * before["attack_success_rate"]
    # held-out triggered digits that are not 4, sent to 4 (the target defaults to the most common old label)
    victims = held_out.y != 4
    sent = predict(model, attack.x[victims]).argmax(1) == 4
    assert before["heldout_attack_success_rate"] == pytest.approx(float(sent.float().mean()))
    assert before["heldout_attack_success_rate"] > 0.5
    assert after["heldout_attack_success_rate"] < before["heldout_attack_success_rate"]
    assert after["relabel_accuracy"] > before["relabel_accuracy"] + 0.3
    assert after["clean_accuracy"] >= before["clean_accuracy"] - 0.1  # quality vs retraining: see bench/
    assert outcome.result.membership is None  # a relabel removes nothing
    durability = outcome.result.durability  # does the backdoor come back after a cast, int8, clean fine-tuning?
    assert durability.metric == "heldout_attack_success_rate"
    assert [c.name for c in durability.checks] == ["bf16", "int8", "fine_tune (30 steps)"]
    assert all(c.value is not None for c in durability.checks)


@pytest.fixture(scope="module")
def memorised():
    """An MLP that fits 300 examples of four overlapping classes (16 Gaussian features, labels from a noisy linear
    score) perfectly but gets about two thirds of unseen ones right: what it knows of its training data is memorised.
    Returns the model, its training data, held-out validation data and eval data."""
    from gif.models.registry import build_model
    from gif.spec import RetrainSpec
    from gif.training import reinitialised, train

    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 16, generator=generator)

    def draw(n: int) -> Dataset:
        x = torch.randn(n, 16, generator=generator)
        return Dataset(x, (x @ scores.T + 2.0 * torch.randn(n, 4, generator=generator)).argmax(1))

    training, validation, evaluation = draw(300), draw(500), draw(1000)
    model = reinitialised(build_model({"name": "mlp", "config": {"sizes": [16, 128, 4], "activation": "relu"}}), 0)
    train(model, training, RetrainSpec(epochs=100, batch_size=32, lr=0.05, weight_decay=0.0))
    return model, training, validation, evaluation


REMOVED_AT_RANDOM = sorted(torch.randperm(300, generator=torch.Generator().manual_seed(7))[:60].tolist())


def test_on_a_model_that_memorised_removed_samples_still_look_learned_and_a_warning_says_so(memorised):
    """The default edit on a model that memorised its data: its step aims at the loss of a split carved from the
    training data, so the removed examples keep their low loss, and the verdict and the warnings say so."""
    model, training, _, evaluation = memorised
    result = run(
        job(request={"kind": "remove_samples", "indices": REMOVED_AT_RANDOM}), model, training, evaluation
    ).result
    membership = result.membership
    assert result.metrics.before["test_accuracy"] < 0.8 and result.metrics.before["retain_accuracy"] == 1.0
    assert membership is not None and membership.status == "still_learned", membership.verdict
    assert membership.interval[0] > 0.55 and membership.before.interval[0] > 0.55
    assert membership.retain_vs_heldout_auc > 0.6
    assert membership.verdict.startswith("removed examples remain distinguishable from unseen data: AUC 0.")
    assert membership.verdict in result.warnings
    assert membership.samples == {"removed": 60, "heldout": 1000, "retained": 240, "retain_heldout": 1000}


def test_without_eval_data_membership_is_judged_on_the_validation_data(memorised):
    """The original model's AUC is the attack on its own losses: the removed examples against the validation data."""
    from gif.membership import loss_auc
    from gif.metrics import example_losses, predict

    model, training, validation, _ = memorised
    spec = job(request={"kind": "remove_samples", "indices": REMOVED_AT_RANDOM})
    membership = run(spec, model, training, validation_data=validation).result.membership
    assert membership is not None and membership.heldout == "validation" and membership.samples["heldout"] == 500
    removed = training.subset(torch.tensor(REMOVED_AT_RANDOM))
    expected = loss_auc(
        example_losses(predict(model, removed.x), removed.y), example_losses(predict(model, validation.x), validation.y)
    )
    assert membership.before is not None and membership.before.forget_vs_heldout_auc == pytest.approx(expected)


def test_without_held_out_data_membership_is_not_judged_and_a_warning_says_so(tanh_mlp, digits_double):
    spec = job(request={"kind": "remove_samples", "indices": list(range(40))}, step={"mode": "fixed", "scale": 1.0})
    result = run(spec, tanh_mlp, digits_double).result
    assert result.membership is not None and result.membership.status == "not_judged"
    assert result.membership.forget_vs_heldout_auc is None
    assert "could not be judged" in result.membership.verdict and result.membership.verdict in result.warnings


def test_method_if_modifies_every_conv_linear_weight(mnist_tinynet, mnist_split):
    train, _ = mnist_split
    outcome = run(
        job(
            request={"kind": "remove_samples", "indices": list(range(50))},
            method="if",
            step={"mode": "fixed", "scale": 1.0},
        ),
        mnist_tinynet,
        train,
    )
    assert outcome.result.selection.modification_ratio == 1.0
    assert outcome.result.selection.criterion == "all"


def test_first_order_ablation_needs_no_hessian(mnist_tinynet, mnist_split):
    train, held_out = mnist_split
    outcome = run(
        job(request={"kind": "remove_class", "classes": [8]}, method="first_order"), mnist_tinynet, train, held_out
    )
    assert outcome.result.solver.hvp_count == 0 and outcome.result.solver.kind == "none"
    assert outcome.result.metrics.after["forget_test_accuracy"] < 0.5


def test_a_gauss_newton_solve_removes_a_class_too(mnist_tinynet, mnist_split):
    """The same class removal with the Gauss-Newton matrix as its curvature: the solve, the step and the result
    work alike, and the result says which curvature and product ran."""
    train, held_out = mnist_split
    spec = job(request={"kind": "remove_class", "classes": [8]}, solver={**FAST_SOLVER, "curvature": "gauss_newton"})
    outcome = run(spec, mnist_tinynet, train, held_out)
    solver, after = outcome.result.solver, outcome.result.metrics.after
    assert solver.curvature == "gauss_newton" and solver.hvp_method == "jvp_vjp" and solver.hvp_count > 0
    assert after["forget_test_accuracy"] < 0.05
    assert after["test_accuracy"] >= outcome.result.metrics.before["test_accuracy"] - 0.05


def test_cancellation_from_the_progress_callback(mnist_tinynet, mnist_split):
    train, _ = mnist_split

    def cancel_in_solve(phase, fraction, iteration=None, residual=None):
        if phase == "solve" and iteration == 2:
            raise EditCancelled("cancelled by the user")

    with pytest.raises(EditCancelled):
        run(job(request={"kind": "remove_class", "classes": [8]}), mnist_tinynet, train, progress=cancel_in_solve)


@pytest.mark.parametrize(
    "request_, fragment",
    [
        ({"kind": "remove_class", "classes": [12]}, "out of range"),
        ({"kind": "remove_samples", "indices": [0, 99_999]}, "out of range"),
        ({"kind": "relabel", "indices": [0, 1], "labels": [3, 10]}, "labels out of range"),
    ],
)
def test_requests_that_do_not_fit_the_data_are_refused(mnist_tinynet, mnist_split, request_, fragment):
    train, _ = mnist_split
    with pytest.raises(InvalidSpecError, match=fragment):
        run(job(request=request_), mnist_tinynet, train)


def test_an_empty_forget_set_is_refused(mnist_tinynet, mnist_split):
    train, _ = mnist_split
    without_eights = train.subset(torch.nonzero(train.y != 8).flatten())
    with pytest.raises(InvalidSpecError, match="no training examples"):
        run(job(request={"kind": "remove_class", "classes": [8]}), mnist_tinynet, without_eights)


def test_wrong_input_shape_and_nan_weights_are_refused(mnist_tinynet, mnist_split, digits):
    train, _ = mnist_split
    with pytest.raises(InvalidSpecError, match="cannot take samples"):
        run(job(request={"kind": "remove_class", "classes": [8]}), mnist_tinynet, digits)
    broken = copy.deepcopy(mnist_tinynet)
    with torch.no_grad():
        broken.fc.bias[0] = float("nan")
    with pytest.raises(NonFiniteError):
        run(job(request={"kind": "remove_class", "classes": [8]}), broken, train)


def test_retrain_reports_the_ground_truth_beside_the_edit():
    from gif.demo import demo_model

    _, model, train, held_out = demo_model("digits")
    events = []
    spec = job(
        request={"kind": "remove_class", "classes": [3]}, retrain={"epochs": 5, "batch_size": 64, "lr": 0.05, "seed": 1}
    )
    outcome = run(spec, model, train, held_out, lambda *e: events.append(e))
    metrics, timings = outcome.result.metrics, outcome.result.timings
    assert metrics.retrained is not None and set(metrics.retrained) == set(metrics.after)
    assert metrics.retrained["forget_test_accuracy"] == 0.0  # a model that never saw a class cannot name it
    assert metrics.retrained["test_accuracy"] > 0.8
    assert timings.retrain_s is not None and timings.retrain_s > 0
    assert [e for e in events if e[0] == "retrain"][-1][1] == 1.0


# --- One job, several methods (spec methods): each edits the same model on the same samples and validation data, is
# measured alike, and the one with the best validation objective (never the eval data) is the job's result and
# checkpoint; the others' checkpoints are kept and can be written.

REMOVED = list(range(0, 600, 10))
METHODS = ["gif", "first_order", "fine_tune", "neg_grad_plus"]


@pytest.fixture(scope="module")
def digits_model(digits, one_thread):
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


def test_when_no_method_beats_the_unedited_model_the_choice_says_the_original_is_returned(digits_model):
    model, train_data, validation, eval_data = digits_model
    spec = compared(methods=["fine_tune", "neg_grad_plus"], training={"epochs": 1, "learning_rates": [1e-12]})
    outcome = run(spec, model, train_data, eval_data, validation_data=validation)
    result = outcome.result
    assert result.comparison is not None and all(c.step.scale == 0.0 for c in result.comparison)
    assert result.chosen_by is not None and "kept the unedited model" in result.chosen_by
    assert all(torch.equal(outcome.state_dict[k], v) for k, v in model.state_dict().items())
