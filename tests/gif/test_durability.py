"""Durability checks: int8 weights, a bf16 cast and a fine-tune on retained data only, and the share that comes back."""

import copy

import pytest
import torch
from torch import nn

from gif.data import Dataset
from gif.durability import assess_durability, fine_tuned, forgotten_key, in_bf16, probes_of, with_int8_weights
from gif.metrics import EvaluationPlan, measure
from gif.plan import RequestPlan
from gif.spec import DurabilitySpec, RemoveSamples


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()


def test_int8_weights_take_at_most_255_values_per_unit_and_stay_within_half_a_step():
    model = small_net()
    rounded = with_int8_weights(model)
    for original, new in ((model[0].weight, rounded[0].weight), (model[3].weight, rounded[3].weight)):
        scale = original.abs().flatten(1).amax(dim=1) / 127
        assert all(len(torch.unique(row)) <= 255 for row in new.flatten(1))
        assert ((new - original).abs().flatten(1) <= scale[:, None] / 2 + 1e-7).all()
        assert not torch.equal(new, original)
    assert torch.equal(rounded[3].bias, model[3].bias) and torch.equal(model[0].weight, small_net()[0].weight)


def test_bf16_rounds_weights_and_inputs_to_bfloat16_and_computes_in_float32():
    model, x = small_net(), torch.rand(5, 1, 6, 6)
    cast = in_bf16(model)
    out = cast(x)
    assert out.dtype == torch.float32 and not torch.equal(out, model(x))
    rounded = cast.model[0].weight
    assert torch.equal(rounded, model[0].weight.to(torch.bfloat16).float()) and not torch.equal(
        rounded, model[0].weight
    )
    with torch.no_grad():
        by_hand = cast.model(x.to(torch.bfloat16).float())
    assert torch.equal(out, by_hand)
    torch.testing.assert_close(out, model(x), atol=0.05, rtol=0.05)


def test_the_fine_tune_never_sees_the_removed_examples_and_leaves_the_model_alone():
    x = torch.rand(20, 1, 6, 6)
    x[[3, 7]] = float("nan")  # were the removed examples used, the weights would turn NaN
    data = Dataset(x, torch.arange(20) % 3)
    plan = RequestPlan.of(RemoveSamples(indices=[3, 7]), data)
    model = small_net()
    kept = copy.deepcopy(model.state_dict())
    tuned = fine_tuned(model, plan, data, steps=5, lr=0.1, seed=0)
    assert all(torch.isfinite(p).all() for p in tuned.parameters())
    assert not torch.equal(tuned[3].weight, model[3].weight)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in kept.items())


def test_what_comes_back_is_measured_against_what_the_edit_took_away():
    data = Dataset(torch.rand(30, 1, 6, 6), torch.arange(30) % 3)
    plan = RequestPlan.of(RemoveSamples(indices=list(range(10))), data)
    eval_plan = EvaluationPlan(data.subset(plan.affected), None, data.subset(plan.retained), None, None, True, False)
    original, edited = small_net(), small_net()
    with torch.no_grad():
        edited[3].bias.sub_(torch.nn.functional.one_hot(data.y[:10], 3).float().mean(0) * 100)  # forget them
    before, after = measure(original, eval_plan), measure(edited, eval_plan)
    assert forgotten_key(after.metrics) == "forget_accuracy"
    assert before.metrics["forget_accuracy"] != after.metrics["forget_accuracy"]
    probes = {"unchanged": lambda m: m, "restored": lambda _: original}
    durability = assess_durability(edited, eval_plan, before, after, probes)
    assert [c.recovered for c in durability.checks] == [pytest.approx(0.0), pytest.approx(1.0)]
    assert not durability.holds and durability.verdict.startswith("the edit does not survive restored")
    assert assess_durability(edited, eval_plan, before, after, {"unchanged": lambda m: m}).holds
    assert assess_durability(edited, eval_plan, before, after, {}) is None


def test_the_checks_run_are_the_ones_asked_for():
    data = Dataset(torch.rand(6, 1, 6, 6), torch.arange(6) % 3)
    plan = RequestPlan.of(RemoveSamples(indices=[1]), data)
    assert list(probes_of(DurabilitySpec(), plan, data, 0.01, 0)) == ["bf16", "int8"]
    spec = DurabilitySpec(bf16=False, int8=False, fine_tune_steps=50)
    assert list(probes_of(spec, plan, data, 0.01, 0)) == ["fine_tune (50 steps)"]
