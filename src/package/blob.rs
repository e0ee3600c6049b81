//! `weight.bin`: MIL blob storage, format version 2 (coremltools `mlmodel/src/MILBlob/Blob/
//! StorageFormat.hpp`, coreml-format.md §4), and the rule that decides which consts go there (§5).
//! [`BlobWriter`] lays the file out, then casts and writes payloads on all cores (no copy of
//! the model in memory);
//! [`read_blob`] checks one record and returns a zero-copy view of the mapped file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::mil::{DType, Opset, Tensor};
use crate::numeric;

use super::Error;

/// Core ML aligns the header, every metadata record and every payload to 64 bytes (StorageFormat.hpp).
pub const BLOB_ALIGNMENT: u64 = 64;
/// Size of the file header and of each `blob_metadata` record.
pub const RECORD_BYTES: u64 = 64;
/// The only storage format version Core ML's reader accepts.
pub const STORAGE_VERSION: u32 = 2;
/// First field of every `blob_metadata` record; readers check it.
pub const BLOB_SENTINEL: u32 = 0xDEAD_BEEF;
/// Consts with fewer elements stay inline in the protobuf (`should_use_weight_file`: `val.size >= 10`).
pub const BLOB_MIN_ELEMENTS: usize = 10;

/// `BlobDataType` code of a dtype in weight.bin (these differ from MIL.proto's `DataType` numbers).
pub fn blob_code(dtype: DType) -> Option<u32> {
    Some(match dtype {
        DType::F16 => 1,
        DType::F32 => 2,
        DType::U8 => 3,
        DType::I8 => 4,
        DType::BF16 => 5,
        DType::I16 => 6,
        DType::U16 => 7,
        DType::I4 => 8,
        DType::U1 => 9,
        DType::U2 => 10,
        DType::U4 => 11,
        DType::U3 => 12,
        DType::U6 => 13,
        DType::I32 => 14,
        DType::U32 => 15,
        DType::F8E4M3FN => 16,
        DType::F8E5M2 => 17,
        _ => return None,
    })
}

/// True when coremltools would store a const of this dtype and size in weight.bin for `opset`:
/// at least [`BLOB_MIN_ELEMENTS`] elements and a dtype the blob format takes at that version
/// (16/32-bit integers only from iOS18). `inspect` counts weights with the same rule.
pub fn stored_in_blob(dtype: DType, elements: usize, opset: Opset) -> bool {
    let allowed = match dtype {
        DType::F16 | DType::F32 | DType::U8 | DType::I8 => true,
        DType::I4 | DType::U1 | DType::U2 | DType::U3 | DType::U4 | DType::U6 => true,
        DType::I16 | DType::U16 | DType::I32 | DType::U32 => opset >= Opset::Ios18,
        _ => false,
    };
    allowed && elements >= BLOB_MIN_ELEMENTS
}

fn align(n: u64) -> u64 {
    n.div_ceil(BLOB_ALIGNMENT) * BLOB_ALIGNMENT
}

/// Bits left unused in the last byte of a sub-byte payload (metadata `padding_size_in_bits`).
fn padding_bits(dtype: DType, elements: usize) -> u64 {
    match dtype.bits() {
        Some(b) if b < 8 => ((8 - (elements * b) % 8) % 8) as u64,
        _ => 0,
    }
}

/// Output bytes one worker casts and writes per step: large enough that a step's syscall and
/// bookkeeping vanish next to its copy, small enough that the buffer stays in L2 and the source
/// pages a step maps in are dropped soon after (peak memory: threads × this, plus the map's
/// in-flight pages). A multiple of [`BLOB_ALIGNMENT`], so steps split fp16 values never.
const WRITE_STEP_BYTES: usize = 1 << 20;

/// Lays out a weight.bin and then writes it. [`BlobWriter::append`] only assigns each tensor
/// its offsets (the layout depends on sizes alone), so the protobuf can be built first; then
/// [`BlobWriter::finish`] writes every payload in [`WRITE_STEP_BYTES`] ranges on all cores,
/// casting lazy fp16 weights straight into the write buffer (`Tensor::encode_range`) and
/// placing each range with a positioned write: the model is never held twice. Created lazily by
/// `proto::Emitter` on the first blob, so packages without blobs get no weight.bin (as
/// coremltools does).
pub struct BlobWriter {
    path: PathBuf,
    /// Metadata records and payloads, in file order: (metadata offset, tensor).
    blobs: Vec<(u64, Tensor)>,
    /// End of the last payload so far.
    pos: u64,
    /// Indices into `blobs` by [`Fingerprint`]: a tensor equal to one already placed is
    /// stored once (the functions of a multifunction package, tied embeddings).
    placed: std::collections::HashMap<Fingerprint, Vec<usize>>,
}

