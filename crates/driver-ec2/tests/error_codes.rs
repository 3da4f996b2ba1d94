//! Every EC2 error code the driver knows, answered by a scripted endpoint
//! with EC2's own error body and status, classified into the contract's
//! `CloudError`: one test per code.

mod support;

use std::time::Duration;

use flotilla_cloud::{CapacityScope, CloudError, InstanceSet, Tags};
use flotilla_driver_ec2::{Ec2Error, Ec2InstanceSet};
use support::fake_ec2::{error, FakeEc2};
use support::{config, connect, credentials, instance_type, request, set_id};

/// The error `create` returns when RunInstances answers `code`.
async fn create_failing_with(status: u16, code: &'static str) -> CloudError {
    let ec2 = FakeEc2::start(move |_| error(status, code, "the recorded message")).await;
    let set = connect(config(&ec2.endpoint), "ours").await;
    let err = set
        .create(&request("c", 1))
        .await
        .expect_err("the call fails");
    assert_eq!(ec2.actions(), ["RunInstances"], "one call, no SDK retries");
    err
}

fn capacity_of_t3_micro(scope: &CapacityScope) -> bool {
    *scope == CapacityScope::InstanceType(instance_type())
}

macro_rules! code_tests {
    ($($name:ident: $status:literal $code:literal => $pattern:pat $(if $guard:expr)?,)+) => {$(
        #[tokio::test]
        async fn $name() {
            let err = create_failing_with($status, $code).await;
            assert!(
                matches!(&err, $pattern $(if $guard)?),
                "HTTP {} {} gave {err:?}", $status, $code
            );
            let text = err.to_string();
            assert!(text.contains($code) && text.contains("the recorded message"), "{text}");
        }
    )+};
}

code_tests! {
    request_limit_exceeded_is_rate_limited: 503 "RequestLimitExceeded" =>
        CloudError::RateLimited { .. },
    throttling_is_rate_limited: 400 "Throttling" =>
        CloudError::RateLimited { .. },
    instance_limit_exceeded_is_quota: 400 "InstanceLimitExceeded" =>
        CloudError::QuotaExceeded { .. },
    vcpu_limit_exceeded_is_quota: 400 "VcpuLimitExceeded" =>
        CloudError::QuotaExceeded { .. },
    max_spot_instance_count_exceeded_is_quota: 400 "MaxSpotInstanceCountExceeded" =>
        CloudError::QuotaExceeded { .. },
    insufficient_instance_capacity_is_capacity_of_the_type: 500 "InsufficientInstanceCapacity" =>
        CloudError::InsufficientCapacity { scope, .. } if capacity_of_t3_micro(scope),
    unsupported_is_capacity_of_the_type: 400 "Unsupported" =>
        CloudError::InsufficientCapacity { scope, .. } if capacity_of_t3_micro(scope),
    auth_failure_names_the_credentials: 401 "AuthFailure" =>
        CloudError::Permanent { message } if message.contains("AWS_ACCESS_KEY_ID"),
    invalid_client_token_id_names_the_credentials: 403 "InvalidClientTokenId" =>
        CloudError::Permanent { message } if message.contains("access key"),
    signature_does_not_match_names_the_credentials: 403 "SignatureDoesNotMatch" =>
        CloudError::Permanent { message } if message.contains("secret"),
    unauthorized_operation_names_the_iam_permission: 403 "UnauthorizedOperation" =>
        CloudError::Permanent { message } if message.contains("allow ec2:RunInstances in its IAM policy"),
    expired_token_says_renew: 400 "ExpiredToken" =>
        CloudError::Permanent { message } if message.contains("expired"),
    opt_in_required_names_the_region: 401 "OptInRequired" =>
        CloudError::Permanent { message } if message.contains("region"),
    internal_error_is_transient: 500 "InternalError" =>
        CloudError::Transient { .. },
    service_unavailable_is_transient: 503 "ServiceUnavailable" =>
        CloudError::Transient { .. },
    unavailable_is_transient: 503 "Unavailable" =>
        CloudError::Transient { .. },
    unknown_5xx_is_transient: 502 "SomethingNew" =>
        CloudError::Transient { .. },
    invalid_ami_is_permanent: 400 "InvalidAMIID.NotFound" =>
        CloudError::Permanent { .. },
    unknown_4xx_is_permanent: 400 "SomethingNew" =>
        CloudError::Permanent { .. },
}

#[tokio::test]
async fn a_rate_limit_asks_for_a_second_first() {
    let err = create_failing_with(503, "RequestLimitExceeded").await;
    let CloudError::RateLimited { earliest_retry, .. } = err else {
        panic!("{err:?}")
    };
    let wait = earliest_retry - tokio::time::Instant::now();
    assert!(
        wait > Duration::from_millis(800) && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
}

#[tokio::test]
async fn other_operations_name_their_own_permission() {
    let ec2 =
        FakeEc2::start(|_| error(403, "UnauthorizedOperation", "You are not authorized")).await;
    let set = connect(config(&ec2.endpoint), "ours").await;
    let err = set.list(&Tags::new()).await.unwrap_err();
    assert!(
        err.to_string().contains("allow ec2:DescribeInstances"),
        "{err}"
    );
}

#[tokio::test]
async fn no_endpoint_is_transient() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let set = connect(config(&format!("http://127.0.0.1:{port}")), "ours").await;
    let err = set.list(&Tags::new()).await.unwrap_err();
    assert!(matches!(err, CloudError::Transient { .. }), "{err:?}");
}

#[tokio::test]
async fn a_silent_endpoint_is_transient_after_the_request_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Accepts and never answers.
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let set = connect(
        flotilla_driver_ec2::Ec2Config {
            request_timeout: Duration::from_millis(300),
            ..config(&endpoint)
        },
        "ours",
    )
    .await;
    let started = std::time::Instant::now();
    let err = set.list(&Tags::new()).await.unwrap_err();
    assert!(matches!(err, CloudError::Transient { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    hold.abort();
}

#[tokio::test]
async fn open_refuses_credentials_aws_rejects() {
    let ec2 = FakeEc2::start(|_| {
        error(
            401,
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
        )
    })
    .await;
    let err = Ec2InstanceSet::open_with(config(&ec2.endpoint), set_id("ours"), Some(credentials()))
        .await
        .err()
        .expect("open fails");
    assert!(
        matches!(&err, Ec2Error::Cloud(CloudError::Permanent { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
}

#[tokio::test]
async fn open_carries_on_through_an_outage() {
    let ec2 = FakeEc2::start(|_| error(503, "Unavailable", "try later")).await;
    Ec2InstanceSet::open_with(config(&ec2.endpoint), set_id("ours"), Some(credentials()))
        .await
        .expect("a passing outage does not stop the server");
    assert_eq!(ec2.actions(), ["DescribeInstances"]);
}
