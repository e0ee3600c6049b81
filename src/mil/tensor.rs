//! Constant tensor data in the IR: the `val` of `const` ops, inline argument values, and
//! constexpr attributes. Elements are kept as raw little-endian bytes exactly as Core ML stores
//! them (fp16 as IEEE binary16 bits, sub-byte types packed LSB-first), so writing a package is a
//! copy and reading one back is bit-exact. Bytes are owned or a slice of a memory-mapped file
//! (`package::read` maps weight.bin; loaders map `.pt`/`.safetensors`), never a second copy.
//! An fp16 weight cast from mapped fp32 data stays lazy ([`Tensor::f16_of`]): it is converted
//! chunk by chunk while `package::write` streams it, so converting never holds the model twice.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use half::f16;

use super::types::{checked_elements, DType, TensorType};

/// Where a tensor's bytes live.
#[derive(Clone)]
enum Bytes {
    Owned(Arc<Vec<u8>>),
    Mapped { map: Arc<memmap2::Mmap>, start: usize, len: usize },
    /// fp16 values computed on demand from an fp32 tensor (round to nearest even).
    F16Of(Arc<Tensor>),
}

/// Most dims of a shape an error message lists (a shape read from a file can have any rank).
const MAX_DIMS_SHOWN: usize = 16;

/// Element storage: raw bytes for every numeric/bool dtype, or a list of strings.
#[derive(Clone)]
enum Data {
    Raw(Bytes),
    Strings(Vec<String>),
}

/// A constant tensor: dtype, concrete shape and element data.
/// Cheap to clone (data is shared). Equality compares dtype, shape and bytes, whatever the storage.
#[derive(Clone)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Data,
}

/// Why raw bytes cannot form a tensor of the asked type (wrong length, string dtype).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TensorError {
    #[error("{dtype} tensor of shape {shape:?} needs {expected} bytes, got {got}")]
    WrongLength { dtype: DType, shape: Vec<usize>, expected: usize, got: usize },
    #[error("{dtype} tensor of shape {shape:?} is too large to address")]
    TooLarge { dtype: DType, shape: Vec<usize> },
    #[error("string tensors cannot be built from raw bytes")]
    StringFromBytes,
}

fn expected_len(dtype: DType, shape: &[usize]) -> Result<usize, TensorError> {
    let too_large = || TensorError::TooLarge { dtype, shape: shape.iter().take(MAX_DIMS_SHOWN).copied().collect() };
    let n = checked_elements(shape).ok_or_else(too_large)?;
    match dtype {
        DType::String => Err(TensorError::StringFromBytes),
        _ => dtype.storage_bytes(n).ok_or_else(too_large),
    }
}

impl Tensor {
    /// A tensor over owned little-endian bytes; checks the length against dtype and shape.
    pub fn from_bytes(dtype: DType, shape: &[usize], bytes: Vec<u8>) -> Result<Tensor, TensorError> {
        let expected = expected_len(dtype, shape)?;
        if bytes.len() != expected {
            let shape = shape.iter().take(MAX_DIMS_SHOWN).copied().collect();
            return Err(TensorError::WrongLength { dtype, shape, expected, got: bytes.len() });
        }
        Ok(Tensor { dtype, shape: shape.to_vec(), data: Data::Raw(Bytes::Owned(Arc::new(bytes))) })
    }

    /// A tensor viewing `map[start..start+len]` without copying; checks bounds and length.
    /// Called by `package::read` for weight.bin payloads.
    pub fn from_mapped(
        dtype: DType,
        shape: &[usize],
        map: Arc<memmap2::Mmap>,
        start: usize,
    ) -> Result<Tensor, TensorError> {
        let len = expected_len(dtype, shape)?;
        // `start` past the end of the map counts as nothing available (never a slice panic).
        let available = map.len().checked_sub(start).ok_or(TensorError::WrongLength { dtype, shape: Vec::new(), expected: len, got: 0 })?;
        if available < len {
            let shape = shape.iter().take(MAX_DIMS_SHOWN).copied().collect();
            return Err(TensorError::WrongLength { dtype, shape, expected: len, got: available });
        }
        Ok(Tensor { dtype, shape: shape.to_vec(), data: Data::Raw(Bytes::Mapped { map, start, len }) })
    }

