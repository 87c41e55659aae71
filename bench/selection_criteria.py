"""Section 1 (paper Table 1): selection criteria × modification ratio, removing class 8 on MNIST.

TinyNet (8,000 training images) and ResNet-18 (3×3 stem; scaled down to 2,000 training images,
3 epochs, a 128-example Hessian sample and 3 CG iterations). GIF with each criterion at 5/10/30/50%;
the step is searched on a validation split of the training data, never the test data.

Run: python -m bench.selection_criteria
"""

from __future__ import annotations

from bench.report import QUICK, beside_results, markdown_table, pyplot, write_section
from bench.setups import SETUPS, edit, prepare

CRITERIA = ("topk_outputs", "topk_gradients", "threshold", "random")
RATIOS = (0.05, 0.1, 0.3, 0.5)


def table(setup_name: str) -> str:
    prepared = prepare(SETUPS[setup_name])
    rows = []
    before: dict[str, float] = {}
    scores: dict[str, list[tuple[float, float]]] = {}  # criterion → (MR, score) per ratio
    trace: list = []
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
            scores.setdefault(criterion, []).append((r.selection.modification_ratio, a["score"]))
            if (criterion, ratio) == ("topk_outputs", 0.1):
                trace, chosen = r.step.trace, r.step.scale
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
    plots = plot_scores(setup_name, scores, before["score"])
    if trace:
        plots += " " + plot_step_search(setup_name, trace, chosen)
    return f"**{setup_name}** (reference trained in {prepared.train_seconds:.0f} s)\n\n{plots}\n\n" + markdown_table(
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


def plot_scores(setup_name: str, scores: dict[str, list[tuple[float, float]]], original: float) -> str:
    """Score against the modification ratio, one line per criterion (paper Table 1 as a picture)."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for criterion, points in scores.items():
        axes.plot([100 * mr for mr, _ in points], [s for _, s in points], marker="o", label=criterion)
    axes.axhline(original, color="grey", linestyle=":", linewidth=0.8, label="original model")
    axes.set(xlabel="modification ratio MR (%)", ylabel="score (eq. 32)", title=f"Selection criteria: {setup_name}")
    axes.legend()
    figure.tight_layout()
    name = f"selection_{setup_name}.png"
    figure.savefig(beside_results(name), dpi=110)  # beside the results they illustrate
    plt.close(figure)
    return f"![score against MR, {setup_name}]({name})"


def plot_step_search(setup_name: str, trace: list, chosen: float) -> str:
    """The automatic step's objective against the scale for the top-k outputs, 10% edit, the chosen scale marked."""
    plt = pyplot()
    points = sorted((s, v) for s, v in trace if s > 0 and v is not None)
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.semilogx([s for s, _ in points], [v for _, v in points], marker=".", color="tab:blue")
    best = [v for s, v in points if s == chosen]
    if best:
        axes.plot(
            [chosen], best, marker="o", markersize=12, fillstyle="none", color="tab:red", label=f"chosen {chosen:.3g}"
        )
        axes.legend()
    axes.set(
        xlabel="step scale s", ylabel="objective on validation data", title=f"Step search: {setup_name}, top-k 10%"
    )
    figure.tight_layout()
    name = f"step_search_{setup_name}.png"
    figure.savefig(beside_results(name), dpi=110)  # beside the results they illustrate
    plt.close(figure)
    return f"![step search, {setup_name}]({name})"


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
