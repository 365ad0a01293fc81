# Two commands on a fresh machine:
#   make run    the full pipeline on the embedded default data (recipes/cpu-speedrun.toml)
#   make test   install everything (incl. the peer libraries used as oracles) and run the tests
# Every pip install goes through constraints.txt so that no dependency can swap the torch build.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
PIPC    := $(PIP) install -c constraints.txt
RECIPE  ?= recipes/cpu-speedrun.toml
PYTEST_ARGS ?=

.PHONY: run test tiny bench experiments clean help

help:
	@echo "make run    - full pipeline with $(RECIPE) (report: runs/<name>/report.md)"
	@echo "make test   - install dev extras and run the test suite"
	@echo "make tiny   - the whole pipeline on recipes/tiny.toml (~2 min)"
	@echo "make bench  - run every benchmark in quick mode, then the slow tests"
	@echo "make experiments - every experiment (lmstack experiment all; reports in runs/experiments/)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.core: $(PY) pyproject.toml constraints.txt
	$(PIPC) --quiet torch==2.13.0
	$(PIPC) --quiet -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.core Makefile
	$(PIPC) --quiet -e ".[dev,serve,ray]"
	@touch $@

# System packages some tests use as peers: Chromium (the web chat page in a real browser) and
# espeak-ng (speech synthesis for the speech-to-text data). Installed with apt where we are root;
# elsewhere those tests skip and say why. Best effort: a failure here never fails `make test`.
SYSTEM_PACKAGES := chromium espeak-ng
$(VENV)/.system: | $(PY)
	-@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "installing$$missing (apt)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null 2>&1 \
	      || echo "could not install$$missing: the tests that need them will be skipped"; fi; \
	else echo "not root or no apt: $(SYSTEM_PACKAGES) not installed; the tests that need them will be skipped"; fi
	@touch $@

run: $(VENV)/.core
	$(VENV)/bin/lmstack run --recipe $(RECIPE)

tiny: $(VENV)/.core
	$(VENV)/bin/lmstack run --recipe recipes/tiny.toml

# llama.cpp (llama-cpp-python compiles it from source, 10-60+ min on 2 cores, so `make bench` builds it and
# `make test` does not): best effort, like .system; a failed build
# only makes the llama.cpp parity tests skip.
$(VENV)/.llamacpp: | $(VENV)/.core
	@echo "building llama-cpp-python from source (best effort, 10+ min; log: $(VENV)/llamacpp.log)"
	-@$(PIPC) -e ".[llamacpp]" >$(VENV)/llamacpp.log 2>&1 \
	  || echo "could not build llama-cpp-python: the llama.cpp parity tests will be skipped"
	@touch $@

test: $(VENV)/.dev $(VENV)/.system
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Some benchmarks (compress, serve --run, rag --run) measure the default run's model: make it first.
runs/speedrun/manifest.json: | $(VENV)/.core
	$(MAKE) run

bench: $(VENV)/.dev $(VENV)/.llamacpp runs/speedrun/manifest.json
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b --quick || exit 1; done
	$(PY) -m pytest -q -m slow

experiments: $(VENV)/.dev
	$(VENV)/bin/lmstack experiment all

clean:
	rm -rf runs benchmarks/out
