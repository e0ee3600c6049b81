//! The hostile-input suite: every class of bad input the issue "One pipeline, hardened" lists,
//! run through the real binary with the subcommand a user would run. The promise each case
//! checks: exit code 2 (or the stated alternative), ONE line on stderr (one `\n`, no ESC byte,
//! short) naming the offending file, under [`TIME_LIMIT`], peak RSS under [`PEAK_RSS_LIMIT_KB`],
//! and the watched directories byte for byte as they were (user data survives, no `.t2c*` temp
//! dir or partial output is left beside `-o`).
//!
//! Classes: data loss (`convert -o` onto the input, its parent, a file, a foreign directory or
//! package; `--force`), memory bombs (zip entries inflating to gigabytes in `.pt` and `.npz`, a
//! pickle billion laughs, stride-0 views, absurd config sizes, huge package dims), panics
//! (wrapping element counts in TorchScript code), false passes (NaN expected outputs, dims that
//! wrap to zero elements), hangs (FIFOs, 200k statements, a WAV at 1 Hz), content crossing
//! boundaries (safetensors index and symlinked tokenizer leaving the folder, escapes and
//! megabytes in names).
//!
//! Inputs are built at test time by `fixtures/hostile/make.rs`; the two huge-dims packages are
//! committed (`fixtures/hostile/make.py`, coremltools). Needs nothing from `make setup`.
//! Children run with an address-space limit ([`ADDRESS_SPACE_LIMIT`]) so a bomb fails fast
//! instead of taking the machine, and are killed at [`TIME_LIMIT`]. Unix only (wait4, rlimits,
//! FIFOs).
#![cfg(unix)]

#[path = "../fixtures/hostile/make.rs"]
mod make;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use make::Code;

/// The issue's time bound for one case; the child is killed when it is reached.
const TIME_LIMIT: Duration = Duration::from_secs(10);
/// The issue's memory bound: peak resident set of one case, in KiB (`ru_maxrss` units on Linux).
const PEAK_RSS_LIMIT_KB: libc::c_long = 1 << 20;
/// Address-space ceiling of every child (4 GiB): far above a healthy run (the debug binary maps
/// well under 1 GiB), low enough that a decompression or allocation bomb aborts in a moment
/// instead of swapping the shared test machine.
const ADDRESS_SPACE_LIMIT: libc::rlim_t = 4 << 30;
/// How often the runner checks whether the child has ended.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Longest acceptable error line, in bytes: "PATH: what is wrong (likely cause)" plus a path.
const MAX_ERROR_LINE: usize = 4096;
/// Longest error line when the file fed megabytes of text into the message.
const MAX_QUOTING_LINE: usize = 1024;
/// Sequence length for the tiny BERT (its max_position_embeddings is 16).
const SEQ_LEN: &str = "8";
/// The input of the generated `.pt` modules ([`make::plain_pt`]).
const PT_INPUT: &str = "x:1x4:fp32";
/// The input of fixtures/torchscript/mlp.pt (fc1 is Linear(8, 16)).
const MLP_PT_INPUT: &str = "x:1x8:fp32";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---- the runner ------------------------------------------------------------------------------

/// How one run of the binary ended.
struct Run {
    /// Exit code, when the child exited (not killed by a signal).
    code: Option<i32>,
    /// The signal that ended the child, if one did (SIGABRT: an allocation failed).
    signal: Option<i32>,
    /// Killed at [`TIME_LIMIT`].
    timed_out: bool,
    elapsed: Duration,
    /// Peak resident set in KiB (`wait4` rusage `ru_maxrss`).
    peak_rss_kb: libc::c_long,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Run {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// How it ended, for messages: `exit 2`, `signal 6`, `killed after 10 s`.
    fn ending(&self) -> String {
        match (self.timed_out, self.code, self.signal) {
            (true, _, _) => format!("killed after {:.1} s", self.elapsed.as_secs_f64()),
            (_, Some(c), _) => format!("exit {c}"),
            (_, None, Some(s)) => format!("signal {s}"),
            _ => "unknown ending".into(),
        }
    }

    /// Problems with the bounds every case shares: time and peak memory.
    fn bound_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.timed_out || self.elapsed >= TIME_LIMIT {
            p.push(format!("took {:.1} s (limit {} s)", self.elapsed.as_secs_f64(), TIME_LIMIT.as_secs()));
        }
        if self.peak_rss_kb >= PEAK_RSS_LIMIT_KB {
            p.push(format!("peak RSS {} MiB (limit {} MiB)", self.peak_rss_kb / 1024, PEAK_RSS_LIMIT_KB / 1024));
        }
        p
    }

    /// Problems with stderr as one error line: exactly one trailing `\n`, no other line break,
    /// no ESC, at most `max_len` bytes, mentioning each of `mentions`.
    fn one_line_problems(&self, mentions: &[&str], max_len: usize) -> Vec<String> {
        let mut p = Vec::new();
        let err = &self.stderr;
        let shown = excerpt(&self.stderr());
        if err.iter().filter(|&&b| b == b'\n').count() != 1 || !err.ends_with(b"\n") {
            p.push(format!("stderr is not exactly one line: {shown}"));
        }
        if err.trim_ascii().is_empty() {
            p.push("stderr is empty".into());
        }
        if err.contains(&b'\r') {
            p.push("stderr holds a carriage return".into());
        }
        if err.contains(&0x1b) {
            p.push("stderr holds an ESC byte (terminal escape from the file)".into());
        }
        if err.len() > max_len {
            p.push(format!("stderr is {} bytes (limit {max_len})", err.len()));
        }
        let text = self.stderr();
        for m in mentions {
            if !text.contains(m) {
                p.push(format!("stderr does not name `{m}`: {shown}"));
            }
        }
        p
    }
}

/// At most 600 bytes of `s`, for failure messages (a panic backtrace can be long).
fn excerpt(s: &str) -> String {
    const SHOWN: usize = 600;
    let cut: String = s.chars().take(SHOWN).collect();
    if cut.len() < s.len() {
        format!("{cut:?}… ({} bytes)", s.len())
    } else {
        format!("{cut:?}")
    }
}

