//! Console sign-in links and sessions in SQLite ([`ConsoleSessions`]).

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::{now_ms, Db};
use crate::error::StoreError;
use crate::ports::{ConsoleSession, ConsoleSessions};

/// [`ConsoleSessions`] on the `console_links` and `console_sessions` tables.
#[derive(Clone)]
pub struct SqliteSessions {
    db: Db,
}

impl SqliteSessions {
    pub fn new(db: Db) -> Self {
        SqliteSessions { db }
    }
}

#[async_trait]
impl ConsoleSessions for SqliteSessions {
    async fn create_link(
        &self,
        tenant: &str,
        token_hash: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let (t, h) = (tenant.to_owned(), token_hash.to_owned());
        self.db
            .write(move |c| {
                // Expired links and sessions go whenever a new link is made: the tables stay
                // as small as the links and sessions in use.
                let now = now_ms();
                c.execute("DELETE FROM console_links WHERE expires_at < ?1", [now])?;
                c.execute("DELETE FROM console_sessions WHERE expires_at < ?1", [now])?;
                c.execute(
                    "INSERT INTO console_links(token_hash, tenant_id, expires_at) VALUES (?1, ?2, ?3)",
                    params![h, t, expires_at_ms],
                )?;
                Ok(())
            })
            .await
    }

    async fn redeem_link(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let h = token_hash.to_owned();
        self.db
            .write(move |c| {
                // One statement: the writer thread runs jobs one at a time, and the row is
                // marked used in the same step that reads it.
                Ok(c.prepare_cached(
                    "UPDATE console_links SET used_at = ?2
                     WHERE token_hash = ?1 AND used_at IS NULL AND expires_at > ?2
                     RETURNING tenant_id",
                )?
                .query_row(params![h, now_ms], |r| r.get(0))
                .optional()?)
            })
            .await
    }

    async fn create_session(
        &self,
        session_hash: &str,
        s: &ConsoleSession,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let (h, s) = (session_hash.to_owned(), s.clone());
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO console_sessions(session_hash, tenant_id, csrf_token, created_at,
                        last_seen, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        h,
                        s.tenant_id,
                        s.csrf_token,
                        s.created_at_ms,
                        s.last_seen_ms,
                        expires_at_ms
                    ],
                )?;
                Ok(())
            })
            .await
    }

    async fn session(&self, session_hash: &str) -> Result<Option<ConsoleSession>, StoreError> {
        let h = session_hash.to_owned();
        self.db
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT tenant_id, csrf_token, created_at, last_seen FROM console_sessions
                     WHERE session_hash = ?1",
                )?
                .query_row([h], |r| {
                    Ok(ConsoleSession {
                        tenant_id: r.get(0)?,
                        csrf_token: r.get(1)?,
                        created_at_ms: r.get(2)?,
                        last_seen_ms: r.get(3)?,
                    })
                })
                .optional()?)
            })
            .await
    }

    async fn touch(&self, session_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        let h = session_hash.to_owned();
        self.db
            .write(move |c| {
                c.execute(
                    "UPDATE console_sessions SET last_seen = max(last_seen, ?2) WHERE session_hash = ?1",
                    params![h, now_ms],
                )?;
                Ok(())
            })
            .await
    }

    async fn end_session(&self, session_hash: &str) -> Result<(), StoreError> {
        let h = session_hash.to_owned();
        self.db
            .write(move |c| {
                c.execute("DELETE FROM console_sessions WHERE session_hash = ?1", [h])?;
                Ok(())
            })
            .await
    }

    async fn revoke_tenant(&self, tenant: &str) -> Result<usize, StoreError> {
        let t = tenant.to_owned();
        self.db
            .write(move |c| {
                c.execute("DELETE FROM console_links WHERE tenant_id = ?1", [&t])?;
                Ok(c.execute("DELETE FROM console_sessions WHERE tenant_id = ?1", [&t])?)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_redemptions_of_one_link_have_one_winner() {
        let db = Db::open(super::super::tests::tempdir().join("s.db")).unwrap();
        let s = SqliteSessions::new(db.clone());
        let now = now_ms();
        for i in 0..20 {
            let h = format!("race-{i}");
            s.create_link("demo", &h, now + 60_000).await.unwrap();
            let redeem = || {
                let (s, h) = (s.clone(), h.clone());
                tokio::spawn(async move { s.redeem_link(&h, now).await.unwrap() })
            };
            let (a, b, c) = tokio::join!(redeem(), redeem(), redeem());
            let won: Vec<String> = [a.unwrap(), b.unwrap(), c.unwrap()]
                .into_iter()
                .flatten()
                .collect();
            assert_eq!(won, ["demo"], "{h}");
        }
        db.close();
    }
}
