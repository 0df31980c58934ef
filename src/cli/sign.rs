//! `causeflow sign`: the signature headers for a body.

use std::io::Read;

use anyhow::{Context, Result};
use causeflow_shared::auth::sign;

pub fn sign_stdin(secret: &str, timestamp: Option<&str>) -> Result<()> {
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body)?;
    match timestamp {
        None => println!("X-Webhook-Signature: {}", sign(secret, &[&body])),
        Some(ts) => {
            let ts = if ts == "now" {
                chrono::Utc::now().timestamp().to_string()
            } else {
                ts.parse::<i64>()
                    .with_context(|| format!("--timestamp {ts:?}: use Unix seconds"))?
                    .to_string()
            };
            println!(
                "X-Webhook-Signature: {}",
                sign(secret, &[ts.as_bytes(), b":", &body])
            );
            println!("X-Webhook-Timestamp: {ts}");
        }
    }
    Ok(())
}
