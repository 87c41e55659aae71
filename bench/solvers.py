"""Section 8 (issue 11): LSMR against CG on the GIF systems, the defaults that follow, and the baselines, over seeds.

1. Residual against Hessian-vector products. The GIF system of each task, as a job builds it (default
   sample sizes: Hessian 512, gradient 256; damping 0.01; Top-k outputs 10%), solved by CG (on the normal
   equations, the old solver) and by LSMR, 40 iterations each, fixed step 1 (the step search is not timed
   here). Table: HVPs until the relative normal residual first reaches 0.05 / 0.02 / 0.01; one plot per task
   (``bench/solvers_<task>.png``).
2. Quality over seeds. For each seed the reference model is trained with that seed, and selection, solver,
   baselines and retraining use it too: GIF with the new defaults, GIF with the old defaults (CG capped at 5
   iterations), GIF with CG at 40 iterations, the first-order ablation, fine-tuning and gradient ascent
   (``bench.baselines``), and the model retrained from scratch by the 15-epoch recipe. Every model is measured
   on the job's own evaluation plan. Per-seed values go to ``bench/solvers_seeds.json`` (written after every
   seed, so that an interrupted run keeps what it measured) and ``bench/solvers_seeds.png``.
3. Cost. The edit (selection + solve + step search) against one epoch and the whole 15-epoch recipe, timed in
   the same run, and against the paper's recipe (200 epochs on 60k MNIST / 50k CIFAR-10 images) by scaling the
   measured epoch time with the dataset size; and the CPU class-removal target of the issue, per seed.

Tasks: TinyNet / MNIST (8k) removing class 3 (score), the TinyNet backdoor repair (held-out attack success on
triggered test digits that are not the target, and clean accuracy); on request, VGG-11 / CIFAR-10 (4k) removing
class 8, ship (``--tasks vgg11-remove-ship --seeds 1``: its residual curves and one seed take about an hour here),
and ResNet-18 / MNIST removing 8 on the benchmarks' reduced setup (``--tasks resnet18-remove-8``: 2,000 images,
3 epochs, Hessian sample 128, without the two longest GIF variants).

Run: python -m bench.solvers [--tasks a,b] [--seeds N] [--device auto|cpu|cuda|cuda:N]   (GIF_BENCH_QUICK=1: one
     seed, small sizes; --tasks "": rewrite the section from bench/solvers_seeds.json alone). ``--device``: where
     the edits, the retraining and the baselines run (the reference models are trained on the CPU and cached).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import torch
from torch import nn

from bench.baselines import FINETUNE_EPOCHS, fine_tune, gradient_ascent
from bench.report import QUICK, beside_results, first_reaching, machine, markdown_table, mean_std, pyplot, write_section
from bench.setups import (
    SEEDS_SUITE,
    SETUPS,
    Prepared,
    Task,
    command,
    edit_seconds,
    prepare,
    seeded_spec,
    seeds_command_line,
)
from gif.edit import run
from gif.metrics import EvaluationPlan, measure
from gif.plan import RequestPlan
from gif.spec import JobSpec, SolverSpec

ITERATIONS = 5 if QUICK else 40
THRESHOLDS = (0.05, 0.02, 0.01)
QUICK_SIZES = {"hessian_samples": 64, "gradient_samples": 64, "hvp": "cached_double_backward"}
SEEDS_FILE = beside_results("solvers_seeds.json")
VARIANTS: dict[str, dict[str, Any]] = {
    "GIF, new defaults": {},
    "GIF, LSMR to 0.005": {"solver": {"tolerance": 0.005}},
    "GIF, old defaults (CG, 5 it.)": {"solver": {"kind": "cg", "max_iterations": 5, "tolerance": 1e-3}},
    f"GIF, CG {ITERATIONS} it.": {"solver": {"kind": "cg", "max_iterations": ITERATIONS, "tolerance": 1e-6}},
    "first-order ablation": {"method": "first_order"},
}
BASELINES = (f"fine-tuning ({FINETUNE_EPOCHS} epochs)", "gradient ascent")
METHODS = (*VARIANTS, *BASELINES, "retrained")
# The paper's recipe: 200 epochs on the whole training set.
PAPER_EPOCHS = 200
PAPER_TRAIN_SIZE = {"mnist": 60_000, "cifar10": 50_000}
# The CPU target for TinyNet class removal with the defaults.
TARGET_FORGET_ACCURACY, TARGET_OTHER_CLASSES, TARGET_COST_SHARE = 0.01, 0.005, 0.2


# ResNet-18 without the variants of 40-100 HVPs (its HVPs cost seconds here).
TASKS = {
    **SEEDS_SUITE,
    "resnet18-remove-8": replace(
        SEEDS_SUITE["resnet18-remove-8"], skipped=("GIF, LSMR to 0.005", f"GIF, CG {ITERATIONS} it.")
    ),
}


def spec(task: Task, request: dict, seed: int, **fields) -> JobSpec:
    return seeded_spec(request, seed, {**task.sizes, **fields.pop("solver", {})}, QUICK_SIZES, **fields)


# --- 1. residual against HVPs ----------------------------------------------------------------------


def solve_curve(task: Task, prepared: Prepared, kind: str, device: torch.device) -> list[tuple[int, float]]:
    """(HVPs so far, relative residual) after each iteration of a 40-iteration solve."""
    job = spec(
        task,
        task.request(prepared),
        0,
        solver={"kind": kind, "max_iterations": ITERATIONS, "tolerance": 1e-9},
        step={"mode": "fixed", "scale": 1.0},
    )
    attack = prepared.extras.get("triggered_test")
    result = run(job, prepared.model, prepared.train, prepared.test, attack_data=attack, device=device).result
    return [(1 + 2 * (i + 1), r) for i, r in enumerate(result.solver.residual_history)]  # Aᵀb, then 2 per iteration


def plot_curves(task: str, curves: dict[str, list[tuple[int, float]]]) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for kind, curve in curves.items():
        axes.semilogy([h for h, _ in curve], [r for _, r in curve], label=kind.upper(), marker=".")
    axes.axhline(0.02, color="grey", linestyle="--", linewidth=0.8, label="0.02")
    axes.axvline(30, color="grey", linestyle=":", linewidth=0.8, label="30 HVPs")
    axes.set(xlabel="Hessian-vector products", ylabel="relative normal residual", title=f"GIF system: {task}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(beside_results(f"solvers_{task}.png"), dpi=110)
    plt.close(figure)


def measure_curves(task: Task, name: str, device: torch.device) -> dict[str, list[tuple[int, float]]]:
    prepared = prepare(SETUPS[task.setup])
    curves = {kind: solve_curve(task, prepared, kind, device) for kind in ("cg", "lsmr")}
    plot_curves(name, curves)
    return curves


def residual_section(results: dict[str, dict]) -> str:
    rows = []
    for name, entry in results.items():
        for kind, curve in entry.get("curves", {}).items():
            at_30 = min((r for h, r in curve if h <= 30), default=float("nan"))
            rows.append([name, kind.upper(), *(first_reaching(curve, t) for t in THRESHOLDS), f"{at_30:.4f}"])
    headers = ["task", "solver", *(f"HVPs to {t:g}" for t in THRESHOLDS), "best residual within 30 HVPs"]
    plots = " ".join(f"![{name}](solvers_{name}.png)" for name, entry in results.items() if entry.get("curves"))
    return markdown_table(headers, rows) + "\n\n" + plots


# --- 2. quality over seeds -------------------------------------------------------------------------


def one_seed(task: Task, seed: int, device: torch.device) -> dict[str, Any]:
    """Every method on one seed, on ``device``: its metrics, seconds, and for GIF the residual and HVPs."""
    prepared = prepare(SETUPS[task.setup], seed)
    attack = prepared.extras.get("triggered_test")
    request = task.request(prepared)
    entry: dict[str, Any] = {"train_size": len(prepared.train), "recipe_epochs": prepared.setup.recipe.epochs}
    variants = [(name, fields) for name, fields in VARIANTS.items() if name not in task.skipped]
    for index, (name, fields) in enumerate(variants):
        extra = {"retrain": prepared.setup.recipe.model_dump() | {"seed": seed}} if index == 0 else {}
        result = run(spec(task, request, seed, **{**fields, **extra}), prepared.model, prepared.train, prepared.test,
                     attack_data=attack, device=device).result  # fmt: skip
        entry[name] = {
            "metrics": result.metrics.after,
            "seconds": edit_seconds(result),
            "residual": result.solver.relative_residual if fields.get("method") != "first_order" else None,
            "hvps": result.solver.hvp_count,
        }
        if index == 0:
            assert result.metrics.retrained is not None and result.timings.retrain_s is not None
            entry["original"] = {"metrics": result.metrics.before}
            entry["retrained"] = {"metrics": result.metrics.retrained, "seconds": result.timings.retrain_s}
    job = spec(task, request, seed)
    eval_plan = EvaluationPlan.for_job(
        job, prepared.train, prepared.test, attack, RequestPlan.of(job.request, prepared.train)
    )
    baselines: dict[str, Callable[[], nn.Module]] = {
        BASELINES[0]: lambda: fine_tune(prepared, job, seed, device),
        BASELINES[1]: lambda: gradient_ascent(prepared, job, device=device),
    }
    for name, make in baselines.items():
        start = time.perf_counter()
        model = make()
        entry[name] = {"metrics": measure(model, eval_plan).metrics, "seconds": time.perf_counter() - start}
    return entry


def measured_methods(entry: dict) -> list[str]:
    """The methods every seed of a task measured (a variant added later is missing from older runs)."""
    return [m for m in METHODS if all(m in values for values in entry["seeds"].values())]


def quality_keys(task: Task) -> tuple[str, ...]:
    return ("heldout_attack_success_rate", "clean_accuracy") if task.backdoor else ("score",)


def quality_section(results: dict[str, dict]) -> str:
    rows = []
    for name, entry in results.items():
        task, seeds = TASKS[name], entry["seeds"]
        for method in measured_methods(entry):
            cells = [mean_std([s[method]["metrics"][k] for s in seeds.values()]) for k in quality_keys(task)]
            residuals = [s[method].get("residual") for s in seeds.values()]
            residual = f"{statistics.mean(residuals):.3f}" if None not in residuals else "-"
            rows.append(
                [f"{name} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})", method, " / ".join(cells), residual]
            )
    return markdown_table(
        ["task", "method", "score (removal) or held-out attack / clean acc. (backdoor)", "mean residual"], rows
    )


def setups_line(results: dict[str, dict]) -> str:
    """What each task edits: the reference setup, its training set and recipe, and solver sizes off the defaults."""
    parts = []
    for name, entry in results.items():
        task, first = TASKS[name], next(iter(entry["seeds"].values()))
        sizes = ", ".join(f"{k} {v}" for k, v in task.sizes.items())
        parts.append(
            f"{name}: `{task.setup}`, {first['train_size']:,} training images, {first['recipe_epochs']} epochs"
            + (f"; solver {sizes}" if sizes else "")
        )
    return "; ".join(parts) + "."


def plot_seeds(results: dict[str, dict]) -> None:
    """Per task, each seed's score (attack success for the backdoor) for every method, a seed's points joined;
    below, the same without the baselines, whose spread would flatten the differences between the GIF variants."""
    plt = pyplot()
    figure, grid = plt.subplots(2, len(results), figsize=(5.5 * len(results), 9), squeeze=False)
    for column, (name, entry) in enumerate(results.items()):
        key = quality_keys(TASKS[name])[0]
        retrained = statistics.mean(values["retrained"]["metrics"][key] for values in entry["seeds"].values())
        methods = measured_methods(entry)
        for row, shown in enumerate((methods, [m for m in methods if m not in BASELINES])):
            axes = grid[row][column]
            for seed, values in entry["seeds"].items():
                axes.plot(range(len(shown)), [values[m]["metrics"][key] for m in shown], marker="o", alpha=0.7,
                          label=f"seed {seed}")  # fmt: skip
            axes.axhline(retrained, color="grey", linestyle="--", linewidth=0.8, label="retrained, mean")
            axes.set_xticks(range(len(shown)), [m.replace(" (", "\n(") for m in shown], rotation=60, fontsize=7)
            ylabel = "held-out attack success" if TASKS[name].backdoor else "score (eq. 32)"
            axes.set(title=name if row == 0 else f"{name}: GIF variants", ylabel=ylabel)
            axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(beside_results("solvers_seeds.png"), dpi=110)
    plt.close(figure)


# --- 3. cost ---------------------------------------------------------------------------------------


def cost_section(results: dict[str, dict]) -> str:
    rows = []
    for name, entry in results.items():
        seeds = list(entry["seeds"].values())
        setup = SETUPS[TASKS[name].setup]
        edit_s = statistics.mean(s[METHODS[0]]["seconds"] for s in seeds)
        recipe_s = statistics.mean(s["retrained"]["seconds"] for s in seeds)
        epoch_s = recipe_s / seeds[0]["recipe_epochs"]
        retrained_size = seeds[0]["train_size"]
        paper_size = PAPER_TRAIN_SIZE[setup.dataset.removesuffix("-backdoor")]
        paper_s = epoch_s * paper_size / retrained_size * PAPER_EPOCHS
        rows.append([
            name, f"{edit_s:.1f}", f"{epoch_s:.1f}", f"{edit_s / epoch_s:.2f}", f"{recipe_s:.1f}",
            f"{edit_s / recipe_s:.1%}", f"{paper_s / 3600:.1f} h", f"{edit_s / paper_s:.3%}",
        ])  # fmt: skip
    return markdown_table(
        ["task", "edit s (new defaults)", "one epoch s", "edit ÷ epoch", "recipe s (retraining)",
         "edit ÷ recipe", f"paper's recipe ({PAPER_EPOCHS} epochs, full set), scaled", "edit ÷ paper's recipe"],
        rows,
    )  # fmt: skip


def target_section(entry: dict) -> str:
    rows, met_all = [], True
    for seed, values in entry["seeds"].items():
        after, retrained = values[METHODS[0]]["metrics"], values["retrained"]["metrics"]
        share = values[METHODS[0]]["seconds"] / values["retrained"]["seconds"]
        gap = after["test_accuracy"] - retrained["test_accuracy"]
        met = (
            after["forget_test_accuracy"] <= TARGET_FORGET_ACCURACY
            and abs(gap) <= TARGET_OTHER_CLASSES
            and share <= TARGET_COST_SHARE
        )
        met_all &= met
        rows.append([seed, after["forget_test_accuracy"], after["test_accuracy"], retrained["test_accuracy"],
                     f"{gap:+.4f}", f"{share:.1%}", "met" if met else "not met"])  # fmt: skip
    table = markdown_table(
        ["seed", "forget-class held-out acc.", "other classes, edited", "other classes, retrained", "difference",
         "edit ÷ recipe time", "target"],
        rows,
    )  # fmt: skip
    return table + f"\n\nTarget met on every seed: {'yes' if met_all else 'no'}."


# --- 4. the targets, read from the values above --------------------------------------------


def spread(entry: dict, method: str, key: str) -> tuple[float, float]:
    values = [s[method]["metrics"][key] for s in entry["seeds"].values()]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def against_ablation(name: str, entry: dict) -> str:
    """Does GIF with the defaults beat the first-order ablation by more than the larger standard deviation?"""
    key = quality_keys(TASKS[name])[0]
    gif, gif_sd = spread(entry, METHODS[0], key)
    ablation, ablation_sd = spread(entry, "first-order ablation", key)
    margin = (ablation - gif) if TASKS[name].backdoor else (gif - ablation)  # attack success: lower is better
    sd = max(gif_sd, ablation_sd)
    verdict = (
        "one seed, no spread to compare with"
        if math.isnan(sd)
        else f"larger sd {sd:.4f}: {'yes' if margin > sd else 'no'}"
    )
    return f"- {name}: GIF − ablation {margin:+.4f} ({key}, better is +), {verdict}."


def targets_section(results: dict[str, dict]) -> str:
    lines = ["GIF with the defaults beats the first-order ablation by more than one standard deviation:"]
    lines += [against_ablation(name, entry) for name, entry in results.items()]
    lines.append("\nRelative residual ≤ 0.02 within 30 HVPs (the default solver, LSMR, seed 0):")
    for name, entry in results.items():
        if curve := entry.get("curves", {}).get("lsmr"):
            best = min((r for h, r in curve if h <= 30), default=math.inf)
            lines.append(f"- {name}: {best:.4f}: {'met' if best <= 0.02 else 'not met'}.")
    if removal := results.get("tinynet-remove-3"):
        gif, gif_sd = spread(removal, METHODS[0], "score")
        retrained, retrained_sd = spread(removal, "retrained", "score")
        within = abs(gif - retrained) <= max(gif_sd, retrained_sd)
        lines.append(
            f"\nTinyNet class removal within one standard deviation of retraining: {gif:.4f} against {retrained:.4f} "
            f"(larger sd {max(gif_sd, retrained_sd):.4f}): {'met' if within else 'not met'}."
        )
    if backdoor := results.get("tinynet-backdoor"):
        lines.append("\nBackdoor repair within 1 point of the retrained model (means over the seeds):")
        for key in quality_keys(TASKS["tinynet-backdoor"]):
            gif, _ = spread(backdoor, METHODS[0], key)
            retrained, _ = spread(backdoor, "retrained", key)
            met = "met" if abs(gif - retrained) <= 0.01 else "not met"
            lines.append(f"- {key}: {gif:.2%} against {retrained:.2%}: {met}.")
    return "\n".join(lines)


# --- the run ---------------------------------------------------------------------------------------


def load_results() -> dict[str, dict]:
    return json.loads(SEEDS_FILE.read_text()) if SEEDS_FILE.exists() else {}


def save(results: dict[str, dict]) -> None:
    SEEDS_FILE.write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")


def measure_task(name: str, seeds: range, results: dict[str, dict], device: torch.device) -> None:
    """Measure ``seeds`` of a task on ``device``; from a first seed above 0, add them to the task's stored values."""
    task = TASKS[name]
    stamp = f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} · {machine(device)}"
    if seeds.start > 0 and name in results:
        entry = results[name]
        entry["measured"] += f"; seeds {seeds.start}–{seeds.stop - 1} {stamp}"
    else:
        entry = {"measured": stamp, "seeds": {}, "curves": measure_curves(task, name, device) if task.curves else {}}
        results[name] = entry
    save(results)
    for seed in seeds:
        entry["seeds"][str(seed)] = one_seed(task, seed, device)
        print(name, seed, {m: v.get("metrics") for m, v in entry["seeds"][str(seed)].items() if isinstance(v, dict)},
              flush=True)  # fmt: skip
        save(results)


