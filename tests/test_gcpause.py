"""What makes the collector's pause safe (exporter/web/gcpause.py): a /metrics answer, made from
a real scrape's results, leaves no reference cycles behind, so reference counting frees all of
it while the collector is off. (The pause's own rules: tests/unit/test_gcpause.py.)"""

from __future__ import annotations

import gc

from exporter.metrics import exposition
from exporter.metrics.collector import scraped
from harness.localpg import LocalCluster
from harness.workload import SessionSpec, Workload

# Prometheus 2.x's Accept header: the OpenMetrics encoder.
PROMETHEUS = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def test_an_answer_made_from_a_real_scrape_leaves_no_cycles(pg: LocalCluster, exporter_for) -> None:
    running = exporter_for({"targets": [{"name": "db", "dsn": pg.dsn(), "labels": {"env": "a"}}]})
    exporter = running.exporter
    with Workload(pg.dsn()) as w:
        w.open_many([SessionSpec("idle", application_name=f"app{i}") for i in range(30)])
        results = exporter.scraper.call(exporter.scraper.scrape(10.0))
    assert all(r.up for r in results)
    gzipped_and_plain = [
        (encoder, gzip)
        for accept in (PROMETHEUS, "text/plain;version=0.0.4")
        for encoder in [exposition.choose_encoder(accept)[0]]
        for gzip in (True, False)
    ]
    token = scraped.set(results)
    try:
        for encoder, gzip in gzipped_and_plain:  # warm: the encoder's caches filled
            exposition.encode(encoder, exporter.registry, gzip)
        gc.collect()
        was = gc.isenabled()
        gc.disable()
        try:
            bodies = [exposition.encode(e, exporter.registry, g) for e, g in gzipped_and_plain]
            assert all(len(b) > 1000 for b in bodies)
            del bodies
            found = gc.collect()
        finally:
            if was:
                gc.enable()
    finally:
        scraped.reset(token)
    assert found == 0, f"an answer left {found} objects in reference cycles"
