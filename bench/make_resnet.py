"""Traces torchvision's resnet18 (random weights) at ImageNet size for the interpreter benchmark
(bench/interp_bench.py); the zoo's resnet18 is at 64×64, too small to time.

Run: `.venv/bin/python bench/make_resnet.py OUT_DIR` (the Makefile's `bench` target passes
~/.cache/torch2coreml/bench). Writes `resnet18.pt` (torch.jit.trace in eval mode, torch.jit.save)
and `resnet18.inputs.npz` (`x`, float32 [1, 3, IMAGE, IMAGE]), after torch.manual_seed(0);
skipped when both exist. Files are written under a temporary name and renamed.
"""

import os
import sys
import time

import numpy as np
import torch
import torchvision

# ImageNet's crop side, the size resnet18 is benchmarked at everywhere.
IMAGE = 224


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} OUT_DIR")
    out_dir = argv[1]
    pt = os.path.join(out_dir, "resnet18.pt")
    npz = os.path.join(out_dir, "resnet18.inputs.npz")
    if os.path.exists(pt) and os.path.exists(npz):
        print("resnet18: exists, skipped")
        return
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, IMAGE, IMAGE)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
    torch.jit.save(traced, pt + ".tmp")
    os.replace(pt + ".tmp", pt)
    with open(npz + ".tmp", "wb") as f:
        np.savez(f, x=x.numpy())
    os.replace(npz + ".tmp", npz)
    print(f"resnet18: {os.path.getsize(pt) / 1e6:.1f} MB, {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main(sys.argv)
