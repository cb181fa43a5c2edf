//! Validation: the checks the API server's schema cannot make, turning a `ScaledApp` into a
//! [`ValidatedApp`] that rendering can trust. Pure: no client, no clock.
//!
//! An error here is permanent for the current spec: the reconciler reports it as `Ready=False`
//! with the error's reason and message and waits for the user to change the spec.

use kube::ResourceExt;
use scaled_contract::{ShardMap, ShardMapError};

use crate::crd::{MAX_NAME_LENGTH, ScaledApp, ScaledAppSpec};
use crate::shards;

/// Most connections one Postgres primary is allowed to be asked for. Beyond this a primary
/// spends its memory on backends; the user should lower the pool or the replica bounds.
pub const MAX_CONNECTIONS_PER_PRIMARY: i64 = 5000;

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
    /// Slot assignment (endpoints filled in by rendering).
    pub shard_assignment: Vec<u32>,
    /// Postgres `max_connections` for every primary and replica.
    pub max_connections: i64,
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
        }
    }
}

/// Checks a ScaledApp and resolves what rendering needs.
pub fn validate(app: &ScaledApp) -> Result<ValidatedApp, InvalidSpec> {
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
    // Room for replication, migrations and an operator's psql session.
    let max_connections = (needed + 20).max(100);

    let shard_assignment = shards::assignment(spec.database.slots, spec.database.shards)?;
    // The map itself is built during rendering, where endpoints are known; checking it here keeps
    // that step infallible.
    ShardMap::from_assignment(
        &shard_assignment,
        shards::placeholder_endpoints(spec.database.shards),
    )?;

    Ok(ValidatedApp {
        name,
        namespace,
        uid,
        generation: app.metadata.generation.unwrap_or_default(),
        spec: spec.clone(),
        shard_assignment,
        max_connections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::example;

    #[test]
    fn the_shop_example_is_valid_and_sizes_postgres_for_full_scale() {
        let validated = validate(&example("shop")).expect("shop.yaml is valid");
        let spec = &validated.spec;
        let pods = i64::from(spec.app.replicas.max)
            + spec
                .workers
                .iter()
                .map(|w| i64::from(w.replicas.max))
                .sum::<i64>();
        assert_eq!(validated.max_connections, pods * 60 + 20);
        assert_eq!(validated.shard_assignment.len(), 1024);
    }

    #[test]
    fn too_many_connections_at_full_scale_are_refused_with_what_to_lower() {
        let mut app = example("shop");
        app.spec.app.replicas.max = 1000;
        let error = validate(&app).expect_err("budget exceeded");
        assert_eq!(error.reason(), "ConnectionBudgetExceeded");
        assert!(error.to_string().contains("lower database.pool"), "{error}");
    }

    #[test]
    fn a_missing_namespace_is_reported() {
        let mut app = example("shop");
        app.metadata.namespace = None;
        assert_eq!(
            validate(&app),
            Err(InvalidSpec::MissingMetadata("namespace"))
        );
    }

    #[test]
    fn duplicate_worker_pools_are_refused() {
        let mut app = example("shop");
        let pool = app.spec.workers[0].clone();
        app.spec.workers.push(pool);
        assert_eq!(
            validate(&app).expect_err("duplicate").reason(),
            "DuplicateWorkerPool"
        );
    }
}
