# Sluice: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DATA_DIR ?= ./var
DEB_PACKAGES := bird2 frr gobgpd exabgp nftables iproute2 golang-github-osrg-gobgp-dev systemd postgresql fastnetmon hping3 iptables ufw firewalld chromium chromium-driver prometheus hey
UNAME_ID := $(shell id -u)

.PHONY: run test venv install install-dev debs stubs lint typecheck pytest bench clean

run: install stubs  ## install and start the service on its embedded default (SQLite + example policy)
	$(VENV)/bin/sluice serve --data-dir $(DATA_DIR) --policy-dir policies/examples/default

test: install-dev debs stubs lint typecheck pytest  ## install everything the tests need and run them all

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(VENV)/bin/activate

.stamp-install: pyproject.toml | $(VENV)/bin/activate
	$(PIP) install --quiet -e .
	touch $@

.stamp-install-dev: pyproject.toml | $(VENV)/bin/activate
	$(PIP) install --quiet -e '.[dev]'
	touch .stamp-install $@

install: .stamp-install
install-dev: .stamp-install-dev

# Debian packages for the real-daemon lab tests. Installed only as root; without root the
# lab tests skip (and fail instead when SLUICE_REQUIRE_LAB=1, as in CI).
debs:
	@if [ "$(UNAME_ID)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  fi; \
	else echo "not root: skipping Debian packages ($(DEB_PACKAGES))"; fi

# GoBGP gRPC stubs are generated here from Debian's protos, never committed.
stubs: .stamp-install
	@# run by path: importing the adapters.gobgp package needs the stubs this generates
	$(PY) adapters/gobgp/build_stubs.py

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install-dev stubs
	$(VENV)/bin/mypy policies adapters orchestrator labs tests

# Without PYTEST_ARGS: the unit tests on two workers (pytest-xdist; they start no daemon and
# no namespace), then the integration and contract tests (real daemons in namespaces,
# servers, processes) in one process, serially. PYTEST_XDIST= runs the unit tests in one.
PYTEST_XDIST ?= -n 2
pytest: install-dev stubs
ifeq ($(strip $(PYTEST_ARGS)),)
	$(VENV)/bin/pytest $(PYTEST_XDIST) tests/unit
	$(VENV)/bin/pytest tests/integration tests/contract
else
	$(VENV)/bin/pytest $(PYTEST_ARGS)
endif

bench: install-dev stubs  ## run the benchmarks on purpose; they print their figures
	$(PY) -m tests.bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .stamp-* .mypy_cache .ruff_cache .pytest_cache build *.egg-info adapters/gobgp/_generated
