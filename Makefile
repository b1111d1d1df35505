# pbxhost — `make demo` runs the product, `make test` passes the tests.
# Both install what they need (Debian packages, a venv) on a fresh Debian 12 machine as root.

SHELL := /bin/bash
PY := /usr/bin/python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-$(shell cat packaging/*-test-deps.txt | md5sum | cut -c1-8)
RUFF_VERSION := 0.17.6

# Time budget per tier (seconds) so the whole run fits CI's 90 minutes.
UNIT_BUDGET := 120
INTEGRATION_BUDGET := 1200

PYTEST := $(VPY) -m pytest -p no:cacheprovider -ra

.PHONY: all deps lint test test-unit test-integration demo clean

all: test

$(STAMP): $(wildcard packaging/*-test-deps.txt) setup.cfg
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$$(grep -v '^#' packaging/apt-test-deps.txt) >/dev/null
	$(PY) -m venv --system-site-packages $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check ruff==$(RUFF_VERSION)
	if [ -f packaging/pip-test-deps.txt ]; then \
		$(VPY) -m pip install -q --disable-pip-version-check -r packaging/pip-test-deps.txt; fi
	$(VPY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	rm -f $(VENV)/.deps-*
	touch $@

deps: $(STAMP)

lint: deps
	$(VENV)/bin/ruff check pbxhost tests bench demo

test-unit: deps
	timeout $(UNIT_BUDGET) $(PYTEST) -q tests/unit

test-integration: deps
	timeout $(INTEGRATION_BUDGET) $(PYTEST) -v --timeout=300 tests/integration

test: lint test-unit test-integration

demo: $(STAMP)
	$(VPY) demo/run.py

clean:
	rm -rf $(VENV) build *.egg-info
