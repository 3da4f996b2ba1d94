//! A drop box in S3 (issue 14): one folder per account under a prefix
//! (`PREFIX/USERNAME/NAME.cf-create`), read by listing, each object read
//! only as the version listed (its ETag), status objects put beside it.

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;

use crate::{Place, S3Settings};

/// One object under the prefix, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key after the prefix: `USERNAME/NAME`.
    pub name: String,
    pub size: i64,
    /// Changes whenever its content does.
    pub etag: String,
    /// When it was last put (seconds since the epoch): the same content
    /// put again in a later second is another version.
    pub modified: String,
}

/// The objects of one bucket under one prefix.
#[derive(Clone)]
pub struct S3Folders {
    at: Place,
}

impl S3Folders {
    pub async fn open(settings: &S3Settings) -> Result<Self, String> {
        Place::open(settings).await.map(|at| Self { at })
    }

    /// `s3://BUCKET/PREFIX/`.
    pub fn url(&self) -> String {
        self.at.url()
    }

    /// Every object under the prefix.
    pub async fn list(&self) -> Result<Vec<Listed>, String> {
        let mut found = Vec::new();
        let mut pages = self
            .at
            .client
            .list_objects_v2()
            .bucket(&self.at.bucket)
            .prefix(&self.at.prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| format!("cannot list {}: {}", self.url(), DisplayErrorContext(&e)))?;
            for o in page.contents() {
                let (Some(key), Some(etag)) = (o.key(), o.e_tag()) else {
                    continue;
                };
                if let Some(name) = key.strip_prefix(&self.at.prefix) {
                    found.push(Listed {
                        name: name.to_owned(),
                        size: o.size().unwrap_or_default(),
                        etag: etag.to_owned(),
                        modified: o.last_modified().map(modified_text).unwrap_or_default(),
                    });
                }
            }
        }
        Ok(found)
    }

    /// The content of `name` if it is still the version `etag`; none if it
    /// changed or went since it was listed.
    pub async fn get(&self, name: &str, etag: &str) -> Result<Option<Vec<u8>>, String> {
        let got = self
            .at
            .client
            .get_object()
            .bucket(&self.at.bucket)
            .key(format!("{}{name}", self.at.prefix))
            .if_match(etag)
            .send()
            .await;
        match got {
            Ok(object) => {
                let bytes = object
                    .body
                    .collect()
                    .await
                    .map_err(|e| format!("cannot read {}{name}: {e}", self.url()))?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                if matches!(status, Some(404 | 412)) {
                    Ok(None)
                } else {
                    Err(format!(
                        "cannot read {}{name}: {}",
                        self.url(),
                        DisplayErrorContext(&e)
                    ))
                }
            }
        }
    }

    /// Puts `text` at `name`, whole.
    pub async fn put(&self, name: &str, text: String) -> Result<(), String> {
        self.at
            .client
            .put_object()
            .bucket(&self.at.bucket)
            .key(format!("{}{name}", self.at.prefix))
            .content_type("application/json")
            .body(ByteStream::from(text.into_bytes()))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "cannot write {}{name}: {}",
                    self.url(),
                    DisplayErrorContext(&e)
                )
            })?;
        Ok(())
    }

    /// Deletes `name` if it is still the version listed (`etag`, put at
    /// `modified`): one put again since is left. The DELETE itself is not
    /// conditional (not every S3-compatible store takes `If-Match` on a
    /// DELETE), so this narrows the window to between a HEAD and the
    /// DELETE. True if deleted.
    pub async fn delete_version(
        &self,
        name: &str,
        etag: &str,
        modified: &str,
    ) -> Result<bool, String> {
        let head = self
            .at
            .client
            .head_object()
            .bucket(&self.at.bucket)
            .key(format!("{}{name}", self.at.prefix))
            .if_match(etag)
            .send()
            .await;
        let head = match head {
            Ok(head) => head,
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                return if matches!(status, Some(404 | 412)) {
                    Ok(false)
                } else {
                    Err(format!(
                        "cannot look at {}{name}: {}",
                        self.url(),
                        DisplayErrorContext(&e)
                    ))
                };
            }
        };
        if head.last_modified().map(modified_text).unwrap_or_default() != modified {
            return Ok(false);
        }
        self.delete(name).await.map(|()| true)
    }

    /// Deletes `name` (nothing if it is not there).
    pub async fn delete(&self, name: &str) -> Result<(), String> {
        self.at
            .client
            .delete_object()
            .bucket(&self.at.bucket)
            .key(format!("{}{name}", self.at.prefix))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "cannot delete {}{name}: {}",
                    self.url(),
                    DisplayErrorContext(&e)
                )
            })?;
        Ok(())
    }
}

/// An object's time of putting, to the second: a listing gives it to the
/// millisecond and a HEAD to the second, so only seconds compare.
fn modified_text(t: &aws_sdk_s3::primitives::DateTime) -> String {
    t.secs().to_string()
}
