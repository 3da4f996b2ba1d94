//! A pinned Python tool, installed into its own virtual environment under
//! `target/` the first time a test needs it. An exclusive lock on
//! `target/NAME-venv.lock` keeps concurrent test processes from installing
//! twice; a marker file names the version installed, so a half-made
//! environment (an install that was killed) is started over. If the tool
//! cannot be installed the test fails, saying why: it is never skipped.
//!
//! Included by `#[path]` from `moto.rs` and from the server's
//! `crates/flotilla/tests/openapi.rs`: std only.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The workspace's `target/` directory.
pub fn target_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::create_dir_all(&dir).expect("create the target directory");
    dir.canonicalize().expect("resolve the target directory")
}

/// Runs `command`, failing the test with its output if it fails.
pub fn run(command: &mut Command, what: &str) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot {what}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "cannot {what}: {command:?} exited with {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `target/NAME-venv` with `requirement` (`moto[server]==5.2.5`) installed
/// and `check` (a command run with the environment's `bin/` programs, such
/// as `["python", "-c", "import moto.server"]`) passing.
pub fn installed(name: &str, requirement: &str, check: &[&str]) -> PathBuf {
    let target = target_dir();
    let venv = target.join(format!("{name}-venv"));
    let marker = venv.join(format!(".installed-{requirement}"));
    let lock_path = target.join(format!("{name}-venv.lock"));
    let lock = File::create(&lock_path).expect("create the install lock");
    lock.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", lock_path.display()));
    if marker.exists() {
        return venv;
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .unwrap_or_else(|e| panic!("remove an incomplete {}: {e}", venv.display()));
    }
    let started = Instant::now();
    eprintln!("installing {requirement} into {}", venv.display());
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        &format!("create the {name} virtual environment (python3 with its venv module is needed; on Debian: apt-get install python3-venv)"),
    );
    run(
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            requirement,
        ]),
        &format!(
            "install {requirement} into {} (PyPI must be reachable)",
            venv.display()
        ),
    );
    let (program, args) = check.split_first().expect("a check command");
    run(
        Command::new(venv.join("bin").join(program)).args(args),
        &format!("run {name} after installing it"),
    );
    std::fs::write(&marker, b"").expect("mark the install complete");
    eprintln!("installed {requirement} in {:.1?}", started.elapsed());
    venv
}
