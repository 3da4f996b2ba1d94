use std::sync::Arc;
use std::time::Duration;

use flotilla_cloud::conformance::Harness;
use flotilla_cloud::fake::{FakeCloud, FakeConfig};
use flotilla_domain::InstanceType;

async fn harness() -> Harness {
    let cloud = FakeCloud::new(FakeConfig {
        boot_delay: Duration::from_millis(100),
        destroy_delay: Duration::from_millis(100),
        ..FakeConfig::default()
    });
    Harness {
        ours: Arc::new(cloud.instance_set("ours")),
        theirs: Arc::new(cloud.instance_set("theirs")),
        instance_type: InstanceType::new("fake.small").unwrap(),
        settle: Duration::from_secs(5),
        guard: Box::new(()),
    }
}

flotilla_cloud::conformance_tests!(harness);
