//! The traced model zoo (`fixtures/zoo/make.py` builds it into `$T2C_ZOO`; `make setup` does),
//! shared by the test files that convert or read its models (`mod zoo_dir;`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The zoo directory: `$T2C_ZOO`, else `~/.cache/torch2coreml/zoo`; fails the test when missing.
pub fn zoo() -> PathBuf {
    let dir = std::env::var_os("T2C_ZOO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/torch2coreml/zoo"));
    assert!(dir.join("bert.pt").is_file(), "{} is missing: run `make setup` (make test does)", dir.display());
    dir
}

/// `convert ZOO/m.pt -o out --example ZOO/m.inputs.npz EXTRA…`; fails the test unless it succeeds.
#[allow(dead_code)] // not every file that reads the zoo converts from it
pub fn convert(m: &str, out: &Path, extra: &[&str]) {
    let zoo = zoo();
    let c = Command::new(env!("CARGO_BIN_EXE_torch2coreml"))
        .arg("convert")
        .arg(zoo.join(format!("{m}.pt")))
        .arg("-o")
        .arg(out)
        .arg("--example")
        .arg(zoo.join(format!("{m}.inputs.npz")))
        .args(extra)
        .output()
        .unwrap();
    assert!(c.status.success(), "{m}: convert: {}", String::from_utf8_lossy(&c.stderr));
}
