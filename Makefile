# Every target builds .venv from a bare Python 3.11 on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
IMAGES ?=
PYTEST_ARGS ?=

.PHONY: install lint test wheel-check test-min demo bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel "setuptools<81"
	# torch pinned: 2.13.0 is a CPU wheel on this machine's disk; an unpinned torch pulls a CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,dlib,voice,video,quant]" "torch==2.13.0"
	# the face_recognition baseline for benchmarks/bench_faces.py, without its dlib source build
	$(PY) -m pip install --quiet --no-deps face_recognition==1.3.0
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check persona_ml scripts benchmarks tests tools

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest tests $(PYTEST_ARGS)

# The wheel as a GPU worker gets it: built, installed into a fresh venv outside the repo, smoke-tested
# from another folder (rules without torch, a face embedding, 5 training steps, one image).
wheel-check:
	PYTHON=$(PYTHON) bash tools/wheel_check.sh

# The declared dependency floors, installed exactly, under the unit tests (see tools/test_min.sh).
test-min:
	PYTHON=$(PYTHON) bash tools/test_min.sh

demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) scripts/demo.py $(if $(IMAGES),--images $(IMAGES),)

bench: $(STAMP)
	$(PY) benchmarks/bench_faces.py
	$(PY) benchmarks/bench_dataset.py
	$(PY) benchmarks/bench_screening.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_swap.py
	$(PY) benchmarks/bench_video.py
	$(PY) benchmarks/bench_voice.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
