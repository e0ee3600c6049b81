"""Format oracle: checks that .mlpackage files are valid ML Program packages, using coremltools
9.0's own loaders (libmodelpackage + protobuf parse + the MIL proto loader, which re-creates and
type-checks every op) plus the checks that loader skips (shared/docs/coreml-format.md §8.2).

Called by the Rust tests (tests/package.rs, tests/inspect.rs) through `make test`.
usage: validate_mlpackage.py [--json] PKG [PKG ...]
  text: one `OK: path` / `FAIL: path: reason` line per package; exit 0 iff all pass.
  --json: {path: {"ok", "error", "ops": {op_type: count}}}, ops counted from the raw protobuf.
"""
import json
import os
import re
import struct
import sys
from collections import Counter

import coremltools as ct
from coremltools import _OPSET
from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
from coremltools.converters.mil.mil import types
from coremltools.proto import FeatureTypes_pb2 as FT
from coremltools.proto import MIL_pb2, Model_pb2

ARRAY_DT = {FT.ArrayFeatureType.FLOAT32: types.fp32, FT.ArrayFeatureType.FLOAT16: types.fp16,
            FT.ArrayFeatureType.INT32: types.int32, FT.ArrayFeatureType.INT8: types.int8}
BLOB_CODE = {MIL_pb2.FLOAT16: 1, MIL_pb2.FLOAT32: 2, MIL_pb2.UINT8: 3, MIL_pb2.INT8: 4, MIL_pb2.BFLOAT16: 5,
             MIL_pb2.INT16: 6, MIL_pb2.UINT16: 7, MIL_pb2.INT4: 8, MIL_pb2.UINT1: 9, MIL_pb2.UINT2: 10,
             MIL_pb2.UINT4: 11, MIL_pb2.UINT3: 12, MIL_pb2.UINT6: 13, MIL_pb2.INT32: 14, MIL_pb2.UINT32: 15,
             MIL_pb2.FLOAT8E4M3FN: 16, MIL_pb2.FLOAT8E5M2: 17}
RESERVED = {"any", "bool", "program", "func", "tensor", "list", "dict", "tuple", "true", "false", "string", "bf16",
            "fp16", "fp32", "fp64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "state"}
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_@]*$")


def walk_ops(block):
    for op in block.operations:
        yield op
        for b in op.blocks:
            yield from walk_ops(b)


def load(pkg):
    """Opens the package with coremltools (restoring Manifest.json, which it rewrites)."""
    manifest_path = os.path.join(pkg, "Manifest.json")
    man = json.load(open(manifest_path))
    assert man["fileFormatVersion"] == "1.0.0", f"fileFormatVersion {man['fileFormatVersion']}"
    items = man["itemInfoEntries"]
    for it in items.values():
        for k in ("author", "description", "name", "path"):
            assert k in it, f"manifest item lacks {k}"
    model_path = os.path.join(pkg, "Data", items[man["rootModelIdentifier"]]["path"])
    assert os.path.isfile(model_path), f"missing {model_path}"
    original = open(manifest_path, "rb").read()
    try:
        spec = ct.utils.load_spec(pkg)
        weights_dir = ct.models.MLModel(pkg, skip_model_load=True).weights_dir
    finally:
        open(manifest_path, "wb").write(original)
    return spec, model_path, weights_dir


def check_blobs(block, model_dir):
    index = {}

    def records(path):
        if path not in index:
            b = open(path, "rb").read()
            count, version = struct.unpack_from("<II", b, 0)
            assert version == 2, f"{path}: storage version {version}"
            recs, off = {}, 64
            for _ in range(count):
                sentinel, code, size, data, _ = struct.unpack_from("<IIQQQ", b, off)
                assert sentinel == 0xDEADBEEF and data % 64 == 0 and data + size <= len(b), f"bad blob_metadata at {off}"
                recs[off] = code
                off = (data + size + 63) // 64 * 64
            index[path] = recs
        return index[path]

    def check(v):
        if v.WhichOneof("value") != "blobFileValue":
            return
        name, off = v.blobFileValue.fileName, v.blobFileValue.offset
        assert name.startswith("@model_path/"), f"blob fileName {name!r}"
        recs = records(os.path.join(model_dir, name[len("@model_path/"):]))
        assert off in recs, f"offset {off} is not a blob_metadata record"
        assert BLOB_CODE.get(v.type.tensorType.dataType) == recs[off], f"blob dtype code mismatch at {off}"

    for op in walk_ops(block):
        for v in op.attributes.values():
            check(v)
        for arg in op.inputs.values():
            for b in arg.arguments:
                if b.WhichOneof("binding") == "value":
                    check(b.value)


