"""Section 11 (issue 22): a sample of the training set is enough, with ``train_size`` saying how large the whole was.

A user's training set is larger than anything one would upload; GIF needs the examples to remove, a Hessian sample
and validation data. Here the same edit of the same model runs on uploads that hold every example to remove plus a
seeded fraction (5%, 10%, 25%, 100%) of the others, with ``train_size`` given (the whole set's size, so the
coefficient c = removed / retained counts the whole set) and not (c from the upload alone). Quality is measured on the
same held-out test data in every run. Setups (``--setup``): TinyNet / MNIST (8k) and VGG-11 / CIFAR-10 (4k); tasks:
removing class 3, and removing 10% of the training samples drawn at random (seed 7).

Run: python -m bench.sample [--setup tinynet-mnist|vgg11-cifar] [--seeds N] [--device auto|cpu|cuda|cuda:N]
     (--seeds 0 rewrites the section from the stored values; GIF_BENCH_QUICK=1: the quick sizes)
"""

from __future__ import annotations

import json
import statistics
from typing import Any

import torch

from bench.report import QUICK, markdown_table, write_section
from bench.setups import SETUPS, Measured, Setup, command, job_spec, measure_seeds, prepare, random_samples, removal_of
from gif.data import Dataset, split_indices
from gif.edit import run

FRACTIONS = (0.1, 1.0) if QUICK else (0.05, 0.1, 0.25, 1.0)
TASKS = (
    {"class removal": removal_of(3)}
    if QUICK
    else {"class removal": removal_of(3), "10% random samples": random_samples}
)
KEYS = ("forget_test_accuracy", "forget_accuracy", "test_accuracy", "score")
# The setups measured (``--setup``): what each is, and where its per-seed values are kept.
MEASURED = {
    "tinynet-mnist": Measured("TinyNet / MNIST (8,000 training images, the 15-epoch recipe)", "sample"),
    "vgg11-cifar": Measured("VGG-11 / CIFAR-10 (the 4,000-image subset, the 15-epoch recipe)", "sample_vgg11"),
}


def upload_of(train: Dataset, affected: torch.Tensor, fraction: float, seed: int) -> tuple[Dataset, dict[str, Any]]:
    """Every affected example plus a seeded ``fraction`` of the others, in their original order; the request
    re-indexed into the sample."""
    others = torch.nonzero(~torch.isin(torch.arange(len(train)), affected)).flatten()
    kept = others[split_indices(len(others), fraction, seed)[0]] if fraction < 1 else others
    chosen = torch.cat([affected, kept]).sort().values
    position = {int(i): n for n, i in enumerate(chosen.tolist())}
    return train.subset(chosen), {"indices": [position[int(i)] for i in affected.tolist()]}


def measure(setup: Setup, seed: int, device: torch.device) -> dict[str, dict[str, dict[str, float]]]:
    prepared = prepare(setup, seed)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for task_name, request_of in TASKS.items():
        request = request_of(prepared)
        if request["kind"] == "remove_class":
            affected = torch.nonzero(torch.isin(prepared.train.y, torch.tensor(request["classes"]))).flatten()
        else:
            affected = torch.tensor(request["indices"])
        for fraction in FRACTIONS:
            sample, indices = upload_of(prepared.train, affected, fraction, seed)
            sample_request = request if request["kind"] == "remove_class" else {**request, **indices}
            for given in (True, False) if fraction < 1 else (False,):
                spec = job_spec(
                    prepared,
                    sample_request,
                    train_size=len(prepared.train) if given else None,
                    solver={"seed": seed},
                )
                outcome = run(spec, prepared.model, sample, prepared.test, device=device)
                after = outcome.result.metrics.after
                membership = outcome.result.membership
                label = f"{fraction:.0%}" + (" + train_size" if given else "")
                rows.setdefault(task_name, {})[label] = {
                    "uploaded": len(sample),
                    "coefficient": outcome.result.data.coefficient if outcome.result.data else float("nan"),
                    "seconds": outcome.result.timings.total_s,
                    "membership_auc": membership.forget_vs_heldout_auc
                    if membership and membership.forget_vs_heldout_auc is not None
                    else float("nan"),
                    **{k: after[k] for k in KEYS if after.get(k) is not None},
                }
                print(setup.name, task_name, label, rows[task_name][label], flush=True)
    return rows