/// Runs the binary with `args` under the address-space limit, kills it at [`TIME_LIMIT`], and
/// reaps it with `wait4` to read its peak RSS. Output goes to files so a chatty child cannot
/// block on a full pipe.
fn run<S: AsRef<OsStr>>(args: &[S]) -> Run {
    let logs = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_torch2coreml"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, which is
    // async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: ADDRESS_SPACE_LIMIT, rlim_max: ADDRESS_SPACE_LIMIT };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let child = cmd.spawn().unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        let flags = if timed_out { 0 } else { libc::WNOHANG };
        // SAFETY: `pid` is our child, not yet reaped; status and usage are valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "wait4: {e}");
            continue;
        }
        if start.elapsed() >= TIME_LIMIT {
            // SAFETY: the child has not been reaped, so `pid` still names it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            timed_out = true;
            continue;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let elapsed = start.elapsed();
    drop(child);
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    Run {
        code,
        signal,
        timed_out,
        elapsed,
        peak_rss_kb: peak_rss_kb(&usage),
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    }
}

/// Peak resident set of a reaped child in KiB: Linux reports `ru_maxrss` in KiB, macOS in bytes.
fn peak_rss_kb(usage: &libc::rusage) -> libc::c_long {
    if cfg!(target_os = "macos") {
        usage.ru_maxrss / 1024
    } else {
        usage.ru_maxrss
    }
}

/// One node of a directory snapshot.
#[derive(Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
    /// A FIFO, socket or device: never opened.
    Special,
}

/// Everything under `dir` (relative path → node), symlinks not followed, FIFOs not opened;
/// an absent `dir` is an empty snapshot.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries {
            let e = e.unwrap();
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            let t = meta.file_type();
            let node = if t.is_symlink() {
                Node::Link(std::fs::read_link(&path).unwrap())
            } else if t.is_dir() {
                todo.push(path.clone());
                Node::Dir
            } else if t.is_file() {
                Node::File(std::fs::read(&path).unwrap())
            } else {
                Node::Special
            };
            out.insert(rel, node);
        }
    }
    out
}

/// What changed between two snapshots of `dir`, one line per path.
fn changes(dir: &Path, before: &BTreeMap<PathBuf, Node>, after: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let mut c = Vec::new();
    for (p, n) in before {
        match after.get(p) {
            None => c.push(format!("{}: {} was removed", dir.display(), p.display())),
            Some(m) if m != n => c.push(format!("{}: {} was changed", dir.display(), p.display())),
            Some(_) => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        c.push(format!("{}: {} was left behind", dir.display(), p.display()));
    }
    c
}

/// The problems the cases of one test found, reported together at the end (collect, then
/// report: one run shows every failing variant, not just the first).
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    /// Records what `case` found wrong, if anything.
    fn add(&mut self, case: &str, found: Vec<String>) {
        if !found.is_empty() {
            self.0.push(format!("{case}: {} problem(s):\n    {}", found.len(), found.join("\n    ")));
        }
    }

    /// Fails the test with every recorded problem.
    fn assert_none(self) {
        assert!(self.0.is_empty(), "\n{}", self.0.join("\n"));
    }
}

/// Runs `args` and checks the hostile-input promise: exit 2, one stderr line of at most
/// `max_len` bytes naming every one of `mentions`, within time and memory, and every directory
/// in `watch` unchanged byte for byte. Returns what is wrong.
fn refusal<S: AsRef<OsStr>>(args: &[S], mentions: &[&str], watch: &[&Path], max_len: usize) -> Vec<String> {
    let before: Vec<_> = watch.iter().map(|d| snapshot(d)).collect();
    let r = run(args);
    let mut problems = r.bound_problems();
    if r.code != Some(2) {
        problems.push(format!("ended with {}, expected exit 2; stderr: {}", r.ending(), excerpt(&r.stderr())));
    } else {
        problems.extend(r.one_line_problems(mentions, max_len));
    }
    for (d, b) in watch.iter().zip(&before) {
        problems.extend(changes(d, b, &snapshot(d)));
    }
    problems
}

/// One-case test body: [`refusal`] with the usual line limit, failing on any problem.
fn refused<S: AsRef<OsStr>>(case: &str, args: &[S], mentions: &[&str], watch: &[&Path]) {
    let mut p = Problems::default();
    p.add(case, refusal(args, mentions, watch, MAX_ERROR_LINE));
    p.assert_none();
}

/// Runs `args` on an input that is hostile only in size, where both outcomes are right: exit 0
/// with `produced` written (the reader shared what the file shares, or the work was linear), or
/// exit 2 with one line naming `mentions` and `watch` unchanged. Either way within time and
/// memory. Returns what is wrong.
fn bounded<S: AsRef<OsStr>>(args: &[S], produced: Option<&Path>, mentions: &[&str], watch: &[&Path]) -> Vec<String> {
    let before: Vec<_> = watch.iter().map(|d| snapshot(d)).collect();
    let r = run(args);
    let mut problems = r.bound_problems();
    match r.code {
        Some(0) => {
            if let Some(p) = produced.filter(|p| !p.exists()) {
                problems.push(format!("exit 0 but {} was not written", p.display()));
            }
        }
        Some(2) => {
            problems.extend(r.one_line_problems(mentions, MAX_ERROR_LINE));
            for (d, b) in watch.iter().zip(&before) {
                problems.extend(changes(d, b, &snapshot(d)));
            }
        }
        _ => problems.push(format!("ended with {}, expected exit 0 or 2; stderr: {}", r.ending(), excerpt(&r.stderr()))),
    }
    problems
}