    /// An fp32 tensor; panics only if `values.len()` disagrees with `shape` (a programming error).
    pub fn from_f32(shape: &[usize], values: &[f32]) -> Tensor {
        Self::from_le(DType::F32, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// An fp16 tensor from f32 values, rounded to nearest even.
    pub fn from_f32_as_f16(shape: &[usize], values: &[f32]) -> Tensor {
        // A lazy cast, so the fp32 values stay known: `passes::fp16_range` checks them.
        Self::f16_of(&Self::from_f32(shape, values))
    }

    /// An integer tensor of `dtype` (whole-byte or sub-byte, packed LSB first) from values
    /// that fit it; `None` for other dtypes or a value out of range. Used by `constexpr` for
    /// decompressed masks and indices.
    pub fn from_ints(dtype: DType, shape: &[usize], values: &[i64]) -> Option<Tensor> {
        let (lo, hi): (i64, i64) = match dtype {
            DType::I4 => (-8, 7),
            DType::U1 | DType::U2 | DType::U3 | DType::U4 | DType::U6 => (0, (1 << dtype.bits()?) - 1),
            DType::I8 => (-128, 127),
            DType::U8 | DType::Bool => (0, 255),
            DType::I32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
            _ => return None,
        };
        if values.iter().any(|v| !(lo..=hi).contains(v)) {
            return None;
        }
        let bits = dtype.bits()?;
        let bytes = match bits {
            8 => values.iter().map(|&v| v as u8).collect(),
            32 => values.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
            _ => {
                let mut out = vec![0u8; dtype.storage_bytes(values.len())?];
                for (k, &v) in values.iter().enumerate() {
                    for j in 0..bits {
                        let bit = k * bits + j;
                        out[bit / 8] |= (((v >> j) & 1) as u8) << (bit % 8);
                    }
                }
                out
            }
        };
        Tensor::from_bytes(dtype, shape, bytes).ok()
    }

    /// An int32 tensor.
    pub fn from_i32(shape: &[usize], values: &[i32]) -> Tensor {
        Self::from_le(DType::I32, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// A bool tensor (one byte per element, 0 or 1).
    pub fn from_bools(shape: &[usize], values: &[bool]) -> Tensor {
        Self::from_le(DType::Bool, shape, values.iter().map(|&b| u8::from(b)).collect())
    }

    /// `src` (fp32) as fp16, converted lazily: reading [`Tensor::bytes`] converts on demand and
    /// [`Tensor::write_le`] converts while writing. Other dtypes are returned unchanged.
    pub fn f16_of(src: &Tensor) -> Tensor {
        if src.dtype != DType::F32 {
            return src.clone();
        }
        Tensor { dtype: DType::F16, shape: src.shape.clone(), data: Data::Raw(Bytes::F16Of(Arc::new(src.clone()))) }
    }

    /// The fp32 values behind a float tensor, at full precision: a lazy fp16 cast's source
    /// ([`Tensor::f16_of`]) rather than its rounded values. Lowerings use it to see what an
    /// fp16 weight would lose (overflow) before deciding how to compute with it.
    pub fn to_f32_vec_exact(&self) -> Option<Vec<f32>> {
        match &self.data {
            Data::Raw(Bytes::F16Of(src)) => src.to_f32_vec(),
            _ => self.to_f32_vec(),
        }
    }

    /// The fp32 tensor behind a lazy fp16 cast ([`Tensor::f16_of`]), in this tensor's shape (a
    /// reshaped cast shares its source), for a pass that keeps a constant in fp32 after all
    /// (`passes::fp16_range`).
    pub fn f16_source(&self) -> Option<Tensor> {
        match &self.data {
            Data::Raw(Bytes::F16Of(src)) => src.reshaped(&self.shape),
            _ => None,
        }
    }

    /// What storing this lazy fp16 cast ([`Tensor::f16_of`]) would lose, from its fp32 source:
    /// the largest finite magnitude when some value rounds to ±inf in fp16, or the fact that
    /// every non-zero value rounds to zero. `None` when fp16 holds it (and for any other tensor).
    /// Scans the source on all cores, releasing mapped pages as it goes so resident memory stays
    /// bounded. Called by `passes::fp16_range` for every fp16 constant of a converted program.
    pub fn fp16_loss(&self) -> Option<Fp16Loss> {
        let Data::Raw(Bytes::F16Of(src)) = &self.data else { return None };
        let bytes = src.bytes();
        let scan = |from: usize, part: &[u8]| {
            let mut peak = 0u32;
            for (i, chunk) in part.chunks(SCAN_CHUNK).enumerate() {
                peak = peak.max(max_finite_abs_bits(chunk));
                src.release_pages(from + i * SCAN_CHUNK, chunk.len());
            }
            peak
        };
        let threads = crate::numeric::par::threads().min(bytes.len() / SCAN_CHUNK).max(1);
        // Whole chunks (and whole f32 values) per thread.
        let per = bytes.len().div_ceil(threads).div_ceil(SCAN_CHUNK) * SCAN_CHUNK;
        let peak = if threads == 1 {
            scan(0, &bytes)
        } else {
            std::thread::scope(|sc| {
                let parts: Vec<_> = bytes.chunks(per).enumerate().map(|(i, p)| sc.spawn(move || scan(i * per, p))).collect();
                parts.into_iter().map(|h| h.join().unwrap_or(0)).max().unwrap_or(0)
            })
        };
        let magnitude = f32::from_bits(peak);
        if peak >= F16_OVERFLOW_BITS {
            Some(Fp16Loss::Overflow { peak: magnitude })
        } else if peak != 0 && peak <= F16_TO_ZERO_BITS {
            Some(Fp16Loss::AllZero { peak: magnitude })
        } else {
            None
        }
    }

    /// A rank-1 int32 tensor: the usual form of `axes`, `perm`, `shape`, `strides`.
    pub fn i32_vec(values: &[i32]) -> Tensor {
        Self::from_i32(&[values.len()], values)
    }

    /// A rank-0 int32 tensor.
    pub fn i32_scalar(v: i32) -> Tensor {
        Self::from_i32(&[], &[v])
    }

    /// A rank-0 bool tensor.
    pub fn bool_scalar(v: bool) -> Tensor {
        Self::from_bools(&[], &[v])
    }

    /// A rank-0 float tensor of dtype fp16 or fp32 (epsilons, clip bounds).
    pub fn float_scalar(dtype: DType, v: f32) -> Tensor {
        match dtype {
            DType::F16 => Self::from_f32_as_f16(&[], &[v]),
            _ => Self::from_f32(&[], &[v]),
        }
    }

    /// A rank-0 string tensor (op names, `pad_type`, `mode`, `dtype`).
    pub fn string(s: &str) -> Tensor {
        Tensor { dtype: DType::String, shape: Vec::new(), data: Data::Strings(vec![s.to_string()]) }
    }

    /// A string tensor of any shape; `None` if the count disagrees with the shape.
    pub fn from_strings(shape: &[usize], values: Vec<String>) -> Option<Tensor> {
        let n = checked_elements(shape)?;
        (n == values.len()).then(|| Tensor { dtype: DType::String, shape: shape.to_vec(), data: Data::Strings(values) })
    }

    fn from_le(dtype: DType, shape: &[usize], bytes: Vec<u8>) -> Tensor {
        match Self::from_bytes(dtype, shape, bytes) {
            Ok(t) => t,
            Err(e) => panic!("Tensor constructor misused: {e}"),
        }
    }

    /// Element dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Concrete shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements. Every constructor checked that the count fits (`expected_len`,
    /// `from_strings`), so this product cannot overflow; it saturates rather than wrap anyway.
    pub fn len(&self) -> usize {
        checked_elements(&self.shape).unwrap_or(usize::MAX)
    }

    /// True when the tensor has no elements (a 0 in its shape).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same elements under another shape of equal element count, sharing the storage (a
    /// mapped or lazily cast weight stays so); `None` when the counts differ. Used to view a
    /// (C_out, C_in) `linear` weight as a (C_out, C_in, 1, 1) `conv` weight.
    pub fn reshaped(&self, shape: &[usize]) -> Option<Tensor> {
        (checked_elements(shape) == Some(self.len()))
            .then(|| Tensor { dtype: self.dtype, shape: shape.to_vec(), data: self.data.clone() })
    }

    /// The MIL type of this value.
    pub fn tensor_type(&self) -> TensorType {
        TensorType::new(self.dtype, &self.shape)
    }

    /// Raw little-endian element bytes (borrowed, or computed for a lazy cast); empty for strings.
    pub fn bytes(&self) -> Cow<'_, [u8]> {
        match &self.data {
            Data::Raw(Bytes::Owned(v)) => Cow::Borrowed(v.as_slice()),
            // `from_mapped` checked the range; `get` keeps a bad one from ever panicking.
            Data::Raw(Bytes::Mapped { map, start, len }) => {
                Cow::Borrowed(start.checked_add(*len).and_then(|end| map.get(*start..end)).unwrap_or_default())
            }
            Data::Raw(Bytes::F16Of(src)) => Cow::Owned(f16_bytes(&src.bytes())),
            Data::Strings(_) => Cow::Borrowed(&[]),
        }
    }

    /// Number of bytes [`Tensor::bytes`] holds, without computing them.
    pub fn byte_len(&self) -> usize {
        match &self.data {
            Data::Raw(Bytes::Owned(v)) => v.len(),
            Data::Raw(Bytes::Mapped { len, .. }) => *len,
            Data::Raw(Bytes::F16Of(src)) => src.byte_len() / 2,
            Data::Strings(_) => 0,
        }
    }

    /// Writes bytes `[at, at + out.len())` of this tensor's little-endian encoding into `out`
    /// (a lazy cast converts just that range, straight into `out`), then tells the OS that the
    /// mapped source pages of that range are no longer needed, so resident memory tracks the
    /// ranges in flight. For a lazy cast `at` and `out.len()` must be even (whole fp16 values).
    /// Returns whether a lazy cast wrote an fp16 infinity in this range (a value beyond fp16's
    /// range, or an infinite source): `package::write` then lets `pipeline` keep that constant
    /// in fp32, a check that costs nothing when weights fit, as they almost always do.
    /// Called by `package::blob`, which writes weight.bin in parallel ranges.
    pub fn encode_range(&self, at: usize, out: &mut [u8]) -> bool {
        let end = at + out.len();
        match &self.data {
            Data::Raw(Bytes::F16Of(src)) => {
                let (from, to) = (at * 2, end * 2);
                cast_f32_to_f16(&src.bytes()[from..to], out);
                src.release_pages(from, to - from);
                has_f16_infinity(out)
            }
            _ => {
                out.copy_from_slice(&self.bytes()[at..end]);
                self.release_pages(at, out.len());
                false
            }
        }
    }

    /// Drops the pages of bytes `[at, at + count)` of a memory-mapped tensor from the process
    /// (they are read again from the file if touched later). A no-op for owned data.
    fn release_pages(&self, at: usize, count: usize) {
        if let Data::Raw(Bytes::Mapped { map, start, len }) = &self.data {
            let count = count.min(len.saturating_sub(at));
            // SAFETY: the mapping is read-only and backed by a file nobody writes while we run;
            // MADV_DONTNEED on it only drops resident pages, and later reads fault them back in
            // with the same contents. Failure is harmless (the pages just stay resident).
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start + at, count) };
        }
    }

    /// The strings of a string tensor; empty for other dtypes.
    pub fn strings(&self) -> &[String] {
        match &self.data {
            Data::Strings(s) => s,
            Data::Raw(_) => &[],
        }
    }

    /// The string of a rank-0 string tensor.
    pub fn as_str(&self) -> Option<&str> {
        match self.strings() {
            [s] => Some(s),
            _ => None,
        }
    }

    /// Values as f32 for fp16/fp32/fp64 tensors; `None` for other dtypes.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        let b = self.bytes();
        let b: &[u8] = &b;
        Some(match self.dtype {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
            _ => return None,
        })
    }

