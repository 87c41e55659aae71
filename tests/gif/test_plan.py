"""A request resolved against the training data: affected and retained examples, new labels, the coefficient c, and
the seeded samples one job draws."""

import pytest
import torch

from gif.plan import RequestPlan
from gif.spec import Relabel, RemoveClass


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
