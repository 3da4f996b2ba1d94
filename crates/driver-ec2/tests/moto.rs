//! The ec2 driver against moto's EC2 server: what the conformance suite
//! does not cover. moto launches MinCount instances (so every create here
//! makes one), pages DescribeInstances by reservation, and never runs out
//! of capacity; see `scripted.rs` for those.

mod support;

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use flotilla_cloud::{CloudError, InstanceSet, Tags, TAG_CLUSTER, TAG_INSTANCE_SET, TAG_POOL};
use flotilla_domain::{InstanceId, InstanceType, PoolName};
use flotilla_driver_ec2::{load_sdk_config, Ec2Config, SpotConfig};
use support::moto::{Moto, AMI};
use support::{assert_rendered, config, credentials, open, request, POOL};

async fn moto() -> Moto {
    tokio::task::spawn_blocking(Moto::start)
        .await
        .expect("start moto")
}

fn pool(name: &str) -> PoolName {
    PoolName::new(name).unwrap()
}

/// A plain EC2 client on moto, to do what flotilla would not.
async fn raw_client(moto: &Moto) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&load_sdk_config(&config(&moto.endpoint), Some(credentials())).await)
}

async fn describe(client: &aws_sdk_ec2::Client, id: &str) -> aws_sdk_ec2::types::Instance {
    client
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap()
        .reservations()[0]
        .instances()[0]
        .clone()
}

fn tags_of(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_more_than_a_page() {
    let moto = moto().await;
    let set = open(
        Ec2Config {
            list_page_size: 100,
            ..config(&moto.endpoint)
        },
        "ours",
    )
    .await;
    // moto pages by reservation, and launches one instance per call here.
    for n in 0..120 {
        let cluster = if n % 2 == 0 { "even" } else { "odd" };
        set.create(&request(cluster, 1)).await.expect("create");
    }
    let before = set
        .api_calls()
        .get("DescribeInstances")
        .copied()
        .unwrap_or(0);
    let all = set.list(&Tags::new()).await.expect("list");
    assert_eq!(all.len(), 120);
    let pages = set.api_calls()["DescribeInstances"] - before;
    assert_eq!(pages, 2, "120 reservations in pages of 100");
    let odd = Tags::from([(TAG_CLUSTER.to_owned(), "odd".to_owned())]);
    assert_eq!(set.list(&odd).await.unwrap().len(), 60);
    // Terminated instances stay listed by moto, never by the driver.
    for i in all.iter().take(30) {
        set.destroy(&i.id).await.unwrap();
    }
    assert_eq!(set.list(&Tags::new()).await.unwrap().len(), 90);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_made_outside_flotilla_are_never_touched() {
    let moto = moto().await;
    let client = raw_client(&moto).await;
    let foreign = client
        .run_instances()
        .image_id(AMI)
        .instance_type("t3.micro".into())
        .min_count(1)
        .max_count(1)
        // Looks like ours in every way but the instance set.
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key(TAG_CLUSTER).value("c").build())
                .build(),
        )
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_owned();
    let set = open(config(&moto.endpoint), "ours").await;
    assert!(set.list(&Tags::new()).await.unwrap().is_empty());
    let id = InstanceId::new(&foreign);
    let err = set.destroy(&id).await.unwrap_err();
    assert!(matches!(err, CloudError::Permanent { .. }), "{err}");
    let more = Tags::from([("hold".to_owned(), "yes".to_owned())]);
    let err = set.set_tags(&id, &more).await.unwrap_err();
    assert!(matches!(err, CloudError::Permanent { .. }), "{err}");
    let still = describe(&client, &foreign).await;
    assert_eq!(still.state().unwrap().name().unwrap().as_str(), "running");
    assert!(!tags_of(still.tags()).contains_key("hold"));
    assert_eq!(set.api_calls().get("TerminateInstances"), None);
    let err = set.console(&id, None, 1024).await.unwrap_err();
    assert!(matches!(err, CloudError::Permanent { .. }), "{err}");
    assert_eq!(set.api_calls().get("GetConsoleOutput"), None);
}

