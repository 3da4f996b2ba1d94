//! Pools written through the API: checked against their driver's schema
//! and refused whole with every problem, versioned, used by deploys,
//! retired only when unused, and changed by admins and their owners only.

mod common;

use axum::http::{Method, StatusCode};
use common::{empty_request, json_request, TestApi};
use flotilla_store::ChangeFeed;
use serde_json::{json, Value};

fn gpu() -> Value {
    json!({"driver": "fake", "instance_type": "fake.gpu", "price_per_hour": "0.50",
           "description": "for the physics lab", "owners": ["olga"], "init_data": "echo secret"})
}

/// Every problem of a document at once, each at its JSON pointer, and
/// nothing stored.
#[tokio::test]
async fn a_bad_pool_is_refused_whole_with_every_problem() {
    let api = TestApi::start().await;
    let before = api.store.last_change().await.unwrap();
    let reply = api
        .put_json(
            "/api/v1/pools/gpu",
            &json!({"driver": "fake", "instance_type": "a b", "allow_exec": "yes",
                    "colour": "red", "ec2": {"subnets": []}}),
        )
        .await;
    reply.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_pool");
    let problems = reply.json()["problems"].clone();
    let pointers: Vec<&str> = problems
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pointer"].as_str().unwrap())
        .collect();
    for pointer in ["/ec2", "/instance_type", "/allow_exec", "/colour"] {
        assert!(pointers.contains(&pointer), "{pointer}: {problems}");
    }
    // What a schema cannot say is checked too.
    let reply = api
        .put_json(
            "/api/v1/pools/gpu",
            &json!({"driver": "fake", "instance_type": "x", "price_per_hour": "ten",
                    "owners": ["org:"], "tags": {"flotilla-cluster": "x"}}),
        )
        .await;
    reply.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_pool");
    assert_eq!(
        reply.json()["problems"].as_array().unwrap().len(),
        3,
        "{}",
        reply.text()
    );
    let reply = api
        .put_json(
            "/api/v1/pools/gpu",
            &json!({"driver": "elsewhere", "instance_type": "x"}),
        )
        .await;
    let message = reply.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_pool");
    assert!(
        message.contains("no driver named \"elsewhere\""),
        "{message}"
    );
    assert_eq!(
        api.store.last_change().await.unwrap(),
        before,
        "nothing written"
    );
    assert_eq!(
        api.get("/api/v1/pools/gpu").await.status,
        StatusCode::NOT_FOUND
    );
}

