//! The generated protobuf types (from `proto/*.proto` by `build.rs`) and the conversions between
//! them and the IR. Nothing generated leaves `package/`: `write` calls [`model_to_proto`],
//! `read` calls [`model_from_proto`]. Encodings per dtype follow coremltools
//! `backend/mil/helper.py` (coreml-format.md §2.3, §5).

pub mod core_ml {
    pub mod specification {
        include!(concat!(env!("OUT_DIR"), "/core_ml.specification.rs"));
        pub mod mil_spec {
            include!(concat!(env!("OUT_DIR"), "/core_ml.specification.mil_spec.rs"));
        }
    }
}

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use core_ml::specification as spec;
use spec::mil_spec as pb;

use super::blob::{self, BlobWriter};
use super::{Error, BLOB_PATH_PREFIX, WEIGHTS_DIR, WEIGHT_FILE};
use crate::files::{self, shown};
use crate::mil::{ColorSpace, 
    ops, Argument, Block, DType, Dim, Function, Metadata, Model, NamedType, Operation, Opset, Program, Tensor, TensorType,
    ValueType,
};

/// The function Core ML runs (and the only one a classifier's `classify` op may end).
const MAIN: &str = crate::mil::MAIN_FUNCTION;
/// `Program.version`: the only version Core ML defines.
pub const PROGRAM_VERSION: i64 = 1;
/// Name of the attribute every op carries with its op name.
const NAME_ATTR: &str = "name";

fn dtype_to_proto(d: DType) -> pb::DataType {
    use pb::DataType as P;
    match d {
        DType::Bool => P::Bool,
        DType::String => P::String,
        DType::F16 => P::Float16,
        DType::F32 => P::Float32,
        DType::F64 => P::Float64,
        DType::BF16 => P::Bfloat16,
        DType::I8 => P::Int8,
        DType::I16 => P::Int16,
        DType::I32 => P::Int32,
        DType::I64 => P::Int64,
        DType::I4 => P::Int4,
        DType::U8 => P::Uint8,
        DType::U16 => P::Uint16,
        DType::U32 => P::Uint32,
        DType::U64 => P::Uint64,
        DType::U1 => P::Uint1,
        DType::U2 => P::Uint2,
        DType::U3 => P::Uint3,
        DType::U4 => P::Uint4,
        DType::U6 => P::Uint6,
        DType::F8E4M3FN => P::Float8e4m3fn,
        DType::F8E5M2 => P::Float8e5m2,
    }
}

fn dtype_from_proto(v: i32) -> Option<DType> {
    DType::ALL.into_iter().find(|d| dtype_to_proto(*d) as i32 == v)
}

fn array_dtype(d: DType) -> Option<spec::array_feature_type::ArrayDataType> {
    use spec::array_feature_type::ArrayDataType as A;
    Some(match d {
        DType::F32 => A::Float32,
        DType::F16 => A::Float16,
        DType::F64 => A::Double,
        DType::I32 => A::Int32,
        DType::I8 => A::Int8,
        _ => return None,
    })
}

fn tensor_type_to_proto(t: &TensorType) -> pb::TensorType {
    let dim = |d: &Dim| pb::Dimension {
        dimension: Some(match d {
            Dim::Fixed(n) => pb::dimension::Dimension::Constant(pb::dimension::ConstantDimension { size: *n as u64 }),
            Dim::Unknown => pb::dimension::Dimension::Unknown(pb::dimension::UnknownDimension { variadic: false }),
        }),
    };
    pb::TensorType {
        data_type: dtype_to_proto(t.dtype) as i32,
        rank: t.rank() as i64,
        dimensions: t.shape.iter().map(dim).collect(),
        attributes: BTreeMap::new(),
    }
}

