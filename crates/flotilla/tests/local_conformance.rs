//! The driver conformance suite on the `local` driver, with real node
//! processes of this very binary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_cloud::conformance::Harness;
use flotilla_domain::{InstanceSetId, InstanceType};
use flotilla_driver_local::{LocalConfig, LocalInstanceSet};

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("temporary directory");
    let open = |id: &str| {
        let config = LocalConfig {
            dir: dir.path().to_owned(),
            node_program: PathBuf::from(env!("CARGO_BIN_EXE_flotilla")),
            grace: Duration::from_secs(2),
            max_batch: 3,
        };
        LocalInstanceSet::open(config, InstanceSetId::new(id).unwrap()).expect("open local driver")
    };
    Harness {
        ours: Arc::new(open("ours")),
        theirs: Arc::new(open("theirs")),
        instance_type: InstanceType::new("local.small").unwrap(),
        // Real processes on a possibly busy machine.
        settle: Duration::from_secs(20),
        // Removing the directory at the end fences off any node a failed
        // check left behind.
        guard: Box::new(dir),
    }
}

flotilla_cloud::conformance_tests!(harness);
