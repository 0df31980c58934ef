//! Tenants and API keys in SQLite: the key and tenant ports ([`ApiKeys`], [`TenantSettings`],
//! [`TopicAllowList`]) plus the management operations the CLI uses, and the SNS subscription
//! records. Keys in use are cached, and a key changed by any process (the console, or
//! `causeflow keys …` beside a running `serve`) takes effect on the next request: every change
//! counts itself in a counter the processes share ([`super::epoch`]), and a cached key is used only
//! while that counter has not moved since it was read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::{now_ms, Db, KeyEpoch};
use crate::auth::{new_webhook_secret, IssuedKey};
use crate::error::StoreError;
use crate::policy::{AgentOverrides, OverridesCache};
use crate::ports::{
    ApiKeys, KeyAdmin, KeyRecord, KeySummary, Subscription, SubscriptionState, Subscriptions,
    TenantSettings, TopicAllowList,
};
use crate::validate::{check_tenant_id, check_topic_arn, clean_sentry_secret};

/// Tenants and keys stored in the embedded database.
#[derive(Clone)]
pub struct SqliteDirectory {
    db: Db,
    overrides: Arc<OverridesCache>,
    /// `None` where the change counter could not be mapped: every lookup reads the database.
    keys: Option<Arc<KeyCache>>,
}

/// Keys found by their digest, each with the change count it was read under.
///
/// Only keys that exist are kept, so strangers sending made-up keys cannot grow it (they are
/// looked up every time, as before). The age limit is a backstop for changes made without the
/// counter (by hand, with `sqlite3`); the counter is what makes a revoke apply at once.
struct KeyCache {
    epoch: Arc<KeyEpoch>,
    ttl: Duration,
    map: Mutex<HashMap<String, CachedKey>>,
}

struct CachedKey {
    epoch: u64,
    read_at: Instant,
    key: KeyRecord,
}

/// How long a cached key is used at most, whatever the counter says.
const KEY_TTL: Duration = Duration::from_secs(1);
/// Keys cached at most (a database holds few; past this the cache starts over).
const MAX_CACHED_KEYS: usize = 10_000;

impl KeyCache {
    fn get(&self, key_hash: &str, epoch: u64) -> Option<KeyRecord> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key_hash)
            .filter(|c| c.epoch == epoch && c.read_at.elapsed() < self.ttl)
            .map(|c| c.key.clone())
    }

    fn put(&self, key_hash: &str, epoch: u64, key: &KeyRecord) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // What can no longer be used goes, so the secrets of changed keys do not linger. A put
        // happens once per key and second at most, over the few keys a database holds.
        map.retain(|_, c| c.epoch == epoch && c.read_at.elapsed() < self.ttl);
        if map.len() >= MAX_CACHED_KEYS {
            map.clear();
        }
        map.insert(
            key_hash.to_owned(),
            CachedKey {
                epoch,
                read_at: Instant::now(),
                key: key.clone(),
            },
        );
    }
}

/// How long triage reuses a tenant's agent table before reading it again. Changes made through
/// this process (the console) apply at once; `causeflow tenants` from another process within
/// this time. Triage read it once per alert, a read transaction each.
const OVERRIDES_TTL: Duration = Duration::from_secs(1);

fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn ensure_tenant(c: &rusqlite::Connection, tenant: &str) -> Result<(), StoreError> {
    check_tenant_id(tenant)?;
    c.execute(
        "INSERT OR IGNORE INTO tenants(tenant_id, created_at) VALUES (?1, ?2)",
        params![tenant, now_ms()],
    )?;
    Ok(())
}

impl SqliteDirectory {
    pub fn new(db: Db) -> Self {
        Self::with_key_ttl(db, KEY_TTL)
    }

    /// Like [`SqliteDirectory::new`], with cached keys used for up to `ttl` (tests make it long,
    /// so only the change counter can end it).
    pub fn with_key_ttl(db: Db, ttl: Duration) -> Self {
        let keys = db.key_epoch().map(|epoch| {
            Arc::new(KeyCache {
                epoch,
                ttl,
                map: Mutex::default(),
            })
        });
        SqliteDirectory {
            db,
            overrides: Arc::new(OverridesCache::new(OVERRIDES_TTL)),
            keys,
        }
    }

