"""Part 2 of `make bench`: the MIL interpreter (examples/bench_interp.rs, single-threaded)
against libtorch on CPU (bench/torch_time.py) on resnet18 at 224×224 and the whisper-tiny
encoder. Each model is converted twice (`--precision fp16`, the default, whose emulation rounds
every op output to fp16, and `--precision fp32`). Goal (the issue): interpreter time within
GOAL_RATIO× of libtorch with TORCH_THREADS threads.

Run: `.venv/bin/python bench/interp_bench.py BENCH_DIR` prints the table; bench/run.py calls
`measure_all` and `table`. Expects target/release/torch2coreml and
target/release/examples/bench_interp to be built, and BENCH_DIR to hold the models of
bench/make_resnet.py and bench/make_whisper.py.
"""

import json
import os
import sys

import measure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(REPO, "target", "release", "torch2coreml")
BENCH_INTERP = os.path.join(REPO, "target", "release", "examples", "bench_interp")
TORCH_TIME = os.path.join(REPO, "bench", "torch_time.py")
# Models, by file stem in BENCH_DIR.
MODELS = ["resnet18", "whisper_tiny_encoder"]
PRECISIONS = ["fp16", "fp32"]
# Timed runs per measurement (median reported), after WARMUP untimed ones.
RUNS = 5
WARMUP = 1
# libtorch threads of the goal (the machine's 2 cores, which the interpreter's kernels use too);
# a 1-thread time is shown as well.
TORCH_THREADS = 2
GOAL_RATIO = 2.0


def measure_model(bench_dir, name, log=print):
    """Converts and times one model; returns a dict of the numbers `table` prints."""
    pt = os.path.join(bench_dir, f"{name}.pt")
    npz = os.path.join(bench_dir, f"{name}.inputs.npz")
    out_dir = os.path.join(bench_dir, "out")
    os.makedirs(out_dir, exist_ok=True)
    row = {"model": name}
    for precision in PRECISIONS:
        pkg = os.path.join(out_dir, f"interp_{name}_{precision}.mlpackage")
        measure.run([OURS, "convert", pt, "-o", pkg, "--example", npz, "--precision", precision])
        m = measure.run([BENCH_INTERP, pkg, npz, "--runs", str(RUNS), "--warmup", str(WARMUP)])
        row[precision] = json.loads(m.stdout)["median_s"]
        log(f"  interpreter {name} {precision}: {row[precision]:.3f} s")
    for threads in (TORCH_THREADS, 1):
        m = measure.run([sys.executable, TORCH_TIME, pt, npz, "--threads", str(threads),
                         "--runs", str(RUNS), "--warmup", str(WARMUP + 1)])
        row[f"torch{threads}"] = json.loads(m.stdout)["median_s"]
        log(f"  libtorch {name} {threads} thread(s): {row[f'torch{threads}']:.3f} s")
    return row


def measure_all(bench_dir, log=print):
    return [measure_model(bench_dir, name, log) for name in MODELS]


def table(rows):
    """Markdown table of `measure_all`'s rows, with the goal verdict under it."""
    t = f"torch{TORCH_THREADS}"
    lines = [
        f"| model | interp fp16 s | interp fp32 s | libtorch {TORCH_THREADS} threads s | "
        f"libtorch 1 thread s | fp16 / libtorch {TORCH_THREADS}t | fp32 / libtorch "
        f"{TORCH_THREADS}t | fp16 / libtorch 1t | fp32 / libtorch 1t | within {GOAL_RATIO:g}× "
        f"of {TORCH_THREADS}t (fp16, fp32)? |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    verdicts = []
    for r in rows:
        ratios = [r[p] / r[t] for p in PRECISIONS]
        ok = ["yes" if x <= GOAL_RATIO else "no" for x in ratios]
        verdicts += [(r["model"], p, x) for p, x in zip(PRECISIONS, ratios)]
        lines.append(
            f"| {r['model']} | {r['fp16']:.3f} | {r['fp32']:.3f} | {r[t]:.3f} | "
            f"{r['torch1']:.3f} | {ratios[0]:.2f}× | {ratios[1]:.2f}× | "
            f"{r['fp16'] / r['torch1']:.2f}× | {r['fp32'] / r['torch1']:.2f}× | "
            f"{ok[0]}, {ok[1]} |")
    misses = [f"{m} {p} ({x:.2f}×)" for m, p, x in verdicts if x > GOAL_RATIO]
    lines += ["", f"Goal (interpreter ≤ {GOAL_RATIO:g}× libtorch with {TORCH_THREADS} threads): "
              + ("met everywhere." if not misses else "missed on " + ", ".join(misses) + ".")]
    return "\n".join(lines)


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} BENCH_DIR")
    print(table(measure_all(argv[1])))


if __name__ == "__main__":
    main(sys.argv)
