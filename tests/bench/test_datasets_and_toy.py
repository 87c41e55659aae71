"""The benchmarks' own data and toy: the CIFAR-10 subset as published, and the paper's linear-regression toy (the
claims of method.md about GIF, FIF, PIF and IF on a model where each can be checked exactly)."""

import pytest

from bench.datasets import load_cifar10
from bench.toy import toy_edits


def test_cifar_subset(data_dir):
    train, test = load_cifar10("train", data_dir), load_cifar10("test", data_dir)
    assert train.x.shape == (4000, 3, 32, 32) and test.x.shape == (1000, 3, 32, 32)
    assert test.y[:5].tolist() == [3, 8, 8, 0, 6]
    assert round(float(test.x[0, 0, 0, 0]) * 255) == 158 and round(float(train.x[0, 0, 0, 0]) * 255) == 59


def test_linear_regression_toy():
    """Paper Fig. 2: only w₀ and w₁ may move. GIF lands nearest the retrained optimum in the metric of the
    optimality conditions (‖∇R_retained‖ = ‖H(θ − θ*)‖); each baseline is optimal in its own sense."""
    toy = toy_edits(methods=("gif", "fif", "pif", "if"))
    assert toy.gradient_norm["gif"] < toy.gradient_norm["fif"] < toy.gradient_norm["pif"]
    assert toy.gradient_norm["gif"] < 0.95 * toy.gradient_norm["fif"]
    # every J-restricted edit leaves the frozen weight alone; the full IF reaches the optimum exactly
    for method in ("gif", "fif", "pif"):
        assert toy.edited[method][2] == toy.original[2]
    assert toy.distance["if"] < 1e-10
    # PIF is the Euclidean projection of the exact update onto J: nearest in plain distance
    assert toy.distance["pif"] == pytest.approx(abs(float(toy.retrained[2] - toy.original[2])), rel=1e-9)
    assert toy.distance["pif"] <= min(toy.distance["gif"], toy.distance["fif"])