    /// Values as i64 for integer and bool tensors, sub-byte ones (int4, uint1…uint6, packed
    /// LSB first) included; `None` otherwise. Used by type inference to read `axes`, `perm`,
    /// `shape` and friends, and by `constexpr` to unpack compressed weights.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        let b = self.bytes();
        let b: &[u8] = &b;
        Some(match self.dtype {
            DType::U1 | DType::U2 | DType::U3 | DType::U4 | DType::U6 | DType::I4 => {
                let bits = self.dtype.bits()?;
                let n = self.len();
                if n.checked_mul(bits).is_none_or(|need| b.len().saturating_mul(8) < need) {
                    return None;
                }
                (0..n)
                    .map(|k| {
                        let v = (0..bits).fold(0i64, |acc, j| acc | (i64::from(b[(k * bits + j) / 8] >> ((k * bits + j) % 8) & 1) << j));
                        // int4 is two's complement: sign-extend bit 3.
                        if self.dtype == DType::I4 && v >= 8 { v - 16 } else { v }
                    })
                    .collect()
            }
            DType::Bool | DType::U8 => b.iter().map(|&v| i64::from(v)).collect(),
            DType::I8 => b.iter().map(|&v| i64::from(v as i8)).collect(),
            DType::I16 => b.chunks_exact(2).map(|c| i64::from(i16::from_le_bytes([c[0], c[1]]))).collect(),
            DType::U16 => b.chunks_exact(2).map(|c| i64::from(u16::from_le_bytes([c[0], c[1]]))).collect(),
            DType::I32 => b.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
            DType::U32 => b.chunks_exact(4).map(|c| i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
            DType::I64 | DType::U64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            _ => return None,
        })
    }

