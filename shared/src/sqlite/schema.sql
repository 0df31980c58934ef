-- CauseFlow embedded schema. Times are Unix milliseconds unless named *_at_text.
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id       TEXT PRIMARY KEY,
    created_at      INTEGER NOT NULL,
    agent_overrides TEXT            -- JSON {"severity": ["agent", ...]}; NULL = the default table (docs/contract.md#triage-and-agents)
);

CREATE TABLE IF NOT EXISTS api_keys (
    key_id               TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants(tenant_id),
    name                 TEXT NOT NULL,
    key_hash             TEXT NOT NULL UNIQUE,  -- SHA-256 hex of the API key; the key is never stored
    webhook_secret       TEXT NOT NULL,
    previous_secret      TEXT,                  -- still verifies until retired
    sentry_client_secret TEXT,
    created_at           INTEGER NOT NULL,
    revoked_at           INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys(tenant_id);

CREATE TABLE IF NOT EXISTS dedup (
    tenant_id       TEXT NOT NULL,
    provider        TEXT NOT NULL,
    source_alert_id TEXT NOT NULL,
    incident_id     TEXT NOT NULL,
    pending         INTEGER NOT NULL,
    lease_until     INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, provider, source_alert_id)
) WITHOUT ROWID;

-- The alert queue (SQS in AWS). visible_at is when the next receive may take the message.
CREATE TABLE IF NOT EXISTS queue (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    body          TEXT NOT NULL,
    enqueued_at   INTEGER NOT NULL,
    visible_at    INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_by_visibility ON queue(visible_at);

CREATE TABLE IF NOT EXISTS dead_letters (
    id            INTEGER PRIMARY KEY,
    body          TEXT NOT NULL,
    receive_count INTEGER NOT NULL,
    enqueued_at   INTEGER NOT NULL,
    dead_at       INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS incidents (
    tenant_id   TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    status      TEXT NOT NULL,
    data        TEXT NOT NULL,     -- the Incident as JSON
    PRIMARY KEY (tenant_id, incident_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS incidents_by_status ON incidents(tenant_id, status, incident_id);

-- Agent tasks (the SNS topic in AWS): an outbox, delivered to --agent-webhook when one is set.
-- Keyed by incident: incident ids grow with time, so new tasks land at the end of the table. (Keyed
-- by task_id, a hash, every task dirtied a page at random, which the disk then wrote twice: the
-- largest share of the writer's I/O under load.) `position` keeps the order tasks were recorded in.
CREATE TABLE IF NOT EXISTS dispatches (
    tenant_id       TEXT NOT NULL,
    incident_id     TEXT NOT NULL,
    task_id         TEXT NOT NULL,
    position        INTEGER NOT NULL DEFAULT 0,
    agent           TEXT NOT NULL,
    kind            TEXT NOT NULL,
    severity        TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, incident_id, task_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dispatches_undelivered ON dispatches(next_attempt_at) WHERE delivered_at IS NULL;

-- SNS topics allowed to post for a tenant without credentials.
CREATE TABLE IF NOT EXISTS topic_allowlist (
    tenant_id  TEXT NOT NULL,
    topic_arn  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, topic_arn)
) WITHOUT ROWID;

-- SNS subscriptions to tenants' endpoints and where they stand.
CREATE TABLE IF NOT EXISTS sns_subscriptions (
    tenant_id        TEXT NOT NULL,
    topic_arn        TEXT NOT NULL,
    state            TEXT NOT NULL,
    subscription_arn TEXT,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, topic_arn)
) WITHOUT ROWID;

-- Repeats of a firing answered 409, per incident (the incidents API's duplicateCount and lastSeen).
CREATE TABLE IF NOT EXISTS duplicates (
    tenant_id   TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    count       INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, incident_id)
) WITHOUT ROWID;

-- Console sign-in links (one use each) and sessions, by the SHA-256 of their secret.
CREATE TABLE IF NOT EXISTS console_links (
    token_hash TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS console_sessions (
    session_hash TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    csrf_token   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen    INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS console_sessions_by_tenant ON console_sessions(tenant_id);

-- When each API key last authenticated a request (written at most once a minute per key).
CREATE TABLE IF NOT EXISTS key_usage (
    key_id       TEXT PRIMARY KEY,
    last_used_at INTEGER NOT NULL
) WITHOUT ROWID;
