"""Schema-driven fuzzing: Schemathesis generates requests for every operation of the committed schema
(``openapi/openapi.json``) and sends them to the app served on the loopback with an API key (real Redis, no
worker: jobs stay queued). Every response must be no 5xx and conform to the schema: documented status codes,
content types, headers (``Allow`` on a 405) and bodies (problem+json for errors); requests that break the schema
must be refused, and requests without the key too.

Seeded (``derandomize``: the same examples every run) and bounded: ``GIF_FUZZ_EXAMPLES`` examples per operation
(default 40, about 20 s here). One check is left out: ``positive_data_acceptance`` expects every schema-valid request
to be accepted, but the service refuses schema-valid requests on purpose when their content is wrong (a file that is
no checkpoint, a job naming an id that does not exist): those get their 422s in the other service tests. The
documented responses random requests cannot reach (a job that succeeded, a key at its limits) are reached, each
validated against the same schema, in ``test_api_reach.py``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from tests.service.conftest import SERVED_KEY

SCHEMA = schemathesis.openapi.from_path(Path(__file__).resolve().parents[2] / "openapi" / "openapi.json")
EXAMPLES = int(os.environ.get("GIF_FUZZ_EXAMPLES", "40"))
seen: Counter[tuple[str, int]] = Counter()  # (operation, status) → responses


@SCHEMA.auth()
class ServedKey:
    """Every case carries the served app's key (the ``ignored_auth`` check sends requests without it, too)."""

    def get(self, case, context) -> str:
        return SERVED_KEY

    def set(self, case, data: str, context) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@SCHEMA.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_its_schema_says(case, served):
    response = case.call_and_validate(base_url=served, excluded_checks=[positive_data_acceptance])
    seen[(f"{case.method.upper()} {case.path}", response.status_code)] += 1


def test_the_fuzzer_reached_every_operation():
    """The run above covered the whole schema (a schema the loader could not read would have run nothing)."""
    operations = {f"{method.upper()} {path}" for path, item in SCHEMA.raw_schema["paths"].items() for method in item}
    called = {operation for operation, _ in seen}  # and methods no route has, each checked for its 405 and Allow
    assert operations and operations <= called, sorted(operations - called)
    assert not [key for key in seen if key[1] >= 500]
    statuses = sorted(Counter(status for _, status in seen.elements()).items())
    documented = {
        (f"{method.upper()} {path}", int(code))
        for path, item in SCHEMA.raw_schema["paths"].items()
        for method, operation in item.items()
        for code in operation["responses"]
        if code.isdigit()
    }
    unreached = sorted(documented - set(seen))  # each needs state random requests do not make: test_api_reach.py
    print(f"\nfuzz: {len(operations)} operations, {sum(seen.values())} responses, statuses {statuses}")
    print(
        f"fuzz: {len(documented) - len(unreached)} of {len(documented)} documented responses reached; not: {unreached}"
    )
