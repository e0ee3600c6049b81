"""Format oracle: decides whether .mlpackage directories are valid ML Program packages on Linux,
using coremltools 9.0's own readers plus the checks those readers skip
(shared/docs/coreml-format.md §8.2; §7 for I/O rules, §3 for versions, §4 for weight.bin).

Called by the Rust tests (tests/package.rs, tests/inspect.rs; `make test` runs them) with the
`.venv` python. One process validates many packages, since importing coremltools takes ~5 s.

usage: validate_mlpackage.py [--json] PKG [PKG ...]
  default  one line per package, `OK: PKG` or `FAIL: PKG: <reason>`
  --json   {PKG: {"ok": bool, "error": str|null, "ops": {op type: count}, "functions": [name]}}
           instead; `ops` is counted from the raw protobuf (the default function's block, nested
           blocks recursed, `const` included) and is filled in whenever model.mlmodel parses,
           even if a later check fails
  exit 0 iff every package passes, 1 if any fails, 2 on a usage error.
Diagnostics from coremltools go to stderr; stdout carries only the report.

Checks, in order (the first failure is the package's one-line reason):
  1. name ends in .mlpackage; Manifest.json: fileFormatVersion 1.0.0, four keys per item, root item exists on disk
  2. ct.utils.load_spec + ct.models.MLModel(skip_model_load=True); both rewrite Manifest.json,
     so its bytes are restored afterwards
  3. model.mlmodel has no unknown protobuf fields (a wrong field number is otherwise dropped)
  4. mlProgram, Program.version 1, function "main" (a multifunction package, iOS18+: every
     function described in ModelDescription.functions and defaultFunctionName one of them),
     opset == _OPSET[specificationVersion] and is the only block_specializations key
  5. every value name is a valid identifier, not a reserved word, defined once (SSA)
  6. every blobFileValue: `@model_path/` prefix, offset is a blob_metadata record of a v2
     weight.bin, record dtype code matches the declared dtype
  7. milproto load (re-creates and type-checks every op, reads every blob) + prog.validate()
  8. ModelDescription <-> main's signature (each function's, against its FunctionDescription):
     names, order, dtypes, shapes, flexibility, states
  9. I/O dtypes allowed at the specificationVersion (fp16 from 7, int8 from 10)
"""
import contextlib
import json
import os
import re
import struct
import sys
from collections import Counter

import coremltools as ct
from coremltools import _OPSET  # specificationVersion -> opset string, e.g. 7 -> "CoreML6"
from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
from coremltools.converters.mil.mil import types
from coremltools.proto import FeatureTypes_pb2 as FT
from coremltools.proto import MIL_pb2, Model_pb2

