"""Section 14 (issue 23, item 7): the unlearning methods compared in the SalUn table format, one job per seed and task.

TinyNet / MNIST (8,000 training images) or VGG-11 / CIFAR-10 (4,000; ``--setup``), the 15-epoch recipe, models cached
per seed; two tasks: forgetting 10% of the training samples drawn at random (seed 7) and removing class 3. Each seed and task is ONE job of several methods
(``methods: gif, first_order, fine_tune, neg_grad_plus``) through ``gif.edit.run``, on the same samples and validation
data, with retraining from scratch on the retained data (the setup's recipe, the seed's initialisation) as the
reference. Per method: UA (1 − accuracy on the forgotten training examples), RA (retain accuracy), TA (test accuracy;
the removed class excluded), MIA-efficacy (share of forgotten examples the SalUn SVM attack calls non-members) and the
average gap to retraining (the mean of |metric − retrained metric| over the four), in percent as SalUn reports them;
the membership AUC (loss-threshold attack, forgotten vs held-out examples); durability (the forgotten quantity after
a bf16 cast, int8 weights, and 100 fine-tuning steps on retained data only); seconds per method.

Run: python -m bench.unlearning [--setup tinynet-mnist|vgg11-cifar] [--seeds N] [--first-seed K] [--tasks random,class]
     [--device auto|cpu|cuda|cuda:N]
     (--first-seed K > 0 adds seeds to the stored ones; --seeds 0 rewrites the section from them;
     GIF_BENCH_QUICK=1: one seed, the class removal, tiny budgets)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from bench.report import QUICK, markdown_table, pyplot, write_section
from bench.setups import (
    QUICK_JOB,
    QUICK_SOLVE,
    SETUPS,
    Measured,
    Prepared,
    add_device_argument,
    command,
    job_spec,
    prepare,
    random_samples,
    removal_of,
)
from gif.edit import run

METHODS = ["gif", "first_order", "fine_tune", "neg_grad_plus"]
TASKS = {"random": ("10% random forgetting", random_samples), "class": ("class removal (class 3)", removal_of(3))}
COLUMNS = ("UA", "RA", "TA", "MIA")


MEASURED = {
    "tinynet-mnist": Measured("TinyNet / MNIST (8,000 training images, 15-epoch recipe)", "unlearning"),
    "vgg11-cifar": Measured("VGG-11 / CIFAR-10 (the 4,000-image subset, 15-epoch recipe)", "unlearning_vgg11"),
}
QUICK_TRAINING = {"epochs": 1, "learning_rates": [0.01]}
RELEARN_STEPS = 100
# Published, on other setups (CIFAR-10 / ResNet-18, 10% random forgetting): average gap to retraining, in percent.
PUBLISHED = [
    ("SalUn, its paper (Fan et al., ICLR 2024)", 1.15),
    ("SalUn, an independent re-run", 2.48),
    ("NegGrad+, the same re-run", 3.71),
]


def spec(prepared: Prepared, request: dict, seed: int):
    fields: dict[str, Any] = {
        "methods": METHODS,
        "selection": {"seed": seed},
        "solver": {"seed": seed, **(QUICK_SOLVE if QUICK else {})},
        "training": {"seed": seed, **(QUICK_TRAINING if QUICK else {})},
        "retrain": prepared.setup.recipe.model_copy(update={"seed": seed}).model_dump(),
    }
    if QUICK:
        fields.update(QUICK_JOB)
    else:
        fields["durability"] = {"fine_tune_steps": RELEARN_STEPS}
    return job_spec(prepared, request, **fields)


def salun(metrics: dict[str, float]) -> dict[str, float]:
    """UA, RA, TA and MIA-efficacy in percent."""
    return {
        "UA": 100 * (1 - metrics["forget_accuracy"]),
        "RA": 100 * metrics["retain_accuracy"],
        "TA": 100 * metrics["test_accuracy"],
        "MIA": 100 * metrics["mia_efficacy"],
    }


def one_job(prepared: Prepared, task: str, seed: int, device: torch.device) -> dict[str, Any]:
    start = time.perf_counter()
    result = run(
        spec(prepared, TASKS[task][1](prepared), seed), prepared.model, prepared.train, prepared.test, device=device
    ).result
    seconds = time.perf_counter() - start
    assert result.comparison is not None and result.metrics.retrained is not None
    methods: dict[str, dict[str, Any]] = {}
    for entry in result.comparison:
        durability = entry.durability
        methods[entry.method] = {
            "metrics": entry.metrics,
            "objective": entry.objective,
            "chosen": entry.chosen,
            "scale": entry.step.scale,
            "relative_change": entry.step.relative_change,
            "seconds": entry.timings.total_s,
            "forget_vs_heldout_auc": entry.membership.forget_vs_heldout_auc if entry.membership else None,
            "retain_vs_heldout_auc": entry.membership.retain_vs_heldout_auc if entry.membership else None,
            "durability": None
            if durability is None
            else {
                "metric": durability.metric,
                "before": durability.before,
                "after": durability.after,
                "holds": durability.holds,
                "checks": {c.name: {"value": c.value, "recovered": c.recovered} for c in durability.checks},
            },
            "warnings": entry.warnings,
        }
    before_auc = (
        result.membership.before.forget_vs_heldout_auc if result.membership and result.membership.before else None
    )
    return {
        "seed": seed,
        "task": task,
        "seconds": seconds,
        "retrain_s": result.timings.retrain_s,
        "before": result.metrics.before,
        "before_auc": before_auc,
        "retrained": result.metrics.retrained,
        "methods": methods,
        "chosen_by": result.chosen_by,
    }


# --- the report ------------------------------------------------------------------------------------


def cell(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.{digits}f}{spread}"


def gap(row: dict[str, float], reference: dict[str, float]) -> float:
    return statistics.fmean(abs(row[k] - reference[k]) for k in COLUMNS)


def rows_of(jobs: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Per row name (retrained, original, each method), the SalUn metrics and gap of every seed."""
    rows: dict[str, list[dict[str, float]]] = {"retrained": [], "original (no edit)": [], **{m: [] for m in METHODS}}
    for job in jobs:
        reference = salun(job["retrained"])
        for name, metrics in [
            ("retrained", job["retrained"]),
            ("original (no edit)", job["before"]),
            *((m, job["methods"][m]["metrics"]) for m in METHODS),
        ]:
            values = salun(metrics)
            rows[name].append({**values, "gap": gap(values, reference)})
    return rows


