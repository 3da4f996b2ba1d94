//! Jobs' logs and kept files in S3 (or anything speaking its API: MinIO,
//! moto): an [`ArtifactStore`] whose objects sit under one prefix of one
//! bucket, laid out as the local directory is
//! (`PREFIX/jobs/JOB/ATTEMPT/log/CHUNK`, the chunk number zero-padded so
//! that the keys list in order, and `PREFIX/jobs/JOB/ATTEMPT/files/PATH`).
//! Servers on several machines share it, so any of them reads what another
//! kept.

mod folders;

pub use folders::{Listed, S3Folders};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use flotilla_store::{checked_path, ArtifactStore, JobId, KeptFile, StoreError};

/// Where the artifacts go and how S3 is reached; the credentials come
/// from the standard AWS chain (environment, profile, instance role).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// `s3://BUCKET/PREFIX/` (the prefix may be empty).
    pub url: String,
    /// The bucket's region; unset: the standard chain's (`AWS_REGION`, the
    /// profile).
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint than AWS's (MinIO, moto); such an endpoint is
    /// addressed path-style (`ENDPOINT/BUCKET/KEY`).
    #[serde(default)]
    pub endpoint_url: Option<String>,
}

/// An S3 client as `settings` say: a rustls + ring HTTPS client, the
/// SDK's standard retries, credentials from the standard chain.
pub async fn client(settings: &S3Settings) -> Client {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let sdk = loader.load().await;
    let config = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(settings.endpoint_url.is_some())
        .build();
    Client::from_conf(config)
}

/// `s3://BUCKET/PREFIX` as its bucket and its prefix, which ends in `/`
/// unless empty.
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| format!("{url:?} is not an s3://BUCKET/PREFIX URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid_bucket {
        return Err(format!(
            "{url:?}: {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, '-' and '.')"
        ));
    }
    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok((bucket.to_owned(), prefix))
}

/// One bucket and a prefix in it, and the client that reaches them: what
/// [`S3Artifacts`] and [`S3Folders`] each keep.
#[derive(Clone)]
pub(crate) struct Place {
    pub(crate) client: Client,
    pub(crate) bucket: String,
    pub(crate) prefix: String,
}

impl Place {
    /// The place `settings` names (nothing is asked of S3 yet).
    pub(crate) async fn open(settings: &S3Settings) -> Result<Self, String> {
        let (bucket, prefix) = parse_url(&settings.url)?;
        Ok(Self {
            client: client(settings).await,
            bucket,
            prefix,
        })
    }

    /// `s3://BUCKET/PREFIX/`.
    pub(crate) fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Jobs' logs in one bucket, under one prefix.
#[derive(Clone)]
pub struct S3Artifacts {
    at: Place,
}

impl std::fmt::Debug for S3Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Artifacts({})", self.at.url())
    }
}

impl S3Artifacts {
    /// A store for `settings` (nothing is asked of S3 yet: see
    /// [`check`](Self::check)).
    pub async fn open(settings: &S3Settings) -> Result<Self, String> {
        Place::open(settings).await.map(|at| Self { at })
    }

    /// `s3://BUCKET/PREFIX/`.
    pub fn url(&self) -> String {
        self.at.url()
    }

    /// Whether the bucket can be reached with the credentials at hand.
    pub async fn check(&self) -> Result<(), String> {
        self.at
            .client
            .head_bucket()
            .bucket(&self.at.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "cannot reach bucket {} ({}): check the bucket, the region and the credentials",
                    self.at.bucket,
                    DisplayErrorContext(&e)
                )
            })
    }

    fn log_prefix(&self, job: JobId, attempt: u32) -> String {
        format!("{}jobs/{job}/{attempt}/log/", self.at.prefix)
    }

    fn files_prefix(&self, job: JobId, attempt: u32) -> String {
        format!("{}jobs/{job}/{attempt}/files/", self.at.prefix)
    }

    fn chunk_key(&self, job: JobId, attempt: u32, chunk: u64) -> String {
        format!("{}{chunk:012}", self.log_prefix(job, attempt))
    }

    /// The object at `key`, if there is one.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let object = match self
            .at
            .client
            .get_object()
            .bucket(&self.at.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(self.failed("read", key, e)),
        };
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| self.failed("read", key, e))?
            .into_bytes();
        Ok(Some(bytes.to_vec()))
    }

    fn failed(&self, what: &str, key: &str, e: impl std::error::Error) -> StoreError {
        StoreError::Artifacts(format!(
            "cannot {what} s3://{}/{key}: {}",
            self.at.bucket,
            DisplayErrorContext(e)
        ))
    }
}

