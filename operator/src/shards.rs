//! Shard layout of a ScaledApp: which slots each shard owns and how to describe that to a
//! human. Pure; the assignment algorithm itself lives in `scaled_contract` (property-tested
//! there) because the app reads the same map.

use scaled_contract::instance::pod_name;
use scaled_contract::{ShardEndpoints, ShardMapError, balanced_assignment};

use crate::names::{POSTGRES_PORT, PRIMARY_ROLE, service_host, shard_service_name, shard_set_name};

/// The slot assignment for a new ScaledApp: contiguous balanced runs. (Resharding will start
/// from the assignment in the live ConfigMap and call `scaled_contract::rebalance`.)
pub fn assignment(slots: i32, shards: i32) -> Result<Vec<u32>, ShardMapError> {
    let slots = u32::try_from(slots).map_err(|_| ShardMapError::TooFewSlots {
        slots: 0,
        shards: 0,
    })?;
    let shards = u32::try_from(shards).map_err(|_| ShardMapError::NoShards)?;
    balanced_assignment(slots, shards)
}

/// Where shard `index` of ScaledApp `app_name` answers. The primary is a virtual IP that follows
/// the primary role label; every pod is listed as a possible replica, the primary's too (which
/// pod is primary moves with failovers, and the app reads only from pods that are in recovery
/// and have replayed far enough), by its per-pod name through the headless Service, so the app
/// can skip one unhealthy pod.
pub fn endpoints(app_name: &str, namespace: &str, index: u32, pods: u32) -> ShardEndpoints {
    let set = shard_set_name(app_name, index);
    ShardEndpoints {
        index,
        primary: format!(
            "{}:{POSTGRES_PORT}",
            service_host(
                namespace,
                &shard_service_name(app_name, index, PRIMARY_ROLE)
            )
        ),
        replicas: (0..pods)
            .map(|ordinal| {
                format!(
                    "{}.{}:{POSTGRES_PORT}",
                    pod_name(&set, ordinal),
                    service_host(namespace, &set)
                )
            })
            .collect(),
    }
}

/// The slots of one shard as compact ranges, for example `0-255,512-767`.
pub fn describe_slots(assignment: &[u32], shard: u32) -> String {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for (slot, owner) in assignment.iter().enumerate() {
        if *owner != shard {
            continue;
        }
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == slot => *end = slot,
            _ => ranges.push((slot, slot)),
        }
    }
    ranges
        .iter()
        .map(|(start, end)| {
            if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn two_shards_over_1024_slots_split_in_halves() {
        let assignment = assignment(1024, 2).expect("valid");
        assert_eq!(describe_slots(&assignment, 0), "0-511");
        assert_eq!(describe_slots(&assignment, 1), "512-1023");
    }

    #[test]
    fn negative_counts_are_errors_not_panics() {
        assert!(assignment(-1, 2).is_err());
        assert!(assignment(16, -2).is_err());
    }

    fn parse(description: &str) -> Vec<usize> {
        description
            .split(',')
            .filter(|part| !part.is_empty())
            .flat_map(|part| match part.split_once('-') {
                Some((start, end)) => {
                    let start: usize = start.parse().expect("number");
                    let end: usize = end.parse().expect("number");
                    (start..=end).collect::<Vec<_>>()
                }
                None => vec![part.parse().expect("number")],
            })
            .collect()
    }

    proptest! {
        #[test]
        fn described_slots_are_exactly_the_owned_slots(owners in proptest::collection::vec(0u32..4, 1..300)) {
            for shard in 0..4 {
                let owned: Vec<usize> = owners.iter().enumerate().filter(|(_, o)| **o == shard).map(|(slot, _)| slot).collect();
                prop_assert_eq!(parse(&describe_slots(&owners, shard)), owned);
            }
        }
    }
}