/// Writes `bytes` to `dir/name` and returns the path.
fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(r, 0, "mkfifo {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Copies the directory tree `from` to `to` (regular files and directories only).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A tiny BERT folder `parent/name`.
fn bert_folder(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    make::write_bert(&dir);
    dir
}

/// `convert` arguments for a BERT folder.
fn convert_bert(model: &Path, out: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["convert".into(), model.into(), "-o".into(), out.into(), "--seq-len".into(), SEQ_LEN.into()];
    a.extend(extra.iter().map(OsString::from));
    a
}

/// `convert` arguments for a `.pt` with `input`.
fn convert_pt(model: &Path, out: &Path, input: &str, extra: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["convert".into(), model.into(), "-o".into(), out.into(), "--input".into(), input.into()];
    a.extend(extra.iter().map(OsString::from));
    a
}

/// Entries of `dir` whose names start with `.` (the writers' temp dirs are `.t2c-*`).
fn hidden_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// Runs `args`, which must succeed (exit 0) within the bounds. Returns the run and what is wrong.
fn success<S: AsRef<OsStr>>(args: &[S]) -> (Run, Vec<String>) {
    let r = run(args);
    let mut problems = r.bound_problems();
    if r.code != Some(0) {
        problems.push(format!("ended with {}, expected exit 0; stderr: {}", r.ending(), excerpt(&r.stderr())));
    }
    (r, problems)
}

/// Records in `p` that `what` is not so, when `ok` is false.
fn check(p: &mut Problems, case: &str, ok: bool, what: &str) {
    if !ok {
        p.add(case, vec![format!("expected: {what}")]);
    }
}

// ---- the generators make what they claim -----------------------------------------------------

/// The bases the hostile cases change one thing of are accepted, so a refusal below is about the
/// hostile part, not a broken generator.
#[test]
fn generated_bases_are_accepted() {
    let t = tempfile::tempdir().unwrap();
    let mut p = Problems::default();
    let pt = put(t.path(), "plain.pt", &make::plain_pt());
    p.add("plain .pt", success(&convert_pt(&pt, &t.path().join("Plain.mlpackage"), PT_INPUT, &[])).1);
    // The billion-laughs shape with 3 levels (8 leaves) is a harmless attribute or constant.
    let pkl = make::module_pickle(make::PT_CLASS, |p| {
        p.str("w").tensor("0", 4, 0, &[1, 4], &[4, 1]);
        p.str("lol");
        make::laughs(p, 3);
    });
    let code = make::module_code("lol = self.lol\nw = self.w\nreturn torch.add(x, w)");
    let small = put(t.path(), "laughs3.pt", &make::torchscript(&pkl, make::NO_CONSTANTS, Code::Text(code), &[("0", vec![0; 16])]));
    p.add("3-level laughs attribute .pt", success(&convert_pt(&small, &t.path().join("Laughs.mlpackage"), PT_INPUT, &[])).1);
    let mut constant = make::Pickle::new();
    make::laughs(&mut constant, 3);
    constant.op(0x85).op(b'.');
    let plain = make::module_pickle(make::PT_CLASS, |p| {
        p.str("w").tensor("0", 4, 0, &[1, 4], &[4, 1]);
    });
    let code = make::module_code("lol = CONSTANTS.c0\nw = self.w\nreturn torch.add(x, w)");
    let small = put(t.path(), "laughs3c.pt", &make::torchscript(&plain, &constant.0, Code::Text(code), &[("0", vec![0; 16])]));
    p.add("3-level laughs constant .pt", success(&convert_pt(&small, &t.path().join("LaughsC.mlpackage"), PT_INPUT, &[])).1);
    let bert = bert_folder(t.path(), "bert");
    p.add("tiny BERT", success(&convert_bert(&bert, &t.path().join("Bert.mlpackage"), &[])).1);
    let pkg = root().join("fixtures/coremltools/out/mlp_ios15_fp32.mlpackage");
    let inputs = put(t.path(), "in.npz", &make::npz(&[("x", make::npy_f32(&[2, 16], &[0.25; 32]))]));
    let (r, found) = success(&["validate".as_ref(), pkg.as_os_str(), "--inputs".as_ref(), inputs.as_os_str(), "--against".as_ref(), pkg.as_os_str()]);
    p.add("generated npz", found);
    check(&mut p, "generated npz", r.stdout().contains("var_14"), "the report names output var_14");
    p.assert_none();
}

/// The deflate bomb inflates to exactly the size it declares (checked here on 4 MiB).
#[test]
fn bomb_generator_inflates_to_its_declared_size() {
    let e = make::deflate_bomb("x", b"head", 4);
    assert!(e.data.len() < 64 * 1024, "{} bytes of deflate", e.data.len());
    let out = miniz_oxide::inflate::decompress_to_vec(&e.data).unwrap();
    assert_eq!(out.len() as u64, u64::from(e.size));
    assert!(out.starts_with(b"head") && out[4..].iter().all(|&b| b == 0));
}

// ---- data loss: `-o` onto data we did not write ---------------------------------------------

/// (a) `-o` is the input folder itself: refused, with or without `--force`; the folder survives.
#[test]
fn data_loss_output_is_the_input_folder() {
    let t = tempfile::tempdir().unwrap();
    let bert = bert_folder(t.path(), "bert");
    put(&bert, "README.md", b"my notes about this checkpoint\n");
    let mut p = Problems::default();
    for force in [&[][..], &["--force"][..]] {
        p.add(&format!("-o input folder {force:?}"), refusal(&convert_bert(&bert, &bert, force), &["bert"], &[t.path()], MAX_ERROR_LINE));
    }
    p.assert_none();
}

/// (b) `-o` is the parent of the input folder, which holds sibling models: refused, with or
/// without `--force`; every sibling survives.
#[test]
fn data_loss_output_is_the_parent_of_the_input_folder() {
    let t = tempfile::tempdir().unwrap();
    let models = t.path().join("models");
    let bert = bert_folder(&models, "bert");
    bert_folder(&models, "other-bert");
    put(&models, "inventory.txt", b"bert, other-bert\n");
    let mut p = Problems::default();
    for force in [&[][..], &["--force"][..]] {
        p.add(&format!("-o parent folder {force:?}"), refusal(&convert_bert(&bert, &models, force), &["models"], &[t.path()], MAX_ERROR_LINE));
    }
    p.assert_none();
}

/// (c) `-o` is an existing regular file: refused without `--force`; `--force` replaces it.
#[test]
fn data_loss_output_is_a_regular_file() {
    let t = tempfile::tempdir().unwrap();
    let bert = bert_folder(t.path(), "bert");
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let target = put(&out, "Model.mlpackage", b"a user's file that happens to have this name\n");
    let mut p = Problems::default();
    p.add("-o regular file", refusal(&convert_bert(&bert, &target, &[]), &["Model.mlpackage"], &[t.path()], MAX_ERROR_LINE));
    p.add("-o regular file --force", success(&convert_bert(&bert, &target, &["--force"])).1);
    check(&mut p, "-o regular file --force", target.join("Manifest.json").is_file(), "a package in place of the file");
    check(&mut p, "-o regular file --force", hidden_entries(&out).is_empty(), "nothing hidden left beside -o");
    p.assert_none();
}

/// (d) `-o` is an unrelated directory with user files: refused without `--force`; `--force`
/// replaces it whole with the output.
#[test]
fn data_loss_output_is_an_unrelated_directory() {
    let t = tempfile::tempdir().unwrap();
    let bert = bert_folder(t.path(), "bert");
    let out = t.path().join("out");
    let mine = out.join("photos");
    std::fs::create_dir_all(mine.join("2024")).unwrap();
    put(&mine, "a.jpg", b"\xff\xd8\xff not really a jpeg");
    put(&mine.join("2024"), "b.jpg", b"\xff\xd8\xff another");
    let mut p = Problems::default();
    p.add("-o unrelated dir", refusal(&convert_bert(&bert, &mine, &[]), &["photos"], &[t.path()], MAX_ERROR_LINE));
    p.add("-o unrelated dir --force", success(&convert_bert(&bert, &mine, &["--force"])).1);
    check(&mut p, "-o unrelated dir --force", !mine.join("a.jpg").exists() && !mine.join("2024").exists(), "the directory replaced whole");
    let packages = std::fs::read_dir(&mine).map_or(0, |d| d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".mlpackage")).count());
    check(&mut p, "-o unrelated dir --force", packages == 1, "one package in the replaced directory");
    check(&mut p, "-o unrelated dir --force", hidden_entries(&out).is_empty(), "nothing hidden left beside -o");
    p.assert_none();
}

