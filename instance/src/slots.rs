//! Physical replication slots: on a primary, one per other pod of the StatefulSet (created with
//! WAL reserved at once, so a replica that is still cloning already holds its WAL), and none for
//! ordinals at or beyond `instances` (scale-down). On a standby, none of ours (a rewound former
//! primary keeps its old slots, which would pin WAL forever). Slots with other names are left
//! alone.

use std::collections::BTreeSet;

use scaled_contract::instance::{pod_name, slot_name};

use crate::db::{Connector, DbError};

/// An existing slot, as `pg_replication_slots` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingSlot {
    /// Its name.
    pub name: String,
    /// Whether a walsender uses it now.
    pub active: bool,
}

/// What to change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotPlan {
    /// Slots to create.
    pub create: Vec<String>,
    /// Slots to drop.
    pub drop: Vec<String>,
}

impl SlotPlan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.drop.is_empty()
    }
}

/// The slots a primary `<statefulSet>-<own>` keeps: one per other ordinal below `instances`.
pub fn desired_slots(stateful_set: &str, own_ordinal: u32, instances: u32) -> BTreeSet<String> {
    (0..instances)
        .filter(|ordinal| *ordinal != own_ordinal)
        .map(|ordinal| slot_name(&pod_name(stateful_set, ordinal)))
        .collect()
}

/// Whether `slot` is named like one of this StatefulSet's (`<slot_name(statefulSet)>_<n>`).
pub fn is_ours(stateful_set: &str, slot: &str) -> bool {
    let prefix = format!("{}_", slot_name(stateful_set));
    slot.strip_prefix(&prefix)
        .is_some_and(|ordinal| !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()))
}

/// Creates what is desired and missing; drops ours that are not desired. An active slot is
/// never dropped (its walsender would error); it is dropped on a later pass once idle.
pub fn plan(stateful_set: &str, desired: &BTreeSet<String>, existing: &[ExistingSlot]) -> SlotPlan {
    let create = desired
        .iter()
        .filter(|name| !existing.iter().any(|slot| &slot.name == *name))
        .cloned()
        .collect();
    let drop = existing
        .iter()
        .filter(|slot| {
            is_ours(stateful_set, &slot.name) && !desired.contains(&slot.name) && !slot.active
        })
        .map(|slot| slot.name.clone())
        .collect();
    SlotPlan { create, drop }
}

/// Reads the physical slots of the server behind `connector`.
pub async fn existing(connector: &mut Connector) -> Result<Vec<ExistingSlot>, DbError> {
    let rows = connector
        .query(
            "list replication slots",
            "SELECT slot_name::text, active FROM pg_replication_slots WHERE slot_type = 'physical'",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| ExistingSlot {
            name: row.get(0),
            active: row.get(1),
        })
        .collect())
}

/// Applies a plan.
pub async fn apply(connector: &mut Connector, plan: &SlotPlan) -> Result<(), DbError> {
    for name in &plan.create {
        // `true`: reserve WAL now, not at the first connection.
        connector
            .query(
                "create a replication slot",
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[name],
            )
            .await?;
        tracing::info!(slot = %name, "created replication slot");
    }
    for name in &plan.drop {
        connector
            .query(
                "drop a replication slot",
                "SELECT pg_drop_replication_slot($1)",
                &[name],
            )
            .await?;
        tracing::info!(slot = %name, "dropped replication slot");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, active: bool) -> ExistingSlot {
        ExistingSlot {
            name: name.into(),
            active,
        }
    }

    #[test]
    fn a_primary_wants_one_slot_per_other_pod() {
        let desired = desired_slots("shop-shard-0", 1, 3);
        assert_eq!(
            desired.into_iter().collect::<Vec<_>>(),
            vec!["shop_shard_0_0", "shop_shard_0_2"]
        );
    }

    #[test]
    fn missing_slots_are_created_and_scaled_down_ones_dropped_but_foreign_ones_kept() {
        let desired = desired_slots("shop-shard-0", 0, 2);
        let existing = [
            slot("shop_shard_0_2", false),
            slot("shop_shard_0_3", true),
            slot("backup_tool", false),
            slot("shop_shard_0_x", false),
        ];
        let plan = plan("shop-shard-0", &desired, &existing);
        assert_eq!(plan.create, vec!["shop_shard_0_1"]);
        assert_eq!(
            plan.drop,
            vec!["shop_shard_0_2"],
            "active and foreign slots stay"
        );
    }

    #[test]
    fn a_standby_drops_all_of_its_own_idle_slots() {
        let existing = [slot("shop_shard_0_1", false), slot("other", false)];
        let plan = plan("shop-shard-0", &BTreeSet::new(), &existing);
        assert_eq!(plan.drop, vec!["shop_shard_0_1"]);
        assert!(plan.create.is_empty());
    }

    #[test]
    fn slot_names_of_another_stateful_set_are_not_ours() {
        assert!(is_ours("shop-shard-0", "shop_shard_0_12"));
        assert!(!is_ours("shop-shard-0", "shop_shard_0"));
        assert!(!is_ours("shop-shard-1", "shop_shard_0_1"));
    }
}
