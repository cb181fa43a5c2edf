//! The contract between the operator and `scaled-instance`, the Postgres instance manager that
//! runs as PID 1 of every Postgres container.
//!
//! - The operator renders an [`InstanceConfig`] into the `<name>-postgres` ConfigMap under
//!   [`INSTANCE_CONFIG_KEY`]; it is mounted at [`INSTANCE_CONFIG_PATH`]. Per-shard and per-pod
//!   facts come as environment variables (`ENV_*` below), passwords from the generated Secret.
//! - Which pod of a shard is the primary is decided by the operator alone and recorded in the
//!   ScaledApp's status: `status.shards[i].primaryPod` for the entry whose `index` is the shard,
//!   with the uid of that pod object in `primaryPodUid` ([`ShardPrimaryRecord`], read through
//!   [`ScaledAppView`]). Instance managers read it from the API and obey it: the named pod runs
//!   (or promotes itself to) primary, every other pod follows it as a streaming replica, a pod
//!   that cannot confirm it is still the named primary stops accepting writes, and a pod
//!   recreated under the primary's name waits until the operator confirms it or names another
//!   pod.
//! - A shard's pods are named by its StatefulSet: [`pod_name`] and [`pod_ordinal`] are the one
//!   spelling of `<statefulSet>-<ordinal>`, which replication slot names, peer addresses and the
//!   primary record all derive from.
//! - Replication is sized by one rule, [`crate::replication`]: the operator writes it into
//!   [`InstanceConfig::parameters`] and the instance manager falls back to it.
//! - Each instance manager serves an [`InstanceStatus`] at `GET /status` on
//!   [`INSTANCE_STATUS_PORT`] (with `/healthz`, `/readyz` and `/metrics`); the operator reads it to
//!   pick primaries and to report replication in the ScaledApp's status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Key of the instance configuration inside the `<name>-postgres` ConfigMap.
pub const INSTANCE_CONFIG_KEY: &str = "instance.json";
/// Directory the ConfigMap is mounted at in Postgres pods.
pub const INSTANCE_CONFIG_DIR: &str = "/etc/scaled-instance";
/// Full path of the instance configuration in Postgres pods.
pub const INSTANCE_CONFIG_PATH: &str = "/etc/scaled-instance/instance.json";
/// Port of the instance manager's `/status`, `/healthz`, `/readyz` and `/metrics`.
pub const INSTANCE_STATUS_PORT: u16 = 8008;
/// The schema version of [`InstanceConfig`] this crate writes and understands.
pub const INSTANCE_SCHEMA_VERSION: u32 = 1;
/// Name of the file, inside the data directory, that records which ScaledApp shard created it.
pub const IDENTITY_FILE: &str = "scaled-instance.json";
/// Name of the settings file, inside the data directory, that the instance manager rewrites on
/// every start and includes from `postgresql.conf`.
pub const SETTINGS_FILE: &str = "scaled.conf";

/// [`InstanceProblem::reason`]: the data directory holds another major version than the server.
pub const REASON_MAJOR_VERSION_MISMATCH: &str = "MajorVersionMismatch";
/// [`InstanceProblem::reason`]: the data directory was not created for this ScaledApp shard (no
/// or another [`IDENTITY_FILE`], or files without `PG_VERSION`).
pub const REASON_FOREIGN_DATA_DIRECTORY: &str = "ForeignDataDirectory";
/// [`InstanceProblem::reason`]: the [`InstanceConfig`] has a schema version this build does not
/// know.
pub const REASON_UNSUPPORTED_CONFIG: &str = "UnsupportedConfig";
/// [`InstanceProblem::reason`]: the replica could not follow its primary and was cloned again.
pub const REASON_RECLONED: &str = "Recloned";

