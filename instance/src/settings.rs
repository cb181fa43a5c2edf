//! Typed settings of `scaled-instance run`: the operator's [`InstanceConfig`] document, the
//! per-pod facts and passwords from environment variables, and the command-line choices (where
//! the primary record comes from, peer addresses, socket directory).
//!
//! Passwords are wrapped in [`Secret`], so a `{:?}` of the settings (a log line, a panic) never
//! prints one.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use scaled_contract::instance::{
    DataIdentity, ENV_APP_PASSWORD, ENV_INSTANCE_NAMESPACE, ENV_INSTANCE_PEER_DOMAIN,
    ENV_INSTANCE_POD, ENV_INSTANCE_POD_UID, ENV_INSTANCE_SHARD, ENV_REPLICATION_PASSWORD,
    ENV_SUPERUSER_PASSWORD, InstanceConfig, split_pod_name,
};

/// The superuser every data directory has (initdb `-U`); only local connections may use it.
pub const SUPERUSER: &str = "postgres";

use scaled_contract::Secret;

/// The three passwords of a shard, from the generated Secret.
#[derive(Clone, Debug)]
pub struct Passwords {
    /// Password of the `postgres` superuser.
    pub superuser: Secret,
    /// Password of the replication role.
    pub replication: Secret,
    /// Password of the application role.
    pub app: Secret,
}

/// Where the instance manager reads which pod is the shard's primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSettings {
    /// The in-cluster Kubernetes API (the ScaledApp's status).
    Api,
    /// A file holding the primary's pod name (host-process tests, local stacks).
    File(PathBuf),
}

/// Where a peer's Postgres answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddress {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.host, self.port)
    }
}

/// Command-line choices of `run` (parsed by `main`, validated here).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Path of the JSON [`InstanceConfig`].
    pub config: PathBuf,
    /// Primary record file instead of the Kubernetes API.
    pub primary_file: Option<PathBuf>,
    /// `POD=HOST:PORT` overrides of peer addresses.
    pub peers: Vec<String>,
    /// Directory for the Unix socket and the replication passfile.
    pub socket_dir: PathBuf,
    /// Address the HTTP endpoints bind.
    pub http_address: IpAddr,
    /// Postgres `listen_addresses`.
    pub listen_addresses: String,
    /// Pause between control-loop steps that changed nothing.
    pub tick: Duration,
}

