//! Validation: the checks the API server's schema cannot make, turning a `ScaledApp` into a
//! [`ValidatedApp`] that rendering can trust. Pure: no client, no clock.
//!
//! An error here is permanent for the current spec: the reconciler reports it as `Ready=False`
//! with the error's reason and message and waits for the user to change the spec.

use kube::ResourceExt;
use scaled_contract::{ShardMap, ShardMapError};

use crate::crd::{MAX_NAME_LENGTH, ScaledApp, ScaledAppSpec};
use crate::session_rotation::SessionSecretPlan;
use crate::shards;

/// Most connections one Postgres primary is allowed to be asked for. Beyond this a primary
/// spends its memory on backends; the user should lower the pool or the replica bounds.
pub const MAX_CONNECTIONS_PER_PRIMARY: i64 = 5000;

/// What the operator fills in that a ScaledApp does not say.
#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    /// Image holding `scaled-instance`, which an init container copies into every Postgres pod:
    /// the operator's own image, so the instance manager always matches the operator.
    pub instance_image: String,
    /// The app image for ScaledApps that name none: the `scaled-app` image of the operator's
    /// own release.
    pub app_image: String,
    /// The namespace the operator's pods run in: the one namespace whose operator pods Redis
    /// admits (the queue reader), so a pod labelled as the operator elsewhere gets nothing.
    pub operator_namespace: String,
}

/// The chart's default release namespace.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "scaledapp-system";

/// Registry of the images built from this repository, until a release says otherwise.
pub const DEFAULT_REGISTRY: &str = "ghcr.io/scaled-dev";

impl Default for Defaults {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        Defaults {
            instance_image: format!("{DEFAULT_REGISTRY}/scaledapp-operator:{version}"),
            app_image: format!("{DEFAULT_REGISTRY}/scaled-app:{version}"),
            operator_namespace: DEFAULT_OPERATOR_NAMESPACE.to_string(),
        }
    }
}

/// A ScaledApp that passed validation, with everything rendering needs resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedApp {
    /// ScaledApp name.
    pub name: String,
    /// Namespace of the ScaledApp and all children.
    pub namespace: String,
    /// UID, for owner references.
    pub uid: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// The spec, defaults applied by the API server (or by serde when read from a file).
    pub spec: ScaledAppSpec,
    /// Slot assignment: the owning shard of each slot.
    pub shard_assignment: Vec<u32>,
    /// Number of shards (`database.shards`).
    pub shards: u32,
    /// Pods per shard: the primary and `database.replicasPerShard` replicas.
    pub pods_per_shard: u32,
    /// The shard map the app reads: the assignment with every shard's endpoints. Built once,
    /// here, so rendering cannot fail on it.
    pub shard_map: ShardMap,
    /// The Redis URL every client uses: `cache.externalRedis.url`, or the operator-run Redis's
    /// primary Service.
    pub redis_url: String,
    /// Redis pods the operator runs: the primary and `cache.redis.replicas` replicas; 0 with an
    /// external Redis.
    pub redis_pods: u32,
    /// Redis replicas beside the primary (0 with an external Redis).
    pub redis_replicas: u32,
    /// Postgres `max_connections` for every primary and replica.
    pub max_connections: i64,
    /// UID the Postgres containers run as (`database.runAsUser`, or the official images' own).
    pub postgres_uid: i64,
    /// Size of each Postgres volume in MiB.
    pub postgres_volume_mib: u64,
    /// Image of the instance manager (from [`Defaults`]).
    pub instance_image: String,
    /// Image of the app and workers: `app.image`, or the operator's default.
    pub app_image: String,
    /// Namespace of the operator's pods (from [`Defaults`]).
    pub operator_namespace: String,
    /// The session-secret rotation's marker for the app pod template and step for the app
    /// Secret: what status records; the reconcile driver replaces it with what the rotation
    /// stage decided this pass.
    pub session_secret: SessionSecretPlan,
}

/// UID of the `postgres` user in the official images: 70 in the Alpine variants, 999 in the
/// Debian ones.
fn official_postgres_uid(image: &str) -> i64 {
    let tag = image.rsplit('/').next().unwrap_or(image);
    if tag.contains("alpine") { 70 } else { 999 }
}