/// Created, used by a deploy, changed, refused retirement while in use,
/// retired once unused, with every version in its history.
#[tokio::test]
async fn a_pool_is_applied_used_changed_and_retired() {
    let api = TestApi::start().await;
    let dry = api.put_json("/api/v1/pools/gpu?dry_run=true", &gpu()).await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.text());
    assert_eq!(dry.json()["outcome"], "created");
    assert_eq!(dry.json()["dry_run"], true);
    assert_eq!(
        api.get("/api/v1/pools/gpu").await.status,
        StatusCode::NOT_FOUND,
        "a dry run writes nothing"
    );

    let applied = api.put_json("/api/v1/pools/gpu", &gpu()).await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.text());
    let body = applied.json();
    assert_eq!(
        (body["outcome"].as_str(), body["pool"]["version"].as_u64()),
        (Some("created"), Some(1))
    );
    assert_eq!(body["pool"]["source"], "api");
    assert_eq!(
        body["pool"]["document"]["description"],
        "for the physics lab"
    );
    // An edit from an old copy is refused, and changes nothing.
    let mut stale = gpu();
    stale["description"] = json!("from an old copy");
    api.put_json("/api/v1/pools/gpu?expected_version=0", &stale)
        .await
        .expect_error(StatusCode::CONFLICT, "pool_changed");
    api.put_json(
        "/api/v1/shared-configs/none?expected_version=3",
        &json!({"value": "x"}),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "shared_config_changed");
    // The same again changes nothing.
    let again = api.put_json("/api/v1/pools/gpu", &gpu()).await.json();
    assert_eq!(
        (again["outcome"].as_str(), again["pool"]["version"].as_u64()),
        (Some("unchanged"), Some(1))
    );

    let listed = api.get("/api/v1/pools").await.json();
    let gpu_listed = listed["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "gpu")
        .cloned()
        .expect("listed");
    assert_eq!(gpu_listed["price_per_hour"], "0.50");
    assert_eq!(gpu_listed["source"], "api");

    let s = api
        .deploy(
            "lab",
            &json!({"node_capacity": 2, "time_to_live": 3600, "pool": "gpu"}),
            true,
        )
        .await;
    assert_eq!(s["state"], "running", "{s}");
    assert!(
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["instance_type"] == "fake.gpu"),
        "{s}"
    );

    let mut changed = gpu();
    changed["description"] = json!("for the physics lab, and chemistry");
    let reply = api.put_json("/api/v1/pools/gpu", &changed).await.json();
    assert_eq!(reply["outcome"], "changed");
    assert_eq!(reply["changed_fields"], json!(["description"]));
    assert_eq!(reply["pool"]["clusters"], json!(["lab"]));

    let refused = api.delete("/api/v1/pools/gpu").await;
    let message = refused.expect_error(StatusCode::CONFLICT, "pool_in_use");
    assert!(message.contains("lab"), "{message}");

    api.send(empty_request(
        Method::DELETE,
        "/api/v1/clusters/lab?wait=true",
    ))
    .await;
    let retired = api.delete("/api/v1/pools/gpu").await;
    assert_eq!(retired.status, StatusCode::OK, "{}", retired.text());
    assert_eq!(
        (
            retired.json()["version"].as_u64(),
            retired.json()["retired"].as_bool()
        ),
        (Some(3), Some(true))
    );
    assert_eq!(
        api.get("/api/v1/pools/gpu").await.status,
        StatusCode::NOT_FOUND
    );
    let reply = api
        .put_json(
            "/api/v1/clusters/again",
            &json!({"node_capacity": 1, "time_to_live": 3600, "pool": "gpu"}),
        )
        .await;
    reply.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "unknown_pool");

    let history = api.get("/api/v1/pools/gpu/history").await.json();
    let versions: Vec<(u64, bool)> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["retired"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(versions, [(1, false), (2, false), (3, true)]);
    // The feed says so too.
    let events = api.get("/api/v1/events").await.json();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str().filter(|k| k.starts_with("pool.")))
        .collect();
    assert_eq!(kinds, ["pool.applied", "pool.applied", "pool.retired"]);
}