# Manifest format version the libmodelpackage reader accepts (it rejects 1.0.1 and 1.1.0).
MANIFEST_VERSION = "1.0.0"
MANIFEST_ITEM_KEYS = ("author", "description", "name", "path")
# First specificationVersion with ML Programs (iOS15).
MIN_MLPROGRAM_SPEC = 6
# specificationVersion that first allows FLOAT16 I/O (iOS16), INT8 I/O (iOS26), states (iOS18).
FP16_IO_SPEC, INT8_IO_SPEC, STATE_SPEC = 7, 10, 9
# Program.version coremltools writes and reads.
PROGRAM_VERSION = 1
# Blob file names are relative to the directory holding model.mlmodel.
MODEL_PATH_PREFIX = "@model_path/"
# weight.bin: 64-byte file header {count u32, version u32, ...}; each record is a 64-byte
# blob_metadata {sentinel u32, dtype code u32, size u64, data offset u64, ...}, 64-aligned.
BLOB_STORAGE_VERSION = 2
BLOB_ALIGNMENT = 64
BLOB_SENTINEL = 0xDEADBEEF
# MIL.proto DataType -> weight.bin dtype code (MILBlob BlobDataType.hpp; not the same numbers).
BLOB_CODE = {
    MIL_pb2.FLOAT16: 1, MIL_pb2.FLOAT32: 2, MIL_pb2.UINT8: 3, MIL_pb2.INT8: 4, MIL_pb2.BFLOAT16: 5,
    MIL_pb2.INT16: 6, MIL_pb2.UINT16: 7, MIL_pb2.INT4: 8, MIL_pb2.UINT1: 9, MIL_pb2.UINT2: 10,
    MIL_pb2.UINT4: 11, MIL_pb2.UINT3: 12, MIL_pb2.UINT6: 13, MIL_pb2.INT32: 14, MIL_pb2.UINT32: 15,
    MIL_pb2.FLOAT8E4M3FN: 16, MIL_pb2.FLOAT8E5M2: 17,
}
# ArrayFeatureType dtype -> pymil dtype (a third numbering: FLOAT16 = 65552).
ARRAY_DTYPE = {
    FT.ArrayFeatureType.FLOAT32: types.fp32, FT.ArrayFeatureType.FLOAT16: types.fp16,
    FT.ArrayFeatureType.INT32: types.int32, FT.ArrayFeatureType.INT8: types.int8,
}
# MIL reserved words; coremltools renames such values with a `_workaround` suffix.
RESERVED = {
    "any", "bool", "program", "func", "tensor", "list", "dict", "tuple", "true", "false", "string",
    "bf16", "fp16", "fp32", "fp64", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "state",
}
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_@]*")


class Invalid(Exception):
    """A check failed; the message is the one-line reason."""


def require(cond, msg):
    """`assert` that survives `python -O`."""
    if not cond:
        raise Invalid(msg)


def walk_ops(block):
    """Every Operation of a MIL.proto Block, depth first, nested blocks included."""
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from walk_ops(inner)


def function_names(spec):
    """The functions to check: "main", or every function of a multifunction package."""
    d = spec.description
    return [fd.name for fd in d.functions] if len(d.functions) else ["main"]


def op_histogram(spec):
    """Op type -> count over the default function's block (main's), `const` included (what
    --json reports)."""
    f = spec.mlProgram.functions[spec.description.defaultFunctionName or "main"]
    return dict(sorted(Counter(op.type for op in walk_ops(f.block_specializations[f.opset])).items()))


def check_manifest(pkg):
    """Check 1. Returns the path of model.mlmodel."""
    require(os.path.basename(os.path.normpath(pkg)).endswith(".mlpackage"), "package directory name must end in .mlpackage")
    with open(os.path.join(pkg, "Manifest.json")) as fh:
        manifest = json.load(fh)
    version = manifest.get("fileFormatVersion")
    require(version == MANIFEST_VERSION, f"Manifest fileFormatVersion {version!r} != {MANIFEST_VERSION!r}")
    items = manifest.get("itemInfoEntries", {})
    for key, item in items.items():
        missing = [k for k in MANIFEST_ITEM_KEYS if k not in item]
        require(not missing, f"Manifest item {key} lacks {missing}")
        require(os.path.exists(os.path.join(pkg, "Data", item["path"])), f"Manifest item path {item['path']!r} does not exist under Data/")
    root = manifest.get("rootModelIdentifier")
    require(root in items, f"Manifest rootModelIdentifier {root!r} is not an item")
    model_path = os.path.join(pkg, "Data", items[root]["path"])
    require(os.path.isfile(model_path), f"root model {items[root]['path']!r} is not a file")
    return model_path


def load_with_coremltools(pkg):
    """Check 2. Returns (spec, weights_dir); leaves Manifest.json byte-identical."""
    manifest_path = os.path.join(pkg, "Manifest.json")
    with open(manifest_path, "rb") as fh:
        original = fh.read()
    try:
        spec = ct.utils.load_spec(pkg)
        weights_dir = ct.models.MLModel(pkg, skip_model_load=True).weights_dir
    finally:
        with open(manifest_path, "wb") as fh:
            fh.write(original)
    return spec, weights_dir


