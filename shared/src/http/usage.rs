//! Records when each API key last authenticated a request, for the console's key list: at most
//! once a minute per key and process, so a busy key costs one small write a minute. On
//! `causeflow serve` the write runs beside the request; on Lambda, where the process is frozen
//! after each answer, the request awaits it (bounded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::debug;

use crate::ports::KeyUsage;

/// A key's use is written again only after this long.
const EVERY_MS: i64 = 60_000;
/// Keys remembered before the memory is cleared (it only saves writes).
const MAX_REMEMBERED: usize = 100_000;

/// Longest a request waits for the write where it is awaited.
const AWAIT_AT_MOST: std::time::Duration = std::time::Duration::from_millis(300);

/// Throttles [`KeyUsage::record_use`] per key.
pub struct UsageRecorder {
    store: Arc<dyn KeyUsage>,
    written: Mutex<HashMap<String, i64>>,
    awaited: bool,
}

impl UsageRecorder {
    /// Writes in the background (a long-running server).
    pub fn new(store: Arc<dyn KeyUsage>) -> Self {
        UsageRecorder {
            store,
            written: Mutex::new(HashMap::new()),
            awaited: false,
        }
    }

    /// Writes before the request goes on, waiting at most 300 ms (a Lambda).
    pub fn awaited(store: Arc<dyn KeyUsage>) -> Self {
        UsageRecorder {
            awaited: true,
            ..Self::new(store)
        }
    }

    /// Notes a use of `key_id` now; writes it when the last write is a minute old.
    pub async fn note(&self, key_id: &str) {
        let now = crate::now_ms();
        {
            // A poisoned lock only means a panic elsewhere mid-insert: the map is still usable.
            let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
            if w.get(key_id).is_some_and(|at| now - at < EVERY_MS) {
                return;
            }
            if w.len() >= MAX_REMEMBERED {
                w.clear();
            }
            w.insert(key_id.to_owned(), now);
        }
        let (store, key) = (self.store.clone(), key_id.to_owned());
        let write = async move {
            if let Err(e) = store.record_use(&key, now).await {
                debug!(error = %e, "recording a key's last use failed");
            }
        };
        if self.awaited {
            let _ = tokio::time::timeout(AWAIT_AT_MOST, write).await;
        } else {
            tokio::spawn(write);
        }
    }
}