/// (e) `-o` is a package coremltools wrote: refused without `--force`; `--force` replaces it.
#[test]
fn data_loss_output_is_a_foreign_package() {
    let t = tempfile::tempdir().unwrap();
    let bert = bert_folder(t.path(), "bert");
    let out = t.path().join("out");
    let foreign = out.join("Foreign.mlpackage");
    copy_tree(&root().join("fixtures/coremltools/out/mlp_ios16_fp16.mlpackage"), &foreign);
    let spec = || std::fs::read(foreign.join("Data/com.apple.CoreML/model.mlmodel")).unwrap_or_default();
    let foreign_spec = spec();
    let mut p = Problems::default();
    p.add("-o coremltools package", refusal(&convert_bert(&bert, &foreign, &[]), &["Foreign.mlpackage"], &[t.path()], MAX_ERROR_LINE));
    p.add("-o coremltools package --force", success(&convert_bert(&bert, &foreign, &["--force"])).1);
    check(&mut p, "-o coremltools package --force", spec() != foreign_spec && foreign.join("Manifest.json").is_file(), "our package in place of the foreign one");
    check(&mut p, "-o coremltools package --force", hidden_entries(&out).is_empty(), "nothing hidden left beside -o");
    p.assert_none();
}

/// A package we wrote is ours to replace: the second convert to the same `-o` needs no `--force`
/// and leaves nothing beside it.
#[test]
fn our_own_package_is_replaced_without_force() {
    let t = tempfile::tempdir().unwrap();
    let bert = bert_folder(t.path(), "bert");
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let pkg = out.join("Model.mlpackage");
    let mut p = Problems::default();
    p.add("first convert", success(&convert_bert(&bert, &pkg, &[])).1);
    p.add("second convert over our own package", success(&convert_bert(&bert, &pkg, &[])).1);
    let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    check(&mut p, "second convert", names == ["Model.mlpackage"], "only the package beside -o");
    p.assert_none();
}

/// `-o` equal to the `.pt` being converted, or to its folder: refused even with `--force`. The
/// names ending in `.mlpackage` get past the extension check, which is what keeps the plain
/// `models/mlp.pt` variants safe by accident.
#[test]
fn data_loss_output_is_the_pt_input_or_its_parent() {
    let t = tempfile::tempdir().unwrap();
    let fixture = root().join("fixtures/torchscript/mlp.pt");
    let models = t.path().join("models");
    let exported = t.path().join("Exported.mlpackage");
    for dir in [&models, &exported] {
        std::fs::create_dir(dir).unwrap();
        std::fs::copy(&fixture, dir.join("mlp.pt")).unwrap();
        put(dir, "train.py", b"# the script that made mlp.pt\n");
    }
    let named_like_a_package = t.path().join("mlp.mlpackage");
    std::fs::copy(&fixture, &named_like_a_package).unwrap();
    let cases = [
        ("-o the .pt", models.join("mlp.pt"), models.join("mlp.pt"), "mlp.pt"),
        ("-o the .pt's folder", models.join("mlp.pt"), models.clone(), "models"),
        ("-o the .pt's folder named .mlpackage", exported.join("mlp.pt"), exported.clone(), "Exported.mlpackage"),
        ("-o the .pt named .mlpackage", named_like_a_package.clone(), named_like_a_package.clone(), "mlp.mlpackage"),
    ];
    let mut p = Problems::default();
    for force in [&[][..], &["--force"][..]] {
        for (case, pt, out, mention) in &cases {
            p.add(&format!("{case} {force:?}"), refusal(&convert_pt(pt, out, MLP_PT_INPUT, force), &[mention], &[t.path()], MAX_ERROR_LINE));
        }
    }
    p.assert_none();
}

// ---- memory bombs ----------------------------------------------------------------------------

/// Gigabytes a zip bomb inflates to (3 GiB: from about 3 MiB of deflate).
const BOMB_MIB: u32 = 3 << 10;

/// A `.pt` whose code entry is 3 MiB of deflate declaring (and inflating to) 3 GiB.
#[test]
fn bomb_zip_entry_in_pt() {
    let t = tempfile::tempdir().unwrap();
    let pkl = make::module_pickle(make::PT_CLASS, |p| {
        p.str("w").tensor("0", 4, 0, &[1, 4], &[4, 1]);
    });
    let code = make::module_code("w = self.w\nreturn torch.add(x, w)");
    let bomb = make::deflate_bomb(&format!("{}/code/__torch__.py", make::PT_FOLDER), code.as_bytes(), BOMB_MIB);
    let pt = put(t.path(), "bomb.pt", &make::torchscript(&pkl, make::NO_CONSTANTS, Code::Entry(bomb), &[("0", vec![0; 16])]));
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    refused("zip bomb .pt", &convert_pt(&pt, &out.join("M.mlpackage"), PT_INPUT, &[]), &["bomb.pt"], &[t.path()]);
}