def check_no_unknown_fields(model_path):
    """Check 3."""
    raw = Model_pb2.Model()
    with open(model_path, "rb") as fh:
        raw.ParseFromString(fh.read())
    before = raw.ByteSize()
    raw.DiscardUnknownFields()
    require(raw.ByteSize() == before, f"model.mlmodel has {before - raw.ByteSize()} bytes of unknown protobuf fields")


def check_program(spec, name="main"):
    """Check 4. Returns function `name`'s Function proto."""
    kind = spec.WhichOneof("Type")
    require(kind == "mlProgram", f"model type is {kind}, not mlProgram")
    sv = spec.specificationVersion
    require(sv >= MIN_MLPROGRAM_SPEC and sv in _OPSET, f"specificationVersion {sv} is not an ML Program version")
    program = spec.mlProgram
    require(program.version == PROGRAM_VERSION, f"Program.version {program.version} != {PROGRAM_VERSION}")
    d = spec.description
    if len(d.functions):
        require(sv >= STATE_SPEC, f"a multifunction model needs specificationVersion >= {STATE_SPEC}, have {sv}")
        described = [fd.name for fd in d.functions]
        require(sorted(described) == sorted(program.functions), f"described functions {described} != program functions {sorted(program.functions)}")
        require(d.defaultFunctionName in described, f"defaultFunctionName {d.defaultFunctionName!r} is not a function")
        require(not len(d.input) and not len(d.output), "a multifunction model describes its I/O per function only")
    require(name in program.functions, f"no function {name!r} (have {sorted(program.functions)})")
    f = program.functions[name]
    require(f.opset == _OPSET[sv], f"opset {f.opset!r} != {_OPSET[sv]!r} for specificationVersion {sv}")
    keys = sorted(f.block_specializations)
    require(keys == [f.opset], f"block_specializations keys {keys} != [{f.opset!r}]")
    return f


def check_names(f):
    """Check 5: function inputs, block inputs and op outputs, each defined once."""
    seen = set()

    def define(name):
        require(IDENTIFIER.fullmatch(name), f"value name {name!r} is not a MIL identifier")
        require(name not in RESERVED, f"value name {name!r} is a MIL reserved word")
        require(name not in seen, f"value {name!r} defined twice")
        seen.add(name)

    def walk(block):
        for i in block.inputs:
            define(i.name)
        for op in block.operations:
            for o in op.outputs:
                define(o.name)
            for inner in op.blocks:
                walk(inner)

    for i in f.inputs:
        define(i.name)
    walk(f.block_specializations[f.opset])


def blob_records(path):
    """Walks a weight.bin: {blob_metadata offset: dtype code}."""
    with open(path, "rb") as fh:
        data = fh.read()
    count, version = struct.unpack_from("<II", data, 0)
    require(version == BLOB_STORAGE_VERSION, f"{os.path.basename(path)}: storage version {version} != {BLOB_STORAGE_VERSION}")
    records, offset = {}, BLOB_ALIGNMENT
    for _ in range(count):
        require(offset + BLOB_ALIGNMENT <= len(data), f"{os.path.basename(path)}: blob_metadata {offset} past end of file")
        sentinel, code, size, data_offset, _ = struct.unpack_from("<IIQQQ", data, offset)
        require(sentinel == BLOB_SENTINEL and data_offset % BLOB_ALIGNMENT == 0 and data_offset + size <= len(data),
                f"{os.path.basename(path)}: bad blob_metadata at offset {offset}")
        records[offset] = code
        offset = (data_offset + size + BLOB_ALIGNMENT - 1) // BLOB_ALIGNMENT * BLOB_ALIGNMENT
    return records


