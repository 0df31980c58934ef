//! The dedup lifecycle of docs/contract.md#the-alert-lifecycle as a pure decision, shared by the
//! SQLite and DynamoDB ledgers so both hosts answer the same way.

use std::time::Duration;

use crate::model::{AlertStatus, Outcome, Provider};

/// How long dedup records live and how long an in-flight (pending) record is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupConfig {
    /// A record expires this long after it was written, even without a resolve (default 7 days).
    pub ttl: Duration,
    /// A pending record older than this is taken over by a retry (the writer died mid-way).
    pub lease: Duration,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            ttl: Duration::from_secs(7 * 24 * 3600),
            // Above an ingest invocation's 10 s timeout, below SNS's 20 s between retries.
            lease: Duration::from_secs(15),
        }
    }
}

/// A stored dedup record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupRecord {
    pub incident_id: String,
    /// True while the alert is being queued; false once it is queued.
    pub pending: bool,
    /// Unix millis when the pending lease runs out.
    pub lease_until_ms: i64,
    /// Unix millis after which the record no longer counts.
    pub expires_at_ms: i64,
}

impl DedupRecord {
    /// Whether the record still holds the key at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.expires_at_ms > now_ms && !(self.pending && self.lease_until_ms <= now_ms)
    }
}

/// What to do with one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Open an incident: write the record (reusing `incident_id` when taking over a stale one)
    /// and queue the alert.
    Create { incident_id: String },
    /// Answer with the open incident; write nothing.
    Duplicate { incident_id: String },
    /// Another request claimed the key and has not yet marked it queued, and its lease is live:
    /// it is in flight, or it died between its claim and its send. Answered 503 with the
    /// lease's remaining time, never 409: senders count a 409 as delivered, and if that request
    /// died the alert would be lost. After the lease a retry takes the claim over.
    InFlight {
        incident_id: String,
        retry_after: Duration,
    },
    /// Queue the resolve and release the key.
    Resolve { incident_id: String },
    /// Nothing to do (resolve without an open incident, or a state the product ignores).
    Ignore,
    /// An acknowledgement: with an open incident, queue it so triage records it on the incident
    /// (the key stays); without one, or for a mere state change, nothing to do.
    Acknowledge { incident_id: Option<String> },
}

impl Decision {
    /// The outcome reported to the sender and the incident it concerns.
    pub fn outcome(&self) -> (Outcome, Option<&str>) {
        match self {
            Decision::Create { incident_id } => (Outcome::Created, Some(incident_id)),
            Decision::Duplicate { incident_id } => (Outcome::Duplicate, Some(incident_id)),
            // Never reported: the ledgers answer it with 503.
            Decision::InFlight { incident_id, .. } => (Outcome::Duplicate, Some(incident_id)),
            Decision::Resolve { incident_id } => (Outcome::Resolved, Some(incident_id)),
            Decision::Ignore => (Outcome::Ignored, None),
            Decision::Acknowledge { incident_id } => {
                (Outcome::Acknowledged, incident_id.as_deref())
            }
        }
    }
}

/// Decides an alert's fate from the record stored under its key. `new_incident_id` is used when
/// a new incident opens.
pub fn decide(
    existing: Option<&DedupRecord>,
    status: AlertStatus,
    now_ms: i64,
    new_incident_id: impl FnOnce() -> String,
) -> Decision {
    let live = existing.filter(|r| r.is_live(now_ms));
    // A resolve closes any unexpired record, even a pending one whose writer stopped before
    // marking it queued: the firing may well have been queued, and triage absorbs a resolve of
    // an incident it never opened.
    let unexpired = existing.filter(|r| r.expires_at_ms > now_ms);
    match (status, live) {
        (AlertStatus::StateChange, _) => Decision::Acknowledge { incident_id: None },
        // Queued behind a firing that may yet fail: wait for it, as a duplicate would.
        (AlertStatus::Acknowledged | AlertStatus::Firing, Some(r)) if r.pending => {
            Decision::InFlight {
                incident_id: r.incident_id.clone(),
                retry_after: Duration::from_millis((r.lease_until_ms - now_ms).max(0) as u64),
            }
        }
        // Like a resolve, an acknowledgement follows even a stale pending record: its firing may
        // well have been queued, and triage waits for the incident (or drops the acknowledgement
        // when it never comes).
        (AlertStatus::Acknowledged, _) => Decision::Acknowledge {
            incident_id: unexpired.map(|r| r.incident_id.clone()),
        },
        (AlertStatus::Ignored, _) => Decision::Ignore,
        (AlertStatus::Firing, Some(r)) => Decision::Duplicate {
            incident_id: r.incident_id.clone(),
        },
        (AlertStatus::Firing, None) => Decision::Create {
            // A stale pending record was never confirmed queued: the retry finishes its job under
            // the same incident id, which the sender may already have been told.
            incident_id: match existing {
                Some(r) if r.pending && r.expires_at_ms > now_ms => r.incident_id.clone(),
                _ => new_incident_id(),
            },
        },
        (AlertStatus::Resolved, _) => match unexpired {
            Some(r) => Decision::Resolve {
                incident_id: r.incident_id.clone(),
            },
            None => Decision::Ignore,
        },
    }
}