/// An `.npz` whose one array is a valid `.npy` header followed by 3 GiB of zeros, from 3 MiB.
fn npz_bomb(dir: &Path, name: &str, array: &str, shape_prefix: &[u64]) -> PathBuf {
    let elements = u64::from(BOMB_MIB) * (1 << 20) / 4 / shape_prefix.iter().product::<u64>();
    let mut shape = shape_prefix.to_vec();
    shape.push(elements);
    let header = make::npy_header("<f4", &shape);
    let entry = make::deflate_bomb(&format!("{array}.npy"), &header, BOMB_MIB);
    put(dir, name, &make::zip(&[entry]))
}

/// `validate --inputs` with a zip-bomb `.npz`.
#[test]
fn bomb_zip_entry_in_npz_inputs() {
    let t = tempfile::tempdir().unwrap();
    let npz = npz_bomb(t.path(), "bomb.npz", "x", &[2]);
    let pkg = root().join("fixtures/coremltools/out/mlp_ios15_fp32.mlpackage");
    let args: [&OsStr; 6] = ["validate".as_ref(), pkg.as_os_str(), "--inputs".as_ref(), npz.as_os_str(), "--against".as_ref(), pkg.as_os_str()];
    refused("zip bomb --inputs", &args, &["bomb.npz"], &[t.path()]);
}

/// `convert --example` with a zip-bomb `.npz`.
#[test]
fn bomb_zip_entry_in_npz_example() {
    let t = tempfile::tempdir().unwrap();
    let npz = npz_bomb(t.path(), "bomb.npz", "x", &[1]);
    let pt = put(t.path(), "plain.pt", &make::plain_pt());
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let pkg = out.join("M.mlpackage");
    let args: [&OsStr; 6] = ["convert".as_ref(), pt.as_os_str(), "-o".as_ref(), pkg.as_os_str(), "--example".as_ref(), npz.as_os_str()];
    refused("zip bomb --example", &args, &["bomb.npz"], &[t.path()]);
}

/// Levels of the pickle billion laughs: 2^40 leaves from about 400 bytes.
const LAUGH_LEVELS: u32 = 40;

/// A 400-byte pickle whose value is a tuple tree of 2^40 leaves sharing memo slots, read by
/// forward both as a module attribute (`self.lol`, in data.pkl) and as a constant
/// (`CONSTANTS.c0`, in constants.pkl), through `convert` and `lint-ane`. Sharing it or refusing
/// it are both right; expanding it is not.
#[test]
fn bomb_pickle_billion_laughs() {
    let t = tempfile::tempdir().unwrap();
    let attribute = make::module_pickle(make::PT_CLASS, |p| {
        p.str("w").tensor("0", 4, 0, &[1, 4], &[4, 1]);
        p.str("lol");
        make::laughs(p, LAUGH_LEVELS);
    });
    let mut constant = make::Pickle::new();
    make::laughs(&mut constant, LAUGH_LEVELS);
    constant.op(0x85).op(b'.');
    assert!(attribute.len() < 700 && constant.0.len() < 700, "{} and {} bytes", attribute.len(), constant.0.len());
    let plain = make::module_pickle(make::PT_CLASS, |p| {
        p.str("w").tensor("0", 4, 0, &[1, 4], &[4, 1]);
    });
    let storages = [("0", vec![0u8; 16])];
    let files = [
        ("laughs_attribute.pt", make::torchscript(&attribute, make::NO_CONSTANTS, Code::Text(make::module_code("lol = self.lol\nw = self.w\nreturn torch.add(x, w)")), &storages)),
        ("laughs_constant.pt", make::torchscript(&plain, &constant.0, Code::Text(make::module_code("lol = CONSTANTS.c0\nw = self.w\nreturn torch.add(x, w)")), &storages)),
    ];
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut p = Problems::default();
    for (file, bytes) in &files {
        let pt = put(t.path(), file, bytes);
        let pkg = out.join(format!("{file}.mlpackage"));
        p.add(&format!("{file} convert"), bounded(&convert_pt(&pt, &pkg, PT_INPUT, &[]), Some(&pkg), &[file], &[&out]));
        let lint: [&OsStr; 4] = ["lint-ane".as_ref(), pt.as_os_str(), "--input".as_ref(), PT_INPUT.as_ref()];
        p.add(&format!("{file} lint-ane"), bounded(&lint, None, &[file], &[t.path()]));
    }
    p.assert_none();
}

/// A tensor `w` viewing a one-element storage as [10^6, 10^6] with strides [0, 0]: 10^12
/// elements claimed, 4 bytes stored.
#[test]
fn bomb_stride_zero_view() {
    let t = tempfile::tempdir().unwrap();
    let pkl = make::module_pickle(make::PT_CLASS, |p| {
        p.str("w").tensor("0", 1, 0, &[1_000_000, 1_000_000], &[0, 0]);
    });
    let code = make::module_code("w = self.w\nreturn torch.add(x, w)");
    let pt = put(t.path(), "stride0.pt", &make::torchscript(&pkl, make::NO_CONSTANTS, Code::Text(code), &[("0", vec![0; 4])]));
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    refused("stride-0 view", &convert_pt(&pt, &out.join("M.mlpackage"), PT_INPUT, &[]), &["stride0.pt"], &[t.path()]);
}

/// A BERT folder whose config.json sets `key` to `value`.
fn bert_with_config(parent: &Path, key: &str, value: u64) -> PathBuf {
    let dir = bert_folder(parent, "bert");
    let mut config = make::bert_config();
    config[key] = serde_json::json!(value);
    put(&dir, "config.json", config.to_string().as_bytes());
    dir
}

/// config.json with `num_hidden_layers` 10^9 and 2^63: one line naming config.json and the key.
#[test]
fn bomb_config_num_hidden_layers() {
    let mut p = Problems::default();
    for (case, value) in [("1e9", 1_000_000_000), ("2^63", 1u64 << 63)] {
        let t = tempfile::tempdir().unwrap();
        let bert = bert_with_config(t.path(), "num_hidden_layers", value);
        let out = t.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let args = convert_bert(&bert, &out.join("M.mlpackage"), &[]);
        p.add(&format!("num_hidden_layers {case}"), refusal(&args, &["config.json", "num_hidden_layers"], &[t.path()], MAX_ERROR_LINE));
    }
    p.assert_none();
}

