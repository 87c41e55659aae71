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

With ``--compiled`` it measures instead, side by side in one run, the compiled products (``solver.hvp: compiled``)
against the best eager ones for TinyNet and VGG-11: one product ÷ one forward+backward (best of 5, compile time
excluded) and the compile seconds, on freshly initialised weights and random inputs (a product's cost depends on
neither), and whether ``auto`` would try compiling for a default solve.

Run: python -m bench.curvature [--tasks a,b] [--seeds N] [--first-seed K] [--device auto|cpu|cuda|cuda:N]
     (GIF_BENCH_QUICK=1: one seed, small sizes, the removal only; --tasks "": rewrite the section from the JSON)
     python -m bench.curvature --tasks "" --compiled  (the compiled products only)
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from bench.report import (
    QUICK,
    beside_results,
    best_in_turns,
    machine,
    markdown_table,
    mean_std,
    report_file,
    write_section,
)
from bench.setups import (
    SEEDS_SUITE,
    SETUPS,
    Task,
    command,
    measure_task_seeds,
    prepare,
    seeded_spec,
    seeds_command_line,
)
from gif.curvature import (
    COMPILED_SAVING_BOUND,
    TYPICAL_SOLVE_PRODUCTS,
    Curvature,
    HessianOperator,
    LossTerm,
    ModelObjective,
    compile_repaid,
    cross_entropy_sum,
    estimated_compile_seconds,
    forward_operators,
)
from gif.data import Dataset
from gif.edit import run
from gif.models.registry import build_model
from gif.spec import SolverSpec
from gif.training import reinitialised

CURVATURES: tuple[Curvature, ...] = ("hessian", "gauss_newton")
GPU_REPORT = report_file("GPU", quick=False)
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
        job = seeded_spec(task.request(prepared), seed, {**task.sizes, "curvature": curvature}, QUICK_SIZES)
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
            "machine": machine(device),
        }
    return entry


PRODUCT_REPEATS = 5


def product_costs(task: Task, device: torch.device) -> dict[str, Any]:
    """One product with each curvature on the job's Hessian sample (its first examples: cost only), against one
    forward+backward of the same sample: best of ``PRODUCT_REPEATS`` rounds in turns (the cores are shared)."""
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

    operators = {curvature: HessianOperator(objective, solver.damping, curvature=curvature) for curvature in CURVATURES}
    v = torch.randn(objective.space.size, device=next(model.parameters()).device)
    timed: dict[str, Callable[[], Any]] = {"forward+backward": forward_backward}
    timed.update({curvature: partial(op, v) for curvature, op in operators.items()})
    seconds = best_in_turns(timed, PRODUCT_REPEATS, device)
    methods = {curvature: op.method for curvature, op in operators.items()}
    model.zero_grad(set_to_none=True)
    return {"samples": len(sample), "seconds": seconds, "methods": methods, "machine": machine(device)}


