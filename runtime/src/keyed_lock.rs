//! One async lock per object id, made on first use and dropped when nobody holds it.
//!
//! Read-modify-writes of a record (a stop, a remove, an exit noticed by a watcher) take
//! the lock of that record only, so they serialize with each other but never with the
//! calls on other pods or containers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// Async locks by id.
#[derive(Debug, Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// Waits for the lock of `id`.
    pub async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            // Locks nobody holds or waits for go, so the map stays as small as the
            // number of calls in flight.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            Arc::clone(locks.entry(id.to_string()).or_default())
        };
        lock.lock_owned().await
    }

    /// How many ids have a lock held or waited for (for tests).
    pub fn len(&self) -> usize {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.len()
    }

    /// Whether no lock is held or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_id_serializes_and_others_do_not_wait() {
        let locks = Arc::new(KeyedLocks::default());
        let a = locks.lock("a").await;
        // Another id is free while "a" is held.
        let b = tokio::time::timeout(std::time::Duration::from_secs(1), locks.lock("b")).await;
        assert!(b.is_ok());
        drop(b);
        let waiter = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move { drop(locks.lock("a").await) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the second holder of a did not wait");
        drop(a);
        waiter.await.unwrap();
        assert!(locks.is_empty());
    }
}
