"""`make bench`: runs the benchmarks in one process tree and writes bench/RESULTS.md (also
printed): part 1 `torch2coreml convert` vs coremltools on Whisper encoders
(bench/convert_bench.py), part 2 the MIL interpreter vs libtorch CPU (bench/interp_bench.py),
part 3 Whisper transcription by converted packages vs PyTorch (bench/speech_bench.py), part 4
palettizing whisper-small at 4 bits, ours vs coremltools (bench/compress_bench.py), part 5 the
zoo's `.pt2` programs vs its `.pt` traces, ours and `ct.convert(exported_program)`
(bench/export_bench.py),
with the machine, versions and load average they ran under.

Run: `.venv/bin/python bench/run.py BENCH_DIR [RESULTS.md]` after bench/make_whisper.py and
bench/make_resnet.py have filled BENCH_DIR and the release binary and the `bench_interp`
example are built (the Makefile's `bench` target does all of this). Progress goes to stderr.
"""

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
import time

import compress_bench
import convert_bench
import export_bench
import interp_bench
import speech_bench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RESULTS = os.path.join(REPO, "bench", "RESULTS.md")
GIB = 1024 ** 3


def log(line):
    print(line, file=sys.stderr, flush=True)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit():
    def git(*args):
        return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True,
                              check=False).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" (with uncommitted changes)" if git("status", "--porcelain") else "")


def load():
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv):
    if len(argv) not in (2, 3):
        sys.exit(f"usage: {argv[0]} BENCH_DIR [RESULTS.md]")
    bench_dir = argv[1]
    results = argv[2] if len(argv) == 3 else DEFAULT_RESULTS
    start = time.time()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = load()

    log("part 1: convert, ours vs coremltools")
    convert_rows = convert_bench.measure_all(bench_dir, log)
    log("part 2: interpreter vs libtorch")
    interp_rows = interp_bench.measure_all(bench_dir, log)
    log("part 3: Whisper transcription, interpreter vs PyTorch")
    speech_result = speech_bench.measure_all(bench_dir, log)
    log("part 4: palettizing, ours vs coremltools")
    compress_result = compress_bench.measure_all(bench_dir, log)
    log("part 5: torch.export programs vs traces, ours and coremltools")
    export_rows = export_bench.measure_all(bench_dir, log)
    total = time.time() - start

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    text = f"""# torch2coreml benchmarks

Written by `make bench` (bench/run.py); regenerate, do not edit.

- date: {date}; commit {git_commit()}
- machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}, {ram:.1f} GiB RAM, {platform.system()} {platform.release()}
- torch {importlib.metadata.version("torch")}, coremltools {importlib.metadata.version("coremltools")}, Python {platform.python_version()}
- load average (1/5/15 min) before: {load_before}; after: {load()}. Other processes on the machine skew timings, libtorch with several threads most.
- benchmark time: {total:.0f} s

## 1. Convert: `torch2coreml convert` vs `coremltools.convert`

Traced Whisper encoders (random weights), input `input_features` [1, 80, 3000], ML Program,
iOS16, fp16. Each conversion is its own process; wall seconds and peak RSS (`ru_maxrss`) are
the process's. "process" is the coremltools process's wall time including Python and library
imports (what a build step pays); "convert call" is torch.jit.load + ct.convert + save alone.
"floor" is `examples/bench_floor.rs`: the least any converter must do, reading the `.pt`'s fp32
storages, casting them to fp16 and writing them to one file on all cores (the same writer as
ours), with no parsing, passes or protobuf; it and ours alternate, so both see the same machine.
Speedups divide by our median. MB = 10^6 bytes.

{convert_bench.table(convert_rows)}

## 2. Interpreter vs libtorch CPU

Median of {interp_bench.RUNS} runs after warm-up. Interpreter: `examples/bench_interp.rs`
(`interp::Prepared`: constants converted once; large GEMMs, softmax rows and element-wise maps are split over all cores,
`T2C_THREADS` caps them) on our package at `--precision fp16` (every op output rounded to
fp16) and `--precision fp32`. libtorch: `torch.jit.load` of the same `.pt`, `torch.set_num_threads`,
`torch.inference_mode`. The goal divides by libtorch with {interp_bench.TORCH_THREADS} threads;
the 1-thread ratios are shown too because they hold up better when the load average exceeds
the CPU count, where multi-threaded libtorch slows down most.
Inputs: resnet18 [1, 3, 224, 224]; whisper-tiny encoder [1, 80, 3000].

{interp_bench.table(interp_rows)}

## 3. Whisper tiny.en transcription: interpreter vs PyTorch CPU

One ~30 s window ({speech_bench.UTTERANCE}, the test bed's longest utterance), greedy, English, no
timestamps. Interpreter: `examples/bench_speech.rs` (one run, kernels on all cores) on the package interface
traced from the real weights and converted by `torch2coreml convert` (encoder and decoder at
fp16 or fp32; the mel front end fp32). PyTorch: transformers' feature extractor + `generate`,
median of {speech_bench.RUNS} after a warm-up. "transcribe" is log-mel + encoder + every decoder step.

{speech_bench.table(speech_result)}

## 4. Palettizing: `convert --compress palettize:4` vs `coremltools.optimize.coreml.palettize_weights`

The whisper-small encoder (random weights) at 4 bits, one k-means table per tensor, weights of
at least 2048 elements (both tools' default). Ours converts from the `.pt` and palettizes
(deterministic 1-D k-means on all cores); coremltools loads our uncompressed package of the
same encoder, palettizes it (`OpPalettizerConfig(nbits=4, mode="kmeans")`) and saves. PSNR:
each result run in our interpreter against the uncompressed package, worst output.

{compress_bench.table(compress_result)}

## 5. `torch.export` programs (`.pt2`) vs traces (`.pt`), ours and `ct.convert(exported_program)`

The test zoo (fixtures/zoo/make.py: torchvision classifiers and Hugging Face models with small
random configs), each traced and exported. Ours: `torch2coreml convert`, each run its own
process, median of {export_bench.OURS_RUNS}. coremltools 9.0: `torch.export.load` +
`run_decompositions({{}})` + `ct.convert` + save in one process (imports not counted), once.

{export_bench.table(export_rows)}
"""
    with open(results, "w") as f:
        f.write(text)
    print(text)
    log(f"wrote {results}")


if __name__ == "__main__":
    main(sys.argv)