/// Environment variable: this pod's name (downward API).
pub const ENV_INSTANCE_POD: &str = "SCALED_POD_NAME";
/// Environment variable: this pod's uid (downward API), compared with
/// [`ShardPrimaryRecord::primary_pod_uid`].
pub const ENV_INSTANCE_POD_UID: &str = "SCALED_POD_UID";
/// Environment variable: this pod's namespace (downward API).
pub const ENV_INSTANCE_NAMESPACE: &str = "SCALED_NAMESPACE";
/// Environment variable: the shard index this pod belongs to.
pub const ENV_INSTANCE_SHARD: &str = "SCALED_SHARD";
/// Environment variable: the DNS domain of the shard's pods, `<statefulSet>.<namespace>.svc`
/// (the StatefulSet's headless Service), so a peer answers at `<pod>.<domain>`.
pub const ENV_INSTANCE_PEER_DOMAIN: &str = "SCALED_PEER_DOMAIN";
/// Environment variable: the password of the `postgres` superuser.
pub const ENV_SUPERUSER_PASSWORD: &str = "SCALED_SUPERUSER_PASSWORD";
/// Environment variable: the password of the replication role.
pub const ENV_REPLICATION_PASSWORD: &str = "SCALED_REPLICATION_PASSWORD";
/// Environment variable: the password of the application role (same name the app reads).
pub const ENV_APP_PASSWORD: &str = crate::ENV_DATABASE_PASSWORD;

/// Settings every instance of a ScaledApp shares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceConfig {
    /// Layout version; the instance manager refuses versions it does not know.
    pub schema_version: u32,
    /// Name of the ScaledApp. With the namespace and the shard index it is the identity written
    /// into every data directory ([`IDENTITY_FILE`]); a data directory with another identity is
    /// never touched.
    pub scaled_app: String,
    /// Data directory (`PGDATA`); its parent is the volume mount.
    pub data_dir: String,
    /// Directory holding `postgres`, `initdb`, `pg_basebackup`, `pg_rewind` and `pg_ctl`; when
    /// absent they are looked up on `PATH`, then with `pg_config --bindir`, then under
    /// `/usr/lib/postgresql/*/bin` (Debian's layout).
    #[serde(default)]
    pub bin_dir: Option<String>,
    /// Database the app uses; created, owned by [`Self::app_user`], if missing.
    pub database: String,
    /// Application role (password in [`ENV_APP_PASSWORD`]).
    pub app_user: String,
    /// Role replicas stream with (password in [`ENV_REPLICATION_PASSWORD`]).
    pub replication_user: String,
    /// Pods per shard (`1 + replicasPerShard`): pods `<statefulSet>-0` ... `<statefulSet>-(n-1)`
    /// ([`pod_name`]).
    /// The primary keeps one physical replication slot per other pod and drops slots of pods
    /// beyond this count.
    pub instances: u32,
    /// Settings written into `postgresql.conf` (the instance manager adds the ones it owns:
    /// `port`, `listen_addresses`, `unix_socket_directories`, `hba_file`, `wal_log_hints`,
    /// `hot_standby`, `synchronous_standby_names`, `primary_conninfo`, `primary_slot_name`; a
    /// value given here for one of those is ignored with a warning). `max_connections` is the
    /// operator's to size from the connection budget; it must be equal on every instance of a
    /// shard (a hot standby refuses a lower value than its primary). Replication has one sizing
    /// rule, [`crate::replication`]: the operator sets `max_wal_senders` and
    /// `max_replication_slots` to [`wal_senders`](crate::replication::wal_senders)`(instances)`
    /// and `max_slot_wal_keep_size` to
    /// [`slot_wal_keep_mib`](crate::replication::slot_wal_keep_mib) of the data volume (a
    /// quarter, so a dead replica's slot cannot fill the primary's disk). A config that lacks them
    /// (written by hand, or by a test) gets the same values from the instance manager, which
    /// measures the volume itself (and leaves `max_slot_wal_keep_size` unset when it cannot).
    pub parameters: BTreeMap<String, String>,
    /// Whether commits wait for one replica (`synchronous_standby_names = 'ANY 1 (*)'`).
    pub synchronous_replication: bool,
    /// A primary that cannot confirm, for this long, that the ScaledApp's status still names it
    /// stops accepting writes (split-brain guard).
    pub fence_after_seconds: u32,
    /// Port Postgres listens on.
    pub postgres_port: u16,
    /// Port of the instance manager's HTTP endpoints.
    pub status_port: u16,
    /// A replica that has neither streamed from nor replayed WAL of its primary for this long,
    /// while that primary answers, is checked: when its slot is missing or invalidated, its
    /// timeline diverged, or it still does not stream, it is cloned again.
    #[serde(default = "default_reclone_after_seconds")]
    pub reclone_after_seconds: u32,
    /// Limit for `pg_basebackup --max-rate` when cloning the primary, in KiB/s, so a clone does
    /// not saturate the primary's disk or network; absent = unlimited.
    #[serde(default)]
    pub clone_max_rate_kib_per_second: Option<u32>,
}

