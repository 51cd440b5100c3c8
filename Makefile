# On a fresh machine `make demo` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BACKENDS ?= tensorflow jax torch
PYTEST_ARGS ?=

.PHONY: install test test-tensorflow test-jax test-torch test-keras-versions test-keras-min test-keras-next demo bench lint format clean dist one-backend docs docs-assets docs-check chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	# The backends at the lowest versions the extras declare, which are the
	# ones the suite is run on (.ci/backend-versions.txt).
	$(BIN)/pip install --quiet -e ".[tensorflow,jax,torch,demo,dev,docs]" \
		-c .ci/backend-versions.txt
	# keras-hub is only a test peer (its Mixtral MoE block); without its
	# dependencies, which would replace tensorflow-cpu. Its test skips if this fails.
	-$(BIN)/pip install --quiet --no-deps "keras-hub==0.32.0" regex tokenizers || echo "keras-hub not installed: its peer test will be skipped"
	touch $(STAMP)

# `make test` runs the suite once per backend, each in its own process, as
# many at a time as TEST_JOBS (default: the CPU count); a suite's output is
# printed whole when it ends. `make test TEST_JOBS=1` runs them one by one.
TEST_JOBS ?= $(shell nproc 2>/dev/null || echo 1)
# -k: every backend runs and reports, even after one fails.
PARALLEL_MAKE = $(MAKE) --no-print-directory -k -j$(TEST_JOBS) --output-sync=target

test: $(STAMP)
	@$(PARALLEL_MAKE) $(addprefix test-,$(BACKENDS))

# One backend's suite, e.g. `make test-jax`; pytest's cache is kept per
# backend, so that suites running side by side do not share it.
$(addprefix test-,tensorflow jax torch): test-%: $(STAMP)
	@echo "=== pytest on the $* backend ==="
	@start=$$(date +%s); \
	KERAS_BACKEND=$* $(BIN)/python -m pytest -o cache_dir=.pytest_cache/$* $(PYTEST_ARGS); \
	rc=$$?; \
	echo "=== pytest on the $* backend took $$(( $$(date +%s) - start )) s ==="; \
	if [ $$rc -eq 5 ]; then echo "no tests collected on $*"; rc=1; fi; \
	if [ $$rc -ne 0 ]; then echo "FAILED on the $* backend (exit $$rc)"; fi; \
	exit $$rc

# The whole suite on one backend with another Keras, installed without its
# dependencies (those of the latest release suit it) into a folder put first
# on the path: the lowest Keras that pyproject.toml declares, and the next
# Keras (a wheel built from Keras' main branch, in ../shared/keras-next/).
# One backend keeps these runs short: PyTorch ran the suite fastest.
ALT_KERAS_BACKEND ?= torch
ALT_KERAS_DIR := .keras-alt
KERAS_MIN := $(shell sed -n 's/^dependencies = .*"keras>=\([0-9.]*\)".*/\1/p' pyproject.toml)
KERAS_NEXT_WHEEL ?= $(firstword $(wildcard ../shared/keras-next/keras-*.whl))

# $(1): a name for the run, $(2): what pip installs, $(3): the expected version.
define pytest_with_keras
	@test -n "$(2)" || { echo "test-keras-$(1): nothing to install"; exit 1; }
	rm -rf $(ALT_KERAS_DIR)/$(1)
	$(BIN)/pip install --quiet --no-deps --target $(ALT_KERAS_DIR)/$(1) "$(2)"
	@status=0; \
	export PYTHONPATH="$(CURDIR)/$(ALT_KERAS_DIR)/$(1)$${PYTHONPATH:+:$$PYTHONPATH}"; \
	KERAS_BACKEND=$(ALT_KERAS_BACKEND) $(BIN)/python -c \
		"import keras, sys; print('keras', keras.__version__, 'from', keras.__file__); sys.exit(keras.__version__ != '$(3)')" \
		|| { echo "test-keras-$(1): expected Keras $(3)"; exit 1; }; \
	echo "=== pytest with Keras $(3) on the $(ALT_KERAS_BACKEND) backend ==="; \
	KERAS_BACKEND=$(ALT_KERAS_BACKEND) $(BIN)/python -m pytest -o cache_dir=.pytest_cache/keras-$(1) $(PYTEST_ARGS); \
	rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected with Keras $(3)"; rc=1; fi; \
	if [ $$rc -ne 0 ]; then echo "FAILED with Keras $(3) (exit $$rc)"; status=1; fi; \
	exit $$status
endef

# Both of the runs below, side by side as `make test` runs the backends.
test-keras-versions: $(STAMP)
	@$(PARALLEL_MAKE) test-keras-min test-keras-next

test-keras-min: $(STAMP)
	$(call pytest_with_keras,min,keras==$(KERAS_MIN),$(KERAS_MIN))

test-keras-next: $(STAMP)
	$(call pytest_with_keras,next,$(KERAS_NEXT_WHEEL),$(patsubst keras-%-py3-none-any.whl,%,$(notdir $(KERAS_NEXT_WHEEL))))

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
	$(BIN)/python -m benchmarks --backends $(DOCS_BACKEND) --smoke \
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
# has no broken link, nothing runs off the right edge at 1280 px; a screenshot
# of each page goes to docs-screenshots/.
docs-check: chromium
	$(BIN)/python .ci/browse_docs.py site

format: $(STAMP)
	$(BIN)/ruff check --fix src tests examples benchmarks demo
	$(BIN)/ruff format src tests examples benchmarks demo

clean:
	rm -rf $(VENV) $(ALT_KERAS_DIR) build dist site docs-screenshots docs/generated demo-output bench-output .pytest_cache .ruff_cache
