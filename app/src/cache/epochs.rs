//! Invalidation epochs: counters bumped on every invalidation, per key bucket and globally. An L1
//! entry carries the epochs seen when its load started and is valid only while they are unchanged.
//! Keys share buckets, so an invalidation may also retire a neighbour's entry early; never late.

use std::sync::atomic::{AtomicU64, Ordering};

const BUCKETS: usize = 4096;

/// The epochs of one key at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch {
    global: u64,
    bucket: u64,
}

/// All counters.
pub struct Epochs {
    global: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

impl Epochs {
    /// All zero.
    pub fn new() -> Self {
        Epochs {
            global: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The epoch of `id` now.
    pub fn current(&self, id: i64) -> Epoch {
        Epoch {
            global: self.global.load(Ordering::Acquire),
            bucket: self.buckets[bucket(id)].load(Ordering::Acquire),
        }
    }

    /// Retires every entry of `id`'s bucket.
    pub fn bump(&self, id: i64) {
        self.buckets[bucket(id)].fetch_add(1, Ordering::AcqRel);
    }

    /// Retires every entry.
    pub fn bump_all(&self) {
        self.global.fetch_add(1, Ordering::AcqRel);
    }
}

fn bucket(id: i64) -> usize {
    // Ids end in random bits, so the low bits spread well.
    (id as u64 as usize) % BUCKETS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalidation_changes_the_epoch_of_its_key_only_within_its_bucket() {
        let epochs = Epochs::new();
        let before = (epochs.current(1), epochs.current(2));
        epochs.bump(1);
        assert_ne!(epochs.current(1), before.0);
        assert_eq!(epochs.current(2), before.1);
        epochs.bump_all();
        assert_ne!(epochs.current(2), before.1);
    }
}
