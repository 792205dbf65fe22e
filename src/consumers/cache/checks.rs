//! Password checks in flight. A map view sends tens of tiles at once with the same
//! credentials, so after a restart (nothing remembered yet) each of them needed a bcrypt check
//! of its own, tens of milliseconds of a core each, queued one per core: the view's tiles
//! waited seconds. The requests that bring a password whose check is running wait for that
//! check instead (a `watch` its leader answers), and take its outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{Checked, ConsumerCache};

/// The checks running, by the memo of what they check.
#[derive(Default)]
pub(super) struct InFlight(Mutex<HashMap<[u8; 32], watch::Receiver<Option<bool>>>>);

/// What a request that brings a password not remembered does.
pub enum Turn {
    /// Remembered meanwhile: whether it matched.
    Known(bool),
    /// Another request's check is running: wait for it (`None` when it gave up).
    Follow(watch::Receiver<Option<bool>>),
    /// Check it, for every request that comes with it meanwhile.
    Lead(Leader),
}

impl ConsumerCache {
    /// The turn of a request whose password has the memo `memo`.
    pub fn password_turn(self: &Arc<Self>, memo: [u8; 32]) -> Turn {
        let mut running = self.checks.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = running.get(&memo) {
            return Turn::Follow(rx.clone());
        }
        // (A leader remembers its outcome before it leaves the table: one that left is found
        // here.)
        if let Some(matched) = self.remembered(&memo) {
            return Turn::Known(matched);
        }
        let (tx, rx) = watch::channel(None);
        running.insert(memo, rx);
        Turn::Lead(Leader {
            cache: self.clone(),
            memo,
            tx: Some(tx),
        })
    }
}

/// The request whose check the others wait for. Dropped before [`Leader::finish`] (its
/// request went away, the check could not run), it leaves the table and its followers check
/// for themselves.
pub struct Leader {
    cache: Arc<ConsumerCache>,
    memo: [u8; 32],
    tx: Option<watch::Sender<Option<bool>>>,
}

impl Leader {
    /// Remembers what the check found and tells the requests waiting for it.
    pub fn finish(mut self, checked: &Checked) {
        self.cache.remember_password(checked);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(matches!(checked, Checked::Match(..))));
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.cache
            .checks
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.memo);
    }
}
