"""The loss-threshold membership attack: its AUC is the ROC AUC (ties half), its bootstrap interval is seeded, and its
verdict follows the documented rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from gif.membership import (
    MAX_PER_SIDE,
    MIN_PER_SIDE,
    MembershipLosses,
    _weighted_auc,
    assess,
    bootstrap_auc,
    loss_auc,
)


def sklearn_auc(members: torch.Tensor, heldout: torch.Tensor) -> float:
    """The attack as a classifier: members labelled 1, scored by minus their loss."""
    labels = np.r_[np.ones(len(members)), np.zeros(len(heldout))]
    return float(roc_auc_score(labels, -np.r_[members.numpy(), heldout.numpy()]))


@pytest.mark.parametrize(
    "members, heldout",
    [
        (torch.rand(300), torch.rand(200) + 0.2),  # continuous: no ties
        (torch.randint(0, 5, (400,)).float(), torch.randint(0, 7, (150,)).float()),  # many ties
        (torch.zeros(30), torch.zeros(40)),  # every pair tied
        (torch.tensor([0.1, 0.1, 0.5]), torch.tensor([0.1, 0.3])),  # by hand: (0.5 + 1 + 0.5 + 1 + 0 + 0) / 6
    ],
)
def test_the_auc_is_sklearns_roc_auc_with_ties_counted_half(members, heldout):
    assert loss_auc(members, heldout) == pytest.approx(sklearn_auc(members, heldout), abs=1e-12)
    assert bootstrap_auc(members, heldout, resamples=10).auc == pytest.approx(sklearn_auc(members, heldout), abs=1e-12)


def test_lower_loss_than_unseen_data_is_an_auc_above_one_half():
    assert loss_auc(torch.tensor([0.01, 0.02]), torch.tensor([1.0, 2.0])) == 1.0
    assert loss_auc(torch.tensor([1.0, 2.0]), torch.tensor([0.01, 0.02])) == 0.0


def test_a_resample_is_weighted_by_how_often_each_example_was_drawn():
    """The bootstrap's core: counts 2 and 0 are the AUC of the data with that example twice and the other left out."""
    members, heldout = torch.randint(0, 6, (8,)).double(), torch.randint(0, 6, (5,)).double()
    member_counts, heldout_counts = torch.tensor([2, 0, 1, 1, 3, 0, 1, 0]), torch.tensor([0, 1, 3, 1, 0])
    order = heldout.argsort()
    weighted = _weighted_auc(
        members.numpy(), heldout[order].numpy(), member_counts.numpy()[None], heldout_counts[order].numpy()[None]
    )
    repeated = loss_auc(members.repeat_interleave(member_counts), heldout.repeat_interleave(heldout_counts))
    assert float(weighted[0]) == pytest.approx(repeated, abs=1e-12)


def test_the_bootstrap_interval_holds_the_estimate_and_is_seeded():
    members, heldout = torch.randn(500), torch.randn(700) + 0.4
    estimate = bootstrap_auc(members, heldout, seed=3)
    assert estimate.low < estimate.auc < estimate.high
    assert 0.02 < estimate.high - estimate.low < 0.15  # about ±1.96 standard errors (≈ 0.017 here)
    assert bootstrap_auc(members, heldout, seed=3) == estimate
    assert bootstrap_auc(members, heldout, seed=4) != estimate
    narrower = bootstrap_auc(members.repeat(4), heldout.repeat(4), seed=3)
    assert narrower.high - narrower.low < 0.7 * (estimate.high - estimate.low)


def losses(removed, heldout, retained, retained_heldout=None) -> MembershipLosses:
    return MembershipLosses(removed, heldout, retained, heldout if retained_heldout is None else retained_heldout)


def test_the_verdict_follows_the_interval():
    torch.manual_seed(0)
    unseen, learned = torch.rand(800) + 0.5, torch.rand(800) * 0.6  # learned: mostly lower loss than unseen
    before = losses(learned[:300], unseen, learned)
    still = assess(before, before, "eval", seed=0, class_level=False)
    assert still.status == "still_learned" and still.interval[0] > 0.55
    assert still.verdict.startswith("removed examples remain distinguishable from unseen data: AUC 0.")
    assert "still look learned" in still.verdict and still.heldout == "eval"
    assert still.samples == {"removed": 300, "heldout": 800, "retained": 800, "retain_heldout": 800}
    assert still.before is not None and still.before.forget_vs_heldout_auc == still.forget_vs_heldout_auc

    forgotten = assess(before, losses(torch.rand(300) + 0.5, unseen, learned), "eval", seed=0, class_level=False)
    assert forgotten.status == "not_distinguishable" and forgotten.interval[0] < 0.5 < forgotten.interval[1]
    assert "not distinguishable" in forgotten.verdict and f"before the edit {still.forget_vs_heldout_auc:.2f}" in (
        forgotten.verdict
    )
    assert forgotten.retain_vs_heldout_auc > 0.9 and "weak evidence" not in forgotten.verdict

    marked = assess(before, losses(torch.rand(300) + 1.2, unseen, learned), "eval", seed=0, class_level=False)
    assert marked.status == "over_forgotten" and marked.interval[1] < 0.45 and "higher loss" in marked.verdict


def test_a_model_that_tells_no_training_data_apart_makes_weak_evidence():
    unseen = torch.rand(500)
    result = assess(*(losses(torch.rand(100), unseen, torch.rand(500)),) * 2, "validation", seed=0, class_level=False)
    assert result.status == "not_distinguishable" and "weak evidence" in result.verdict


def test_too_few_examples_are_not_judged_and_large_sets_are_capped():
    few = losses(torch.rand(MIN_PER_SIDE - 1), torch.rand(100), torch.rand(100))
    result = assess(few, few, "eval", seed=0, class_level=True)
    assert result.status == "not_judged" and result.forget_vs_heldout_auc is None and result.histogram is None
    assert "unseen examples of the removed classes" in result.verdict

    many = losses(torch.rand(3 * MAX_PER_SIDE), torch.rand(MAX_PER_SIDE + 1), torch.rand(50))
    result = assess(many, many, "eval", seed=0, class_level=False)
    assert result.samples == {"removed": MAX_PER_SIDE, "heldout": MAX_PER_SIDE, "retained": 50, "retain_heldout": 2000}


def test_the_histogram_counts_every_example_and_overflowed_outputs_as_the_highest_loss():
    removed = torch.cat([torch.rand(40) * 1e-3, torch.tensor([float("nan"), 0.0])])
    result = assess(*(losses(removed, torch.rand(60) + 0.5, torch.rand(30)),) * 2, "eval", seed=0, class_level=False)
    histogram = result.histogram
    assert histogram is not None and len(histogram.edges) == len(histogram.removed) + 1
    assert [sum(histogram.removed), sum(histogram.heldout), sum(histogram.retained)] == [42, 60, 30]
    assert histogram.removed == histogram.removed_before and histogram.removed[-1] >= 1  # the NaN, as the highest
    assert histogram.edges == sorted(histogram.edges) and histogram.edges[0] == pytest.approx(1e-6)