def products_table(costs: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, cost in costs.items():
        fb = cost["seconds"]["forward+backward"]
        rows.append([
            name, cost["samples"], f"{fb * 1000:.0f}",
            *(f"{cost['seconds'][c] / fb:.2f}× ({cost['methods'][c]})" for c in CURVATURES),
            cost["machine"].split(",")[0],
        ])  # fmt: skip
    return markdown_table(
        ["task", "Hessian sample", "forward+backward ms", "Hessian product ÷ f+b (auto's choice)",
         "Gauss-Newton product ÷ f+b", "CPU"],
        rows,
    )  # fmt: skip


# (name, architecture, input shape, examples in the product's sample, batch size): TinyNet on the job's default
# 512-example Hessian sample; VGG-11 on 128 CIFAR-sized inputs (its compiled Hessian product takes ~10 s here)
COMPILED_MODELS = [
    ("TinyNet", {"name": "tinynet", "config": {}}, (1, 28, 28), 512, 256),
    ("VGG-11", {"name": "vgg11", "config": {"in_channels": 3}}, (3, 32, 32), 128, 128),
]


def compiled_costs(device: torch.device) -> dict[str, Any]:
    """Per model: one forward+backward, the best eager product and the compiled one of each curvature, timed in
    turns (``PRODUCT_REPEATS`` rounds after a warm-up, best of each: the cores are shared); the compile seconds, the
    estimate ``auto`` makes of them, and whether ``auto`` would try compiling for a default solve."""
    costs: dict[str, Any] = {}
    for name, architecture, shape, samples, batch_size in COMPILED_MODELS:
        torch.manual_seed(0)
        model = reinitialised(build_model(architecture), 0).to(device).eval()
        data = Dataset(torch.rand(samples, *shape), torch.arange(samples) % 10)
        objective = ModelObjective(model, [LossTerm(data, 1 / samples)], batch_size=batch_size)

        def forward_backward() -> None:
            for x, y, weight in objective.batches:
                model.zero_grad(set_to_none=True)
                (weight * cross_entropy_sum(model(x), y)).backward()

        operators: dict[str, HessianOperator] = {}
        for curvature in CURVATURES:  # expected_products=0: auto's eager trial alone
            operators[f"{curvature} eager"] = HessianOperator(objective, curvature=curvature, expected_products=0)
            operators[f"{curvature} compiled"] = HessianOperator(objective, method="compiled", curvature=curvature)
            print(
                f"{name} {curvature}: compiled in {operators[f'{curvature} compiled'].compile_seconds:.0f} s",
                flush=True,
            )
        v = torch.randn(objective.space.size, device=next(model.parameters()).device)
        timed: dict[str, Callable[[], Any]] = {"forward+backward": forward_backward}
        timed.update({label: partial(op, v) for label, op in operators.items()})
        seconds = best_in_turns(timed, PRODUCT_REPEATS, device)
        model.zero_grad(set_to_none=True)
        costs[name] = {
            "samples": samples,
            "seconds": seconds,
            "methods": {label: op.method for label, op in operators.items()},
            "compile_s": {c: operators[f"{c} compiled"].compile_seconds for c in CURVATURES},
            "compile_failure": {c: operators[f"{c} compiled"].compile_failure for c in CURVATURES},
            "forward_operators": forward_operators(objective),
        }
        print(f"{name}: {json.dumps(costs[name], default=str)}", flush=True)
    return costs


def compiled_table(runs: list[dict[str, Any]]) -> str:
    """The latest run's table, and each curvature's compiled ÷ eager ratios over every run (the spread shows the
    noise of the shared cores)."""
    costs, rows = runs[-1], []
    for name, cost in costs.items():
        fb, estimate = cost["seconds"]["forward+backward"], estimated_compile_seconds(cost["forward_operators"])
        for curvature in CURVATURES:
            eager, compiled = cost["seconds"][f"{curvature} eager"], cost["seconds"][f"{curvature} compiled"]
            failure = cost["compile_failure"][curvature]
            rows.append([
                name, cost["samples"], f"{fb * 1000:.0f}", curvature,
                f"{eager / fb:.2f}× ({cost['methods'][f'{curvature} eager']})",
                f"fails ({failure})" if failure else f"{compiled / fb:.2f}×",
                f"{cost['compile_s'][curvature]:.0f}", f"{estimate:.0f}",
                "yes" if compile_repaid(curvature, eager, TYPICAL_SOLVE_PRODUCTS, estimate) else "no",
            ])  # fmt: skip
    table = markdown_table(
        ["model", "sample", "forward+backward ms", "curvature", "best eager product ÷ f+b", "compiled ÷ f+b",
         "compile s", "auto's estimate s", f"auto tries compiling ({TYPICAL_SOLVE_PRODUCTS} products)"],
        rows,
    )  # fmt: skip
    lines = [f"Compiled product ÷ best eager product over {len(runs)} run{'s' if len(runs) > 1 else ''}:"]
    for curvature in CURVATURES:
        ratios: dict[str, list[float]] = {}
        for measured in runs:
            for name, cost in measured.items():
                if not cost["compile_failure"][curvature]:
                    seconds = cost["seconds"]
                    ratios.setdefault(name, []).append(seconds[f"{curvature} compiled"] / seconds[f"{curvature} eager"])
        lowest = min(min(values) for values in ratios.values())
        lines.append(
            f"- {curvature}: "
            + ", ".join(f"{name} {' / '.join(f'{r:.2f}' for r in values)}" for name, values in ratios.items())
            + f"; the most it saved: {max(0.0, 1 - lowest):.0%}, `COMPILED_SAVING_BOUND` "
            f"{COMPILED_SAVING_BOUND[curvature]:.0%} (gif/curvature.py)."
        )
    return table + "\n\n" + "\n".join(lines)


def report(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, seeds in results.items():
        task = SEEDS_SUITE[name]
        for curvature in CURVATURES:
            runs = [entry[curvature] for entry in seeds.values()]
            rows.append([
                f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})", curvature,
                " / ".join(mean_std([r["metrics"][k] for r in runs]) for k in quality_keys(task)),
                mean_std([r["residual"] for r in runs], 3),
                f"{sum(r['converged'] for r in runs)}/{len(runs)}",
                mean_std([r["products"] for r in runs], 1),
                f"{statistics.mean(r['product_s'] for r in runs) * 1000:.0f} ({runs[0]['product_method']})",
                mean_std([r["solve_s"] for r in runs], 1),
            ])  # fmt: skip
    table = markdown_table(
        ["task", "curvature", "score / forget acc. (removal), attack success / clean acc. (backdoor)",
         "residual", "converged", "products", "ms per product (implementation)", "solve s"],
        rows,
    )  # fmt: skip
    return table + "\n\n" + measured_on(results) + "\n\n" + verdict(results)


