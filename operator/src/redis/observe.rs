//! The Redis stage's reads: every Redis pod of a ScaledApp and what its redis-server says of its
//! replication. The operator asks each server itself (with the generated password), as Redis
//! Sentinel does; there is no manager process beside Redis.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret as SecretObject};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use redis::IntoConnectionInfo;
use scaled_contract::Secret;

use crate::names::{
    REDIS_COMPONENT, REDIS_PASSWORD_KEY, REDIS_PORT, ROLE_LABEL, component_selector,
    redis_secret_name,
};
use crate::validate::ValidatedApp;

use super::observation::{RedisPod, Replication, Report};

/// How long one redis-server may take to accept the connection, and then to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(700);

/// Failures reading the Redis pods. (A server that does not answer is an observation.)
#[derive(Debug, thiserror::Error)]
pub enum RedisObserveError {
    /// Listing the pods or reading the password failed.
    #[error("failed to read the {what} of ScaledApp {namespace}/{name}: {source}")]
    Read {
        /// What was read.
        what: &'static str,
        /// Namespace.
        namespace: String,
        /// ScaledApp name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

/// What [`read`] found: the pods as observed, and the password to send commands with.
#[derive(Debug, Default)]
pub struct RedisReads {
    /// Every Redis pod of the ScaledApp, by ordinal.
    pub pods: Vec<RedisPod>,
    /// The generated password, once its Secret exists.
    pub password: Option<Secret>,
}

/// Reads every Redis pod of the ScaledApp and asks each running one for its replication state
/// (all at once). Nothing when the ScaledApp uses an external Redis.
pub async fn read(client: &Client, app: &ValidatedApp) -> Result<RedisReads, RedisObserveError> {
    if app.redis_pods == 0 {
        return Ok(RedisReads::default());
    }
    let error = |what: &'static str| {
        move |source| RedisObserveError::Read {
            what,
            namespace: app.namespace.clone(),
            name: app.name.clone(),
            source,
        }
    };
    let selector = component_selector(&app.name, REDIS_COMPONENT);
    let pods = Api::<Pod>::namespaced(client.clone(), &app.namespace);
    let secrets = Api::<SecretObject>::namespaced(client.clone(), &app.namespace);
    let (pods, secret) = futures::try_join!(
        async {
            pods.list(&ListParams::default().labels(&selector))
                .await
                .map_err(error("Redis pods"))
        },
        async {
            secrets
                .get_opt(&redis_secret_name(&app.name))
                .await
                .map_err(error("Redis Secret"))
        },
    )?;
    let password = secret.as_ref().and_then(password).map(Secret::new);
    let set = crate::names::child_name(&app.name, REDIS_COMPONENT);
    let observed = pods.items.into_iter().filter_map(|pod| {
        let ordinal = scaled_contract::instance::pod_ordinal(&set, &pod.name_any())?;
        Some((ordinal, pod))
    });
    let asks = observed.map(|(ordinal, pod)| {
        let password = password.clone();
        async move {
            let ip = pod.status.as_ref().and_then(|status| status.pod_ip.clone());
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let report = match (&ip, running, &password) {
                (Some(ip), true, Some(password)) => ask(ip, password.expose()).await,
                _ => Report::NotAsked,
            };
            RedisPod {
                name: pod.name_any(),
                ordinal,
                uid: pod.metadata.uid.clone(),
                ip,
                deleting: pod.metadata.deletion_timestamp.is_some(),
                role_label: pod.labels().get(ROLE_LABEL).cloned(),
                report,
            }
        }
    });
    let mut observed = futures::future::join_all(asks).await;
    observed.sort_by_key(|pod| pod.ordinal);
    Ok(RedisReads {
        pods: observed,
        password,
    })
}

fn password(secret: &SecretObject) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(REDIS_PASSWORD_KEY)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// Asks one server for its replication state.
async fn ask(ip: &str, password: &str) -> Report {
    let outcome = tokio::time::timeout(ANSWER_TIMEOUT * 2, async {
        let mut connection = connect(ip, password, ANSWER_TIMEOUT).await?;
        redis::cmd("INFO")
            .arg("replication")
            .arg("keyspace")
            .query_async::<String>(&mut connection)
            .await
    })
    .await;
    match outcome {
        Ok(Ok(info)) => Report::Answered(Replication::parse(&info)),
        Ok(Err(error)) => Report::Unreachable(error.to_string()),
        Err(_) => Report::Unreachable(format!("no answer within {:?}", ANSWER_TIMEOUT * 2)),
    }
}

/// A connection to the Redis server at `ip`, with the generated password.
pub(super) async fn connect(
    ip: &str,
    password: &str,
    timeout: Duration,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let address: std::net::IpAddr = ip.parse().map_err(|_| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "not an IP address"))
    })?;
    let url = format!(
        "redis://{}",
        std::net::SocketAddr::new(address, REDIS_PORT as u16)
    );
    let mut info = url.as_str().into_connection_info()?;
    let settings = info.redis_settings().clone().set_password(password);
    info = info.set_redis_settings(settings);
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    redis::Client::open(info)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
