# On a fresh machine `make demo` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BACKENDS ?= tensorflow jax torch
PYTEST_ARGS ?=

.PHONY: install test demo bench lint format clean dist one-backend docs docs-assets docs-check chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[tensorflow,jax,torch,demo,dev,docs]"
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
	$(BIN)/python -m demo --out demo-output

bench: $(STAMP)
	$(BIN)/python -m benchmarks --out bench-output/bench.json

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks demo
	$(BIN)/ruff format --check src tests examples benchmarks demo

# The sdist and the wheel, checked as PyPI checks an upload.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist .
	$(BIN)/twine check --strict dist/*

# The wheel in a fresh venv with JAX only: the README's blocks and the examples.
one-backend: dist
	PYTHON=$(PYTHON) .ci/one_backend_install dist/*.whl jax

# The demo's report and a quick benchmark chart, which the site shows; on one
# backend, to keep the build short.
DOCS_BACKEND ?= jax
docs-assets: $(STAMP)
	KERAS_BACKEND=$(DOCS_BACKEND) $(BIN)/python -m demo --out docs/generated/demo
	$(BIN)/python -m benchmarks --backends $(DOCS_BACKEND) --quick \
		--out docs/generated/bench/bench.json

# The documentation site, in site/, with warnings as errors.
docs: docs-assets
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Debian's Chromium, for the browser check; skipped there if it cannot be had.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends chromium) \
		|| echo "chromium could not be installed: the browser check will skip"

# The site `make docs` built, in headless Chromium: it renders, navigates and
# has no broken link.
docs-check: chromium
	$(BIN)/python .ci/browse_docs.py site

format: $(STAMP)
	$(BIN)/ruff check --fix src tests examples benchmarks demo
	$(BIN)/ruff format src tests examples benchmarks demo

clean:
	rm -rf $(VENV) build dist site docs/generated demo-output bench-output .pytest_cache .ruff_cache