    /// The single value of a rank-0 (or one-element) integer/bool tensor.
    pub fn as_i64(&self) -> Option<i64> {
        match self.to_i64_vec()?.as_slice() {
            [v] => Some(*v),
            _ => None,
        }
    }
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Tensor) -> bool {
        self.dtype == other.dtype
            && self.shape == other.shape
            && self.bytes() == other.bytes()
            && self.strings() == other.strings()
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({} {:?}", self.dtype, self.shape)?;
        if self.len() <= 8 {
            match (self.to_f32_vec(), self.to_i64_vec()) {
                (Some(v), _) => write!(f, " {v:?}")?,
                (None, Some(v)) => write!(f, " {v:?}")?,
                _ => write!(f, " {:?}", self.strings())?,
            }
        }
        f.write_str(")")
    }
}

/// fp32 little-endian bytes → fp16 little-endian bytes (round to nearest even).
fn f16_bytes(f32_le: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; f32_le.len() / 2];
    cast_f32_to_f16(f32_le, &mut out);
    out
}

/// Values converted per step when a slice cannot be viewed in place (misaligned, or a
/// big-endian host): 4 K values keep the two scratch buffers in L1.
const CAST_SCRATCH: usize = 1 << 12;

/// Converts fp32 little-endian bytes to fp16 little-endian bytes (`out` is half as long), round
/// to nearest even, with `half`'s slice conversion (the CPU's F16C instructions when present).
/// Aligned slices on a little-endian host are viewed in place, so the cast reads the source once
/// and writes `out` once.
/// Bytes of fp32 source one task of [`Tensor::fp16_loss`] scans (then releases): 1 MiB, as
/// `package::blob` writes.
const SCAN_CHUNK: usize = 1 << 20;