def check_cell(checks: list[dict[str, float | None]]) -> str:
    """A durability check over seeds: the value (percent) and, in brackets, the share of the edit that came back."""
    values = [100 * c["value"] for c in checks if c["value"] is not None]
    recovered = [c["recovered"] for c in checks if c["recovered"] is not None]
    return f"{cell(values)} ({cell(recovered)})"


def unedited(job: dict[str, Any], method: str) -> bool:
    """Whether the method's edit left every metric as it was (its step or kept checkpoint: the unedited model)."""
    after = job["methods"][method]["metrics"]
    return all(abs(after[k] - job["before"][k]) < 1e-9 for k in after if k in job["before"])


def task_section(task: str, jobs: list[dict[str, Any]]) -> tuple[str, dict[str, list[float]]]:
    rows = rows_of(jobs)
    table = markdown_table(
        [
            "method",
            "UA",
            "RA",
            "TA",
            "MIA-efficacy",
            "avg. gap ↓",
            "forget-vs-held-out AUC",
            "seconds",
            "chosen",
            "unedited",
        ],
        [
            [
                f"**{name}**" if name in METHODS else name,
                *(cell([r[k] for r in values]) for k in (*COLUMNS, "gap")),
                cell(
                    [j["before_auc"] for j in jobs]
                    if name == "original (no edit)"
                    else [j["methods"][name]["forget_vs_heldout_auc"] for j in jobs]
                    if name in METHODS
                    else [],
                    3,
                ),
                cell([j["retrain_s"] for j in jobs], 0)
                if name == "retrained"
                else cell([j["methods"][name]["seconds"] for j in jobs], 0)
                if name in METHODS
                else "–",
                f"{sum(j['methods'][name]['chosen'] for j in jobs)}/{len(jobs)}" if name in METHODS else "–",
                f"{sum(unedited(j, name) for j in jobs)}/{len(jobs)}" if name in METHODS else "–",
            ]
            for name, values in rows.items()
        ],
    )
    durability_rows = []
    metric = jobs[0]["methods"][METHODS[0]]["durability"]
    if metric is not None:
        checks = list(metric["checks"])
        for m in METHODS:
            found = [j["methods"][m]["durability"] for j in jobs]
            durability_rows.append(
                [
                    m,
                    cell([100 * d["before"] for d in found]),
                    cell([100 * d["after"] for d in found]),
                    *(check_cell([d["checks"][c] for d in found]) for c in checks),
                    f"{sum(d['holds'] for d in found)}/{len(found)}",
                ]
            )
        durability = (
            f"Durability of `{metric['metric']}` (percent; in brackets the share of the edit's effect that came back, "
            "(value − after) / (before − after)):\n\n"
            + markdown_table(["method", "before", "after edit", *checks, "holds"], durability_rows)
        )
    else:
        durability = "Durability: not measured in this run."
    retrain_seconds = cell([j["retrain_s"] for j in jobs], 0)
    body = (
        f"**{TASKS[task][0]}** ({len(jobs)} seed(s): {', '.join(str(j['seed']) for j in jobs)}; mean ± standard "
        "deviation; percent; *chosen*: how often the job picked the method by its validation objective; "
        "*unedited*: how often the method's step (or kept checkpoint) left every metric as it was, the validation "
        "objective finding nothing better than the unedited model; retraining "
        f"{retrain_seconds} s)\n\n{table}\n\n{durability}"
    )
    return body, {name: [r["gap"] for r in values] for name, values in rows.items()}


