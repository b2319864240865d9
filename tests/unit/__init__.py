"""Fast unit tests of the exporter's own logic: no server, no subprocess, seconds in all.

Everything outside tests/unit is marked `integration` (tests/conftest.py), so
`pytest -m "not integration"` (or `pytest tests/unit`, `make test-fast`) runs only these. Fakes
stand in for a target only where the behaviour is the exporter's own (how the scraper schedules,
joins and bounds runs); what PostgreSQL or PgBouncer does is tested against the real servers.
"""
