//! The CI-length fuzz pass (`make test`): every committed seed (`fuzz/corpus/<target>/*`) and
//! every saved crash (`fuzz/regressions/<target>/*`) runs through the same entry functions as the
//! libFuzzer targets (`fuzz/entries.rs`, included below), then a short deterministic mutation
//! pass (seeded xorshift: byte flips, interesting values, truncation, splices) runs a few thousand
//! inputs per target. Each input must end in an error that names the file, or in success, with
//! no panic and within [`MAX_INPUT_TIME`].
//!
//! Inputs listed in `fuzz/regressions/KNOWN.txt` are readers' bugs not yet fixed on this branch:
//! they run in a child process (a stack overflow or abort must not take this test down) and must
//! still fail there; once one passes, the test asks for its line to be removed, so the list
//! stays true. Run the long fuzzers with `make fuzz`.

#[path = "../fuzz/entries.rs"]
mod entries;

use std::collections::BTreeSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The promise for hostile input is an answer within 10 s; a debug build of the small fuzz
/// inputs is far below that.
const MAX_INPUT_TIME: Duration = Duration::from_secs(10);
/// A known failure may hang; its child process is killed after this long (and counts as failing).
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);
/// Mutated inputs per target in the CI pass: enough to reach each reader's error paths, few
/// enough that all targets together take well under 30 s in a debug build.
const MUTATIONS_PER_TARGET: u64 = 1000;
/// Mutations applied to a seed to make one input (1..=this), as libFuzzer stacks a few.
const MAX_STACKED_MUTATIONS: usize = 4;
/// Environment variable naming the one input (`<target>/<file>` under fuzz/) the child replays.
const CHILD_INPUT_VAR: &str = "T2C_FUZZ_REPLAY";
/// Lines of fuzz/regressions/KNOWN.txt: `<target>/<file>`, then optional `# note`.
const KNOWN_FILE: &str = "fuzz/regressions/KNOWN.txt";

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The `<target>/<file>` entries of KNOWN.txt.
fn known() -> BTreeSet<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(KNOWN_FILE)).unwrap_or_default();
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The files of `fuzz/<kind>/<target>/`, sorted (an absent folder has none).
fn files(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else { return Vec::new() };
    let mut out: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

/// The entry function of a target.
fn entry(target: &str) -> fn(&[u8]) {
    entries::TARGETS.iter().find(|(name, _)| *name == target).unwrap_or_else(|| panic!("no fuzz target `{target}`")).1
}

/// Runs one input; `Err` holds the panic message or the time it took past [`MAX_INPUT_TIME`].
fn run(run: fn(&[u8]), data: &[u8]) -> Result<(), String> {
    let start = Instant::now();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| run(data)));
    let took = start.elapsed();
    match outcome {
        Err(payload) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())),
        Ok(()) if took > MAX_INPUT_TIME => Err(format!("took {took:?}")),
        Ok(()) => Ok(()),
    }
}

#[test]
fn every_target_has_seeds() {
    for (target, _) in entries::TARGETS {
        assert!(!files("corpus", target).is_empty(), "fuzz/corpus/{target}/ has no seeds");
        assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fuzz/fuzz_targets/{target}.rs")).is_file(), "fuzz target {target} has no binary");
    }
}

#[test]
fn known_entries_exist() {
    for name in known() {
        assert!(fuzz_dir().join("regressions").join(&name).is_file(), "{KNOWN_FILE} lists {name}, which is not in fuzz/regressions/");
    }
}

#[test]
fn seeds_and_regressions_replay_cleanly() {
    let known = known();
    let mut failures = Vec::new();
    let mut count = 0;
    for (target, f) in entries::TARGETS {
        for kind in ["corpus", "regressions"] {
            for path in files(kind, target) {
                let name = format!("{target}/{}", path.file_name().unwrap().to_string_lossy());
                if kind == "regressions" && known.contains(&name) {
                    continue; // replayed in a child by known_failures_still_fail
                }
                count += 1;
                if let Err(message) = run(*f, &std::fs::read(&path).unwrap()) {
                    failures.push(format!("fuzz/{kind}/{name}: {message}"));
                }
            }
        }
    }
    assert!(count > 0);
    assert!(failures.is_empty(), "{} of {count} inputs failed:\n{}", failures.len(), failures.join("\n"));
}

