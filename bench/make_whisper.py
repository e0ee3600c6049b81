"""Traces the Whisper encoders that `make bench` converts (bench/convert_bench.py) and runs
(bench/interp_bench.py): tiny, base, small and medium, random weights.

Run: `.venv/bin/python bench/make_whisper.py OUT_DIR [SIZE ...]` (default: every size in
`SIZES`); the Makefile's `bench` target passes ~/.cache/torch2coreml/bench. For each SIZE it
writes
  whisper_SIZE_encoder.pt           torch.jit.trace of the encoder in eval mode (torch.jit.save)
  whisper_SIZE_encoder.inputs.npz   `input_features`, float32 [1, N_MELS, N_FRAMES]
A SIZE whose two files exist is skipped. Files are written under a temporary name and renamed,
so an interrupted run leaves nothing that a rerun would skip.

Dimensions are OpenAI's (github.com/openai/whisper, whisper/__init__.py checkpoints). The
encoder is `WhisperEncoder(config)`, the same module `WhisperModel(config).encoder` holds,
built without the decoder it would never use. Each size is built after torch.manual_seed(0).
"""

import os
import sys
import time
import warnings


# (d_model, encoder_layers, encoder_attention_heads) of each official size.
SIZES = {
    "tiny": (384, 4, 6),
    "base": (512, 6, 8),
    "small": (768, 12, 12),
    "medium": (1024, 24, 16),
}
# Log-mel bins of every Whisper before large-v3.
N_MELS = 80
# 30 s of audio at Whisper's 10 ms hop; the conv stem halves it to MAX_SOURCE_POSITIONS.
N_FRAMES = 3000
MAX_SOURCE_POSITIONS = 1500
# Whisper's MLP is 4 × d_model wide.
FFN_RATIO = 4


def pt_path(out_dir, size):
    """Where `size`'s traced encoder goes; bench/run.py reads the same names."""
    return os.path.join(out_dir, f"whisper_{size}_encoder.pt")


def inputs_path(out_dir, size):
    return os.path.join(out_dir, f"whisper_{size}_encoder.inputs.npz")


def build(size, out_dir):
    """Builds, traces and saves one encoder; returns the line `main` prints for it."""
    # Imported here, not at the top: bench/convert_bench.py imports this module for SIZES and
    # the paths and should not pay for torch.
    import numpy as np
    import torch
    # HF_HUB_OFFLINE: nothing here may reach a model hub; weights are random.
    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    transformers.logging.set_verbosity_error()
    t0 = time.time()
    d_model, layers, heads = SIZES[size]
    cfg = transformers.WhisperConfig(
        d_model=d_model, encoder_layers=layers, encoder_attention_heads=heads,
        encoder_ffn_dim=FFN_RATIO * d_model, num_mel_bins=N_MELS,
        max_source_positions=MAX_SOURCE_POSITIONS, use_cache=False, return_dict=False,
    )
    torch.manual_seed(0)
    encoder = WhisperEncoder(cfg).eval()
    mels = torch.randn(1, N_MELS, N_FRAMES)
    # The trace's TracerWarnings are the encoder's input-length check and SDPA's is_causal test,
    # both constant for this fixed input shape.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(encoder, example_kwarg_inputs={"input_features": mels},
                                 strict=False)
    pt = pt_path(out_dir, size)
    torch.jit.save(traced, pt + ".tmp")
    os.replace(pt + ".tmp", pt)
    npz = inputs_path(out_dir, size)
    with open(npz + ".tmp", "wb") as f:
        np.savez(f, input_features=mels.numpy())
    os.replace(npz + ".tmp", npz)
    return f"whisper_{size}_encoder: {os.path.getsize(pt) / 1e6:.1f} MB, {time.time() - t0:.1f} s"


def main(argv):
    if len(argv) < 2:
        sys.exit(f"usage: {argv[0]} OUT_DIR [SIZE ...]   (sizes: {' '.join(SIZES)})")
    out_dir, sizes = argv[1], argv[2:] or list(SIZES)
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        sys.exit(f"unknown size(s): {' '.join(unknown)}; known: {' '.join(SIZES)}")
    os.makedirs(out_dir, exist_ok=True)
    for size in sizes:
        if os.path.exists(pt_path(out_dir, size)) and os.path.exists(inputs_path(out_dir, size)):
            print(f"whisper_{size}_encoder: exists, skipped")
        else:
            print(build(size, out_dir), flush=True)


if __name__ == "__main__":
    main(sys.argv)
