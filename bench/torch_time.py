"""Times libtorch (CPU) on a traced model: the baseline bench/interp_bench.py compares the MIL
interpreter with. Prints one JSON line `{"median_s", "min_s", "runs", "threads"}`.

Run: `.venv/bin/python bench/torch_time.py MODEL.pt INPUTS.npz [--threads T] [--runs N]
[--warmup W]`. The arrays of INPUTS.npz are passed to forward() in file order. Warm-up calls
matter: TorchScript's profiling executor optimizes the graph during the first calls.
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("inputs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = torch.jit.load(args.model).eval()
    inputs = [torch.from_numpy(a) for a in np.load(args.inputs).values()]
    times = []
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(*inputs)
        for _ in range(args.runs):
            t = time.perf_counter()
            model(*inputs)
            times.append(time.perf_counter() - t)
    print(json.dumps({"median_s": statistics.median(times), "min_s": min(times),
                      "runs": args.runs, "threads": args.threads}))


if __name__ == "__main__":
    main()
