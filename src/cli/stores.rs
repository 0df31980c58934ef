//! Opening what a command acts on, on either host: the one place that knows `--aws`.

use anyhow::{Context, Result};
use causeflow_shared::ports::{ConsoleSessions, IncidentStore, KeyAdmin, Subscriptions};
use causeflow_shared::sqlite::{
    Db, SqliteDirectory, SqliteIncidents, SqliteSessions, SqliteSubscriptions,
};

use super::{DbArg, Target};

/// Opens the SQLite database named by `--db`.
pub fn open_db(db: &DbArg) -> Result<Db> {
    Db::open(&db.db).with_context(|| format!("opening {}", db.db.display()))
}

/// A name the command needs from the stack, or what to pass.
#[cfg(feature = "aws")]
pub fn needed<'a>(value: &'a Option<String>, flag: &str, env: &str) -> Result<&'a str> {
    value
        .as_deref()
        .with_context(|| format!("--aws needs {flag} (or {env})"))
}

/// The key and tenant store.
pub async fn open_directory(target: &Target) -> Result<Box<dyn KeyAdmin>> {
    if target.aws {
        return aws::directory(target).await;
    }
    Ok(Box::new(SqliteDirectory::new(open_db(&target.db)?)))
}

/// The SNS subscription records.
pub async fn open_subscriptions(target: &Target) -> Result<Box<dyn Subscriptions>> {
    if target.aws {
        return aws::subscriptions(target).await;
    }
    Ok(Box::new(SqliteSubscriptions::new(open_db(&target.db)?)))
}

/// The incidents.
pub async fn open_incidents(target: &Target) -> Result<Box<dyn IncidentStore>> {
    if target.aws {
        return aws::incidents(target).await;
    }
    Ok(Box::new(SqliteIncidents::new(open_db(&target.db)?)))
}

/// Console sign-in links and sessions.
pub async fn open_sessions(target: &Target) -> Result<Box<dyn ConsoleSessions>> {
    if target.aws {
        return aws::sessions(target).await;
    }
    Ok(Box::new(SqliteSessions::new(open_db(&target.db)?)))
}

#[cfg(feature = "aws")]
pub(super) mod aws {
    use anyhow::Result;
    use causeflow_shared::aws::{
        sdk_config, DynamoClient, DynamoDirectory, DynamoIncidents, DynamoSessions,
        DynamoSubscriptions,
    };
    use causeflow_shared::ports::{ConsoleSessions, IncidentStore, KeyAdmin, Subscriptions};

    use super::{needed, Target};

    pub async fn ddb() -> DynamoClient {
        DynamoClient::new(&sdk_config().await)
    }

    pub async fn directory(t: &Target) -> Result<Box<dyn KeyAdmin>> {
        let keys = needed(&t.keys_table, "--keys-table", "KEYS_TABLE")?;
        let tenants = needed(&t.tenants_table, "--tenants-table", "TENANTS_TABLE")?;
        Ok(Box::new(DynamoDirectory::new(ddb().await, keys, tenants)))
    }

    pub async fn subscriptions(t: &Target) -> Result<Box<dyn Subscriptions>> {
        let table = needed(
            &t.subscriptions_table,
            "--subscriptions-table",
            "SUBSCRIPTIONS_TABLE",
        )?;
        Ok(Box::new(DynamoSubscriptions::new(ddb().await, table)))
    }

    pub async fn incidents(t: &Target) -> Result<Box<dyn IncidentStore>> {
        let table = needed(&t.incidents_table, "--incidents-table", "INCIDENTS_TABLE")?;
        let store = DynamoIncidents::new(ddb().await, table);
        // With the dedup table named, listings show duplicate counts too.
        Ok(Box::new(match &t.dedup_table {
            Some(dedup) => store.with_duplicate_counts(dedup),
            None => store,
        }))
    }

    pub async fn sessions(t: &Target) -> Result<Box<dyn ConsoleSessions>> {
        let table = needed(&t.sessions_table, "--sessions-table", "SESSIONS_TABLE")?;
        Ok(Box::new(DynamoSessions::new(ddb().await, table)))
    }
}

#[cfg(not(feature = "aws"))]
pub(super) mod aws {
    use anyhow::{bail, Result};
    use causeflow_shared::ports::{ConsoleSessions, IncidentStore, KeyAdmin, Subscriptions};

    use super::Target;

    const NO_AWS: &str =
        "this causeflow was built without AWS support: build it with `cargo build --release --features aws`";

    pub async fn directory(_: &Target) -> Result<Box<dyn KeyAdmin>> {
        bail!(NO_AWS)
    }
    pub async fn subscriptions(_: &Target) -> Result<Box<dyn Subscriptions>> {
        bail!(NO_AWS)
    }
    pub async fn incidents(_: &Target) -> Result<Box<dyn IncidentStore>> {
        bail!(NO_AWS)
    }
    pub async fn sessions(_: &Target) -> Result<Box<dyn ConsoleSessions>> {
        bail!(NO_AWS)
    }
}
