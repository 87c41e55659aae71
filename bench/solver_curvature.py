"""Section 6: Hessian-vector products against forward+backward, and CG against the Neumann series.

- HVP cost: for TinyNet (MNIST) and ResNet-18 (MNIST, 3×3 stem) at batch 256, each HVP
  implementation is timed against one forward+backward of the same batch, best of 3, each in its
  own process so that its peak memory (max RSS) is its own.
- Solvers: the GIF system of a class removal (TinyNet/MNIST, class 8, Top-k outputs 10%), solved by
  CG and by the Neumann series (M² from power iteration); HVPs and seconds until the relative
  residual first reaches 1e-2 / 1e-3 / 1e-4.

Run: python -m bench.solver_curvature   (GIF_BENCH_QUICK=1 for the smallest configuration)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from bench.report import QUICK, best_of, markdown_table, write_section
from bench.setups import SETUPS, prepare
from gif.curvature import HessianOperator, HvpMethod, LossTerm, ModelObjective, cross_entropy_sum
from gif.data import Dataset
from gif.influence import least_squares
from gif.models.registry import build_model
from gif.plan import RequestPlan
from gif.selection import select
from gif.solvers import conjugate_gradient, neumann
from gif.spec import RemoveClass, SelectionSpec

HVP_METHODS: tuple[HvpMethod, ...] = ("forward_over_reverse", "double_backward", "cached_double_backward")
TOLERANCES = (1e-2, 1e-3, 1e-4)


def hvp_worker(model_name: str, method: HvpMethod, batch: int) -> dict:
    """Time one HVP implementation against forward+backward in this process; report max RSS."""
    torch.manual_seed(0)
    model = build_model({"name": model_name, "config": {}}).eval()
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    fb = best_of(forward_backward)
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    operator = HessianOperator(
        ModelObjective(model, [LossTerm(Dataset(x, y), 1 / batch)], batch_size=batch), method=method
    )
    setup_s = time.perf_counter() - start
    v = torch.randn(operator.size)
    hvp = best_of(lambda: operator(v))
    return {
        "model": model_name,
        "method": method,
        "batch": batch,
        "forward_backward_s": fb,
        "hvp_s": hvp,
        "ratio": hvp / fb,
        "setup_s": setup_s,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mib": rss_before / 1024,
    }


def measured_hvp(model_name: str, method: HvpMethod, batch: int) -> dict:
    """``hvp_worker`` in a process of its own, so that its peak RSS is its own; in quick mode (the test harness, whose
    numbers are not kept) in this process, which saves an interpreter start and a torch import per row."""
    if QUICK:
        return hvp_worker(model_name, method, batch)
    out = subprocess.run(
        [sys.executable, "-m", "bench.solver_curvature", "--hvp-worker", model_name, method, str(batch)],
        capture_output=True,
        text=True,
        check=True,
    )
    row: dict = json.loads(out.stdout.strip().splitlines()[-1])
    return row


def hvp_table(models: list[str], batch: int) -> str:
    rows = []
    for model_name in models:
        for method in HVP_METHODS:
            r = measured_hvp(model_name, method, batch)
            rows.append(
                [
                    model_name,
                    method,
                    batch,
                    r["forward_backward_s"],
                    r["hvp_s"],
                    f"{r['ratio']:.2f}×",
                    r["setup_s"],
                    f"{r['max_rss_mib']:.0f}",
                ]
            )
    return markdown_table(
        [
            "model",
            "HVP implementation",
            "batch",
            "forward+backward s",
            "HVP s",
            "HVP / f+b",
            "setup s (graph cache)",
            "peak RSS MiB",
        ],
        rows,
    )


def solver_table(hessian_samples: int, cg_iterations: int, neumann_iterations: int) -> tuple[str, dict]:
    prepared = prepare(SETUPS["tinynet-mnist"])
    plan = RequestPlan.of(RemoveClass(classes=[8]), prepared.train)
    model = prepared.model
    hessian = HessianOperator(
        ModelObjective(model, [LossTerm(prepared.train.subset(plan.retained[:hessian_samples]), 1 / hessian_samples)])
    )
    gradient = ModelObjective(model, plan.gradient_terms(prepared.train, plan.affected[:512]))
    selected = select(model, SelectionSpec(ratio=0.1), gradient.batches, cross_entropy_sum).mask
    problem = least_squares(hessian, gradient.gradient(), None, selected)
    matvec, rhs = problem.normal, problem.adjoint(problem.b)
    rows, reached = [], {}
    for name, solver, iterations in (
        ("cg", conjugate_gradient, cg_iterations),
        ("neumann", neumann, neumann_iterations),
    ):
        marks: dict[float, tuple[int, float]] = {}
        start_count, start = hessian.count, time.perf_counter()

        def monitor(iteration: int, residual: float) -> None:
            for tol in TOLERANCES:
                if residual <= tol and tol not in marks:
                    marks[tol] = (hessian.count - start_count + 1, time.perf_counter() - start)  # +1: the rhs product

        result = solver(matvec, rhs, min(TOLERANCES), iterations, monitor)
        reached[name] = marks
        cells = [
            f"{marks[t][0]} HVPs / {marks[t][1]:.1f} s" if t in marks else f"not in {iterations} it."
            for t in TOLERANCES
        ]
        rows.append([name, *cells, result.iterations, f"{result.relative_residual:.2e}", hessian.count - start_count])
    table = markdown_table(
        ["solver", *[f"to {t:g}" for t in TOLERANCES], "iterations", "final residual", "HVPs in all"], rows
    )
    return table, reached


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hvp-worker", nargs=3, metavar=("MODEL", "METHOD", "BATCH"))
    args = parser.parse_args()
    if args.hvp_worker:
        model_name, method, batch = args.hvp_worker
        print(json.dumps(hvp_worker(model_name, method, int(batch))))
        return
    models, batch = (["tinynet"], 32) if QUICK else (["tinynet", "resnet18"], 256)
    hvps = hvp_table(models, batch)
    # Quick: every HVP of the solver table is over the Hessian sample, so it is the smallest that still solves.
    sizes = (32, 20, 40) if QUICK else (1024, 300, 1500)
    solvers, reached = solver_table(*sizes)
    ratio = ""
    if 1e-3 in reached["cg"]:
        cg = reached["cg"][1e-3][0]
        neu = reached["neumann"].get(1e-3)
        ratio = (
            f"To 1e-3, CG needed {cg} HVPs; Neumann needed {neu[0]} ({neu[0] / cg:.1f}× as many)."
            if neu
            else f"To 1e-3, CG needed {cg} HVPs; Neumann did not get there within {sizes[2]} iterations "
            f"({2 * sizes[2] + 41} HVPs, ≥ {(2 * sizes[2] + 41) / cg:.0f}× as many)."
        )
    body = f"""
HVP cost against one forward+backward of the same batch (best of 3 after a warm-up; each row in
its own process, so that peak RSS is its own). `cached_double_backward` builds the first-order
graph of the fixed Hessian sample once (its setup column) and reuses it at every product: the
engine's `auto` picks it whenever the graphs fit the memory budget (`GIF_HVP_CACHE_BYTES`, 4 GiB by
default) and caches as many batches as fit otherwise.

{hvps}

Solvers on the GIF normal equations of a class removal (TinyNet/MNIST reference model, class 8,
Top-k outputs 10%, {sizes[0]} retained examples in the Hessian sample, no damping). HVPs count the
right-hand side and, for Neumann, its 20 power iterations (40 HVPs) that set M².

{solvers}

{ratio}
"""
    write_section("solver", "6. Solver and curvature", body, "python -m bench.solver_curvature")


if __name__ == "__main__":
    main()
