"""The benchmark harness cannot rot: every experiment runs in its smallest configuration.

The numbers of a quick run mean nothing (models trained for one epoch on ``QUICK_TRAIN_SUBSET`` images); what is
checked is that each entry point runs end to end and writes its section.
"""

import os
import subprocess
import sys
from pathlib import Path

from bench.run_all import EXPERIMENTS

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = (
    "engine-cost",
    "selection",
    "baselines",
    "backdoor",
    "toy",
    "alternatives",
    "solver",
    "service",
    "solvers",
    "curvature",
    "ingest",
    "sample",
    "sample-sizes",
    "step-plateau",
    "unlearning",
    "backdoor-repair",
    "transform-memory",
    "converged-cost",
)


def test_every_experiment_runs_in_its_smallest_configuration(tmp_path):
    """Slow by design (the suite's longest test): it trains, edits, retrains, fine-tunes and evaluates real models
    in every experiment, and bench.service starts a real stack (Redis, API, worker, an S3 server) and fuzzes its
    schema. What is left is kept small: one run_all process (quick mode imports torch once), the reference models
    trained once into a cache shared by all experiments, one epoch on ``QUICK_TRAIN_SUBSET`` images, the quick
    solver and evaluation sizes of bench.setups and a 32-example Hessian sample for the solver table."""
    results = tmp_path / "RESULTS.md"
    env = {
        **os.environ,
        "GIF_BENCH_QUICK": "1",
        "GIF_BENCH_RESULTS": str(results),
        "GIF_BENCH_CACHE": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.run_all"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = results.read_text()
    assert len(EXPERIMENTS) == len(SECTIONS)
    for key in SECTIONS:
        assert f"<!-- section:{key} -->" in text and f"<!-- end:{key} -->" in text, key
    assert (tmp_path / "regression_toy.png").stat().st_size > 10_000
    assert (tmp_path / "selection_tinynet-mnist.png").stat().st_size > 10_000
    assert (tmp_path / "solvers_seeds.png").stat().st_size > 10_000
    assert "| gif |" in text and "| first_order |" in text
