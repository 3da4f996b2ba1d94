//! Jobs' logs and kept files in S3: the real binary on the local driver
//! with `[jobs.s3]` pointing at moto's S3 server on loopback. The log and
//! a kept file are read back through the command line, and are objects in
//! the bucket.

mod support;

#[allow(dead_code)]
#[path = "../../driver-ec2/tests/support/moto.rs"]
mod moto;

use support::{code, Sandbox, Server, CONFIG};

#[test]
fn a_jobs_log_is_kept_in_s3_and_read_back() {
    let moto = moto::Moto::start();
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let missing = dir.join("no-aws-files");
    let missing = missing.to_str().unwrap();
    let config = format!(
        "{CONFIG}\n[jobs.s3]\nurl = \"s3://job-logs/flotilla\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
        moto.endpoint
    );
    let server = Server::start_with_env(
        &dir,
        &config,
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", missing),
            ("AWS_SHARED_CREDENTIALS_FILE", missing),
        ],
    );
    // The bucket does not exist yet: the server says so and serves.
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains("jobs' logs cannot be kept in s3://job-logs/flotilla/ for now"),
        "{log}"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let s3 = rt.block_on(flotilla_artifacts_s3::client(
        &flotilla_artifacts_s3::S3Settings {
            url: "s3://job-logs".to_owned(),
            region: Some("us-east-1".to_owned()),
            endpoint_url: Some(moto.endpoint.clone()),
        },
    ));
    rt.block_on(s3.create_bucket().bucket("job-logs").send())
        .unwrap();

    let file = dir.join("hello.toml");
    std::fs::write(
        &file,
        "name = \"hello\"\nscript = \"echo first; echo second >&2; echo made > out.txt\"\nmax_runtime = \"5m\"\nartifacts = [\"out.txt\"]\n",
    )
    .unwrap();
    let out = server.cli(&["job", "submit", file.to_str().unwrap(), "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        code(&out),
        0,
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli(&["job", "logs", "1"]);
    let logs = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        logs.contains(" out first\n") && logs.contains(" err second\n"),
        "{logs}"
    );

    let listed = rt
        .block_on(
            s3.list_objects_v2()
                .bucket("job-logs")
                .prefix("flotilla/jobs/1/1/log/")
                .send(),
        )
        .unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert!(!keys.is_empty(), "the log's chunks are objects");
    let mut kept = String::new();
    for key in keys {
        let object = rt
            .block_on(s3.get_object().bucket("job-logs").key(key).send())
            .unwrap();
        let bytes = rt.block_on(object.body.collect()).unwrap().into_bytes();
        kept.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    assert!(kept.contains("first") && kept.contains("second"), "{kept}");
    let out = server.cli(&["job", "file", "1", "out.txt"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"made\n");
    rt.block_on(
        s3.head_object()
            .bucket("job-logs")
            .key("flotilla/jobs/1/1/files/out.txt")
            .send(),
    )
    .expect("the kept file is an object");
    assert!(
        !dir.join("data").join("artifacts").exists(),
        "nothing kept on the server's disk"
    );
}