/// What fp16 would make of a constant ([`Tensor::fp16_loss`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fp16Loss {
    /// Some value rounds to ±inf; `peak` is the largest finite magnitude.
    Overflow { peak: f32 },
    /// Every non-zero value rounds to zero; `peak` is the largest magnitude.
    AllZero { peak: f32 },
}

/// Bits of |x| (fp32) at and above which fp16 rounds to infinity: 65520, 65504 plus half a step.
const F16_OVERFLOW_BITS: u32 = 0x477f_f000;
/// Bits of |x| (fp32) at and below which fp16 rounds to zero: 2^-25, half the smallest fp16
/// subnormal (a tie, which rounds to the even zero).
const F16_TO_ZERO_BITS: u32 = 0x3300_0000;
/// Bits of fp32 +infinity; larger magnitudes are NaN.
const F32_INF_BITS: u32 = 0x7f80_0000;

/// The largest |x| among the finite little-endian fp32 values in `bytes`, as its bit pattern
/// (for non-negative floats, bit order is value order): one branch-free pass the compiler
/// vectorizes, so checking every weight costs about a memory read.
fn max_finite_abs_bits(bytes: &[u8]) -> u32 {
    // |x| as bits, or 0 for inf/NaN (whose bits are at least those of inf).
    let finite_abs = |b: u32| {
        let a = b & 0x7fff_ffff;
        a & u32::from(a < F32_INF_BITS).wrapping_neg()
    };
    let Ok(words) = bytemuck::try_cast_slice::<u8, u32>(bytes).map_err(|_| ()).and_then(|w| if cfg!(target_endian = "little") { Ok(w) } else { Err(()) }) else {
        return bytes.chunks_exact(4).fold(0, |m, c| m.max(finite_abs(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))));
    };
    // Independent lanes, so the loop becomes vector max instructions.
    let mut lanes = [0u32; SCAN_LANES];
    let chunks = words.chunks_exact(SCAN_LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &b) in lanes.iter_mut().zip(c) {
            *l = (*l).max(finite_abs(b));
        }
    }
    rest.iter().fold(lanes.into_iter().max().unwrap_or(0), |m, &b| m.max(finite_abs(b)))
}