fn value_type_to_proto(v: &ValueType) -> pb::ValueType {
    use pb::value_type::Type;
    let tensor = |t: &TensorType| pb::ValueType { r#type: Some(Type::TensorType(tensor_type_to_proto(t))) };
    match v {
        ValueType::Tensor(t) => tensor(t),
        ValueType::State(t) => {
            pb::ValueType { r#type: Some(Type::StateType(Box::new(pb::StateType { wrapped_type: Some(Box::new(tensor(t))) }))) }
        }
    }
}

/// A tensor type read from a package. Its known dimensions must multiply to an element count,
/// and that count to a byte size, that fit in a `usize` (a declared [2^32, 2^32] would wrap to 0
/// elements in unchecked arithmetic): every later size computation (blob reads, the
/// interpreter's memory budget, `inspect`) can then multiply without overflowing.
fn tensor_type_from_proto(t: &pb::TensorType) -> Result<TensorType, String> {
    let dtype = dtype_from_proto(t.data_type).ok_or_else(|| format!("unknown DataType {}", t.data_type))?;
    if t.rank != t.dimensions.len() as i64 {
        return Err(format!("tensor rank {} but {} dimensions", t.rank, t.dimensions.len()));
    }
    let shape: Vec<Dim> = t
        .dimensions
        .iter()
        .map(|d| match &d.dimension {
            Some(pb::dimension::Dimension::Constant(c)) => {
                usize::try_from(c.size).map(Dim::Fixed).map_err(|_| format!("dimension {} too large", c.size))
            }
            Some(pb::dimension::Dimension::Unknown(_)) => Ok(Dim::Unknown),
            None => Err("dimension with neither a size nor `unknown`".to_string()),
        })
        .collect::<Result<_, _>>()?;
    let known = shape.iter().filter_map(|d| match d {
        Dim::Fixed(n) => Some(*n),
        Dim::Unknown => None,
    });
    let elements = known.clone().try_fold(1usize, usize::checked_mul);
    let bytes = elements.and_then(|n| if dtype.bits().is_some() { dtype.storage_bytes(n) } else { Some(n) });
    if bytes.is_none() {
        let dims: Vec<usize> = known.collect();
        return Err(format!("{dtype} tensor of dimensions {dims:?} has more elements or bytes than memory can address"));
    }
    Ok(TensorType { dtype, shape })
}

fn value_type_from_proto(v: Option<&pb::ValueType>) -> Result<ValueType, String> {
    use pb::value_type::Type;
    match v.and_then(|v| v.r#type.as_ref()) {
        Some(Type::TensorType(t)) => Ok(ValueType::Tensor(tensor_type_from_proto(t)?)),
        Some(Type::StateType(s)) => match s.wrapped_type.as_ref().and_then(|w| w.r#type.as_ref()) {
            Some(Type::TensorType(t)) => Ok(ValueType::State(tensor_type_from_proto(t)?)),
            _ => Err("state type that does not wrap a tensor".to_string()),
        },
        Some(Type::ListType(_)) => Err("list-typed values are not supported".to_string()),
        Some(Type::TupleType(_)) => Err("tuple-typed values are not supported".to_string()),
        Some(Type::DictionaryType(_)) => Err("dictionary-typed values are not supported".to_string()),
        None => Err("value without a type".to_string()),
    }
}

/// Encodes a tensor as an immediate, in the TensorValue field Core ML expects for its dtype.
fn immediate(t: &Tensor) -> pb::TensorValue {
    use pb::tensor_value::{RepeatedBools, RepeatedBytes, RepeatedDoubles, RepeatedFloats, RepeatedInts, RepeatedLongInts, RepeatedStrings, Value as V};
    let bytes = t.bytes();
    let b: &[u8] = &bytes;
    let value = match t.dtype() {
        DType::F32 => V::Floats(RepeatedFloats {
            values: b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        }),
        DType::F64 => V::Doubles(RepeatedDoubles {
            values: b.chunks_exact(8).map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect(),
        }),
        DType::I32 | DType::I16 | DType::U16 => V::Ints(RepeatedInts {
            values: t.to_i64_vec().unwrap_or_default().into_iter().map(|v| v as i32).collect(),
        }),
        DType::I64 | DType::U64 => V::LongInts(RepeatedLongInts { values: t.to_i64_vec().unwrap_or_default() }),
        DType::Bool => V::Bools(RepeatedBools { values: b.iter().map(|&v| v != 0).collect() }),
        DType::String => V::Strings(RepeatedStrings { values: t.strings().to_vec() }),
        _ => V::Bytes(RepeatedBytes { values: b.to_vec() }),
    };
    pb::TensorValue { value: Some(value) }
}

fn from_immediate(ty: &TensorType, tv: &pb::TensorValue) -> Result<Tensor, String> {
    use pb::tensor_value::Value as V;
    let shape = ty.fixed_shape().ok_or("literal with an unknown dimension")?;
    let n = ty.num_elements().ok_or("literal too large")?;
    let count = |got: usize| if got == n { Ok(()) } else { Err(format!("literal of type {ty} holds {got} values")) };
    let bytes: Vec<u8> = match (&tv.value, ty.dtype) {
        (Some(V::Strings(s)), DType::String) => {
            count(s.values.len())?;
            return Tensor::from_strings(&shape, s.values.clone()).ok_or_else(|| "string count mismatch".to_string());
        }
        (Some(V::Floats(f)), DType::F32) => {
            count(f.values.len())?;
            f.values.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        (Some(V::Doubles(f)), DType::F64) => {
            count(f.values.len())?;
            f.values.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        (Some(V::Ints(i)), DType::I32) => {
            count(i.values.len())?;
            i.values.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        (Some(V::Ints(i)), DType::I16 | DType::U16) => {
            count(i.values.len())?;
            i.values.iter().flat_map(|v| (*v as u16).to_le_bytes()).collect()
        }
        (Some(V::LongInts(i)), DType::I64 | DType::U64) => {
            count(i.values.len())?;
            i.values.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        (Some(V::Bools(b)), DType::Bool) => {
            count(b.values.len())?;
            b.values.iter().map(|&v| u8::from(v)).collect()
        }
        (Some(V::Bytes(b)), _) => b.values.clone(),
        (None, _) if n == 0 => Vec::new(),
        _ => return Err(format!("literal of type {ty} is stored in the wrong TensorValue field")),
    };
    Tensor::from_bytes(ty.dtype, &shape, bytes).map_err(|e| e.to_string())
}

/// Serializes a model; blobs are laid out in `weights_dir/weight.bin` as they are met and
/// written by `finish` (`blob::BlobWriter`), so the model is never copied. Called by
/// `package::write`.
pub struct Emitter {
    opset: Opset,
    weights_dir: PathBuf,
    blobs: Option<BlobWriter>,
    /// The op being emitted, and the op of each blob appended (in order).
    op: String,
    blob_ops: Vec<String>,
}

impl Emitter {
    /// An emitter writing blobs under `weights_dir` (the file is created on the first blob).
    pub fn new(opset: Opset, weights_dir: &Path) -> Emitter {
        Emitter { opset, weights_dir: weights_dir.to_path_buf(), blobs: None, op: String::new(), blob_ops: Vec::new() }
    }

    /// Writes weight.bin if any const goes there; returns its size and the ops (consts) whose
    /// lazily cast fp16 values hold an infinity (see `Tensor::encode_range`).
    pub fn finish(self) -> Result<(u64, Vec<String>), Error> {
        let Some(b) = self.blobs else { return Ok((0, Vec::new())) };
        let (size, infinite) = b.finish()?;
        Ok((size, infinite.into_iter().filter_map(|i| self.blob_ops.get(i).cloned()).collect()))
    }

    fn value(&mut self, t: &Tensor) -> Result<pb::Value, Error> {
        let ty = value_type_to_proto(&ValueType::Tensor(t.tensor_type()));
        let value = if blob::stored_in_blob(t.dtype(), t.len(), self.opset) {
            let writer = match &mut self.blobs {
                Some(w) => w,
                none => none.insert(BlobWriter::create(&self.weights_dir.join(WEIGHT_FILE))),
            };
            let (offset, new) = writer.append(t)?;
            if new {
                self.blob_ops.push(self.op.clone());
            }
            pb::value::Value::BlobFileValue(pb::value::BlobFileValue {
                file_name: format!("{BLOB_PATH_PREFIX}{WEIGHTS_DIR}/{WEIGHT_FILE}"),
                offset,
            })
        } else {
            pb::value::Value::ImmediateValue(pb::value::ImmediateValue {
                value: Some(pb::value::immediate_value::Value::Tensor(immediate(t))),
            })
        };
        Ok(pb::Value { doc_string: String::new(), r#type: Some(ty), value: Some(value) })
    }

    fn operation(&mut self, op: &Operation) -> Result<pb::Operation, Error> {
        self.op.clone_from(&op.name);
        let mut inputs = BTreeMap::new();
        for (param, args) in &op.inputs {
            let mut arguments = Vec::with_capacity(args.len());
            for a in args {
                let binding = match a {
                    Argument::Name(n) => pb::argument::binding::Binding::Name(n.clone()),
                    Argument::Value(t) => pb::argument::binding::Binding::Value(self.value(t)?),
                };
                arguments.push(pb::argument::Binding { binding: Some(binding) });
            }
            inputs.insert(param.clone(), pb::Argument { arguments });
        }
        let mut attributes = BTreeMap::from([(NAME_ATTR.to_string(), self.value(&Tensor::string(&op.name))?)]);
        for (k, v) in &op.attributes {
            attributes.insert(k.clone(), self.value(v)?);
        }
        Ok(pb::Operation {
            r#type: op.op_type.clone(),
            inputs,
            outputs: op.outputs.iter().map(named_to_proto).collect(),
            blocks: op.blocks.iter().map(|b| self.block(b)).collect::<Result<_, _>>()?,
            attributes,
        })
    }

    fn block(&mut self, b: &Block) -> Result<pb::Block, Error> {
        Ok(pb::Block {
            inputs: b.inputs.iter().map(named_to_proto).collect(),
            outputs: b.outputs.clone(),
            operations: b.operations.iter().map(|o| self.operation(o)).collect::<Result<_, _>>()?,
            attributes: BTreeMap::new(),
        })
    }

    fn function(&mut self, f: &Function) -> Result<pb::Function, Error> {
        let key = f.opset.opset_name().to_string();
        Ok(pb::Function {
            inputs: f.inputs.iter().map(named_to_proto).collect(),
            opset: key.clone(),
            block_specializations: BTreeMap::from([(key, self.block(&f.block)?)]),
            attributes: BTreeMap::new(),
        })
    }
}

/// Most enumerated shapes read for one input (coremltools packages list a handful).
const MAX_ENUMERATED_SHAPES: usize = 1024;

/// The shapes a flexible input accepts, checked: a bounded number of enumerated shapes of
/// addressable size, or ranges whose lower bound is at most the upper.
fn shape_set(flex: &spec::array_feature_type::ShapeFlexibility) -> Result<crate::mil::ShapeSet, String> {
    use spec::array_feature_type::ShapeFlexibility;
    let dim = |d: i64| usize::try_from(d).map_err(|_| format!("negative dimension {d}"));
    match flex {
        ShapeFlexibility::EnumeratedShapes(e) => {
            if e.shapes.is_empty() || e.shapes.len() > MAX_ENUMERATED_SHAPES {
                return Err(format!("{} enumerated shapes (1 to {MAX_ENUMERATED_SHAPES} are read)", e.shapes.len()));
            }
            let shapes = e.shapes.iter().map(|s| s.shape.iter().map(|&d| dim(d)).collect::<Result<Vec<_>, _>>()).collect::<Result<Vec<_>, _>>()?;
            for s in &shapes {
                if let Some(problem) = TensorType::new(DType::F32, s).size_problem() {
                    return Err(format!("enumerated shape {s:?}: {problem}"));
                }
            }
            Ok(crate::mil::ShapeSet::Enumerated(shapes))
        }
        ShapeFlexibility::ShapeRange(r) => {
            let ranges = r
                .size_ranges
                .iter()
                .map(|s| {
                    let lo = usize::try_from(s.lower_bound).map_err(|_| format!("lower bound {} too large", s.lower_bound))?;
                    let hi = if s.upper_bound < 0 { None } else { Some(dim(s.upper_bound)?) };
                    if hi.is_some_and(|h| h < lo) {
                        return Err(format!("range {lo}..{} is empty", s.upper_bound));
                    }
                    Ok((lo, hi))
                })
                .collect::<Result<Vec<_>, String>>()?;
            if ranges.is_empty() {
                return Err("a shape range with no dimensions".into());
            }
            Ok(crate::mil::ShapeSet::Range(ranges))
        }
    }
}

fn named_to_proto(n: &NamedType) -> pb::NamedValueType {
    pb::NamedValueType { name: n.name.clone(), r#type: Some(value_type_to_proto(&n.ty)) }
}

/// The ModelDescription feature of one model input/output/state, or why it cannot be one.
fn feature(model: &Model, name: &str, t: &TensorType, state: bool) -> Result<spec::FeatureDescription, String> {
    let data_type = array_dtype(t.dtype).ok_or_else(|| format!("`{name}` has dtype {}, which a model input/output cannot have", t.dtype))? as i32;
    let shape: Vec<i64> = match t.fixed_shape() {
        Some(s) => s.iter().map(|&d| d as i64).collect(),
        None if state => return Err(format!("state `{name}` needs a static shape")),
        None => Vec::new(),
    };
    let image = if state { None } else { model.images.get(name) };
    if let Some(&space) = image {
        let [1, c, h, w] = shape[..] else { return Err(format!("image `{name}` must be [1, C, H, W], not {t}")) };
        if c != space.channels() as i64 || t.dtype != DType::F32 {
            return Err(format!("image `{name}` ({}) must be an fp32 tensor with {} channel(s), not {t}", space.name(), space.channels()));
        }
        let color_space = match space {
            ColorSpace::Gray => spec::image_feature_type::ColorSpace::Grayscale,
            ColorSpace::Rgb => spec::image_feature_type::ColorSpace::Rgb,
            ColorSpace::Bgr => spec::image_feature_type::ColorSpace::Bgr,
        } as i32;
        let ty = spec::feature_type::Type::ImageType(spec::ImageFeatureType { width: w, height: h, color_space });
        return Ok(spec::FeatureDescription {
            name: name.to_string(),
            short_description: model.feature_descriptions.get(name).cloned().unwrap_or_default(),
            r#type: Some(spec::FeatureType { r#type: Some(ty), is_optional: false }),
        });
    }
    let array = spec::ArrayFeatureType { shape, data_type, shape_flexibility: None, default_optional_value: None };
    let ty = if state {
        spec::feature_type::Type::StateType(spec::StateFeatureType { r#type: Some(spec::state_feature_type::Type::ArrayType(array)) })
    } else {
        spec::feature_type::Type::MultiArrayType(array)
    };
    Ok(spec::FeatureDescription {
        name: name.to_string(),
        short_description: model.feature_descriptions.get(name).cloned().unwrap_or_default(),
        r#type: Some(spec::FeatureType { r#type: Some(ty), is_optional: false }),
    })
}

/// Dtypes Core ML accepts for model inputs and outputs at `opset` (fp16 from iOS16, int8 from iOS26).
pub fn io_dtype_allowed(d: DType, opset: Opset) -> bool {
    match d {
        DType::F32 | DType::I32 => true,
        DType::F16 => opset >= Opset::Ios16,
        DType::I8 => opset >= Opset::Ios26,
        _ => false,
    }
}

/// The interface of one function of `model` as Core ML describes it: inputs, outputs (a
/// classifier's label and dictionary first), states, and the classifier's feature names.
struct Described {
    input: Vec<spec::FeatureDescription>,
    output: Vec<spec::FeatureDescription>,
    state: Vec<spec::FeatureDescription>,
    predicted: [String; 2],
}

/// Describes function `f` of `model` (`fname`, for messages). A flexible input (its shapes in
/// `model.flexible`) is declared at its first shape with the others listed, as coremltools
/// writes `EnumeratedShapes`, or at its lower bounds with a `ShapeRange`; any other input
/// needs a static shape.
fn describe(model: &Model, fname: &str, f: &Function) -> Result<Described, String> {
    let mut d = Described { input: Vec::new(), output: Vec::new(), state: Vec::new(), predicted: Default::default() };
    let at = if model.program.functions.len() > 1 { format!(" of function `{fname}`") } else { String::new() };
    for i in &f.inputs {
        match &i.ty {
            ValueType::Tensor(t) => {
                if !io_dtype_allowed(t.dtype, f.opset) {
                    return Err(format!("input `{}`{at} is {}, not allowed as model I/O at {}", i.name, t.dtype, f.opset.target_name()));
                }
                d.input.push(match (t.fixed_shape(), model.flexible.get(&i.name)) {
                    (None, Some(set @ crate::mil::ShapeSet::Enumerated(shapes))) if shapes.iter().all(|s| set.accepts(s) && t.rank() == s.len()) => {
                        let first = TensorType::new(t.dtype, &shapes[0]);
                        let mut feature = feature(model, &i.name, &first, false)?;
                        if let Some(spec::feature_type::Type::MultiArrayType(a)) = feature.r#type.as_mut().and_then(|t| t.r#type.as_mut()) {
                            let shapes = shapes.iter().map(|s| spec::array_feature_type::Shape { shape: s.iter().map(|&n| n as i64).collect() }).collect();
                            a.shape_flexibility = Some(spec::array_feature_type::ShapeFlexibility::EnumeratedShapes(spec::array_feature_type::EnumeratedShapes { shapes }));
                        }
                        feature
                    }
                    (None, Some(crate::mil::ShapeSet::Range(r))) if r.len() == t.rank() => {
                        // Declared at the lower bounds, as coremltools writes a `RangeDim`'s default.
                        let lower: Vec<usize> = r.iter().map(|&(lo, _)| lo).collect();
                        let mut feature = feature(model, &i.name, &TensorType::new(t.dtype, &lower), false)?;
                        if let Some(spec::feature_type::Type::MultiArrayType(a)) = feature.r#type.as_mut().and_then(|t| t.r#type.as_mut()) {
                            let size_ranges = r.iter().map(|&(lo, hi)| spec::SizeRange { lower_bound: lo as u64, upper_bound: hi.map_or(-1, |h| h as i64) }).collect();
                            a.shape_flexibility = Some(spec::array_feature_type::ShapeFlexibility::ShapeRange(spec::array_feature_type::ShapeRange { size_ranges }));
                        }
                        feature
                    }
                    (None, _) => return Err(format!("input `{}`{at} has a flexible shape {t} but no shapes listed; only static, ranged or enumerated input shapes can be written", i.name)),
                    (Some(_), _) => feature(model, &i.name, t, false)?,
                });
            }
            ValueType::State(t) => d.state.push(feature(model, &i.name, t, true)?),
        }
    }
    let types: HashMap<&str, &TensorType> =
        f.block.walk_ops().into_iter().flat_map(|op| op.outputs.iter()).map(|o| (o.name.as_str(), o.ty.tensor())).collect();
    for o in &f.block.outputs {
        let t = types.get(o.as_str()).ok_or_else(|| format!("output `{o}`{at} is not produced by any op"))?;
        if !io_dtype_allowed(t.dtype, f.opset) {
            return Err(format!("output `{o}`{at} is {}, not allowed as model I/O at {}", t.dtype, f.opset.target_name()));
        }
        match &model.classifier {
            Some(c) if c.probabilities == *o => {
                if t.dtype != DType::F32 {
                    return Err(format!("classifier probabilities `{o}` are {}, not fp32", t.dtype));
                }
                let [label, probs] = super::classify::features(c, &model.feature_descriptions);
                d.predicted = [label.name.clone(), probs.name.clone()];
                d.output.splice(0..0, [label, probs]);
            }
            _ => d.output.push(feature(model, o, t, false)?),
        }
    }
    if let Some(c) = &model.classifier {
        if !f.block.outputs.contains(&c.probabilities) {
            return Err(format!("classifier probabilities `{}` are not an output{at} of the program", c.probabilities));
        }
    }
    Ok(d)
}

/// The whole `Model` protobuf for `model`, streaming blobs through `emit`. A single-function
/// model describes `main` in the `ModelDescription`; a multifunction one (iOS18+) describes each
/// function in `functions` and names the default one.
pub fn model_to_proto(model: &Model, emit: &mut Emitter) -> Result<spec::Model, String> {
    let opset = model.program.functions.values().map(|f| f.opset).max().ok_or("the program has no function")?;
    let mut description = spec::ModelDescription::default();
    match &model.default_function {
        None => {
            let main = model.program.main().ok_or("the program has no `main` function")?;
            if model.program.functions.len() > 1 {
                return Err("a program of several functions needs a default function".into());
            }
            let d = describe(model, MAIN, main)?;
            [description.predicted_feature_name, description.predicted_probabilities_name] = d.predicted;
            (description.input, description.output, description.state) = (d.input, d.output, d.state);
        }
        Some(default) => {
            if opset < Opset::Ios18 {
                return Err(format!("a multifunction package needs iOS18 or later, not {}", opset.target_name()));
            }
            if !model.program.functions.contains_key(default) {
                return Err(format!("default function `{default}` is not a function of the program"));
            }
            for (name, f) in &model.program.functions {
                let d = describe(model, name, f)?;
                let [predicted_feature_name, predicted_probabilities_name] = d.predicted;
                description.functions.push(spec::FunctionDescription {
                    name: name.clone(),
                    input: d.input,
                    output: d.output,
                    state: d.state,
                    predicted_feature_name,
                    predicted_probabilities_name,
                });
            }
            description.default_function_name = default.clone();
        }
    }
    let md = &model.metadata;
    if *md != Metadata::default() {
        description.metadata = Some(spec::Metadata {
            short_description: md.short_description.clone(),
            version_string: md.version.clone(),
            author: md.author.clone(),
            license: md.license.clone(),
            user_defined: md.user_defined.clone(),
        });
    }
    let mut functions = BTreeMap::new();
    for (name, f) in &model.program.functions {
        let mut pf = emit.function(f).map_err(|e| e.to_string())?;
        if let Some(c) = &model.classifier {
            for block in pf.block_specializations.values_mut() {
                block.operations.push(super::classify::op(c));
                let predicted = [c.predicted.clone(), format!("{}{}", c.predicted, super::classify::PROBS_SUFFIX)];
                let rest: Vec<String> = block.outputs.iter().filter(|o| **o != c.probabilities).cloned().collect();
                block.outputs = predicted.into_iter().chain(rest).collect();
            }
        }
        functions.insert(name.clone(), pf);
    }
    Ok(spec::Model {
        specification_version: opset.spec_version(),
        description: Some(description),
        is_updatable: false,
        r#type: Some(spec::model::Type::MlProgram(pb::Program {
            version: PROGRAM_VERSION,
            functions,
            doc_string: String::new(),
            attributes: BTreeMap::new(),
        })),
    })
}

/// Reads values of a model being read, mapping each weight file once. Called by `package::read`.
pub struct Reader {
    /// The model file, for error messages.
    pub model_path: PathBuf,
    /// The directory `@model_path` stands for.
    pub model_dir: PathBuf,
    /// The package root: weight files must resolve inside it (symlinks followed).
    pub package_dir: PathBuf,
    maps: HashMap<PathBuf, Arc<memmap2::Mmap>>,
}

impl Reader {
    /// A reader resolving blob paths against the directory of `model_path`, a file inside the
    /// package `package_dir`.
    pub fn new(model_path: &Path, package_dir: &Path) -> Reader {
        let model_dir = model_path.parent().map(Path::to_path_buf).unwrap_or_default();
        Reader { model_path: model_path.to_path_buf(), model_dir, package_dir: package_dir.to_path_buf(), maps: HashMap::new() }
    }

    /// The mapping of the weight file `path` (`model_dir` joined with a blob's relative name),
    /// made on first use: it must resolve inside the package and be a regular file (a FIFO
    /// would block the map).
    fn weight_map(&mut self, path: &Path) -> Result<Arc<memmap2::Mmap>, Error> {
        if let Some(m) = self.maps.get(path) {
            return Ok(Arc::clone(m));
        }
        let in_package = path.strip_prefix(&self.package_dir).map_err(|_| self.malformed("weight file outside the package"))?;
        files::inside(&self.package_dir, in_package)?;
        let map = Arc::new(files::map_regular(path)?);
        self.maps.insert(path.to_path_buf(), Arc::clone(&map));
        Ok(map)
    }

    fn malformed(&self, reason: impl Into<String>) -> Error {
        Error::Malformed { path: self.model_path.clone(), reason: reason.into() }
    }

    fn value(&mut self, v: &pb::Value, what: &str) -> Result<Tensor, Error> {
        let ty = match value_type_from_proto(v.r#type.as_ref()).map_err(|e| self.malformed(format!("{what}: {e}")))? {
            ValueType::Tensor(t) => t,
            ValueType::State(_) => return Err(self.malformed(format!("{what}: a literal cannot be a state"))),
        };
        match &v.value {
            Some(pb::value::Value::ImmediateValue(iv)) => match &iv.value {
                Some(pb::value::immediate_value::Value::Tensor(tv)) => {
                    from_immediate(&ty, tv).map_err(|e| self.malformed(format!("{what}: {e}")))
                }
                _ => Err(self.malformed(format!("{what}: only tensor literals are supported"))),
            },
            Some(pb::value::Value::BlobFileValue(bf)) => {
                let file = shown(&bf.file_name);
                let rel = bf.file_name.strip_prefix(BLOB_PATH_PREFIX).ok_or_else(|| {
                    self.malformed(format!("{what}: blob file `{file}` does not start with {BLOB_PATH_PREFIX}"))
                })?;
                if rel.is_empty() || Path::new(rel).components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                    return Err(self.malformed(format!("{what}: blob file `{file}` leaves the package")));
                }
                let path = self.model_dir.join(rel);
                let map = self.weight_map(&path)?;
                let shape = ty.fixed_shape().ok_or_else(|| self.malformed(format!("{what}: blob with unknown shape")))?;
                blob::read_blob(&path, &map, bf.offset, ty.dtype, &shape)
            }
            None => Err(self.malformed(format!("{what}: value holds no data"))),
        }
    }

    fn named(&self, n: &pb::NamedValueType) -> Result<NamedType, Error> {
        let ty = value_type_from_proto(n.r#type.as_ref()).map_err(|e| self.malformed(format!("`{}`: {e}", shown(&n.name))))?;
        Ok(NamedType { name: n.name.clone(), ty })
    }

    fn operation(&mut self, op: &pb::Operation, opset: Opset) -> Result<Operation, Error> {
        let name = match op.attributes.get(NAME_ATTR) {
            Some(v) => self.value(v, "op name")?.as_str().map(str::to_string).ok_or_else(|| self.malformed("op name is not a string"))?,
            None => op.outputs.first().map(|o| o.name.clone()).unwrap_or_default(),
        };
        let mut inputs = Vec::with_capacity(op.inputs.len());
        for (param, arg) in &op.inputs {
            let mut args = Vec::with_capacity(arg.arguments.len());
            for b in &arg.arguments {
                args.push(match &b.binding {
                    Some(pb::argument::binding::Binding::Name(n)) => Argument::Name(n.clone()),
                    Some(pb::argument::binding::Binding::Value(v)) => {
                        Argument::Value(self.value(v, &format!("op `{}` input `{}`", shown(&name), shown(param)))?)
                    }
                    None => return Err(self.malformed(format!("op `{}` input `{}` has an empty binding", shown(&name), shown(param)))),
                });
            }
            inputs.push((param.clone(), args));
        }
        ops::sort_params(&op.r#type, opset, &mut inputs);
        let mut attributes = BTreeMap::new();
        for (k, v) in op.attributes.iter().filter(|(k, _)| k.as_str() != NAME_ATTR) {
            attributes.insert(k.clone(), self.value(v, &format!("op `{}` attribute `{}`", shown(&name), shown(k)))?);
        }
        Ok(Operation {
            op_type: op.r#type.clone(),
            name,
            inputs,
            outputs: op.outputs.iter().map(|o| self.named(o)).collect::<Result<_, _>>()?,
            attributes,
            blocks: op.blocks.iter().map(|b| self.block(b, opset)).collect::<Result<_, _>>()?,
            source: None,
        })
    }

    fn block(&mut self, b: &pb::Block, opset: Opset) -> Result<Block, Error> {
        Ok(Block {
            inputs: b.inputs.iter().map(|i| self.named(i)).collect::<Result<_, _>>()?,
            operations: b.operations.iter().map(|o| self.operation(o, opset)).collect::<Result<_, _>>()?,
            outputs: b.outputs.clone(),
        })
    }

    /// The IR of a decoded `Model` protobuf (ML Program only).
    pub fn model(&mut self, m: &spec::Model) -> Result<Model, Error> {
        let model_path = self.model_path.clone();
        let unsupported = |reason: String| Error::Unsupported { path: model_path.clone(), reason };
        let Some(spec::model::Type::MlProgram(p)) = &m.r#type else {
            return Err(unsupported(format!(
                "not an ML Program model (specificationVersion {}); only ML Program (.mlpackage) models are supported",
                m.specification_version
            )));
        };
        if p.version != PROGRAM_VERSION {
            return Err(self.malformed(format!("Program.version is {}, expected {PROGRAM_VERSION}", p.version)));
        }
        let mut functions = BTreeMap::new();
        let mut classifier = None;
        for (fname, f) in &p.functions {
            let opset = Opset::from_opset_name(&f.opset).ok_or_else(|| unsupported(format!("function `{}` has unknown opset `{}`", shown(fname), shown(&f.opset))))?;
            let block = f
                .block_specializations
                .get(&f.opset)
                .ok_or_else(|| self.malformed(format!("function `{}` has no block for its opset {}", shown(fname), f.opset)))?;
            let inputs = f.inputs.iter().map(|i| self.named(i)).collect::<Result<_, _>>()?;
            let block = if block.operations.last().is_some_and(|o| o.r#type == "classify") {
                let mut block = block.clone();
                classifier = super::classify::strip(&mut block).map_err(|m| self.malformed(m))?;
                self.block(&block, opset)?
            } else {
                self.block(block, opset)?
            };
            functions.insert(fname.clone(), Function { inputs, opset, block });
        }
        let program = Program { functions };
        let mut d = m.description.clone().unwrap_or_default();
        let default_function = (!d.functions.is_empty()).then(|| d.default_function_name.clone());
        match &default_function {
            Some(name) if !program.functions.contains_key(name) => {
                return Err(self.malformed(format!("the default function `{}` is not a function of the program", shown(name))));
            }
            Some(_) => {
                if let Some(f) = d.functions.iter().find(|f| !program.functions.contains_key(&f.name)) {
                    return Err(self.malformed(format!("function `{}` is described but not in the program", shown(&f.name))));
                }
                // Features are read from every function's description, as one interface.
                for f in std::mem::take(&mut d.functions) {
                    d.input.extend(f.input);
                    d.output.extend(f.output);
                    d.state.extend(f.state);
                }
            }
            None if program.main().is_none() => return Err(self.malformed("the program has no `main` function")),
            None => {}
        }
        let metadata = d
            .metadata
            .map(|md| Metadata {
                short_description: md.short_description,
                version: md.version_string,
                author: md.author,
                license: md.license,
                user_defined: md.user_defined,
            })
            .unwrap_or_default();
        let feature_descriptions = d
            .input
            .iter()
            .chain(&d.output)
            .chain(&d.state)
            .filter(|f| !f.short_description.is_empty())
            .map(|f| (f.name.clone(), f.short_description.clone()))
            .collect();
        let images = d
            .input
            .iter()
            .chain(&d.output)
            .filter_map(|f| match f.r#type.as_ref()?.r#type.as_ref()? {
                spec::feature_type::Type::ImageType(i) => Some((f.name.clone(), i.color_space)),
                _ => None,
            })
            .map(|(name, space)| {
                let space = match spec::image_feature_type::ColorSpace::try_from(space) {
                    Ok(spec::image_feature_type::ColorSpace::Grayscale) => ColorSpace::Gray,
                    Ok(spec::image_feature_type::ColorSpace::Rgb) => ColorSpace::Rgb,
                    Ok(spec::image_feature_type::ColorSpace::Bgr) => ColorSpace::Bgr,
                    _ => return Err(unsupported(format!("image feature `{}` has color space {space} (GRAYSCALE, RGB and BGR are supported)", shown(&name)))),
                };
                Ok((name, space))
            })
            .collect::<Result<_, _>>()?;
        let flexible = d
            .input
            .iter()
            .filter_map(|f| match f.r#type.as_ref()?.r#type.as_ref()? {
                spec::feature_type::Type::MultiArrayType(a) => Some((f.name.clone(), a.shape_flexibility.as_ref()?)),
                _ => None,
            })
            .map(|(name, flex)| shape_set(flex).map(|s| (name.clone(), s)).map_err(|m| unsupported(format!("input `{}`: {m}", shown(&name)))))
            .collect::<Result<_, _>>()?;
        Ok(Model { program, metadata, feature_descriptions, images, compressed: Vec::new(), flexible, classifier, default_function })
    }
}
