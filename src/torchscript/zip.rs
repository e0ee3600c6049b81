//! The zip container of a TorchScript `.pt`: memory-maps the file, reads the end-of-central-
//! directory record (ZIP64 too: torch always writes one), the central directory and each local
//! header, and hands out entry bytes. Stored entries are zero-copy slices of the map, which is
//! what lets tensor storages become `mil::Tensor`s without a copy; deflated entries (torch
//! deflates `code/**`) are inflated on request. Sizes come from the central directory only,
//! because torch's local headers carry zero sizes (data descriptors follow the data).
//! Every number read from the file is bounds-checked; bad input is an [`Error`], never a panic.
//! Called by `torchscript::read`. Format: PKWARE APPNOTE.TXT 6.3.10, §4.3
//! (<https://pkware.cachefly.net/webdocs/casestudies/APPNOTE.TXT>); torch facts:
//! shared/docs/torchscript-format.md §1.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::Error;

/// Signature of the end-of-central-directory record ("PK\x05\x06").
const EOCD_SIGNATURE: u32 = 0x0605_4b50;
/// Fixed size of the EOCD record, before its variable-length comment.
const EOCD_LEN: usize = 22;
/// The EOCD comment length is a u16, so the record starts at most this far before the end.
const MAX_COMMENT_LEN: usize = 0xffff;
/// Signature of the ZIP64 end-of-central-directory locator ("PK\x06\x07").
const ZIP64_LOCATOR_SIGNATURE: u32 = 0x0706_4b50;
/// Size of the ZIP64 locator, which sits right before the EOCD record.
const ZIP64_LOCATOR_LEN: usize = 20;
/// Signature of the ZIP64 end-of-central-directory record ("PK\x06\x06").
const ZIP64_EOCD_SIGNATURE: u32 = 0x0606_4b50;
/// Fixed size of the ZIP64 EOCD record (its extensible data is ignored).
const ZIP64_EOCD_LEN: usize = 56;
/// Signature of a central directory file header ("PK\x01\x02").
const CENTRAL_SIGNATURE: u32 = 0x0201_4b50;
/// Fixed size of a central directory file header, before name, extra field and comment.
const CENTRAL_LEN: usize = 46;
/// Signature of a local file header ("PK\x03\x04"); also how every zip file starts.
const LOCAL_SIGNATURE: u32 = 0x0403_4b50;
/// Fixed size of a local file header, before name and extra field.
const LOCAL_LEN: usize = 30;
/// Extra-field id of the ZIP64 extended information (64-bit sizes and offset).
const ZIP64_EXTRA_ID: u16 = 0x0001;
/// A 32-bit size or offset with this value means "the real one is in the ZIP64 extra field".
const ZIP64_MARKER_U32: u32 = 0xffff_ffff;
/// A 16-bit entry count with this value means "see the ZIP64 EOCD record".
const ZIP64_MARKER_U16: u16 = 0xffff;
/// General-purpose flag bit 0: the entry is encrypted, which torch never does.
const FLAG_ENCRYPTED: u16 = 0x0001;
/// Deflate's best case is about 1032:1 (a 258-byte match per ~2 bits); a declared size beyond
/// that ratio to the compressed bytes cannot be true.
const MAX_DEFLATE_RATIO: usize = 1032;
/// Allowance for tiny entries, whose fixed deflate overhead skews the ratio.
const MAX_DEFLATE_SLACK: usize = 1 << 16;
/// Largest entry inflated in memory (512 MiB): code, pickles and compressed npz arrays are far
/// smaller; tensor storages are stored, not deflated, and are memory-mapped.
pub const MAX_INFLATED_BYTES: usize = 512 << 20;
/// Compression method 0: the bytes are stored as they are (torch's tensor storages).
pub const METHOD_STORED: u16 = 0;
/// Compression method 8: deflate (torch's `code/` entries).
pub const METHOD_DEFLATED: u16 = 8;

