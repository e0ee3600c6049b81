//! Reads NumPy `.npz` archives (the fixtures' and users' example inputs and expected outputs):
//! a zip of `.npy` files, stored or deflated. Format: numpy `lib/format.py` (`.npy` v1–v3:
//! magic, version, little-endian header length, a Python-dict header with `descr`,
//! `fortran_order`, `shape`, then the raw C-order data). Called by `validate` and `convert --example`.

use std::path::{Path, PathBuf};

use crate::mil::{DType, Tensor};
use crate::torchscript::zip::Zip;

/// First bytes of every `.npy` file.
const NPY_MAGIC: &[u8] = b"\x93NUMPY";
/// Bytes before the header text: magic (6), version (2), then a 2-byte (v1) or 4-byte (v2+) length.
const NPY_PREFIX: usize = 8;

/// Why an `.npz` cannot be read; the message names the file and the array.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Zip(#[from] crate::torchscript::Error),
    #[error("{path}: array `{name}`: {reason}")]
    Array { path: PathBuf, name: String, reason: String },
}

/// One `.npy` payload as a tensor. int64/bool/float64 are kept as such; the caller casts.
pub fn parse_npy(bytes: &[u8]) -> Result<Tensor, String> {
    if bytes.len() < NPY_PREFIX + 2 || !bytes.starts_with(NPY_MAGIC) {
        return Err("not a .npy array (bad magic)".into());
    }
    let major = bytes[6];
    let (len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, NPY_PREFIX + 2),
        2 | 3 => {
            let b = bytes.get(8..12).ok_or("truncated header")?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, NPY_PREFIX + 4)
        }
        v => return Err(format!(".npy version {v} is not supported")),
    };
    let header = bytes.get(start..start.saturating_add(len)).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header.find(&format!("'{key}'")).ok_or(format!("header lacks `{key}`"))?;
        let rest = header[at + key.len() + 2..].trim_start().strip_prefix(':').ok_or("bad header")?;
        Ok(rest.trim_start())
    };
    let descr = field("descr")?;
    let descr = descr.strip_prefix('\'').and_then(|d| d.split('\'').next()).ok_or("bad descr")?;
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into());
    }
    let shape_text = field("shape")?;
    let shape_text = shape_text.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("bad shape")?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad dimension `{s}`")))
        .collect::<Result<Vec<_>, _>>()?;
    let dtype = match descr {
        "<f4" => DType::F32,
        "<f2" => DType::F16,
        "<f8" => DType::F64,
        "<i8" => DType::I64,
        "<i4" => DType::I32,
        "<i2" => DType::I16,
        "|i1" => DType::I8,
        "|u1" => DType::U8,
        "|b1" => DType::Bool,
        other => return Err(format!("dtype `{other}` is not supported")),
    };
    let data = &bytes[start + len..];
    Tensor::from_bytes(dtype, &shape, data.to_vec()).map_err(|e| e.to_string())
}

/// Every array of an `.npz`, by name (without `.npy`), in archive order.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>, Error> {
    let zip = Zip::open(path)?;
    let mut out = Vec::new();
    for entry in zip.entries() {
        let Some(name) = entry.name.strip_suffix(".npy") else { continue };
        let bytes = zip.read(entry)?;
        let t = parse_npy(&bytes).map_err(|reason| Error::Array { path: path.to_path_buf(), name: name.to_string(), reason })?;
        out.push((name.to_string(), t));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numpy_written_npz() {
        // Written by numpy (fixtures/coremltools/make.py): x is float32 [2, 16].
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/coremltools/out/mlp.inputs.npz");
        let arrays = read(&p).unwrap();
        assert_eq!(arrays[0].0, "x");
        assert_eq!((arrays[0].1.dtype(), arrays[0].1.shape()), (DType::F32, &[2usize, 16][..]));
    }

    #[test]
    fn bad_npy_is_an_error() {
        assert!(parse_npy(b"nope").is_err());
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }";
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b.extend([0u8; 8]);
        assert!(parse_npy(&b).unwrap_err().contains("needs 12 bytes"));
        b.extend([0u8; 4]);
        assert_eq!(parse_npy(&b).unwrap().shape(), &[3]);
    }
}