def plain_words(task: str, jobs: list[dict[str, Any]]) -> str:
    """Where GIF is not the best, in words: the methods closer to retraining on average and per metric."""
    rows = rows_of(jobs)
    mean = {
        name: {k: statistics.fmean(r[k] for r in values) for k in (*COLUMNS, "gap")} for name, values in rows.items()
    }
    retrained = mean["retrained"]

    def shown(m: str) -> str:
        return f"{mean[m]['gap']:.2f}"

    better = [m for m in METHODS if m != "gif" and round(mean[m]["gap"], 2) < round(mean["gif"]["gap"], 2)]
    tied = [m for m in METHODS if m != "gif" and shown(m) == shown("gif")]
    best = min(METHODS, key=lambda m: mean[m]["gap"])
    if better:
        verdict = f"GIF's average gap ({shown('gif')}) is larger than " + ", ".join(
            f"{m}'s ({shown(m)})" for m in better
        )
    elif tied:
        verdict = f"GIF ties with {', '.join(tied)} at an average gap of {shown('gif')}"
    else:
        verdict = f"GIF's average gap ({shown('gif')}) is the smallest"
    parts = [f"{TASKS[task][0]}: {verdict}" + (f" (the smallest: {best}'s)" if better and best != better[0] else "")]
    kept = sum(unedited(j, "gif") for j in jobs)
    if kept:
        parts.append(
            f"GIF's step left the model unedited in {kept}/{len(jobs)} job(s) (no step scored better on the "
            f"validation objective), so the forgotten examples stay as learned as before (UA {mean['gif']['UA']:.2f} "
            f"vs {retrained['UA']:.2f} retrained, MIA-efficacy {mean['gif']['MIA']:.2f} vs {retrained['MIA']:.2f})"
        )
    for k in COLUMNS:
        closer = [
            m for m in METHODS if m != "gif" and abs(mean[m][k] - retrained[k]) < abs(mean["gif"][k] - retrained[k])
        ]
        if closer:
            parts.append(f"{k} closer to retraining than GIF's: {', '.join(closer)}")
    return "; ".join(parts) + "."


