//! Records when each API key last authenticated a request, for the console's key list: at most
//! once a minute per key and process, off the request's path, so a busy key costs one small
//! write a minute and no request waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::debug;

use crate::ports::KeyUsage;

/// A key's use is written again only after this long.
const EVERY_MS: i64 = 60_000;
/// Keys remembered before the memory is cleared (it only saves writes).
const MAX_REMEMBERED: usize = 100_000;

/// Throttles [`KeyUsage::record_use`] per key.
pub struct UsageRecorder {
    store: Arc<dyn KeyUsage>,
    written: Mutex<HashMap<String, i64>>,
}

impl UsageRecorder {
    pub fn new(store: Arc<dyn KeyUsage>) -> Self {
        UsageRecorder {
            store,
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Notes a use of `key_id` now; writes it in the background when the last write is old.
    pub fn note(&self, key_id: &str) {
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
        tokio::spawn(async move {
            if let Err(e) = store.record_use(&key, now).await {
                debug!(error = %e, "recording a key's last use failed");
            }
        });
    }
}
