"""Section 2 (paper Table 2): GIF against FIF, PIF and IF, VGG-11 on the CIFAR-10 subset, remove "ship".

VGG-11 with BatchNorm trained on the 4,000-image CIFAR-10 subset (the paper: 50,000 images), 1,000
test images; Hessian sample 256, gradient sample 256, 5 CG iterations, damping 0.01 (scaled down for
a 2-core CPU). Each method × modification ratio 10/30/50% (IF always modifies every Conv/Linear
parameter, so it has one row); the model retrained from scratch without "ship" is the reference row.

Run: python -m bench.gif_baselines
"""

from __future__ import annotations

import time

from bench.report import QUICK, markdown_table, write_section
from bench.setups import SETUPS, edit, edit_seconds, prepare
from gif.metrics import evaluate, evaluation_plan
from gif.plan import RequestPlan
from gif.result import EditResult
from gif.spec import RemoveClass
from gif.training import train

SHIP = 8
METHODS = ("gif", "fif", "pif")
RATIOS = (0.1, 0.3, 0.5)


def row(label: str, ratio: str, result: EditResult) -> list:
    a, s = result.metrics.after, result.solver
    per_iteration = s.hvp_seconds / max(s.iterations, 1) if s.iterations else 0.0
    return [
        label,
        ratio,
        f"{result.selection.modification_ratio:.1%}",
        a["test_accuracy"],
        a["forget_test_accuracy"],
        a["score"],
        f"{s.iterations}",
        f"{s.relative_residual:.3f}",
        f"{per_iteration:.2f}",
        f"{edit_seconds(result):.1f}",
    ]


def main() -> None:
    prepared = prepare(SETUPS["vgg11-cifar"])
    request = {"kind": "remove_class", "classes": [SHIP]}
    rows = []
    for method in METHODS[:1] if QUICK else METHODS:
        for ratio in RATIOS[:1] if QUICK else RATIOS:
            result = edit(prepared, request, method=method, selection={"ratio": ratio}).result
            rows.append(row(method, f"{ratio:.0%}", result))
    result = edit(prepared, request, method="if").result
    rows.append(row("if", "all", result))
    before = result.metrics.before

    plan = RequestPlan.of(RemoveClass(classes=[SHIP]), prepared.train)
    start = time.perf_counter()
    retrained = train(prepared.fresh(1), plan.edited_training_data(prepared.train), prepared.setup.recipe)
    retrain_s = time.perf_counter() - start
    reference = evaluate(
        retrained,
        evaluation_plan(prepared.train, prepared.test, plan.affected, plan.retained, None, [SHIP], 1000, 0, 512),
    )
    rows.insert(
        0,
        [
            "original",
            "-",
            "-",
            before["test_accuracy"],
            before["forget_test_accuracy"],
            before["score"],
            "-",
            "-",
            "-",
            "-",
        ],
    )
    rows.append(
        [
            "retrained",
            "-",
            "-",
            reference["test_accuracy"],
            reference["forget_test_accuracy"],
            reference["score"],
            "-",
            "-",
            "-",
            f"{retrain_s:.1f}",
        ]
    )
    body = f"""
VGG-11/CIFAR-10 subset (reference: {prepared.train_seconds:.0f} s of training), remove class 8 ("ship").
Test acc = held-out images of the other nine classes; self acc = held-out ships; score = eq. 32.
Seconds = selection + solve + step search (evaluation excluded); s/iteration = HVP seconds per solver
iteration (two HVPs each).

{
        markdown_table(
            [
                "method",
                "ratio",
                "MR",
                "test acc",
                "self acc",
                "score",
                "iterations",
                "rel. residual",
                "s / iteration",
                "seconds",
            ],
            rows,
        )
    }
"""
    write_section("baselines", "2. GIF against FIF, PIF and IF (paper Table 2)", body, "python -m bench.gif_baselines")


if __name__ == "__main__":
    main()
