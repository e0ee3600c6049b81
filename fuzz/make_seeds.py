"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/ from the repository's
fixtures (and, for `hf`, tiny random Hugging Face models made here). Run once from the repository
root with the project venv: `.venv/bin/python fuzz/make_seeds.py` (torch, transformers, numpy).
The output is committed; rerun only to change the seeds. Multi-file seeds (`hf`, `package`) are
the files joined by SPLIT, the separator `fuzz/entries.rs` cuts them at, in that file's
HF_FILES / PACKAGE_FILES order. Nothing here reaches a model hub.
"""

import io
import json
import os
import shutil
import sys
import tempfile
import zipfile

import numpy as np

# Must equal `SPLIT` in fuzz/entries.rs.
SPLIT = b"\n--t2c-fuzz-file--\n"
OUT = "fuzz/corpus"
TS = "fixtures/torchscript"
CT = "fixtures/coremltools/out"


def put(target, name, data):
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def entries(pt):
    with zipfile.ZipFile(pt) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def deflated_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/data.pkl", b"\x80\x02}q\x00." * 4)
        z.writestr("a/version", b"3\n")
    return buf.getvalue()


def zip_seeds():
    put("zip", "mlp.pt", read(f"{TS}/mlp.pt"))
    put("zip", "scripted.pt", read("fixtures/convert/scripted.pt"))
    put("zip", "mlp.inputs.npz", read(f"{CT}/mlp.inputs.npz"))
    put("zip", "deflated.zip", deflated_zip())


def pickle_seeds():
    mlp, convnet = entries(f"{TS}/mlp.pt"), entries(f"{TS}/convnet.pt")
    put("pickle", "mlp.data.pkl", mlp["mlp/data.pkl"])
    put("pickle", "mlp.constants.pkl", mlp["mlp/constants.pkl"])
    put("pickle", "convnet.data.pkl", convnet["convnet/data.pkl"])
    put("pickle", "linear.debug_pkl", mlp["mlp/code/__torch__/torch/nn/modules/linear.py.debug_pkl"])
    put("pickle", "scripted.debug_pkl", entries("fixtures/convert/scripted.pt")["scripted/code/__torch__.py.debug_pkl"])


def code_seeds():
    for pt, stem in [(f"{TS}/mlp.pt", "mlp"), (f"{TS}/convnet.pt", "convnet"), ("fixtures/convert/scripted.pt", "scripted")]:
        for name, data in entries(pt).items():
            if name.endswith(".py"):
                put("code", stem + "." + name.split("/code/", 1)[1].replace("/", "."), data)


def torchscript_seeds():
    for path in [f"{TS}/mlp.pt", f"{TS}/convnet.pt", "fixtures/convert/scripted.pt", "fixtures/convert/unsupported.pt"]:
        put("torchscript", os.path.basename(path), read(path))


def hf_seeds():
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers

    torch.manual_seed(0)
    bert = dict(vocab_size=8, hidden_size=4, num_hidden_layers=1, num_attention_heads=2, intermediate_size=4,
                max_position_embeddings=8, type_vocab_size=1)
    models = {
        "bert": transformers.BertModel(transformers.BertConfig(**bert), add_pooling_layer=False),
        "roberta": transformers.RobertaModel(
            transformers.RobertaConfig(**dict(bert, max_position_embeddings=12, pad_token_id=1)), add_pooling_layer=False),
        "distilbert": transformers.DistilBertModel(transformers.DistilBertConfig(
            vocab_size=8, dim=4, n_layers=1, n_heads=2, hidden_dim=4, max_position_embeddings=8)),
        "whisper": transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(
            vocab_size=8, num_mel_bins=2, d_model=4, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=4, decoder_ffn_dim=4, max_source_positions=2,
            max_target_positions=4, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    }
    tmp = tempfile.mkdtemp()
    try:
        for name, model in models.items():
            d = os.path.join(tmp, name)
            model.half().save_pretrained(d, safe_serialization=True)
            config, weights = read(f"{d}/config.json"), read(f"{d}/model.safetensors")
            put("hf", name, SPLIT.join([config, weights]))
            if name == "bert":
                index = json.dumps({"metadata": {}, "weight_map": {"embeddings.word_embeddings.weight": "shard.safetensors"}})
                put("hf", "bert-sharded", SPLIT.join([config, b"", index.encode(), weights]))
                modules = json.dumps([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}])
                put("hf", "bert-modules", SPLIT.join([config, weights, b"", b"", modules.encode()]))
    finally:
        shutil.rmtree(tmp)


def package_seeds():
    for name in ["mlp_ios16_fp16", "mlp_ios15_fp32"]:
        pkg = f"{CT}/{name}.mlpackage"
        files = ["Manifest.json", "Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin"]
        put("package", name, SPLIT.join(read(f"{pkg}/{f}") for f in files))


def npz_seeds():
    for name in ["mlp.inputs.npz", "mlp.outputs.npz", "convnet.outputs.npz"]:
        put("npz", name, read(f"{CT}/{name}"))
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.arange(6, dtype=np.float16).reshape(2, 3), ids=np.arange(4, dtype=np.int64),
                        mask=np.array([True, False]))
    put("npz", "compressed.npz", buf.getvalue())
    buf = io.BytesIO()
    np.save(buf, np.ones((2, 2), dtype=np.float32))
    put("npz", "array.npy", buf.getvalue())


if __name__ == "__main__":
    if not os.path.isdir("fuzz"):
        sys.exit("run from the repository root")
    shutil.rmtree(OUT, ignore_errors=True)
    for make in [zip_seeds, pickle_seeds, code_seeds, torchscript_seeds, hf_seeds, package_seeds, npz_seeds]:
        make()
