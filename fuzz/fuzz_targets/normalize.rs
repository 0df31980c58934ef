//! Any bytes as any provider's body, signed or not: the normaliser answers Ok or Err, never
//! panics.
#![no_main]

use causeflow_shared::model::Provider;
use causeflow_shared::normalize::{normalize, Context};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let provider = Provider::ALL[pick as usize % Provider::ALL.len()];
    let Ok(serde_json::Value::Object(root)) = serde_json::from_slice(body) else {
        return;
    };
    let resource = ["issue", "event_alert", "metric_alert", "installation"][(pick >> 4) as usize % 4];
    let ctx = Context {
        sentry_resource: (pick & 0x08 != 0).then_some(resource),
        signed: pick & 0x80 != 0,
    };
    if let Ok(n) = normalize(provider, &root, ctx) {
        // What the normaliser produced must also survive the queue.
        let _ = format!("{n:?}");
    }
});