def report(results: dict[str, dict]) -> str:
    defaults = SolverSpec()
    plot_seeds(results)
    removal = results.get("tinynet-remove-3")
    target = target_section(removal) if removal else "(not measured in this run)"
    measured = "; ".join(f"{name} {entry['measured']}" for name, entry in results.items())
    return f"""The solver defaults: `{defaults.kind}`, tolerance {defaults.tolerance:g}, at most
{defaults.max_iterations} iterations (damping {defaults.damping:g}, Hessian sample {defaults.hessian_samples},
gradient sample {defaults.gradient_samples}). Per-seed values: `bench/{SEEDS_FILE.name}`.

Measured: {measured}.

### Residual against Hessian-vector products (seed 0)

{residual_section(results)}

Each iteration of either solver costs two HVPs; add one for the right-hand side and two for the final,
recomputed residual. LSMR's normal residual never grows; CG's oscillates (it minimises another norm).

### Quality over seeds (reference model, selection, solver, baselines and retraining seeded alike; auto step)

{quality_section(results)}

Setups: {setups_line(results)}

![score per method and seed](solvers_seeds.png)

### Cost against retraining (same run)

{cost_section(results)}

The edit's cost does not grow with the training set (fixed Hessian and gradient samples) except for the
step search, which predicts a carved tenth of it; the paper's recipe is the measured epoch scaled to the
paper's training set and {PAPER_EPOCHS} epochs.

### The CPU target for TinyNet class removal with the defaults

Forget-class held-out accuracy ≤ {TARGET_FORGET_ACCURACY:.0%}, other classes within
{TARGET_OTHER_CLASSES * 100:.1f} points of the retrained model, edit ≤ {TARGET_COST_SHARE:.0%} of the
reference recipe's time (15 epochs; retraining in the same run):

{target}

### The other targets of issue 11

{targets_section(results)}
"""


def main() -> None:
    args = seeds_command_line(__doc__.splitlines()[0], TASKS)
    results = load_results()
    for name in args.tasks:
        measure_task(name, args.seeds, results, args.device)
    body = report({name: results[name] for name in TASKS if name in results})
    write_section(
        "solvers", "8. Solvers and defaults (issue 11)", body, command("bench.solvers", args.device), args.device
    )
    print(body)


if __name__ == "__main__":
    main()