/// One file of the archive, as the central directory describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Full name inside the zip, e.g. `mlp/data/0`.
    pub name: String,
    /// Zip compression method: [`METHOD_STORED`], [`METHOD_DEFLATED`], or another (unsupported).
    pub method: u16,
    /// Bytes the entry occupies in the file.
    pub compressed_size: u64,
    /// Bytes after decompression (equal to `compressed_size` when stored).
    pub size: u64,
    /// File offset of the entry's first data byte (after its local header). Torch aligns it to 64.
    pub data_offset: u64,
}

/// An opened zip file: the memory map and its entries in central-directory order.
/// Built by [`Zip::open`]; `torchscript::read` looks entries up by name.
#[derive(Debug)]
pub struct Zip {
    path: PathBuf,
    map: Arc<Mmap>,
    entries: Vec<Entry>,
}

impl Zip {
    /// Maps `path` and reads its directory. A file without an EOCD record is
    /// [`Error::NotZip`] (or [`Error::Truncated`] if it starts like a zip); inconsistent
    /// offsets are [`Error::Truncated`] or [`Error::Corrupt`].
    pub fn open(path: &Path) -> Result<Zip, Error> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; like every mmap reader we assume nobody truncates or
        // rewrites the file while we hold the map.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Zip::from_map(path, Arc::new(map))
    }

    /// Reads the directory of an already mapped file; `path` is only used in error messages.
    pub fn from_map(path: &Path, map: Arc<Mmap>) -> Result<Zip, Error> {
        let entries = read_directory(path, &map)?;
        Ok(Zip {
            path: path.to_path_buf(),
            map,
            entries,
        })
    }

    /// The file this zip was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole mapped file; tensors keep a clone of it to stay zero-copy.
    pub fn map(&self) -> &Arc<Mmap> {
        &self.map
    }

    /// All entries, in central-directory order (torch's write order).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry with exactly this name.
    pub fn find(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Byte range of a stored entry inside [`Zip::map`]; [`Error::Compressed`] for any other
    /// method. Used for tensor storages, which must be zero-copy.
    pub fn stored_range(&self, entry: &Entry) -> Result<Range<usize>, Error> {
        if entry.method != METHOD_STORED {
            return Err(Error::Compressed {
                path: self.path.clone(),
                entry: entry.name.clone(),
                method: entry.method,
            });
        }
        self.data_range(entry)
    }

    /// The entry's bytes: borrowed from the map when stored, inflated when deflated
    /// (checked against the size the directory promises). Used for pickles and code text.
    pub fn read(&self, entry: &Entry) -> Result<Cow<'_, [u8]>, Error> {
        let range = self.data_range(entry)?;
        let raw = self
            .map
            .get(range)
            .ok_or_else(|| self.corrupt(format!("`{}` lies outside the file", entry.name)))?;
        match entry.method {
            METHOD_STORED => Ok(Cow::Borrowed(raw)),
            METHOD_DEFLATED => {
                let inflate_err = |reason: String| Error::Inflate {
                    path: self.path.clone(),
                    entry: entry.name.clone(),
                    reason,
                };
                let limit = usize::try_from(entry.size)
                    .map_err(|_| inflate_err(format!("size {} is too large", entry.size)))?;
                // Never trust the declared size for allocation: a small entry claiming gigabytes
                // is a decompression bomb.
                let by_ratio = raw.len().saturating_mul(MAX_DEFLATE_RATIO).saturating_add(MAX_DEFLATE_SLACK);
                if limit > by_ratio || limit > MAX_INFLATED_BYTES {
                    return Err(inflate_err(format!(
                        "declares {limit} bytes from {} compressed; deflate cannot expand more than {MAX_DEFLATE_RATIO}:1, and entries over {MAX_INFLATED_BYTES} bytes are refused (a decompression bomb?)",
                        raw.len()
                    )));
                }
                let out = miniz_oxide::inflate::decompress_to_vec_with_limit(raw, limit)
                    .map_err(|e| inflate_err(format!("{:?}", e.status)))?;
                if out.len() != limit {
                    return Err(inflate_err(format!(
                        "inflated to {} bytes, directory says {limit}",
                        out.len()
                    )));
                }
                Ok(Cow::Owned(out))
            }
            method => Err(Error::UnsupportedCompression {
                path: self.path.clone(),
                entry: entry.name.clone(),
                method,
            }),
        }
    }

    fn data_range(&self, entry: &Entry) -> Result<Range<usize>, Error> {
        let start = usize::try_from(entry.data_offset).ok();
        let len = usize::try_from(entry.compressed_size).ok();
        match (start, len) {
            (Some(start), Some(len)) => match start.checked_add(len) {
                Some(end) if end <= self.map.len() => Ok(start..end),
                _ => Err(self.corrupt(format!("`{}` lies outside the file", entry.name))),
            },
            _ => Err(self.corrupt(format!("`{}` lies outside the file", entry.name))),
        }
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }
}