/// Replays the input named by [`CHILD_INPUT_VAR`]: the child side of `known_failures_still_fail`
/// (it panics, aborts or hangs exactly as the reader does). Without the variable, as in a plain
/// `cargo test`, there is nothing to replay and it returns at once.
#[test]
fn child_replays_one_input() {
    let Ok(name) = std::env::var(CHILD_INPUT_VAR) else { return };
    let target = name.split('/').next().unwrap_or_default();
    let data = std::fs::read(fuzz_dir().join("regressions").join(&name)).unwrap();
    if let Err(message) = run(entry(target), &data) {
        panic!("{name}: {message}");
    }
}

#[test]
fn known_failures_still_fail() {
    let mut fixed = Vec::new();
    for name in known() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_replays_one_input", "--include-ignored", "--test-threads=1"])
            .env(CHILD_INPUT_VAR, &name)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let passed = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.success();
            }
            if start.elapsed() > CHILD_TIMEOUT {
                child.kill().unwrap();
                child.wait().unwrap();
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if passed {
            fixed.push(name);
        } else {
            eprintln!("known fuzz failure still fails: fuzz/regressions/{name}");
        }
    }
    assert!(fixed.is_empty(), "these now pass; remove their lines from {KNOWN_FILE}: {}", fixed.join(", "));
}

#[test]
fn split_parts_inverts_join_parts() {
    let parts: [&[u8]; 3] = [b"{}", b"", b"weights"];
    assert_eq!(entries::split_parts(&entries::join_parts(&parts)), parts);
    assert_eq!(entries::split_parts(b"one"), [b"one"]);
}

/// Marsaglia's xorshift64: a fixed sequence, so every run mutates the same way.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Values that sit on the edges readers check: zero, sign bits, all ones, wrapping sizes.
const INTERESTING: &[u64] = &[0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 0x8000_0000_0000_0000, u64::MAX];

/// One mutation of `data` (another seed, `other`, is the splice source).
fn mutate(rng: &mut XorShift, data: &mut Vec<u8>, other: &[u8]) {
    if data.is_empty() {
        data.push(rng.next() as u8);
        return;
    }
    let at = rng.below(data.len());
    match rng.below(7) {
        0 => data[at] ^= 1 << rng.below(8),
        1 => data[at] = rng.next() as u8,
        2 => {
            let value = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
            let width = [1, 2, 4, 8][rng.below(4)].min(data.len() - at);
            data[at..at + width].copy_from_slice(&value[..width]);
        }
        3 => data.truncate(at),
        4 => {
            let end = (at + 1 + rng.below(64)).min(data.len());
            data.drain(at..end);
        }
        5 if !other.is_empty() => {
            let from = rng.below(other.len());
            let end = (from + 1 + rng.below(256)).min(other.len());
            data.splice(at..at, other[from..end].iter().copied());
        }
        _ => {
            let end = (at + 1 + rng.below(32)).min(data.len());
            let chunk = data[at..end].to_vec();
            data.splice(at..at, chunk);
        }
    }
}

#[test]
fn mutated_seeds_fail_cleanly() {
    let known: Vec<Vec<u8>> =
        known().iter().map(|name| std::fs::read(fuzz_dir().join("regressions").join(name)).unwrap()).collect();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let mut failures = Vec::new();
    let start = Instant::now();
    for (t, (target, f)) in entries::TARGETS.iter().enumerate() {
        let target_start = Instant::now();
        let seeds: Vec<Vec<u8>> = files("corpus", target).iter().map(|p| std::fs::read(p).unwrap()).collect();
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
        for i in 0..MUTATIONS_PER_TARGET {
            let mut data = seeds[rng.below(seeds.len())].clone();
            let other = &seeds[rng.below(seeds.len())];
            for _ in 0..1 + rng.below(MAX_STACKED_MUTATIONS) {
                mutate(&mut rng, &mut data, other);
            }
            if known.contains(&data) {
                continue; // a saved regression, replayed in a child by known_failures_still_fail
            }
            if let Err(message) = run(*f, &data) {
                std::fs::create_dir_all(&out).unwrap();
                let saved = out.join(format!("{target}-{i}"));
                std::fs::write(&saved, &data).unwrap();
                failures.push(format!("{target} mutation {i} (saved as {}): {message}", saved.display()));
            }
        }
        eprintln!("mutation pass: {target}: {MUTATIONS_PER_TARGET} inputs in {:?}", target_start.elapsed());
    }
    eprintln!("mutation pass: all targets in {:?}", start.elapsed());
    assert!(
        failures.is_empty(),
        "{} mutated inputs failed; save each under fuzz/regressions/<target>/ (and list it in {KNOWN_FILE} until the reader is fixed):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
