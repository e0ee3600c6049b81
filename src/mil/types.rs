//! Value types of the MIL IR: element dtypes, dimensions, tensor and state types.
//! Mirrors MIL.proto's `DataType`, `Dimension`, `TensorType` and `StateType`
//! (shared/docs/coreml-format.md §2.3); `package::proto` maps them to and from the wire.

use std::fmt;

/// Element type of a MIL tensor, named as MIL spells it (`fp16`, `int32`, …).
/// Used by every stage; the wire numbers live in `package::proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    Bool,
    String,
    F16,
    F32,
    F64,
    BF16,
    I8,
    I16,
    I32,
    I64,
    I4,
    U8,
    U16,
    U32,
    U64,
    U1,
    U2,
    U3,
    U4,
    U6,
    F8E4M3FN,
    F8E5M2,
}

impl DType {
    /// Every dtype, for tables and tests that walk them all.
    pub const ALL: [DType; 22] = [
        DType::Bool,
        DType::String,
        DType::F16,
        DType::F32,
        DType::F64,
        DType::BF16,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::I4,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::U1,
        DType::U2,
        DType::U3,
        DType::U4,
        DType::U6,
        DType::F8E4M3FN,
        DType::F8E5M2,
    ];

    /// MIL's own spelling, as in `cast(dtype="fp16")` and coremltools' printed programs.
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::String => "string",
            DType::F16 => "fp16",
            DType::F32 => "fp32",
            DType::F64 => "fp64",
            DType::BF16 => "bf16",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::I4 => "int4",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::U1 => "uint1",
            DType::U2 => "uint2",
            DType::U3 => "uint3",
            DType::U4 => "uint4",
            DType::U6 => "uint6",
            DType::F8E4M3FN => "fp8e4m3fn",
            DType::F8E5M2 => "fp8e5m2",
        }
    }

    /// Inverse of [`DType::name`]; `cast`'s `dtype` parameter is parsed with it.
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bits one element takes in raw storage (blob payloads, `TensorValue.bytes`); `None` for strings.
    pub fn bits(self) -> Option<usize> {
        Some(match self {
            DType::String => return None,
            DType::U1 => 1,
            DType::U2 => 2,
            DType::U3 => 3,
            DType::I4 | DType::U4 => 4,
            DType::U6 => 6,
            DType::Bool | DType::I8 | DType::U8 | DType::F8E4M3FN | DType::F8E5M2 => 8,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 16,
            DType::F32 | DType::I32 | DType::U32 => 32,
            DType::F64 | DType::I64 | DType::U64 => 64,
        })
    }

    /// Bytes needed for `n` elements, sub-byte types packed LSB-first and rounded up
    /// (MILBlob's sizeInBytes rule, coreml-format.md §4); `None` for strings or on overflow.
    pub fn storage_bytes(self, n: usize) -> Option<usize> {
        let bits = n.checked_mul(self.bits()?)?;
        Some(bits.div_ceil(8))
    }

    /// True for the IEEE float types that MIL computes in (fp16, fp32, fp64, bf16).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::F32 | DType::F64 | DType::BF16)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Largest size of one axis: MIL describes shapes to its own ops in int32 (`shape`, the
/// `shape` of `reshape`, slice bounds), so a longer axis could not be read back by the program.
pub const MAX_DIM: usize = i32::MAX as usize;
/// Largest element count of one tensor type: 2^40 (4 TiB of fp32), far past any real model,
/// and small enough that byte sizes (up to 8 bytes per element) and index arithmetic on it
/// never overflow 64 bits.
pub const MAX_ELEMENTS: usize = 1 << 40;
/// Most axes a tensor type may have: numpy's limit (torch models stay under 8); per-op work
/// on shapes is linear in the rank, so an unbounded rank read from a file would be a bomb.
pub const MAX_RANK: usize = 64;

/// Element count of a tensor of shape `dims` (1 for rank 0), `None` when the product
/// overflows `usize`. Every element count computed from file- or model-controlled dims goes
/// through this (or [`TensorType::num_elements`]) instead of `product()`, which wraps.
pub fn checked_elements(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n))
}