/// Errors while assembling [`Settings`].
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file could not be read.
    #[error("failed to read instance config {path}")]
    ReadConfig {
        /// File that was read.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not a valid document.
    #[error("failed to parse instance config {path}")]
    ParseConfig {
        /// File that was parsed.
        path: PathBuf,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A required environment variable is missing or empty.
    #[error("failed to read environment variable {0}: it is required but not set")]
    MissingEnv(&'static str),
    /// The shard variable is not a number.
    #[error("failed to parse environment variable {variable}={value:?} as a shard index")]
    Shard {
        /// Variable name.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// A `--peer` argument is not `POD=HOST:PORT`.
    #[error("failed to parse peer override {0:?}: expected POD=HOST:PORT")]
    Peer(String),
    /// A role name cannot be written into `pg_hba.conf` and SQL safely.
    #[error("failed to accept role name {0:?}: use letters, digits and '_' only")]
    RoleName(String),
    /// The pod name does not end in `-<ordinal>` (a StatefulSet pod).
    #[error("failed to find the StatefulSet ordinal in pod name {0:?}")]
    PodName(String),
}

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The operator's document.
    pub config: InstanceConfig,
    /// This pod's name.
    pub pod: String,
    /// This pod object's uid, when the environment gives it (always in pods the operator renders).
    pub pod_uid: Option<String>,
    /// This pod's namespace.
    pub namespace: String,
    /// Shard index.
    pub shard: u32,
    /// DNS domain of the shard's pods (`<pod>.<domain>`), when set.
    pub peer_domain: Option<String>,
    /// The three passwords.
    pub passwords: Passwords,
    /// Where the primary record comes from.
    pub source: SourceSettings,
    /// Peer address overrides by pod name.
    pub peers: BTreeMap<String, PeerAddress>,
    /// Directory for the Unix socket and the replication passfile.
    pub socket_dir: PathBuf,
    /// Address the HTTP endpoints bind.
    pub http_address: IpAddr,
    /// Postgres `listen_addresses`.
    pub listen_addresses: String,
    /// Pause between control-loop steps that changed nothing.
    pub tick: Duration,
}

impl Settings {
    /// Reads the config file and the environment.
    pub fn load(options: RunOptions) -> Result<Self, SettingsError> {
        let config = read_config(&options.config)?;
        Self::from_parts(config, options, |name| std::env::var(name).ok())
    }

    /// Builds settings from a config, options and an environment lookup (tests pass a map).
    pub fn from_parts(
        config: InstanceConfig,
        options: RunOptions,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let required = |name: &'static str| {
            env(name)
                .filter(|value| !value.is_empty())
                .ok_or(SettingsError::MissingEnv(name))
        };
        let pod = required(ENV_INSTANCE_POD)?;
        let pod_uid = env(ENV_INSTANCE_POD_UID).filter(|uid| !uid.is_empty());
        let namespace = required(ENV_INSTANCE_NAMESPACE)?;
        let shard_text = required(ENV_INSTANCE_SHARD)?;
        let shard = shard_text.parse().map_err(|_| SettingsError::Shard {
            variable: ENV_INSTANCE_SHARD,
            value: shard_text.clone(),
        })?;
        let passwords = Passwords {
            superuser: Secret::new(required(ENV_SUPERUSER_PASSWORD)?),
            replication: Secret::new(required(ENV_REPLICATION_PASSWORD)?),
            app: Secret::new(required(ENV_APP_PASSWORD)?),
        };
        for role in [&config.app_user, &config.replication_user] {
            if !is_plain_identifier(role) {
                return Err(SettingsError::RoleName(role.clone()));
            }
        }
        if split_pod_name(&pod).is_none() {
            return Err(SettingsError::PodName(pod));
        }
        let peers = options
            .peers
            .iter()
            .map(|text| parse_peer(text).ok_or_else(|| SettingsError::Peer(text.clone())))
            .collect::<Result<_, _>>()?;
        Ok(Settings {
            config,
            pod,
            pod_uid,
            namespace,
            shard,
            peer_domain: env(ENV_INSTANCE_PEER_DOMAIN).filter(|domain| !domain.is_empty()),
            passwords,
            source: match options.primary_file {
                Some(path) => SourceSettings::File(path),
                None => SourceSettings::Api,
            },
            peers,
            socket_dir: options.socket_dir,
            http_address: options.http_address,
            listen_addresses: options.listen_addresses,
            tick: options.tick,
        })
    }

    /// The identity this instance writes into, and expects in, its data directory.
    pub fn identity(&self) -> DataIdentity {
        DataIdentity {
            namespace: self.namespace.clone(),
            scaled_app: self.config.scaled_app.clone(),
            shard: self.shard,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        Path::new(&self.config.data_dir)
    }

    /// Where `pod`'s Postgres answers: the override, else `<pod>.<peer domain>:<postgresPort>`,
    /// else `<pod>:<postgresPort>` (resolved by the pod's search domains).
    pub fn peer_address(&self, pod: &str) -> PeerAddress {
        if let Some(address) = self.peers.get(pod) {
            return address.clone();
        }
        let host = match &self.peer_domain {
            Some(domain) => format!("{pod}.{domain}"),
            None => pod.to_string(),
        };
        PeerAddress {
            host,
            port: self.config.postgres_port,
        }
    }

    /// The StatefulSet this pod belongs to and its ordinal.
    pub fn stateful_set(&self) -> (&str, u32) {
        split_pod_name(&self.pod).expect("the pod name was checked when the settings were loaded")
    }
}

/// Reads and parses one config document.
pub fn read_config(path: &Path) -> Result<InstanceConfig, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| SettingsError::ParseConfig {
        path: path.to_path_buf(),
        source,
    })
}

/// Role names are restricted to what needs no quoting rules beyond double quotes.
fn is_plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn parse_peer(text: &str) -> Option<(String, PeerAddress)> {
    let (pod, address) = text.split_once('=')?;
    let (host, port) = address.rsplit_once(':')?;
    if pod.is_empty() || host.is_empty() {
        return None;
    }
    Some((
        pod.to_string(),
        PeerAddress {
            host: host.to_string(),
            port: port.parse().ok()?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_overrides_parse_and_reject_nonsense() {
        assert_eq!(
            parse_peer("db-1=127.0.0.1:5433"),
            Some((
                "db-1".to_string(),
                PeerAddress {
                    host: "127.0.0.1".into(),
                    port: 5433
                }
            ))
        );
        assert_eq!(parse_peer("db-1=127.0.0.1"), None);
        assert_eq!(parse_peer("=h:1"), None);
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let passwords = Passwords {
            superuser: Secret::new("hunter2"),
            replication: Secret::new("hunter3"),
            app: Secret::new("hunter4"),
        };
        assert!(!format!("{passwords:?}").contains("hunter"));
    }
}
