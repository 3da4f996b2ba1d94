//! The driver's behaviour where moto cannot show it, against a scripted
//! EC2 endpoint: partial fulfilment, subnet failover, spot fallback and its
//! memory, the rate-limit back-off, ownership checks before every write, a
//! lax endpoint's listing, the health check, and pools' own launch
//! settings.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_cloud::{
    CapacityScope, CloudError, Health, InstanceSet, Tags, TAG_CLUSTER, TAG_INSTANCE_SET,
    TAG_INSTANCE_TYPE, TAG_POOL,
};
use flotilla_domain::{InstanceId, InstanceType, PoolName};
use flotilla_driver_ec2::{Ec2Config, Ec2PoolOptions, HealthCheck, SpotConfig};
use support::fake_ec2::{
    create_tags, describe_instances, error, run_instances, terminate_instances, FakeEc2,
    FakeInstance, Reply, Request,
};
use support::moto::AMI;
use support::{assert_rendered, config, connect, request, POOL};

fn unexpected(r: &Request) -> Reply {
    error(
        400,
        "UnexpectedCall",
        &format!("the script has no answer for {}", r.action),
    )
}

#[tokio::test]
async fn a_partial_fulfilment_returns_what_was_made_with_every_setting() {
    let ec2 = FakeEc2::start(|r| match r.action.as_str() {
        // EC2 had room for 2 of the 5 asked for.
        "RunInstances" => run_instances(r, 2),
        _ => unexpected(r),
    })
    .await;
    let set = connect(
        Ec2Config {
            security_groups: vec!["sg-1".into(), "sg-2".into()],
            key_name: Some("ops-key".into()),
            iam_instance_profile: Some("flotilla-node".into()),
            ..config(&ec2.endpoint)
        },
        "ours",
    )
    .await;
    let made = set.create(&request("c", 5)).await.expect("create");
    assert_eq!(made.len(), 2);
    for i in &made {
        assert_eq!(i.instance_set(), Some("ours"));
        assert_eq!(i.tags.get(TAG_CLUSTER).map(String::as_str), Some("c"));
        assert_eq!(i.tags.get("team").map(String::as_str), Some("ops"));
        assert_eq!(i.instance_type.as_str(), "t3.micro");
        assert_eq!(i.address.as_deref(), Some("10.0.0.1"));
    }
    let run = &ec2.requests_of("RunInstances")[0];
    assert_eq!(run.param("MinCount"), Some("1"));
    assert_eq!(run.param("MaxCount"), Some("5"));
    assert_eq!(run.param("ImageId"), Some(AMI));
    assert_eq!(run.param("InstanceType"), Some("t3.micro"));
    assert_eq!(run.list("SecurityGroupId"), ["sg-1", "sg-2"]);
    assert_eq!(run.param("KeyName"), Some("ops-key"));
    assert_eq!(run.param("IamInstanceProfile.Name"), Some("flotilla-node"));
    assert_eq!(run.param("SubnetId"), None);
    assert_eq!(run.param("InstanceMarketOptions.MarketType"), None);
    assert_rendered(run.param("UserData").expect("user data"), "c", "ours");
    for resource in ["instance", "volume"] {
        let tags = run.tag_spec(resource);
        assert_eq!(tags.get(TAG_INSTANCE_SET).map(String::as_str), Some("ours"));
        assert_eq!(tags.get(TAG_CLUSTER).map(String::as_str), Some("c"));
        assert_eq!(
            tags.get(TAG_INSTANCE_TYPE).map(String::as_str),
            Some("t3.micro")
        );
        assert_eq!(tags.get(TAG_POOL).map(String::as_str), Some(POOL));
        assert_eq!(tags.get("team").map(String::as_str), Some("ops"));
        assert_eq!(tags.get("Name").map(String::as_str), Some("flotilla-c"));
    }
}

#[tokio::test]
async fn oversized_batches_and_missing_images_are_refused_without_a_call() {
    let ec2 = FakeEc2::start(unexpected).await;
    let set = connect(config(&ec2.endpoint), "ours").await;
    for count in [0, 6] {
        let err = set.create(&request("c", count)).await.unwrap_err();
        assert!(
            matches!(&err, CloudError::Permanent { message } if message.contains("max_batch")),
            "{err}"
        );
    }
    let imageless = connect(
        Ec2Config {
            image: None,
            ..config(&ec2.endpoint)
        },
        "ours",
    )
    .await;
    let err = imageless.create(&request("c", 1)).await.unwrap_err();
    assert!(
        matches!(&err, CloudError::Permanent { message } if message.contains("no image")),
        "{err}"
    );
    assert!(ec2.requests().is_empty());
}