/// The config file's pools are its own; admins and a pool's owners write
/// a pool, nobody else; reading needs an account.
#[tokio::test]
async fn who_may_write_and_read_pools() {
    let api = TestApi::start().await;
    let reply = api.put_json("/api/v1/pools/default", &gpu()).await;
    reply.expect_error(StatusCode::CONFLICT, "pool_in_config");
    api.delete("/api/v1/pools/default")
        .await
        .expect_error(StatusCode::CONFLICT, "pool_in_config");
    let history = api.get("/api/v1/pools/default/history").await.json();
    assert_eq!(history["versions"], json!([]));
    assert_eq!(
        api.get("/api/v1/pools/default").await.json()["source"],
        "config"
    );

    let olga = api.user_token("olga", "org_member").await;
    let bob = api.user_token("bob", "org_member").await;
    // Nobody but an admin creates a pool.
    let reply = api
        .send_as(
            &olga,
            json_request(Method::PUT, "/api/v1/pools/gpu", &gpu()),
        )
        .await;
    reply.expect_error(StatusCode::FORBIDDEN, "pool_not_owned");
    assert_eq!(
        api.put_json("/api/v1/pools/gpu", &gpu()).await.status,
        StatusCode::OK
    );
    // Its owner changes what owners may; not what reaches beyond the
    // pool (what its nodes run, its price, its owners, ...).
    let mut escalated = gpu();
    escalated["allow_workload"] = json!(true);
    escalated["price_per_hour"] = json!("0");
    let reply = api
        .send_as(
            &olga,
            json_request(Method::PUT, "/api/v1/pools/gpu", &escalated),
        )
        .await;
    let message = reply.expect_error(StatusCode::FORBIDDEN, "pool_field_admin_only");
    assert!(
        message.contains("allow_workload, price_per_hour"),
        "{message}"
    );
    let mut changed = gpu();
    changed["description"] = json!("for the physics lab, owned by olga");
    let reply = api
        .send_as(
            &olga,
            json_request(Method::PUT, "/api/v1/pools/gpu", &changed),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["pool"]["updated_by"], "olga");
    let reply = api
        .send_as(&bob, json_request(Method::PUT, "/api/v1/pools/gpu", &gpu()))
        .await;
    let message = reply.expect_error(StatusCode::FORBIDDEN, "pool_not_owned");
    assert!(message.contains("olga"), "{message}");
    let reply = api
        .send_as(&bob, empty_request(Method::DELETE, "/api/v1/pools/gpu"))
        .await;
    reply.expect_error(StatusCode::FORBIDDEN, "pool_not_owned");
    // Anyone with an account reads it; nobody without.
    let reply = api
        .send_as(&bob, empty_request(Method::GET, "/api/v1/pools/gpu"))
        .await;
    assert_eq!(
        reply.json()["document"]["description"],
        "for the physics lab, owned by olga"
    );
    // What its nodes run is for admins and its owners.
    assert_eq!(reply.json()["hidden"], json!(["init_data"]));
    assert!(reply.json()["document"].get("init_data").is_none());
    let reply = api
        .send_as(&olga, empty_request(Method::GET, "/api/v1/pools/gpu"))
        .await;
    assert_eq!(reply.json()["document"]["init_data"], "echo secret");
    assert!(reply.json().get("hidden").is_none());
    let reply = api
        .send_anonymous(empty_request(Method::GET, "/api/v1/pools/gpu"))
        .await;
    reply.expect_error(StatusCode::UNAUTHORIZED, "not_authenticated");
}

/// The schemas are published, one per configured driver.
#[tokio::test]
async fn schemas_are_published_per_driver() {
    let api = TestApi::start().await;
    let index = api
        .send_anonymous(empty_request(Method::GET, "/api/v1/schemas"))
        .await
        .json();
    assert_eq!(
        index,
        json!({"drivers": [{"driver": "fake", "type": "fake", "pool": "/api/v1/schemas/fake/pool",
                            "shared": {"images": "/api/v1/schemas/fake/shared/images"}}]})
    );
    let schema = api.get("/api/v1/schemas/fake/pool").await.json();
    assert_eq!(schema["properties"]["driver"]["const"], "fake");
    assert_eq!(schema["required"], json!(["driver"]));
    assert_eq!(
        schema["oneOf"],
        json!([{"required": ["instance_type"]}, {"required": ["instance_types"]}])
    );
    let images = api.get("/api/v1/schemas/fake/shared/images").await.json();
    assert_eq!(images["title"], "images", "{images}");
    api.get("/api/v1/schemas/fake/shared/nothing")
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_schema");
    api.get("/api/v1/schemas/nimbus/pool")
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_driver");
}

