"""Part 3 of `make bench`: Whisper tiny.en transcribing about 30 s of audio (the test bed's
longest utterance, espeak_long01, 26.9 s, one window) with converted packages in our MIL
interpreter (examples/bench_speech.rs, kernels on all cores) next to PyTorch CPU (transformers'
feature extractor, encoder and greedy `generate`, the reference run_testbed.py times).

The packages are what `torch2coreml convert WHISPER_DIR -o OUT --precision fp16|fp32` writes
from the safetensors folder.

Run: `.venv/bin/python bench/speech_bench.py BENCH_DIR` prints the table; bench/run.py calls
`measure_all` and `table`. Expects target/release/torch2coreml and
target/release/examples/bench_speech to be built and the Whisper test bed in the cache.
"""

import json
import os
import statistics
import sys
import time

import measure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(REPO, "target", "release", "torch2coreml")
BENCH_SPEECH = os.path.join(REPO, "target", "release", "examples", "bench_speech")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "torch2coreml", "whisper")
WHISPER_DIR = os.environ.get("T2C_WHISPER_DIR", os.path.join(CACHE, "whisper-tiny.en"))
AUDIO_DIR = os.environ.get("T2C_WHISPER_AUDIO", os.path.join(CACHE, "audio"))
UTTERANCE = "espeak_long01"
PRECISIONS = ["fp16", "fp32"]
# tiny.en sizes: 4 decoder layers, d_model 384, 448 decoder positions, 1500 encoder frames.
# PyTorch: median of RUNS timed runs after one warm-up, at each thread count.
RUNS = 3
TORCH_THREADS = [2, 1]
# The goal: converted packages in the interpreter within GOAL_RATIO× of PyTorch's time
# with GOAL_TORCH_THREADS threads (the reference machine's 2 cores).
GOAL_RATIO = 2.0
GOAL_TORCH_THREADS = 2


def packages(bench_dir, precision):
    """Converts the Whisper folder at `precision` (`convert WHISPER_DIR -o OUT`); returns OUT."""
    out = os.path.join(bench_dir, "out", f"whisper_speech_{precision}")
    measure.run([OURS, "convert", WHISPER_DIR, "-o", out, "--precision", precision])
    return out


def torch_times(wav):
    """transformers on CPU: feature extraction, encoder, and encoder + greedy generate (seconds)."""
    import soundfile as sf
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration
    audio, _ = sf.read(wav, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    fe = WhisperFeatureExtractor.from_pretrained(WHISPER_DIR)
    model = WhisperForConditionalGeneration.from_pretrained(WHISPER_DIR, dtype=torch.float32).eval()
    rows = {}
    for threads in TORCH_THREADS:
        torch.set_num_threads(threads)
        times = {"mel_s": [], "encoder_s": [], "total_s": []}
        tokens = 0
        with torch.inference_mode():
            for i in range(RUNS + 1):
                t0 = time.perf_counter()
                feats = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
                t1 = time.perf_counter()
                model.model.encoder(feats)
                t2 = time.perf_counter()
                seq = model.generate(input_features=feats, num_beams=1, do_sample=False, return_timestamps=False)
                t3 = time.perf_counter()
                tokens = len(seq[0])
                if i > 0:
                    times["mel_s"].append(t1 - t0)
                    times["encoder_s"].append(t2 - t1)
                    times["total_s"].append((t1 - t0) + (t3 - t2))  # features + generate (encoder included)
        rows[threads] = {k: statistics.median(v) for k, v in times.items()}
        rows[threads]["tokens"] = tokens
    return rows


def measure_all(bench_dir, log=print):
    wav = os.path.join(AUDIO_DIR, f"{UTTERANCE}.wav")
    result = {"interp": {}, "torch": {}}
    for precision in PRECISIONS:
        m = measure.run([BENCH_SPEECH, packages(bench_dir, precision), wav])
        result["interp"][precision] = json.loads(m.stdout)
        log(f"  interpreter {precision}: {result['interp'][precision]['total_s']:.2f} s, "
            f"{result['interp'][precision]['tokens']} tokens")
    result["torch"] = torch_times(wav)
    for threads, r in result["torch"].items():
        log(f"  PyTorch {threads} thread(s): {r['total_s']:.2f} s")
    return result


def table(result):
    """Markdown table of `measure_all`'s result."""
    lines = ["| runtime | audio s | tokens | log-mel s | encoder s | transcribe s (all) | × real time |",
             "|---|--:|--:|--:|--:|--:|--:|"]
    audio_s = next(iter(result["interp"].values()))["audio_s"]
    for p, r in result["interp"].items():
        lines.append(f"| interpreter {p} ({r['threads']} thread(s)) | {audio_s:.1f} | {r['tokens']} | {r['mel_s']:.3f} | "
                     f"{r['encoder_s']:.3f} | {r['total_s']:.2f} | {r['total_s'] / audio_s:.2f} |")
    for threads, r in result["torch"].items():
        lines.append(f"| PyTorch CPU, {threads} thread(s) | {audio_s:.1f} | {r['tokens']} | "
                     f"{r['mel_s']:.3f} | {r['encoder_s']:.3f} | {r['total_s']:.2f} | {r['total_s'] / audio_s:.2f} |")
    goal_torch = result["torch"].get(GOAL_TORCH_THREADS)
    if goal_torch:
        ratios = {p: r["total_s"] / goal_torch["total_s"] for p, r in result["interp"].items()}
        verdict = "met" if all(x <= GOAL_RATIO for x in ratios.values()) else "missed"
        lines += ["", f"Goal (transcription within {GOAL_RATIO:g}× of PyTorch CPU with {GOAL_TORCH_THREADS} threads): "
                  + verdict + ", " + ", ".join(f"{p} {x:.2f}×" for p, x in ratios.items()) + "."]
    texts = {p: r["text"] for p, r in result["interp"].items()}
    lines += ["", "Interpreter transcripts: " + "; ".join(f"{p}: \"{t}\"" for p, t in texts.items())]
    return "\n".join(lines)


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} BENCH_DIR")
    print(table(measure_all(argv[1])))


if __name__ == "__main__":
    main(sys.argv)
