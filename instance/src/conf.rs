//! Rendering `scaled.conf` (included last from `postgresql.conf`), `pg_hba.conf`,
//! `primary_conninfo` and the replication passfile. Pure functions of their inputs.
//!
//! `pg_hba.conf` has no `trust` line: every connection authenticates with SCRAM, the superuser
//! only over the local socket.

use std::{collections::BTreeMap, fmt::Write, path::Path};

use scaled_contract::{instance::InstanceConfig, replication};

use crate::settings::{PeerAddress, SUPERUSER};

/// Settings the manager owns; the same keys in the config's parameters are ignored.
pub const MANAGER_OWNED: [&str; 11] = [
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "hba_file",
    "wal_log_hints",
    "hot_standby",
    "synchronous_standby_names",
    "primary_conninfo",
    "primary_slot_name",
    "data_directory",
    "config_file",
];

/// How the server is to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMode {
    /// Read-write.
    Primary,
    /// Hot standby streaming from `primary` (or, with `None`, replaying only local WAL until it
    /// is promoted).
    Standby {
        /// The primary to stream from.
        primary: Option<Upstream>,
    },
}

/// The primary a standby streams from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Its pod name.
    pub pod: String,
    /// Where it answers.
    pub address: PeerAddress,
}

/// Everything the settings file depends on.
#[derive(Clone, Debug)]
pub struct SettingsInputs<'a> {
    /// The operator's document.
    pub config: &'a InstanceConfig,
    /// This pod (the standby's `application_name`, so `pg_stat_replication` names it).
    pub pod: &'a str,
    /// Primary or standby.
    pub mode: &'a ServerMode,
    /// Unix socket directory.
    pub socket_dir: &'a Path,
    /// `listen_addresses`.
    pub listen_addresses: &'a str,
    /// The data directory (for `hba_file`).
    pub data_dir: &'a Path,
    /// The replication passfile that `primary_conninfo` names.
    pub passfile: &'a Path,
    /// Size of the data volume in bytes, for `max_slot_wal_keep_size` when the parameters lack it.
    pub volume_bytes: Option<u64>,
}

/// The settings file (`scaled.conf`) and the parameters the config set for keys the manager
/// owns (to warn about).
pub fn render_settings(inputs: &SettingsInputs<'_>) -> (String, Vec<String>) {
    let config = inputs.config;
    let mut settings: BTreeMap<String, String> = BTreeMap::new();
    let mut ignored = Vec::new();
    for (key, value) in &config.parameters {
        let key = key.trim().to_ascii_lowercase();
        if MANAGER_OWNED.contains(&key.as_str()) {
            ignored.push(key);
            continue;
        }
        settings.insert(key, quote_value(value));
    }
    // A standby needs wal_level >= replica on its primary; `minimal` would break replication.
    if settings
        .get("wal_level")
        .is_none_or(|level| level != "'logical'")
    {
        settings.insert("wal_level".into(), "'replica'".into());
    }
    // The operator sets these; a config without them (written by hand, or by a test) gets the
    // values of the same rule.
    let senders = replication::wal_senders(config.instances);
    settings
        .entry("max_wal_senders".into())
        .or_insert_with(|| senders.to_string());
    settings
        .entry("max_replication_slots".into())
        .or_insert_with(|| senders.to_string());
    if let Some(bytes) = inputs.volume_bytes {
        settings
            .entry("max_slot_wal_keep_size".into())
            .or_insert_with(|| quote_value(&replication::slot_wal_keep_setting(bytes / MIB)));
    }

    let mut owned: Vec<(&str, String)> = vec![
        ("port", config.postgres_port.to_string()),
        ("listen_addresses", quote_value(inputs.listen_addresses)),
        (
            "unix_socket_directories",
            quote_value(&inputs.socket_dir.to_string_lossy()),
        ),
        (
            "hba_file",
            quote_value(&inputs.data_dir.join("pg_hba.conf").to_string_lossy()),
        ),
        // pg_rewind needs hint-bit changes in the WAL to find every changed block.
        ("wal_log_hints", "on".into()),
        ("hot_standby", "on".into()),
        (
            "synchronous_standby_names",
            quote_value(if config.synchronous_replication && config.instances > 1 {
                "ANY 1 (*)"
            } else {
                ""
            }),
        ),
    ];
    if let ServerMode::Standby {
        primary: Some(upstream),
    } = inputs.mode
    {
        owned.push((
            "primary_conninfo",
            quote_value(&primary_conninfo(
                &upstream.address,
                &config.replication_user,
                inputs.pod,
                inputs.passfile,
            )),
        ));
        owned.push((
            "primary_slot_name",
            quote_value(&scaled_contract::instance::slot_name(inputs.pod)),
        ));
    } else {
        // Explicitly empty, so a value left in postgresql.auto.conf by hand cannot make a
        // primary stream from somewhere.
        owned.push(("primary_conninfo", "''".into()));
        owned.push(("primary_slot_name", "''".into()));
    }

    let mut text = String::from(
        "# Written by scaled-instance on every start and role change; edits here are lost.\n\
         # From the ScaledApp's parameters:\n",
    );
    for (key, value) in &settings {
        writeln!(text, "{key} = {value}").expect("writing to a String cannot fail");
    }
    text.push_str("# Owned by the instance manager:\n");
    for (key, value) in owned {
        writeln!(text, "{key} = {value}").expect("writing to a String cannot fail");
    }
    (text, ignored)
}