/// A node's output is EC2's console output, decoded, read as a window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_output_is_decoded_and_windowed() {
    let moto = moto().await;
    let set = open(config(&moto.endpoint), "console").await;
    let made = set.create(&request("c", 1)).await.unwrap();
    let id = &made[0].id;
    let all = set.console(id, None, 1 << 20).await.unwrap().unwrap();
    assert!(!all.text.is_empty(), "moto's console output");
    assert_eq!((all.from, all.to), (0, all.text.len() as u64));
    let next = set
        .console(id, Some(all.to), 1 << 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((next.text.as_str(), next.from), ("", all.to));
    let tail = set.console(id, None, 5).await.unwrap().unwrap();
    assert_eq!(tail.text, all.text[all.text.len() - 5..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_tags_instance_and_volume_and_renders_user_data() {
    let moto = moto().await;
    let client = raw_client(&moto).await;
    let set = open(config(&moto.endpoint), "ours").await;
    let made = set.create(&request("tagged", 1)).await.unwrap();
    let id = made[0].id.as_str();
    let seen = describe(&client, id).await;
    let tags = tags_of(seen.tags());
    assert_eq!(tags.get(TAG_INSTANCE_SET).map(String::as_str), Some("ours"));
    assert_eq!(tags.get(TAG_CLUSTER).map(String::as_str), Some("tagged"));
    assert_eq!(tags.get(TAG_POOL).map(String::as_str), Some(POOL));
    assert_eq!(tags.get("team").map(String::as_str), Some("ops"));
    assert_eq!(made[0].address.as_deref(), seen.private_ip_address());
    let volumes = client
        .describe_volumes()
        .filters(
            Filter::builder()
                .name(format!("tag:{TAG_INSTANCE_SET}"))
                .values("ours")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(volumes.volumes().len(), 1, "the root volume is tagged");
    assert_eq!(
        tags_of(volumes.volumes()[0].tags())
            .get(TAG_CLUSTER)
            .map(String::as_str),
        Some("tagged")
    );
    let user_data = client
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    assert_rendered(
        user_data.user_data().unwrap().value().unwrap(),
        "tagged",
        "ours",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_subnet_fails_over_to_a_real_one() {
    let moto = moto().await;
    let client = raw_client(&moto).await;
    let subnets = client.describe_subnets().send().await.unwrap();
    let real = subnets.subnets()[0].subnet_id().unwrap().to_owned();
    let set = open(
        Ec2Config {
            subnets: vec!["subnet-0000000000000dead".into(), real.clone()],
            ..config(&moto.endpoint)
        },
        "ours",
    )
    .await;
    let made = set.create(&request("c", 1)).await.expect("create");
    assert_eq!(
        describe(&client, made[0].id.as_str()).await.subnet_id(),
        Some(real.as_str())
    );
    assert_eq!(set.api_calls()["RunInstances"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_instances_are_spot_unless_their_pool_says_not() {
    let moto = moto().await;
    let client = raw_client(&moto).await;
    let set = open(
        Ec2Config {
            spot: Some(SpotConfig {
                max_price: Some("0.05".into()),
                fallback_on_demand: true,
            }),
            pools: [(pool("steady"), toml::from_str("spot = false").unwrap())].into(),
            ..config(&moto.endpoint)
        },
        "ours",
    )
    .await;
    let made = set.create(&request("c", 1)).await.unwrap();
    let seen = describe(&client, made[0].id.as_str()).await;
    assert_eq!(seen.instance_lifecycle().map(|l| l.as_str()), Some("spot"));
    // A pool that says spot = false launches on-demand on the same driver.
    let steady = flotilla_cloud::CreateRequest {
        pool: pool("steady"),
        ..request("c", 1)
    };
    let made = set.create(&steady).await.unwrap();
    let seen = describe(&client, made[0].id.as_str()).await;
    assert_eq!(seen.instance_lifecycle(), None, "on-demand");
    assert_eq!(
        tags_of(seen.tags()).get(TAG_POOL).map(String::as_str),
        Some("steady")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_census_counts_every_instance_set() {
    let moto = moto().await;
    let theirs = open(config(&moto.endpoint), "theirs").await;
    for _ in 0..2 {
        theirs.create(&request("c", 1)).await.unwrap();
    }
    let ours = open(config(&moto.endpoint), "ours").await;
    ours.create(&request("c", 1)).await.unwrap();
    let census = ours.census().await.unwrap();
    assert_eq!(
        census,
        BTreeMap::from([("ours".to_owned(), 1), ("theirs".to_owned(), 2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_and_spot_prices_are_known_and_cached() {
    let moto = moto().await;
    let set = open(
        Ec2Config {
            pools: [(pool("spot"), toml::from_str("spot = {}").unwrap())].into(),
            ..config(&moto.endpoint)
        },
        "ours",
    )
    .await;
    let t3 = InstanceType::new("t3.micro").unwrap();
    let shape = set.instance_shape(&t3).await.unwrap();
    assert_eq!((shape.vcpus, shape.memory_mib), (2, 1024));
    let price = set.spot_price(&t3).await.unwrap().expect("a spot price");
    assert!(price.usd_per_hour > 0.0, "{price:?}");
    assert!(
        price.availability_zone.starts_with("us-east-1"),
        "{price:?}"
    );
    set.instance_shape(&t3).await.unwrap();
    set.spot_price(&t3).await.unwrap();
    // What the engine asks: the shape, and the spot price for a spot pool
    // only; all from the cache.
    let on_demand = set.offering(&pool("plain"), &t3).await.unwrap();
    assert_eq!(on_demand.shape, Some(shape));
    assert_eq!(on_demand.spot_price, None);
    let spot = set.offering(&pool("spot"), &t3).await.unwrap();
    assert_eq!(spot.shape, Some(shape));
    assert_eq!(spot.spot_price, Some(price));
    let calls = set.api_calls();
    assert_eq!(calls["DescribeInstanceTypes"], 1);
    assert_eq!(calls["DescribeSpotPriceHistory"], 1);
    let err = set
        .instance_shape(&InstanceType::new("nope.large").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CloudError::Permanent { message } if message.contains("nope.large")),
        "{err}"
    );
}

/// A pool written while the server runs reaches the driver through
/// `configure_pool`: its next launch has the pool's settings, and once the
/// pool's section is gone, the driver's again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_configured_at_run_time_launches_with_its_settings() {
    let moto = moto().await;
    let client = raw_client(&moto).await;
    let set = open(
        Ec2Config {
            spot: Some(SpotConfig {
                max_price: Some("0.05".into()),
                fallback_on_demand: true,
            }),
            ..config(&moto.endpoint)
        },
        "ours",
    )
    .await;
    let late = flotilla_cloud::CreateRequest {
        pool: pool("late"),
        ..request("c", 1)
    };
    let made = set.create(&late).await.unwrap();
    let seen = describe(&client, made[0].id.as_str()).await;
    assert_eq!(
        seen.instance_lifecycle().map(|l| l.as_str()),
        Some("spot"),
        "the driver's"
    );

    set.configure_pool(&pool("late"), Some(&serde_json::json!({"spot": false})));
    let made = set.create(&late).await.unwrap();
    let seen = describe(&client, made[0].id.as_str()).await;
    assert_eq!(seen.instance_lifecycle(), None, "the pool's: on-demand");

    set.configure_pool(&pool("late"), None);
    let made = set.create(&late).await.unwrap();
    let seen = describe(&client, made[0].id.as_str()).await;
    assert_eq!(
        seen.instance_lifecycle().map(|l| l.as_str()),
        Some("spot"),
        "the driver's again"
    );
}