/// The namespace of an alert's dedup key: its provider, and for alerts that no signature covered
/// a namespace of their own beside it, so an unsigned request can never open, match or resolve
/// an incident that a signed request keyed (docs/security.md).
pub fn namespace(provider: Provider, unsigned: bool) -> String {
    if unsigned {
        format!("{provider}:unsigned")
    } else {
        provider.as_str().to_owned()
    }
}

/// A new, time-ordered incident id.
pub fn new_incident_id() -> String {
    format!("inc_{}", uuid::Uuid::now_v7().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pending: bool, lease: i64, exp: i64) -> DedupRecord {
        DedupRecord {
            incident_id: "inc_1".into(),
            pending,
            lease_until_ms: lease,
            expires_at_ms: exp,
        }
    }

    #[test]
    fn lifecycle() {
        let new = || "inc_new".to_owned();
        use AlertStatus::*;
        assert_eq!(
            decide(None, Firing, 0, new),
            Decision::Create {
                incident_id: "inc_new".into()
            }
        );
        let open = rec(false, 0, 100);
        assert_eq!(
            decide(Some(&open), Firing, 50, new),
            Decision::Duplicate {
                incident_id: "inc_1".into()
            }
        );
        assert_eq!(
            decide(Some(&open), Resolved, 50, new),
            Decision::Resolve {
                incident_id: "inc_1".into()
            }
        );
        assert_eq!(decide(None, Resolved, 50, new), Decision::Ignore);
        // Expired records release the key.
        assert_eq!(
            decide(Some(&open), Firing, 100, new),
            Decision::Create {
                incident_id: "inc_new".into()
            }
        );
        assert_eq!(decide(Some(&open), Resolved, 100, new), Decision::Ignore);
        // A live pending lease is a request in flight (or one that died mid-way): retry when
        // it runs out, never a 409; a stale one is taken over.
        let pending = rec(true, 10, 100);
        assert_eq!(
            decide(Some(&pending), Firing, 5, new),
            Decision::InFlight {
                incident_id: "inc_1".into(),
                retry_after: Duration::from_millis(5),
            }
        );
        assert_eq!(
            decide(Some(&pending), Firing, 10, new),
            Decision::Create {
                incident_id: "inc_1".into()
            }
        );
    }

    #[test]
    fn acknowledgements_name_the_open_incident_only() {
        let new = || "inc_new".to_owned();
        use AlertStatus::*;
        let open = rec(false, 0, 100);
        assert_eq!(
            decide(Some(&open), Acknowledged, 5, new),
            Decision::Acknowledge {
                incident_id: Some("inc_1".into())
            }
        );
        assert_eq!(
            decide(None, Acknowledged, 5, new),
            Decision::Acknowledge { incident_id: None }
        );
        assert_eq!(
            decide(Some(&open), StateChange, 5, new),
            Decision::Acknowledge { incident_id: None },
            "a mere state change never acknowledges"
        );
        assert!(matches!(
            decide(Some(&rec(true, 10, 100)), Acknowledged, 5, new),
            Decision::InFlight { .. }
        ));
        assert_eq!(
            decide(Some(&rec(true, 10, 100)), Acknowledged, 50, new),
            Decision::Acknowledge {
                incident_id: Some("inc_1".into())
            },
            "a stale pending record's firing may have been queued"
        );
        assert_eq!(
            decide(Some(&open), Acknowledged, 100, new),
            Decision::Acknowledge { incident_id: None },
            "expired"
        );
    }

    #[test]
    fn a_resolve_closes_even_a_stale_pending_record() {
        let pending = rec(true, 10, 100);
        let d = decide(Some(&pending), AlertStatus::Resolved, 50, || {
            "inc_new".to_owned()
        });
        assert_eq!(
            d,
            Decision::Resolve {
                incident_id: "inc_1".into()
            }
        );
        let d = decide(Some(&pending), AlertStatus::Resolved, 100, || {
            "inc_new".to_owned()
        });
        assert_eq!(d, Decision::Ignore, "expired");
    }

    #[test]
    fn incident_ids_sort_by_time() {
        let a = new_incident_id();
        let b = new_incident_id();
        assert!(a < b && a.starts_with("inc_"));
    }
}
