# Two entry points on a fresh machine: `make demo` (the main job on the bundled digits) and
# `make test` (the suite). Each creates or refreshes .venv first, with the exact versions of
# constraints.txt (pyproject.toml holds the ranges a user's own environment may have).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ldae-installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ldae demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/train_vs_timm.py
	$(BIN)/python bench/linprobe.py
	$(BIN)/python bench/pca.py

clean:
	rm -rf $(VENV) runs .pytest_cache
