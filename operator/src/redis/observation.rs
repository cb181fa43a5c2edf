//! What the Redis stage observes of each Redis pod: the pod as the API holds it and what its
//! redis-server says of its replication (`INFO replication` and `INFO keyspace`). A leaf of the
//! stage: [`observe`](super::observe) fills it in, [`decide`](super::decide) reads it.

/// One Redis pod of the ScaledApp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisPod {
    /// Pod name (`<app>-redis-<ordinal>`).
    pub name: String,
    /// StatefulSet ordinal.
    pub ordinal: u32,
    /// The pod object's uid: another one means the pod was recreated.
    pub uid: Option<String>,
    /// The pod's IP, once it has one: replicas follow the primary by IP, because a pod's DNS
    /// name resolves only while it is ready.
    pub ip: Option<String>,
    /// Being deleted.
    pub deleting: bool,
    /// The role label the pod carries now (`primary` selects it for the primary Service).
    pub role_label: Option<String>,
    /// What its redis-server said, or why it did not.
    pub report: Report,
}

/// What a Redis pod's server said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// Not asked: the pod is not running, has no IP yet, or the password is not known yet.
    NotAsked,
    /// Asked and got no answer (or an error) within the budget.
    Unreachable(String),
    /// Its replication state.
    Answered(Replication),
}

impl Report {
    /// The replication state, if the server answered.
    pub fn answered(&self) -> Option<&Replication> {
        match self {
            Report::Answered(replication) => Some(replication),
            _ => None,
        }
    }
}

/// A redis-server's replication state, from `INFO replication` and `INFO keyspace`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replication {
    /// `role:master`: it takes writes.
    pub master: bool,
    /// The primary it follows (`master_host`), if a replica. A replica started fenced follows
    /// [`FENCE_HOST`].
    pub master_host: Option<String>,
    /// `master_link_status:up`: a replica in sync with its primary.
    pub link_up: bool,
    /// `master_repl_offset`: how far into the replication stream it is. Replicas of one primary
    /// (and a replica promoted from them) share one offset space, so the highest offset holds
    /// the most writes.
    pub offset: i64,
    /// Keys over every database: breaks ties between servers that never replicated (offset 0)
    /// so a restarted primary with data is preferred over an empty replica.
    pub keys: i64,
}

/// The address a Redis pod follows when it starts as a replica of nobody: every pod but a new
/// shard's first starts so (read-only, serving what it has) until the operator promotes it or
/// points it at the primary. Nothing listens there.
pub const FENCE_HOST: &str = "127.0.0.1";
/// The port of [`FENCE_HOST`]: reserved (tcpmux), so the connection is refused at once.
pub const FENCE_PORT: u16 = 1;

impl Replication {
    /// Parses the text of `INFO replication` followed by `INFO keyspace` (or a full `INFO`).
    pub fn parse(info: &str) -> Replication {
        let mut replication = Replication::default();
        for line in info.lines() {
            let line = line.trim();
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key {
                "role" => replication.master = value == "master",
                "master_host" => replication.master_host = Some(value.to_string()),
                "master_link_status" => replication.link_up = value == "up",
                "master_repl_offset" => replication.offset = value.parse().unwrap_or(0),
                _ if key.starts_with("db") && key[2..].chars().all(|c| c.is_ascii_digit()) => {
                    replication.keys += value
                        .split(',')
                        .find_map(|field| field.strip_prefix("keys="))
                        .and_then(|keys| keys.parse::<i64>().ok())
                        .unwrap_or(0);
                }
                _ => {}
            }
        }
        if replication.master {
            replication.master_host = None;
            replication.link_up = false;
        }
        replication
    }

    /// A replica started fenced (following nobody) and not yet pointed at a primary.
    pub fn fenced(&self) -> bool {
        !self.master && self.master_host.as_deref() == Some(FENCE_HOST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_of_a_replica_and_of_a_primary_parse_to_their_replication_state() {
        let replica = "# Replication\r\nrole:slave\r\nmaster_host:10.1.0.7\r\nmaster_port:6379\r\n\
                       master_link_status:up\r\nslave_repl_offset:9182\r\nmaster_repl_offset:9182\r\n\
                       \r\n# Keyspace\r\ndb0:keys=12,expires=3,avg_ttl=0\r\ndb2:keys=5,expires=0\r\n";
        assert_eq!(
            Replication::parse(replica),
            Replication {
                master: false,
                master_host: Some("10.1.0.7".into()),
                link_up: true,
                offset: 9182,
                keys: 17,
            }
        );
        let primary = "role:master\r\nconnected_slaves:1\r\nslave0:ip=10.1.0.8,port=6379,state=online,offset=9182,lag=0\r\n\
                       master_repl_offset:9200\r\n";
        let parsed = Replication::parse(primary);
        assert!(parsed.master && !parsed.fenced());
        assert_eq!(
            (parsed.offset, parsed.keys, parsed.master_host),
            (9200, 0, None)
        );
        let fenced = "role:slave\r\nmaster_host:127.0.0.1\r\nmaster_link_status:down\r\nmaster_repl_offset:0\r\n";
        assert!(Replication::parse(fenced).fenced());
    }
}
