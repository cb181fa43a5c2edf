//! Globally unique, time-ordered 63-bit ids generated in the app.
//!
//! Layout: milliseconds since 2026-01-01 in the high 41 bits (good until 2095), 22 random bits
//! below. The id decides the shard (`slot_for_key(id)`), so equal ids always land on the same
//! shard; that shard's primary key therefore makes ids unique across all shards, and a collision
//! (one in four million per millisecond and slot) is simply retried. No coordination between pods
//! or shards is needed, and keyset pagination by id follows creation order.
//!
//! A user's id is drawn so that its slot equals the slot of the user's email: the user row and
//! its email claim then live on the same shard (and move together on resharding), so creating a
//! user is one local transaction.

use rand::Rng;
use scaled_contract::slot_for_key;

/// 2026-01-01T00:00:00Z in Unix milliseconds.
const EPOCH_MS: i64 = 1_767_225_600_000;
const RANDOM_BITS: u32 = 22;
const RANDOM_MASK: i64 = (1 << RANDOM_BITS) - 1;

fn time_part() -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    (now - EPOCH_MS).max(0) << RANDOM_BITS
}

/// A fresh id.
pub fn new_id() -> i64 {
    time_part() | (rand::rng().random::<i64>() & RANDOM_MASK)
}

/// A fresh id whose slot is `slot` (out of `slots`). About `slots` hashes on average.
pub fn new_id_in_slot(slot: u32, slots: u32) -> i64 {
    let mut random = rand::rng();
    loop {
        let base = time_part();
        // 64 x slots draws fail to hit the slot with probability e^-64; then the millisecond has
        // moved on and a new base is as good as any.
        for _ in 0..(u64::from(slots) * 64) {
            let id = base | (random.random::<i64>() & RANDOM_MASK);
            if slot_for_key(&id.to_string(), slots) == slot {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positive_and_grow_with_time() {
        let first = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_id();
        assert!(first > 0 && second > first, "{first} then {second}");
    }

    #[test]
    fn an_id_drawn_for_a_slot_hashes_to_that_slot() {
        for slot in [0, 1, 511, 1023] {
            let id = new_id_in_slot(slot, 1024);
            assert_eq!(slot_for_key(&id.to_string(), 1024), slot);
        }
    }
}