/// Whether little-endian fp16 `bytes` hold ±infinity (exponent all ones, mantissa zero), in
/// one vectorized pass over a range just written (still in cache).
fn has_f16_infinity(bytes: &[u8]) -> bool {
    let inf = |h: u16| u16::from(h & 0x7fff == F16_INF_BITS);
    let Ok(halves) = bytemuck::try_cast_slice::<u8, u16>(bytes).map_err(|_| ()).and_then(|w| if cfg!(target_endian = "little") { Ok(w) } else { Err(()) }) else {
        return bytes.chunks_exact(2).any(|b| inf(u16::from_le_bytes([b[0], b[1]])) != 0);
    };
    // Independent lanes, so the loop becomes vector compares.
    let chunks = halves.chunks_exact(SCAN_LANES);
    let rest = chunks.remainder();
    let mut lanes = [0u16; SCAN_LANES];
    for c in chunks {
        for (l, &h) in lanes.iter_mut().zip(c) {
            *l |= inf(h);
        }
    }
    lanes.iter().any(|&l| l != 0) || rest.iter().any(|&h| inf(h) != 0)
}

/// Bits of fp16 +infinity.
const F16_INF_BITS: u16 = 0x7c00;

/// Lanes of [`max_finite_abs_bits`]'s loop: two 256-bit vectors of u32.
const SCAN_LANES: usize = 16;

