//! Per-tenant rate limiting (token bucket), answering 429 with `Retry-After`. Only requests that
//! authenticated are charged, one token per alert they carry (docs/security.md), so neither
//! forged requests nor one huge notification can starve a tenant's real senders.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Alerts per second and burst allowed per tenant; `per_sec == 0` disables the limit.
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

impl RateLimit {
    /// Refuses settings the limiter cannot work with (checked once at start).
    pub fn validate(&self) -> Result<(), String> {
        if !self.per_sec.is_finite()
            || !(self.per_sec == 0.0 || (0.01..=1e6).contains(&self.per_sec))
        {
            return Err(format!(
                "rate limit {}: use 0 (no limit) or a rate from 0.01 to 1000000 alerts per second",
                self.per_sec
            ));
        }
        if self.per_sec > 0.0 && !(self.burst.is_finite() && (1.0..=1e7).contains(&self.burst)) {
            return Err(format!(
                "rate burst {}: use a number of alerts from 1 to 10000000",
                self.burst
            ));
        }
        Ok(())
    }
}

/// The longest `Retry-After` ever advised.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `cost` tokens (one per alert) for `tenant`, or says how long until they are
    /// available. A cost above the burst is charged as the burst, so a large notification can
    /// pass once the bucket is full instead of never.
    pub fn check(&self, tenant: &str, cost: usize) -> Result<(), Duration> {
        if self.limit.per_sec <= 0.0 {
            return Ok(());
        }
        let capacity = self.limit.burst.max(1.0);
        let cost = (cost.max(1) as f64).min(capacity);
        let now = Instant::now();
        // A poisoned lock only means another request panicked mid-update; the buckets are
        // still numbers, so carry on rather than stop answering.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, last) = buckets.entry(tenant.to_owned()).or_insert((capacity, now));
        let refill = now.duration_since(*last).as_secs_f64() * self.limit.per_sec;
        *tokens = (*tokens + refill).min(capacity);
        *last = now;
        if *tokens >= cost {
            *tokens -= cost;
            Ok(())
        } else {
            let wait = Duration::try_from_secs_f64((cost - *tokens) / self.limit.per_sec)
                .unwrap_or(MAX_RETRY_AFTER);
            Err(wait.clamp(Duration::from_secs(1), MAX_RETRY_AFTER))
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
            assert!(l.check("a", 1).is_ok());
        }
        assert!(l.check("a", 1).unwrap_err() >= Duration::from_secs(1));
        assert!(l.check("b", 1).is_ok());
        let off = RateLimiter::new(RateLimit {
            per_sec: 0.0,
            burst: 0.0,
        });
        assert!((0..1000).all(|_| off.check("a", 1).is_ok()));
    }

    #[test]
    fn charges_per_alert_and_caps_at_the_burst() {
        let l = RateLimiter::new(RateLimit {
            per_sec: 1.0,
            burst: 10.0,
        });
        assert!(l.check("a", 7).is_ok());
        assert!(l.check("a", 7).is_err(), "3 tokens left");
        let big = RateLimiter::new(RateLimit {
            per_sec: 1.0,
            burst: 10.0,
        });
        assert!(
            big.check("a", 500).is_ok(),
            "a full bucket passes a huge request"
        );
        assert!(big.check("a", 1).is_err());
    }

    #[test]
    fn extreme_settings_are_refused_and_never_panic() {
        for (per_sec, burst) in [
            (1e-300, 200.0),
            (f64::NAN, 1.0),
            (-1.0, 1.0),
            (f64::INFINITY, 1.0),
            (5.0, 0.0),
            (5.0, f64::NAN),
        ] {
            assert!(
                RateLimit { per_sec, burst }.validate().is_err(),
                "{per_sec} {burst}"
            );
        }
        assert!(RateLimit::default().validate().is_ok());
        assert!(RateLimit {
            per_sec: 0.0,
            burst: 0.0
        }
        .validate()
        .is_ok());
        // Even unvalidated, the limiter answers instead of panicking.
        let l = RateLimiter::new(RateLimit {
            per_sec: 1e-300,
            burst: 1.0,
        });
        assert!(l.check("a", 1).is_ok());
        assert_eq!(l.check("a", 1).unwrap_err(), MAX_RETRY_AFTER);
        assert!(l.check("a", 1).is_err(), "the lock was not poisoned");
    }
}
