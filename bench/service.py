"""Section 7: the service's own numbers (issue 3), re-run by the same entry point as every other section.

Runs ``bench.service_bench`` (which writes bench/SERVICE.md, or SERVICE.quick.md in quick mode) and
copies its report into RESULTS.md.

Run: python -m bench.service
"""

from __future__ import annotations

import subprocess
import sys

from bench.report import QUICK, report_file, write_section


def main() -> None:
    subprocess.run([sys.executable, "-m", "bench.service_bench"], check=True)
    report = report_file("SERVICE").read_text().split("\n", 1)[1]  # without its own title
    body = report.replace("\n## ", "\n### ")
    write_section("service", "7. Service", body, "python -m bench.service" + (" (quick)" if QUICK else ""))


if __name__ == "__main__":
    main()