/// A Whisper config.json with `num_mel_bins` 10^6 (the mel filterbank alone would be 800 MB).
#[test]
fn bomb_config_num_mel_bins() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("whisper");
    std::fs::create_dir(&dir).unwrap();
    let mut config = make::whisper_config();
    config["num_mel_bins"] = serde_json::json!(1_000_000);
    put(&dir, "config.json", config.to_string().as_bytes());
    make::write_safetensors(&dir.join("model.safetensors"), &[("model.encoder.conv1.weight".to_string(), vec![8, 80, 3])]);
    let out = t.path().join("out");
    let args: [&OsStr; 4] = ["convert".as_ref(), dir.as_os_str(), "-o".as_ref(), out.as_os_str()];
    refused("num_mel_bins 1e6", &args, &["config.json", "num_mel_bins"], &[t.path()]);
}

/// A coremltools package whose input is [65536, 65536, 65536] fp32 (1 PiB), all types consistent.
#[test]
fn bomb_package_huge_dims_per_op() {
    let pkg = root().join("fixtures/hostile/huge_dims.mlpackage");
    refused("huge dims --per-op", &["validate".as_ref(), pkg.as_os_str(), "--per-op".as_ref()], &["huge_dims.mlpackage"], &[&pkg]);
}

// ---- panics: wrapping element counts in TorchScript code -------------------------------------

/// Converts a `.pt` whose forward is `body`: one error line naming the `.pt`, never a panic
/// (exit 101) or an abort.
fn wrapping_count_is_refused(op: &str, body: &str) {
    let t = tempfile::tempdir().unwrap();
    let file = format!("{op}.pt");
    let pt = put(t.path(), &file, &make::pt_with_code(body));
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    refused(op, &convert_pt(&pt, &out.join("M.mlpackage"), PT_INPUT, &[]), &[&file], &[t.path()]);
}

/// `expand` to [2^32, 2^32, 4]: the element count wraps past 2^64.
#[test]
fn panic_expand_wrapping_count() {
    wrapping_count_is_refused("expand", "_0 = torch.expand(x, [4294967296, 4294967296, 4])\nreturn _0");
}

/// `new_ones` of [2^32, 2^32]: the element count wraps to 0.
#[test]
fn panic_new_ones_wrapping_count() {
    wrapping_count_is_refused(
        "new_ones",
        "_0 = torch.new_ones(x, [4294967296, 4294967296], dtype=None, layout=None, device=torch.device(\"cpu\"), pin_memory=False)\nreturn torch.add(x, _0)",
    );
}

/// `arange(0., 1e400)`: the end is infinite, so the length is too.
#[test]
fn panic_arange_infinite_length() {
    wrapping_count_is_refused(
        "arange",
        "_0 = torch.arange(0., 1e400, dtype=None, layout=None, device=torch.device(\"cpu\"), pin_memory=False)\nreturn torch.add(x, _0)",
    );
}

// ---- false passes ----------------------------------------------------------------------------

/// What is wrong with a run that must not pass: it must exit 1 (a failed check) or 2 (one error
/// line), within the bounds, and never print the words of a pass.
fn not_passing(r: &Run) -> Vec<String> {
    let mut problems = r.bound_problems();
    match r.code {
        Some(1) => {}
        Some(2) => problems.extend(r.one_line_problems(&[], MAX_ERROR_LINE)),
        _ => problems.push(format!("ended with {}, expected exit 1 or 2; stdout: {}; stderr: {}", r.ending(), excerpt(&r.stdout()), excerpt(&r.stderr()))),
    }
    if r.stdout().contains("within tolerance") && !r.stdout().contains("not within") {
        problems.push(format!("reports a pass: {}", excerpt(&r.stdout())));
    }
    problems
}

/// `validate --expected` with all-NaN expected outputs must not pass.
#[test]
fn false_pass_all_nan_expected() {
    let t = tempfile::tempdir().unwrap();
    let pkg = root().join("fixtures/coremltools/out/mlp_ios15_fp32.mlpackage");
    let inputs = root().join("fixtures/coremltools/out/mlp.inputs.npz");
    let expected = put(t.path(), "nan.npz", &make::npz(&[("var_14", make::npy_f32(&[2, 8], &[f32::NAN; 16]))]));
    let mut p = Problems::default();
    for format in ["text", "json"] {
        let case = format!("all-NaN expected ({format})");
        let r = run(&["validate".as_ref(), pkg.as_os_str(), "--inputs".as_ref(), inputs.as_os_str(), "--expected".as_ref(), expected.as_os_str(), "--format".as_ref(), format.as_ref()]);
        p.add(&case, not_passing(&r));
        if format == "json" && r.code == Some(1) {
            let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap_or_default();
            check(&mut p, &case, report["pass"] == false, "the JSON report says \"pass\": false");
        }
    }
    p.assert_none();
}

/// A package whose dims [2^32, 2^32] wrap to zero elements must not be "all within tolerance".
#[test]
fn false_pass_dims_wrap_to_zero() {
    let pkg = root().join("fixtures/hostile/wrap_dims.mlpackage");
    let mut p = Problems::default();
    p.add("wrapping dims --against", not_passing(&run(&["validate".as_ref(), pkg.as_os_str(), "--against".as_ref(), pkg.as_os_str()])));
    p.add("wrapping dims --per-op", not_passing(&run(&["validate".as_ref(), pkg.as_os_str(), "--per-op".as_ref()])));
    p.assert_none();
}

// ---- hangs -----------------------------------------------------------------------------------

/// A copy of a coremltools package with `file` (relative to the package) replaced by a FIFO.
fn package_with_fifo(dir: &Path, file: &str) -> PathBuf {
    let pkg = dir.join("Fifo.mlpackage");
    copy_tree(&root().join("fixtures/coremltools/out/mlp_ios15_fp32.mlpackage"), &pkg);
    let path = pkg.join(file);
    std::fs::remove_file(&path).unwrap();
    mkfifo(&path);
    pkg
}

