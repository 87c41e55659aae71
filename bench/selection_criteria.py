"""Section 1 (paper Table 1): selection criteria × modification ratio, removing class 8 on MNIST.

TinyNet (8,000 training images) and ResNet-18 (3×3 stem; scaled down to 2,000 training images,
3 epochs, a 128-example Hessian sample and 3 CG iterations). GIF with each criterion at 5/10/30/50%;
the step is searched on a validation split of the training data, never the test data.

Run: python -m bench.selection_criteria
"""

from __future__ import annotations

from bench.common import QUICK, SETUPS, edit, markdown_table, prepare, write_section

CRITERIA = ("topk_outputs", "topk_gradients", "threshold", "random")
RATIOS = (0.05, 0.1, 0.3, 0.5)


def table(setup_name: str) -> str:
    prepared = prepare(SETUPS[setup_name])
    rows = []
    before: dict[str, float] = {}
    for criterion in CRITERIA[:2] if QUICK else CRITERIA:
        for ratio in RATIOS[:1] if QUICK else RATIOS:
            outcome = edit(
                prepared,
                {"kind": "remove_class", "classes": [8]},
                selection={"criterion": criterion, "ratio": ratio, "seed": 0},
            )
            r = outcome.result
            before = r.metrics.before
            a = r.metrics.after
            rows.append(
                [
                    criterion,
                    f"{ratio:.0%}",
                    f"{r.selection.modification_ratio:.2%}",
                    a["forget_test_loss"],
                    a["forget_test_accuracy"],
                    a["test_loss"],
                    a["test_accuracy"],
                    a["score"],
                    f"{r.timings.total_s:.1f}",
                ]
            )
    rows.insert(
        0,
        [
            "(original model)",
            "-",
            "-",
            before["forget_test_loss"],
            before["forget_test_accuracy"],
            before["test_loss"],
            before["test_accuracy"],
            before["score"],
            "-",
        ],
    )
    return f"**{setup_name}** (reference trained in {prepared.train_seconds:.0f} s)\n\n" + markdown_table(
        [
            "criterion",
            "ratio",
            "MR",
            "forget-test loss",
            "forget-test acc",
            "test loss",
            "test acc",
            "score",
            "seconds",
        ],
        rows,
    )


def main() -> None:
    tables = "\n\n".join(table(name) for name in (["tinynet-mnist"] if QUICK else ["tinynet-mnist", "resnet18-mnist"]))
    body = f"""
GIF removing class 8. Forget-test = held-out examples of class 8; test = held-out examples of the
other classes (2,000 MNIST images held out of the 10,000); score = paper eq. 32. MR = selected
parameters / Conv+Linear parameters. Threshold: units whose |mean output| exceeds their layer's mean,
sampled at random up to the budget (when fewer pass, MR falls short of the ratio).

{tables}
"""
    write_section("selection", "1. Selection criteria (paper Table 1)", body, "python -m bench.selection_criteria")


if __name__ == "__main__":
    main()
