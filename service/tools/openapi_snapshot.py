"""``make openapi``: write the app's OpenAPI schema to ``openapi/openapi.json`` (a test fails when they differ)."""

from __future__ import annotations

import json
from pathlib import Path

from service.core.settings import Settings
from service.web.app import create_app

SNAPSHOT = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def render() -> str:
    """The schema as committed: stable key order, two-space indents, a final newline."""
    return json.dumps(create_app(Settings()).openapi(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    SNAPSHOT.write_text(render())
    print(f"wrote {SNAPSHOT}")


if __name__ == "__main__":
    main()
