# Two entry points (see README): `make demo` and `make test`.
# Each creates .venv on first use with exactly pinned dependencies.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# torch first and exactly pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q $(FIND_LINKS) "torch==2.13.0"
	$(PY) -m pip install -q $(FIND_LINKS) -e ".[test]"
	touch $(STAMP)

.PHONY: setup demo test gui
setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bertdesk demo

test: $(STAMP)
	$(PY) tests/run_all_backends.py

gui: $(STAMP)
	$(VENV)/bin/bertdesk gui
