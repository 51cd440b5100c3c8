# On a fresh machine `make demo` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BACKENDS ?= tensorflow jax torch
PYTEST_ARGS ?=

.PHONY: install test demo bench lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[tensorflow,jax,torch,demo,dev]"
	# keras-hub is only a test peer (its Mixtral MoE block); without its
	# dependencies, which would replace tensorflow-cpu. Its test skips if this fails.
	-$(BIN)/pip install --quiet --no-deps "keras-hub==0.32.0" regex tokenizers || echo "keras-hub not installed: its peer test will be skipped"
	touch $(STAMP)

test: $(STAMP)
	@status=0; \
	for backend in $(BACKENDS); do \
		echo "=== pytest on the $$backend backend ==="; \
		KERAS_BACKEND=$$backend $(BIN)/python -m pytest $(PYTEST_ARGS); \
		rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "no tests collected on $$backend"; rc=1; fi; \
		if [ $$rc -ne 0 ]; then echo "FAILED on the $$backend backend (exit $$rc)"; status=1; fi; \
	done; \
	exit $$status

demo: $(STAMP)
	$(BIN)/keras-tether demo --out demo-output

bench: $(STAMP)
	$(BIN)/keras-tether bench --out bench-output/bench.json

lint: $(STAMP)
	$(BIN)/ruff check src tests examples
	$(BIN)/ruff format --check src tests examples

format: $(STAMP)
	$(BIN)/ruff check --fix src tests examples
	$(BIN)/ruff format src tests examples

clean:
	rm -rf $(VENV) build dist demo-output bench-output .pytest_cache .ruff_cache