    /// Updates one active key of one tenant with `sql` (`?1` the tenant, `?2` the key id, `?3`
    /// the value, if any), failing with NotFound when there is none. Once it commits, the change
    /// is counted, so every process's cached keys are read again ([`KeyCache`]); on the writer
    /// thread, so a caller that goes away in between cannot skip it.
    async fn update_key(
        &self,
        sql: &'static str,
        tenant: &str,
        key_id: &str,
        value: Option<rusqlite::types::Value>,
    ) -> Result<(), StoreError> {
        let (t, k) = (tenant.to_owned(), key_id.to_owned());
        let epoch = self.keys.as_ref().map(|c| c.epoch.clone());
        let counted = move || {
            if let Some(e) = epoch {
                e.bump();
            }
        };
        self.db
            .write_then(
                move |c| {
                    let n = match value {
                        Some(v) => c.execute(sql, params![t, k, v])?,
                        None => c.execute(sql, params![t, k])?,
                    };
                    if n == 0 {
                        return Err(StoreError::NotFound(format!(
                            "no active key {k} for tenant {t}"
                        )));
                    }
                    Ok(())
                },
                counted,
            )
            .await
    }

    /// Reads the key whose digest is `key_hash` from the database.
    fn read_key(&self, key_hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.db.read_now(|c| {
            let mut st = c.prepare_cached(
                "SELECT key_id, tenant_id, name, webhook_secret, previous_secret,
                        sentry_client_secret, revoked_at IS NOT NULL
                 FROM api_keys WHERE key_hash = ?1",
            )?;
            Ok(st
                .query_row([key_hash], |r| {
                    let mut secrets = vec![r.get::<_, String>(3)?];
                    if let Some(prev) = r.get::<_, Option<String>>(4)? {
                        secrets.push(prev);
                    }
                    Ok(KeyRecord {
                        key_id: r.get(0)?,
                        tenant_id: r.get(1)?,
                        name: r.get(2)?,
                        webhook_secrets: secrets,
                        sentry_client_secret: r.get(5)?,
                        revoked: r.get(6)?,
                    })
                })
                .optional()?)
        })
    }

    /// Whether no tenant exists yet (first start of `causeflow serve`).
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        self.db
            .read(|c| {
                let n: i64 = c.query_row("SELECT count(*) FROM tenants", [], |r| r.get(0))?;
                Ok(n == 0)
            })
            .await
    }
}

#[async_trait]
impl KeyAdmin for SqliteDirectory {
    async fn store_key(&self, tenant: &str, name: &str, key: &IssuedKey) -> Result<(), StoreError> {
        let (tenant, name, k) = (tenant.to_owned(), name.to_owned(), key.clone());
        self.db
            .write(move |c| {
                ensure_tenant(c, &tenant)?;
                c.execute(
                    "INSERT INTO api_keys(key_id, tenant_id, name, key_hash, webhook_secret, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![k.key_id, tenant, name, k.key_hash, k.webhook_secret, now_ms()],
                )?;
                Ok(())
            })
            .await
    }

