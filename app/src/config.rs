//! Typed settings for one process: the operator's [`RuntimeConfig`] document plus the secrets and
//! identity that reach the pod as environment variables.
//!
//! Secrets are wrapped in [`Secret`] so that a `{:?}` of the settings (in a log line or a panic
//! message) never prints a password. Policies the process is started with, such as
//! [`AttemptPolicy`], are defined here with the other settings; the modules that enforce them
//! import them from here, never the reverse.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Duration,
};

use scaled_contract::{
    CONFIG_PATH, ConfigError as ContractError, ENV_CONFIG_PATH, ENV_DATABASE_PASSWORD,
    ENV_POD_NAME, ENV_REDIS_PASSWORD, ENV_SESSION_SECRET, ENV_SESSION_SECRET_PREVIOUS,
    RuntimeConfig, ShardEndpoints,
};

use scaled_contract::Secret;

/// Errors while assembling [`Settings`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("failed to read runtime config {path}")]
    ReadFile {
        /// File that was read.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not a valid document.
    #[error("failed to load runtime config {path}")]
    Parse {
        /// File that was parsed.
        path: PathBuf,
        /// What the contract crate found wrong.
        #[source]
        source: ContractError,
    },
    /// A required environment variable is missing.
    #[error("environment variable {0} is required but not set")]
    MissingEnv(&'static str),
    /// An environment variable is set to something that is not UTF-8.
    #[error("environment variable {0} is not valid UTF-8")]
    NotUnicode(&'static str),
    /// A local config could not be built from the arguments given.
    #[error("failed to build a local config")]
    Local(#[source] ContractError),
    /// A `--shard` argument is not `PRIMARY[,REPLICA...]`.
    #[error("shard argument {0:?} must be PRIMARY[,REPLICA...] with host:port endpoints")]
    ShardArgument(String),
}

/// How many failed sign-ins one account may have in a sliding window, counted twice: per account
/// and client (what stops a guesser), and per account from every client together (a backstop
/// against a guesser spread over many addresses). Someone else's failures fill only their own
/// client's window, so they cannot lock the owner out; only the backstop can, and it needs
/// `account_failures / failures` client identities failing together.
#[derive(Clone, Copy, Debug)]
pub struct AttemptPolicy {
    /// Failures allowed per account and client (see [`crate::ratelimit::ClientKey`]) and window;
    /// the next attempt from that client waits until the oldest leaves the window.
    pub failures: u32,
    /// Failures allowed per account and window from all clients together. Reaching it refuses
    /// the owner too, so it sits far above `failures`.
    pub account_failures: u32,
    /// Window length (of both counts).
    pub window: Duration,
}

impl Default for AttemptPolicy {
    /// 5 failures per account and client per 15 minutes, 100 per account: one client gets 480
    /// guesses a day at one account, all clients together 9,600, and an owner who mistypes is
    /// never shut out for longer than 15 minutes after the fifth failure, whatever others do
    /// unless 20 clients fail together.
    fn default() -> Self {
        AttemptPolicy {
            failures: 5,
            account_failures: 100,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// Requests one client may send to one route in a sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Requests allowed per window.
    pub requests: u32,
    /// Window length.
    pub window: Duration,
}

/// Per-client limits of the routes that cost the most or tell the most, apart from the
/// configurable limit of `/api/data` (`rateLimit` in the runtime config). The client is the
/// signed-in user, else the client address, as for `/api/data`. When Redis cannot decide, they
/// follow `rateLimit.failureMode` like `/api/data` does.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// `POST /api/sessions`, right or wrong and for any account: 20 a minute. The failure count
    /// sees one account at a time; this stops one client spraying guesses over many accounts,
    /// while a household or office behind one address still signs in.
    pub sign_in: RoutePolicy,
    /// `POST /api/users`: 10 per 10 minutes. A new account costs a password hash, and a client
    /// probing which addresses are registered learns little at this pace.
    pub sign_up: RoutePolicy,
    /// `POST /api/orders`, per signed-in user: 120 a minute, far above any shopper, and a bound
    /// on the outbox rows and emails one account can cause.
    pub orders: RoutePolicy,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            sign_in: RoutePolicy {
                requests: 20,
                window: Duration::from_secs(60),
            },
            sign_up: RoutePolicy {
                requests: 10,
                window: Duration::from_secs(10 * 60),
            },
            orders: RoutePolicy {
                requests: 120,
                window: Duration::from_secs(60),
            },
        }
    }
}

/// Everything one process needs to start.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The operator's document.
    pub runtime: RuntimeConfig,
    /// Where the document came from; watched for shard-map and rate-limit changes when set.
    pub config_path: Option<PathBuf>,
    /// Postgres password of the application role (absent with trust authentication).
    pub database_password: Option<Secret>,
    /// Redis password, when the document says one is required.
    pub redis_password: Option<Secret>,
    /// Key mixed into session-id hashes, so ids leaked from Redis cannot be replayed.
    pub session_secret: Secret,
    /// The session secret before the last rotation: tokens made under it are still accepted,
    /// nothing new is made with it (see [`crate::sessions`]). `None` when unset or empty.
    pub session_secret_previous: Option<Secret>,
    /// Queue consumer name (the pod name in Kubernetes).
    pub pod_name: String,
    /// Address the servers bind (all interfaces in a pod; loopback in tests).
    pub bind_address: IpAddr,
    /// Failed sign-ins allowed per account and window (the default; tests shorten the window).
    pub sign_in: AttemptPolicy,
    /// Per-client limits of sign-in, sign-up and orders (the defaults; tests change them).
    pub limits: RequestLimits,
    /// Absolute session lifetime since sign-in (the document's `sessions.maxLifetimeSeconds`;
    /// tests shorten it).
    pub session_lifetime: Duration,
}

impl Settings {
    /// Reads the document named by `SCALED_CONFIG` (default [`CONFIG_PATH`]) and the secrets from
    /// the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let path = PathBuf::from(
            std::env::var(ENV_CONFIG_PATH).unwrap_or_else(|_| CONFIG_PATH.to_string()),
        );
        let runtime = load_runtime_config(&path)?;
        let redis_password = std::env::var(ENV_REDIS_PASSWORD).ok().map(Secret::new);
        if runtime.redis.password_required && redis_password.is_none() {
            return Err(ConfigError::MissingEnv(ENV_REDIS_PASSWORD));
        }
        let session_secret = std::env::var(ENV_SESSION_SECRET)
            .map(Secret::new)
            .map_err(|_| ConfigError::MissingEnv(ENV_SESSION_SECRET))?;
        let session_secret_previous = optional_secret(
            ENV_SESSION_SECRET_PREVIOUS,
            std::env::var(ENV_SESSION_SECRET_PREVIOUS),
        )?;
        let session_lifetime = Duration::from_secs(runtime.sessions.max_lifetime_seconds);
        Ok(Settings {
            runtime,
            config_path: Some(path),
            database_password: std::env::var(ENV_DATABASE_PASSWORD).ok().map(Secret::new),
            redis_password,
            session_secret,
            session_secret_previous,
            pod_name: pod_name_from_env(),
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            sign_in: AttemptPolicy::default(),
            limits: RequestLimits::default(),
            session_lifetime,
        })
    }

    /// Settings around an in-memory document (tests, local tools); no file is watched.
    pub fn from_runtime(runtime: RuntimeConfig, session_secret: Secret) -> Self {
        let session_lifetime = Duration::from_secs(runtime.sessions.max_lifetime_seconds);
        Settings {
            runtime,
            config_path: None,
            database_password: None,
            redis_password: None,
            session_secret,
            session_secret_previous: None,
            pod_name: pod_name_from_env(),
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sign_in: AttemptPolicy::default(),
            limits: RequestLimits::default(),
            session_lifetime,
        }
    }
}

