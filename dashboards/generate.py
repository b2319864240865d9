"""Build the Grafana dashboards of pg-connections-exporter as JSON.

The JSON files next to this script are generated: edit the generator package beside it
(generator/: shared panel builders, one module per row, one per dashboard; see its
__init__.py), then run

    python dashboards/generate.py          # rewrite the JSON files
    python dashboards/generate.py --check  # exit 1 if the JSON files are out of date

tests/test_dashboards.py checks the conventions on the JSON and that it matches this script;
tests/test_dashboards_e2e.py runs every panel's query against a real Prometheus.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The generator package sits beside this script, which is run as a file (and loaded as one by
# tests/test_dashboards.py), not as part of a package.
sys.path.insert(0, str(HERE))

from generator.fleet import fleet  # noqa: E402
from generator.overview import overview  # noqa: E402

DASHBOARDS = {
    "pg-connections-overview.json": overview,
    "pg-connections-fleet.json": fleet,
}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    stale = []
    for name, text in render().items():
        path = HERE / name
        if "--check" in argv:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date (run python dashboards/generate.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
