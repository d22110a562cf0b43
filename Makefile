# Gearman HQ. `make run` and `make test` work on a fresh Debian 12 machine (as root they
# install the missing Debian packages). Scripts live in scripts/; state in var/.
SHELL := /bin/bash
.DEFAULT_GOAL := help
.NOTPARALLEL:
.DELETE_ON_ERROR:

VENV      := .venv
STAMP_RUN := $(VENV)/.stamp-run
STAMP_DEV := $(VENV)/.stamp-dev
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help deps deps-test deps-bench venv venv-dev static run test pytest lint bench services status stop clean distclean

help:
	@echo "make run        install what running needs, start everything (Postgres, Redis, gearmand,"
	@echo "                tap, web, Celery, demo); Ctrl-C stops it"
	@echo "make test       also install the test tools, then lint + the whole test suite against real"
	@echo "                Postgres/Redis/gearmand"
	@echo "make pytest     the test suite without lint (PYTEST_ARGS='-k name -x')"
	@echo "make lint       ruff check + mypy + lint-imports (the layer contracts)"
	@echo "make bench      run bench/*.py (each prints a table; installs the PHP and CLI Gearman clients)"
	@echo "make services   start Postgres/Redis (private ones under var/ when needed) and leave them up"
	@echo "make status     what answers where; make stop  stop everything started under var/"
	@echo "make deps       the Debian packages make run needs (installed as root, else named);"
	@echo "                make deps-test  also the test-only ones (Chromium, PHP/Perl/CLI clients)"
	@echo "make venv       .venv + pip install -e . (runtime deps); make venv-dev  pip install -e '.[dev]'"
	@echo "                (also pytest, Playwright, ruff, mypy)"
	@echo "make clean      stop + remove var/ and caches; make distclean  also .venv"

# Two levels. make run needs only deps + venv (what the product runs); make test, pytest
# and lint add the test tools: deps-test (Chromium, PHP/Perl/CLI Gearman clients) and
# venv-dev ('.[dev]': pytest, Playwright, ruff, mypy...). make bench needs the PHP and CLI
# clients but no test tools.
deps:
	@bash scripts/bootstrap.sh deps run

deps-test:
	@bash scripts/bootstrap.sh deps test

deps-bench:
	@bash scripts/bootstrap.sh deps bench

venv: $(STAMP_RUN)

venv-dev: $(STAMP_DEV)

# Each level re-installs only when pyproject.toml is newer than its stamp. A dev install
# touches both stamps ('.[dev]' includes the runtime dependencies), so make run after
# make test installs nothing; make test after make run adds the dev extras.
# The install also compiles the tap's per-packet broker modules (setup.py, mypyc), so an
# edit to broker/ installs again too: until then those modules run as pure Python.
HOT_SRC := setup.py $(wildcard broker/*.py)

$(STAMP_RUN): pyproject.toml $(HOT_SRC)
	@bash scripts/bootstrap.sh venv run

$(STAMP_DEV): pyproject.toml $(HOT_SRC)
	@bash scripts/bootstrap.sh venv dev

# Front-end libraries from the npm registry, copied into static/vendor/ (not committed).
# (After venv-dev in test's prerequisites: a dev install has already satisfied venv.)
static: venv
	@bash scripts/vendor_static.sh

run: deps venv static
	@bash scripts/run.sh

test: deps-test venv-dev static
	@$(MAKE) --no-print-directory lint
	@bash scripts/test.sh

pytest: deps-test venv-dev static
	@bash scripts/test.sh

lint: venv-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

bench: deps-bench venv
	@bash scripts/bench.sh

services: deps venv
	@bash scripts/services.sh up

status:
	@bash scripts/services.sh status

stop:
	@bash scripts/services.sh down

clean: stop
	rm -rf var staticfiles .pytest_cache .mypy_cache .ruff_cache test-artifacts
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
	@# A private Postgres relocated out of an unreachable checkout (see scripts/services.sh).
	rm -rf /var/tmp/gearman-hq-$$(printf '%s' "$(CURDIR)" | md5sum | cut -c1-10)

distclean: clean
	rm -rf $(VENV)