/// Where the central directory is, from the (ZIP64) EOCD record.
struct Directory {
    offset: u64,
    size: u64,
    count: u64,
    /// File offset where the directory must end (the first trailer record).
    end: u64,
}

fn read_directory(path: &Path, bytes: &[u8]) -> Result<Vec<Entry>, Error> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let truncated = |reason: String| Error::Truncated {
        path: path.to_path_buf(),
        reason,
    };
    let dir = find_directory(path, bytes)?;
    let out_of_file = |what: &str| {
        truncated(format!(
            "{what} points past the end of the file ({} bytes)",
            bytes.len()
        ))
    };
    let start = usize::try_from(dir.offset).map_err(|_| out_of_file("the central directory"))?;
    let size = usize::try_from(dir.size).map_err(|_| out_of_file("the central directory"))?;
    let end = start
        .checked_add(size)
        .ok_or_else(|| out_of_file("the central directory"))?;
    if u64::try_from(end).map_or(true, |e| e > dir.end) {
        return Err(out_of_file("the central directory"));
    }
    let cd = bytes
        .get(start..end)
        .ok_or_else(|| out_of_file("the central directory"))?;
    // Each header takes at least CENTRAL_LEN bytes, so this bounds the allocation by the file size.
    let capacity = usize::try_from(dir.count)
        .unwrap_or(usize::MAX)
        .min(cd.len() / CENTRAL_LEN);
    let mut entries = Vec::with_capacity(capacity);
    let mut at = 0usize;
    for index in 0..dir.count {
        let header = |field: usize| at.checked_add(field);
        let need = |n: usize| {
            corrupt(format!(
                "central directory header {index} is cut short (needs {n} bytes)"
            ))
        };
        if le_u32(cd, at) != Some(CENTRAL_SIGNATURE) {
            return Err(corrupt(format!(
                "central directory header {index} has no signature"
            )));
        }
        let field16 = |f: usize| {
            header(f)
                .and_then(|p| le_u16(cd, p))
                .ok_or_else(|| need(CENTRAL_LEN))
        };
        let field32 = |f: usize| {
            header(f)
                .and_then(|p| le_u32(cd, p))
                .ok_or_else(|| need(CENTRAL_LEN))
        };
        let flags = field16(8)?;
        let method = field16(10)?;
        let compressed32 = field32(20)?;
        let size32 = field32(24)?;
        let name_len = usize::from(field16(28)?);
        let extra_len = usize::from(field16(30)?);
        let comment_len = usize::from(field16(32)?);
        let local32 = field32(42)?;
        let name_start = at + CENTRAL_LEN;
        let extra_start = name_start + name_len;
        let next = extra_start + extra_len + comment_len;
        let name = cd
            .get(name_start..extra_start)
            .ok_or_else(|| need(next - at))?;
        let extra = cd
            .get(extra_start..extra_start + extra_len)
            .ok_or_else(|| need(next - at))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| {
                corrupt(format!(
                    "central directory header {index}: name is not UTF-8"
                ))
            })?
            .to_string();
        if flags & FLAG_ENCRYPTED != 0 {
            return Err(corrupt(format!("`{name}` is encrypted")));
        }
        let (size, compressed_size, local_offset) =
            zip64_fields(extra, size32, compressed32, local32).ok_or_else(|| {
                corrupt(format!(
                    "`{name}`: ZIP64 extra field is missing or too short"
                ))
            })?;
        let data_offset = local_data_offset(bytes, local_offset).ok_or_else(|| {
            truncated(format!("local header of `{name}` is missing or cut short"))
        })?;
        let data_end = data_offset.checked_add(compressed_size);
        if data_end.is_none_or(|e| e > dir.offset) {
            return Err(truncated(format!(
                "data of `{name}` runs past the central directory"
            )));
        }
        if method == METHOD_STORED && size != compressed_size {
            return Err(corrupt(format!(
                "stored entry `{name}` has size {size} but occupies {compressed_size} bytes"
            )));
        }
        entries.push(Entry {
            name,
            method,
            compressed_size,
            size,
            data_offset,
        });
        at = next;
    }
    Ok(entries)
}

