"""An ``EditResult`` as a worker stores it, for tests that move a job through its states without a worker."""

from __future__ import annotations

from typing import Any

from gif.result import EditResult

MINIMAL = {
    "method": "gif",
    "request": "remove_class",
    "selection": {"num_selected": 1, "modification_ratio": 0.01, "criterion": "topk_outputs"},
    "solver": {
        "kind": "lsmr",
        "iterations": 1,
        "hvp_count": 2,
        "relative_residual": 0.01,
        "converged": True,
        "scale": 1.0,
    },
    "step": {"mode": "fixed", "scale": 1.0},
    "metrics": {"before": {"test_accuracy": 0.9}, "after": {"test_accuracy": 0.8}},
    "timings": {"selection_s": 0, "solve_s": 0, "step_search_s": 0, "evaluation_s": 0, "total_s": 0},
}


def edit_result(**fields: Any) -> EditResult:
    """A valid result with ``fields`` (JSON values: ``checkpoint={"sha256": …, "size_bytes": …}``, ``model_id``)."""
    return EditResult.model_validate({**MINIMAL, **fields})