def summary(runs: list[dict[str, Any]]) -> str:
    parts = []
    for task_name in TASKS:
        labels = list(runs[0][task_name])
        keys = [
            k
            for k in ("uploaded", "coefficient", *KEYS, "membership_auc", "seconds")
            if k in runs[0][task_name][labels[0]]
        ]

        def cell(label: str, key: str) -> str:
            values = [run_[task_name][label][key] for run_ in runs]
            mean = statistics.fmean(values)
            digits = 1 if key == "seconds" else 4
            spread = f" ± {statistics.stdev(values):.{min(digits, 3)}f}" if len(values) > 1 else ""
            return f"{mean:,.0f}" if key == "uploaded" else f"{mean:.{digits}f}{spread}"

        def from_whole(key: str) -> str:
            """The largest difference of a seed's row from the same seed's whole upload."""
            largest = max(
                abs(run_[task_name][label][key] - run_[task_name]["100%"][key]) for run_ in runs for label in labels
            )
            return f"{key} {largest:.4f}"

        table = markdown_table(["upload", *keys], [[label, *(cell(label, k) for k in keys)] for label in labels])
        compared = ", ".join(from_whole(k) for k in keys if k not in ("uploaded", "coefficient", "seconds"))
        parts.append(f"**{task_name}**\n\n{table}\n\nLargest difference from the whole upload (100%): {compared}.")
    return "\n\n".join(parts)


READING = (
    "How to read it: with the automatic step (the default) *train_size* changes the coefficient c and hardly the "
    "edit: c scales the gradient g, so the solved Δ, and the step search rescales Δ to the same validation objective "
    "(the largest difference each setup's rows with and without it show is under its tables). It matters for a fixed "
    "step (`step.scale` multiplies c·Δ) and for the reported coefficient. What the fraction changes is the Hessian "
    "sample (at most the retained examples uploaded), the carved validation split and the retained examples the "
    "metrics and the membership test see. *seconds*: the edit's wall time on the shared 2-core machine (noisy)."
)


def train_size_effect(runs: list[dict[str, Any]]) -> str:
    """The largest difference of a metric between the rows with ``train_size`` and without, over seeds and tasks."""
    differences = [
        abs(rows[label][key] - rows[label.removesuffix(" + train_size")][key])
        for run_ in runs
        for rows in run_.values()
        for label in rows
        if label.endswith(" + train_size")
        for key in (*KEYS, "membership_auc")
        if key in rows[label]
    ]
    return f"Largest difference between a row with *train_size* and the same upload without it: {max(differences):.4f}."


def setup_part(setup: Setup, runs: list[dict[str, Any]]) -> str:
    """One setup's tables, with what its rows are."""
    whole = runs[0]["class removal"]["100%"]["uploaded"]
    return (
        f"### {MEASURED[setup.name].title}\n\nThe product's defaults with the bench solver sizes; each row uploads every "
        "example to remove plus the stated fraction of the others (*+ train_size*: the job says the whole set had "
        f"{whole:,}). Metrics after the edit on the same held-out images in every row, mean ± standard "
        f"deviation over {len(runs)} seed(s) (model, sample and job seeds); *membership_auc*: the removed examples "
        f"against held-out ones (0.5: indistinguishable). Measured by `python -m bench.sample --setup {setup.name} "
        f"--seeds {len(runs)}`; per-seed values: `{MEASURED[setup.name].seeds_file.name}`.\n\n"
        + summary(runs)
        + "\n\n"
        + train_size_effect(runs)
    )


def main() -> None:
    seeds_files = {name: measured.seeds_file for name, measured in MEASURED.items()}
    runs, device, setup = measure_seeds(__doc__.splitlines()[0], measure, seeds_files, seeds=3)
    parts = []
    for name, seeds_file in seeds_files.items():
        stored = runs if name == setup.name else json.loads(seeds_file.read_text()) if seeds_file.exists() else None
        if stored:
            parts.append(setup_part(SETUPS[name], stored))
    write_section(
        "sample",
        "11. A sample of the training set is enough (issue 22)",
        "\n\n".join(parts) + "\n\n" + READING,
        command("bench.sample", device),
    )


if __name__ == "__main__":
    main()
