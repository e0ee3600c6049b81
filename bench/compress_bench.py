"""Part 4 of `make bench`: palettizing the whisper-small encoder (random weights, bench/
make_whisper.py) at 4 bits, one k-means table per tensor: `torch2coreml convert --compress
palettize:4` against coremltools 9.0's `palettize_weights` (OpPalettizerConfig(nbits=4,
mode="kmeans"), per tensor, default weight_threshold 2048) on our uncompressed package of the
same encoder. Each run is its own process measured for wall seconds and peak RSS
(bench/measure.py). Ours includes the whole conversion from the `.pt` (reading, passes,
writing); coremltools' process loads the package, palettizes and saves. Output PSNR: each
compressed package run in our interpreter against the uncompressed package on the encoder's
inputs (`validate --against`), worst output.

Run: `.venv/bin/python bench/compress_bench.py BENCH_DIR` prints the table; bench/run.py calls
`measure_all` and `table`. Expects target/release/torch2coreml to be built.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys

import make_whisper
import measure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(REPO, "target", "release", "torch2coreml")
SIZE = "small"
BITS = 4
# Our compressed conversion is timed this many times (median); coremltools once, being slow.
OURS_RUNS = 3
MB = 1_000_000
CT_SCRIPT = """
import sys, coremltools as ct, coremltools.optimize.coreml as cto
m = ct.models.MLModel(sys.argv[1], skip_model_load=True)
cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(nbits=int(sys.argv[3]), mode="kmeans"))
cto.palettize_weights(m, cfg).save(sys.argv[2])
"""


def psnr(pkg, dense, npz):
    """Worst output PSNR of `pkg` against `dense` on `npz`, both run in our interpreter."""
    v = subprocess.run([OURS, "validate", pkg, "--against", dense, "--inputs", npz, "--format", "json"],
                       capture_output=True, text=True, check=False)
    return min(o["psnr_db"] for o in json.loads(v.stdout)["outputs"])


def measure_all(bench_dir, log=print):
    pt = make_whisper.pt_path(bench_dir, SIZE)
    npz = make_whisper.inputs_path(bench_dir, SIZE)
    out = os.path.join(bench_dir, "out")
    os.makedirs(out, exist_ok=True)
    dense = os.path.join(out, f"dense_whisper_{SIZE}_encoder.mlpackage")
    ours_pkg = os.path.join(out, f"ours_pal{BITS}_whisper_{SIZE}_encoder.mlpackage")
    ct_pkg = os.path.join(out, f"ct_pal{BITS}_whisper_{SIZE}_encoder.mlpackage")
    shutil.rmtree(dense, ignore_errors=True)
    measure.run([OURS, "convert", pt, "-o", dense, "--example", npz])
    ours = []
    for _ in range(OURS_RUNS):
        shutil.rmtree(ours_pkg, ignore_errors=True)
        os.sync()
        ours.append(measure.run([OURS, "convert", pt, "-o", ours_pkg, "--example", npz, "--compress", f"palettize:{BITS}"]))
    log(f"  ours palettize:{BITS} {SIZE}: " + ", ".join(f"{m.seconds:.2f} s" for m in ours))
    shutil.rmtree(ct_pkg, ignore_errors=True)
    ct = measure.run([sys.executable, "-c", CT_SCRIPT, dense, ct_pkg, str(BITS)])
    log(f"  coremltools palettize_weights {SIZE}: {ct.seconds:.1f} s")
    return {
        "ours_s": statistics.median(m.seconds for m in ours), "ours_peak": max(m.peak_bytes for m in ours),
        "ct_s": ct.seconds, "ct_peak": ct.peak_bytes,
        "ours_psnr": psnr(ours_pkg, dense, npz), "ct_psnr": psnr(ct_pkg, dense, npz),
    }


def table(r):
    return "\n".join([
        f"| whisper-{SIZE} encoder, {BITS}-bit tables per tensor | seconds | peak MB | worst output PSNR vs uncompressed |",
        "|---|--:|--:|--:|",
        f"| torch2coreml `convert --compress palettize:{BITS}` (from the .pt, median of {OURS_RUNS}) | "
        f"{r['ours_s']:.1f} | {r['ours_peak'] / MB:.0f} | {r['ours_psnr']:.1f} dB |",
        f"| coremltools `palettize_weights` (package in, package out; process) | "
        f"{r['ct_s']:.1f} | {r['ct_peak'] / MB:.0f} | {r['ct_psnr']:.1f} dB |",
        "",
        f"Speedup: {r['ct_s'] / r['ours_s']:.1f}×.",
    ])


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} BENCH_DIR")
    print(table(measure_all(argv[1])))


if __name__ == "__main__":
    main(sys.argv)
