//! What jobs leave behind: each attempt's log and the files it kept (its
//! job's `artifacts`), apart from the database. A log is a sequence of
//! numbered chunks, each written once whole: the agent numbers what it
//! sends, so a chunk sent again (after a lost answer, or to another
//! server) is kept once, and any server reads what any other wrote where
//! they share the store (a directory on one machine; S3 across machines).

use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use flotilla_domain::kept_path;

use crate::{JobId, StoreError};

#[async_trait]
pub trait ArtifactStore: Send + Sync {
    /// Keeps chunk `chunk` of the log of attempt `attempt` of job `job`;
    /// a chunk kept already is left as it is.
    async fn put_log_chunk(
        &self,
        job: JobId,
        attempt: u32,
        chunk: u64,
        text: &str,
    ) -> Result<(), StoreError>;

    /// The chunks of that log numbered `from` and up, in order.
    async fn log_chunks(
        &self,
        job: JobId,
        attempt: u32,
        from: u64,
    ) -> Result<Vec<(u64, String)>, StoreError>;

    /// Keeps the file at `path` (a [`kept_path`]) of attempt `attempt` of
    /// job `job`, whole, replacing one kept there before (the agent sent
    /// it again).
    async fn put_file(
        &self,
        job: JobId,
        attempt: u32,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError>;

    /// The files that attempt kept, by path.
    async fn files(&self, job: JobId, attempt: u32) -> Result<Vec<KeptFile>, StoreError>;

    /// The file kept at `path`, if there is one.
    async fn file(
        &self,
        job: JobId,
        attempt: u32,
        path: &str,
    ) -> Result<Option<Vec<u8>>, StoreError>;
}

/// A file an attempt kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptFile {
    /// Its [`kept_path`], relative to the attempt's work directory.
    pub path: String,
    pub size: u64,
}

/// `path` as a kept path, or why not (every store checks, whoever asks).
pub fn checked_path(path: &str) -> Result<String, StoreError> {
    kept_path(path).ok_or_else(|| {
        StoreError::Artifacts(format!(
            "{path:?} is no path of a kept file (relative, inside the work directory)"
        ))
    })
}

/// Artifacts in a local directory: `DIR/jobs/JOB/ATTEMPT/log/CHUNK`.
pub struct LocalArtifacts {
    dir: PathBuf,
}

impl LocalArtifacts {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn attempt_dir(&self, job: JobId, attempt: u32) -> PathBuf {
        self.dir
            .join("jobs")
            .join(job.to_string())
            .join(attempt.to_string())
    }

    fn log_dir(&self, job: JobId, attempt: u32) -> PathBuf {
        self.attempt_dir(job, attempt).join("log")
    }

    fn files_dir(&self, job: JobId, attempt: u32) -> PathBuf {
        self.attempt_dir(job, attempt).join("files")
    }
}

/// Writes `bytes` to `path` (a file below some directory), whole or not
/// at all: written aside, then renamed into place.
async fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("a file below a directory");
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io_error("cannot make", dir, e))?;
    let name = path.file_name().expect("a file name").to_string_lossy();
    let partial = dir.join(format!(".partial.{name}.{}", std::process::id()));
    tokio::fs::write(&partial, bytes)
        .await
        .map_err(|e| io_error("cannot write", &partial, e))?;
    tokio::fs::rename(&partial, path)
        .await
        .map_err(|e| io_error("cannot write", path, e))
}

