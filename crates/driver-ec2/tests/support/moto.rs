//! moto's server mode: a real EC2 API implementation on loopback.
//!
//! moto is installed (pinned) into `target/moto-venv` the first time a test
//! needs it (`venv.rs`). Every [`Moto`] is its own server on
//! a free port, stopped when dropped. If moto cannot be installed or started
//! the test fails, saying why: it is never skipped.
//!
//! The server's end-to-end tests include this file too
//! (`crates/flotilla/tests/ec2.rs`, by `#[path]`): keep it self-contained,
//! using nothing but std and `venv.rs` beside it.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "venv.rs"]
mod venv;
use venv::target_dir;

pub const MOTO_VERSION: &str = "5.2.5";

/// An AMI moto knows in every region.
pub const AMI: &str = "ami-12c6146b";

/// How long a starting server may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// moto's server, stopping itself when the test process that started it
/// goes, even if that process is killed before it can stop the server.
const SERVER: &str = r#"
import os, sys, threading, time
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
main(sys.argv[1:])
"#;

pub struct Moto {
    child: Child,
    pub endpoint: String,
    log: PathBuf,
}

/// The virtual environment's python, with moto installed.
pub fn ensure_installed() -> PathBuf {
    venv::installed(
        "moto",
        &format!("moto[server]=={MOTO_VERSION}"),
        &["python", "-c", "import moto.server"],
    )
    .join("bin/python")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

impl Moto {
    /// Installs moto if needed and starts a server. Blocking: call it from
    /// `spawn_blocking` in async tests.
    pub fn start() -> Moto {
        let python = ensure_installed();
        let logs = target_dir().join("moto-logs");
        std::fs::create_dir_all(&logs).expect("create target/moto-logs");
        let mut last_log = String::new();
        // A port found free may be taken before moto binds it: try again.
        for _ in 0..3 {
            let port = free_port();
            let log = logs.join(format!("moto-{}-{port}.log", std::process::id()));
            let out = File::create(&log).expect("create the moto log");
            let child = Command::new(&python)
                .args(["-c", SERVER, "-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("clone the log handle"))
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start moto with {}: {e}", python.display()));
            let mut moto = Moto {
                child,
                endpoint: format!("http://127.0.0.1:{port}"),
                log,
            };
            if moto.wait_ready(port) {
                return moto;
            }
            last_log = std::fs::read_to_string(&moto.log).unwrap_or_default();
            if !last_log.contains("Address already in use") {
                break;
            }
        }
        panic!("moto did not start within {START_TIMEOUT:?}; its output:\n{last_log}");
    }

    fn wait_ready(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
