"""Section 8 (issue 11): LSMR against CG on the GIF systems, and the defaults that follow, over seeds.

1. Residual against Hessian-vector products. The GIF system of each task, as a job builds it (default
   sample sizes: Hessian 512, gradient 256; damping 0.01; Top-k outputs 10%), solved by CG (on the normal
   equations, the old solver) and by LSMR, 40 iterations each, fixed step 1 (the step search is not timed
   here). Table: HVPs until the relative normal residual first reaches 0.05 / 0.02 / 0.01; one plot per task
   (``bench/solvers_<task>.png``).
2. Quality over seeds. For each seed the reference model is trained with that seed, and selection, solver and
   retraining use it too: GIF with the new defaults, GIF with the old defaults (CG capped at 5 iterations),
   GIF with CG at 40 iterations, the first-order ablation, and the model retrained from scratch. TinyNet /
   MNIST (8k) class removal (score), and the TinyNet backdoor repair (held-out attack success on triggered
   test digits that are not the target, and clean accuracy). VGG-11 and ResNet-18 are not re-measured here:
   their training and solves take hours on this 2-core CPU (stated in the report).

Run: python -m bench.solvers   (GIF_BENCH_QUICK=1: one seed, small sizes)
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.backdoor import relabel_request
from bench.common import BENCH_DIR, QUICK, SETUPS, Prepared, markdown_table, prepare, pyplot, write_section
from gif.edit import run
from gif.result import EditResult
from gif.spec import JobSpec

SEEDS = (0,) if QUICK else (0, 1, 2, 3, 4)
ITERATIONS = 5 if QUICK else 40
THRESHOLDS = (0.05, 0.02, 0.01)
REMOVED = 3
RETRAIN = {"epochs": 1 if QUICK else 15, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
SIZES = {"hessian_samples": 64, "gradient_samples": 64} if QUICK else {}
VARIANTS: dict[str, dict[str, Any]] = {
    "GIF, new defaults": {},
    "GIF, old defaults (CG, 5 it.)": {"solver": {"kind": "cg", "max_iterations": 5, "tolerance": 1e-3}},
    f"GIF, CG {ITERATIONS} it.": {"solver": {"kind": "cg", "max_iterations": ITERATIONS, "tolerance": 1e-6}},
    "first-order ablation": {"method": "first_order"},
}


def class_removal(_: Prepared) -> dict:
    return {"kind": "remove_class", "classes": [REMOVED]}


TASKS = {
    "tinynet-remove-3": ("tinynet-mnist", class_removal),
    "tinynet-backdoor": ("tinynet-mnist-backdoor", relabel_request),
}


def spec(request: dict, seed: int, **fields) -> JobSpec:
    solver = {**SIZES, "seed": seed, **fields.pop("solver", {})}
    return JobSpec.model_validate({"request": request, "selection": {"seed": seed}, "solver": solver, **fields})


def solve_curve(prepared: Prepared, request: dict, kind: str) -> list[tuple[int, float]]:
    """(HVPs so far, relative residual) after each iteration of a 40-iteration solve."""
    job = spec(
        request,
        0,
        solver={"kind": kind, "max_iterations": ITERATIONS, "tolerance": 1e-9},
        step={"mode": "fixed", "scale": 1.0},
    )
    attack = prepared.extras.get("triggered_test")
    result = run(job, prepared.model, prepared.train, prepared.test, attack_data=attack).result
    return [(1 + 2 * (i + 1), r) for i, r in enumerate(result.solver.residual_history)]  # Aᵀb, then 2 per iteration


def first_reaching(curve: list[tuple[int, float]], threshold: float) -> str:
    return next((str(hvps) for hvps, residual in curve if residual <= threshold), f"> {curve[-1][0]}")


def plot(task: str, curves: dict[str, list[tuple[int, float]]]) -> Path:
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(6, 4))
    for kind, curve in curves.items():
        axes.semilogy([h for h, _ in curve], [r for _, r in curve], label=kind.upper(), marker=".")
    axes.axhline(0.02, color="grey", linestyle="--", linewidth=0.8, label="0.02")
    axes.axvline(30, color="grey", linestyle=":", linewidth=0.8, label="30 HVPs")
    axes.set(xlabel="Hessian-vector products", ylabel="relative normal residual", title=f"GIF system: {task}")
    axes.legend()
    figure.tight_layout()
    path = BENCH_DIR / f"solvers_{task}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def residual_section() -> str:
    rows = []
    for task, (setup, request_of) in TASKS.items():
        prepared = prepare(SETUPS[setup])
        curves = {kind: solve_curve(prepared, request_of(prepared), kind) for kind in ("cg", "lsmr")}
        for kind, curve in curves.items():
            at_30 = min((r for h, r in curve if h <= 30), default=float("nan"))
            rows.append([task, kind.upper(), *(first_reaching(curve, t) for t in THRESHOLDS), f"{at_30:.4f}"])
        print(rows[-2:], flush=True)
        plot(task, curves)
    headers = ["task", "solver", *(f"HVPs to {t:g}" for t in THRESHOLDS), "best residual within 30 HVPs"]
    plots = " ".join(f"![{t}](solvers_{t}.png)" for t in TASKS)
    return markdown_table(headers, rows) + "\n\n" + plots


def metrics_of(task: str, result: EditResult, which: str) -> tuple[float, ...]:
    values = getattr(result.metrics, which)
    if task == "tinynet-backdoor":
        return (values["heldout_attack_success_rate"], values["clean_accuracy"])
    return (values["score"],)


def quality_section() -> str:
    rows = []
    for task, (setup, request_of) in TASKS.items():
        collected: dict[str, list[tuple[float, ...]]] = {name: [] for name in (*VARIANTS, "retrained")}
        residuals: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for seed in SEEDS:
            prepared = prepare(SETUPS[setup], seed)
            attack = prepared.extras.get("triggered_test")
            for index, (name, fields) in enumerate(VARIANTS.items()):
                extra = {"retrain": {**RETRAIN, "seed": seed}} if index == 0 else {}
                job = spec(request_of(prepared), seed, **{**fields, **extra})
                result = run(job, prepared.model, prepared.train, prepared.test, attack_data=attack).result
                collected[name].append(metrics_of(task, result, "after"))
                residuals[name].append(result.solver.relative_residual)
                if index == 0:
                    collected["retrained"].append(metrics_of(task, result, "retrained"))
            print(task, seed, {k: v[-1] for k, v in collected.items()}, flush=True)
        for name, values in collected.items():
            cells = [
                f"{statistics.mean(column):.4f} ± {statistics.stdev(column) if len(column) > 1 else 0.0:.4f}"
                for column in zip(*values)
            ]
            residual = (
                f"{statistics.mean(residuals[name]):.3f}"
                if name in residuals and name != "first-order ablation"
                else "-"
            )
            rows.append([task, name, " / ".join(cells), residual])
    return markdown_table(
        ["task", "variant", "score (removal) or held-out attack / clean acc. (backdoor)", "mean residual"], rows
    )


def main() -> None:
    from gif.spec import SolverSpec

    defaults = SolverSpec()
    body = f"""The new solver defaults: `{defaults.kind}`, tolerance {defaults.tolerance:g}, at most
{defaults.max_iterations} iterations (damping {defaults.damping:g}, Hessian sample {defaults.hessian_samples},
gradient sample {defaults.gradient_samples}).

### Residual against Hessian-vector products (seed 0)

{residual_section()}

Each iteration of either solver costs two HVPs; add one for the right-hand side and two for the final,
recomputed residual. LSMR's normal residual never grows; CG's oscillates (it minimises another norm).

### Quality over seeds {list(SEEDS)} (reference model, selection, solver and retraining seeded alike; auto step)

{quality_section()}
"""
    write_section("solvers", "8. Solvers and defaults (issue 11)", body, "python -m bench.solvers")
    print(body)


if __name__ == "__main__":
    main()
