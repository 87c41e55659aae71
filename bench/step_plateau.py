"""Section 13 (issue 23, item 6): a class-removal step that forgets unseen examples of the class too.

The automatic step maximises the removal score on validation data; the score saturates once no validation example of
the removed class is recognised, and the smallest step that gets there leaves unseen examples just across the
boundary. ``step.plateau_tolerance`` (default 0.005) moves the step into the plateau of scores within the tolerance
of the best. Here both policies edit the same models with the same samples: TinyNet / MNIST removing class 3 over
the section 8 seeds (the reference model, samples and selection seeded alike; validation split carved from the
training data, as a job without validation data does), and the README's demo (the digits MLP removing class 8, with
and without held-out validation data). Metrics on held-out images never seen by the step search.

Run: python -m bench.step_plateau [--seeds N] [--device auto|cpu|cuda|cuda:N]   (GIF_BENCH_QUICK=1: one seed)
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from bench.report import QUICK, beside_results, markdown_table, mean_std, write_section
from bench.setups import SETUPS, add_device_argument, command, prepare, seeded_spec
from gif.data import split_indices
from gif.demo import demo_model
from gif.edit import run
from gif.spec import JobSpec

POLICIES = {"smallest best step (before)": None, "plateau middle (default)": 0.005}
KEYS = ("forget_test_accuracy", "test_accuracy", "score")
SEEDS_FILE = beside_results("step_plateau.quick.json" if QUICK else "step_plateau_seeds.json")


DEMO_SOLVER = {"kind": "cg", "max_iterations": 20}  # the demo's job.json (gif demo-assets)


def spec(request: dict, seed: int, plateau: float | None, solver: dict | None = None) -> JobSpec:
    return seeded_spec(
        request,
        seed,
        solver,
        step={"mode": "auto", "plateau_tolerance": plateau},
        durability={"bf16": False, "int8": False},
    )


def row(outcome: Any) -> dict[str, float]:
    result = outcome.result
    return {**{k: result.metrics.after[k] for k in KEYS}, "relative_change": result.step.relative_change}


def tinynet(seed: int, device: torch.device) -> dict[str, dict[str, float]]:
    prepared = prepare(SETUPS["tinynet-mnist"], seed)
    request = {"kind": "remove_class", "classes": [3]}
    return {
        name: row(run(spec(request, seed, plateau), prepared.model, prepared.train, prepared.test, device=device))
        for name, plateau in POLICIES.items()
    }


def demo(device: torch.device) -> dict[str, dict[str, float]]:
    """The README's walk-through (its job's solver): the digits MLP, class 8; its eval data halved into validation
    and test."""
    _, model, train, held_out = demo_model("digits", 0)
    validation_idx, test_idx = split_indices(len(held_out), 0.5, 0)
    validation, test = held_out.subset(validation_idx), held_out.subset(test_idx)
    request = {"kind": "remove_class", "classes": [8]}
    rows = {}
    for name, plateau in POLICIES.items():
        for given in (False, True):
            label = f"{name}, validation {'given' if given else 'carved'}"
            outcome = run(
                spec(request, 0, plateau, DEMO_SOLVER),
                model,
                train,
                test,
                validation_data=validation if given else None,
                device=device,
            )
            rows[label] = row(outcome)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1 if QUICK else 5)
    add_device_argument(parser)
    args = parser.parse_args()
    runs = []
    for seed in range(args.seeds):
        runs.append(tinynet(seed, args.device))
        print(seed, runs[-1], flush=True)
        SEEDS_FILE.write_text(json.dumps({"tinynet": runs}, indent=1))
    digits = demo(args.device)
    SEEDS_FILE.write_text(json.dumps({"tinynet": runs, "demo": digits}, indent=1))
    keys = (*KEYS, "relative_change")
    tiny = markdown_table(
        ["policy", *keys], [[name, *(mean_std([r[name][k] for r in runs]) for k in keys)] for name in POLICIES]
    )
    demo_table = markdown_table(
        ["policy", *keys], [[name, *(f"{v[k]:.4f}" for k in keys)] for name, v in digits.items()]
    )
    body = (
        f"**TinyNet / MNIST, remove class 3** ({len(runs)} seed(s), mean ± standard deviation; 2,000 held-out images; "
        "*forget_test_accuracy*: held-out 3s still recognised; *relative_change*: ‖s·Δ‖ / ‖θ‖ of the chosen step)\n\n"
        f"{tiny}\n\n**The README's demo** (digits MLP, remove class 8; the 360 held-out digits split in half: validation "
        f"for the step when given, the other half for the metrics)\n\n{demo_table}\n\nPer-seed values: "
        f"`{SEEDS_FILE.name}`."
    )
    write_section(
        "step-plateau",
        "13. A class-removal step that forgets unseen examples too (issue 23)",
        body,
        command("bench.step_plateau", args.device),
    )


if __name__ == "__main__":
    main()
