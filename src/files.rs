//! Opening files a user (or an attacker) hands us: only regular files are read (a FIFO would block
//! forever, a device never ends), reads are capped, memory maps are of regular files only, and
//! paths named by one file of a folder (an index, a tokenizer) must stay inside that folder after
//! symlinks are resolved. Every reader of input files goes through here: `torchscript`, `hf`,
//! `package`, `validate::npz`, `speech`. Uses std and memmap2 only.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// Why an input file was refused. Each variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: is {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: {size} bytes, more than the {max} bytes allowed for this kind of file", path.display())]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{}: resolves outside the folder {}; paths in a model folder must stay inside it", path.display(), dir.display())]
    OutsideFolder { path: PathBuf, dir: PathBuf },
}

impl Error {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Error::Io { path, .. } | Error::NotRegular { path, .. } | Error::TooLarge { path, .. } | Error::OutsideFolder { path, .. } => path,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// What kind of non-regular file `meta` describes, for messages.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    "not a regular file"
}

/// Opens `path` for reading if it is a regular file (symlinks followed), checking the type
/// before `open` (opening a FIFO blocks until a writer comes) and again on the open handle.
/// Returns the file and its size.
pub fn open_regular(path: &Path) -> Result<(File, u64), Error> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if !meta.is_file() {
        return Err(Error::NotRegular { path: path.to_path_buf(), kind: kind(&meta) });
    }
    let file = File::open(path).map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(Error::NotRegular { path: path.to_path_buf(), kind: kind(&meta) });
    }
    Ok((file, meta.len()))
}

/// Reads a whole regular file of at most `max` bytes (config, manifest, model spec, index).
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, Error> {
    let (file, size) = open_regular(path)?;
    if size > max {
        return Err(Error::TooLarge { path: path.to_path_buf(), size, max });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // `take` bounds the read even if the file grows after the size check.
    file.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(io(path))?;
    if bytes.len() as u64 > max {
        return Err(Error::TooLarge { path: path.to_path_buf(), size: bytes.len() as u64, max });
    }
    Ok(bytes)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_text_capped(path: &Path, max: u64) -> Result<String, Error> {
    let bytes = read_capped(path, max)?;
    String::from_utf8(bytes).map_err(|e| Error::Io { path: path.to_path_buf(), source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8 text ({e})")) })
}

/// Memory-maps a regular file read-only (weights: `.pt`, safetensors, `weight.bin`).
///
/// The map is only valid while nobody truncates the file; like every mmap reader we assume the
/// input is not modified while we read it.
pub fn map_regular(path: &Path) -> Result<Mmap, Error> {
    let (file, _) = open_regular(path)?;
    // SAFETY: read-only map of a regular file; see the doc comment about concurrent truncation.
    unsafe { Mmap::map(&file) }.map_err(io(path))
}

/// Resolves `name` (a path read from a file of folder `dir`) to a path inside `dir`: absolute
/// names, `..` that climb out, and symlinks whose target lies outside `dir` are refused.
/// The returned path is canonical. Used for safetensors index shards and copied side files.
pub fn inside(dir: &Path, name: &Path) -> Result<PathBuf, Error> {
    let root = dir.canonicalize().map_err(io(dir))?;
    let joined = dir.join(name);
    let real = joined.canonicalize().map_err(io(&joined))?;
    if name.is_absolute() || !real.starts_with(&root) {
        return Err(Error::OutsideFolder { path: joined, dir: dir.to_path_buf() });
    }
    Ok(real)
}

/// Longest text taken from a file that a message shows; the rest is cut with a note.
pub const MAX_SHOWN_CHARS: usize = 200;

/// Makes text read from a file safe to show in one terminal line: control characters (ANSI
/// escapes, newlines, carriage returns) are escaped as `\u{..}`, and text longer than
/// [`MAX_SHOWN_CHARS`] is cut. Called where file-controlled names enter messages and reports,
/// and by the CLI on every error line.
pub fn shown(s: &str) -> String {
    shown_up_to(s, MAX_SHOWN_CHARS)
}

/// Longest error line part the CLI prints: a list of unsupported ops (up to 20 kinds with 3
/// source lines each, every name already cut by [`shown`]) must fit whole, while a hostile
/// message stays a line, not megabytes.
pub const MAX_ERROR_PART_CHARS: usize = 4096;

/// [`shown`] with its own length limit, for text that is already made of bounded items (the
/// CLI's error lines, [`MAX_ERROR_PART_CHARS`]).
pub fn shown_up_to(s: &str, limit: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == limit {
            out += &format!("… ({} more chars)", s.chars().count() - n);
            break;
        }
        if c.is_control() || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("weight.bin");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        let e = open_regular(&fifo).unwrap_err();
        assert!(e.to_string().ends_with("is a FIFO, not a regular file"), "{e}");
        assert!(matches!(read_capped(dir.path(), 10), Err(Error::NotRegular { kind: "a directory", .. })));
        assert!(map_regular(&fifo).is_err());
    }

    #[test]
    fn reads_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_capped(&p, 10).unwrap().len(), 10);
        assert!(matches!(read_capped(&p, 9), Err(Error::TooLarge { size: 10, max: 9, .. })));
    }

    #[test]
    fn paths_stay_inside_the_folder() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("model");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(outer.path().join("secret"), b"x").unwrap();
        std::fs::write(dir.join("a.safetensors"), b"x").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret"), dir.join("tokenizer.json")).unwrap();
        std::os::unix::fs::symlink("a.safetensors", dir.join("b.safetensors")).unwrap();
        assert!(inside(&dir, Path::new("a.safetensors")).is_ok());
        assert!(inside(&dir, Path::new("b.safetensors")).is_ok(), "a link inside the folder is fine");
        for bad in ["../secret", "tokenizer.json", "/etc/passwd"] {
            assert!(matches!(inside(&dir, Path::new(bad)), Err(Error::OutsideFolder { .. })), "{bad}");
        }
    }

    #[test]
    fn shown_escapes_controls_and_truncates() {
        assert_eq!(shown("bert"), "bert");
        assert_eq!(shown("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\u{a}c");
        let long = "x".repeat(10_000);
        let s = shown(&long);
        assert!(s.len() < MAX_SHOWN_CHARS + 40 && s.ends_with("(9800 more chars)"), "{s}");
    }
}