/// Default of [`InstanceConfig::reclone_after_seconds`].
pub const DEFAULT_RECLONE_AFTER_SECONDS: u32 = 60;

fn default_reclone_after_seconds() -> u32 {
    DEFAULT_RECLONE_AFTER_SECONDS
}

/// The role an instance is in, as the instance manager reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceRole {
    /// Waiting for the operator to name a primary, or preparing the data directory.
    Pending,
    /// Cloning the primary with `pg_basebackup` (into a temporary directory).
    Cloning,
    /// Running read-write.
    Primary,
    /// Running as a streaming hot standby.
    Replica,
    /// Promotion to primary is in progress.
    Promoting,
    /// Was primary, and is no longer allowed to accept writes (not named in the status, or the
    /// API could not confirm it for `fenceAfterSeconds`); Postgres is stopped or read-only.
    Fenced,
    /// The instance refuses to start; [`InstanceStatus::problem`] says why.
    Refused,
}

impl InstanceRole {
    /// Every role, in a fixed order, for whoever needs one entry per role (the instance
    /// manager's one-hot role metric).
    pub const ALL: [InstanceRole; 7] = [
        InstanceRole::Pending,
        InstanceRole::Cloning,
        InstanceRole::Primary,
        InstanceRole::Replica,
        InstanceRole::Promoting,
        InstanceRole::Fenced,
        InstanceRole::Refused,
    ];

    /// The role's name: what `/status` serialises, what the operator writes into
    /// `status.shards[].instances[].role`, and the instance manager's role metric label. One
    /// spelling, so a reader of any of them can compare with the others (the operator's
    /// readiness checks compare the status text with `Refused`).
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceRole::Pending => "Pending",
            InstanceRole::Cloning => "Cloning",
            InstanceRole::Primary => "Primary",
            InstanceRole::Replica => "Replica",
            InstanceRole::Promoting => "Promoting",
            InstanceRole::Fenced => "Fenced",
            InstanceRole::Refused => "Refused",
        }
    }
}

impl std::fmt::Display for InstanceRole {
    /// [`InstanceRole::as_str`], so `{}` and the serialised form agree.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// What the operator writes as an instance's role in the ScaledApp's status when its instance
/// manager did not answer. Not an [`InstanceRole`]: no instance manager reports it, the operator
/// concludes it; it is here so that it is spelled once and cannot collide with a role's name.
pub const UNKNOWN_ROLE: &str = "Unknown";

/// Why an instance refuses to run or could not follow its primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceProblem {
    /// CamelCase reason, for example `MajorVersionMismatch`, `ForeignDataDirectory`.
    pub reason: String,
    /// What was found and what to do about it.
    pub message: String,
}

