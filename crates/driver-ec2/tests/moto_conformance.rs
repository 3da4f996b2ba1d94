//! The driver conformance suite on the ec2 driver, against moto's EC2
//! server: two instance sets with different IDs on one server.

mod support;

use std::sync::Arc;
use std::time::Duration;

use flotilla_cloud::conformance::Harness;
use support::moto::Moto;
use support::{config, instance_type, open};

async fn harness() -> Harness {
    let moto = tokio::task::spawn_blocking(Moto::start)
        .await
        .expect("start moto");
    let config = config(&moto.endpoint);
    Harness {
        ours: Arc::new(open(config.clone(), "ours").await),
        theirs: Arc::new(open(config, "theirs").await),
        instance_type: instance_type(),
        // moto changes states at once; this is for a busy machine.
        settle: Duration::from_secs(10),
        guard: Box::new(moto),
    }
}

flotilla_cloud::conformance_tests!(harness);