/// MiB in a quantity the schema allows for volumes (`<n>Mi`, `<n>Gi`, `<n>Ti`).
fn volume_mib(size: &str) -> Option<u64> {
    let (number, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit())?);
    let number: u64 = number.parse().ok()?;
    let factor = match unit {
        "Mi" => 1,
        "Gi" => 1024,
        "Ti" => 1024 * 1024,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Why a ScaledApp cannot be realised as written.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum InvalidSpec {
    /// The object has no name, namespace or uid (it was not read from a cluster or file).
    #[error("ScaledApp is missing metadata.{0}")]
    MissingMetadata(&'static str),
    /// Name longer than the schema allows (only reachable from `render -f`).
    #[error(
        "metadata.name {name:?} is {length} characters; at most {MAX_NAME_LENGTH} are allowed so every child name fits"
    )]
    NameTooLong {
        /// The name.
        name: String,
        /// Its length.
        length: usize,
    },
    /// The pools of all pods together would ask a primary for too many connections.
    #[error(
        "at full scale {pods} pods x {per_pod} connections (pool.size + pool.maxOverflow) = {needed} connections per shard primary, more than the {MAX_CONNECTIONS_PER_PRIMARY} allowed; lower database.pool, app.replicas.max or the worker pools' replicas.max"
    )]
    ConnectionBudget {
        /// App plus worker pods at their maximum.
        pods: i64,
        /// Connections per pod.
        per_pod: i64,
        /// Product.
        needed: i64,
    },
    /// The shard/slot counts do not make an assignment.
    #[error("database.shards/slots cannot be assigned: {0}")]
    Shards(#[from] ShardMapError),
    /// A volume size the operator cannot read (only reachable from `render -f`).
    #[error("database.storage.size {0:?} is not a size like 10Gi (Mi, Gi or Ti)")]
    VolumeSize(String),
    /// Two worker pools with the same name (only reachable from `render -f`: the schema refuses it).
    #[error("worker pool {0:?} is defined more than once; pool names must be unique")]
    DuplicateWorkerPool(String),
}

impl InvalidSpec {
    /// A CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidSpec::MissingMetadata(_) => "MissingMetadata",
            InvalidSpec::NameTooLong { .. } => "NameTooLong",
            InvalidSpec::ConnectionBudget { .. } => "ConnectionBudgetExceeded",
            InvalidSpec::Shards(_) => "InvalidShardLayout",
            InvalidSpec::DuplicateWorkerPool(_) => "DuplicateWorkerPool",
            InvalidSpec::VolumeSize(_) => "InvalidVolumeSize",
        }
    }
}