/// `inspect` of a package whose weight.bin is a FIFO: one error, no hang.
#[test]
fn hang_fifo_weight_bin() {
    let t = tempfile::tempdir().unwrap();
    let pkg = package_with_fifo(t.path(), "Data/com.apple.CoreML/weights/weight.bin");
    refused("FIFO weight.bin", &["inspect".as_ref(), pkg.as_os_str()], &["weight.bin"], &[t.path()]);
}

/// `inspect` of a package whose Manifest.json is a FIFO: one error, no hang.
#[test]
fn hang_fifo_manifest() {
    let t = tempfile::tempdir().unwrap();
    let pkg = package_with_fifo(t.path(), "Manifest.json");
    refused("FIFO Manifest.json", &["inspect".as_ref(), pkg.as_os_str()], &["Manifest.json"], &[t.path()]);
}

/// `convert` of a FIFO named model.pt, and of a BERT folder whose model.safetensors is a FIFO.
#[test]
fn hang_fifo_model() {
    let t = tempfile::tempdir().unwrap();
    let pt = t.path().join("model.pt");
    mkfifo(&pt);
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut p = Problems::default();
    p.add("FIFO model.pt", refusal(&convert_pt(&pt, &out.join("M.mlpackage"), PT_INPUT, &[]), &["model.pt"], &[t.path()], MAX_ERROR_LINE));
    let bert = bert_folder(t.path(), "bert");
    std::fs::remove_file(bert.join("model.safetensors")).unwrap();
    mkfifo(&bert.join("model.safetensors"));
    p.add("FIFO model.safetensors", refusal(&convert_bert(&bert, &out.join("B.mlpackage"), &[]), &["model.safetensors"], &[t.path()], MAX_ERROR_LINE));
    p.assert_none();
}

/// Statements in the long TorchScript forward.
const LONG_FORWARD_STATEMENTS: usize = 200_000;

/// A forward of 200k statements finishes (converted or refused) within the bounds.
#[test]
fn hang_200k_statements() {
    let t = tempfile::tempdir().unwrap();
    let mut body = String::from("w = self.w\n_0 = torch.add(x, w)\n");
    for k in 1..LONG_FORWARD_STATEMENTS {
        body += &format!("_{k} = torch.relu(_{})\n", k - 1);
    }
    body += &format!("return _{}", LONG_FORWARD_STATEMENTS - 1);
    let pt = put(t.path(), "long.pt", &make::pt_with_code(&body));
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let pkg = out.join("M.mlpackage");
    let mut p = Problems::default();
    p.add("200k statements", bounded(&convert_pt(&pt, &pkg, PT_INPUT, &[]), Some(&pkg.join("Manifest.json")), &["long.pt"], &[&out]));
    p.assert_none();
}

/// A WAV at 1 Hz given to speech validation: refused (or read) within the bounds, not resampled
/// for an hour. Speech validation exists only with the `torch` feature, and it reads every WAV
/// before it opens the packages, so three empty package folders are enough to reach the reader.
#[cfg(feature = "torch")]
#[test]
fn hang_wav_sample_rate_1() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("whisper-out");
    for p in ["MelSpectrogram", "AudioEncoder", "TextDecoder"] {
        std::fs::create_dir_all(out.join(format!("{p}.mlpackage"))).unwrap();
    }
    let hf = t.path().join("whisper-hf");
    std::fs::create_dir(&hf).unwrap();
    let samples: Vec<i16> = (0..16_000).map(|k| ((k % 64) as i16 - 32) * 512).collect();
    let wav = put(t.path(), "slow.wav", &make::wav_i16(1, &samples));
    let args: [&OsStr; 6] = ["validate".as_ref(), out.as_os_str(), "--reference".as_ref(), hf.as_os_str(), "--audio".as_ref(), wav.as_os_str()];
    refused("WAV at 1 Hz", &args, &["slow.wav"], &[t.path()]);
}

// ---- content crossing boundaries -------------------------------------------------------------

/// A sharded BERT folder whose index maps every tensor to `shard` (a path read from the file).
fn bert_with_index(parent: &Path, shard: &str) -> PathBuf {
    let dir = bert_folder(parent, "bert");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = make::bert_tensors().into_iter().map(|(n, _)| (n, serde_json::json!(shard))).collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    put(&dir, "model.safetensors.index.json", index.to_string().as_bytes());
    dir
}

/// model.safetensors.index.json naming `../outside.safetensors` or an absolute path: refused,
/// although the named file is a valid shard.
#[test]
fn index_json_points_outside_the_folder() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside.safetensors");
    make::write_safetensors(&outside, &make::bert_tensors());
    let absolute = outside.to_string_lossy().into_owned();
    let mut p = Problems::default();
    // Each folder is t/<case>/bert, so `../../` reaches t/outside.safetensors.
    for shard in ["../../outside.safetensors", absolute.as_str()] {
        let case = tempfile::tempdir_in(t.path()).unwrap();
        let bert = bert_with_index(case.path(), shard);
        assert!(bert.join(shard).is_file(), "the index names a real shard");
        let out = case.path().join("out");
        std::fs::create_dir(&out).unwrap();
        p.add(&format!("index → {shard}"), refusal(&convert_bert(&bert, &out.join("M.mlpackage"), &[]), &["outside.safetensors"], &[t.path()], MAX_ERROR_LINE));
    }
    p.assert_none();
}

/// Bytes only the file outside the folder holds.
const SECRET: &[u8] = b"SECRET-7f3a9c: not for the output";

/// A tokenizer.json symlinked to a file outside the folder: refused, and its bytes appear nowhere
/// under the output's parent.
#[test]
fn symlinked_tokenizer_is_not_copied() {
    let t = tempfile::tempdir().unwrap();
    let secret = put(t.path(), "secret.json", SECRET);
    let bert = bert_folder(t.path(), "bert");
    std::os::unix::fs::symlink(&secret, bert.join("tokenizer.json")).unwrap();
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut p = Problems::default();
    p.add("symlinked tokenizer.json", refusal(&convert_bert(&bert, &out.join("bert-coreml"), &[]), &["tokenizer.json"], &[t.path()], MAX_ERROR_LINE));
    let leaked: Vec<String> = snapshot(&out)
        .into_iter()
        .filter(|(_, n)| matches!(n, Node::File(b) if b.windows(SECRET.len()).any(|w| w == SECRET)))
        .map(|(p, _)| format!("the outside file's bytes were copied to {}", p.display()))
        .collect();
    p.add("symlinked tokenizer.json", leaked);
    p.assert_none();
}

