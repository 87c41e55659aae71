"""Section 9 (issue 24): the Hessian against the Gauss-Newton matrix as the curvature of the GIF system, over seeds.

For each task and seed the reference model is trained with that seed (``bench.setups.prepare``, cached), and the
same job (the product's defaults: LSMR to the relative residual 0.02, the automatic step; the same seeds, so the same
Hessian, gradient and validation samples) runs once with ``solver.curvature`` "hessian" and once with
"gauss_newton", side by side in one process. Reported per curvature: the quality key of the task (score for a
removal; held-out attack success and clean accuracy for the backdoor repair), the residual reached, the
curvature-vector products used, the seconds per product, and the solve's seconds. Per-seed values go to
``bench/curvature_seeds.json`` (written after every seed; ``--first-seed`` adds seeds to the stored ones).

Tasks: TinyNet / MNIST (8k) removing class 3, the TinyNet backdoor repair (5 seeds by default); on request
VGG-11 / CIFAR-10 (4k) removing class 8 and ResNet-18 / MNIST (the benchmarks' reduced setup) removing 8, one seed
each (``--tasks vgg11-remove-ship --seeds 1``).

Run: python -m bench.curvature [--tasks a,b] [--seeds N] [--first-seed K] [--device auto|cpu|cuda|cuda:N]
     (GIF_BENCH_QUICK=1: one seed, small sizes, the removal only; --tasks "": rewrite the section from the JSON)
"""

from __future__ import annotations

import json
import statistics
from typing import Any

import torch

from bench.report import QUICK, beside_results, best_of, markdown_table, write_section
from bench.setups import SEEDS_SUITE, SETUPS, Task, command, prepare, seeds_command_line
from gif.curvature import Curvature, HessianOperator, LossTerm, ModelObjective, cross_entropy_sum
from gif.edit import run
from gif.spec import JobSpec, SolverSpec

CURVATURES: tuple[Curvature, ...] = ("hessian", "gauss_newton")
SEEDS_FILE = beside_results("curvature.quick.json" if QUICK else "curvature_seeds.json")
QUICK_SIZES = {"hessian_samples": 32, "gradient_samples": 32, "max_iterations": 3}


def quality_keys(task: Task) -> tuple[str, ...]:
    return ("heldout_attack_success_rate", "clean_accuracy") if task.backdoor else ("score", "forget_test_accuracy")


def one_seed(task: Task, seed: int, device: torch.device) -> dict[str, Any]:
    """The job with each curvature on one seed: its metrics after the edit, and the solve's residual and cost."""
    prepared = prepare(SETUPS[task.setup], seed)
    attack = prepared.extras.get("triggered_test")
    entry: dict[str, Any] = {}
    for curvature in CURVATURES:
        solver = {**(QUICK_SIZES if QUICK else {}), **task.sizes, "seed": seed, "curvature": curvature}
        job = JobSpec.model_validate({"request": task.request(prepared), "selection": {"seed": seed}, "solver": solver})
        result = run(job, prepared.model, prepared.train, prepared.test, attack_data=attack, device=device).result
        entry[curvature] = {
            "metrics": result.metrics.after,
            "before": result.metrics.before,
            "residual": result.solver.relative_residual,
            "converged": result.solver.converged,
            "products": result.solver.hvp_count,
            "product_s": result.solver.hvp_seconds / max(result.solver.hvp_count, 1),
            "product_method": result.solver.hvp_method,
            "solve_s": result.timings.solve_s,
            "step": result.step.scale,
        }
    return entry


PRODUCT_REPEATS = 5


def product_costs(task: Task, device: torch.device) -> dict[str, Any]:
    """One product with each curvature on the job's Hessian sample (its first examples: cost only), against one
    forward+backward of the same sample: best of ``PRODUCT_REPEATS`` each (the cores are shared)."""
    prepared = prepare(SETUPS[task.setup], 0)
    solver = SolverSpec.model_validate({**(QUICK_SIZES if QUICK else {}), **task.sizes})
    size = len(prepared.train) if solver.hessian_samples == "all" else solver.hessian_samples
    sample = prepared.train.subset(torch.arange(min(size, len(prepared.train))))
    model = prepared.model.to(device)
    objective = ModelObjective(model, [LossTerm(sample, 1 / len(sample))], batch_size=solver.batch_size)

    def forward_backward() -> None:
        for x, y, weight in objective.batches:
            model.zero_grad(set_to_none=True)
            (weight * cross_entropy_sum(model(x), y)).backward()

    seconds = {"forward+backward": best_of(forward_backward, PRODUCT_REPEATS, device)}
    methods = {}
    for curvature in CURVATURES:
        operator = HessianOperator(objective, solver.damping, curvature=curvature)
        v = torch.randn(operator.size, device=operator.device)
        seconds[curvature] = best_of(lambda: operator(v), PRODUCT_REPEATS, device)
        methods[curvature] = operator.method
    model.zero_grad(set_to_none=True)
    return {"samples": len(sample), "seconds": seconds, "methods": methods}


