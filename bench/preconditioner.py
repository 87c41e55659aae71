"""Section 16 (issue 24, item 4): does a column-scaled LSMR or a warm start reach the residual in fewer products?

The GIF system of each task is the one a job builds (the product's defaults: Hessian sample 512, gradient sample 256,
damping 0.01, the default selection of 10%): the job runs with LSMR and, where the engine would solve, this experiment takes the
system (A = (H + λI)[:, J], b = g) and solves it four ways, counting every Hessian-vector product:

- ``plain``: LSMR as the engine runs it (one product for Aᵀb, then two per iteration);
- ``column_norms``: LSMR on A D⁻¹ (x = D⁻¹ z), D_j ≈ ‖A e_j‖ from a Hutchinson estimate of diag((H + λI)²) with
  4 or 16 Rademacher vectors z (``PROBES``; E[((H + λI) z)_j²] = ‖(H + λI) e_j‖², one product each, counted: 16
  tells whether a better estimate would help);
- ``warm_start``: LSMR on the residual of x₀ = α g_J, the best multiple of the first-order step (two more products:
  A g_J, and Aᵀb for the relative residual).

Every curve is the same quantity, the unpreconditioned relative normal residual ‖Aᵀ(b − A x_k)‖ / ‖Aᵀb‖ of the
iterate x_k, recomputed after every iteration from two fresh products that are not counted (on A D⁻¹ LSMR's
recurrence gives ‖D⁻¹Aᵀr_k‖, another quantity). The solves run the engine's LSMR unchanged for ``ITERATIONS``
iterations (the iterate is read from its frame). Table: products until the residual first reaches 0.05 / 0.02 / 0.01,
estimate included, and the cosine of each solve's last iterate to the plain one's (the same solution).

Tasks: TinyNet / MNIST (8k) removing class 3 and the TinyNet backdoor repair (seed 0); on request VGG-11 /
CIFAR-10 (4k) removing class 8 (``--tasks vgg11-remove-ship``: 5-7 s per product here, about 30 minutes for its four
solves with the fresh residuals).

Run: python -m bench.preconditioner [--tasks a,b] [--device auto|cpu|cuda|cuda:N]   (--tasks "": rewrite the section
     from bench/preconditioner.json alone; GIF_BENCH_QUICK=1: 3 iterations on small samples)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import torch

from bench.report import QUICK, beside_results, first_reaching, markdown_table, reaching, write_section
from bench.setups import SEEDS_SUITE, SETUPS, Task, add_device_argument, command, prepare
from gif import influence
from gif.curvature import HessianOperator
from gif.edit import run
from gif.solvers import LeastSquares, lsmr
from gif.spec import JobSpec

ITERATIONS = 3 if QUICK else 20
PROBES = (4, 16)
THRESHOLDS = (0.05, 0.02, 0.01)
RESULTS_FILE = beside_results("preconditioner.quick.json" if QUICK else "preconditioner.json")
Curve = list[tuple[int, float]]  # (products so far, relative normal residual)


class Counted:
    """A least-squares problem whose products (each one Hessian-vector product) are counted, and the curve of a
    solve on it: after every iteration, the iterate's relative normal residual from two fresh products (not
    counted)."""

    def __init__(self, problem: LeastSquares):
        self.problem, self.products = problem, 0
        self.normal_b = float(problem.adjoint(problem.b).norm())
        self.reference: torch.Tensor | None = None  # the first solve's last iterate

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        self.products += 1
        return self.problem.apply(x)

    def adjoint(self, u: torch.Tensor) -> torch.Tensor:
        self.products += 1
        return self.problem.adjoint(u)

    def residual(self, x: torch.Tensor) -> float:
        """‖Aᵀ(b − A x)‖ / ‖Aᵀb‖ from two products that are not counted."""
        return float(self.problem.adjoint(self.problem.b - self.problem.apply(x)).norm()) / self.normal_b

    def solve(self, problem: LeastSquares, iterate: Callable[[torch.Tensor], torch.Tensor]) -> tuple[Curve, float]:
        """The engine's LSMR on ``problem`` (products with this one's A inside): (products so far, the residual of
        ``iterate(lsmr's x)``) after every iteration, read from LSMR's frame so that the solver runs unchanged; and
        the cosine of the last iterate to the plain solve's (1 for the first solve)."""
        curve: Curve = []

        def monitor(_: int, __: float) -> None:
            x = iterate(sys._getframe(1).f_locals["x"])
            curve.append((self.products, self.residual(x)))
            self.last = x

        lsmr(problem, 0.0, ITERATIONS, monitor)
        if self.reference is None:
            self.reference = self.last
        return curve, float(torch.nn.functional.cosine_similarity(self.last, self.reference, dim=0))


def plain(counted: Counted) -> tuple[Curve, float]:
    """The engine's LSMR: one product for Aᵀb, then two per iteration."""
    counted.products = 0
    return counted.solve(LeastSquares(counted.apply, counted.adjoint, counted.problem.b), lambda x: x)


def column_norms(counted: Counted, rows: torch.Tensor | None, probes: int) -> torch.Tensor:
    """D_j ≈ ‖A e_j‖: the root of the mean of (Aᵀz)_j² over ``probes`` Rademacher z on A's rows (Aᵀz = ((H + λI)
    z)_J), floored at a millionth of the largest so that no column is scaled by infinity."""
    generator = torch.Generator().manual_seed(0)
    b = counted.problem.b
    total = torch.zeros(())
    for _ in range(probes):
        z = (torch.randint(0, 2, b.shape, generator=generator) * 2 - 1).to(b)
        if rows is not None:
            z[~rows] = 0
        total = total + counted.adjoint(z).pow(2)
    d = (total / probes).sqrt()
    return d.clamp_min(1e-6 * float(d.max()))


def preconditioned(counted: Counted, rows: torch.Tensor | None, probes: int) -> tuple[Curve, float]:
    """LSMR on A D⁻¹ (x = D⁻¹ z), the estimate of D counted."""
    counted.products = 0
    d = column_norms(counted, rows, probes)
    problem = LeastSquares(lambda z: counted.apply(z / d), lambda u: counted.adjoint(u) / d, counted.problem.b)
    return counted.solve(problem, lambda z: z / d)


def warm_start(counted: Counted, cols: torch.Tensor) -> tuple[Curve, float]:
    """x₀ = α g_J minimising ‖A α g_J − b‖, then LSMR on its residual; A g_J and Aᵀb (for the relative residual, which
    the plain solve has as its first product) counted."""
    counted.products = 1
    b = counted.problem.b
    g_cols = b[cols]
    a_g = counted.apply(g_cols)
    alpha = float(a_g @ b) / float(a_g @ a_g)
    problem = LeastSquares(counted.apply, counted.adjoint, b - alpha * a_g)
    return counted.solve(problem, lambda delta: alpha * g_cols + delta)


@contextlib.contextmanager
def captured_system() -> Iterator[dict[str, Any]]:
    """While active, the least-squares problem a job solves is also recorded, with the (rows, cols) it was built on;
    the job itself runs as usual."""
    seen: dict[str, Any] = {}
    build = influence.least_squares

    def least_squares(
        hessian: HessianOperator, g: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor
    ) -> LeastSquares:
        seen.update(rows=rows, cols=cols, problem=build(hessian, g, rows, cols))
        return seen["problem"]

    with mock.patch.object(influence, "least_squares", least_squares):
        yield seen


def measure(task: Task, device: torch.device) -> dict[str, Any]:
    """The three solves of the task's GIF system (seed 0): each one's curve and its last iterate's fresh residual."""
    prepared = prepare(SETUPS[task.setup], 0)
    sizes = {"hessian_samples": 64, "gradient_samples": 64} if QUICK else {}
    solver = {**sizes, **task.sizes, "max_iterations": 1}
    job = JobSpec.model_validate(
        {"request": task.request(prepared), "solver": solver, "step": {"mode": "fixed", "scale": 1.0}}
    )
    with captured_system() as seen:
        run(job, prepared.model, prepared.train, prepared.test, device=device)
    counted = Counted(seen["problem"])
    solves = {
        "plain": plain(counted),
        **{f"column_norms ({n} probes)": preconditioned(counted, seen["rows"], n) for n in PROBES},
        "warm_start": warm_start(counted, seen["cols"]),
    }
    return {
        "curves": {name: curve for name, (curve, _) in solves.items()},
        "cosines": {name: cosine for name, (_, cosine) in solves.items()},
        "columns": int(seen["cols"].sum()),
    }


def verdict(results: dict[str, dict[str, Any]]) -> str:
    """Which solve reaches 0.02 in fewer products than plain LSMR on every task: only such a one enters the engine."""
    lines, kept = [], []
    for variant in next(iter(results.values()))["curves"]:
        if variant == "plain":
            continue
        changes = []
        for entry in results.values():
            plain_products, products = (reaching(entry["curves"][v], 0.02) for v in ("plain", variant))
            changes.append(None if plain_products is None or products is None else products - plain_products)
        if all(change is not None and change < 0 for change in changes):
            kept.append(variant)
        shown = ", ".join("not reached" if c is None else f"{c:+d}" for c in changes)
        lines.append(f"- {variant}: products to 0.02 against plain LSMR, task by task: {shown}")
    decision = (
        f"Kept in the engine: {', '.join(kept)}."
        if kept
        else "Kept in the engine: neither (no solve beats plain LSMR to 0.02 on every task)."
    )
    return "\n".join(lines) + "\n\n" + decision


def section(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        [
            name,
            variant,
            *(first_reaching(curve, t) for t in THRESHOLDS),
            f"{min(r for _, r in curve):.4f}",
            f"{entry['cosines'][variant]:.4f}",
        ]
        for name, entry in results.items()
        for variant, curve in entry["curves"].items()
    ]
    headers = [
        "task",
        "solve",
        *(f"products to {t:g}" for t in THRESHOLDS),
        f"best residual in {ITERATIONS} iterations",
        "cosine of its last iterate to plain's",
    ]
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="tinynet-remove-3,tinynet-backdoor")
    add_device_argument(parser)
    args = parser.parse_args()
    stored = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}
    for name in filter(None, args.tasks.split(",")):
        stored[name] = measure(SEEDS_SUITE[name], args.device)
        RESULTS_FILE.write_text(json.dumps(stored, indent=1))
        print(name, json.dumps({k: v for k, v in stored[name].items() if k != "curves"}), flush=True)
    body = (
        "The GIF system of each task as a job builds it with the product's defaults (Hessian sample 512, gradient "
        "sample 256, damping 0.01, the default selection of 10%), reference model of seed 0, solved each way below by the "
        f"engine's LSMR for {ITERATIONS} iterations. *products*: Hessian-vector products until the relative normal residual "
        "‖Aᵀ(b − A x)‖ / ‖Aᵀb‖ of the iterate (recomputed after every iteration from fresh products, not counted: "
        "the same quantity for every solve) first reaches the value, the preconditioner's estimate and the warm "
        f"start's two extra products included (less 4 or 16: the preconditioned iterations alone). Curves: `{RESULTS_FILE.name}`.\n\n"
        + section(stored)
        + "\n\n"
        + verdict(stored)
    )
    write_section(
        "preconditioner",
        "16. A column-scaled LSMR and a warm start (issue 24)",
        body,
        command("bench.preconditioner", args.device),
        args.device,
    )


if __name__ == "__main__":
    main()
