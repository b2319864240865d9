# The two commands of the README: `make demo` and `make test`. Both build .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# pytest-xdist workers for `make test`: the suite mostly waits on its servers, so one more than
# the cores keeps both busy (TEST_WORKERS=0 runs it in one process).
TEST_WORKERS ?= $(shell expr $$(nproc) + 1)

.PHONY: demo test test-fast lint format lock lock-upgrade image clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/pg-connections-exporter demo

test: $(VENV)/.installed
	bash scripts/install-system-deps.sh
	$(PY) -m harness.pgmajors install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_WORKERS) --durations=10 $(PYTEST_ARGS)

# The unit tests alone (tests/unit: no server, seconds), for quick feedback while editing.
test-fast: $(VENV)/.installed
	$(BIN)/pytest -m "not integration" -p no:hypothesispytest -q $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# requirements.txt: the image's dependencies (pyproject.toml's), pinned with their hashes by
# `uv pip compile`, for every Python the project supports. `make lock` after a change to the
# dependencies (it keeps the other pins; tests/test_docker_image.py fails until it is run);
# `make lock-upgrade` takes the newest releases the specifiers allow (monthly, or for a fix).
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock"
lock: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check 'uv>=0.5'
	$(BIN)/uv pip compile --quiet $(LOCK_FLAGS) pyproject.toml -o requirements.txt

lock-upgrade: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check 'uv>=0.5'
	$(BIN)/uv pip compile --quiet --upgrade $(LOCK_FLAGS) pyproject.toml -o requirements.txt

# The image as the tests build it (no registry, no Docker: podman on a local Debian base);
# cached, so a second run takes a second. tests/images.py says how.
image: $(VENV)/.installed
	$(PY) -m tests.images

clean:
	rm -rf $(VENV) build dist *.egg-info