def check_blobs(f, model_dir):
    """Check 6, over op attributes and inline input values."""
    files = {}

    def check(value):
        if value.WhichOneof("value") != "blobFileValue":
            return
        name, offset = value.blobFileValue.fileName, value.blobFileValue.offset
        require(name.startswith(MODEL_PATH_PREFIX), f"blob fileName {name!r} does not start with {MODEL_PATH_PREFIX}")
        path = os.path.join(model_dir, name[len(MODEL_PATH_PREFIX):])
        if path not in files:
            require(os.path.isfile(path), f"blob file {name!r} does not exist")
            files[path] = blob_records(path)
        require(offset in files[path], f"{name}: offset {offset} is not a blob_metadata record")
        dtype = value.type.tensorType.dataType
        require(BLOB_CODE.get(dtype) == files[path][offset],
                f"{name}@{offset}: blob dtype code {files[path][offset]} != {BLOB_CODE.get(dtype)} for {MIL_pb2.DataType.Name(dtype)}")

    for op in walk_ops(f.block_specializations[f.opset]):
        for value in op.attributes.values():
            check(value)
        for arg in op.inputs.values():
            for binding in arg.arguments:
                if binding.WhichOneof("binding") == "value":
                    check(binding.value)


def check_signature(spec, f, main, name="main"):
    """Checks 8 and 9: `f` is function `name`'s Function proto, `main` its pymil Function."""
    sv, d = spec.specificationVersion, spec.description
    if len(d.functions):
        d = next(fd for fd in d.functions if fd.name == name)
    tensor_inputs = [i.name for i in f.inputs if i.type.WhichOneof("type") != "stateType"]
    state_inputs = [i.name for i in f.inputs if i.type.WhichOneof("type") == "stateType"]
    require([i.name for i in d.input] == tensor_inputs, f"description.input {[i.name for i in d.input]} != main inputs {tensor_inputs}")
    require(sorted(s.name for s in d.state) == sorted(state_inputs), f"description.state {[s.name for s in d.state]} != main state inputs {state_inputs}")

    def image_feature(fd, var, what):
        # Core ML hands the program (or takes from it) an fp32 [1, C, H, W] tensor of the
        # image's pixels.
        img = fd.type.imageType
        channels = {10: 1, 20: 3, 30: 3}.get(img.colorSpace)
        require(channels is not None, f"{what} {fd.name}: image color space {img.colorSpace}")
        require(var.dtype == types.fp32 and list(var.shape) == [1, channels, img.height, img.width],
                f"{what} {fd.name}: {img.width}x{img.height} image (color space {img.colorSpace}) but MIL "
                f"{types.builtin_to_string(var.dtype)} {list(var.shape)}")

    for fd in d.input:
        var = main.inputs[fd.name]
        if fd.type.WhichOneof("Type") == "imageType":
            image_feature(fd, var, "input")
            continue
        t = fd.type.multiArrayType
        require(ARRAY_DTYPE.get(t.dataType) == var.dtype, f"input {fd.name}: description dtype {t.dataType} != MIL {types.builtin_to_string(var.dtype)}")
        require(len(t.shape) == var.rank, f"input {fd.name}: description rank {len(t.shape)} != MIL rank {var.rank}")
        require(all(not isinstance(m, int) or m == s for s, m in zip(t.shape, var.shape)),
                f"input {fd.name}: description shape {list(t.shape)} != MIL {list(var.shape)}")
        symbolic = any(not isinstance(m, int) for m in var.shape)
        flexible = t.WhichOneof("ShapeFlexibility") is not None
        require(symbolic == flexible, f"input {fd.name}: symbolic MIL dims {'without' if symbolic else 'with'} shapeRange/enumeratedShapes")

    outputs = list(main.outputs)
    require([o.name for o in d.output] == [v.name for v in outputs],
            f"description.output {[o.name for o in d.output]} != block outputs {[v.name for v in outputs]}")
    # A classifier's outputs (coremltools' ClassifierConfig): the `classify` op's top label
    # (string or int64) and its probabilities dictionary, named by predictedFeatureName /
    # predictedProbabilitiesName.
    classified = {d.predictedFeatureName, d.predictedProbabilitiesName} - {""}
    for fd, var in zip(d.output, outputs):
        kind = fd.type.WhichOneof("Type")
        if kind in ("stringType", "int64Type", "dictionaryType"):
            require(fd.name in classified and var.op is not None and var.op.op_type == "classify",
                    f"output {fd.name}: {kind} but not a classify output named by predictedFeatureName/ProbabilitiesName")
            continue
        if kind == "imageType":
            image_feature(fd, var, "output")
            continue
        t = fd.type.multiArrayType
        require(ARRAY_DTYPE.get(t.dataType) == var.dtype, f"output {fd.name}: description dtype {t.dataType} != MIL {types.builtin_to_string(var.dtype)}")
        require(len(t.shape) == 0 or tuple(t.shape) == tuple(var.shape), f"output {fd.name}: description shape {list(t.shape)} != MIL {var.shape}")

    for fd in d.state:
        require(sv >= STATE_SPEC, f"state {fd.name} needs specificationVersion >= {STATE_SPEC}, have {sv}")
        t, wrapped = fd.type.stateType.arrayType, main.inputs[fd.name].sym_type.wrapped_type()
        require(ARRAY_DTYPE.get(t.dataType) == wrapped.get_primitive() and tuple(t.shape) == tuple(wrapped.get_shape()),
                f"state {fd.name}: description type != MIL type")

    allowed = {types.fp32, types.int32}
    if sv >= FP16_IO_SPEC:
        allowed.add(types.fp16)
    if sv >= INT8_IO_SPEC:
        allowed.add(types.int8)
    for var in list(main.inputs.values()) + outputs:
        if var.name in classified:
            continue
        if not types.is_state(var.sym_type):
            require(var.dtype in allowed, f"I/O {var.name} dtype {types.builtin_to_string(var.dtype)} not allowed at specificationVersion {sv}")