/// Every file under `root`, as kept paths with their sizes, by path.
fn walk(root: &Path) -> Result<Vec<KeptFile>, StoreError> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("cannot read", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot read", &dir, e))?;
            let path = entry.path();
            let meta = entry
                .metadata()
                .map_err(|e| io_error("cannot read", &path, e))?;
            let name = entry.file_name();
            // Files being written are hidden until renamed into place.
            if name.to_string_lossy().starts_with(".partial.") {
                continue;
            }
            if meta.is_dir() {
                dirs.push(path);
            } else if let Ok(relative) = path.strip_prefix(root) {
                found.push(KeptFile {
                    path: relative.to_string_lossy().into_owned(),
                    size: meta.len(),
                });
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

fn io_error(what: &str, path: &Path, e: io::Error) -> StoreError {
    StoreError::Artifacts(format!("{what} {}: {e}", path.display()))
}

#[async_trait]
impl ArtifactStore for LocalArtifacts {
    async fn put_log_chunk(
        &self,
        job: JobId,
        attempt: u32,
        chunk: u64,
        text: &str,
    ) -> Result<(), StoreError> {
        let path = self.log_dir(job, attempt).join(format!("{chunk:012}"));
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(());
        }
        write_whole(&path, text.as_bytes()).await
    }

    async fn log_chunks(
        &self,
        job: JobId,
        attempt: u32,
        from: u64,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let dir = self.log_dir(job, attempt);
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("cannot read", &dir, e)),
        };
        let mut numbers = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| io_error("cannot read", &dir, e))?
        {
            if let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u64>().ok())
            {
                if n >= from {
                    numbers.push(n);
                }
            }
        }
        numbers.sort_unstable();
        let mut chunks = Vec::with_capacity(numbers.len());
        for n in numbers {
            let path = dir.join(format!("{n:012}"));
            let text = tokio::fs::read_to_string(&path)
                .await
                .map_err(|e| io_error("cannot read", &path, e))?;
            chunks.push((n, text));
        }
        Ok(chunks)
    }

    async fn put_file(
        &self,
        job: JobId,
        attempt: u32,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        let path = self.files_dir(job, attempt).join(checked_path(path)?);
        write_whole(&path, &bytes).await
    }

    async fn files(&self, job: JobId, attempt: u32) -> Result<Vec<KeptFile>, StoreError> {
        let root = self.files_dir(job, attempt);
        tokio::task::spawn_blocking(move || walk(&root))
            .await
            .map_err(|e| StoreError::Artifacts(e.to_string()))?
    }

    async fn file(
        &self,
        job: JobId,
        attempt: u32,
        path: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.files_dir(job, attempt).join(checked_path(path)?);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::IsADirectory
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(io_error("cannot read", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_chunk_is_kept_once_and_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LocalArtifacts::new(dir.path());
        assert!(logs.log_chunks(1, 1, 0).await.unwrap().is_empty());
        logs.put_log_chunk(1, 1, 2, "two\n").await.unwrap();
        logs.put_log_chunk(1, 1, 0, "zero\n").await.unwrap();
        logs.put_log_chunk(1, 1, 0, "zero again\n").await.unwrap();
        logs.put_log_chunk(1, 2, 0, "other attempt\n")
            .await
            .unwrap();
        let all = logs.log_chunks(1, 1, 0).await.unwrap();
        assert_eq!(
            all,
            vec![(0, "zero\n".to_owned()), (2, "two\n".to_owned())],
            "a chunk sent twice is kept as first written"
        );
        assert_eq!(logs.log_chunks(1, 1, 1).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn files_are_kept_whole_listed_and_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let kept = LocalArtifacts::new(dir.path());
        assert!(kept.files(1, 1).await.unwrap().is_empty());
        kept.put_file(1, 1, "out/report.txt", b"first".to_vec())
            .await
            .unwrap();
        kept.put_file(1, 1, "out/report.txt", b"second".to_vec())
            .await
            .unwrap();
        kept.put_file(1, 1, "./out//deep/a.bin", vec![0, 1, 2])
            .await
            .unwrap();
        kept.put_file(1, 2, "other.txt", b"x".to_vec())
            .await
            .unwrap();
        assert_eq!(
            kept.files(1, 1).await.unwrap(),
            [
                KeptFile {
                    path: "out/deep/a.bin".into(),
                    size: 3
                },
                KeptFile {
                    path: "out/report.txt".into(),
                    size: 6
                }
            ]
        );
        assert_eq!(
            kept.file(1, 1, "out/report.txt").await.unwrap(),
            Some(b"second".to_vec())
        );
        assert_eq!(kept.file(1, 1, "out/missing").await.unwrap(), None);
        assert_eq!(kept.file(1, 1, "out").await.unwrap(), None);
        for bad in ["../escape", "/etc/passwd", "a/../../b"] {
            assert!(kept.put_file(1, 1, bad, vec![]).await.is_err(), "{bad}");
            assert!(kept.file(1, 1, bad).await.is_err(), "{bad}");
        }
        assert!(!dir.path().join("escape").exists());
    }
}