/// Bytes sampled from each end of a payload to tell tensors apart before comparing them whole.
const FINGERPRINT_BYTES: usize = 256;

/// What [`BlobWriter::append`] compares first: dtype, shape and the payload's first and last
/// [`FINGERPRINT_BYTES`] (cheap even for a lazily cast fp16 weight). Equal fingerprints are
/// then compared in full.
#[derive(PartialEq, Eq, Hash)]
struct Fingerprint {
    dtype: DType,
    shape: Vec<usize>,
    ends: Vec<u8>,
}

impl Fingerprint {
    fn of(t: &Tensor) -> Fingerprint {
        let len = t.byte_len();
        let n = FINGERPRINT_BYTES.min(len);
        // Sub-byte and fp16-cast payloads are encoded per element; both ends are whole bytes of
        // the encoding, and a range of `n` bytes from `len - n` stays inside it.
        let mut ends = vec![0u8; 2 * n];
        let (head, tail) = ends.split_at_mut(n);
        t.encode_range(0, head);
        t.encode_range(len - n, tail);
        Fingerprint { dtype: t.dtype(), shape: t.shape().to_vec(), ends }
    }
}

impl BlobWriter {
    /// A writer for `path`, which `finish` creates.
    pub fn create(path: &Path) -> BlobWriter {
        BlobWriter { path: path.to_path_buf(), blobs: Vec::new(), pos: RECORD_BYTES, placed: Default::default() }
    }

    /// Places one tensor (64-aligned metadata record, then payload); returns the metadata
    /// offset, which is what `BlobFileValue.offset` must hold, and whether the tensor is new: a
    /// tensor equal (dtype, shape, bytes) to one placed before gets that one's offset and is not
    /// stored again. Nothing is written yet.
    pub fn append(&mut self, t: &Tensor) -> Result<(u64, bool), Error> {
        let invalid = |reason: String| Error::Invalid { path: self.path.clone(), reason };
        blob_code(t.dtype()).ok_or_else(|| invalid(format!("{} tensors cannot be stored in weight.bin", t.dtype())))?;
        let same = self.placed.entry(Fingerprint::of(t)).or_default();
        if let Some(&i) = same.iter().find(|&&i| self.blobs[i].1 == *t) {
            return Ok((self.blobs[i].0, false));
        }
        let md = align(self.pos);
        self.pos = (md + RECORD_BYTES)
            .checked_add(t.byte_len() as u64)
            .ok_or_else(|| invalid("weight.bin would exceed 2^64 bytes".into()))?;
        same.push(self.blobs.len());
        self.blobs.push((md, t.clone()));
        Ok((md, true))
    }

    /// Writes the file: header, records, then payloads in parallel ranges; returns its size,
    /// which ends at the last payload byte, and the indices (in `append` order) of tensors
    /// whose lazy fp16 cast wrote an infinity (`Tensor::encode_range`).
    pub fn finish(self) -> Result<(u64, Vec<usize>), Error> {
        let path = &self.path;
        let file = File::create(path).map_err(Error::io(path))?;
        let mut header = [0u8; RECORD_BYTES as usize];
        let count = u32::try_from(self.blobs.len())
            .map_err(|_| Error::Invalid { path: path.clone(), reason: "more than 2^32 blobs".into() })?;
        header[0..4].copy_from_slice(&count.to_le_bytes());
        header[4..8].copy_from_slice(&STORAGE_VERSION.to_le_bytes());
        file.write_all_at(&header, 0).map_err(Error::io(path))?;
        let mut steps = Vec::new();
        for (i, (md, t)) in self.blobs.iter().enumerate() {
            file.write_all_at(&record(*md, t), *md).map_err(Error::io(path))?;
            let len = t.byte_len();
            steps.extend((0..len).step_by(WRITE_STEP_BYTES).map(|at| (i, md + RECORD_BYTES, t, at, WRITE_STEP_BYTES.min(len - at))));
        }
        let infinite: Mutex<Vec<usize>> = Mutex::new(Vec::new());
        // Workers take steps in file order from one queue (a step is a millisecond of work; the
        // lock is not contended), each with its own buffer; the first error stops them all.
        let queue = Mutex::new(steps.into_iter());
        let failed: Mutex<Option<std::io::Error>> = Mutex::new(None);
        let work = || {
            let mut buf = vec![0u8; WRITE_STEP_BYTES];
            loop {
                if failed.lock().is_ok_and(|f| f.is_some()) {
                    return;
                }
                let Some((i, data, t, at, len)) = queue.lock().ok().and_then(|mut q| q.next()) else { return };
                if t.encode_range(at, &mut buf[..len]) {
                    if let Ok(mut v) = infinite.lock() {
                        v.push(i);
                    }
                }
                if let Err(e) = file.write_all_at(&buf[..len], data + at as u64) {
                    if let Ok(mut f) = failed.lock() {
                        f.get_or_insert(e);
                    }
                    return;
                }
            }
        };
        std::thread::scope(|s| {
            for _ in 1..numeric::par::threads() {
                s.spawn(work);
            }
            work();
        });
        if let Some(e) = failed.into_inner().ok().flatten() {
            return Err(Error::io(path)(e));
        }
        // No fsync: like compilers and coremltools we leave durability to the OS. Writing into a
        // temporary directory renamed into place already keeps failures from leaving partial
        // output; syncing 600 MB of weights would add a third to whisper-medium's convert time.
        let mut infinite = infinite.into_inner().unwrap_or_default();
        infinite.sort_unstable();
        infinite.dedup();
        Ok((self.pos, infinite))
    }
}