    async fn list_keys(&self, tenant: &str) -> Result<Vec<KeySummary>, StoreError> {
        let tenant = tenant.to_owned();
        self.db
            .read(move |c| {
                let mut st = c.prepare(
                    "SELECT key_id, tenant_id, name, created_at, revoked_at IS NOT NULL,
                            previous_secret IS NOT NULL, sentry_client_secret IS NOT NULL
                     FROM api_keys WHERE tenant_id = ?1 ORDER BY created_at, key_id",
                )?;
                let rows = st.query_map([tenant], |r| {
                    Ok(KeySummary {
                        key_id: r.get(0)?,
                        tenant_id: r.get(1)?,
                        name: r.get(2)?,
                        created_at: ms_to_rfc3339(r.get(3)?),
                        revoked: r.get(4)?,
                        rotating: r.get(5)?,
                        has_sentry_secret: r.get(6)?,
                        last_used_at: None,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    async fn revoke_key(&self, tenant: &str, key_id: &str) -> Result<(), StoreError> {
        self.update_key(
            "UPDATE api_keys SET revoked_at = ?3
             WHERE tenant_id = ?1 AND key_id = ?2 AND revoked_at IS NULL",
            tenant,
            key_id,
            Some(now_ms().into()),
        )
        .await
    }

    async fn rotate_secret(&self, tenant: &str, key_id: &str) -> Result<String, StoreError> {
        let secret = new_webhook_secret();
        self.update_key(
            "UPDATE api_keys SET previous_secret = webhook_secret, webhook_secret = ?3
             WHERE tenant_id = ?1 AND key_id = ?2 AND revoked_at IS NULL",
            tenant,
            key_id,
            Some(secret.clone().into()),
        )
        .await?;
        Ok(secret)
    }

    async fn retire_secret(&self, tenant: &str, key_id: &str) -> Result<(), StoreError> {
        self.update_key(
            "UPDATE api_keys SET previous_secret = NULL
             WHERE tenant_id = ?1 AND key_id = ?2 AND revoked_at IS NULL",
            tenant,
            key_id,
            None,
        )
        .await
    }

    async fn set_sentry_secret(
        &self,
        tenant: &str,
        key_id: &str,
        secret: &str,
    ) -> Result<(), StoreError> {
        let secret = clean_sentry_secret(secret)?;
        self.update_key(
            "UPDATE api_keys SET sentry_client_secret = ?3
             WHERE tenant_id = ?1 AND key_id = ?2 AND revoked_at IS NULL",
            tenant,
            key_id,
            Some(secret.into()),
        )
        .await
    }

    async fn set_agent_overrides(
        &self,
        tenant: &str,
        overrides: &AgentOverrides,
    ) -> Result<(), StoreError> {
        let t = tenant.to_owned();
        let json = (!overrides.0.is_empty())
            .then(|| serde_json::to_string(overrides).expect("overrides serialise"));
        self.db
            .write(move |c| {
                ensure_tenant(c, &t)?;
                c.execute(
                    "UPDATE tenants SET agent_overrides = ?2 WHERE tenant_id = ?1",
                    params![t, json],
                )?;
                Ok(())
            })
            .await?;
        self.overrides.forget(tenant);
        Ok(())
    }

    async fn allowed_topics(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let t = tenant.to_owned();
        self.db
            .read(move |c| {
                let mut st = c.prepare_cached(
                    "SELECT topic_arn FROM topic_allowlist WHERE tenant_id = ?1 ORDER BY topic_arn",
                )?;
                let rows = st.query_map([t], |r| r.get(0))?;
                Ok(rows.collect::<Result<Vec<String>, _>>()?)
            })
            .await
    }

    async fn allow_topic(
        &self,
        tenant: &str,
        topic_arn: &str,
        allow: bool,
    ) -> Result<(), StoreError> {
        check_topic_arn(topic_arn)?;
        let (t, a) = (tenant.to_owned(), topic_arn.to_owned());
        self.db
            .write(move |c| {
                ensure_tenant(c, &t)?;
                if allow {
                    c.execute(
                        "INSERT OR IGNORE INTO topic_allowlist(tenant_id, topic_arn, created_at) VALUES (?1, ?2, ?3)",
                        params![t, a, now_ms()],
                    )?;
                } else {
                    c.execute(
                        "DELETE FROM topic_allowlist WHERE tenant_id = ?1 AND topic_arn = ?2",
                        params![t, a],
                    )?;
                }
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl ApiKeys for SqliteDirectory {
    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        let Some(cache) = &self.keys else {
            return self.read_key(key_hash);
        };
        // Read before the database: a change counted after this makes the entry stale, and
        // one counted before it has committed, so the read below sees it.
        let epoch = cache.epoch.current();
        if let Some(k) = cache.get(key_hash, epoch) {
            return Ok(Some(k));
        }
        let key = self.read_key(key_hash)?;
        if let Some(k) = &key {
            cache.put(key_hash, epoch, k);
        }
        Ok(key)
    }
}

#[async_trait]
impl TenantSettings for SqliteDirectory {
    async fn agent_overrides(&self, tenant_id: &str) -> Result<AgentOverrides, StoreError> {
        if let Some(o) = self.overrides.get(tenant_id) {
            return Ok(o);
        }
        let read = self.read_overrides(tenant_id)?;
        self.overrides.put(tenant_id, &read);
        Ok(read)
    }
}

impl SqliteDirectory {
    fn read_overrides(&self, tenant_id: &str) -> Result<AgentOverrides, StoreError> {
        let json: Option<String> = self.db.read_now(|c| {
            Ok(
                c.prepare_cached("SELECT agent_overrides FROM tenants WHERE tenant_id = ?1")?
                    .query_row([tenant_id], |r| r.get(0))
                    .optional()?
                    .flatten(),
            )
        })?;
        match json {
            None => Ok(AgentOverrides::default()),
            Some(j) => serde_json::from_str(&j)
                .map_err(|e| StoreError::Unavailable(format!("tenant agent overrides: {e}"))),
        }
    }
}

#[async_trait]
impl TopicAllowList for SqliteDirectory {
    async fn topic_allowed(&self, tenant_id: &str, topic_arn: &str) -> Result<bool, StoreError> {
        let (t, a) = (tenant_id.to_owned(), topic_arn.to_owned());
        self.db
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT 1 FROM topic_allowlist WHERE tenant_id = ?1 AND topic_arn = ?2",
                )?
                .exists(params![t, a])?)
            })
            .await
    }
}

/// The record of SNS subscriptions per tenant in the SQLite file, beside
/// [`crate::aws::DynamoSubscriptions`] on AWS.
#[derive(Clone)]
pub struct SqliteSubscriptions {
    db: Db,
}

impl SqliteSubscriptions {
    pub fn new(db: Db) -> Self {
        SqliteSubscriptions { db }
    }
}

#[async_trait]
impl Subscriptions for SqliteSubscriptions {
    async fn record(&self, sub: &Subscription) -> Result<(), StoreError> {
        let sub = sub.clone();
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO sns_subscriptions(tenant_id, topic_arn, state, subscription_arn, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(tenant_id, topic_arn) DO UPDATE SET state = excluded.state,
                        subscription_arn = COALESCE(excluded.subscription_arn, subscription_arn),
                        updated_at = excluded.updated_at",
                    params![sub.tenant_id, sub.topic_arn, sub.state.as_str(), sub.subscription_arn, now_ms()],
                )?;
                Ok(())
            })
            .await
    }

    async fn list(&self, tenant_id: &str) -> Result<Vec<Subscription>, StoreError> {
        let t = tenant_id.to_owned();
        self.db
            .read(move |c| {
                let mut st = c.prepare(
                    "SELECT tenant_id, topic_arn, state, subscription_arn, updated_at
                     FROM sns_subscriptions WHERE tenant_id = ?1 ORDER BY topic_arn",
                )?;
                let rows = st.query_map([t], |r| {
                    Ok(Subscription {
                        tenant_id: r.get(0)?,
                        topic_arn: r.get(1)?,
                        state: SubscriptionState::parse(&r.get::<_, String>(2)?)
                            .unwrap_or(SubscriptionState::Pending),
                        subscription_arn: r.get(3)?,
                        updated_at: ms_to_rfc3339(r.get(4)?),
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }
}

#[async_trait]
impl crate::ports::KeyUsage for SqliteDirectory {
    async fn record_use(&self, key_id: &str, at_ms: i64) -> Result<(), StoreError> {
        let k = key_id.to_owned();
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO key_usage(key_id, last_used_at) VALUES (?1, ?2)
                     ON CONFLICT(key_id) DO UPDATE SET last_used_at = max(last_used_at, excluded.last_used_at)",
                )?
                .execute(params![k, at_ms])?;
                Ok(())
            })
            .await
    }

    async fn last_used(
        &self,
        key_ids: &[String],
    ) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        let ids = key_ids.to_vec();
        self.db
            .read(move |c| {
                let mut st =
                    c.prepare_cached("SELECT last_used_at FROM key_usage WHERE key_id = ?1")?;
                let mut out = std::collections::HashMap::new();
                for id in ids {
                    if let Some(at) = st.query_row([&id], |r| r.get::<_, i64>(0)).optional()? {
                        out.insert(id, at);
                    }
                }
                Ok(out)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_api_key;

    /// The path of a database in a new directory (not created yet).
    fn fresh() -> std::path::PathBuf {
        super::super::tests::tempdir().join("c.db")
    }

    /// The keys of the database at `path`, cached for an hour: only the change counter can
    /// make a cached key be read again within a test.
    fn cached_for_an_hour(path: &std::path::Path) -> SqliteDirectory {
        SqliteDirectory::with_key_ttl(Db::open(path).unwrap(), Duration::from_secs(3600))
    }

    /// `serve` caches a key; `causeflow keys …` (another process, here another opening of the
    /// file with its own mapping of the counter) changes it; `serve`'s next lookup sees the
    /// change. The cache's age limit is an hour here, so only the counter can make that happen,
    /// and a change made by hand, without it, is indeed not seen: the key was cached.
    #[tokio::test]
    async fn a_key_changed_by_another_process_applies_to_the_next_lookup() {
        let path = fresh();
        let serve = cached_for_an_hour(&path);
        let cli_db = Db::open(&path).unwrap();
        let cli = SqliteDirectory::new(cli_db.clone());
        let issued = cli.create_key("acme", "k").await.unwrap();
        let hash = hash_api_key(&issued.api_key);
        let lookup = || async { serve.key_by_hash(&hash).await.unwrap().unwrap() };

        let first = lookup().await;
        assert_eq!(
            first.webhook_secrets,
            std::slice::from_ref(&issued.webhook_secret)
        );
        assert!(!first.revoked);

        // By hand, past the counter: the cached key is still what is used.
        let rename = |name: &'static str| {
            let db = cli_db.clone();
            async move {
                db.write(move |c| Ok(c.execute("UPDATE api_keys SET name = ?1", [name])?))
                    .await
                    .unwrap();
            }
        };
        rename("renamed").await;
        assert_eq!(lookup().await.name, "k");
        // Such a change applies once a cached key is older than the age limit (1 s in
        // `serve`; none at all here).
        let unaged = SqliteDirectory::with_key_ttl(Db::open(&path).unwrap(), Duration::ZERO);
        assert_eq!(
            unaged.key_by_hash(&hash).await.unwrap().unwrap().name,
            "renamed"
        );
        rename("by hand").await;
        assert_eq!(
            unaged.key_by_hash(&hash).await.unwrap().unwrap().name,
            "by hand"
        );
        rename("renamed").await;

        let rotated = cli.rotate_secret("acme", &issued.key_id).await.unwrap();
        let seen = lookup().await;
        assert_eq!(
            seen.webhook_secrets,
            [rotated.clone(), issued.webhook_secret]
        );
        assert_eq!(seen.name, "renamed");

        cli.retire_secret("acme", &issued.key_id).await.unwrap();
        assert_eq!(lookup().await.webhook_secrets, [rotated]);

        cli.set_sentry_secret("acme", &issued.key_id, "sentry-s3cret")
            .await
            .unwrap();
        assert_eq!(
            lookup().await.sentry_client_secret.as_deref(),
            Some("sentry-s3cret")
        );

        cli.revoke_key("acme", &issued.key_id).await.unwrap();
        assert!(lookup().await.revoked);
    }

    /// The change is counted by the writer once it commits, not by the caller: a revoke whose
    /// caller goes away while it is queued (a dropped request, a timeout) still reaches every
    /// cache.
    #[tokio::test]
    async fn a_change_is_counted_even_when_its_caller_goes_away() {
        let path = fresh();
        let serve = cached_for_an_hour(&path);
        let issued = serve.create_key("acme", "k").await.unwrap();
        let hash = hash_api_key(&issued.api_key);
        assert!(!serve.key_by_hash(&hash).await.unwrap().unwrap().revoked);
        let epoch = serve.keys.as_ref().unwrap().epoch.clone();
        let before = epoch.current();
        // The writer is held in a job of its own, so the revoke queued behind it is still
        // waiting when its caller drops it.
        let (entered, has_entered) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        use std::future::Future;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut blocker = Box::pin(serve.db.write(move |_| {
            entered.send(()).unwrap();
            released.recv().unwrap();
            Ok(())
        }));
        assert!(blocker.as_mut().poll(&mut cx).is_pending());
        has_entered.recv_timeout(Duration::from_secs(10)).unwrap();
        let mut revoke = Box::pin(serve.revoke_key("acme", &issued.key_id));
        assert!(revoke.as_mut().poll(&mut cx).is_pending());
        drop(revoke);
        release.send(()).unwrap();
        blocker.await.unwrap();
        crate::sqlite::tests::wait_until("the revoke to be counted", || epoch.current() > before);
        assert!(serve.key_by_hash(&hash).await.unwrap().unwrap().revoked);
    }

    /// Keys that do not exist are not cached: made-up keys cannot grow the cache, and a key
    /// created after a failed lookup is found at once.
    #[tokio::test]
    async fn unknown_keys_are_looked_up_every_time() {
        let path = fresh();
        let dirs = cached_for_an_hour(&path);
        let issued = crate::auth::issue_key();
        let hash = hash_api_key(&issued.api_key);
        assert!(dirs.key_by_hash(&hash).await.unwrap().is_none());
        dirs.store_key("acme", "k", &issued).await.unwrap();
        assert!(dirs.key_by_hash(&hash).await.unwrap().is_some());
        assert!(dirs
            .keys
            .as_ref()
            .unwrap()
            .map
            .lock()
            .unwrap()
            .contains_key(&hash));
        for _ in 0..100 {
            let made_up = hash_api_key(&crate::auth::issue_key().api_key);
            assert!(dirs.key_by_hash(&made_up).await.unwrap().is_none());
        }
        assert_eq!(dirs.keys.as_ref().unwrap().map.lock().unwrap().len(), 1);
    }
}
