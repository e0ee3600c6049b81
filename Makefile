# torch2coreml — the two commands: `make run` and `make test`.
# The Python environment (torch, coremltools: ~4 GB) lives in a cache outside the clone, keyed
# by a hash of requirements.txt, so a fresh clone reuses it; `.venv` is a link to it.

SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/torch2coreml
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
VENV_DIR := $(CACHE)/venv-$(REQ_HASH)
PY := .venv/bin/python
CT_FIXTURES := fixtures/coremltools/out
# Traced model zoo (torchvision + Hugging Face, random weights; MiniLM real): ~200 MB, built
# once into the cache (about 80 s), never committed.
ZOO := $(CACHE)/zoo
export T2C_ZOO := $(ZOO)
RUN_MODEL := fixtures/torchscript/convnet.pt
RUN_OUT := target/run/ConvNet.mlpackage

.PHONY: setup test run fixtures bench

setup:
	@if [ ! -f "$(VENV_DIR)/.installed" ]; then \
	  echo "setup: installing the Python environment into $(VENV_DIR) (first run only)"; \
	  python3 -m venv "$(VENV_DIR)" && \
	  "$(VENV_DIR)/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt && \
	  touch "$(VENV_DIR)/.installed"; \
	fi
	@ln -sfn "$(VENV_DIR)" .venv
	@$(MAKE) --no-print-directory fixtures
	@$(PY) fixtures/zoo/make.py $(ZOO) > $(CACHE)/zoo.log 2>&1 || (tail -20 $(CACHE)/zoo.log; exit 1)

# Packages coremltools writes for small torch models; made only when missing.
fixtures:
	@if [ ! -f "$(CT_FIXTURES)/histograms.json" ]; then \
	  echo "setup: converting coremltools fixtures"; \
	  $(PY) fixtures/coremltools/make.py $(CT_FIXTURES); \
	fi

# Unit + CLI tests, then the oracle checks (ignored in a plain `cargo test`: they need .venv).
test: setup
	cargo test --all-targets -- --include-ignored

# The main job on the bundled default: convert a traced model, then inspect the package.
run: setup
	@mkdir -p target/run
	cargo run --quiet --release -- convert $(RUN_MODEL) -o $(RUN_OUT) --input x:1x3x6x6:fp32
	cargo run --quiet --release -- inspect $(RUN_OUT)