/// Checks a ScaledApp and resolves what rendering needs.
pub fn validate(app: &ScaledApp, defaults: &Defaults) -> Result<ValidatedApp, InvalidSpec> {
    let name = app.name_any();
    if name.is_empty() {
        return Err(InvalidSpec::MissingMetadata("name"));
    }
    if name.len() > MAX_NAME_LENGTH {
        return Err(InvalidSpec::NameTooLong {
            length: name.len(),
            name,
        });
    }
    let namespace = app
        .namespace()
        .ok_or(InvalidSpec::MissingMetadata("namespace"))?;
    let uid = app.uid().ok_or(InvalidSpec::MissingMetadata("uid"))?;
    let spec = &app.spec;

    for (position, pool) in spec.workers.iter().enumerate() {
        if spec.workers[..position]
            .iter()
            .any(|other| other.name == pool.name)
        {
            return Err(InvalidSpec::DuplicateWorkerPool(pool.name.clone()));
        }
    }

    let per_pod = i64::from(spec.database.pool.size) + i64::from(spec.database.pool.max_overflow);
    let pods = i64::from(spec.app.replicas.max)
        + spec
            .workers
            .iter()
            .map(|pool| i64::from(pool.replicas.max))
            .sum::<i64>();
    let needed = pods * per_pod;
    if needed > MAX_CONNECTIONS_PER_PRIMARY {
        return Err(InvalidSpec::ConnectionBudget {
            pods,
            per_pod,
            needed,
        });
    }
    // Every pod also probes every instance of a shard for its replay position (one connection
    // each, the primary included, since any instance may be primary), plus room for
    // replication, migrations and an operator's psql session.
    let max_connections = (needed + pods + 20).max(100);
    let database = &spec.database;
    let postgres_volume_mib = volume_mib(&database.storage.size)
        .ok_or_else(|| InvalidSpec::VolumeSize(database.storage.size.clone()))?;

    let shard_assignment = shards::assignment(spec.database.slots, spec.database.shards)?;
    let shard_count = spec.database.shards as u32;
    let pods_per_shard = 1 + spec.database.replicas_per_shard as u32;
    let shard_map = ShardMap::from_assignment(
        &shard_assignment,
        (0..shard_count)
            .map(|index| shards::endpoints(&name, &namespace, index, pods_per_shard))
            .collect(),
    )?;
    let redis_url = match &spec.cache.external_redis {
        Some(external) => external.url.clone(),
        None => crate::names::redis_primary_url(&name, &namespace),
    };
    let redis_replicas = match &spec.cache.external_redis {
        Some(_) => 0,
        None => spec.cache.redis.clone().unwrap_or_default().replicas.max(0) as u32,
    };
    let redis_pods = if spec.cache.external_redis.is_some() {
        0
    } else {
        1 + redis_replicas
    };

    Ok(ValidatedApp {
        name,
        namespace,
        uid,
        generation: app.metadata.generation.unwrap_or_default(),
        spec: spec.clone(),
        shard_assignment,
        shards: shard_count,
        pods_per_shard,
        shard_map,
        redis_url,
        redis_pods,
        redis_replicas,
        max_connections,
        postgres_uid: database
            .run_as_user
            .unwrap_or_else(|| official_postgres_uid(&database.image)),
        postgres_volume_mib,
        instance_image: defaults.instance_image.clone(),
        operator_namespace: defaults.operator_namespace.clone(),
        app_image: spec
            .app
            .image
            .clone()
            .unwrap_or_else(|| defaults.app_image.clone()),
        session_secret: SessionSecretPlan::of(
            app.status
                .as_ref()
                .and_then(|status| status.session_secret_rotation.as_ref()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::example;

    #[test]
    fn the_shop_example_is_valid_and_sizes_postgres_for_full_scale() {
        let validated =
            validate(&example("shop"), &Defaults::default()).expect("shop.yaml is valid");
        let spec = &validated.spec;
        let pods = i64::from(spec.app.replicas.max)
            + spec
                .workers
                .iter()
                .map(|w| i64::from(w.replicas.max))
                .sum::<i64>();
        assert_eq!(validated.max_connections, pods * 61 + 20);
        assert_eq!(validated.shard_assignment.len(), 1024);
    }

    #[test]
    fn too_many_connections_at_full_scale_are_refused_with_what_to_lower() {
        let mut app = example("shop");
        app.spec.app.replicas.max = 1000;
        let error = validate(&app, &Defaults::default()).expect_err("budget exceeded");
        assert_eq!(error.reason(), "ConnectionBudgetExceeded");
        assert!(error.to_string().contains("lower database.pool"), "{error}");
    }

    #[test]
    fn a_missing_namespace_is_reported() {
        let mut app = example("shop");
        app.metadata.namespace = None;
        assert_eq!(
            validate(&app, &Defaults::default()),
            Err(InvalidSpec::MissingMetadata("namespace"))
        );
    }

    #[test]
    fn duplicate_worker_pools_are_refused() {
        let mut app = example("shop");
        let pool = app.spec.workers[0].clone();
        app.spec.workers.push(pool);
        assert_eq!(
            validate(&app, &Defaults::default())
                .expect_err("duplicate")
                .reason(),
            "DuplicateWorkerPool"
        );
    }

    #[test]
    fn the_postgres_uid_follows_the_official_image_variant_unless_the_spec_names_one() {
        let mut app = example("shop");
        app.spec.database.image = "postgres:17-alpine".into();
        assert_eq!(
            validate(&app, &Defaults::default())
                .expect("valid")
                .postgres_uid,
            70
        );
        app.spec.database.image = "registry.local:5000/postgres:17-bookworm".into();
        assert_eq!(
            validate(&app, &Defaults::default())
                .expect("valid")
                .postgres_uid,
            999
        );
        app.spec.database.run_as_user = Some(105);
        assert_eq!(
            validate(&app, &Defaults::default())
                .expect("valid")
                .postgres_uid,
            105
        );
    }

    #[test]
    fn volume_sizes_are_read_in_mebibytes() {
        assert_eq!(volume_mib("512Mi"), Some(512));
        assert_eq!(volume_mib("10Gi"), Some(10240));
        assert_eq!(volume_mib("1Ti"), Some(1024 * 1024));
        assert_eq!(volume_mib("10G"), None);
        assert_eq!(volume_mib("Gi"), None);
    }

    #[test]
    fn a_scaledapp_without_an_app_image_gets_the_operators_default() {
        let mut app = example("shop");
        app.spec.app.image = None;
        let defaults = Defaults {
            app_image: "registry.local:5000/scaled/scaled-app:9.9.9".into(),
            ..Defaults::default()
        };
        assert_eq!(
            validate(&app, &defaults).expect("valid").app_image,
            "registry.local:5000/scaled/scaled-app:9.9.9"
        );
        app.spec.app.image = Some("mine:1".into());
        assert_eq!(
            validate(&app, &defaults).expect("valid").app_image,
            "mine:1"
        );
    }
}
