# `make demo` and `make test` each build .venv when it is missing, then do their whole job.
# --no-compile: Python compiles only the modules that are imported, when they first are
# (a minute less than pip compiling every file of torch, ray and the platform clients).
# Some machines set PYTHONDONTWRITEBYTECODE=1; then every process (each Ray worker, each CLI
# call) compiles torch, Ray and pandas from source again: 5-10 s of CPU a process on 2 cores.
# Here Python keeps the bytecode it compiles, in .venv and the project's __pycache__ folders.
unexport PYTHONDONTWRITEBYTECODE

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml constraints.txt tests/plugins/acme/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile -c constraints.txt -e '.[dev]'
	$(PY) -m pip install --quiet --no-compile --no-deps -e tests/plugins/acme
	touch $(STAMP)

demo: $(STAMP)
	rm -rf demo_out  # the demo's own folder: tessera refuses to write into a used one
	$(VENV)/bin/tessera predict examples --model faces/mtcnn --out demo_out --visualize --no-progress
	@echo "visualizations in demo_out/visualizations, predictions in demo_out/predictions.jsonl"

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/sessions.py
	$(PY) benchmarks/tiling.py
	$(PY) benchmarks/large_image.py
	$(PY) benchmarks/video.py
	$(PY) benchmarks/upload.py
	$(PY) benchmarks/serve_load.py
	$(PY) benchmarks/small_jobs.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) demo_out .pytest_cache