/// Finds the EOCD record by scanning back from the end, then follows the ZIP64 locator
/// right before it, if there is one.
fn find_directory(path: &Path, bytes: &[u8]) -> Result<Directory, Error> {
    let corrupt = |reason: &str| Error::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let last = bytes.len().checked_sub(EOCD_LEN);
    let eocd = last.and_then(|last| {
        let first = last.saturating_sub(MAX_COMMENT_LEN);
        let tail = bytes.get(first..last + 4)?;
        let [s0, s1, s2, s3] = EOCD_SIGNATURE.to_le_bytes();
        let mut candidates = tail.windows(4).rposition(|w| w == [s0, s1, s2, s3]);
        while let Some(i) = candidates {
            let p = first + i;
            let comment = usize::from(le_u16(bytes, p + 20)?);
            if p + EOCD_LEN + comment <= bytes.len() {
                return Some(p);
            }
            candidates = tail
                .get(..i + 3)?
                .windows(4)
                .rposition(|w| w == [s0, s1, s2, s3]);
        }
        None
    });
    let Some(eocd) = eocd else {
        if le_u32(bytes, 0) == Some(LOCAL_SIGNATURE) {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                reason: "the end-of-central-directory record is missing (file cut short?)"
                    .to_string(),
            });
        }
        return Err(Error::NotZip {
            path: path.to_path_buf(),
        });
    };
    let field16 =
        |f: usize| le_u16(bytes, eocd + f).ok_or_else(|| corrupt("EOCD record is cut short"));
    let field32 =
        |f: usize| le_u32(bytes, eocd + f).ok_or_else(|| corrupt("EOCD record is cut short"));
    let count16 = field16(10)?;
    let size32 = field32(12)?;
    let offset32 = field32(16)?;
    let locator = eocd.checked_sub(ZIP64_LOCATOR_LEN);
    let zip64 = locator.filter(|&l| le_u32(bytes, l) == Some(ZIP64_LOCATOR_SIGNATURE));
    let Some(locator) = zip64 else {
        if count16 == ZIP64_MARKER_U16 || size32 == ZIP64_MARKER_U32 || offset32 == ZIP64_MARKER_U32
        {
            return Err(corrupt(
                "EOCD record defers to a ZIP64 record that is not there",
            ));
        }
        return Ok(Directory {
            offset: u64::from(offset32),
            size: u64::from(size32),
            count: u64::from(count16),
            end: eocd as u64,
        });
    };
    let record = le_u64(bytes, locator + 8).ok_or_else(|| corrupt("ZIP64 locator is cut short"))?;
    let record = usize::try_from(record)
        .ok()
        .filter(|&r| {
            r.checked_add(ZIP64_EOCD_LEN)
                .is_some_and(|end| end <= locator)
        })
        .ok_or_else(|| corrupt("ZIP64 locator points outside the file"))?;
    if le_u32(bytes, record) != Some(ZIP64_EOCD_SIGNATURE) {
        return Err(corrupt(
            "ZIP64 end-of-central-directory record has no signature",
        ));
    }
    let field64 = |f: usize| {
        le_u64(bytes, record + f).ok_or_else(|| corrupt("ZIP64 EOCD record is cut short"))
    };
    Ok(Directory {
        count: field64(32)?,
        size: field64(40)?,
        offset: field64(48)?,
        end: record as u64,
    })
}

