# Two commands on a fresh machine: `make demo` and `make test`.
# PYTHON picks the interpreter of .venv (`make test PYTHON=python3.13`); .venv is rebuilt when
# it changes. SUPPORTED_PYTHONS says what requires-python says (tests/test_supported_pythons.py).
PYTHON ?= python3
SUPPORTED_PYTHONS := 3.11 3.12 3.13
VENV ?= .venv
PYTHON_EXE := $(shell .ci/python-for $(PYTHON))
PYTHON_VERSION := $(if $(PYTHON_EXE),$(shell $(PYTHON_EXE) -c 'import sys; print("%d.%d" % sys.version_info[:2])'))
ifeq ($(PYTHON_VERSION),)
$(error no Python interpreter '$(PYTHON)')
endif
PY := $(VENV)/bin/python$(PYTHON_VERSION)
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# setup.py compiles the rule engine from vendor/, the fact encoder and the replay's counters: editing any reinstalls.
INSTALL_INPUTS := pyproject.toml setup.py $(wildcard vendor/*/src/*/*) gateway/backtest_counters.c rules/fact.c

BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test test-subset test-other-pythons build-deps system-deps bench bench-deps bench-micro bench-smoke pack-eval failover clean

$(PY): | build-deps
	$(PYTHON_EXE) -m venv --clear $(VENV)
	$(PIP) install -q --upgrade pip

# The rule engine is C, compiled at install (setup.py): a compiler and the interpreter's
# headers, from Debian packages when missing (python3-dev serves Debian's own python3).
build-deps:
	@missing=""; \
	command -v gcc >/dev/null || missing="$$missing build-essential"; \
	[ -f "$$($(PYTHON_EXE) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): $(INSTALL_INPUTS) | $(PY)
	$(PIP) install -q -e .
	touch $@

$(TEST_STAMP): $(INSTALL_INPUTS) | $(PY)
	$(PIP) install -q -e '.[test]'
	touch $@ $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/txgate demo --once

# Real servers and real clients the tests talk to, from Debian packages when missing.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	command -v redis-sentinel >/dev/null || missing="$$missing redis-sentinel"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v oathtool >/dev/null || missing="$$missing oathtool"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: $(TEST_STAMP) system-deps
	$(VENV)/bin/python -m pytest -q
	@$(MAKE) --no-print-directory test-other-pythons

# What most depends on the interpreter: the C rule engine, crypto, and the gateway end to end
# (proxying, streaming, signals). Small on purpose: each version also costs a venv and install.
SUBSET_TESTS := tests/rules tests/auth tests/gateway/test_proxy_e2e.py
test-subset: $(TEST_STAMP) system-deps
	$(VENV)/bin/python -m pytest -q $(SUBSET_TESTS)

# SUBSET_TESTS under every supported Python other than .venv's, each in its own .venv-X.Y;
# a version this machine lacks is reported and skipped. About 1.5 min per version on 2 cores;
# `make test OTHER_PYTHONS=` skips them while iterating locally (CI runs them).
OTHER_PYTHONS ?= $(filter-out $(PYTHON_VERSION),$(SUPPORTED_PYTHONS))
test-other-pythons:
	@[ -n "$(strip $(OTHER_PYTHONS))" ] || echo "== no other Python to test (OTHER_PYTHONS is empty)"
	@for v in $(OTHER_PYTHONS); do \
	  if exe=$$(.ci/python-for $$v 2>/dev/null); then \
	    echo "== Python $$v ($$exe): $(SUBSET_TESTS)"; \
	    $(MAKE) --no-print-directory test-subset VENV=.venv-$$v PYTHON=$$exe || exit 1; \
	  else \
	    echo "== Python $$v: not on this machine, skipped"; \
	  fi; \
	done

$(BENCH_STAMP): $(INSTALL_INPUTS) | $(PY)
	$(PIP) install -q -e '.[test,bench]'
	touch $@ $(STAMP) $(TEST_STAMP)

# The load-test tools, from Debian packages when missing (wrk2 is not packaged: the fixed-rate
# test uses bench/loadgen.py).
bench-deps: system-deps
	@missing=""; \
	command -v nginx >/dev/null || missing="$$missing nginx-light"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# Every config, 3 interleaved runs each, then the fixed-load test; writes docs/performance.md.
# About 7 minutes on 2 cores; loopback only.
bench: $(BENCH_STAMP) bench-deps
	timeout 1500 $(PY) -m bench.run

# The stages one by one (pytest-benchmark): signature, state trip, rules 55/500, metrics, log.
bench-micro: $(BENCH_STAMP) system-deps
	$(PY) -m pytest bench/micro -q -p no:cacheprovider --benchmark-columns=min,median,mean,rounds

# A short end-to-end run of the harness itself (floor, peer, pass-through, full; no doc update).
bench-smoke: $(BENCH_STAMP) bench-deps
	timeout 120 $(PY) -m bench.run --smoke --reps 1 --duration 2 --fixed-duration 2

# The shipped rule pack against a synthetic month of genuine and attack payments (docs/rules.md).
pack-eval: $(STAMP)
	$(PY) -m bench.pack_eval

# The fuzz targets of tests/hardening with a much larger budget (examples per target).
FUZZ_EXAMPLES ?= 2000
fuzz: $(TEST_STAMP) system-deps
	TXGATE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/python -m pytest -q -s -p no:timeout \
	  tests/hardening/test_fuzz_units.py tests/hardening/test_fuzz_http.py tests/hardening/test_fuzz_admin.py

# Mixed traffic against a real gateway; fails on 5xx, transport errors, memory or fd growth.
SOAK_SECONDS ?= 600
soak: $(TEST_STAMP) system-deps
	$(PY) -m bench.soak --duration $(SOAK_SECONDS)

# A Redis primary lost under signed load, Sentinel and cluster, with and without WAIT for a
# replica; checked against what the gateways answered, table written to docs/reliability.md.
# About 5 minutes on 2 cores; loopback only. `make test` runs a short Sentinel version.
failover: $(TEST_STAMP) system-deps
	timeout 600 $(PY) -m bench.failover --write docs/reliability.md

clean:
	rm -rf $(VENV) $(SUPPORTED_PYTHONS:%=.venv-%) build rules/*.so .pytest_cache .hypothesis
