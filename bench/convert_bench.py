"""Part 1 of `make bench`: `torch2coreml convert` against `coremltools.convert` on the traced
Whisper encoders of bench/make_whisper.py, each conversion a separate process measured for wall
seconds and peak RSS (bench/measure.py). Beside them, the floor: `examples/bench_floor.rs`
reading the same `.pt`'s fp32 storages, casting them to fp16 and writing one weight file on all
cores, with nothing else (no parsing, passes or protobuf). Goals (issue 13), on the medium
encoder: ≥ GOAL_SPEEDUP× faster than coremltools' convert call, within GOAL_FLOOR_RATIO× of the
floor; on every encoder, our peak RSS ≤ GOAL_MEMORY_PT_FRACTION × the `.pt` size +
GOAL_MEMORY_SLACK.

Run: `.venv/bin/python bench/convert_bench.py BENCH_DIR` prints the table; bench/run.py calls
`measure` and `table`. Expects target/release/torch2coreml to be built. Packages are written to
BENCH_DIR/out/ and replaced on every run.
"""

import json
import os
import shutil
import statistics
import sys

import make_whisper
import measure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(REPO, "target", "release", "torch2coreml")
FLOOR = os.path.join(REPO, "target", "release", "examples", "bench_floor")
CT_SCRIPT = os.path.join(REPO, "bench", "ct_convert.py")
# Our conversion and the floor are timed this many times each, alternating so both see the same
# machine (median reported), after OURS_WARMUP untimed runs that bring the .pt into the page
# cache (coremltools, run after ours, finds it there too); coremltools runs once, being slow.
# Before each timed run, dirty pages are flushed (untimed), so no run pays for the writeback of
# the previous run's output.
OURS_RUNS = 5
OURS_WARMUP = 1
# Megabyte as in the goal and the table (10^6 bytes).
MB = 1_000_000
GOAL_SPEEDUP = 30
GOAL_SPEEDUP_SIZE = "medium"
# Our median at most this many times the floor's median.
GOAL_FLOOR_RATIO = 2
# Peak-memory goal: PT_FRACTION of the .pt size plus a fixed allowance for code and buffers.
GOAL_MEMORY_PT_FRACTION = 0.1
GOAL_MEMORY_SLACK = 100 * MB


def measure_size(bench_dir, size, log=print):
    """Converts one encoder with both tools; returns a dict of the numbers `table` prints."""
    pt = make_whisper.pt_path(bench_dir, size)
    npz = make_whisper.inputs_path(bench_dir, size)
    out_dir = os.path.join(bench_dir, "out")
    os.makedirs(out_dir, exist_ok=True)
    ours_pkg = os.path.join(out_dir, f"ours_whisper_{size}_encoder.mlpackage")
    ct_pkg = os.path.join(out_dir, f"ct_whisper_{size}_encoder.mlpackage")

    floor_out = os.path.join(out_dir, f"floor_whisper_{size}.bin")
    ours, floor = [], []
    for _ in range(OURS_WARMUP + OURS_RUNS):
        shutil.rmtree(ours_pkg, ignore_errors=True)
        os.sync()
        ours.append(measure.run([OURS, "convert", pt, "-o", ours_pkg, "--example", npz]))
        if os.path.exists(floor_out):
            os.remove(floor_out)
        os.sync()
        floor.append(measure.run([FLOOR, pt, floor_out]))
    os.remove(floor_out)
    ours, floor = ours[OURS_WARMUP:], floor[OURS_WARMUP:]
    log(f"  ours {size}: " + ", ".join(f"{m.seconds:.2f} s" for m in ours))
    log(f"  floor {size}: " + ", ".join(f"{m.seconds:.2f} s" for m in floor))
    shutil.rmtree(ct_pkg, ignore_errors=True)
    ct = measure.run([sys.executable, CT_SCRIPT, pt, ct_pkg])
    ct_convert_s = json.loads(ct.stdout.strip().splitlines()[-1])["convert_s"]
    log(f"  coremltools {size}: {ct.seconds:.1f} s ({ct_convert_s:.1f} s in convert)")

    pt_bytes = os.path.getsize(pt)
    ours_s = statistics.median(m.seconds for m in ours)
    ours_peak = max(m.peak_bytes for m in ours)
    limit = GOAL_MEMORY_PT_FRACTION * pt_bytes + GOAL_MEMORY_SLACK
    return {
        "size": size, "pt_bytes": pt_bytes, "ours_s": ours_s, "ours_peak": ours_peak,
        "floor_s": statistics.median(m.seconds for m in floor),
        "ct_s": ct.seconds, "ct_convert_s": ct_convert_s, "ct_peak": ct.peak_bytes,
        "memory_limit": limit, "memory_ok": ours_peak <= limit,
    }


def measure_all(bench_dir, log=print):
    return [measure_size(bench_dir, size, log) for size in make_whisper.SIZES]


def table(rows):
    """Markdown table of `measure_all`'s rows, with the goal verdicts under it."""
    lines = [
        f"| encoder | .pt MB | ours s (median of {OURS_RUNS}) | floor s (median of {OURS_RUNS}) | ours / floor | "
        "coremltools s (process) | coremltools s (convert call) | speedup (process) | "
        f"speedup (convert call) | ours peak MB (max of {OURS_RUNS}) | coremltools peak MB | "
        f"limit {GOAL_MEMORY_PT_FRACTION}×pt+100 MB | ours peak ≤ limit? |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    for r in rows:
        lines.append(
            f"| whisper-{r['size']} | {r['pt_bytes'] / MB:.1f} | {r['ours_s']:.2f} | "
            f"{r['floor_s']:.2f} | {r['ours_s'] / r['floor_s']:.2f}× | "
            f"{r['ct_s']:.1f} | {r['ct_convert_s']:.1f} | {r['ct_s'] / r['ours_s']:.1f}× | "
            f"{r['ct_convert_s'] / r['ours_s']:.1f}× | {r['ours_peak'] / MB:.0f} | "
            f"{r['ct_peak'] / MB:.0f} | {r['memory_limit'] / MB:.0f} | "
            f"{'yes' if r['memory_ok'] else 'no'} |")
    goal = next((r for r in rows if r["size"] == GOAL_SPEEDUP_SIZE), None)
    if goal:
        speedup = goal["ct_convert_s"] / goal["ours_s"]
        ratio = goal["ours_s"] / goal["floor_s"]
        lines += ["", f"Speed goal (≥ {GOAL_SPEEDUP}× coremltools' convert call on "
                  f"whisper-{GOAL_SPEEDUP_SIZE}): {'met' if speedup >= GOAL_SPEEDUP else 'missed'}, "
                  f"{speedup:.1f}×.",
                  f"Floor goal (≤ {GOAL_FLOOR_RATIO}× the floor on whisper-{GOAL_SPEEDUP_SIZE}): "
                  f"{'met' if ratio <= GOAL_FLOOR_RATIO else 'missed'}, {ratio:.2f}×."]
    misses = [r for r in rows if not r["memory_ok"]]
    lines.append(f"Memory goal (ours peak ≤ {GOAL_MEMORY_PT_FRACTION}×pt + 100 MB): " + (
        "met on every encoder." if not misses else "missed on " + ", ".join(
            f"whisper-{r['size']} by {(r['ours_peak'] - r['memory_limit']) / MB:.0f} MB"
            for r in misses) + "."))
    return "\n".join(lines)


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} BENCH_DIR")
    print(table(measure_all(argv[1])))


if __name__ == "__main__":
    main(sys.argv)
