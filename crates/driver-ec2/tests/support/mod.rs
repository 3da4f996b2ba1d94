//! Shared by the driver's test binaries; each uses only part of it.
#![allow(dead_code)]

pub mod fake_ec2;
pub mod moto;

use flotilla_cloud::{CreateRequest, Tags};
use flotilla_domain::{ClusterName, InstanceSetId, InstanceType, PoolName};
use flotilla_driver_ec2::{
    load_sdk_config, Credentials, Ec2Config, Ec2InstanceSet, SharedCredentialsProvider,
};

pub const REGION: &str = "us-east-1";

/// The pool [`request`] names.
pub const POOL: &str = "workers";

/// The init data of [`request`]: a shell script with placeholders.
pub const INIT_DATA: &str =
    "#!/bin/sh\necho {{cluster}} {{pool}} {{instance_type}} {{instance_set}}\n";

/// Checks that `user_data` (as EC2 got it, base64) is [`INIT_DATA`]
/// rendered for a node of `cluster` in instance set `set`: the preamble
/// after the first line, the placeholders filled in.
pub fn assert_rendered(user_data: &str, cluster: &str, set: &str) {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(user_data)
        .expect("base64 user data");
    let text = String::from_utf8(decoded).expect("text");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "#!/bin/sh", "{text}");
    assert_eq!(
        lines[2],
        format!(
            "export FLOTILLA_CLUSTER='{cluster}' FLOTILLA_POOL='{POOL}' \
             FLOTILLA_INSTANCE_TYPE='t3.micro' FLOTILLA_INSTANCE_SET='{set}'"
        ),
        "{text}"
    );
    assert!(
        lines[3].contains("http://169.254.169.254/latest/meta-data/instance-id"),
        "the node reads its own ID from the metadata service: {text}"
    );
    assert_eq!(
        lines.last().copied(),
        Some(format!("echo {cluster} {POOL} t3.micro {set}").as_str()),
        "{text}"
    );
}

/// Dummy credentials, handed to the SDK rather than set in the process
/// environment.
pub fn credentials() -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(Credentials::new(
        "testing",
        "testing",
        None,
        None,
        "flotilla-tests",
    ))
}

pub fn set_id(id: &str) -> InstanceSetId {
    InstanceSetId::new(id).unwrap()
}

pub fn config(endpoint: &str) -> Ec2Config {
    Ec2Config {
        endpoint_url: Some(endpoint.to_owned()),
        image: Some(moto::AMI.to_owned()),
        max_batch: 5,
        ..Ec2Config::new(REGION)
    }
}

/// `Ec2InstanceSet::open` (with its census) with the dummy credentials.
pub async fn open(config: Ec2Config, id: &str) -> Ec2InstanceSet {
    Ec2InstanceSet::open_with(config, set_id(id), Some(credentials()))
        .await
        .expect("open the ec2 driver")
}

/// The set without the opening census: for scripted endpoints.
pub async fn connect(config: Ec2Config, id: &str) -> Ec2InstanceSet {
    let sdk = load_sdk_config(&config, Some(credentials())).await;
    Ec2InstanceSet::new(config, set_id(id), &sdk).expect("valid config")
}

pub fn instance_type() -> InstanceType {
    InstanceType::new("t3.micro").unwrap()
}

pub fn request(cluster: &str, count: u32) -> CreateRequest {
    CreateRequest {
        cluster: ClusterName::new(cluster).unwrap(),
        pool: PoolName::new(POOL).unwrap(),
        instance_type: instance_type(),
        image: None,
        tags: Tags::from([("team".to_owned(), "ops".to_owned())]),
        init_data: Some(INIT_DATA.to_owned()),
        workload: None,
        pool_version: None,
        count,
        shutdown_terminates: false,
        market: None,
    }
}
