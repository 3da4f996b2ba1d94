//! What jobs leave behind: each attempt's log (and, later, its
//! artifacts), kept apart from the database. A log is a sequence of
//! numbered chunks, each written once whole: the agent numbers what it
//! sends, so a chunk sent again (after a lost answer, or to another
//! server) is kept once, and any server reads what any other wrote where
//! they share the store (a directory on one machine; S3 across machines).

use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

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

    fn log_dir(&self, job: JobId, attempt: u32) -> PathBuf {
        self.dir
            .join("jobs")
            .join(job.to_string())
            .join(attempt.to_string())
            .join("log")
    }
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
        let dir = self.log_dir(job, attempt);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_error("cannot make", &dir, e))?;
        let path = dir.join(format!("{chunk:012}"));
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(());
        }
        // Whole or not at all: written aside, then renamed into place.
        let partial = dir.join(format!(".{chunk:012}.{}", std::process::id()));
        tokio::fs::write(&partial, text)
            .await
            .map_err(|e| io_error("cannot write", &partial, e))?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(|e| io_error("cannot write", &path, e))
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
}
