"""RQ's internals are used in ``service.core.rq_internals`` only, and only under the RQ major version it was written
for; importing ``worker`` changes nothing in the process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INTERNALS = ROOT / "service" / "core" / "rq_internals.py"
# RQ's private attributes, its registries and intermediate list, and the Worker methods a subclass may override
RQ_INTERNAL = re.compile(
    r"\._horse_pid|\bfind_by_key\b|\bexecution\._job\b|_job_registry\b|\bintermediate_queue_key\b|\bmain_work_horse\b"
    r"|def (dequeue_job_and_maintain_ttl|fork_work_horse|handle_work_horse_killed|monitor_work_horse|execute_job)\b"
)


def test_rq_internals_are_used_in_one_module_only():
    sources = [*ROOT.glob("worker/**/*.py"), *ROOT.glob("service/**/*.py")]
    users = sorted(str(path.relative_to(ROOT)) for path in sources if RQ_INTERNAL.search(path.read_text()))
    assert users == ["service/core/rq_internals.py"]


def test_another_rq_major_version_is_refused_at_import():
    code = "import rq; rq.__version__ = '4.0.0'; import service.core.rq_internals"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ImportError: service.core.rq_internals is written for RQ 3.x" in result.stderr
    assert "RQ 4.0.0 is installed" in result.stderr


def test_importing_worker_has_no_side_effects():
    code = "import os; before = dict(os.environ); import worker.runner; assert dict(os.environ) == before"
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)
