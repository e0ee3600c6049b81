"""Part 5 of `make bench`: converting `torch.export` programs (`.pt2`) against traced files
(`.pt`) of the same models, ours next to `ct.convert(exported_program)`. The models are the test
zoo (fixtures/zoo/make.py, in $T2C_ZOO or ~/.cache/torch2coreml/zoo): torchvision classifiers
and Hugging Face models, each traced and exported. Ours: each conversion its own process, median
of OURS_RUNS wall seconds (bench/measure.py). coremltools: one process (imports paid once, not
counted), `torch.export.load` + `run_decompositions({})` + `ct.convert` + save per model, timed
once; a model it cannot convert is counted as failed with its error. Goal (issue 15): `.pt2`
conversion no slower per model than `.pt` (total of medians within GOAL_RATIO).

Run: `.venv/bin/python bench/export_bench.py BENCH_DIR` prints the table; bench/run.py calls
`measure_all` and `table`. Expects target/release/torch2coreml to be built.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys

import measure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(REPO, "target", "release", "torch2coreml")
PY = os.path.join(REPO, ".venv", "bin", "python")
OURS_RUNS = 3
# `.pt2` total of medians at most this many times the `.pt` total (timer noise allowance).
GOAL_RATIO = 1.1

# One coremltools process over every program: prints {name: {"ok", "seconds", "error"}}.
CT_SCRIPT = r"""
import json, os, sys, time, warnings
warnings.filterwarnings("ignore")
import torch, coremltools as ct
zoo, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
result = {}
for name in names:
    t0 = time.perf_counter()
    try:
        program = torch.export.load(os.path.join(zoo, name + ".pt2")).run_decompositions({})
        model = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                           compute_precision=ct.precision.FLOAT16, skip_model_load=True)
        model.save(os.path.join(out, "ct_" + name + ".mlpackage"))
        result[name] = {"ok": True, "seconds": time.perf_counter() - t0, "error": None}
    except Exception as e:
        line = next((l.strip() for l in str(e).splitlines() if l.strip()), "")
        result[name] = {"ok": False, "seconds": time.perf_counter() - t0, "error": f"{type(e).__name__}: {line}"[:120]}
print(json.dumps(result))
"""


def zoo_dir():
    return os.environ.get("T2C_ZOO") or os.path.expanduser("~/.cache/torch2coreml/zoo")


def models(zoo):
    return sorted(f[:-3] for f in os.listdir(zoo) if f.endswith(".pt") and os.path.exists(os.path.join(zoo, f[:-3] + ".pt2")))


def ours(zoo, out_dir, name, ext):
    """Median seconds of our conversion of NAME.ext (None if it fails)."""
    pkg = os.path.join(out_dir, f"ours_{name}_{ext}.mlpackage")
    cmd = [OURS, "convert", os.path.join(zoo, f"{name}.{ext}"), "-o", pkg]
    if ext == "pt":
        cmd += ["--example", os.path.join(zoo, f"{name}.inputs.npz")]
    times = []
    for _ in range(OURS_RUNS):
        shutil.rmtree(pkg, ignore_errors=True)
        try:
            times.append(measure.run(cmd).seconds)
        except RuntimeError:
            return None
    return statistics.median(times)


def measure_all(bench_dir, log=print):
    zoo = zoo_dir()
    out_dir = os.path.join(bench_dir, "out_export")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    names = models(zoo)
    rows = []
    for name in names:
        rows.append({"name": name, "pt": ours(zoo, out_dir, name, "pt"), "pt2": ours(zoo, out_dir, name, "pt2")})
        log(f"  {name}: .pt {rows[-1]['pt']} s, .pt2 {rows[-1]['pt2']} s (None: failed)")
    ct = subprocess.run([PY, "-c", CT_SCRIPT, zoo, out_dir, *names], capture_output=True, text=True, check=True)
    ct_result = json.loads(ct.stdout.strip().splitlines()[-1])
    for r in rows:
        r["ct"] = ct_result[r["name"]]
    return rows


def table(rows):
    lines = [
        f"| model | ours .pt s (median of {OURS_RUNS}) | ours .pt2 s (median of {OURS_RUNS}) | coremltools .pt2 s | coremltools |",
        "|---|--:|--:|--:|---|",
    ]
    show = lambda s: "failed" if s is None else f"{s:.2f}"
    for r in rows:
        ct = r["ct"]
        lines.append(f"| {r['name']} | {show(r['pt'])} | {show(r['pt2'])} | {ct['seconds']:.2f} | {'ok' if ct['ok'] else ct['error']} |")
    done = [r for r in rows if r["pt"] is not None and r["pt2"] is not None]
    pt, pt2 = sum(r["pt"] for r in done), sum(r["pt2"] for r in done)
    ct_ok = [r for r in rows if r["ct"]["ok"]]
    lines += [
        "",
        f"Converted: ours {sum(r['pt2'] is not None for r in rows)} of {len(rows)} `.pt2` "
        f"({sum(r['pt'] is not None for r in rows)} `.pt`); coremltools {len(ct_ok)} of {len(rows)}, "
        f"{sum(r['ct']['seconds'] for r in ct_ok):.1f} s for those it converts "
        f"(ours: {sum(r['pt2'] for r in ct_ok if r['pt2'] is not None):.1f} s on the same models).",
        f"Goal (`.pt2` no slower than `.pt`, totals within {GOAL_RATIO}×): "
        f"{'met' if pt2 <= GOAL_RATIO * pt else 'missed'}, {pt2:.2f} s vs {pt:.2f} s over {len(done)} models.",
    ]
    return "\n".join(lines)


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} BENCH_DIR")
    print(table(measure_all(argv[1])))


if __name__ == "__main__":
    main(sys.argv)