def products_table(costs: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, cost in costs.items():
        fb = cost["seconds"]["forward+backward"]
        rows.append([
            name, cost["samples"], f"{fb * 1000:.0f}",
            *(f"{cost['seconds'][c] / fb:.2f}× ({cost['methods'][c]})" for c in CURVATURES),
        ])  # fmt: skip
    return markdown_table(
        ["task", "Hessian sample", "forward+backward ms", "Hessian product ÷ f+b (auto's choice)",
         "Gauss-Newton product ÷ f+b"],
        rows,
    )  # fmt: skip


def mean_sd(values: list[float], digits: int = 4) -> str:
    spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.{digits}f}{spread}"


def report(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, seeds in results.items():
        task = SEEDS_SUITE[name]
        for curvature in CURVATURES:
            runs = [entry[curvature] for entry in seeds.values()]
            rows.append([
                f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})", curvature,
                " / ".join(mean_sd([r["metrics"][k] for r in runs]) for k in quality_keys(task)),
                mean_sd([r["residual"] for r in runs], 3),
                f"{sum(r['converged'] for r in runs)}/{len(runs)}",
                mean_sd([r["products"] for r in runs], 1),
                f"{statistics.mean(r['product_s'] for r in runs) * 1000:.0f} ({runs[0]['product_method']})",
                mean_sd([r["solve_s"] for r in runs], 1),
            ])  # fmt: skip
    table = markdown_table(
        ["task", "curvature", "score / forget acc. (removal), attack success / clean acc. (backdoor)",
         "residual", "converged", "products", "ms per product (implementation)", "solve s"],
        rows,
    )  # fmt: skip
    return table + "\n\n" + verdict(results)


def verdict(results: dict[str, dict[str, Any]]) -> str:
    """Per task: is the Gauss-Newton edit better, worse or within one standard deviation, and at what cost; and
    the default that follows: Gauss-Newton only where it is better on every task by more than the sd (cost alone
    does not decide: the solve is a fraction of a job, and the product's cost is in the table below)."""
    lines, better_everywhere = [], bool(results)
    for name, seeds in results.items():
        task, key = SEEDS_SUITE[name], quality_keys(SEEDS_SUITE[name])[0]
        sign = -1 if task.backdoor else 1  # attack success: lower is better
        gains = [sign * (e["gauss_newton"]["metrics"][key] - e["hessian"]["metrics"][key]) for e in seeds.values()]
        cost = [e["gauss_newton"]["solve_s"] / e["hessian"]["solve_s"] for e in seeds.values()]
        sd = statistics.stdev(gains) if len(gains) > 1 else float("nan")
        better_everywhere &= statistics.mean(gains) > sd  # False with one seed (nan)
        lines.append(
            f"- {name}: Gauss-Newton − Hessian on {key} (better is +) {statistics.mean(gains):+.4f}"
            + (f" (sd of the paired difference {sd:.4f})" if len(gains) > 1 else "")
            + f"; Gauss-Newton solve time ÷ Hessian's {statistics.mean(cost):.2f}."
        )
    lines.append(
        "\nDefault: "
        + (
            "the evidence favours `solver.curvature: gauss_newton` on every task measured."
            if better_everywhere
            else "`solver.curvature` stays `hessian`: the Gauss-Newton edit is not better by more than one sd on "
            "every task measured. `gauss_newton` remains an option for models whose Hessian products are slow or "
            "indefinite."
        )
    )
    return "\n".join(lines)


def load_results() -> dict[str, dict[str, Any]]:
    return json.loads(SEEDS_FILE.read_text()) if SEEDS_FILE.exists() else {}


def main() -> None:
    args = seeds_command_line(__doc__.splitlines()[0], SEEDS_SUITE)
    if QUICK:
        args.tasks = args.tasks[:1]  # the harness's smoke run: the removal alone
    results = load_results()
    for name in args.tasks:
        for seed in args.seeds:
            results.setdefault(name, {})[str(seed)] = one_seed(SEEDS_SUITE[name], seed, args.device)
            SEEDS_FILE.write_text(json.dumps(results, indent=1))
            print(f"{name} seed {seed}: {json.dumps(results[name][str(seed)], default=str)[:300]}", flush=True)
    costs = results.setdefault("product_cost", {})
    for name in args.tasks:
        costs[name] = product_costs(SEEDS_SUITE[name], args.device)
        SEEDS_FILE.write_text(json.dumps(results, indent=1))
    body = report({name: results[name] for name in SEEDS_SUITE if name in results})
    if costs:
        body += (
            "\n\nThe per-seed cost columns above come from the edits themselves, run one after another (their spread "
            "shows how much the shared cores moved them). The fair cost comparison is one product on the job's Hessian "
            "sample, best of 5, side by side:\n\n" + products_table(costs)
        )
    section = "9. Hessian or Gauss-Newton curvature (issue 24)"
    write_section("curvature", section, body, command("bench.curvature", args.device), args.device)
    print(body)


if __name__ == "__main__":
    main()