#[tokio::test]
async fn an_iam_profile_arn_is_passed_as_an_arn() {
    let ec2 = FakeEc2::start(|r| run_instances(r, 1)).await;
    let arn = "arn:aws:iam::123456789012:instance-profile/flotilla-node";
    let set = connect(
        Ec2Config {
            iam_instance_profile: Some(arn.into()),
            ..config(&ec2.endpoint)
        },
        "ours",
    )
    .await;
    set.create(&request("c", 1)).await.unwrap();
    let run = &ec2.requests_of("RunInstances")[0];
    assert_eq!(run.param("IamInstanceProfile.Arn"), Some(arn));
    assert_eq!(run.param("IamInstanceProfile.Name"), None);
}

fn subnets(endpoint: &str) -> Ec2Config {
    Ec2Config {
        subnets: vec!["subnet-a".into(), "subnet-b".into(), "subnet-c".into()],
        ..config(endpoint)
    }
}

fn subnets_tried(ec2: &FakeEc2) -> Vec<String> {
    ec2.requests_of("RunInstances")
        .iter()
        .map(|r| r.param("SubnetId").unwrap_or("none").to_owned())
        .collect()
}

#[tokio::test]
async fn a_full_subnet_fails_over_to_the_next() {
    let ec2 = FakeEc2::start(|r| match r.param("SubnetId") {
        Some("subnet-a") => error(
            400,
            "InsufficientFreeAddressesInSubnet",
            "no free addresses",
        ),
        _ => run_instances(r, 1),
    })
    .await;
    let set = connect(subnets(&ec2.endpoint), "ours").await;
    assert_eq!(set.create(&request("c", 1)).await.unwrap().len(), 1);
    assert_eq!(subnets_tried(&ec2), ["subnet-a", "subnet-b"]);
}

#[tokio::test]
async fn capacity_and_missing_subnets_fail_over_in_order() {
    let ec2 = FakeEc2::start(|r| match r.param("SubnetId") {
        Some("subnet-a") => error(500, "InsufficientInstanceCapacity", "none in us-east-1a"),
        Some("subnet-b") => error(400, "InvalidSubnetID.NotFound", "no such subnet"),
        _ => run_instances(r, 1),
    })
    .await;
    let set = connect(subnets(&ec2.endpoint), "ours").await;
    assert_eq!(set.create(&request("c", 1)).await.unwrap().len(), 1);
    assert_eq!(subnets_tried(&ec2), ["subnet-a", "subnet-b", "subnet-c"]);
}

#[tokio::test]
async fn capacity_short_in_every_subnet_is_capacity() {
    let ec2 = FakeEc2::start(|r| match r.param("SubnetId") {
        Some("subnet-b") => error(400, "InvalidSubnetID.NotFound", "no such subnet"),
        _ => error(500, "InsufficientInstanceCapacity", "none here"),
    })
    .await;
    let set = connect(subnets(&ec2.endpoint), "ours").await;
    let err = set.create(&request("c", 1)).await.unwrap_err();
    assert!(
        matches!(&err, CloudError::InsufficientCapacity { scope: CapacityScope::InstanceType(t), .. } if t.as_str() == "t3.micro"),
        "{err:?}"
    );
    assert_eq!(subnets_tried(&ec2), ["subnet-a", "subnet-b", "subnet-c"]);
}

#[tokio::test]
async fn no_usable_subnet_is_permanent() {
    let ec2 = FakeEc2::start(|_| error(400, "InvalidSubnetID.NotFound", "no such subnet")).await;
    let set = connect(subnets(&ec2.endpoint), "ours").await;
    let err = set.create(&request("c", 1)).await.unwrap_err();
    assert!(
        matches!(&err, CloudError::Permanent { message } if message.contains("subnets")),
        "{err:?}"
    );
    assert_eq!(subnets_tried(&ec2).len(), 3);
}