/// What one instance manager reports at `GET /status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Pod name.
    pub pod: String,
    /// Shard index.
    pub shard: u32,
    /// Current role.
    pub role: InstanceRole,
    /// Whether Postgres accepts connections in the role it should have.
    pub ready: bool,
    /// Major version of the server binaries.
    #[serde(default)]
    pub server_major_version: Option<u32>,
    /// Major version of the data directory (`PG_VERSION`), when there is one.
    #[serde(default)]
    pub data_major_version: Option<u32>,
    /// `pg_control`'s database system identifier: equal on a primary and its replicas.
    #[serde(default)]
    pub system_identifier: Option<String>,
    /// Current timeline.
    #[serde(default)]
    pub timeline: Option<u32>,
    /// Primary: `pg_current_wal_lsn()`, as bytes since 0/0. While Postgres is not running
    /// (roles `Pending`, `Fenced`, and `Refused` when the data directory is readable): the
    /// latest checkpoint location from `pg_control` (`pg_controldata`), which is how far this
    /// data directory's history is known to reach; the operator compares it between retained
    /// volumes to choose the first primary.
    #[serde(default)]
    pub current_lsn: Option<u64>,
    /// Replica: `pg_last_wal_receive_lsn()` (written and flushed by the WAL receiver).
    #[serde(default)]
    pub received_lsn: Option<u64>,
    /// Replica: `pg_last_wal_replay_lsn()`.
    #[serde(default)]
    pub replayed_lsn: Option<u64>,
    /// Replica: bytes between the primary's current position and this replica's replay
    /// position, when the primary could be asked.
    #[serde(default)]
    pub lag_bytes: Option<u64>,
    /// Replica: seconds since the last replayed transaction's commit on the primary, 0 when
    /// replay has caught up.
    #[serde(default)]
    pub lag_seconds: Option<f64>,
    /// The pod this instance follows (replica) or believes it is (primary).
    #[serde(default)]
    pub primary_pod: Option<String>,
    /// Replicas streaming from this primary right now, by pod name.
    #[serde(default)]
    pub streaming_replicas: Vec<String>,
    /// Why the instance refuses to run, or what went wrong last.
    #[serde(default)]
    pub problem: Option<InstanceProblem>,
    /// Times this replica threw its data away and cloned the primary again.
    #[serde(default)]
    pub reclones: u32,
    /// Why the last re-clone happened.
    #[serde(default)]
    pub last_reclone_reason: Option<String>,
}

/// The identity recorded in [`IDENTITY_FILE`] inside a data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataIdentity {
    /// Namespace of the ScaledApp.
    pub namespace: String,
    /// Name of the ScaledApp.
    pub scaled_app: String,
    /// Shard index.
    pub shard: u32,
}

/// The name of pod `ordinal` of StatefulSet `stateful_set`, `<statefulSet>-<ordinal>`, as
/// Kubernetes names it. Written here once because the operator (peer addresses, the first
/// primary it names), the instance manager (slots for its peers) and the tests must all spell it
/// the way the StatefulSet controller does, or a slot or record would name a pod that never
/// exists.
pub fn pod_name(stateful_set: &str, ordinal: u32) -> String {
    format!("{stateful_set}-{ordinal}")
}

/// The ordinal of `pod` if it is a pod of StatefulSet `stateful_set`: exactly `stateful_set`,
/// `-`, then ASCII digits only (so `shop-shard-1-0` is not a pod of `shop-shard`, nor
/// `shop-shard-10` one of `shop-shard-1`). The inverse of [`pod_name`]; `None` for anything
/// else, including an ordinal beyond `u32`.
pub fn pod_ordinal(stateful_set: &str, pod: &str) -> Option<u32> {
    split_pod_name(pod)
        .filter(|(set, _)| *set == stateful_set)
        .map(|(_, ordinal)| ordinal)
}

/// `shop-shard-0-2` -> (`shop-shard-0`, 2): the StatefulSet and ordinal of a pod that knows only
/// its own name (the instance manager, from the downward API). The split is at the last `-`,
/// which is right because an ordinal has no `-`; `None` when what follows it is not all digits
/// or nothing precedes it.
pub fn split_pod_name(pod: &str) -> Option<(&str, u32)> {
    let (stateful_set, ordinal) = pod.rsplit_once('-')?;
    if stateful_set.is_empty() || ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((stateful_set, ordinal.parse().ok()?))
}

/// The parts of a ScaledApp object that the instance managers read (`GET` of the object through
/// the API): only the primary records. A view, not the operator's type: the instance manager
/// does not depend on the operator crate, and everything else in the object is ignored, so the
/// operator may add status fields freely. The operator crate has a test that serialises its own
/// status and parses it with this type, so the two cannot drift apart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaledAppView {
    /// The status; absent until the operator first writes one.
    #[serde(default)]
    pub status: Option<ScaledAppStatusView>,
}

