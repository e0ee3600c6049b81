//! Writing an output without ever losing data: everything is built in a temporary directory
//! beside the destination and renamed into place only when complete. An existing destination is
//! replaced only when the tool wrote it (the caller's `ours` test) or the user forces it; a lock
//! beside the destination lets exactly one of two concurrent writers proceed; temporaries are
//! removed on error, on Ctrl-C (through [`remove_live`], called by the CLI's signal handler), and,
//! when a killed run left them, by the next run to the same destination.
//! Called by `package::write` (one package) and `pipeline::write` (a folder of packages).
//! Uses std and tempfile only.
//!
//! On-disk names beside `DEST` (all hidden, all ours by construction):
//! `.DEST.t2c-lock` (held with an exclusive `flock` while a writer runs, removed at the end),
//! `.DEST.t2c-tmp-XXXX` (the staged output), `.DEST.t2c-old-XXXX` (the replaced output, deleted
//! once the new one is in place).

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Infix of every name this module creates beside a destination; a stale one is removed only
/// while holding the destination's lock.
const MARK: &str = ".t2c-";
/// Suffix of the lock file beside the destination.
const LOCK: &str = "lock";
/// Infix of the staged output directory.
const TMP: &str = "tmp-";
/// Infix of a replaced output waiting to be deleted.
const OLD: &str = "old-";

/// Why an output could not be written. Each variant names the destination.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: already exists and was not written by torch2coreml ({what}); refusing to replace it (choose another -o, or pass --force to replace it)", path.display())]
    Exists { path: PathBuf, what: String },
    #[error("{}: another torch2coreml is writing this output right now (lock {}); try again when it has finished", path.display(), lock.display())]
    Busy { path: PathBuf, lock: PathBuf },
    #[error("{}: not a valid output path (it needs a file name)", path.display())]
    BadPath { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Whether an existing destination may be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// Only when the caller's `ours` test says the tool wrote it (the default).
    OursOnly,
    /// Anything (`--force`): a user's file or folder at the destination is replaced.
    Anything,
}

/// Temporaries of writes in progress in this process, for [`remove_live`].
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn track(path: &Path) {
    if let Ok(mut live) = LIVE.lock() {
        live.push(path.to_path_buf());
    }
}

fn untrack(path: &Path) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|p| p != path);
    }
}

/// Removes the temporaries (staged outputs and lock files) of every write in progress. Called by
/// the CLI's Ctrl-C / SIGTERM handler just before the process exits.
pub fn remove_live() {
    let paths = match LIVE.lock() {
        Ok(mut live) => std::mem::take(&mut *live),
        Err(_) => return,
    };
    for p in paths {
        let _ = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
    }
}

/// An output being written: build the content at [`Staged::path`], then [`Staged::commit`].
/// Dropped without commit, it removes its temporaries.
pub struct Staged {
    dest: PathBuf,
    parent: PathBuf,
    name: OsString,
    tmp: PathBuf,
    lock_path: PathBuf,
    /// Held (exclusive flock) for the life of the write.
    _lock: File,
    replace: Replace,
    ours: fn(&Path) -> bool,
    committed: bool,
}

/// A sibling name of the destination: `.NAME.t2c-<suffix>`.
fn sibling(parent: &Path, name: &std::ffi::OsStr, suffix: &str) -> PathBuf {
    let mut s = OsString::from(".");
    s.push(name);
    s.push(MARK);
    s.push(suffix);
    parent.join(s)
}

/// What an existing path is, for the refusal message.
fn describe(meta: &fs::Metadata) -> &'static str {
    if meta.file_type().is_symlink() {
        "a symbolic link"
    } else if meta.is_dir() {
        "a directory"
    } else {
        "a file"
    }
}

/// Refuses an existing `dest` that may not be replaced.
fn check_replaceable(dest: &Path, replace: Replace, ours: fn(&Path) -> bool) -> Result<(), Error> {
    let Ok(meta) = fs::symlink_metadata(dest) else { return Ok(()) };
    if replace == Replace::Anything || (!meta.file_type().is_symlink() && ours(dest)) {
        return Ok(());
    }
    Err(Error::Exists { path: dest.to_path_buf(), what: describe(&meta).to_string() })
}

impl Staged {
    /// Starts writing `dest`: checks that an existing `dest` may be replaced (`ours` says whether
    /// the tool wrote it), takes the destination's lock (failing with [`Error::Busy`] when another
    /// writer holds it), removes temporaries a killed run left, and creates the empty staging
    /// directory (parent directories are created as needed).
    pub fn begin(dest: &Path, replace: Replace, ours: fn(&Path) -> bool) -> Result<Staged, Error> {
        let name = dest.file_name().ok_or_else(|| Error::BadPath { path: dest.to_path_buf() })?.to_os_string();
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        check_replaceable(dest, replace, ours)?;
        fs::create_dir_all(&parent).map_err(io(&parent))?;
        let lock_path = sibling(&parent, &name, LOCK);
        let lock = lock_file(dest, &lock_path)?;
        track(&lock_path);
        // We hold the lock: any temporary of this destination is a killed run's leftover.
        remove_stale(&parent, &name);
        let tmp = match tempfile::Builder::new().prefix(&sibling(Path::new(""), &name, TMP)).tempdir_in(&parent) {
            Ok(t) => t.keep(),
            Err(e) => {
                untrack(&lock_path);
                let _ = fs::remove_file(&lock_path);
                return Err(Error::Io { path: parent, source: e });
            }
        };
        track(&tmp);
        Ok(Staged { dest: dest.to_path_buf(), parent, name, tmp, lock_path, _lock: lock, replace, ours, committed: false })
    }