/// Text with a terminal escape (clear screen, red) and line breaks.
const ESCAPES: &str = "\u{1b}[2J\u{1b}[31mFAKE\r\ntorch2coreml: ok\n";

/// An unknown `model_type` holding escapes and newlines: one line, no ESC.
#[test]
fn escapes_in_model_type() {
    let t = tempfile::tempdir().unwrap();
    let bert = bert_folder(t.path(), "bert");
    let mut config = make::bert_config();
    config["model_type"] = serde_json::json!(ESCAPES);
    put(&bert, "config.json", config.to_string().as_bytes());
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    refused("escapes in model_type", &convert_bert(&bert, &out.join("M.mlpackage"), &[]), &["config.json"], &[t.path()]);
}

/// An unexpected tensor whose name holds escapes and newlines: one line, no ESC.
#[test]
fn escapes_in_tensor_name() {
    let t = tempfile::tempdir().unwrap();
    let bert = bert_folder(t.path(), "bert");
    let mut tensors = make::bert_tensors();
    tensors.push((format!("encoder.layer.1.{ESCAPES}"), vec![8]));
    make::write_safetensors(&bert.join("model.safetensors"), &tensors);
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    refused("escapes in a tensor name", &convert_bert(&bert, &out.join("M.mlpackage"), &[]), &["bert"], &[t.path()]);
}

/// A `.pt` whose file name holds escapes and a newline (and whose bytes are not a zip).
#[test]
fn escapes_in_file_name() {
    let t = tempfile::tempdir().unwrap();
    let pt = put(t.path(), "evil\u{1b}[31m\nname.pt", b"not a zip at all");
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    refused("escapes in the file name", &convert_pt(&pt, &out.join("M.mlpackage"), PT_INPUT, &[]), &["name.pt"], &[t.path()]);
}

/// Bytes of the megabyte `model_type`.
const HUGE_MODEL_TYPE_BYTES: usize = 10 << 20;

/// A 10 MB `model_type`: the error line stays short.
#[test]
fn huge_model_type() {
    let t = tempfile::tempdir().unwrap();
    let bert = bert_folder(t.path(), "bert");
    let mut config = make::bert_config();
    config["model_type"] = serde_json::json!("A".repeat(HUGE_MODEL_TYPE_BYTES));
    put(&bert, "config.json", config.to_string().as_bytes());
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut p = Problems::default();
    p.add("10 MB model_type", refusal(&convert_bert(&bert, &out.join("M.mlpackage"), &[]), &["config.json"], &[t.path()], MAX_QUOTING_LINE));
    p.assert_none();
}

// ---- torch.export archives (.pt2) ----------------------------------------------------------

/// `.pt2` archives with a bad zip, an unknown schema version, a missing or mis-shaped weight, a
/// weight path leaving its folder, a pickled weight, an input size computed from dynamic
/// dimensions or a dynamic dimension with an empty range: one line naming the
/// file and what is wrong, exit 2, nothing written. The well-formed one converts.
#[test]
fn issue_hostile_pt2_archives() {
    use serde_json::json;
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let pkg = out.join("M.mlpackage");
    let convert = |pt2: &Path| -> Vec<OsString> { vec!["convert".into(), pt2.into(), "-o".into(), pkg.clone().into()] };
    let mut p = Problems::default();
    let good = put(t.path(), "good.pt2", &make::pt2(|_, _| {}, make::pt2_weight()));
    p.add("well-formed", bounded(&convert(&good), Some(&pkg.join("Manifest.json")), &[], &[]));
    std::fs::remove_dir_all(&pkg).unwrap();
    let mut truncated = make::pt2(|_, _| {}, make::pt2_weight());
    truncated.truncate(truncated.len() / 2);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("truncated zip", truncated, &["bad.pt2"]),
        ("schema 9", make::pt2(|m, _| m["schema_version"]["major"] = json!(9), make::pt2_weight()), &["bad.pt2", "schema version 9.20", "8.x"]),
        ("short weight", make::pt2(|_, _| {}, make::pt2_weight()[..12].to_vec()), &["bad.pt2", "fc.weight", "holds 12 bytes", "needs 48"]),
        ("missing weight", make::pt2(|_, w| w["config"]["fc.weight"]["path_name"] = json!("weight_9"), make::pt2_weight()), &["bad.pt2", "weight_9", "missing"]),
        ("path leaves", make::pt2(|_, w| w["config"]["fc.weight"]["path_name"] = json!("../../etc/passwd"), make::pt2_weight()), &["bad.pt2", "leaves its folder"]),
        ("pickled", make::pt2(|_, w| w["config"]["fc.weight"]["use_pickle"] = json!(true), make::pt2_weight()), &["bad.pt2", "pickled"]),
        ("huge dims", make::pt2(|_, w| w["config"]["fc.weight"]["tensor_meta"]["sizes"] = json!([{"as_int": 1i64 << 40}, {"as_int": 1i64 << 40}]), make::pt2_weight()), &["bad.pt2", "fc.weight"]),
        ("computed dynamic size", make::pt2(|m, _| m["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0] = json!({"as_expr": {"expr_str": "2*s0"}}), make::pt2_weight()), &["bad.pt2", "`x`", "`2*s0` is an expression of dynamic dimensions"]),
        ("empty dynamic range", make::pt2(|m, _| {
            m["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0] = json!({"as_expr": {"expr_str": "s0"}});
            m["range_constraints"] = json!({"s0": {"min_val": 9, "max_val": 3}});
        }, make::pt2_weight()), &["bad.pt2", "`s0` has the empty range 9..3"]),
        ("unknown op", make::pt2(|m, _| m["graph_module"]["graph"]["nodes"][0]["target"] = json!("torch.ops.aten.kron.default"), make::pt2_weight()), &["bad.pt2", "aten::kron ×1", "model.py:7"]),
    ];
    for (what, bytes, mentions) in cases {
        let bad = put(t.path(), "bad.pt2", &bytes);
        p.add(what, bounded(&convert(&bad), None, mentions, &[&out]));
        if pkg.exists() {
            p.add(what, vec!["converted; expected a refusal".into()]);
            std::fs::remove_dir_all(&pkg).unwrap();
        }
    }
    p.assert_none();
}