impl ScaledAppView {
    /// The record of shard `index`, when the status has one.
    pub fn shard(&self, index: u32) -> Option<&ShardPrimaryRecord> {
        self.status.as_ref()?.shard(index)
    }
}

/// The parts of a ScaledApp's status the instance managers read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScaledAppStatusView {
    /// One entry per shard, each naming its primary (the operator omits the list while it has
    /// no shard to report).
    #[serde(deserialize_with = "null_as_default")]
    pub shards: Vec<ShardPrimaryRecord>,
}

impl ScaledAppStatusView {
    /// The first entry whose index is `index` (the operator writes one per shard).
    pub fn shard(&self, index: u32) -> Option<&ShardPrimaryRecord> {
        self.shards
            .iter()
            .find(|shard| i64::from(shard.index) == i64::from(index))
    }
}

/// One `status.shards[]` entry, as far as the instance managers care: which pod the operator
/// named as the shard's primary. This is the record the split-brain guard obeys. Fields other
/// than these are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardPrimaryRecord {
    /// Shard number (the operator's `ShardStatus::index`). Required, without a default: an entry
    /// without one must not be taken for shard 0's record.
    pub index: i32,
    /// The pod chosen as the shard's primary; absent until the operator chooses one.
    #[serde(default)]
    pub primary_pod: Option<String>,
    /// The uid of the pod object the operator confirmed as the primary. A pod recreated under
    /// the recorded name has another uid: it does not start as primary until the operator
    /// records its uid (no replica could take over) or names another pod. Absent in records
    /// written before it existed: then the name alone confirms.
    #[serde(default)]
    pub primary_pod_uid: Option<String>,
}