def validate(pkg):
    """Raises AssertionError/Exception on the first problem; returns the op histogram."""
    spec, model_path, weights_dir = load(pkg)
    assert spec.WhichOneof("Type") == "mlProgram", spec.WhichOneof("Type")
    sv = spec.specificationVersion
    assert sv in _OPSET and sv >= 6, f"specificationVersion {sv}"

    raw = Model_pb2.Model()
    raw.ParseFromString(open(model_path, "rb").read())
    size = raw.ByteSize()
    raw.DiscardUnknownFields()
    assert raw.ByteSize() == size, "model.mlmodel has unknown protobuf fields"

    prog = spec.mlProgram
    assert prog.version == 1, "Program.version must be 1"
    f = prog.functions["main"]
    assert f.opset == _OPSET[sv], f"opset {f.opset} != {_OPSET[sv]} for specificationVersion {sv}"
    top = f.block_specializations[f.opset]

    seen = set()
    for name in [i.name for i in f.inputs] + [o.name for op in walk_ops(top) for o in op.outputs]:
        assert IDENT.match(name) and name not in RESERVED, f"bad identifier {name!r}"
        assert name not in seen, f"{name!r} defined twice"
        seen.add(name)
    check_blobs(top, os.path.dirname(model_path))

    pymil = milproto_load(spec, specification_version=sv, file_weights_dir=weights_dir)
    pymil.validate()
    main = pymil.functions["main"]

    d = spec.description
    non_state = [i.name for i in f.inputs if i.type.WhichOneof("type") != "stateType"]
    assert [i.name for i in d.input] == non_state, f"description.input != function inputs"
    for fd in d.input:
        t, var = fd.type.multiArrayType, main.inputs[fd.name]
        assert ARRAY_DT[t.dataType] == var.dtype, f"input {fd.name}: dtype mismatch"
        assert list(t.shape) == [int(s) for s in var.shape], f"input {fd.name}: shape mismatch"
    outs = list(main.outputs)
    assert [o.name for o in d.output] == [v.name for v in outs], "description.output != block outputs"
    for fd, v in zip(d.output, outs):
        t = fd.type.multiArrayType
        assert ARRAY_DT[t.dataType] == v.dtype, f"output {fd.name}: dtype mismatch"
        assert len(t.shape) == 0 or tuple(t.shape) == tuple(v.shape), f"output {fd.name}: shape mismatch"
    io_ok = {types.fp32, types.int32} | ({types.fp16} if sv >= 7 else set()) | ({types.int8} if sv >= 10 else set())
    for v in list(main.inputs.values()) + outs:
        if not types.is_state(v.sym_type):
            assert v.dtype in io_ok, f"I/O {v.name} dtype {types.builtin_to_string(v.dtype)} not allowed at spec {sv}"
    return dict(Counter(op.type for op in walk_ops(top)))


def main(argv):
    as_json = "--json" in argv
    pkgs = [a for a in argv if a != "--json"]
    results = {}
    for pkg in pkgs:
        try:
            results[pkg] = {"ok": True, "error": None, "ops": validate(pkg)}
        except Exception as e:  # one line per failing package, whatever the loader raised
            results[pkg] = {"ok": False, "error": f"{type(e).__name__}: {e}".replace("\n", " "), "ops": {}}
    if as_json:
        print(json.dumps(results, indent=1, sort_keys=True))
    else:
        for pkg, r in results.items():
            print(f"OK: {pkg}" if r["ok"] else f"FAIL: {pkg}: {r['error']}")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
