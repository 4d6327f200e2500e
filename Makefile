# Quick start: `make demo` (end to end on a built-in model), `make test` (the whole suite). Both set up .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/hfport: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(BIN)/hfport

install: $(BIN)/hfport

demo: install
	$(BIN)/hfport demo --workdir demo-output --force

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-output