/// Applies the ZIP64 extra field: each 32-bit value equal to the marker is replaced, in the
/// APPNOTE order (size, compressed size, local header offset). `None` if the field is short.
fn zip64_fields(extra: &[u8], size: u32, compressed: u32, local: u32) -> Option<(u64, u64, u64)> {
    let mut values = [u64::from(size), u64::from(compressed), u64::from(local)];
    if !values.iter().any(|&v| v == u64::from(ZIP64_MARKER_U32)) {
        let [size, compressed, local] = values;
        return Some((size, compressed, local));
    }
    let mut at = 0usize;
    let data = loop {
        let id = le_u16(extra, at)?;
        let len = usize::from(le_u16(extra, at + 2)?);
        let data = extra.get(at + 4..at + 4 + len)?;
        if id == ZIP64_EXTRA_ID {
            break data;
        }
        at += 4 + len;
    };
    let mut pos = 0usize;
    for v in values
        .iter_mut()
        .filter(|v| **v == u64::from(ZIP64_MARKER_U32))
    {
        *v = le_u64(data, pos)?;
        pos += 8;
    }
    let [size, compressed, local] = values;
    Some((size, compressed, local))
}

/// File offset of an entry's data: after its local header, name and extra field (torch pads
/// the extra field so this is 64-byte aligned). `None` if the header is missing or cut short.
fn local_data_offset(bytes: &[u8], local: u64) -> Option<u64> {
    let at = usize::try_from(local).ok()?;
    if le_u32(bytes, at)? != LOCAL_SIGNATURE {
        return None;
    }
    let name_len = usize::from(le_u16(bytes, at.checked_add(26)?)?);
    let extra_len = usize::from(le_u16(bytes, at.checked_add(28)?)?);
    let start = at.checked_add(LOCAL_LEN + name_len + extra_len)?;
    (start <= bytes.len()).then_some(start as u64)
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal zip writer for tests: stored entries, the data of each padded to `align`,
    /// optionally with a ZIP64 trailer as torch writes it.
    fn build(entries: &[(&str, &[u8], u16)], zip64: bool, comment: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data, method) in entries {
            let offset = out.len() as u32;
            out.extend(LOCAL_SIGNATURE.to_le_bytes());
            out.extend([20, 0, 0, 0]);
            out.extend(method.to_le_bytes());
            out.extend([0; 16]);
            out.extend((name.len() as u16).to_le_bytes());
            let pad = (64 - (out.len() + 2 + name.len()) % 64) % 64;
            out.extend((pad as u16).to_le_bytes());
            out.extend(name.as_bytes());
            out.extend(vec![0; pad]);
            out.extend(*data);
            central.extend(CENTRAL_SIGNATURE.to_le_bytes());
            central.extend([20, 0, 20, 0, 0, 0]);
            central.extend(method.to_le_bytes());
            central.extend([0; 8]);
            central.extend((data.len() as u32).to_le_bytes());
            central.extend((data.len() as u32).to_le_bytes());
            central.extend((name.len() as u16).to_le_bytes());
            central.extend([0; 12]);
            central.extend(offset.to_le_bytes());
            central.extend(name.as_bytes());
        }
        let cd_offset = out.len();
        out.extend(&central);
        let count = entries.len() as u64;
        if zip64 {
            let record = out.len() as u64;
            out.extend(ZIP64_EOCD_SIGNATURE.to_le_bytes());
            out.extend(44u64.to_le_bytes());
            out.extend([45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend(count.to_le_bytes());
            out.extend(count.to_le_bytes());
            out.extend((central.len() as u64).to_le_bytes());
            out.extend((cd_offset as u64).to_le_bytes());
            out.extend(ZIP64_LOCATOR_SIGNATURE.to_le_bytes());
            out.extend([0; 4]);
            out.extend(record.to_le_bytes());
            out.extend(1u32.to_le_bytes());
        }
        out.extend(EOCD_SIGNATURE.to_le_bytes());
        out.extend([0; 4]);
        let (n16, size32, off32) = if zip64 {
            (ZIP64_MARKER_U16, ZIP64_MARKER_U32, ZIP64_MARKER_U32)
        } else {
            (count as u16, central.len() as u32, cd_offset as u32)
        };
        out.extend(n16.to_le_bytes());
        out.extend(n16.to_le_bytes());
        out.extend(size32.to_le_bytes());
        out.extend(off32.to_le_bytes());
        out.extend((comment.len() as u16).to_le_bytes());
        out.extend(comment);
        out
    }

    fn open_bytes(bytes: &[u8]) -> Result<Zip, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.pt");
        std::fs::write(&path, bytes).unwrap();
        Zip::open(&path)
    }

    #[test]
    fn reads_stored_entries_with_and_without_zip64() {
        for zip64 in [false, true] {
            let bytes = build(
                &[("m/data/0", b"abcd", 0), ("m/data.pkl", b"\x80\x02N.", 0)],
                zip64,
                b"",
            );
            let zip = open_bytes(&bytes).unwrap();
            let names: Vec<_> = zip.entries().iter().map(|e| e.name.as_str()).collect();
            assert_eq!(names, ["m/data/0", "m/data.pkl"]);
            let e = zip.find("m/data/0").unwrap();
            assert_eq!(e.data_offset % 64, 0, "test writer aligns like torch");
            let range = zip.stored_range(e).unwrap();
            assert_eq!(&zip.map()[range], b"abcd");
            assert_eq!(
                &*zip.read(zip.find("m/data.pkl").unwrap()).unwrap(),
                b"\x80\x02N."
            );
        }
    }

    #[test]
    fn a_comment_after_the_eocd_is_skipped() {
        let bytes = build(&[("a/x", b"1", 0)], true, b"PK\x05\x06 looks like a record");
        assert_eq!(open_bytes(&bytes).unwrap().entries().len(), 1);
    }

    #[test]
    fn compressed_and_unknown_methods_are_typed_errors() {
        let bytes = build(&[("a/x", b"1", 8), ("a/y", b"2", 12)], true, b"");
        let zip = open_bytes(&bytes).unwrap();
        let x = zip.find("a/x").unwrap();
        assert!(matches!(
            zip.stored_range(x),
            Err(Error::Compressed { method: 8, .. })
        ));
        assert!(
            matches!(zip.read(x), Err(Error::Inflate { .. })),
            "b\"1\" is not a deflate stream"
        );
        let y = zip.find("a/y").unwrap();
        assert!(matches!(
            zip.read(y),
            Err(Error::UnsupportedCompression { method: 12, .. })
        ));
    }

    #[test]
    fn not_a_zip_and_truncated_are_told_apart() {
        assert!(matches!(open_bytes(b""), Err(Error::NotZip { .. })));
        assert!(matches!(
            open_bytes(b"hello, this is text and not a zip"),
            Err(Error::NotZip { .. })
        ));
        let bytes = build(&[("a/x", b"12345678", 0)], true, b"");
        assert!(matches!(
            open_bytes(&bytes[..bytes.len() / 2]),
            Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn every_prefix_and_every_byte_flip_is_an_error_or_a_zip_not_a_panic() {
        let bytes = build(&[("a/x", b"12345678", 0), ("a/y", b"z", 0)], true, b"");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.pt");
        for cut in 0..bytes.len() {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(Zip::open(&path).is_err(), "prefix of {cut} bytes");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0xff;
            std::fs::write(&path, &flipped).unwrap();
            if let Ok(zip) = Zip::open(&path) {
                for e in zip.entries() {
                    let _ = zip.read(e);
                }
            }
        }
    }

    #[test]
    fn a_directory_claiming_more_entries_than_it_holds_is_corrupt() {
        let mut bytes = build(&[("a/x", b"1", 0)], false, b"");
        let eocd = bytes.len() - EOCD_LEN;
        bytes[eocd + 10..eocd + 12].copy_from_slice(&1000u16.to_le_bytes());
        assert!(matches!(open_bytes(&bytes), Err(Error::Corrupt { .. })));
    }
}