    /// The staging directory: the caller builds the whole output here (for a single package, the
    /// package directory itself).
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Moves the staged output to the destination. An existing destination (re-checked now) is
    /// moved aside first and deleted only once the new output is in place; if the final rename
    /// fails, it is put back.
    pub fn commit(mut self) -> Result<(), Error> {
        check_replaceable(&self.dest, self.replace, self.ours)?;
        let old = match fs::symlink_metadata(&self.dest) {
            Ok(_) => {
                let old = sibling(&self.parent, &self.name, &format!("{OLD}{}", std::process::id()));
                fs::rename(&self.dest, &old).map_err(io(&self.dest))?;
                Some(old)
            }
            Err(_) => None,
        };
        if let Err(e) = fs::rename(&self.tmp, &self.dest) {
            if let Some(old) = &old {
                let _ = fs::rename(old, &self.dest);
            }
            return Err(Error::Io { path: self.dest.clone(), source: e });
        }
        self.committed = true;
        untrack(&self.tmp);
        if let Some(old) = old {
            remove_any(&old);
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
            untrack(&self.tmp);
        }
        let _ = fs::remove_file(&self.lock_path);
        untrack(&self.lock_path);
    }
}

/// Removes a file, a symlink (not its target) or a directory tree.
fn remove_any(path: &Path) {
    let _ = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
}

/// Removes `.NAME.t2c-tmp-*` and `.NAME.t2c-old-*` left beside the destination by killed runs.
fn remove_stale(parent: &Path, name: &std::ffi::OsStr) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    let tmp = sibling(Path::new(""), name, TMP).into_os_string();
    let old = sibling(Path::new(""), name, OLD).into_os_string();
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.as_encoded_bytes();
        if n.starts_with(tmp.as_encoded_bytes()) || n.starts_with(old.as_encoded_bytes()) {
            remove_any(&e.path());
        }
    }
}

/// Opens and locks `lock_path`. The lock is only ours if the path still names the locked file
/// afterwards (a finishing writer unlinks it; locking the unlinked file would be no lock).
fn lock_file(dest: &Path, lock_path: &Path) -> Result<File, Error> {
    /// Attempts before giving up on a lock file that keeps being replaced under us.
    const ATTEMPTS: usize = 8;
    for _ in 0..ATTEMPTS {
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(lock_path).map_err(io(lock_path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Busy { path: dest.to_path_buf(), lock: lock_path.to_path_buf() }),
            Err(fs::TryLockError::Error(e)) => return Err(Error::Io { path: lock_path.to_path_buf(), source: e }),
        }
        if same_file(&file, lock_path) {
            return Ok(file);
        }
    }
    Err(Error::Busy { path: dest.to_path_buf(), lock: lock_path.to_path_buf() })
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: &Path) -> bool {
        false
    }

    fn always(_: &Path) -> bool {
        true
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_new_output_appears_whole_and_nothing_else_remains() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let s = Staged::begin(&dest, Replace::OursOnly, never).unwrap();
        fs::write(s.path().join("a"), b"1").unwrap();
        assert!(!dest.exists());
        s.commit().unwrap();
        assert_eq!(fs::read(dest.join("a")).unwrap(), b"1");
        assert_eq!(listing(dir.path()), ["out"]);
    }

    #[test]
    fn foreign_outputs_survive_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("notes.txt");
        fs::write(&file, b"user data").unwrap();
        let e = Staged::begin(&file, Replace::OursOnly, never).err().unwrap();
        assert!(matches!(e, Error::Exists { .. }), "{e}");
        assert_eq!(fs::read(&file).unwrap(), b"user data");
        assert_eq!(listing(dir.path()), ["notes.txt"]);
        let s = Staged::begin(&file, Replace::Anything, never).unwrap();
        fs::write(s.path().join("x"), b"2").unwrap();
        s.commit().unwrap();
        assert!(file.is_dir());
        assert_eq!(listing(dir.path()), ["notes.txt"]);
    }

    #[test]
    fn our_outputs_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("old"), b"o").unwrap();
        let s = Staged::begin(&dest, Replace::OursOnly, always).unwrap();
        fs::write(s.path().join("new"), b"n").unwrap();
        s.commit().unwrap();
        assert_eq!(listing(&dest), ["new"]);
        assert_eq!(listing(dir.path()), ["m"]);
    }

    #[test]
    fn a_second_writer_fails_cleanly_and_a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let first = Staged::begin(&dest, Replace::OursOnly, never).unwrap();
        let e = Staged::begin(&dest, Replace::OursOnly, never).err().unwrap();
        assert!(matches!(e, Error::Busy { .. }), "{e}");
        drop(first);
        assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
    }

    #[test]
    fn leftovers_of_a_killed_run_are_removed_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        fs::create_dir(dir.path().join(".out.t2c-tmp-abc")).unwrap();
        fs::write(dir.path().join(".out.t2c-tmp-abc/w"), b"big").unwrap();
        fs::write(dir.path().join(".out.t2c-lock"), b"").unwrap();
        fs::write(dir.path().join(".other.t2c-tmp-x"), b"not this destination's").unwrap();
        let s = Staged::begin(&dest, Replace::OursOnly, never).unwrap();
        s.commit().unwrap();
        assert_eq!(listing(dir.path()), [".other.t2c-tmp-x", "out"]);
    }
}