def measured_on(results: dict[str, dict[str, Any]]) -> str:
    """Which machine measured which tasks (they were added run by run; the section's stamp names the last)."""
    tasks: dict[str, list[str]] = {}
    for name, seeds in results.items():
        for where in sorted({entry[c]["machine"] for entry in seeds.values() for c in CURVATURES}):
            tasks.setdefault(where, []).append(name)
    return "Measured on " + "; on ".join(f"{where}: {', '.join(names)}" for where, names in tasks.items()) + "."


def gauss_newton_ran_on_gpu() -> bool:
    """Whether bench/GPU.md is a GPU run (``make gpu-check`` on CUDA: its title names the ``cuda:`` device) whose
    product table has the Gauss-Newton column."""
    text = GPU_REPORT.read_text() if GPU_REPORT.exists() else ""
    return "(cuda:" in text.partition("\n")[0] and "Gauss-Newton (its product" in text


def verdict(results: dict[str, dict[str, Any]]) -> str:
    """Per task: is the Gauss-Newton edit better, worse or within one standard deviation, and at what cost; and
    the curvature the evidence favours against the product's default. Gauss-Newton is favoured where it is better by
    more than the sd on every task, or where it is as good (never worse by more than the sd) and cheaper on every
    task and its product has run on a GPU (``gauss_newton_ran_on_gpu``): a GPU service's default must have."""
    lines, better_everywhere, worse_somewhere, cheaper = [], bool(results), False, []
    for name, seeds in results.items():
        task, key = SEEDS_SUITE[name], quality_keys(SEEDS_SUITE[name])[0]
        sign = -1 if task.backdoor else 1  # attack success: lower is better
        gains = [sign * (e["gauss_newton"]["metrics"][key] - e["hessian"]["metrics"][key]) for e in seeds.values()]
        cost = statistics.mean(e["gauss_newton"]["solve_s"] / e["hessian"]["solve_s"] for e in seeds.values())
        cheaper.append(cost)
        sd = statistics.stdev(gains) if len(gains) > 1 else float("nan")
        better_everywhere &= statistics.mean(gains) > sd  # False with one seed (nan)
        worse_somewhere |= statistics.mean(gains) < -sd
        lines.append(
            f"- {name}: Gauss-Newton − Hessian on {key} (better is +) {statistics.mean(gains):+.4f}"
            + (f" (sd of the paired difference {sd:.4f})" if len(gains) > 1 else " (one seed)")
            + f"; Gauss-Newton solve time ÷ Hessian's {cost:.2f}."
        )
    equal_and_cheaper = not worse_somewhere and max(cheaper, default=1.0) < 1
    on_gpu = gauss_newton_ran_on_gpu()
    if better_everywhere:
        reason = "The Gauss-Newton edit is better by more than one sd on every task measured."
    elif equal_and_cheaper:
        reason = (
            "The Gauss-Newton edit is as good, not better (within one sd of the paired difference on every task with "
            f"seeds; the one-seed tasks above), and its solve takes {min(cheaper):.2f}–{max(cheaper):.2f} of the "
            "Hessian's time: the cheaper equal (section 18: what that buys against retraining). "
            + (
                "Its product has run on a GPU (bench/GPU.md)."
                if on_gpu
                else "Its product has not yet run on a GPU (bench/GPU.md's Gauss-Newton column, written by "
                "`make gpu-check`), and a job a GPU worker runs by default must have: until it has, a job asks for it "
                "with `solver.curvature: gauss_newton`."
            )
        )
    else:
        reason = "The Gauss-Newton edit is not better by more than one sd on every task measured."
    favoured = "gauss_newton" if better_everywhere or (equal_and_cheaper and on_gpu) else "hessian"
    default = SolverSpec.model_fields["curvature"].default
    follows = "" if favoured == default else f" The evidence favours `{favoured}`: the default should follow."
    return "\n".join(lines) + f"\n\nDefault (gif/spec.py): `solver.curvature: {default}`. {reason}{follows}"