fn cast_f32_to_f16(f32_le: &[u8], out: &mut [u8]) {
    use half::slice::HalfFloatSliceExt;
    debug_assert_eq!(f32_le.len(), out.len() * 2);
    if cfg!(target_endian = "little") {
        if let (Ok(src), Ok(dst)) = (bytemuck::try_cast_slice::<u8, f32>(f32_le), bytemuck::try_cast_slice_mut::<u8, f16>(out)) {
            dst.convert_from_f32_slice(src);
            return;
        }
    }
    let (mut src, mut dst) = ([0f32; CAST_SCRATCH], [f16::ZERO; CAST_SCRATCH]);
    for (i, o) in f32_le.chunks(CAST_SCRATCH * 4).zip(out.chunks_mut(CAST_SCRATCH * 2)) {
        let n = i.len() / 4;
        for (v, c) in src.iter_mut().zip(i.chunks_exact(4)) {
            *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        dst[..n].convert_from_f32_slice(&src[..n]);
        for (h, c) in dst[..n].iter().zip(o.chunks_exact_mut(2)) {
            c.copy_from_slice(&h.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp16_loss_agrees_with_rounding_each_value() {
        let edges = [0.0f32, 1.0, -1.0, 65504.0, 65519.0, 65520.0, -70000.0, 2f32.powi(-25), 2f32.powi(-25) * 1.0001, 1e-9, -1e-12, f32::INFINITY, f32::NAN];
        for &a in &edges {
            for &b in &edges {
                let v = [a, b, 0.5 * a];
                let rounded: Vec<f32> = v.iter().map(|&x| crate::numeric::fp16::round(x)).collect();
                let finite = v.iter().zip(&rounded).filter(|(x, _)| x.is_finite());
                let overflow = finite.clone().any(|(_, r)| r.is_infinite());
                let all_zero = finite.clone().any(|(x, _)| *x != 0.0) && finite.clone().all(|(_, r)| *r == 0.0);
                let got = Tensor::f16_of(&Tensor::from_f32(&[3], &v)).fp16_loss();
                assert_eq!(matches!(got, Some(Fp16Loss::Overflow { .. })), overflow, "{v:?}: {got:?}");
                assert_eq!(matches!(got, Some(Fp16Loss::AllZero { .. })), all_zero && !overflow, "{v:?}: {got:?}");
            }
        }
    }

    #[test]
    fn lazy_f16_cast_equals_eager_cast_and_streams_the_same_bytes() {
        let v: Vec<f32> = (0..100_000).map(|i| (i as f32).sin() * 1000.0).collect();
        let src = Tensor::from_f32(&[1000, 100], &v);
        let lazy = Tensor::f16_of(&src);
        let eager = Tensor::from_f32_as_f16(&[1000, 100], &v);
        assert_eq!(lazy, eager);
        assert_eq!(lazy.byte_len(), 200_000);
        let mut out = vec![0u8; lazy.byte_len()];
        let (head, tail) = out.split_at_mut(20_002);
        lazy.encode_range(0, head);
        lazy.encode_range(20_002, tail);
        assert_eq!(out, eager.bytes().as_ref());
        // A misaligned source takes the scratch path and gives the same bytes.
        let mut shifted = vec![0u8; 1 + v.len() * 4];
        shifted[1..].copy_from_slice(&src.bytes());
        let mut out2 = vec![0u8; lazy.byte_len()];
        cast_f32_to_f16(&shifted[1..], &mut out2);
        assert_eq!(out2, out);
    }

    #[test]
    fn fp16_rounds_and_reads_back() {
        let t = Tensor::from_f32_as_f16(&[3], &[1.0, 0.1, 65504.0]);
        assert_eq!(t.bytes().len(), 6);
        assert_eq!(t.to_f32_vec().unwrap(), vec![1.0, f16::from_f32(0.1).to_f32(), 65504.0]);
    }

    #[test]
    fn wrong_length_is_an_error_not_a_panic() {
        let e = Tensor::from_bytes(DType::F32, &[2, 2], vec![0; 12]).unwrap_err();
        assert_eq!(e, TensorError::WrongLength { dtype: DType::F32, shape: vec![2, 2], expected: 16, got: 12 });
        assert!(matches!(Tensor::from_bytes(DType::F32, &[usize::MAX, 4], vec![]), Err(TensorError::TooLarge { .. })));
    }

    #[test]
    fn a_mapped_range_past_the_end_is_an_error() {
        let map = Arc::new(memmap2::MmapMut::map_anon(16).unwrap().make_read_only().unwrap());
        assert!(Tensor::from_mapped(DType::F32, &[0], map.clone(), 100).is_err(), "an empty tensor past the end");
        assert!(Tensor::from_mapped(DType::F32, &[4], map.clone(), 4).is_err());
        assert!(Tensor::from_mapped(DType::F32, &[1 << 40, 1 << 40], map.clone(), 0).is_err());
        assert_eq!(Tensor::from_mapped(DType::F32, &[4], map, 0).unwrap().bytes().len(), 16);
        assert_eq!(Tensor::from_f32(&[2], &[1.0, 2.0]).reshaped(&[usize::MAX, 2]), None);
    }

    #[test]
    fn equality_ignores_storage() {
        let a = Tensor::from_i32(&[2], &[1, -1]);
        let b = Tensor::from_bytes(DType::I32, &[2], vec![1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.to_i64_vec().unwrap(), vec![1, -1]);
    }
}
