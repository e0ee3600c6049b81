"""Converts one traced Whisper encoder with coremltools, as a user of coremltools would; the
process whose time and peak memory bench/convert_bench.py measures against ours.

Run: `.venv/bin/python bench/ct_convert.py MODEL.pt OUT.mlpackage` (coremltools 9.0, see
requirements.txt). Settings match `torch2coreml convert`'s defaults: ML Program, iOS16, fp16
compute (coremltools' default for ML Programs); the model is not compiled or loaded. Prints one
JSON line `{"convert_s"}`: seconds in torch.jit.load + ct.convert + save, without the Python
imports that the process's wall time (measured by the caller) includes.
"""

import json
import sys
import time
import warnings

import coremltools as ct
import torch

# Whisper's log-mel input: batch 1, 80 bins, 3000 frames (bench/make_whisper.py).
INPUT_SHAPE = (1, 80, 3000)


def main(argv):
    if len(argv) != 3:
        sys.exit(f"usage: {argv[0]} MODEL.pt OUT.mlpackage")
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    model = torch.jit.load(argv[1])
    mlmodel = ct.convert(
        model,
        inputs=[ct.TensorType(name="input_features", shape=INPUT_SHAPE)],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
        skip_model_load=True,
    )
    mlmodel.save(argv[2])
    print(json.dumps({"convert_s": time.perf_counter() - t0}))


if __name__ == "__main__":
    main(sys.argv)
