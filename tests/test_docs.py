"""The documentation stays true to the code."""

from __future__ import annotations

import re

from exporter.config.model import builtin_queries
from exporter.metrics.poolerview import DERIVED_METRICS
from tests.helpers import REPO, load_script

reference = load_script("render_reference")
BEGIN, END, metrics_reference = reference.BEGIN, reference.END, reference.metrics_reference


def test_readme_metrics_reference_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    assert BEGIN in readme and END in readme
    current = readme[readme.index(BEGIN) : readme.index(END) + len(END)]
    assert current == metrics_reference(), (
        "README metrics reference is stale: "
        "run python scripts/render_reference.py --write README.md"
    )


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_every_guide_query_has_an_answer_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("### From the operator's guide") :]
    for needle in [
        "SHOW max_connections",
        "Idle connections",
        "Connections by state",
        "Connections by application",
        "Connections by user",
        "Connections by client IP",
        "Long-running queries",
        "Alert at 80%",
        # The guide's pooling and application-side sections (the pooling advisor).
        "Use Connection Pooling",
        "transaction pooling mode",
        "Application-Side Fixes",
        "Each connection uses ~5-10MB RAM",
    ]:
        assert needle in table, needle
    metric_names = {m.name for q in builtin_queries() for m in q.metrics}
    metric_names |= {d.name for d in DERIVED_METRICS}
    for used in set(re.findall(r"`(pg_[a-z_]+)", table)):
        base = re.sub(r"_bucket$", "", used)
        assert base in metric_names, f"README table names unknown metric {used}"
