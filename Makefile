# seqrec: `make demo` and `make test` set themselves up from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp names this checkout as well as pyproject.toml: an editable install points at one tree.
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; echo $(CURDIR)) | sha1sum | cut -c1-10)

.PHONY: setup test lint browser demo serve bench-sasrec bench-serve bench-ann clean

# Installed files are byte-compiled on every core afterwards, not by pip one at a time (pip's own pass
# was 51 s of a 122 s install on 2 cores; this one 37 s of wall time). Some compilation there must be:
# where PYTHONDONTWRITEBYTECODE is set (as in many CI images), an install without it recompiles torch
# in every test process (the suite took 20% longer). A file that is not Python 3 (a template, test
# data) fails to compile here as it does under pip, harmlessly: hence the `-`.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --no-compile -e '.[train,serve,dev]'
	-$(PY) -m compileall -qq -j 0 $(VENV)/lib
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

ifeq ($(abspath $(VENV)),$(CURDIR)/.venv)
setup: $(STAMP)
else
# Another checkout's venv (make bench-serve VENV=../main/.venv) is used as it is: installing into it
# would re-point its editable install at this checkout. This tree's code comes first on the path.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
setup:
	@test -x $(PY) || { echo "VENV=$(VENV) has no bin/python: create it with make setup in its own checkout"; exit 1; }
	@echo "using $(VENV) as it is, with this checkout ($(CURDIR)) first on PYTHONPATH"
endif

# ruff, the layering contract in pyproject.toml ([tool.importlinter]; docs/architecture.md), then
# mypy, strict on app/ ([tool.mypy]).
lint: setup
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

# One pytest-xdist worker more than there are cores (at most 4): many tests wait on a subprocess,
# a socket or a timer, and the extra worker fills those waits (on 2 cores: 397 s against 455 s).
WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(4, len(os.sched_getaffinity(0)) + 1))')
# compileall first: where PYTHONDONTWRITEBYTECODE is set, nothing is cached on import, and each of
# the suite's many server, CLI and torchrun processes would compile this tree again (0.35 s each).
# pytest runs with it unset: pytest caches its assert-rewritten modules (the tests and 400-odd
# plugin modules) only where bytecode may be written; else every worker rewrites them all at
# collection (15 s of a worker's 28 s on a 2-core EPYC).
test: setup lint browser
	$(PY) -m compileall -q -j 0 app training models tests benchmarks scripts > /dev/null
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -n $(WORKERS) --dist loadscope --no-loadscope-reorder

# Headless Chromium + chromedriver (Debian packages) for the demo-page test in tests/deploy.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; \
	fi

# Prepare ML-1M (fetched when absent: seqrec download ml-1m), train recipes/demo-ml-1m.toml (~2 min),
# evaluate, export, then serve it on 127.0.0.1:8000 (prints two curl examples).
demo: setup
	$(VENV)/bin/seqrec demo --recipe recipes/demo-ml-1m.toml

bench-sasrec: setup
	$(PY) -m benchmarks.training.train_quality --recipe recipes/sasrec-ml-1m.toml

# Serve an existing bundle: make serve BUNDLE=artifacts/demo-sasrec
BUNDLE ?= artifacts/demo-sasrec
serve: setup
	$(VENV)/bin/seqrec serve --bundle $(BUNDLE) --examples

# Serving benchmarks need an ML-1M SASRec bundle (BENCH_BUNDLE); this trains a quick one if absent.
BENCH_BUNDLE ?= artifacts/bench-sasrec-ml1m
$(BENCH_BUNDLE): | setup
	$(VENV)/bin/seqrec train --model sasrec --dataset ml-1m --epochs 1 --max-users 1500 --out runs/bench-sasrec-ml1m
	$(VENV)/bin/seqrec export runs/bench-sasrec-ml1m/best.pt --out $(dir $(BENCH_BUNDLE)) --name $(notdir $(BENCH_BUNDLE))

# The per-user recurrent state is measured on a GRU4Rec bundle, trained the same quick way.
BENCH_GRU_BUNDLE ?= artifacts/bench-gru4rec-ml1m
$(BENCH_GRU_BUNDLE): | setup
	$(VENV)/bin/seqrec train --model gru4rec --dataset ml-1m --epochs 1 --max-users 1500 --set task.parallel=padded --out runs/bench-gru4rec-ml1m
	$(VENV)/bin/seqrec export runs/bench-gru4rec-ml1m/best.pt --out $(dir $(BENCH_GRU_BUNDLE)) --name $(notdir $(BENCH_GRU_BUNDLE))

# The per-user cache against "today's path": this tree with the cache off, or a checkout of the
# released service (make bench-serve BASELINE=/tmp/base after git worktree add /tmp/base <commit>).
# The README's serving figures are user_cache.py's: capacity (the highest offered rate whose read p99
# stays within 20 ms, pure reads and the 10:1 mix) and POST /events events/s, on the CPU it names.
BASELINE ?=
BASELINE_ARG := $(if $(BASELINE),--baseline-tree $(BASELINE))
bench-serve: setup $(BENCH_BUNDLE) $(BENCH_GRU_BUNDLE)
	$(PY) -m benchmarks.serving.serve_load --bundle $(BENCH_BUNDLE) --users 3000 --seconds 15 --workers 2 --conns 1 8 16 32 --out benchmarks/results/serving/serve
	$(PY) -m benchmarks.serving.user_cache --bundle $(BENCH_BUNDLE) --seconds 6 --repeats 2 --users 2000 --sweep 1000:8000:500 --p99-ms 20 $(BASELINE_ARG) --out benchmarks/results/serving/user_cache.json
	$(PY) -m benchmarks.serving.user_cache --bundle $(BENCH_GRU_BUNDLE) --history 100 --seconds 5 --repeats 2 --users 2000 $(BASELINE_ARG) --out benchmarks/results/serving/user_cache-gru4rec.json
	$(PY) -m benchmarks.models.incremental_attention --out benchmarks/results/models/incremental_attention.json
	$(PY) -m benchmarks.serving.request_path --bundle $(BENCH_BUNDLE) --out benchmarks/results/serving/request_path.json
	$(PY) -m benchmarks.live.online_overhead --bundle $(BENCH_BUNDLE) --out benchmarks/results/live/online_overhead.json

bench-ann: setup $(BENCH_BUNDLE)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[bench]'
	$(PY) -m benchmarks.serving.ann_recall --bundle $(BENCH_BUNDLE) --queries 500 --out benchmarks/results/serving/ann.json
	$(PY) -m benchmarks.serving.ann_recall --bundle $(BENCH_BUNDLE) --queries 500 --million 1000000 --out benchmarks/results/serving/ann_1m.json

clean:
	rm -rf runs artifacts .seqrec_cache .pytest_cache