/// One dimension of a tensor type: a known size, or unknown (a flexible input dimension).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Fixed(usize),
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// The type of a tensor value: dtype plus one `Dim` per axis (rank 0 = scalar).
/// Built by `Builder` through each op's `infer`; read from packages by `package::read`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorType {
    /// A tensor type with every dimension known.
    pub fn new(dtype: DType, shape: &[usize]) -> TensorType {
        TensorType { dtype, shape: shape.iter().map(|&n| Dim::Fixed(n)).collect() }
    }

    /// A rank-0 tensor (MIL has no separate scalar type).
    pub fn scalar(dtype: DType) -> TensorType {
        TensorType { dtype, shape: Vec::new() }
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The concrete shape, or `None` when any dimension is unknown.
    pub fn fixed_shape(&self) -> Option<Vec<usize>> {
        self.shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Some(*n),
                Dim::Unknown => None,
            })
            .collect()
    }

    /// Element count of a fully known shape; `None` when a dim is unknown or the count
    /// overflows.
    pub fn num_elements(&self) -> Option<usize> {
        checked_elements(&self.fixed_shape()?)
    }

    /// Why this type is beyond what a tensor may be (rank over [`MAX_RANK`], a dim over
    /// [`MAX_DIM`], known dims multiplying past [`MAX_ELEMENTS`]), or `None` when it is fine.
    /// Unknown dims count as 1. `ops::check` asks this of every inferred output type, so a file
    /// cannot make the IR hold a shape whose element count wraps.
    pub fn size_problem(&self) -> Option<String> {
        if self.rank() > MAX_RANK {
            return Some(format!("rank {} is more than the {MAX_RANK} axes allowed", self.rank()));
        }
        let mut count = 1usize;
        for d in &self.shape {
            let Dim::Fixed(n) = *d else { continue };
            if n > MAX_DIM {
                return Some(format!("{self} has a dim of {n}, more than the int32 limit {MAX_DIM}"));
            }
            count = match count.checked_mul(n) {
                Some(c) if c <= MAX_ELEMENTS => c,
                _ => return Some(format!("{self} has more than {MAX_ELEMENTS} elements")),
            };
        }
        None
    }

    /// Same shape, another dtype (what `cast` and comparisons infer).
    pub fn with_dtype(&self, dtype: DType) -> TensorType {
        TensorType { dtype, shape: self.shape.clone() }
    }
}

impl fmt::Display for TensorType {
    /// coremltools' printed form: `(1, 3, 8, 8, fp16)`, scalars `(fp32)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for d in &self.shape {
            write!(f, "{d}, ")?;
        }
        write!(f, "{})", self.dtype)
    }
}

/// The type of a named value: a tensor, or an iOS18 state wrapping a tensor type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    Tensor(TensorType),
    State(TensorType),
}

impl ValueType {
    /// The tensor type itself, or the one a state wraps.
    pub fn tensor(&self) -> &TensorType {
        match self {
            ValueType::Tensor(t) | ValueType::State(t) => t,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueType::Tensor(t) => write!(f, "{t}"),
            ValueType::State(t) => write!(f, "state{t}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_names_round_trip_and_are_unique() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
    }

    #[test]
    fn element_counts_never_wrap() {
        assert_eq!(checked_elements(&[]), Some(1));
        assert_eq!(checked_elements(&[2, 3, 0]), Some(0));
        assert_eq!(checked_elements(&[1 << 32, 1 << 32]), None);
        assert_eq!(checked_elements(&[usize::MAX, 2]), None);
        assert_eq!(TensorType::new(DType::F32, &[1 << 32, 1 << 32]).num_elements(), None);
    }

    #[test]
    fn sizes_beyond_the_ceilings_are_named() {
        assert_eq!(TensorType::new(DType::F32, &[2, 3]).size_problem(), None);
        assert_eq!(TensorType { dtype: DType::F32, shape: vec![Dim::Unknown, Dim::Fixed(MAX_DIM)] }.size_problem(), None);
        let wrap = TensorType::new(DType::F32, &[65536, 65536, 65536, 65536]).size_problem().unwrap();
        assert!(wrap.contains("more than 1099511627776 elements"), "{wrap}");
        let dim = TensorType::new(DType::F32, &[MAX_DIM + 1]).size_problem().unwrap();
        assert!(dim.contains("int32 limit"), "{dim}");
        assert!(TensorType::new(DType::F32, &[1; MAX_RANK + 1]).size_problem().unwrap().starts_with("rank 65"));
    }

    #[test]
    fn sub_byte_storage_rounds_up() {
        assert_eq!(DType::U4.storage_bytes(3), Some(2));
        assert_eq!(DType::U3.storage_bytes(3), Some(2));
        assert_eq!(DType::F16.storage_bytes(5), Some(10));
        assert_eq!(DType::String.storage_bytes(1), None);
    }
}
