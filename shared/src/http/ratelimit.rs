//! Per-tenant request rate limiting (token bucket), answering 429 with `Retry-After`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Requests per second and burst allowed per tenant; `per_sec == 0` disables the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_sec: 100.0,
            burst: 200.0,
        }
    }
}

/// In-memory token buckets, one per tenant. Each process (or Lambda instance) limits on its own;
/// API Gateway's throttling is the global limit on AWS.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `tenant`, or says how long until one is available.
    pub fn check(&self, tenant: &str) -> Result<(), Duration> {
        if self.limit.per_sec <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        let (tokens, last) = buckets
            .entry(tenant.to_owned())
            .or_insert((self.limit.burst, now));
        let refill = now.duration_since(*last).as_secs_f64() * self.limit.per_sec;
        *tokens = (*tokens + refill).min(self.limit.burst.max(1.0));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(
                Duration::from_secs_f64((1.0 - *tokens) / self.limit.per_sec)
                    .max(Duration::from_secs(1)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_per_tenant() {
        let l = RateLimiter::new(RateLimit {
            per_sec: 1.0,
            burst: 3.0,
        });
        for _ in 0..3 {
            assert!(l.check("a").is_ok());
        }
        assert!(l.check("a").unwrap_err() >= Duration::from_secs(1));
        assert!(l.check("b").is_ok());
        let off = RateLimiter::new(RateLimit {
            per_sec: 0.0,
            burst: 0.0,
        });
        assert!((0..1000).all(|_| off.check("a").is_ok()));
    }
}
