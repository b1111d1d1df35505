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
SYSTEM_BUDGET := 1800

PYTEST := $(VPY) -m pytest -p no:cacheprovider -ra

# `make install-data DESTDIR=D PREFIX=/usr`: everything that is not the Python
# package (pybuild, gpep517 + installer or pip install that), in one layout for
# the system tests, the .deb and the .apk.
PREFIX ?= /usr/local
DESTDIR ?=
UNITDIR ?= $(PREFIX)/lib/systemd/system
DATADIR := $(DESTDIR)$(PREFIX)/share

.PHONY: all deps lint test test-unit test-integration test-system demo demo-dev demo-cli demo-down clean install-data deb repo apk oci

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
	$(VENV)/bin/ruff check pbxhost tests bench demo packaging oci

test-unit: deps
	timeout $(UNIT_BUDGET) $(PYTEST) -q tests/unit

test-integration: deps
	timeout $(INTEGRATION_BUDGET) $(PYTEST) -v --timeout=300 tests/integration

# the product installed into a sid system booted with systemd (systemd-nspawn)
test-system: deps
	timeout $(SYSTEM_BUDGET) $(PYTEST) -v --timeout=600 tests/system

test: lint test-unit test-integration test-system

install-data:
	install -d $(DESTDIR)$(UNITDIR)/asterisk.service.d $(DATADIR)/pbxhost/asterisk \
		$(DATADIR)/doc/pbxhost/providers $(DATADIR)/man/man1 $(DATADIR)/asterisk/agi-bin \
		$(DESTDIR)$(PREFIX)/lib/sysusers.d $(DESTDIR)$(PREFIX)/lib/tmpfiles.d
	install -m 0644 units/*.service units/*.timer units/*.path units/*.target $(DESTDIR)$(UNITDIR)/
	install -m 0644 units/asterisk.service.d/*.conf $(DESTDIR)$(UNITDIR)/asterisk.service.d/
	install -m 0644 etc/asterisk/*.conf $(DATADIR)/pbxhost/asterisk/
	install -m 0644 README.md docs/*.md $(DATADIR)/doc/pbxhost/
	install -m 0644 docs/providers/*.md $(DATADIR)/doc/pbxhost/providers/
	install -m 0755 packaging/agi-bin/websms $(DATADIR)/asterisk/agi-bin/websms
	install -m 0644 packaging/sysusers.d/*.conf $(DESTDIR)$(PREFIX)/lib/sysusers.d/
	install -m 0644 packaging/tmpfiles.d/*.conf $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/
	$(PY) packaging/manpages.py $(DATADIR)/man/man1

# `make deb`: the .debs of the working tree (uncommitted files too) in dist/,
# built in a cached sid build tree, with no lintian error or warning; `make repo`:
# dist/ as a signed apt repository in dist/repo (packaging/deb.py, README "Install").
deb:
	$(PY) packaging/deb.py deb

repo:
	$(PY) packaging/deb.py repo

# `make apk`: the Alpine packages and their public key in dist/ (docs/alpine.md),
# written by packaging/apk/mkapk.py. APK_KEY=FILE.rsa signs with that key (its
# public key FILE.rsa.pub), else with one made once in ~/.cache/pbxhost/apk-key.
# Bytecode (py3-pbxhost-pyc) needs Alpine's Python 3.14: python3.14 on PATH or,
# as root, the test bed's sid OpenRC tree; without either it is left out.
OPENRC_TREE := $(or $(PBXHOST_TESTBED_CACHE),/var/cache/pbxhost-testbed)/sid-openrc-v3
PYC_PYTHON := $(shell command -v python3.14)
APK_PYC := $(if $(PYC_PYTHON),--pyc-python $(PYC_PYTHON),$(if $(and $(filter 0,$(shell id -u)),\
	$(wildcard $(OPENRC_TREE)/.pbxhost-complete)),--pyc-root $(OPENRC_TREE)))

apk: $(STAMP)
	$(VPY) packaging/apk/mkapk.py --out dist $(if $(APK_KEY),--key $(APK_KEY)) $(APK_PYC)

# `make oci`: the images pbxhost:mini, :base, :full, :xtra (:latest = full) by
# podman from oci/Containerfile on a debootstrapped base (oci/README.md);
# OCI_VARIANTS=mini,base builds fewer, OCI_DEBS=DIR takes the .debs from DIR.
oci: $(STAMP)
	$(VPY) oci/build.py $(if $(OCI_VARIANTS),--variants $(OCI_VARIANTS)) $(if $(OCI_DEBS),--debs $(OCI_DEBS))

# `make demo`: the product as users get it: the pbxhost:base image booted with
# systemd on its own network, and the tour (demo/product.py); `make demo-dev`:
# the same tour with the daemons of this source tree (demo/run.py).
# DEMO_ARGS=--no-stay ends after the tour.
demo: $(STAMP)
	$(VPY) demo/product.py $(DEMO_ARGS)

demo-cli: $(STAMP)
	$(VPY) demo/product.py cli

demo-down: $(STAMP)
	$(VPY) demo/product.py down

demo-dev: $(STAMP)
	$(VPY) demo/run.py

clean:
	rm -rf $(VENV) build *.egg-info dist