/// `null` reads as the default, like an absent field, so a `null` list is no more an unreadable
/// record than a missing one.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A physical replication slot name for a pod: lowercase letters, digits and `_` only.
pub fn slot_name(pod: &str) -> String {
    pod.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Text form of an LSN (`0/3000060`) from its byte position.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Byte position of an LSN in text form (`0/3000060`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    (high <= 0xFFFF_FFFF && low <= 0xFFFF_FFFF).then_some((high << 32) | low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_round_trip_between_text_and_bytes() {
        for text in ["0/0", "0/3000060", "1/A", "FFFFFFFF/FFFFFFFF"] {
            let bytes = parse_lsn(text).expect("parses");
            assert_eq!(format_lsn(bytes), text);
        }
        assert_eq!(parse_lsn("0/3000060"), Some(0x0300_0060));
        assert_eq!(parse_lsn("nonsense"), None);
        assert_eq!(parse_lsn("1/100000000"), None);
    }

    #[test]
    fn pod_names_are_the_stateful_set_then_the_ordinal_and_parse_back_strictly() {
        assert_eq!(pod_name("shop-shard-1", 2), "shop-shard-1-2");
        assert_eq!(pod_ordinal("shop-shard-1", "shop-shard-1-2"), Some(2));
        assert_eq!(
            pod_ordinal("shop-shard-1", &pod_name("shop-shard-1", 0)),
            Some(0)
        );
        for (set, pod) in [
            ("shop-shard-1", "shop-shard-10"),
            ("shop-shard-1", "shop-shard-1-"),
            ("shop-shard-1", "shop-shard-1-x"),
            ("shop-shard-1", "shop-shard-1-+2"),
            ("shop-shard-1", "shop-shard-1-1-0"),
            ("shop-shard-1", "shop-shard-1-99999999999"),
            ("shop-shard", "shop-shard-1-0"),
            ("shop-shard-1", "other-shard-1-0"),
            ("", "-3"),
        ] {
            assert_eq!(pod_ordinal(set, pod), None, "{pod} is no pod of {set:?}");
        }
        assert_eq!(split_pod_name("shop-shard-0-2"), Some(("shop-shard-0", 2)));
        assert_eq!(split_pod_name("shop-shard-0-x"), None);
        assert_eq!(split_pod_name("nodash"), None);
        assert_eq!(split_pod_name("-3"), None);
    }

    #[test]
    fn role_names_are_what_status_serialises_and_debug_prints() {
        for role in InstanceRole::ALL {
            let json = serde_json::to_string(&role).expect("serialises");
            assert_eq!(json, format!("\"{}\"", role.as_str()));
            assert_eq!(role.to_string(), role.as_str());
            assert_eq!(format!("{role:?}"), role.as_str());
            assert_ne!(role.as_str(), UNKNOWN_ROLE);
        }
        assert_eq!(InstanceRole::Refused.as_str(), "Refused");
        assert_eq!(InstanceRole::Primary.to_string(), "Primary");
    }

    #[test]
    fn the_primary_record_reads_what_the_status_holds_and_ignores_the_rest() {
        let app: ScaledAppView = serde_json::from_str(
            r#"{"apiVersion":"scaled.dev/v1alpha1","kind":"ScaledApp","metadata":{"name":"shop"},
                "spec":{"database":{"shards":3}},
                "status":{"observedGeneration":4,"shards":[
                  {"index":0,"slots":512,"primaryPod":"shop-shard-0-1","primaryPodUid":"u1",
                   "instances":[{"pod":"shop-shard-0-1","role":"Primary","ready":true}]},
                  {"index":1,"primaryPod":"shop-shard-1-0","primaryPodUid":null},
                  {"index":2,"waiting":"volumes exist"}]}}"#,
        )
        .expect("a ScaledApp parses");
        assert_eq!(
            app.shard(0),
            Some(&ShardPrimaryRecord {
                index: 0,
                primary_pod: Some("shop-shard-0-1".into()),
                primary_pod_uid: Some("u1".into()),
            })
        );
        assert_eq!(
            app.shard(1).and_then(|shard| shard.primary_pod.as_deref()),
            Some("shop-shard-1-0")
        );
        assert_eq!(
            app.shard(1).and_then(|shard| shard.primary_pod_uid.clone()),
            None
        );
        assert_eq!(
            app.shard(2).map(|shard| shard.primary_pod.clone()),
            Some(None)
        );
        assert_eq!(app.shard(3), None);
        for empty in [
            r#"{}"#,
            r#"{"status":null}"#,
            r#"{"status":{}}"#,
            r#"{"status":{"shards":null}}"#,
        ] {
            let app: ScaledAppView = serde_json::from_str(empty).expect("parses");
            assert_eq!(app.shard(0), None, "{empty}");
        }
        assert!(
            serde_json::from_str::<ScaledAppView>(
                r#"{"status":{"shards":[{"primaryPod":"x-0"}]}}"#
            )
            .is_err(),
            "an entry without an index is no shard's record, least of all shard 0's"
        );
    }

    #[test]
    fn slot_names_are_legal_postgres_identifiers() {
        assert_eq!(slot_name("shop-shard-1-2"), "shop_shard_1_2");
    }

    #[test]
    fn a_config_without_the_later_fields_gets_their_defaults() {
        let config: InstanceConfig = serde_json::from_str(
            r#"{"schemaVersion":1,"scaledApp":"shop","dataDir":"/data/pgdata","database":"app",
                "appUser":"app","replicationUser":"replicator","instances":3,"parameters":{},
                "synchronousReplication":false,"fenceAfterSeconds":10,"postgresPort":5432,
                "statusPort":8008}"#,
        )
        .expect("a config of the first layout parses");
        assert_eq!(config.reclone_after_seconds, DEFAULT_RECLONE_AFTER_SECONDS);
        assert_eq!(config.clone_max_rate_kib_per_second, None);
        assert_eq!(config.bin_dir, None);
    }

    #[test]
    fn a_status_document_round_trips_and_tolerates_missing_optional_fields() {
        let status: InstanceStatus = serde_json::from_str(
            r#"{"pod":"shop-shard-0-1","shard":0,"role":"Replica","ready":true}"#,
        )
        .expect("minimal document parses");
        assert_eq!(status.role, InstanceRole::Replica);
        assert_eq!(status.reclones, 0);
        let text = serde_json::to_string(&status).expect("serialises");
        assert_eq!(
            serde_json::from_str::<InstanceStatus>(&text).expect("parses"),
            status
        );
    }
}
