//! How a shard's replication is sized: the one rule for `max_wal_senders`,
//! `max_replication_slots` and `max_slot_wal_keep_size`. The operator writes these values into
//! [`InstanceConfig::parameters`](crate::instance::InstanceConfig::parameters); the instance
//! manager applies the same rule when a config lacks them (a hand-written config, a test), so
//! both processes size replication alike and there is no second rule to drift.

/// `max_wal_senders` and `max_replication_slots` for a shard of `instances` pods: one sender and
/// one slot for each pod (every replica streams through its own slot; the primary's share is
/// slack), plus four to spare for what comes on top of streaming: a clone
/// (`pg_basebackup --wal-method=stream` holds two senders), a backup taken the same way, and a
/// replica reconnecting before the primary has noticed that its previous connection died. Both
/// settings need a restart to change, so they are sized for the busiest moment, not the usual one.
pub fn wal_senders(instances: u32) -> u32 {
    instances.saturating_add(4)
}

/// `max_slot_wal_keep_size`, in MiB, for a data volume of `volume_mib` MiB: a quarter of it. A
/// dead replica's slot then holds at most a quarter of the primary's volume of WAL and cannot
/// fill its disk; past that Postgres invalidates the slot and the replica is cloned again.
pub fn slot_wal_keep_mib(volume_mib: u64) -> u64 {
    volume_mib / 4
}

/// [`slot_wal_keep_mib`] as a `postgresql.conf` value (`2560MB`; Postgres reads `MB` as MiB).
pub fn slot_wal_keep_setting(volume_mib: u64) -> String {
    format!("{}MB", slot_wal_keep_mib(volume_mib))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_replica_gets_a_sender_and_a_slot_with_four_to_spare() {
        assert_eq!(wal_senders(1), 5);
        assert_eq!(wal_senders(3), 7);
        assert_eq!(wal_senders(u32::MAX), u32::MAX);
    }

    #[test]
    fn a_slot_may_keep_a_quarter_of_the_volume() {
        assert_eq!(slot_wal_keep_mib(10 * 1024), 2560);
        assert_eq!(slot_wal_keep_setting(10 * 1024), "2560MB");
        assert_eq!(
            slot_wal_keep_mib(1023),
            255,
            "rounded down, never above a quarter"
        );
    }
}