def plot(measured: Measured, gaps: dict[str, dict[str, list[float]]]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    names = [*METHODS, "original (no edit)"]
    width = 0.8 / len(gaps)
    for n, (task, by_name) in enumerate(gaps.items()):
        xs = [i + (n - (len(gaps) - 1) / 2) * width for i in range(len(names))]
        means = [statistics.fmean(by_name[name]) for name in names]
        errors = [statistics.stdev(by_name[name]) if len(by_name[name]) > 1 else 0.0 for name in names]
        ax.bar(xs, means, width, yerr=errors, capsize=3, label=TASKS[task][0])
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("average gap to retraining (percent)")
    ax.set_yscale("log")
    ax.set_title(
        f"{measured.title.split(' (')[0]}: average gap to retraining over UA, RA, TA, MIA (mean ± std over seeds)"
    )
    ax.title.set_fontsize(9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(measured.plot, dpi=120)
    plt.close(fig)


def setup_part(measured: Measured, stored: list[dict[str, Any]]) -> str:
    """One setup's tables, plain words and plot."""
    sections, gaps, words = [], {}, []
    for task in TASKS:
        jobs = sorted((j for j in stored if j["task"] == task), key=lambda j: j["seed"])
        if not jobs:
            continue
        body, gaps[task] = task_section(task, jobs)
        sections.append(body)
        words.append(plain_words(task, jobs))
    plot(measured, gaps)
    seconds: dict[int, float] = {}
    for job in stored:
        seconds[job["seed"]] = seconds.get(job["seed"], 0.0) + job["seconds"]
    return (
        f"### {measured.title}\n\n" + "\n\n".join(sections) + f"\n\n**Where GIF is not the best.** {' '.join(words)}"
        "\n\nSeconds per seed (the jobs of every task, everything included): "
        f"{', '.join(f'seed {s}: {v:.0f}' for s, v in sorted(seconds.items()))}. Per-seed values: "
        f"`{measured.seeds_file.name}`; plot: `{measured.plot.name}`.\n\n![average gap per method]"
        f"({measured.plot.name})"
    )


def report(device: torch.device) -> None:
    """The section from every setup's stored values."""
    parts = [
        setup_part(measured, json.loads(measured.seeds_file.read_text())["jobs"])
        for measured in MEASURED.values()
        if measured.seeds_file.exists()
    ]
    published = markdown_table(
        ["what (other setups: CIFAR-10 / ResNet-18, not comparable directly)", "avg. gap"],
        [[what, f"{value:.2f}"] for what, value in PUBLISHED],
    )
    body = (
        "One job of the four methods per setup, seed and task (`methods: [gif, first_order, fine_tune, "
        "neg_grad_plus]`, each with the product's defaults and the bench solver sizes; the training methods' budget: 3 "
        "passes at learning rates 0.001, 0.01, 0.1), with retraining from scratch (the setup's recipe, the seed's "
        "initialisation) as the reference. UA = 1 − accuracy on the forgotten training examples, RA = retained "
        "accuracy, TA = test accuracy (the removed class excluded), MIA-efficacy = forgotten examples the SalUn SVM "
        "attack calls non-members; avg. gap = mean |metric − retrained| over the four (lower is better; the retrained "
        "row is 0 by definition). Each setup is measured by `python -m bench.unlearning --setup NAME`.\n\n"
        + "\n\n".join(parts)
        + "\n\n**Published gaps, beside ours** — other setups, not directly comparable (CIFAR-10 / ResNet-18, 10% "
        f"random forgetting, their retraining):\n\n{published}"
    )
    write_section(
        "unlearning",
        "14. Unlearning methods compared (issue 23)",
        body,
        command("bench.unlearning", device),
        device,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", choices=list(MEASURED), default=next(iter(MEASURED)))
    parser.add_argument("--seeds", type=int, default=1 if QUICK else 5, help="how many seeds (0: report only)")
    parser.add_argument("--first-seed", type=int, default=0, help="above 0: add seeds to the stored ones")
    parser.add_argument("--tasks", default="class" if QUICK else ",".join(TASKS))
    add_device_argument(parser)
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    seeds_file = MEASURED[args.setup].seeds_file
    stored: list[dict[str, Any]] = []
    if (args.first_seed > 0 or args.seeds == 0) and seeds_file.exists():
        stored = json.loads(seeds_file.read_text())["jobs"]
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        prepared = prepare(SETUPS[args.setup], seed)
        for task in tasks:
            job = one_job(prepared, task, seed, args.device)
            stored = [j for j in stored if (j["seed"], j["task"]) != (seed, task)] + [job]
            seeds_file.write_text(json.dumps({"jobs": stored}, indent=1))
            print(args.setup, seed, task, f"{job['seconds']:.0f} s", flush=True)
    report(args.device)


if __name__ == "__main__":
    main()
