//! The S3 artifact store against moto's S3 server on loopback: chunks kept
//! once, read back in order from any number, and a bucket that cannot be
//! reached said so.

#[allow(dead_code)]
#[path = "../../driver-ec2/tests/support/moto.rs"]
mod moto;

use flotilla_artifacts_s3::{S3Artifacts, S3Settings};
use flotilla_store::ArtifactStore;

fn settings(moto: &moto::Moto, url: &str) -> S3Settings {
    S3Settings {
        url: url.to_owned(),
        region: Some("us-east-1".to_owned()),
        endpoint_url: Some(moto.endpoint.clone()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_kept_once_and_read_back_in_order() {
    // The standard chain finds these, and never asks an instance's
    // metadata address.
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        std::env::set_var(k, v);
    }
    let moto = tokio::task::spawn_blocking(moto::Moto::start)
        .await
        .unwrap();
    let store = S3Artifacts::open(&settings(&moto, "s3://job-logs/team/a"))
        .await
        .unwrap();
    assert_eq!(store.url(), "s3://job-logs/team/a/");
    let refused = store.check().await.unwrap_err();
    assert!(
        refused.contains("cannot reach bucket job-logs"),
        "{refused}"
    );

    let s3 = flotilla_artifacts_s3::client(&settings(&moto, "s3://job-logs")).await;
    s3.create_bucket().bucket("job-logs").send().await.unwrap();
    store.check().await.unwrap();

    for (n, text) in [(0, "zero\n"), (2, "two\n"), (1, "one\n"), (11, "eleven\n")] {
        store.put_log_chunk(7, 1, n, text).await.unwrap();
    }
    // Sent again (its answer was lost): kept as it was.
    store.put_log_chunk(7, 1, 1, "ONE AGAIN\n").await.unwrap();
    // Another attempt's log is apart.
    store.put_log_chunk(7, 2, 0, "second\n").await.unwrap();

    let all = store.log_chunks(7, 1, 0).await.unwrap();
    assert_eq!(
        all,
        [
            (0, "zero\n".to_owned()),
            (1, "one\n".to_owned()),
            (2, "two\n".to_owned()),
            (11, "eleven\n".to_owned())
        ]
    );
    assert_eq!(
        store.log_chunks(7, 1, 2).await.unwrap(),
        [(2, "two\n".to_owned()), (11, "eleven\n".to_owned())]
    );
    assert!(store.log_chunks(7, 1, 12).await.unwrap().is_empty());
    assert_eq!(
        store.log_chunks(7, 2, 0).await.unwrap(),
        [(0, "second\n".to_owned())]
    );
    assert!(store.log_chunks(8, 1, 0).await.unwrap().is_empty());

    let keys: Vec<String> = s3
        .list_objects_v2()
        .bucket("job-logs")
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    assert!(
        keys.contains(&"team/a/jobs/7/1/log/000000000011".to_owned()),
        "{keys:?}"
    );
    assert_eq!(keys.len(), 5, "{keys:?}");

    // Kept files: replaced when sent again, listed by path, none outside.
    store
        .put_file(7, 1, "out/report.txt", b"first".to_vec())
        .await
        .unwrap();
    store
        .put_file(7, 1, "out/report.txt", b"second".to_vec())
        .await
        .unwrap();
    store
        .put_file(7, 1, "./out//deep/a.bin", vec![0, 1, 2])
        .await
        .unwrap();
    let files: Vec<(String, u64)> = store
        .files(7, 1)
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.path, f.size))
        .collect();
    assert_eq!(
        files,
        [
            ("out/deep/a.bin".to_owned(), 3),
            ("out/report.txt".to_owned(), 6)
        ]
    );
    assert_eq!(
        store.file(7, 1, "out/report.txt").await.unwrap(),
        Some(b"second".to_vec())
    );
    assert_eq!(store.file(7, 1, "out/missing").await.unwrap(), None);
    assert!(store.put_file(7, 1, "../x", vec![]).await.is_err());
    assert!(store.files(7, 2).await.unwrap().is_empty());
}
