# seqrec: `make demo` and `make test` set themselves up from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-10)

.PHONY: setup test lint demo bench-sasrec clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[train,serve,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(PY) -m ruff check .

test: setup lint
	$(PY) -m pytest -q

# Prepare ML-1M, train SASRec briefly, evaluate and export a bundle.
demo: setup
	$(VENV)/bin/seqrec prepare ml-1m
	$(VENV)/bin/seqrec train --model sasrec --dataset ml-1m --epochs 3 --out runs/demo-sasrec
	$(VENV)/bin/seqrec evaluate runs/demo-sasrec/best.pt --popularity-baseline
	rm -rf artifacts/demo-sasrec
	$(VENV)/bin/seqrec export runs/demo-sasrec/best.pt --out artifacts --name demo-sasrec
	$(VENV)/bin/seqrec serve --bundle artifacts/demo-sasrec --host 127.0.0.1 --port 8000 --examples

bench-sasrec: setup
	$(PY) benchmarks/train_quality.py --model sasrec --dataset ml-1m

clean:
	rm -rf runs artifacts .seqrec_cache .pytest_cache