/// Bytes per MiB, to give [`replication::slot_wal_keep_setting`] the volume in its unit.
const MIB: u64 = 1024 * 1024;

/// `pg_hba.conf`: SCRAM everywhere; the superuser locally only; the app role to any database;
/// the replication role for streaming and, for pg_rewind and the manager's questions, to
/// database `postgres`. Anything else matches no line and is rejected.
pub fn render_hba(config: &InstanceConfig) -> String {
    let app = quote_hba_role(&config.app_user);
    let replication = quote_hba_role(&config.replication_user);
    let superuser = quote_hba_role(SUPERUSER);
    format!(
        "# Written by scaled-instance on every start; edits here are lost.\n\
         # TYPE  DATABASE     USER  ADDRESS  METHOD\n\
         local   all          all            scram-sha-256\n\
         host    all          {superuser}  all  reject\n\
         host    replication  {replication}  all  scram-sha-256\n\
         host    postgres     {replication}  all  scram-sha-256\n\
         host    all          {app}  all  scram-sha-256\n"
    )
}

fn quote_hba_role(role: &str) -> String {
    format!("\"{role}\"")
}

/// A standby's `primary_conninfo`. The password comes from the passfile, never this string.
pub fn primary_conninfo(
    primary: &PeerAddress,
    user: &str,
    application_name: &str,
    passfile: &Path,
) -> String {
    [
        ("host", primary.host.as_str()),
        ("port", &primary.port.to_string()),
        ("user", user),
        ("application_name", application_name),
        ("passfile", &passfile.to_string_lossy()),
        ("connect_timeout", "5"),
        // A dead primary's socket must not keep the walreceiver waiting for minutes.
        ("keepalives_idle", "10"),
        ("keepalives_interval", "5"),
        ("keepalives_count", "3"),
    ]
    .iter()
    .map(|(key, value)| format!("{key}={}", quote_conninfo_value(value)))
    .collect::<Vec<_>>()
    .join(" ")
}

