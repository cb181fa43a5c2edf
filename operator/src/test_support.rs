//! Fixtures for unit tests: the checked-in examples, as the API server would hand them over.

use std::path::PathBuf;

use crate::crd::ScaledApp;
use crate::validate::{ValidatedApp, validate};

/// Path of `examples/<name>.yaml`.
pub fn example_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(format!("{name}.yaml"))
}

/// `examples/<name>.yaml` with the metadata a cluster would add.
pub fn example(name: &str) -> ScaledApp {
    let text = std::fs::read_to_string(example_path(name)).expect("example exists");
    let mut app: ScaledApp = serde_yaml::from_str(&text).expect("example parses");
    app.metadata.namespace = Some("default".into());
    app.metadata.uid = Some(format!("uid-{name}"));
    app.metadata.generation = Some(1);
    app
}

/// `examples/<name>.yaml`, validated.
pub fn validated_example(name: &str) -> ValidatedApp {
    validate(&example(name)).expect("example is valid")
}
