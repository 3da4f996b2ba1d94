//! The drop box in S3: the real binary with `[dropbox] s3` pointing at
//! moto's S3 server on loopback. Triggers are objects a user puts; the
//! server's answers are objects beside them.

mod support;

#[allow(dead_code)]
#[path = "../../driver-ec2/tests/support/moto.rs"]
mod moto;

use flotilla_artifacts_s3::{S3Folders, S3Settings};
use serde_json::Value;
use support::{code, wait_for, Sandbox, Server, CONFIG};

#[test]
fn an_object_in_your_folder_makes_and_destroys_a_cluster() {
    let moto = moto::Moto::start();
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let missing = dir.join("no-aws-files");
    let missing = missing.to_str().unwrap();
    let aws = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", missing),
        ("AWS_SHARED_CREDENTIALS_FILE", missing),
    ];
    for (k, v) in aws {
        std::env::set_var(k, v);
    }
    let settings = S3Settings {
        url: "s3://dropbox/team/".to_owned(),
        region: Some("us-east-1".to_owned()),
        endpoint_url: Some(moto.endpoint.clone()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s3 = rt.block_on(flotilla_artifacts_s3::client(&settings));
    rt.block_on(s3.create_bucket().bucket("dropbox").send())
        .unwrap();
    let folders = rt.block_on(S3Folders::open(&settings)).unwrap();
    let names = || -> Vec<String> {
        rt.block_on(folders.list())
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect()
    };
    let read = |name: &str| -> Value {
        let listed = rt.block_on(folders.list()).unwrap();
        let o = listed.iter().find(|o| o.name == name).expect(name);
        let bytes = rt.block_on(folders.get(name, &o.etag)).unwrap().unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };

    let config = format!(
        "{CONFIG}\n[dropbox]\ns3 = \"s3://dropbox/team/\"\ns3_region = \"us-east-1\"\n\
         s3_endpoint_url = \"{}\"\nscan_interval = \"200ms\"\n",
        moto.endpoint
    );
    let server = Server::start_with_env(&dir, &config, &aws);

    rt.block_on(folders.put("admin/web.cf-create", "nodes = 2\n".to_owned()))
        .unwrap();
    wait_for("web.cf-created", || {
        names().contains(&"admin/web.cf-created".to_owned())
    });
    let status = read("admin/web.cf-created");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["addresses"].as_array().unwrap().len(), 2, "{status}");
    assert!(
        !names().contains(&"admin/web.cf-create".to_owned()),
        "the trigger is deleted"
    );

    // Refused: a .cf-failed with the code, an event, nothing deployed.
    rt.block_on(folders.put("admin/Bad_Name.cf-create", String::new()))
        .unwrap();
    rt.block_on(folders.put("nobody/x.cf-create", String::new()))
        .unwrap();
    wait_for("the refusals", || {
        let n = names();
        n.contains(&"admin/Bad_Name.cf-failed".to_owned())
            && n.contains(&"nobody/x.cf-failed".to_owned())
    });
    assert_eq!(
        read("admin/Bad_Name.cf-failed")["code"],
        "invalid_cluster_name"
    );
    assert_eq!(read("nobody/x.cf-failed")["code"], "unknown_account");
    let events = server.cli(&["--output", "json", "events"]);
    let refused: Vec<Value> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == "dropbox.refused")
        .collect();
    assert!(
        refused
            .iter()
            .any(|e| e["details"]["path"] == "s3:admin/Bad_Name.cf-create"),
        "{refused:?}"
    );

    rt.block_on(folders.put("admin/web.cf-delete", String::new()))
        .unwrap();
    wait_for("web.cf-deleted", || {
        names().contains(&"admin/web.cf-deleted".to_owned())
    });
    assert!(!names().contains(&"admin/web.cf-created".to_owned()));
    let shown = server.cli(&["--output", "json", "status", "web"]);
    assert_eq!(code(&shown), 0);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_ne!(shown["state"], "running", "{shown}");

    // The same words put again later are a new trigger (S3's times are
    // kept to the second).
    wait_for("web to be gone", || {
        let out = server.cli(&["--output", "json", "status", "web"]);
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v["state"] == "not_running")
    });
    std::thread::sleep(std::time::Duration::from_millis(1100));
    rt.block_on(folders.put("admin/web.cf-create", "nodes = 2\n".to_owned()))
        .unwrap();
    wait_for("web.cf-created again", || {
        names().contains(&"admin/web.cf-created".to_owned())
    });
    assert!(!names().contains(&"admin/web.cf-deleted".to_owned()));
}
