"""A request resolved against the training data: affected and retained examples, new labels, the coefficient c, and
the seeded samples one job draws."""

import pytest
import torch

from gif.data import Dataset
from gif.plan import RequestPlan, Samples, gradient_pool
from gif.spec import JobSpec, Relabel, RemoveClass, RemoveSamples


def test_coefficients_follow_the_documented_convention(digits):
    n = len(digits)
    removal = RequestPlan.of(RemoveClass(classes=[0, 1]), digits)
    m = len(removal.affected)
    assert removal.coefficient == pytest.approx(m / (n - m))
    relabel = RequestPlan.of(Relabel(indices=[5, 2, 9], labels=[1, 2, 3]), digits)
    assert relabel.coefficient == pytest.approx(3 / n)
    assert relabel.affected.tolist() == [2, 5, 9] and relabel.new_labels.tolist() == [2, 1, 3]
    terms = relabel.gradient_terms(digits, torch.tensor([5, 9]))
    assert terms[0].weight == -terms[1].weight > 0
    assert terms[0].data.y.tolist() == digits.y[[5, 9]].tolist() and terms[1].data.y.tolist() == [1, 3]


def test_removing_samples_affects_exactly_them_and_retrains_on_the_rest():
    data = Dataset(torch.arange(10.0).unsqueeze(1), torch.arange(10) % 2)
    plan = RequestPlan.of(RemoveSamples(indices=[7, 2, 4]), data)
    assert plan.affected.tolist() == [2, 4, 7] and plan.retained.tolist() == [0, 1, 3, 5, 6, 8, 9]
    assert plan.new_labels is None and not plan.class_level and plan.coefficient == pytest.approx(3 / 7)
    assert plan.edited_training_data(data).x.flatten().tolist() == [0, 1, 3, 5, 6, 8, 9]
    relabel = RequestPlan.of(Relabel(indices=[3, 1], labels=[0, 0]), data)
    edited = relabel.edited_training_data(data)
    assert len(edited) == 10 and edited.y.tolist() == [0, 0, 0, 0, 0, 1, 0, 1, 0, 1]  # all of it, relabelled
    assert relabel.retained.tolist() == [0, 2, 4, 5, 6, 7, 8, 9]


def test_ids_name_the_same_examples_as_indices_and_train_size_counts_the_whole_training_set():
    data = Dataset(torch.arange(10.0).unsqueeze(1), torch.arange(10) % 2, tuple(f"img{i}.png" for i in range(10)))
    by_id = RequestPlan.of(RemoveSamples(ids=["img7.png", "img2.png"]), data)
    assert torch.equal(by_id.affected, RequestPlan.of(RemoveSamples(indices=[7, 2]), data).affected)
    relabel = RequestPlan.of(Relabel(ids=["img3.png", "img1.png"], labels=[1, 0]), data)
    assert relabel.affected.tolist() == [1, 3] and relabel.new_labels.tolist() == [0, 1]
    # a sample of a 1,000-example training set that holds the two removed examples: c = 2 / 998, not 2 / 8
    assert by_id.coefficient == pytest.approx(2 / 8)
    assert RequestPlan.of(RemoveSamples(ids=["img7.png", "img2.png"]), data, 1000).coefficient == pytest.approx(2 / 998)
    assert RequestPlan.of(Relabel(indices=[1, 3], labels=[1, 0]), data, 1000).coefficient == pytest.approx(2 / 1000)
    whole_class = RequestPlan.of(RemoveClass(classes=[1]), data, 40)
    assert whole_class.coefficient == pytest.approx(5 / 35)


def draw(request: dict, step: dict, n: int = 200, carve: bool = True, **solver) -> tuple[RequestPlan, Samples]:
    data = Dataset(torch.zeros(n, 1), torch.arange(n) % 4)
    spec = JobSpec.model_validate({"request": request, "step": step, "solver": solver})
    plan = RequestPlan.of(spec.request, data)
    return plan, Samples.draw(spec, plan, n, carve_validation=carve)


def test_the_samples_come_from_their_pools_and_a_class_removal_learns_outside_the_carved_split():
    plan, samples = draw({"kind": "remove_class", "classes": [1]}, {"mode": "auto", "validation_fraction": 0.2})
    assert len(samples.validation) == 40
    assert len(samples.hessian) == 150 and set(samples.hessian.tolist()) <= set(plan.retained.tolist())
    held_out = set(samples.validation.tolist())
    assert set(samples.gradient.tolist()) == set(plan.affected.tolist()) - held_out  # 256 > what is left: all of it
    _, few = draw({"kind": "remove_class", "classes": [1]}, {"mode": "auto"}, hessian_samples=20, gradient_samples=5)
    assert len(few.hessian) == 20 and len(few.gradient) == 5


def test_a_fixed_step_or_given_validation_data_carves_nothing_and_sample_removals_learn_from_every_sample():
    _, fixed = draw({"kind": "remove_class", "classes": [1]}, {"mode": "fixed", "scale": 1.0})
    _, given = draw({"kind": "remove_class", "classes": [1]}, {"mode": "auto"}, carve=False)
    assert len(fixed.validation) == len(given.validation) == 0 and len(fixed.gradient) == 50
    plan, samples = draw({"kind": "remove_samples", "indices": list(range(0, 200, 5))}, {"mode": "auto"})
    assert len(samples.validation) == 20 and torch.equal(samples.gradient, plan.affected)


def test_a_class_inside_the_carved_split_entirely_still_has_examples_to_learn_from():
    plan = RequestPlan.of(RemoveClass(classes=[1]), Dataset(torch.zeros(8, 1), torch.tensor([0, 1, 0, 1, 0, 0, 0, 0])))
    assert gradient_pool(plan, torch.tensor([1, 3, 4])).tolist() == [1, 3]
    assert gradient_pool(plan, torch.tensor([3, 4])).tolist() == [1]


def test_the_samples_depend_on_the_seed_only():
    """The validation split, the Hessian sample and the gradient sample come from CPU generators seeded by the spec:
    the same on any device, whatever torch's global random state."""
    data = Dataset(torch.zeros(200, 2), torch.arange(200) % 4)
    drawn = []
    for global_seed, solver_seed in ((1, 7), (2, 7), (1, 8)):
        spec = JobSpec.model_validate(
            {
                "request": {"kind": "remove_class", "classes": [1]},
                "solver": {"hessian_samples": 30, "gradient_samples": 10, "seed": solver_seed},
            }
        )
        torch.manual_seed(global_seed)
        drawn.append(Samples.draw(spec, RequestPlan.of(spec.request, data), len(data), carve_validation=True))
    first, same, other_seed = drawn
    for field in ("validation", "hessian", "gradient"):
        assert len(getattr(first, field)) > 0
        assert torch.equal(getattr(first, field), getattr(same, field))
        assert not torch.equal(getattr(first, field), getattr(other_seed, field))
