# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test system-deps bench bench-deps bench-micro bench-smoke pack-eval clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[test]'
	touch $@ $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/txgate demo --once

# Real servers and real clients the tests talk to, from Debian packages when missing.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v oathtool >/dev/null || missing="$$missing oathtool"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: $(TEST_STAMP) system-deps
	$(VENV)/bin/python -m pytest -q

$(BENCH_STAMP): pyproject.toml | $(PY)
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
	timeout 900 $(PY) -m bench.run

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

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
