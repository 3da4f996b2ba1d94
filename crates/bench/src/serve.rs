//! A real `flotilla serve` for the benchmarks that measure the binary from
//! outside (`takeover`, `local-jobs`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A running `flotilla serve`, killed (SIGKILL) and reaped when dropped.
pub struct Server {
    pub child: Child,
    /// Where it answers.
    pub url: String,
    /// Its directory: its log and data directory are in it.
    pub dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The flotilla binary: `given`, or the one beside this bench.
pub fn binary(given: Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(b) => Ok(b),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .join("flotilla")),
    }
}

/// Starts `bin serve` with `config` on a free loopback port, its data
/// directory under `dir` and `env` added, and waits until it serves.
pub fn start(bin: &Path, dir: &Path, config: &Path, env: &[(&str, &str)]) -> Result<Server> {
    std::fs::create_dir_all(dir)?;
    // Each start logs to its own file, so a restart is not fooled by the
    // last one's "serving" line.
    let log = dir.join(format!(
        "serve-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    let child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let mut server = Server {
        child,
        url: String::new(),
        dir: dir.to_owned(),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // Only a whole line: the log may be read half written.
        if let Some((line, _)) = text
            .split("flotilla serving on ")
            .nth(1)
            .and_then(|rest| rest.split_once('\n'))
        {
            server.url = line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            return Ok(server);
        }
        if let Some(status) = server.child.try_wait()? {
            bail!("flotilla serve exited with {status}:\n{text}");
        }
        if std::time::Instant::now() > deadline {
            bail!("flotilla serve did not start:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