/// A shared config follows the schema it was created with, keeps every
/// version, and a pool naming it launches with its latest version's image;
/// a pool naming what it does not give is refused, and a version that
/// drops the pool's key leaves the cluster waiting, saying why.
#[tokio::test]
async fn a_pool_takes_its_image_from_a_shared_config() {
    let api = TestApi::start().await;
    let put = |value: Value| json!({"schema": "fake/images", "value": value});
    // Not following the schema: every problem, nothing stored.
    let reply = api
        .put_json("/api/v1/shared-configs/base", &put(json!({"west": 7})))
        .await;
    reply.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_shared_config");
    assert!(reply.json()["problems"][0]["pointer"]
        .as_str()
        .unwrap()
        .starts_with("/value"));
    let reply = api
        .put_json(
            "/api/v1/shared-configs/base",
            &json!({"value": {"west": "img-1"}}),
        )
        .await;
    let message = reply.expect_error(StatusCode::NOT_FOUND, "unknown_shared_config");
    assert!(message.contains("naming the schema"), "{message}");
    let reply = api
        .put_json(
            "/api/v1/shared-configs/base",
            &json!({"schema": "fake/nothing", "value": "x"}),
        )
        .await;
    let message = reply.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_shared_config");
    assert!(message.contains("fake/images"), "{message}");
    api.get("/api/v1/shared-configs/base")
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_shared_config");

    let v1 = api
        .put_json(
            "/api/v1/shared-configs/base",
            &put(json!({"west": "img-1", "east": "img-e"})),
        )
        .await;
    assert_eq!(v1.status, StatusCode::OK, "{}", v1.text());
    assert_eq!(v1.json()["version"], 1);

    // A pool naming a key it does not give is refused.
    let pool = |key: &str| {
        json!({"driver": "fake", "instance_type": "fake.small",
               "image": {"shared": "base", "key": key}})
    };
    let reply = api.put_json("/api/v1/pools/imaged", &pool("north")).await;
    reply.expect_error(StatusCode::CONFLICT, "pool_image_unresolved");
    assert_eq!(reply.json()["problems"][0]["pointer"], "/image");
    let reply = api
        .put_json(
            "/api/v1/pools/imaged",
            &json!({"driver": "fake", "instance_type": "x", "image": {"shared": "nope"}}),
        )
        .await;
    reply.expect_error(StatusCode::CONFLICT, "pool_image_unresolved");
    let reply = api.put_json("/api/v1/pools/imaged", &pool("west")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["pool"]["image"], "img-1");
    assert_eq!(
        reply.json()["pool"]["image_from"],
        json!({"shared_config": "base", "version": 1})
    );

    let s = api
        .deploy(
            "web",
            &json!({"node_capacity": 1, "time_to_live": 3600, "pool": "imaged"}),
            true,
        )
        .await;
    assert_eq!(s["state"], "running", "{s}");
    // A new version: the next node launches with it.
    let v2 = api
        .put_json(
            "/api/v1/shared-configs/base",
            &json!({"value": {"west": "img-2"}}),
        )
        .await;
    assert_eq!(v2.json()["version"], 2, "{}", v2.text());
    assert_eq!(v2.json()["used_by"], json!(["imaged"]));
    // Its node, made from img-1, is outdated: replaced by one from img-2.
    let mut rolled = false;
    for _ in 0..200 {
        let s = api.status("web").await;
        let nodes = s["nodes"].as_array().unwrap();
        if s.get("rollout").is_none()
            && nodes.len() == 1
            && nodes[0]["state"] == "ready"
            && nodes[0].get("outdated").is_none()
        {
            rolled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(rolled, "{}", api.status("web").await);
    api.deploy(
        "web",
        &json!({"node_capacity": 2, "time_to_live": 3600}),
        true,
    )
    .await;
    let images: Vec<Option<String>> = api
        .cloud
        .create_log()
        .into_iter()
        .filter(|c| c.cluster == "web")
        .map(|c| c.image)
        .collect();
    assert_eq!(
        images,
        [
            Some("img-1".to_owned()),
            Some("img-2".to_owned()),
            Some("img-2".to_owned())
        ]
    );
    // Its schema is fixed.
    let reply = api
        .put_json(
            "/api/v1/shared-configs/base",
            &json!({"schema": "fake/other", "value": "x"}),
        )
        .await;
    reply.expect_error(StatusCode::CONFLICT, "shared_config_schema_fixed");
    // Every version is kept.
    let v1 = api
        .get("/api/v1/shared-configs/base?version=1")
        .await
        .json();
    assert_eq!(v1["value"], json!({"west": "img-1", "east": "img-e"}));
    assert_eq!(
        (v1["version"].as_u64(), v1["latest"].as_u64()),
        (Some(1), Some(2))
    );

    // A version without the pool's key: the cluster waits, and says why.
    api.put_json(
        "/api/v1/shared-configs/base",
        &json!({"value": {"east": "img-e"}}),
    )
    .await;
    api.deploy(
        "web",
        &json!({"node_capacity": 3, "time_to_live": 3600}),
        false,
    )
    .await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let s = api.status("web").await;
        if s["error"]["code"] == "shared_config_unresolved" {
            assert!(
                s["error"]["message"].as_str().unwrap().contains("west"),
                "{s}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pool = api.get("/api/v1/pools/imaged").await.json();
    assert!(
        pool["image_problem"].as_str().unwrap().contains("west"),
        "{pool}"
    );
    let list = api.get("/api/v1/shared-configs").await.json();
    assert_eq!(list["shared_configs"][0]["version"], 3);
}

/// A pool's change outdates its clusters' nodes: a dry run says which it
/// would replace, status marks them, and the rollout is shown, paused and
/// resumed through the API, by admins and the pool's owners only.
#[tokio::test]
async fn a_rollout_is_shown_paused_and_resumed() {
    let api = TestApi::start().await;
    let web = |init: &str| {
        json!({"driver": "fake", "instance_type": "fake.small", "init_data": init,
               "owners": ["olga"], "rollout": {"max_surge": 1}})
    };
    let reply = api.put_json("/api/v1/pools/web", &web("v1")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let v1 = reply.json()["launch_version"].as_str().unwrap().to_owned();
    let s = api
        .deploy(
            "site",
            &json!({"node_capacity": 2, "time_to_live": 3600, "pool": "web"}),
            true,
        )
        .await;
    assert_eq!(s["state"], "running", "{s}");
    assert!(s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["pool_version"] == v1.as_str()));
    assert!(s.get("rollout").is_none(), "{s}");

    // The owner pauses first, so the change replaces nothing yet.
    let olga = api.user_token("olga", "org_member").await;
    let bob = api.user_token("bob", "org_member").await;
    let reply = api
        .send_as(
            &bob,
            empty_request(Method::POST, "/api/v1/pools/web/rollout/pause"),
        )
        .await;
    reply.expect_error(StatusCode::FORBIDDEN, "pool_not_owned");
    let reply = api
        .send_as(
            &olga,
            empty_request(Method::POST, "/api/v1/pools/web/rollout/pause"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["state"], "paused");
    assert_eq!(reply.json()["paused"]["by"], "olga");

    let dry = api
        .put_json("/api/v1/pools/web?dry_run=true", &web("v2"))
        .await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.text());
    let replaces = &dry.json()["replaces"];
    assert_eq!(replaces[0]["cluster"], "site", "{}", dry.text());
    assert_eq!(replaces[0]["outdated"].as_array().unwrap().len(), 2);
    let v2 = dry.json()["launch_version"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    // A change outside the launch configuration replaces nothing.
    let mut described = web("v1");
    described["description"] = json!("the web site's nodes");
    let dry = api
        .put_json("/api/v1/pools/web?dry_run=true", &described)
        .await;
    assert!(dry.json().get("replaces").is_none(), "{}", dry.text());

    api.put_json("/api/v1/pools/web", &web("v2")).await;
    let s = api.status("site").await;
    assert_eq!(s["rollout"]["state"], "paused", "{s}");
    assert_eq!(s["rollout"]["outdated"], 2);
    assert_eq!(s["rollout"]["pool_version"], v2.as_str());
    assert!(s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["outdated"] == true));
    let r = api.get("/api/v1/pools/web/rollout").await.json();
    assert_eq!(r["state"], "paused");
    assert_eq!(r["outdated"], 2);
    assert_eq!(r["max_surge"], "1");
    assert_eq!(r["clusters"][0]["cluster"], "site");

    let reply = api
        .send_as(
            &olga,
            empty_request(Method::POST, "/api/v1/pools/web/rollout/resume"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.json().get("paused").is_none());
    let mut rolled = false;
    for _ in 0..400 {
        let s = api.status("site").await;
        let nodes = s["nodes"].as_array().unwrap().clone();
        if s.get("rollout").is_none()
            && nodes.len() == 2
            && nodes
                .iter()
                .all(|n| n["state"] == "ready" && n["pool_version"] == v2.as_str())
        {
            rolled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(rolled, "{}", api.status("site").await);
    assert_eq!(
        api.get("/api/v1/pools/web/rollout").await.json()["state"],
        "idle"
    );
    api.get("/api/v1/pools/nope/rollout")
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_pool");
}
