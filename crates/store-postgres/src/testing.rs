//! A throwaway PostgreSQL server for tests (feature `testing`), started
//! from the machine's own PostgreSQL binaries (Debian's `postgresql`
//! package), the way the EC2 tests start moto.
//!
//! `initdb` runs once per machine and PostgreSQL version into a template
//! directory (guarded by a lock file, since test processes run in
//! parallel); each [`TempPostgres`] copies it into a temporary directory
//! and starts `postgres` there, listening only on a Unix socket in that
//! directory, so servers never race for ports. PostgreSQL refuses to run
//! as root: when the tests do, the server runs as the `postgres` account
//! the package creates. The server is stopped when the value is dropped,
//! and told to stop if the test process dies first (the parent-death
//! signal, tied to a thread kept for the purpose), so no server outlives
//! its test.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a fresh server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running PostgreSQL server in a temporary directory.
pub struct TempPostgres {
    child: Option<Child>,
    /// Dropping it ends the thread that started the server (see
    /// [`spawn_kept`]).
    keeper: Option<std::sync::mpsc::Sender<()>>,
    dir: tempfile::TempDir,
    /// Numbers the databases handed out by [`Self::create_database`].
    databases: AtomicU32,
}

/// Who the server runs as: the current user, or the `postgres` account
/// when the current user is root.
#[derive(Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn run_as() -> io::Result<Option<RunAs>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns null or a pointer to a static record, read
    // at once; tests do not call it from several threads at a time in a
    // way that matters (a race only rereads the same record).
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(io::Error::other(
            "tests run as root, and PostgreSQL refuses to: install Debian's postgresql \
             package, which creates the postgres account the server runs as",
        ));
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

/// The directory holding `initdb` and `postgres`: `FLOTILLA_PG_BIN`, else
/// what `pg_config --bindir` says, else the newest `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FLOTILLA_PG_BIN") {
        return Ok(dir.into());
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("postgres").exists() {
            return Ok(dir);
        }
    }
    Err(io::Error::other(
        "no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin and at \
         pg_config --bindir): install Debian's postgresql package (`.ci/run` does), or set \
         FLOTILLA_PG_BIN to the directory holding initdb and postgres",
    ))
}

fn command(program: &Path, who: Option<RunAs>) -> Command {
    let mut cmd = Command::new(program);
    if let Some(who) = who {
        cmd.uid(who.uid).gid(who.gid);
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
    cmd
}

fn chown(path: &Path, who: Option<RunAs>) -> io::Result<()> {
    match who {
        Some(who) => std::os::unix::fs::chown(path, Some(who.uid), Some(who.gid)),
        None => Ok(()),
    }
}

fn run(mut cmd: Command, what: &str) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

/// The initdb'd template for these binaries, made once per machine.
fn template(bin: &Path, who: Option<RunAs>) -> io::Result<PathBuf> {
    let version = std::fs::canonicalize(bin)?
        .to_string_lossy()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    let uid = who.map_or_else(|| unsafe { libc::geteuid() }, |w| w.uid);
    let root = std::env::temp_dir().join(format!("flotilla-pg-template-{uid}{version}"));
    let data = root.join("data");
    let done = root.join("done");
    if done.exists() {
        return Ok(data);
    }
    std::fs::create_dir_all(&root)?;
    let lock = File::create(root.join("lock"))?;
    lock.lock()?;
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir(&data)?;
        chown(&root, who)?;
        chown(&data, who)?;
        let mut initdb = command(&bin.join("initdb"), who);
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        run(initdb, "initdb")?;
        File::create(&done)?;
    }
    Ok(data)
}

impl TempPostgres {
    /// Starts a fresh, empty server, tuned for tests (no fsync: a commit
    /// is not on disk when it returns). Blocking (a second or so); call it
    /// from `spawn_blocking` in async code, or use [`Self::start_async`].
    pub fn start() -> io::Result<TempPostgres> {
        Self::start_with(false)
    }

    /// Starts a fresh, empty server with PostgreSQL's durable defaults
    /// (fsync, synchronous commits), for benchmarks that compare it with
    /// SQLite's `synchronous = FULL`.
    pub fn start_durable() -> io::Result<TempPostgres> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> io::Result<TempPostgres> {
        let who = run_as()?;
        let bin = bin_dir()?;
        let template = template(&bin, who)?;
        let dir = tempfile::Builder::new().prefix("flotilla-pg-").tempdir()?;
        chown(dir.path(), who)?;
        let data = dir.path().join("data");
        let mut copy = command(Path::new("cp"), who);
        copy.arg("-a").arg(&template).arg(&data);
        run(copy, "copying the PostgreSQL template")?;

        let log = File::create(dir.path().join("postgres.log"))?;
        let mut server = command(&bin.join("postgres"), who);
        server
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if !durable {
            // A test server: durability is not what it is for.
            server
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs here.
        unsafe {
            server.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (child, keeper) = spawn_kept(server)?;
        let mut pg = TempPostgres {
            child: Some(child),
            keeper: Some(keeper),
            dir,
            databases: AtomicU32::new(0),
        };
        pg.wait_ready()?;
        Ok(pg)
    }

    /// [`Self::start`] off the async runtime's threads.
    pub async fn start_async() -> io::Result<TempPostgres> {
        tokio::task::spawn_blocking(Self::start)
            .await
            .map_err(io::Error::other)?
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(io::Error::other(format!(
                        "postgres exited at start ({status}): {}",
                        self.log()
                    )));
                }
            }
            // The socket accepts before the server has finished starting
            // (it answers "the database system is starting up"); this line
            // comes once it takes connections.
            if self
                .log()
                .contains("database system is ready to accept connections")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "postgres did not start within {START_TIMEOUT:?}: {}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost/{database}?host={}",
            self.socket_dir().display()
        )
    }

    /// The URL of the `postgres` database, which always exists.
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    /// Creates a new empty database and returns its URL.
    pub async fn create_database(&self) -> Result<String, sqlx::Error> {
        use sqlx::Connection;
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("flotilla_{n}");
        let mut conn = sqlx::PgConnection::connect(&self.admin_url()).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(self.url(&name))
    }

    /// Stops the server at once (PostgreSQL's fast shutdown) and waits.
    pub fn stop(&mut self) {
        let _keeper = self.keeper.take();
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill with a pid we own and have not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns `server` from a thread of its own that lives until the returned
/// sender is dropped. The parent-death signal fires when the thread that
/// spawned a process ends, not the process: spawned from a pool thread
/// (`spawn_blocking`'s idle threads end after ten seconds), the server
/// would be stopped in the middle of a long test or benchmark.
fn spawn_kept(mut server: Command) -> io::Result<(Child, std::sync::mpsc::Sender<()>)> {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("postgres-keeper".into())
        .spawn(move || {
            let _ = started_tx.send(server.spawn());
            // Returns when the sender is dropped.
            let _ = stop_rx.recv();
        })?;
    let child = started_rx.recv().map_err(io::Error::other)??;
    Ok((child, stop_tx))
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
