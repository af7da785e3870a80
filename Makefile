# Herald. `make run` starts everything, `make test` runs lint and the test suite.
# Postgres and Redis: DATABASE_URL / REDIS_URL if set, else the local servers on 127.0.0.1:5432
# and :6379 if they answer, else embedded ones under .run/ (config/backing.py).
#   HERALD_EMBEDDED=1 make test     force embedded servers even when local ones run
#                                   (same as `make embedded-test`)
#   HERALD_KEEP_EMBEDDED=1 make ... leave embedded servers running afterwards (`make stop`)
#   make test PYTEST_ARGS='-x -k tracker'
#   HERALD_PORT=8001 make run       web port (default 8000)
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BACKING := $(PY) -m config.backing
# Interpreter used to create the virtualenv (Python 3.11+, 3.11 preferred): the first of these
# that actually runs (pyenv shims exist for versions that are not installed).
PYTHON_BOOT ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { command -v $$p; break; }; done)

# Procfile entries and recipes call daphne, celery, honcho, ruff, python from the virtualenv.
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

PYTEST_ARGS ?=

.PHONY: help venv run test embedded-test stop migrate bench clean browser-deps

help:
	@echo "make run            start web (http://127.0.0.1:8000), workers and beat with demo data"
	@echo "make test           ruff + import layers (lint-imports) + pytest (PYTEST_ARGS='...' passes options to pytest)"
	@echo "make embedded-test  make test with embedded Postgres/Redis (= HERALD_EMBEDDED=1 make test)"
	@echo "make migrate        apply migrations"
	@echo "make stop           stop embedded Postgres/Redis left running under .run/"
	@echo "make bench          run bench/run_all.py"
	@echo "make browser-deps   install Debian's Chromium for the browser test (root; skipped without it)"
	@echo "make clean          stop embedded servers and remove .run/"

venv: $(STAMP)

$(PY):
	@test -n "$(PYTHON_BOOT)" || { echo "Python 3.11+ not found (set PYTHON_BOOT=/path/to/python3)" >&2; exit 1; }
	$(PYTHON_BOOT) -m venv $(VENV)

$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

run: venv
	DJANGO_SETTINGS_MODULE=config.settings.local $(BACKING) run -- sh -c 'python manage.py migrate --noinput && python manage.py collectstatic --noinput -v0 && python manage.py herald_demo && exec honcho start -f Procfile'

test: venv
	ruff check .
	lint-imports
	DJANGO_SETTINGS_MODULE=config.settings.test $(BACKING) run -- python -m pytest $(PYTEST_ARGS)

embedded-test:
	HERALD_EMBEDDED=1 $(MAKE) test

migrate: venv
	DJANGO_SETTINGS_MODULE=config.settings.local $(BACKING) run -- python manage.py migrate --noinput

bench: venv
	$(BACKING) run -- python bench/run_all.py $(BENCH_ARGS)

# The live-page browser test drives Debian's Chromium through Playwright (never `playwright install`).
browser-deps:
	@if [ -x /usr/bin/chromium ]; then echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	else echo "chromium missing and cannot install it here (needs root and apt-get): the browser test will be skipped"; fi

stop: venv
	$(BACKING) stop

clean:
	@if [ -x $(PY) ]; then $(BACKING) stop; fi
	rm -rf .run