/// A configuration-file string literal: `'...'` with `'` doubled and `\` escaped (the config
/// parser reads backslash escapes).
pub fn quote_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A libpq connection-string value: `'...'` with `\` and `'` backslash-escaped.
pub fn quote_conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// One `.pgpass` line for `user` on any host, port and database.
pub fn passfile_line(user: &str, password: &str) -> String {
    let escape = |text: &str| text.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:{}:{}\n", escape(user), escape(password))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn config() -> InstanceConfig {
        InstanceConfig {
            schema_version: 1,
            scaled_app: "shop".into(),
            data_dir: "/var/lib/postgresql/data/pgdata".into(),
            bin_dir: None,
            database: "app".into(),
            app_user: "app".into(),
            replication_user: "replicator".into(),
            instances: 3,
            parameters: BTreeMap::from([
                ("max_connections".into(), "250".into()),
                ("shared_buffers".into(), "128MB".into()),
                ("port".into(), "1".into()),
                ("log_line_prefix".into(), "%m [%p] it's".into()),
            ]),
            synchronous_replication: true,
            fence_after_seconds: 10,
            postgres_port: 5432,
            status_port: 8008,
            reclone_after_seconds: 60,
            clone_max_rate_kib_per_second: None,
        }
    }

    fn inputs<'a>(config: &'a InstanceConfig, mode: &'a ServerMode) -> SettingsInputs<'a> {
        SettingsInputs {
            config,
            pod: "shop-shard-0-1",
            mode,
            socket_dir: Path::new("/var/run/postgresql"),
            listen_addresses: "*",
            data_dir: Path::new("/var/lib/postgresql/data/pgdata"),
            passfile: Path::new("/var/run/postgresql/replication.pgpass"),
            volume_bytes: Some(10 * 1024 * 1024 * 1024),
        }
    }

    fn render(config: &InstanceConfig, mode: &ServerMode) -> (String, Vec<String>) {
        render_settings(&inputs(config, mode))
    }

    fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
        text.lines()
            .filter_map(|line| line.split_once(" = "))
            .find(|(found, _)| *found == key)
            .map(|(_, value)| value)
    }

    #[test]
    fn parameters_are_written_and_owned_keys_win_with_a_warning() {
        let (text, ignored) = render(&config(), &ServerMode::Primary);
        assert_eq!(value(&text, "max_connections"), Some("'250'"));
        assert_eq!(value(&text, "port"), Some("5432"));
        assert_eq!(text.matches("\nport = ").count(), 1);
        assert_eq!(ignored, vec!["port".to_string()]);
        assert_eq!(
            value(&text, "log_line_prefix"),
            Some("'%m [%p] it''s'"),
            "quotes are doubled"
        );
        assert_eq!(value(&text, "wal_log_hints"), Some("on"));
        assert_eq!(value(&text, "hot_standby"), Some("on"));
        assert_eq!(value(&text, "wal_level"), Some("'replica'"));
        assert_eq!(value(&text, "listen_addresses"), Some("'*'"));
        assert_eq!(
            value(&text, "hba_file"),
            Some("'/var/lib/postgresql/data/pgdata/pg_hba.conf'")
        );
    }

    #[test]
    fn synchronous_replication_waits_for_any_one_replica_only_when_there_is_one() {
        let (text, _) = render(&config(), &ServerMode::Primary);
        assert_eq!(
            value(&text, "synchronous_standby_names"),
            Some("'ANY 1 (*)'")
        );
        let mut single = config();
        single.instances = 1;
        let (text, _) = render(&single, &ServerMode::Primary);
        assert_eq!(value(&text, "synchronous_standby_names"), Some("''"));
        let mut asynchronous = config();
        asynchronous.synchronous_replication = false;
        let (text, _) = render(&asynchronous, &ServerMode::Primary);
        assert_eq!(value(&text, "synchronous_standby_names"), Some("''"));
    }

    #[test]
    fn slot_and_sender_limits_missing_from_the_parameters_follow_the_operators_rule() {
        // The operator's render asserts the same figures: 3 instances, a 10 GiB volume.
        let (text, _) = render(&config(), &ServerMode::Primary);
        assert_eq!(value(&text, "max_wal_senders"), Some("7"));
        assert_eq!(value(&text, "max_replication_slots"), Some("7"));
        assert_eq!(value(&text, "max_slot_wal_keep_size"), Some("'2560MB'"));
        let mut set = config();
        set.parameters
            .insert("max_slot_wal_keep_size".into(), "1GB".into());
        set.parameters.insert("max_wal_senders".into(), "12".into());
        let (text, _) = render(&set, &ServerMode::Primary);
        assert_eq!(value(&text, "max_slot_wal_keep_size"), Some("'1GB'"));
        assert_eq!(value(&text, "max_wal_senders"), Some("'12'"));
        let unmeasured = render_settings(&SettingsInputs {
            volume_bytes: None,
            ..inputs(&config(), &ServerMode::Primary)
        })
        .0;
        assert_eq!(
            value(&unmeasured, "max_slot_wal_keep_size"),
            None,
            "no volume size, no guess"
        );
    }

    #[test]
    fn a_standby_streams_from_its_primary_through_its_own_slot_without_a_password() {
        let mode = ServerMode::Standby {
            primary: Some(Upstream {
                pod: "shop-shard-0-0".into(),
                address: PeerAddress {
                    host: "shop-shard-0-0.shop-shard-0.ns.svc".into(),
                    port: 5432,
                },
            }),
        };
        let (text, _) = render(&config(), &mode);
        let conninfo = value(&text, "primary_conninfo").expect("set");
        assert!(conninfo.contains("host=''shop-shard-0-0.shop-shard-0.ns.svc''"));
        assert!(conninfo.contains("application_name=''shop-shard-0-1''"));
        assert!(conninfo.contains("user=''replicator''"));
        assert!(conninfo.contains("passfile=''/var/run/postgresql/replication.pgpass''"));
        assert!(!conninfo.contains("password"));
        assert_eq!(value(&text, "primary_slot_name"), Some("'shop_shard_0_1'"));
        let (primary, _) = render(&config(), &ServerMode::Primary);
        assert_eq!(value(&primary, "primary_conninfo"), Some("''"));
    }

    #[test]
    fn hba_has_no_trust_and_keeps_the_superuser_local() {
        let hba = render_hba(&config());
        assert!(!hba.contains("trust"));
        let rules: Vec<Vec<&str>> = hba
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.split_whitespace().collect())
            .collect();
        assert_eq!(
            rules[0],
            vec!["local", "all", "all", "scram-sha-256"],
            "local needs a password too"
        );
        assert_eq!(
            rules[1],
            vec!["host", "all", "\"postgres\"", "all", "reject"]
        );
        assert!(rules.contains(&vec![
            "host",
            "replication",
            "\"replicator\"",
            "all",
            "scram-sha-256"
        ]));
        assert!(rules.contains(&vec![
            "host",
            "postgres",
            "\"replicator\"",
            "all",
            "scram-sha-256"
        ]));
        assert!(rules.contains(&vec!["host", "all", "\"app\"", "all", "scram-sha-256"]));
        assert_eq!(rules.len(), 5);
    }

    #[test]
    fn quoting_survives_quotes_and_backslashes() {
        assert_eq!(quote_value(r"a'b\c"), r"'a''b\\c'");
        assert_eq!(quote_conninfo_value(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(passfile_line("rep", r"p:w\d"), "*:*:*:rep:p\\:w\\\\d\n");
        let conninfo = primary_conninfo(
            &PeerAddress {
                host: "h".into(),
                port: 1,
            },
            "u",
            "a",
            &PathBuf::from("/x y/pass"),
        );
        assert!(conninfo.contains("passfile='/x y/pass'"));
    }
}