def main() -> None:
    compiled = "--compiled" in sys.argv
    if compiled:
        sys.argv.remove("--compiled")
    args = seeds_command_line(__doc__.splitlines()[0], SEEDS_SUITE)
    if QUICK:
        args.tasks = args.tasks[:1]  # the harness's smoke run: the removal alone
    results = measure_task_seeds(SEEDS_FILE, args, SEEDS_SUITE, one_seed)
    costs = results.setdefault("product_cost", {})
    for name in args.tasks:
        costs[name] = product_costs(SEEDS_SUITE[name], args.device)
        SEEDS_FILE.write_text(json.dumps(results, indent=1))
    if compiled:
        results.setdefault("compiled_product_runs", []).append(compiled_costs(args.device))
        SEEDS_FILE.write_text(json.dumps(results, indent=1))
    body = report({name: results[name] for name in SEEDS_SUITE if name in results})
    if costs:
        body += (
            "\n\nThe per-seed cost columns above come from the edits themselves, run one after another (their spread "
            "shows how much the shared cores moved them). The fair cost comparison is one product on the job's Hessian "
            "sample, best of 5 rounds timed in turns with the forward+backward:\n\n" + products_table(costs)
        )
    if results.get("compiled_product_runs"):
        body += (
            '\n\nCompiled products (`solver.hvp: compiled`, `python -m bench.curvature --tasks "" --compiled`): one '
            "product ÷ one forward+backward, best of 5 in turns, compile time excluded; freshly initialised weights and "
            "random inputs (a product's cost depends on neither); its forward+backward column against the table above shows "
            "how loaded the shared cores were (the ratios are side by side, the milliseconds and compile seconds are "
            "not comparable across runs):\n\n" + compiled_table(results["compiled_product_runs"])
        )
    section = "9. Hessian or Gauss-Newton curvature (issue 24)"
    write_section("curvature", section, body, command("bench.curvature", args.device), args.device)
    print(body)


if __name__ == "__main__":
    main()