#[tokio::test]
async fn every_subnet_full_is_a_shortage_of_every_type() {
    let ec2 = FakeEc2::start(|_| error(400, "InsufficientFreeAddressesInSubnet", "full")).await;
    let set = connect(subnets(&ec2.endpoint), "ours").await;
    let err = set.create(&request("c", 1)).await.unwrap_err();
    assert!(
        matches!(
            &err,
            CloudError::InsufficientCapacity {
                scope: CapacityScope::All,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(subnets_tried(&ec2).len(), 3);
}

#[tokio::test]
async fn other_errors_do_not_fail_over() {
    let ec2 = FakeEc2::start(|_| error(400, "VcpuLimitExceeded", "vCPU limit")).await;
    let set = connect(subnets(&ec2.endpoint), "ours").await;
    let err = set.create(&request("c", 1)).await.unwrap_err();
    assert!(matches!(err, CloudError::QuotaExceeded { .. }), "{err:?}");
    assert_eq!(subnets_tried(&ec2), ["subnet-a"]);
}

fn spot(endpoint: &str, fallback_on_demand: bool) -> Ec2Config {
    Ec2Config {
        spot: Some(SpotConfig {
            max_price: Some("0.05".into()),
            fallback_on_demand,
        }),
        capacity_memory: Duration::from_millis(500),
        ..config(endpoint)
    }
}

fn markets_tried(ec2: &FakeEc2) -> Vec<String> {
    ec2.requests_of("RunInstances")
        .iter()
        .map(|r| format!("{} {}", r.market(), r.param("InstanceType").unwrap_or("?")))
        .collect()
}

/// Spot capacity is short for t3.micro only.
async fn spot_short() -> FakeEc2 {
    FakeEc2::start(|r| match (r.market(), r.param("InstanceType")) {
        ("spot", Some("t3.micro")) => {
            error(500, "InsufficientInstanceCapacity", "no spot capacity")
        }
        _ => run_instances(r, 1),
    })
    .await
}

#[tokio::test]
async fn spot_asks_for_spot_at_the_max_price() {
    let ec2 = FakeEc2::start(|r| run_instances(r, 1)).await;
    let set = connect(spot(&ec2.endpoint, false), "ours").await;
    set.create(&request("c", 1)).await.unwrap();
    let run = &ec2.requests_of("RunInstances")[0];
    assert_eq!(run.param("InstanceMarketOptions.MarketType"), Some("spot"));
    assert_eq!(
        run.param("InstanceMarketOptions.SpotOptions.MaxPrice"),
        Some("0.05")
    );
    assert_eq!(
        run.param("InstanceMarketOptions.SpotOptions.SpotInstanceType"),
        Some("one-time")
    );
}

#[tokio::test]
async fn short_spot_capacity_falls_back_to_on_demand_and_is_remembered() {
    let ec2 = spot_short().await;
    let set = connect(spot(&ec2.endpoint, true), "ours").await;
    set.create(&request("c", 1))
        .await
        .expect("on-demand instead");
    assert_eq!(markets_tried(&ec2), ["spot t3.micro", "on-demand t3.micro"]);
    // Remembered: straight to on-demand.
    set.create(&request("c", 1)).await.unwrap();
    assert_eq!(markets_tried(&ec2)[2..], ["on-demand t3.micro"]);
    // Another type is not affected.
    let mut other = request("c", 1);
    other.instance_type = InstanceType::new("m5.large").unwrap();
    set.create(&other).await.unwrap();
    assert_eq!(markets_tried(&ec2)[3..], ["spot m5.large"]);
    // Forgotten after capacity_memory: spot is tried again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    set.create(&request("c", 1)).await.unwrap();
    assert_eq!(
        markets_tried(&ec2)[4..],
        ["spot t3.micro", "on-demand t3.micro"]
    );
}

#[tokio::test]
async fn short_spot_capacity_without_fallback_is_capacity_and_is_remembered() {
    let ec2 = spot_short().await;
    let set = connect(spot(&ec2.endpoint, false), "ours").await;
    for _ in 0..2 {
        let err = set.create(&request("c", 1)).await.unwrap_err();
        assert!(
            matches!(err, CloudError::InsufficientCapacity { .. }),
            "{err:?}"
        );
    }
    assert_eq!(
        markets_tried(&ec2),
        ["spot t3.micro"],
        "the second create made no call"
    );
}

#[tokio::test]
async fn short_on_demand_capacity_is_remembered_too() {
    let ec2 = FakeEc2::start(|_| error(500, "InsufficientInstanceCapacity", "none")).await;
    let set = connect(
        Ec2Config {
            capacity_memory: Duration::from_secs(60),
            ..config(&ec2.endpoint)
        },
        "ours",
    )
    .await;
    for _ in 0..2 {
        let err = set.create(&request("c", 1)).await.unwrap_err();
        assert!(
            matches!(err, CloudError::InsufficientCapacity { .. }),
            "{err:?}"
        );
    }
    assert_eq!(markets_tried(&ec2), ["on-demand t3.micro"]);
}

#[tokio::test]
async fn the_rate_limit_back_off_doubles_and_resets_on_success() {
    let throttled = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&throttled);
    let ec2 = FakeEc2::start(move |_| {
        if flag.load(Ordering::SeqCst) {
            error(503, "RequestLimitExceeded", "Request limit exceeded.")
        } else {
            describe_instances(&[])
        }
    })
    .await;
    let set = connect(config(&ec2.endpoint), "ours").await;
    let mut waits = Vec::new();
    for _ in 0..3 {
        match set.list(&Tags::new()).await {
            Err(CloudError::RateLimited { earliest_retry, .. }) => {
                let wait = earliest_retry - tokio::time::Instant::now();
                // Whole seconds, rounded up from what is left.
                waits.push(wait.as_secs_f64().ceil() as u64);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(waits, [1, 2, 4]);
    assert_eq!(set.rate_limit_backoff(), Some(Duration::from_secs(4)));
    throttled.store(false, Ordering::SeqCst);
    set.list(&Tags::new()).await.expect("list");
    assert_eq!(set.rate_limit_backoff(), None);
    throttled.store(true, Ordering::SeqCst);
    let err = set.list(&Tags::new()).await.unwrap_err();
    assert!(matches!(err, CloudError::RateLimited { .. }));
    assert_eq!(set.rate_limit_backoff(), Some(Duration::from_secs(1)));
}

/// An endpoint that describes `instances` whatever the filters, and
/// answers writes.
async fn describing(instances: Vec<FakeInstance>) -> FakeEc2 {
    FakeEc2::start(move |r| match r.action.as_str() {
        "DescribeInstances" => describe_instances(&instances),
        "TerminateInstances" => terminate_instances(r),
        "CreateTags" => create_tags(),
        _ => unexpected(r),
    })
    .await
}

const OURS: (&str, &str) = (TAG_INSTANCE_SET, "ours");
const THEIRS: (&str, &str) = (TAG_INSTANCE_SET, "theirs");

fn writes(ec2: &FakeEc2) -> Vec<String> {
    ec2.actions()
        .into_iter()
        .filter(|a| a != "DescribeInstances")
        .collect()
}

#[tokio::test]
async fn destroy_and_set_tags_refuse_instances_of_other_sets_and_untagged_ones() {
    for tags in [vec![THEIRS], vec![], vec![("Name", "hand-made")]] {
        let ec2 = describing(vec![FakeInstance::new("i-1", "running", &tags)]).await;
        let set = connect(config(&ec2.endpoint), "ours").await;
        let id = InstanceId::new("i-1");
        let err = set.destroy(&id).await.unwrap_err();
        assert!(
            matches!(&err, CloudError::Permanent { message } if message.contains("refusing")),
            "{err:?}"
        );
        let more = Tags::from([("hold".to_owned(), "yes".to_owned())]);
        let err = set.set_tags(&id, &more).await.unwrap_err();
        assert!(matches!(err, CloudError::Permanent { .. }), "{err:?}");
        assert!(writes(&ec2).is_empty(), "{:?}", ec2.actions());
        // The lookup is by ID, not by our tag, so a refusal can be told
        // from an instance that is gone.
        let describe = &ec2.requests_of("DescribeInstances")[0];
        assert_eq!(describe.filter("instance-id"), Some(vec!["i-1"]));
    }
}

#[tokio::test]
async fn destroy_terminates_our_instance() {
    let ec2 = describing(vec![FakeInstance::new("i-1", "running", &[OURS])]).await;
    let set = connect(config(&ec2.endpoint), "ours").await;
    set.destroy(&InstanceId::new("i-1")).await.unwrap();
    let terminate = ec2.requests_of("TerminateInstances");
    assert_eq!(terminate.len(), 1);
    assert_eq!(terminate[0].list("InstanceId"), ["i-1"]);
}

#[tokio::test]
async fn destroying_what_is_gone_or_going_is_success_without_a_write() {
    for instances in [
        vec![],
        vec![FakeInstance::new("i-1", "terminated", &[OURS])],
        vec![FakeInstance::new("i-1", "shutting-down", &[OURS])],
    ] {
        let ec2 = describing(instances).await;
        let set = connect(config(&ec2.endpoint), "ours").await;
        set.destroy(&InstanceId::new("i-1")).await.unwrap();
        assert!(writes(&ec2).is_empty(), "{:?}", ec2.actions());
    }
}

#[tokio::test]
async fn an_instance_gone_between_lookup_and_terminate_is_success() {
    let ec2 = FakeEc2::start(|r| match r.action.as_str() {
        "DescribeInstances" => describe_instances(&[FakeInstance::new("i-1", "running", &[OURS])]),
        _ => error(
            400,
            "InvalidInstanceID.NotFound",
            "The instance ID 'i-1' does not exist",
        ),
    })
    .await;
    let set = connect(config(&ec2.endpoint), "ours").await;
    set.destroy(&InstanceId::new("i-1")).await.unwrap();
    assert_eq!(writes(&ec2), ["TerminateInstances"]);
}

fn ids(names: &[&str]) -> Vec<InstanceId> {
    names.iter().map(|n| InstanceId::new(*n)).collect()
}

/// The instance IDs of each TerminateInstances call.
fn terminated(ec2: &FakeEc2) -> Vec<Vec<String>> {
    ec2.requests_of("TerminateInstances")
        .iter()
        .map(|r| {
            r.list("InstanceId")
                .into_iter()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn a_batch_destroy_is_one_lookup_and_one_terminate_of_our_live_instances() {
    let ec2 = describing(vec![
        FakeInstance::new("i-1", "running", &[OURS]),
        FakeInstance::new("i-2", "pending", &[OURS]),
        FakeInstance::new("i-3", "terminated", &[OURS]),
        FakeInstance::new("i-t", "running", &[THEIRS]),
    ])
    .await;
    let set = connect(config(&ec2.endpoint), "ours").await;
    let results = set
        .destroy_many(&ids(&["i-1", "i-t", "i-2", "i-3", "i-unknown"]))
        .await;
    assert!(
        matches!(
            &results[..],
            [Ok(()), Err(CloudError::Permanent { message }), Ok(()), Ok(()), Ok(())]
                if message.contains("i-t")
        ),
        "{results:?}"
    );
    assert_eq!(ec2.actions(), ["DescribeInstances", "TerminateInstances"]);
    let lookup = &ec2.requests_of("DescribeInstances")[0];
    assert_eq!(
        lookup.filter("instance-id").unwrap(),
        ["i-1", "i-t", "i-2", "i-3", "i-unknown"]
    );
    assert_eq!(terminated(&ec2), [["i-1", "i-2"]]);
}

#[tokio::test]
async fn a_batch_with_an_instance_gone_meanwhile_terminates_the_rest_one_by_one() {
    let ec2 = FakeEc2::start(|r| match r.action.as_str() {
        "DescribeInstances" => describe_instances(&[
            FakeInstance::new("i-1", "running", &[OURS]),
            FakeInstance::new("i-2", "running", &[OURS]),
        ]),
        // EC2 refuses the whole call for one unknown ID.
        "TerminateInstances" if r.list("InstanceId") == ["i-1"] => terminate_instances(r),
        _ => error(
            400,
            "InvalidInstanceID.NotFound",
            "The instance ID 'i-2' does not exist",
        ),
    })
    .await;
    let set = connect(config(&ec2.endpoint), "ours").await;
    let results = set.destroy_many(&ids(&["i-1", "i-2"])).await;
    assert!(matches!(&results[..], [Ok(()), Ok(())]), "{results:?}");
    assert_eq!(
        terminated(&ec2),
        [vec!["i-1", "i-2"], vec!["i-1"], vec!["i-2"]]
    );
}

#[tokio::test]
async fn a_refused_batch_terminate_fails_each_instance_it_held() {
    let ec2 = FakeEc2::start(|r| match r.action.as_str() {
        "DescribeInstances" => describe_instances(&[
            FakeInstance::new("i-1", "running", &[OURS]),
            FakeInstance::new("i-2", "running", &[OURS]),
            FakeInstance::new("i-3", "shutting-down", &[OURS]),
        ]),
        _ => error(400, "RequestLimitExceeded", "Request limit exceeded."),
    })
    .await;
    let set = connect(config(&ec2.endpoint), "ours").await;
    let results = set.destroy_many(&ids(&["i-1", "i-2", "i-3"])).await;
    assert!(
        matches!(
            &results[..],
            [
                Err(CloudError::RateLimited { .. }),
                Err(CloudError::RateLimited { .. }),
                Ok(())
            ]
        ),
        "{results:?}"
    );
    assert_eq!(
        terminated(&ec2),
        [["i-1", "i-2"]],
        "no retry into the limit"
    );
}

#[tokio::test]
async fn a_refused_terminate_says_which_permission_is_missing() {
    let ec2 = FakeEc2::start(|r| match r.action.as_str() {
        "DescribeInstances" => describe_instances(&[FakeInstance::new("i-1", "running", &[OURS])]),
        _ => error(
            403,
            "UnauthorizedOperation",
            "You are not authorized to perform this operation.",
        ),
    })
    .await;
    let set = connect(config(&ec2.endpoint), "ours").await;
    let err = set.destroy(&InstanceId::new("i-1")).await.unwrap_err();
    assert!(
        err.to_string().contains("allow ec2:TerminateInstances"),
        "{err}"
    );
}

#[tokio::test]
async fn set_tags_tags_our_instance_and_never_ownership_tags() {
    let ec2 = describing(vec![FakeInstance::new("i-1", "running", &[OURS])]).await;
    let set = connect(config(&ec2.endpoint), "ours").await;
    let id = InstanceId::new("i-1");
    for key in [TAG_INSTANCE_SET, TAG_CLUSTER, TAG_INSTANCE_TYPE] {
        let bad = Tags::from([(key.to_owned(), "x".to_owned())]);
        assert!(set.set_tags(&id, &bad).await.is_err());
    }
    assert!(ec2.requests().is_empty(), "refused before any call");
    let more = Tags::from([("hold".to_owned(), "yes".to_owned())]);
    set.set_tags(&id, &more).await.unwrap();
    let create = &ec2.requests_of("CreateTags")[0];
    assert_eq!(create.list("ResourceId"), ["i-1"]);
    assert_eq!(create.param("Tag.1.Key"), Some("hold"));
    assert_eq!(create.param("Tag.1.Value"), Some("yes"));
}

#[tokio::test]
async fn a_lax_endpoint_cannot_make_the_listing_show_others_or_the_dead() {
    let cluster_a = (TAG_CLUSTER, "a");
    let ec2 = describing(vec![
        FakeInstance::new("i-ours-running", "running", &[OURS, cluster_a]),
        FakeInstance::new("i-ours-pending", "pending", &[OURS, (TAG_CLUSTER, "b")]),
        FakeInstance::new("i-ours-stopped", "stopped", &[OURS, cluster_a]),
        FakeInstance::new("i-ours-terminated", "terminated", &[OURS, cluster_a]),
        FakeInstance::new("i-ours-shutting", "shutting-down", &[OURS, cluster_a]),
        FakeInstance::new("i-theirs", "running", &[THEIRS, cluster_a]),
        FakeInstance::new("i-untagged", "running", &[cluster_a]),
    ])
    .await;
    let set = connect(config(&ec2.endpoint), "ours").await;
    let ids = |list: Vec<flotilla_cloud::Instance>| -> Vec<String> {
        list.into_iter().map(|i| i.id.to_string()).collect()
    };
    assert_eq!(
        ids(set.list(&Tags::new()).await.unwrap()),
        ["i-ours-pending", "i-ours-running", "i-ours-stopped"]
    );
    let only_a = Tags::from([(TAG_CLUSTER.to_owned(), "a".to_owned())]);
    assert_eq!(
        ids(set.list(&only_a).await.unwrap()),
        ["i-ours-running", "i-ours-stopped"]
    );
    // And the filters asked EC2 for exactly that.
    let describe = &ec2.requests_of("DescribeInstances")[1];
    assert_eq!(
        describe.filter("tag:flotilla-instance-set"),
        Some(vec!["ours"])
    );
    assert_eq!(describe.filter("tag:flotilla-cluster"), Some(vec!["a"]));
    assert_eq!(
        describe.filter("instance-state-name"),
        Some(vec!["pending", "running", "stopping", "stopped"])
    );
    assert_eq!(describe.param("MaxResults"), Some("1000"));
}

#[tokio::test]
async fn the_public_address_is_used_when_configured() {
    let mut with_public = FakeInstance::new("i-1", "running", &[OURS]);
    with_public.public_ip = Some("203.0.113.7".to_owned());
    let without = FakeInstance::new("i-2", "pending", &[OURS]);
    let ec2 = describing(vec![with_public, without]).await;
    let address = |config: Ec2Config| async {
        let set = connect(config, "ours").await;
        let listed = set.list(&Tags::new()).await.unwrap();
        let mut addresses = Vec::new();
        for i in &listed {
            assert_eq!(set.address(i).await, i.address);
            addresses.push(i.address.clone());
        }
        addresses
    };
    assert_eq!(
        address(config(&ec2.endpoint)).await,
        [Some("10.0.0.1".to_owned()), Some("10.0.0.1".to_owned())]
    );
    assert_eq!(
        address(Ec2Config {
            address: flotilla_driver_ec2::AddressKind::Public,
            ..config(&ec2.endpoint)
        })
        .await,
        [Some("203.0.113.7".to_owned()), None]
    );
}

/// A node's health endpoint: `/healthz` answers 200, `/sick` 503.
async fn health_server() -> (u16, tokio::task::JoinHandle<()>) {
    use axum::http::StatusCode;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { StatusCode::OK }))
        .route(
            "/sick",
            axum::routing::get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, server)
}

/// Lists the set and probes every instance listed, by ID.
async fn probe_all(set: &flotilla_driver_ec2::Ec2InstanceSet) -> Vec<(String, Health)> {
    let mut health = Vec::new();
    for i in set.list(&Tags::new()).await.unwrap() {
        health.push((i.id.to_string(), set.probe(&i).await));
    }
    health
}

#[tokio::test]
async fn probe_needs_running_and_a_passing_health_check() {
    let (port, server) = health_server().await;
    let local = |id, state| {
        let mut i = FakeInstance::new(id, state, &[OURS]);
        i.private_ip = "127.0.0.1".to_owned();
        i
    };
    let ec2 = describing(vec![
        local("i-running", "running"),
        local("i-pending", "pending"),
    ])
    .await;
    let checked = |path: &str| Ec2Config {
        health_check: Some(HealthCheck {
            port,
            path: path.to_owned(),
        }),
        ..config(&ec2.endpoint)
    };
    let probes = |set: flotilla_driver_ec2::Ec2InstanceSet| async move { probe_all(&set).await };
    use Health::{NotReady, Ready};
    let healthy = connect(checked("/healthz"), "ours").await;
    assert_eq!(
        probes(healthy).await,
        [("i-pending".into(), NotReady), ("i-running".into(), Ready)]
    );
    let sick = connect(checked("/sick"), "ours").await;
    assert_eq!(
        probes(sick).await,
        [
            ("i-pending".into(), NotReady),
            ("i-running".into(), NotReady)
        ]
    );
    let unchecked = connect(config(&ec2.endpoint), "ours").await;
    assert_eq!(
        probes(unchecked).await,
        [("i-pending".into(), NotReady), ("i-running".into(), Ready)]
    );
    let calls_before = ec2.requests().len();
    server.abort();
    let _ = server.await;
    let down = connect(checked("/healthz"), "ours").await;
    let listed = down.list(&Tags::new()).await.unwrap();
    let running = listed
        .iter()
        .find(|i| i.id.as_str() == "i-running")
        .unwrap();
    assert_eq!(down.probe(running).await, NotReady, "nobody answers");
    // Probing asked EC2 nothing: only the listing did.
    assert_eq!(ec2.requests().len(), calls_before + 1);
}

fn pool(name: &str) -> PoolName {
    PoolName::new(name).unwrap()
}

fn for_pool(cluster: &str, name: &str) -> flotilla_cloud::CreateRequest {
    flotilla_cloud::CreateRequest {
        pool: pool(name),
        ..request(cluster, 1)
    }
}

/// A driver that launches spot into subnet-a with sg-driver, and a pool
/// that launches on-demand into subnet-p with its own groups, key and role.
fn driver_and_pool(endpoint: &str) -> Ec2Config {
    let options: Ec2PoolOptions = toml::from_str(
        r#"
        spot = false
        subnets = ["subnet-p"]
        security_groups = ["sg-pool"]
        key_name = "pool-key"
        iam_instance_profile = "pool-role"
        "#,
    )
    .unwrap();
    Ec2Config {
        subnets: vec!["subnet-a".into()],
        security_groups: vec!["sg-driver".into()],
        key_name: Some("driver-key".into()),
        spot: Some(SpotConfig::default()),
        pools: [(pool("own"), options)].into(),
        ..config(endpoint)
    }
}

#[tokio::test]
async fn a_pools_launch_settings_replace_the_drivers() {
    let ec2 = FakeEc2::start(|r| run_instances(r, 1)).await;
    let set = connect(driver_and_pool(&ec2.endpoint), "ours").await;
    set.create(&for_pool("c", "own")).await.unwrap();
    // A pool without options of its own gets the driver's.
    set.create(&for_pool("c", "plain")).await.unwrap();
    let runs = ec2.requests_of("RunInstances");
    let (own, plain) = (&runs[0], &runs[1]);
    assert_eq!(own.param("SubnetId"), Some("subnet-p"));
    assert_eq!(own.list("SecurityGroupId"), ["sg-pool"]);
    assert_eq!(own.param("KeyName"), Some("pool-key"));
    assert_eq!(own.param("IamInstanceProfile.Name"), Some("pool-role"));
    assert_eq!(own.market(), "on-demand");
    assert_eq!(
        own.tag_spec("instance").get(TAG_POOL).map(String::as_str),
        Some("own")
    );
    assert_eq!(plain.param("SubnetId"), Some("subnet-a"));
    assert_eq!(plain.list("SecurityGroupId"), ["sg-driver"]);
    assert_eq!(plain.param("KeyName"), Some("driver-key"));
    assert_eq!(plain.param("IamInstanceProfile.Name"), None);
    assert_eq!(plain.market(), "spot");
    assert_eq!(
        plain.tag_spec("instance").get(TAG_POOL).map(String::as_str),
        Some("plain")
    );
}

#[tokio::test]
async fn spot_shortages_are_remembered_per_type_and_market_across_pools() {
    let ec2 = spot_short().await;
    let spot_only: Ec2PoolOptions = toml::from_str("spot = {}").unwrap();
    let with_fallback: Ec2PoolOptions =
        toml::from_str("spot = { fallback_on_demand = true }").unwrap();
    let set = connect(
        Ec2Config {
            capacity_memory: Duration::from_secs(60),
            pools: [
                (pool("spot-only"), spot_only),
                (pool("fallback"), with_fallback),
            ]
            .into(),
            ..config(&ec2.endpoint)
        },
        "ours",
    )
    .await;
    let err = set.create(&for_pool("c", "spot-only")).await.unwrap_err();
    assert!(
        matches!(err, CloudError::InsufficientCapacity { .. }),
        "{err:?}"
    );
    // The other spot pool knows spot t3.micro is short: straight to
    // on-demand, which the driver's own (on-demand) pool uses too.
    set.create(&for_pool("c", "fallback")).await.unwrap();
    set.create(&for_pool("c", "plain")).await.unwrap();
    assert_eq!(
        markets_tried(&ec2),
        ["spot t3.micro", "on-demand t3.micro", "on-demand t3.micro"]
    );
}

#[tokio::test]
async fn the_probe_uses_the_health_check_of_the_instances_pool() {
    let (port, server) = health_server().await;
    let node = |id, pool_name: &'static str| {
        let mut i = FakeInstance::new(id, "running", &[OURS, (TAG_POOL, pool_name)]);
        i.private_ip = "127.0.0.1".to_owned();
        i
    };
    let mut untagged = FakeInstance::new("i-untagged", "running", &[OURS]);
    untagged.private_ip = "127.0.0.1".to_owned();
    let ec2 = describing(vec![
        node("i-sick", "sick"),
        node("i-unchecked", "unchecked"),
        node("i-plain", "plain"),
        untagged,
    ])
    .await;
    let sick: Ec2PoolOptions = toml::from_str(&format!(
        "health_check = {{ port = {port}, path = \"/sick\" }}"
    ))
    .unwrap();
    let unchecked: Ec2PoolOptions = toml::from_str("health_check = false").unwrap();
    let set = connect(
        Ec2Config {
            health_check: Some(HealthCheck {
                port,
                path: "/healthz".into(),
            }),
            pools: [(pool("sick"), sick), (pool("unchecked"), unchecked)].into(),
            ..config(&ec2.endpoint)
        },
        "ours",
    )
    .await;
    use Health::{NotReady, Ready};
    assert_eq!(
        probe_all(&set).await,
        [
            ("i-plain".into(), Ready),
            ("i-sick".into(), NotReady),
            ("i-unchecked".into(), Ready),
            ("i-untagged".into(), Ready),
        ]
    );
    // Without a server, only the instance whose pool checks nothing is
    // ready: the others are checked, by their pool's check or the driver's.
    server.abort();
    let _ = server.await;
    assert_eq!(
        probe_all(&set).await,
        [
            ("i-plain".into(), NotReady),
            ("i-sick".into(), NotReady),
            ("i-unchecked".into(), Ready),
            ("i-untagged".into(), NotReady),
        ]
    );
}

#[tokio::test]
async fn user_data_over_ec2s_limit_is_refused_without_a_call() {
    let ec2 = FakeEc2::start(unexpected).await;
    let set = connect(config(&ec2.endpoint), "ours").await;
    let mut big = request("c", 1);
    // Under the limit as written; the identity preamble takes it over.
    big.init_data = Some(format!(
        "#!/bin/sh\n{}",
        "x".repeat(flotilla_driver_ec2::user_data::MAX_USER_DATA - 20)
    ));
    let err = set.create(&big).await.unwrap_err();
    assert!(
        matches!(&err, CloudError::Permanent { message } if message.contains("16384")),
        "{err}"
    );
    assert!(ec2.requests().is_empty());
}