/// The value of the optional secret variable `name` as `std::env::var` read it: none when unset or
/// empty (a Secret key the operator left blank), an error when it is not text.
fn optional_secret(
    name: &'static str,
    value: Result<String, std::env::VarError>,
) -> Result<Option<Secret>, ConfigError> {
    match value {
        Ok(value) if value.is_empty() => Ok(None),
        Ok(value) => Ok(Some(Secret::new(value))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::NotUnicode(name)),
    }
}

/// The consumer name: the pod name, or the host name plus process id outside Kubernetes, so two
/// local workers never share a consumer (which would make one reclaim the other's messages).
fn pod_name_from_env() -> String {
    std::env::var(ENV_POD_NAME).unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "local".into());
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// Reads and validates one config document.
pub fn load_runtime_config(path: &std::path::Path) -> Result<RuntimeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    RuntimeConfig::from_json(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// A development document: one `--shard PRIMARY[,REPLICA...]` argument per shard, in order.
pub fn local_config(
    shards: &[String],
    redis_url: &str,
    slots: u32,
    http_port: u16,
    metrics_port: u16,
) -> Result<RuntimeConfig, ConfigError> {
    let endpoints = shards
        .iter()
        .enumerate()
        .map(|(index, argument)| {
            let mut parts = argument.split(',').map(str::trim);
            let primary = parts
                .next()
                .filter(|primary| primary.contains(':'))
                .ok_or_else(|| ConfigError::ShardArgument(argument.clone()))?;
            let replicas: Vec<String> = parts.map(str::to_string).collect();
            if replicas.iter().any(|replica| !replica.contains(':')) {
                return Err(ConfigError::ShardArgument(argument.clone()));
            }
            Ok(ShardEndpoints {
                index: index as u32,
                primary: primary.to_string(),
                replicas,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut config =
        RuntimeConfig::local(endpoints, redis_url, slots).map_err(ConfigError::Local)?;
    config.http_port = http_port;
    config.metrics_port = metrics_port;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_session_secret_is_none_when_unset_or_empty_and_refused_when_not_text() {
        let read = |value| optional_secret(ENV_SESSION_SECRET_PREVIOUS, value);
        assert!(matches!(
            read(Err(std::env::VarError::NotPresent)),
            Ok(None)
        ));
        assert!(matches!(read(Ok(String::new())), Ok(None)));
        let set = read(Ok("old secret".into())).expect("a secret");
        assert_eq!(
            set.map(|secret| secret.expose().to_string()),
            Some("old secret".into())
        );
        let error =
            read(Err(std::env::VarError::NotUnicode("\u{fffd}".into()))).expect_err("not text");
        assert!(
            error.to_string().contains(ENV_SESSION_SECRET_PREVIOUS),
            "{error}"
        );
    }
}