/// The `blob_metadata` record of `t` placed at `md`: sentinel, dtype code, payload size and
/// offset (right after the record), sub-byte padding.
fn record(md: u64, t: &Tensor) -> [u8; RECORD_BYTES as usize] {
    let mut rec = [0u8; RECORD_BYTES as usize];
    rec[0..4].copy_from_slice(&BLOB_SENTINEL.to_le_bytes());
    rec[4..8].copy_from_slice(&blob_code(t.dtype()).unwrap_or(0).to_le_bytes());
    rec[8..16].copy_from_slice(&(t.byte_len() as u64).to_le_bytes());
    rec[16..24].copy_from_slice(&(md + RECORD_BYTES).to_le_bytes());
    rec[24..32].copy_from_slice(&padding_bits(t.dtype(), t.len()).to_le_bytes());
    rec
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Reads the tensor whose metadata record is at `offset` in the mapped weight file `map`,
/// checking header version, sentinel, dtype code and size against the declared type.
pub fn read_blob(path: &Path, map: &Arc<memmap2::Mmap>, offset: u64, dtype: DType, shape: &[usize]) -> Result<Tensor, Error> {
    let bad = |reason: String| Error::BadBlob { path: path.to_path_buf(), offset, reason };
    if map.len() < RECORD_BYTES as usize {
        return Err(bad(format!("file is {} bytes, shorter than its header", map.len())));
    }
    let version = u32_at(map, 4);
    if version != STORAGE_VERSION {
        return Err(bad(format!("storage version {version}, expected {STORAGE_VERSION}")));
    }
    let md = usize::try_from(offset).map_err(|_| bad("offset too large".into()))?;
    if offset % BLOB_ALIGNMENT != 0 || md < RECORD_BYTES as usize || md.saturating_add(RECORD_BYTES as usize) > map.len() {
        return Err(bad(format!("no metadata record fits at this offset (file is {} bytes)", map.len())));
    }
    let rec = &map[md..md + RECORD_BYTES as usize];
    if u32_at(rec, 0) != BLOB_SENTINEL {
        return Err(bad("invalid sentinel (offset must point at a blob_metadata record)".into()));
    }
    let code = u32_at(rec, 4);
    if Some(code) != blob_code(dtype) {
        return Err(bad(format!("blob dtype code {code} does not match declared {dtype}")));
    }
    let (size, data) = (u64_at(rec, 8), u64_at(rec, 16));
    let n: usize = shape.iter().product();
    let expected = dtype.storage_bytes(n).ok_or_else(|| bad("declared shape too large".into()))?;
    if size != expected as u64 {
        return Err(bad(format!("payload is {size} bytes, declared {dtype} {shape:?} needs {expected}")));
    }
    let start = usize::try_from(data).map_err(|_| bad("data offset too large".into()))?;
    if start.checked_add(expected).is_none_or(|end| end > map.len()) {
        return Err(bad(format!("payload {start}+{expected} runs past the end of the file ({} bytes): truncated?", map.len())));
    }
    Tensor::from_mapped(dtype, shape, Arc::clone(map), start).map_err(|e| bad(e.to_string()))
}

/// Maps a weight file read-only. The mapping is shared by every tensor read from it.
pub fn map_file(path: &Path) -> Result<Arc<memmap2::Mmap>, Error> {
    let file = File::open(path).map_err(Error::io(path))?;
    // SAFETY: the map is read-only; like every mmap reader we assume nobody truncates the
    // weight file while a model read from it is alive (documented on `package::read`).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(path))?;
    Ok(Arc::new(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_coremltools_hexdump() {
        // coreml-format.md §4.1: fp16[108] then fp16[12] → metadata at 64 and 384, data at 128 and 448, EOF 472.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("weight.bin");
        let mut w = BlobWriter::create(&p);
        let a = Tensor::from_f32_as_f16(&[4, 3, 3, 3], &[0.5; 108]);
        let b = Tensor::from_f32_as_f16(&[3, 4], &[0.25; 12]);
        assert_eq!(w.append(&a).unwrap(), (64, true));
        assert_eq!(w.append(&b).unwrap(), (384, true));
        assert_eq!(w.finish().unwrap(), (472, vec![]));
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[0..8], &[2, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&bytes[64..72], &[0xef, 0xbe, 0xad, 0xde, 1, 0, 0, 0]);
        assert_eq!(u64_at(&bytes, 64 + 8), 216);
        assert_eq!(u64_at(&bytes, 64 + 16), 128);
        let map = map_file(&p).unwrap();
        assert_eq!(read_blob(&p, &map, 384, DType::F16, &[3, 4]).unwrap(), b);
        assert!(matches!(read_blob(&p, &map, 128, DType::F16, &[3, 4]), Err(Error::BadBlob { .. })));
        assert!(matches!(read_blob(&p, &map, 64, DType::F32, &[4, 3, 3, 3]), Err(Error::BadBlob { .. })));
    }

    #[test]
    fn lazy_casts_that_reach_infinity_are_reported_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlobWriter::create(&dir.path().join("weight.bin"));
        // Big enough to span several write steps; the overflow sits in the last one.
        let n = WRITE_STEP_BYTES + 100;
        let mut big = vec![1.0f32; n];
        big[n - 1] = 1e6;
        for t in [Tensor::from_f32(&[4], &[1e9; 4]), Tensor::f16_of(&Tensor::from_f32(&[16], &[2.0; 16])), Tensor::f16_of(&Tensor::from_f32(&[n], &big))] {
            w.append(&t).unwrap();
        }
        // An fp32 blob holds 1e9 as it is; only the third, cast to fp16, overflows.
        assert_eq!(w.finish().unwrap().1, vec![2]);
    }

    #[test]
    fn equal_tensors_are_stored_once_and_near_misses_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("weight.bin");
        let mut w = BlobWriter::create(&p);
        // 400 values: the fingerprint sees both ends, so only the middle tells `c` from `a`.
        let values: Vec<f32> = (0..400).map(|i| i as f32).collect();
        let mut middle = values.clone();
        middle[200] = -1.0;
        let a = Tensor::f16_of(&Tensor::from_f32(&[400], &values));
        let same = Tensor::from_f32_as_f16(&[400], &values);
        let c = Tensor::from_f32_as_f16(&[400], &middle);
        let reshaped = Tensor::from_f32_as_f16(&[20, 20], &values);
        let (first, new) = w.append(&a).unwrap();
        assert!(new);
        assert_eq!(w.append(&same).unwrap(), (first, false), "a lazy cast and its materialized twin are one blob");
        for t in [&c, &reshaped] {
            let (at, new) = w.append(t).unwrap();
            assert!(new && at != first);
        }
        let (size, _) = w.finish().unwrap();
        // Header, then three (record, 800-byte payload padded to 832); the file ends at the last
        // payload byte, without the last 32 bytes of padding.
        assert_eq!(size, 64 + 3 * (64 + 832) - 32, "three payloads stored");
        let map = map_file(&p).unwrap();
        assert_eq!(read_blob(&p, &map, first, DType::F16, &[400]).unwrap(), same);
    }

    #[test]
    fn blob_rule_follows_coremltools() {
        assert!(stored_in_blob(DType::F16, 10, Opset::Ios15));
        assert!(!stored_in_blob(DType::F16, 9, Opset::Ios15));
        assert!(!stored_in_blob(DType::I32, 20, Opset::Ios17));
        assert!(stored_in_blob(DType::I32, 20, Opset::Ios18));
        assert!(!stored_in_blob(DType::Bool, 100, Opset::Ios18));
    }
}