#[async_trait]
impl ArtifactStore for S3Artifacts {
    async fn put_log_chunk(
        &self,
        job: JobId,
        attempt: u32,
        chunk: u64,
        text: &str,
    ) -> Result<(), StoreError> {
        let key = self.chunk_key(job, attempt, chunk);
        // A chunk sent again is the same chunk: kept once, as it was.
        match self
            .at
            .client
            .head_object()
            .bucket(&self.at.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {}
            Err(e) => return Err(self.failed("look for", &key, e)),
        }
        // A PUT is whole or nothing.
        self.at
            .client
            .put_object()
            .bucket(&self.at.bucket)
            .key(&key)
            .content_type("text/plain; charset=utf-8")
            .body(ByteStream::from(text.as_bytes().to_vec()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.failed("write", &key, e))
    }

    async fn log_chunks(
        &self,
        job: JobId,
        attempt: u32,
        from: u64,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let prefix = self.log_prefix(job, attempt);
        let mut list = self
            .at
            .client
            .list_objects_v2()
            .bucket(&self.at.bucket)
            .prefix(&prefix);
        if from > 0 {
            list = list.start_after(self.chunk_key(job, attempt, from - 1));
        }
        let mut pages = list.into_paginator().send();
        let mut numbers = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.failed("list", &prefix, e))?;
            numbers.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key()?.strip_prefix(&prefix)?.parse::<u64>().ok())
                    .filter(|n| *n >= from),
            );
        }
        numbers.sort_unstable();
        let mut chunks = Vec::with_capacity(numbers.len());
        for n in numbers {
            let key = self.chunk_key(job, attempt, n);
            let bytes = self.get(&key).await?.ok_or_else(|| {
                StoreError::Artifacts(format!("s3://{}/{key} went while read", self.at.bucket))
            })?;
            let text = String::from_utf8(bytes).map_err(|e| {
                StoreError::Artifacts(format!("s3://{}/{key} is not text: {e}", self.at.bucket))
            })?;
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
        let key = format!("{}{}", self.files_prefix(job, attempt), checked_path(path)?);
        self.at
            .client
            .put_object()
            .bucket(&self.at.bucket)
            .key(&key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.failed("write", &key, e))
    }

    async fn files(&self, job: JobId, attempt: u32) -> Result<Vec<KeptFile>, StoreError> {
        let prefix = self.files_prefix(job, attempt);
        let mut pages = self
            .at
            .client
            .list_objects_v2()
            .bucket(&self.at.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        let mut files = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.failed("list", &prefix, e))?;
            files.extend(page.contents().iter().filter_map(|o| {
                Some(KeptFile {
                    path: o.key()?.strip_prefix(&prefix)?.to_owned(),
                    size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                })
            }));
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    async fn file(
        &self,
        job: JobId,
        attempt: u32,
        path: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = format!("{}{}", self.files_prefix(job, attempt), checked_path(path)?);
        self.get(&key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        assert_eq!(
            parse_url("s3://logs-bucket/flotilla/jobs").unwrap(),
            ("logs-bucket".to_owned(), "flotilla/jobs/".to_owned())
        );
        assert_eq!(
            parse_url("s3://logs.bucket/").unwrap(),
            ("logs.bucket".to_owned(), String::new())
        );
        assert_eq!(
            parse_url("s3://logs").unwrap(),
            ("logs".to_owned(), String::new())
        );
        for bad in [
            "logs/x",
            "s3://",
            "s3://Logs/x",
            "s3://a/x",
            "https://logs/x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
