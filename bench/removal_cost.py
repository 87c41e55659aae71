"""Engine cost and quality: a GIF class removal against two epochs of training, in one run.

TinyNet on MNIST (8,000 training images), remove class 8, Top-k outputs at 10%. The edit's cost
is selection + solve + step search (evaluation excluded); it is compared with two epochs of the
reference recipe on the same data, timed in the same process (best of 2 after a warm-up run), and
its quality with the model retrained from scratch by the full recipe (15 epochs) without class 8.

Run: python -m bench.removal_cost
"""

from __future__ import annotations

import time
from typing import Any

from bench.report import QUICK, best_of, markdown_table, write_section
from bench.setups import QUICK_JOB, QUICK_SOLVER, SETUPS, edit_seconds, prepare
from gif.edit import run
from gif.metrics import evaluate, evaluation_plan
from gif.plan import RequestPlan
from gif.spec import JobSpec, RemoveClass
from gif.training import train

CONFIGS: dict[str, dict[str, Any]] = {
    "gif, product defaults": {"method": "gif"},
    "gif, tighter": {
        "method": "gif",
        "solver": {"tolerance": 1e-3, "hessian_samples": 1024, "gradient_samples": 512},
    },
    "gif, the contract's example solver": {
        "method": "gif",
        "solver": {
            "kind": "cg",
            "max_iterations": 100,
            "tolerance": 1e-3,
            "hessian_samples": 1024,
            "gradient_samples": 512,
            "damping": 0.0,
        },
    },
    "fif, product defaults (same selection, solver and step search)": {"method": "fif"},
    "pif, product defaults (same selection, solver and step search)": {"method": "pif"},
    "first_order ablation (same selection and step search)": {"method": "first_order"},
}


def described(label: str, spec: JobSpec) -> str:
    """The label with the solver it ran, for the GIF rows (read from the spec, so it cannot go stale)."""
    if not label.startswith("gif"):
        return label
    s = spec.solver
    return (
        f"{label} ({s.kind.upper()} to {s.tolerance:g}, ≤{s.max_iterations} it., "
        f"{s.hessian_samples}/{s.gradient_samples} samples, λ={s.damping:g})"
    )


def main() -> None:
    prepared = prepare(SETUPS["tinynet-mnist"])
    recipe = prepared.setup.recipe
    request = RemoveClass(classes=[8])
    plan = RequestPlan.of(request, prepared.train)

    two_epochs = best_of(
        lambda: train(prepared.fresh(1), prepared.train, recipe.model_copy(update={"epochs": min(2, recipe.epochs)})),
        repeats=2,
    )

    start = time.perf_counter()
    retrained = train(prepared.fresh(1), plan.edited_training_data(prepared.train), recipe)
    retrain_s = time.perf_counter() - start
    eval_plan = evaluation_plan(prepared.train, prepared.test, plan.affected, plan.retained, None, [8], 5000, 0, 512)
    reference = evaluate(retrained, eval_plan)

    rows = [
        [
            "retrained from scratch (full recipe)",
            "-",
            f"{retrain_s:.1f}",
            f"{retrain_s / two_epochs:.2f}",
            reference["forget_test_accuracy"],
            reference["test_accuracy"],
            reference["score"],
            "-",
            "-",
        ]
    ]
    verdicts = []
    for label, fields in CONFIGS.items():
        if QUICK:  # the harness's run: a few iterations on small samples, whatever the row asks
            fields = {**fields, **QUICK_JOB, "solver": {**fields.get("solver", {}), **QUICK_SOLVER}}
        spec = JobSpec.model_validate({"request": request.model_dump(), **fields})
        result = run(spec, prepared.model, prepared.train, prepared.test).result
        after, cost = result.metrics.after, edit_seconds(result)
        met = (
            cost <= two_epochs
            and after["forget_test_accuracy"] <= 0.01
            and after["test_accuracy"] >= reference["test_accuracy"] - 0.01
        )
        label = described(label, spec)
        verdicts.append(
            f"- {label}: {'meets' if met else 'misses'} the targets (cost ≤ 2 epochs, forget-class held-out "
            f"accuracy ≤ 1%, other classes within 1 point of retraining)."
        )
        rows.append(
            [
                label,
                f"{result.solver.iterations} it. / {result.solver.hvp_count} HVPs",
                f"{cost:.2f}",
                f"{cost / two_epochs:.2f}",
                after["forget_test_accuracy"],
                after["test_accuracy"],
                after["score"],
                f"{result.solver.relative_residual:.3f}",
                f"{result.step.scale:.3g}",
            ]
        )
    table = markdown_table(
        [
            "model",
            "solve",
            "seconds",
            "÷ 2 epochs",
            "forget-test acc",
            "test acc (other classes)",
            "score",
            "rel. residual",
            "step",
        ],
        rows,
    )
    body = f"""
TinyNet/MNIST reference model (15 epochs, {prepared.train_seconds:.1f} s to train), remove class 8, Top-k
outputs 10%, step searched on a validation split of the training data. Two epochs of the same recipe on
the same data took **{two_epochs:.2f} s** in this run (best of 2 after a warm-up run); the edit's seconds
are selection + solve + step search (evaluation excluded); retraining runs the whole recipe.

{table}

{chr(10).join(verdicts)}
"""
    write_section(
        "engine-cost", "0. Engine cost and quality (class removal, TinyNet/MNIST)", body, "python -m bench.removal_cost"
    )


if __name__ == "__main__":
    main()