def validate(pkg, result):
    """Runs checks 1-9 on one package, raising on the first failure. Stores the op histogram
    in result["ops"] as soon as the spec is loaded."""
    model_path = check_manifest(pkg)
    spec, weights_dir = load_with_coremltools(pkg)
    check_no_unknown_fields(model_path)
    names = function_names(spec)
    functions = {name: check_program(spec, name) for name in names}
    result["ops"] = op_histogram(spec)
    result["functions"] = names
    for f in functions.values():
        check_names(f)
        check_blobs(f, os.path.dirname(model_path))
    program = milproto_load(spec, specification_version=spec.specificationVersion, file_weights_dir=weights_dir)
    program.validate()
    for name, f in functions.items():
        check_signature(spec, f, program.functions[name], name)


def main(argv):
    as_json = "--json" in argv
    pkgs = [a for a in argv if a != "--json"]
    if not pkgs or any(a.startswith("-") for a in pkgs):
        print("usage: validate_mlpackage.py [--json] PKG [PKG ...]", file=sys.stderr)
        return 2
    results = {}
    # coremltools prints progress and warnings; keep stdout for the report.
    with contextlib.redirect_stdout(sys.stderr):
        for pkg in pkgs:
            result = {"ok": False, "error": None, "ops": {}}
            try:
                validate(pkg, result)
                result["ok"] = True
            except Exception as e:  # any loader error is a verdict on this package, not a crash
                reason = str(e) if isinstance(e, Invalid) else f"{type(e).__name__}: {e}"
                result["error"] = " ".join(reason.split())
            results[pkg] = result
    if as_json:
        print(json.dumps(results, indent=1, sort_keys=True))
    else:
        for pkg, r in results.items():
            print(f"OK: {pkg}" if r["ok"] else f"FAIL: {pkg}: {r['error']}")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
