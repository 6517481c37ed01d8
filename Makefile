# `make bench`: install, run the default sweep, write the HTML report.   `make test`: install with the
# `test` and `ray` extras (the Ray tests start a cluster on 127.0.0.1), install Debian's chromium if
# missing (`make chromium`, for the report's browser test), run the tests.
# torch is installed first and pinned: torch==2.13.0 is a CPU wheel on local disk, while a bare "torch"
# requirement would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
CHROMIUM := /usr/bin/chromium

.PHONY: install install-test chromium test test-slow check-baseline check-validation bench lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(STAMP)

# The extras the tests need, on top of the package.
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,ray]'
	touch $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

# Debian's chromium for tests/lamina_bench/test_report_browser.py (Playwright drives it through
# executable_path; `playwright install`, which downloads browsers, is never run). Nothing to do when
# $(CHROMIUM) exists; sudo only when not root; without apt-get, a message (the browser tests then skip).
chromium:
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
	  echo "apt-get not found: install Chromium as $(CHROMIUM) yourself; the browser tests skip without it"; \
	  exit 0; \
	fi; \
	sudo=; if [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi; \
	set -x; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium

test: install-test chromium
	$(VENV)/bin/ruff check lamina_bench reference_impl tests
	$(VENV)/bin/ruff format --check lamina_bench reference_impl tests
	$(PY) -m pytest -q -m "not slow"
	$(MAKE) --no-print-directory check-baseline
	$(MAKE) --no-print-directory check-validation

# The deterministic modeled sweep must reproduce the committed baseline exactly (README: regression tracking).
check-baseline: install
	@out=$$(mktemp -d) && \
	$(VENV)/bin/lamina-bench run results/baselines/modeled.toml --out $$out --run-id ci-modeled --no-report >/dev/null && \
	$(VENV)/bin/lamina-bench compare results/baselines/modeled $$out/ci-modeled --fail-on change; \
	rc=$$?; rm -rf $$out; exit $$rc

# The operator model against public measurements: exit 1 when an error figure got worse than the committed
# results/validation/errors.json (README: model fidelity). A few seconds.
check-validation: install
	$(VENV)/bin/lamina-bench validate --no-store >/dev/null

test-slow: install-test
	$(PY) -m pytest -q -m slow

bench: install
	$(VENV)/bin/lamina-bench run

lint: install-test
	$(VENV)/bin/ruff check lamina_bench reference_impl tests

format: install-test
	$(VENV)/bin/ruff format lamina_bench reference_impl tests
	$(VENV)/bin/ruff check --fix lamina_bench reference_impl tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
