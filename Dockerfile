# pg-connections-exporter as a container.
#
#   docker build -t pg-connections-exporter .
#   docker run -p 9832:9832 -e DATA_SOURCE_NAME='host=db1 user=pgce_monitor dbname=postgres' \
#     pg-connections-exporter
#   docker run -p 9832:9832 -v "$PWD/config.yaml:/etc/pg-connections-exporter/config.yaml:ro" \
#     pg-connections-exporter --config.file=/etc/pg-connections-exporter/config.yaml
#
# Two stages: the first builds the package into a virtual environment, the second copies only
# that environment onto a clean slim image (no pip cache, no build tools, no source tree).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/pg-connections-exporter
WORKDIR /src
# The dependencies pinned with their hashes (requirements.txt: `make lock` refreshes it from
# pyproject.toml), so that two builds of one commit install the same releases.
COPY requirements.txt ./
# psycopg[binary] brings its own libpq: nothing to compile, no apt packages. A build machine
# behind a TLS-inspecting proxy passes its CA bundle as the secret `pip-ca`
# (--secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt): mounted for this step only,
# it is in no layer.
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && /opt/pg-connections-exporter/bin/pip install --no-cache-dir --require-hashes --no-deps \
        -r requirements.txt
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# Not the exporter: the demo's harness, which the wheel carries for `demo` and the compose
# stack's load generator (scripts/loadgen.py) imports.
COPY harness ./harness
# The package alone (its dependencies are the locked ones above); pip check fails the build if
# the lock no longer satisfies pyproject.toml.
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && /opt/pg-connections-exporter/bin/pip install --no-cache-dir --no-deps . \
    && /opt/pg-connections-exporter/bin/pip check \
    && /opt/pg-connections-exporter/bin/pg-connections-exporter --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="pg-connections-exporter" \
      org.opencontainers.image.description="Prometheus exporter for PostgreSQL connection saturation" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid and gid, so runAsNonRoot checks (Kubernetes) can see it is not root, and
# both with their entries (USER and runAsGroup name 10001): a system user would get a system gid.
RUN groupadd --gid 10001 exporter \
    && useradd --uid 10001 --gid 10001 --no-create-home --no-log-init \
        --shell /usr/sbin/nologin exporter
COPY --from=build /opt/pg-connections-exporter /opt/pg-connections-exporter
ENV PATH=/opt/pg-connections-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PGCE_HEALTHCHECK_URL=http://127.0.0.1:9832/healthz
USER 10001:10001
EXPOSE 9832
# The slim image has no curl: Python asks /healthz. Set PGCE_HEALTHCHECK_URL when the exporter
# listens elsewhere (--web.listen-address).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['PGCE_HEALTHCHECK_URL'], timeout=4)"]
# Give --config.file (a mounted file) or set DATA_SOURCE_NAME.
ENTRYPOINT ["pg-connections-exporter"]
