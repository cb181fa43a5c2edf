//! Names and labels: what every stage of the pipeline calls the objects it renders, applies,
//! observes and reports. A leaf: it imports nothing of the operator, so render, apply, the
//! instance stage, status and the metrics APIs all take their names from here, and none of them
//! imports another stage for a name.

/// The operator's field manager and `app.kubernetes.io/managed-by` value.
pub const MANAGER: &str = "scaledapp-operator";
/// Annotation holding a hash of what the operator last applied to an object.
pub const APPLIED_HASH_ANNOTATION: &str = "scaled.dev/applied-hash";
/// Pod-template annotation holding a hash of the configuration the pods read, so a change
/// rolls them.
pub const CONFIG_HASH_ANNOTATION: &str = "scaled.dev/config-hash";
/// Label naming the ScaledApp an object belongs to (`app.kubernetes.io/instance`, the
/// recommended label; in this code base "instance" means a Postgres instance only).
pub const SCALEDAPP_NAME_LABEL: &str = "app.kubernetes.io/instance";
/// Label naming the component (app, worker, redis, postgres).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Label set on every child, used to find children for pruning.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Postgres shard number of a pod.
pub const SHARD_LABEL: &str = "scaled.dev/shard";
/// Postgres role of a pod (primary or replica).
pub const ROLE_LABEL: &str = "scaled.dev/role";
/// Worker pool of a pod.
pub const POOL_LABEL: &str = "scaled.dev/worker-pool";

/// Component label of the app pods.
pub const APP_COMPONENT: &str = "app";
/// Component label of the Postgres pods.
pub const POSTGRES_COMPONENT: &str = "postgres";
/// Component label of the Redis pods.
pub const REDIS_COMPONENT: &str = "redis";
/// Role label value of the pod the operator chose as a shard's primary.
pub const PRIMARY_ROLE: &str = "primary";
/// Role label value of every other pod of a shard.
pub const REPLICA_ROLE: &str = "replica";

/// Database every shard serves the app from.
pub const DATABASE_NAME: &str = "app";
/// Postgres role of the app.
pub const DATABASE_USER: &str = "app";

/// Postgres port.
pub const POSTGRES_PORT: i32 = 5432;
/// Redis port.
pub const REDIS_PORT: i32 = 6379;

/// Key of the Redis password in the generated Redis Secret.
pub const REDIS_PASSWORD_KEY: &str = "password";
/// Key of the session signing secret in the `<app>-app` Secret.
pub const SESSION_SECRET_KEY: &str = "session-secret";
/// Key of the session secret before the last rotation in the `<app>-app` Secret: absent until
/// a first rotation, which writes it.
pub const SESSION_SECRET_PREVIOUS_KEY: &str = "session-secret-previous";
/// Annotation on the app pod template and on the `<app>-app` Secret naming the session-secret
/// rotation step they are at (`<id>/accepting`, `<id>/signing`): a new step rolls the pods, and
/// the Secret's tells the applier which step its values are at. Absent until a first rotation.
pub const SESSION_SECRET_ROTATION_ANNOTATION: &str = "scaled.dev/session-secret-rotation";

/// A child's name: `<app>-<component>`.
pub fn child_name(app_name: &str, component: &str) -> String {
    format!("{app_name}-{component}")
}

/// The app Deployment (also its Service and PodDisruptionBudget).
pub fn app_deployment_name(app_name: &str) -> String {
    child_name(app_name, APP_COMPONENT)
}

/// Name of shard `index`'s StatefulSet (and headless Service); its pods are
/// [`pod_name`](scaled_contract::instance::pod_name)`(set, ordinal)`, `<set>-<ordinal>`.
pub fn shard_set_name(app_name: &str, index: u32) -> String {
    child_name(app_name, &format!("shard-{index}"))
}

/// Name of a shard's role Service (`primary` or `replica`).
pub fn shard_service_name(app_name: &str, index: u32, role: &str) -> String {
    format!("{}-{role}", shard_set_name(app_name, index))
}

/// In-cluster DNS name of Service `service` in `namespace`.
pub fn service_host(namespace: &str, service: &str) -> String {
    format!("{service}.{namespace}.svc")
}

/// `redis://` URL of the operator-run Redis of ScaledApp `app_name`: the one address the app's
/// config, the status endpoint and the queue reader all use.
pub fn redis_primary_url(app_name: &str, namespace: &str) -> String {
    format!(
        "redis://{}:{REDIS_PORT}",
        service_host(namespace, &redis_primary_service_name(app_name))
    )
}

/// The Service clients reach the operator-run Redis through (the app's config, the status
/// endpoint and the queue reader all use it).
pub fn redis_primary_service_name(app_name: &str) -> String {
    child_name(app_name, &format!("{REDIS_COMPONENT}-{PRIMARY_ROLE}"))
}

/// The generated Redis Secret.
pub fn redis_secret_name(app_name: &str) -> String {
    child_name(app_name, REDIS_COMPONENT)
}

/// Label selector of one component's pods (and claims) of ScaledApp `app_name`.
pub fn component_selector(app_name: &str, component: &str) -> String {
    format!("{SCALEDAPP_NAME_LABEL}={app_name},{COMPONENT_LABEL}={component}")
}
