//! The embedded adapters: one SQLite file (WAL) stands in for DynamoDB, SQS and SNS.
//!
//! All writes go through one writer thread that commits whatever has queued up in a single
//! transaction (group commit): a request waits for the commit that carries its write, so a 202 is
//! only sent once the write is on disk (`synchronous=FULL`), yet throughput is not capped at one
//! fsync per request. Jobs run in savepoints of their own, so one failing job never takes its
//! batch-mates down; admission, which fails only before it writes, runs without one
//! ([`Db::write_unguarded`]). Reads use a small pool of connections and run concurrently under WAL.
//!
//! While `serve` runs, alerts admitted in a transaction are triaged in that same transaction,
//! just before its commit ([`Db::triage_before_commit`]); the queue table holds only what that
//! pass could not do.

mod directory;
#[cfg(unix)]
mod epoch;
mod incidents;
mod ledger;
mod queue;
mod sessions;
#[cfg(unix)]
mod vfs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{oneshot, Notify};
use tracing::{debug, error, info};

use crate::error::StoreError;
use crate::model::QueuedAlert;

pub use directory::{SqliteDirectory, SqliteSubscriptions};
pub use incidents::{DispatchRow, SqliteDispatcher, SqliteIncidents};
pub use ledger::SqliteLedger;
pub use queue::{QueueStats, SqliteQueue};
pub use sessions::SqliteSessions;

/// Read connections kept open for reuse.
const READ_POOL: usize = 32;
/// WAL frames (4 KB pages) past which the WAL should start over: about 16 MB.
const WAL_RESTART_FRAMES: i64 = 4_096;
/// A background pass that copied at most this many frames has nearly caught up with the
/// writer: what is left for the writer to copy is short.
const CATCH_UP_FRAMES: i64 = 256;
/// WAL frames past which the writer checkpoints inside its commit whatever the checkpoint
/// thread is doing (SQLite's own automatic checkpoint): a bound, should that thread fall behind.
const WAL_HARD_FRAMES: i64 = 65_536;
/// WAL bytes kept on disk after the WAL starts over.
const WAL_KEEP_BYTES: i64 = 64 << 20;
/// Time between two background checkpoints while the WAL is small. Short, so each pass's
/// writeback (the pages it copies, then synced) is small: under load a pass of 100 ms of
/// commits (about 16 MB) sometimes held the writer's fsync up for tens of milliseconds, and the
/// p99 with it. At 25 ms, p99 fell from about 11 to 8 ms (`scripts/load`, docs/architecture.md).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(25);
/// Most jobs one transaction carries.
const MAX_BATCH: usize = 512;
/// Jobs waiting beyond this are refused with 503 rather than queued without bound.
const WRITE_QUEUE_DEPTH: usize = 16_384;

pub use crate::now_ms;

thread_local! {
    /// On the writer thread, while a job runs port code inline ([`inline`]): the connection,
    /// inside the job's transaction, that every `Db` write and read on this thread then uses.
    static INLINE: std::cell::Cell<Option<*const Connection>> =
        const { std::cell::Cell::new(None) };
}

thread_local! {
    /// On the writer thread, while a transaction runs with a pre-commit triage installed: the
    /// alerts its admission jobs handed over ([`defer_triage`]). `None` when there is no such
    /// pass, and on every other thread.
    static DEFERRED: std::cell::RefCell<Option<Vec<QueuedAlert>>> =
        const { std::cell::RefCell::new(None) };
}

/// Hands an admitted alert to the triage pass that runs before this transaction commits, if
/// one is installed ([`Db::triage_before_commit`]); otherwise hands it back, to be queued.
fn defer_triage(msg: QueuedAlert) -> Option<QueuedAlert> {
    DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(list) => {
            list.push(msg);
            None
        }
        None => Some(msg),
    })
}

/// How many alerts are deferred so far in this transaction.
fn deferred_len() -> usize {
    DEFERRED.with(|d| d.borrow().as_ref().map_or(0, Vec::len))
}

/// Forgets the alerts deferred by a job that was rolled back.
fn truncate_deferred(len: usize) {
    DEFERRED.with(|d| {
        if let Some(list) = d.borrow_mut().as_mut() {
            list.truncate(len)
        }
    })
}

/// The pass [`Db::triage_before_commit`] installs: given the transaction's admitted alerts,
/// triages them (or queues them) on the connection and says whom to wake after the commit.
pub type PreCommit =
    Box<dyn FnMut(&Connection, Vec<QueuedAlert>) -> Result<Wake, StoreError> + Send>;

/// What follows a transaction's commit: workers to wake, and what to count.
#[derive(Default)]
pub struct Wake {
    /// Alerts were queued: the triage loop.
    pub queued: bool,
    /// Agent tasks were recorded: the delivery loop.
    pub dispatched: bool,
    /// Runs once the commit stands (not if it fails).
    pub after: Option<Box<dyn FnOnce() + Send>>,
}

/// Runs `f` with `conn` as the connection of every [`Db::write`] and read made on this thread
/// meanwhile: they run at once, inside the current transaction and savepoint, instead of
/// queueing for the writer (which is this thread). For triage on the
/// embedded host, which runs a whole batch in one writer job ([`SqliteQueue::triage_batch`]).
fn inline<T>(conn: &Connection, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<*const Connection>);
    impl Drop for Restore {
        fn drop(&mut self) {
            INLINE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(INLINE.with(|c| c.replace(Some(conn as *const Connection))));
    f()
}

/// Whether this thread runs inside the writer's transaction ([`inline`]): its writes commit
/// with that transaction, and the writer wakes whoever they concern after the commit.
fn on_writer() -> bool {
    INLINE.with(|c| c.get()).is_some()
}

/// Runs `f` on the connection [`inline`] set on this thread, if any; otherwise hands `f` back.
fn run_inline<T, F: FnOnce(&Connection) -> T>(f: F) -> Result<T, F> {
    match INLINE.with(|c| c.get()) {
        // SAFETY: the pointer is set only by `inline`, from a reference that outlives the call
        // of `f` it wraps, and is cleared (restored) when that call returns or unwinds; it never
        // leaves this thread (thread-local).
        Some(p) => Ok(f(unsafe { &*p })),
        None => Err(f),
    }
}

/// Runs one transaction-control statement, prepared once per connection.
fn control(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

trait WriteJob: Send {
    /// Runs inside the job's savepoint (when [`WriteJob::guarded`]); `false` rolls it back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Whether the job runs in a savepoint of its own ([`Db::write`]) or without one
    /// ([`Db::write_unguarded`]).
    fn guarded(&self) -> bool;
    /// Called after the transaction's commit with its result.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

struct TypedJob<T, F> {
    f: Option<F>,
    guarded: bool,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
    /// Runs on the writer once the commit stands, before the reply ([`Db::write_then`]).
    after: Option<Box<dyn FnOnce() + Send>>,
}

impl<T, F> WriteJob for TypedJob<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let f = self.f.take().expect("a job runs once");
        let r = f(conn);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn guarded(&self) -> bool {
        self.guarded
    }

    fn finish(mut self: Box<Self>, commit: Result<(), StoreError>) {
        if let (Ok(()), Some(after)) = (&commit, self.after.take()) {
            after();
        }
        let reply = match (commit, self.result) {
            (Err(e), Some(Ok(_))) => Err(e),
            (_, Some(r)) => r,
            (Err(e), None) => Err(e),
            (Ok(()), None) => Err(StoreError::Unavailable("write job never ran".into())),
        };
        // The requester may have gone away (client disconnected); the write stands either way.
        let _ = self.reply.send(reply);
    }
}

/// Wake-ups so workers react at once instead of polling: `queued` after alerts are queued,
/// `dispatched` after agent tasks are recorded.
#[derive(Debug, Default)]
pub struct Signals {
    pub queued: Notify,
    pub dispatched: Notify,
}

/// Test hook: makes every write fail, as an unreachable store would.
#[derive(Debug, Default)]
pub struct FaultSwitch(std::sync::atomic::AtomicBool);

impl FaultSwitch {
    pub fn set(&self, failing: bool) {
        self.0.store(failing, std::sync::atomic::Ordering::SeqCst)
    }
    fn failing(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A handle on the database: cheap to clone, shared by every adapter.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Option<SyncSender<Box<dyn WriteJob>>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    signals: Arc<Signals>,
    faults: Arc<FaultSwitch>,
    /// The pre-commit triage pass, while one is installed; the writer holds the lock for a
    /// whole transaction, so a pass is never removed from under the alerts deferred to it.
    pre_commit: Arc<Mutex<Option<PreCommit>>>,
    /// Held for the tests, which watch the hand-over happen.
    #[cfg_attr(not(test), allow(dead_code))]
    wal: Arc<WalRestart>,
    /// The API key change counter shared with other processes; `None` where it cannot be
    /// mapped (then keys are not cached).
    key_epoch: Option<Arc<KeyEpoch>>,
}

#[cfg(unix)]
use epoch::KeyEpoch;
/// Where the counter cannot be mapped there is none ([`Db::key_epoch`] is always `None`).
#[cfg(not(unix))]
enum KeyEpoch {}
#[cfg(not(unix))]
impl KeyEpoch {
    fn current(&self) -> u64 {
        match *self {}
    }
    fn bump(&self) {
        match *self {}
    }
}

/// The hand-over between the checkpoint thread and the writer that lets the WAL start over
/// ([`checkpoint_loop`]).
#[derive(Default)]
struct WalRestart {
    /// Set by the checkpoint thread once little is left to copy.
    wanted: AtomicBool,
    /// Catch-up checkpoints by the writer that copied every frame: its next transaction then
    /// starts the WAL over.
    caught_up: std::sync::atomic::AtomicU64,
}

/// Turns SQLite's memory statistics off before its first use in the process: they take a
/// global mutex around every allocation SQLite makes, a visible share of the writer's time in
/// the load profile. Too late (SQLite already initialised by another caller) changes nothing.
fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_config is documented as callable before sqlite3_initialize; after it,
        // it returns SQLITE_MISUSE and does nothing. The argument is the int the option takes.
        let _ = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::os::raw::c_int,
            )
        };
    });
}

/// Page cache of the writer connection, in KiB. Not more: at the end of every transaction
/// SQLite walks the whole cache (`pcache1TruncateUnsafe`), which at 64 MB was a seventh of the
/// writer's time under load; 16 MB measured 5-10% more alerts/s, and 8 MB no better.
const WRITER_CACHE_KIB: i64 = 16_384;

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    configure(Connection::open_with_flags(path, OPEN_FLAGS)?)
}

const OPEN_FLAGS: OpenFlags = OpenFlags::SQLITE_OPEN_READ_WRITE
    .union(OpenFlags::SQLITE_OPEN_CREATE)
    .union(OpenFlags::SQLITE_OPEN_NO_MUTEX);

/// The writer's connection: through the VFS that writes each commit's WAL frames with one
/// `pwrite` instead of two per frame ([`vfs`]), where there is one.
fn open_writer_connection(path: &Path) -> Result<Connection, StoreError> {
    #[cfg(unix)]
    let conn = {
        vfs::register().map_err(StoreError::Unavailable)?;
        configure(Connection::open_with_flags_and_vfs(
            path,
            OPEN_FLAGS,
            vfs::NAME,
        )?)?
    };
    #[cfg(not(unix))]
    let conn = open_connection(path)?;
    Ok(conn)
}

fn configure(conn: Connection) -> Result<Connection, StoreError> {
    conn.busy_timeout(Duration::from_secs(5))?;
    // WAL: readers never block the writer; FULL: a commit is on disk before it returns.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // The writer's VFS relies on it too: with FULL, SQLite syncs a commit's frames (which
    // writes them) before other connections can see them (`the_writer_syncs_every_commit`).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // rusqlite keeps 16 prepared statements by default; the writer alone cycles through more
    // than that (admission, queue, incidents, dispatches, key use, transaction control), and
    // each eviction meant parsing the statement again on its next use.
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

/// Creates the database file readable by its owner only, and tightens one left readable by
/// others: it holds webhook and Sentry secrets. SQLite creates the `-wal` and `-shm` files with
/// the main file's permissions; any already there are tightened too.
#[cfg(unix)]
fn make_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |what: &Path, e: std::io::Error| {
        StoreError::Unavailable(format!("{}: {e}", what.display()))
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail(path, e))?;
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::metadata(&file) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| fail(&file, e))?
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_: &Path) -> Result<(), StoreError> {
    Ok(())
}

impl Db {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: impl AsRef<Path>) -> Result<Db, StoreError> {
        configure_sqlite();
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("create {}: {e}", dir.display())))?;
        }
        make_private(&path)?;
        let conn = open_writer_connection(&path)?;
        // SQLite's default 2 MB page cache made the writer re-read its own pages with pread on
        // every commit once the dedup table outgrew it (the largest cost in the load profile).
        // Only the writer gets more: a reader drops its whole cache whenever it finds the file
        // changed, which under load is at every read, so a big cache there is pure cost.
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        conn.execute_batch(include_str!("schema.sql"))?;
        migrate(&conn)?;
        // Checkpoints (copying the WAL back into the file) run on a thread of their own
        // (`checkpoint_loop`): inside a commit, as SQLite does by default, they stalled every
        // request waiting for that commit, by up to 400 ms under load. SQLite's own remains as
        // a bound only. journal_size_limit truncates the file back when the WAL starts over.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_HARD_FRAMES)?;
        conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)?;
        let checkpointer = open_connection(&path)?;
        let (grew, grown) = mpsc::sync_channel::<()>(1);
        let wal = Arc::new(WalRestart::default());
        let restart = wal.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, grown, restart))
            .map_err(|e| StoreError::Unavailable(format!("spawn checkpointer: {e}")))?;
        let (tx, rx) = mpsc::sync_channel::<Box<dyn WriteJob>>(WRITE_QUEUE_DEPTH);
        let faults = Arc::new(FaultSwitch::default());
        let signals = Arc::new(Signals::default());
        let pre_commit: Arc<Mutex<Option<PreCommit>>> = Arc::default();
        let thread = {
            let writer = Writer {
                faults: faults.clone(),
                grew,
                wal: wal.clone(),
                signals: signals.clone(),
                pre_commit: pre_commit.clone(),
            };
            std::thread::Builder::new()
                .name("sqlite-writer".into())
                .spawn(move || writer_loop(conn, rx, writer))
                .map_err(|e| StoreError::Unavailable(format!("spawn writer: {e}")))?
        };
        #[cfg(unix)]
        let key_epoch = match KeyEpoch::open(&path) {
            Ok(e) => Some(Arc::new(e)),
            Err(e) => {
                tracing::warn!(error = %e, "API keys are read from the database for every request: their change counter could not be mapped");
                None
            }
        };
        #[cfg(not(unix))]
        let key_epoch = None;
        Ok(Db {
            inner: Arc::new(Inner {
                key_epoch,
                path,
                writer: Mutex::new(Some(tx)),
                writer_thread: Mutex::new(Some(thread)),
                readers: Mutex::new(Vec::new()),
                signals,
                faults,
                pre_commit,
                wal,
            }),
        })
    }

    /// The API key change counter this database shares with every process that opens it.
    fn key_epoch(&self) -> Option<Arc<KeyEpoch>> {
        self.inner.key_epoch.clone()
    }

    /// Wake-ups for the background workers.
    pub fn signals(&self) -> Arc<Signals> {
        self.inner.signals.clone()
    }

    /// Fault injection for tests: while set, every write fails as if the disk were gone.
    pub fn faults(&self) -> Arc<FaultSwitch> {
        self.inner.faults.clone()
    }

    /// Installs `pass` to run in every transaction after its jobs and before its commit, with the
    /// alerts admission handed over in that transaction, and makes admission hand them over
    /// instead of queueing them ([`SqliteLedger`]). Until [`Db::remove_pre_commit`].
    ///
    /// Why: queued and then triaged, an alert cost the writer a queue row written, claimed and
    /// deleted, its body serialised and parsed again, and two more commits; triaged where it is
    /// admitted, none of that. The pass can still queue what it could not triage.
    pub fn triage_before_commit(&self, pass: PreCommit) {
        *self
            .inner
            .pre_commit
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(pass);
    }

    /// Removes the pass [`Db::triage_before_commit`] installed, after the transaction running
    /// (if any) has committed; admission queues its alerts again. Never from inside a write
    /// job: the writer holds the pass for the whole transaction. [`Db::close`] removes it too.
    pub fn remove_pre_commit(&self) {
        self.inner
            .pre_commit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Runs `f` in the next group-committed transaction and returns its result once committed.
    /// `f` runs in a savepoint of its own: if it fails, its writes are rolled back and its
    /// batch-mates commit without them.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f, true, None).await
    }

    /// Like [`Db::write`], without the savepoint, for jobs that fail, if ever, before their
    /// first write (admission: its checks come first, and its writes fail only when the disk
    /// does). A job that fails after writing cannot be undone alone: its whole transaction is
    /// rolled back and every job in it fails (503, which senders retry).
    ///
    /// Why: a savepoint copies every page the job touches to a journal in memory first, and
    /// per admission that copying was a fifth of the writer's time in the load profile.
    pub async fn write_unguarded<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f, false, None).await
    }

    /// Like [`Db::write`], then runs `after` on the writer thread once the commit stands (not
    /// if it fails), before the caller hears of it: so it runs even if the caller has gone
    /// away meanwhile (a dropped request, a timeout). Not from inside a write job, whose commit
    /// is its transaction's.
    pub async fn write_then<T, F>(
        &self,
        f: F,
        after: impl FnOnce() + Send + 'static,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if on_writer() {
            return Err(StoreError::Unavailable(
                "write_then inside a write job".into(),
            ));
        }
        self.submit(f, true, Some(Box::new(after))).await
    }

    async fn submit<T, F>(
        &self,
        f: F,
        guarded: bool,
        after: Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // Inline, a write is part of the caller's savepoint (triage's per-record one), which
        // rolls it back with the rest of the record if anything fails.
        let f = match run_inline(f) {
            Ok(r) => return r,
            Err(f) => f,
        };
        let (reply, rx) = oneshot::channel();
        let job = Box::new(TypedJob {
            f: Some(f),
            guarded,
            result: None,
            reply,
            after,
        });
        {
            let guard = self.inner.writer.lock().expect("writer lock");
            let sender = guard
                .as_ref()
                .ok_or_else(|| StoreError::Unavailable("database is closing".into()))?;
            match sender.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    return Err(StoreError::Unavailable("write queue is full".into()))
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(StoreError::Unavailable("database writer stopped".into()))
                }
            }
        }
        rx.await
            .map_err(|_| StoreError::Unavailable("database writer stopped".into()))?
    }

    /// Runs `f` on a pooled read connection off the async runtime.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // Inline, on this thread's connection (`read_blocking` takes that path).
        if on_writer() {
            return self.read_blocking(f);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_blocking(f))
            .await
            .map_err(|e| StoreError::Unavailable(format!("read task: {e}")))?
    }

    /// Runs a point lookup (one indexed row) on a pooled read connection on the caller's thread.
    ///
    /// For the hot path's key, settings and incident lookups: they take microseconds under WAL,
    /// never wait for the writer, and handing each to the blocking pool cost two thread
    /// switches per lookup, which the load profile showed as the runtime's largest cost. Scans
    /// and anything unbounded use [`Db::read`].
    pub fn read_now<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError>,
    {
        self.read_blocking(f)
    }

    /// Like [`Db::read`] for callers that are not async (the CLI).
    pub fn read_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError>,
    {
        let f = match run_inline(f) {
            Ok(r) => return r,
            Err(f) => f,
        };
        let conn = self.inner.readers.lock().expect("reader pool").pop();
        let conn = match conn {
            Some(c) => c,
            None => open_connection(&self.inner.path)?,
        };
        let r = f(&conn);
        let mut pool = self.inner.readers.lock().expect("reader pool");
        // Kept rather than closed: opening one means reading the schema again.
        if pool.len() < READ_POOL {
            pool.push(conn);
        }
        r
    }

    /// Stops accepting writes, lets the writer commit everything already queued, and waits for it.
    pub fn close(&self) {
        // The pass holds triage, whose adapters hold this database: removed, nothing keeps the
        // writer's state alive in a cycle.
        self.remove_pre_commit();
        self.inner.writer.lock().expect("writer lock").take();
        if let Some(t) = self.inner.writer_thread.lock().expect("thread lock").take() {
            let _ = t.join();
        }
    }
}

/// Brings a database written by an earlier version up to `schema.sql`, in one transaction.
///
/// The one change so far: agent tasks were keyed by `task_id` alone (a hash, so every new task
/// landed on a random page) and ordered by rowid; they are now keyed by incident, with a
/// `position`. Their rows are copied over, the old rowid order kept as `position`.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let current = |c: &Connection| -> Result<bool, StoreError> {
        Ok(c.query_row(
            "SELECT EXISTS(SELECT 1 FROM pragma_table_info('dispatches') WHERE name = 'position')",
            [],
            |r| r.get(0),
        )?)
    };
    if current(conn)? {
        return Ok(());
    }
    // Checked again under the write lock: another process (a CLI command beside a starting
    // `serve`) may have migrated meanwhile.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let migrated = (|| {
        if current(conn)? {
            return Ok(false);
        }
        conn.execute_batch(
            "ALTER TABLE dispatches RENAME TO dispatches_before_position;
             DROP INDEX IF EXISTS dispatches_undelivered;
             DROP INDEX IF EXISTS dispatches_by_incident;",
        )?;
        conn.execute_batch(include_str!("schema.sql"))?;
        conn.execute_batch(
            "INSERT INTO dispatches(tenant_id, incident_id, task_id, position, agent, kind,
                severity, body, created_at, delivered_at, attempts, next_attempt_at)
             SELECT tenant_id, incident_id, task_id, rowid, agent, kind,
                severity, body, created_at, delivered_at, attempts, next_attempt_at
             FROM dispatches_before_position;
             DROP TABLE dispatches_before_position;",
        )?;
        Ok::<_, StoreError>(true)
    })();
    match migrated {
        Ok(done) => {
            conn.execute_batch("COMMIT")?;
            if !done {
                return Ok(());
            }
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    info!("migrated the agent task table to its incident-keyed layout");
    Ok(())
}

/// Copies committed WAL frames into the database file after commits, without blocking the
/// writer or readers (`PASSIVE`). Ends when the writer does.
///
/// The WAL only starts over (instead of growing) when a write transaction begins with every
/// frame copied, which a checkpoint running beside a busy writer never achieves: frames arrive
/// while it copies. So once the WAL is past [`WAL_RESTART_FRAMES`], passes follow each other at
/// once, each shorter than the last, until one copies at most [`CATCH_UP_FRAMES`]; then
/// `restart` asks the writer to copy the few frames left itself, between two transactions.
fn checkpoint_loop(conn: Connection, grown: Receiver<()>, restart: Arc<WalRestart>) {
    // The WAL's frames and how many were copied, as of the last pass that ran.
    let (mut frames_before, mut copied_before) = (0i64, 0i64);
    while grown.recv().is_ok() {
        let (frames, copied) = match passive_checkpoint(&conn) {
            Ok((0, frames, copied)) if frames >= 0 && copied >= 0 => (frames, copied),
            // Busy (-1 counts): another checkpoint ran; nothing learnt.
            Ok(_) => {
                std::thread::sleep(CHECKPOINT_EVERY);
                continue;
            }
            Err(e) => {
                debug!(error = %e, "passive checkpoint did not run");
                std::thread::sleep(CHECKPOINT_EVERY);
                continue;
            }
        };
        // A shorter WAL, or fewer frames copied, than last time: it started over in between.
        let this_pass = if frames < frames_before || copied < copied_before {
            copied
        } else {
            copied - copied_before
        };
        (frames_before, copied_before) = (frames, copied);
        if frames < WAL_RESTART_FRAMES {
            std::thread::sleep(CHECKPOINT_EVERY);
        } else if this_pass <= CATCH_UP_FRAMES && frames - copied <= CATCH_UP_FRAMES {
            // Nearly caught up, and not held back by a reader: what the writer copies is what
            // arrived during this short pass.
            restart.wanted.store(true, Ordering::Release);
            std::thread::sleep(CHECKPOINT_EVERY);
        }
    }
}

/// One `PASSIVE` checkpoint: (busy, frames in the WAL, frames copied), SQLite's own answer.
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

/// What the writer thread holds besides its connection and its job queue.
struct Writer {
    faults: Arc<FaultSwitch>,
    /// Tells the checkpoint thread a commit happened.
    grew: SyncSender<()>,
    wal: Arc<WalRestart>,
    signals: Arc<Signals>,
    pre_commit: Arc<Mutex<Option<PreCommit>>>,
}

fn writer_loop(conn: Connection, rx: Receiver<Box<dyn WriteJob>>, w: Writer) {
    let (mut commits, mut total_jobs) = (0u64, 0u64);
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let mut result = if w.faults.failing() {
            Err(StoreError::Unavailable(
                "injected fault: database unavailable".into(),
            ))
        } else {
            let mut pass = w.pre_commit.lock().unwrap_or_else(|e| e.into_inner());
            run_batch(&conn, &mut jobs, pass.as_mut())
        };
        crate::telemetry::commit(jobs.len(), started.elapsed(), result.is_ok());
        match &mut result {
            Err(e) => error!(error = %e, jobs = jobs.len(), "sqlite commit failed"),
            Ok(wake) => {
                if let Some(after) = wake.after.take() {
                    after();
                }
                commits += 1;
                total_jobs += jobs.len() as u64;
                // Full means a checkpoint is already due.
                let _ = w.grew.try_send(());
                if wake.queued {
                    w.signals.queued.notify_one();
                }
                if wake.dispatched {
                    w.signals.dispatched.notify_one();
                }
                debug!(jobs = jobs.len(), "group commit");
            }
        }
        let result = result.map(|_| ());
        for job in jobs {
            job.finish(result.clone());
        }
        // After the answers, so no request waits for it (`checkpoint_loop`).
        if w.wal.wanted.swap(false, Ordering::Acquire) {
            match passive_checkpoint(&conn) {
                Ok((0, frames, copied)) if frames == copied => {
                    w.wal.caught_up.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => debug!("catch-up checkpoint left frames behind (a reader holds them)"),
                Err(e) => debug!(error = %e, "catch-up checkpoint did not run"),
            }
        }
    }
    drop(w.grew);
    // Checkpoint so the WAL does not linger after a clean shutdown.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    info!(
        commits,
        writes = total_jobs,
        writes_per_commit = format!("{:.1}", total_jobs as f64 / commits.max(1) as f64),
        "sqlite writer stopped"
    );
}

fn run_batch(
    conn: &Connection,
    jobs: &mut [Box<dyn WriteJob>],
    pass: Option<&mut PreCommit>,
) -> Result<Wake, StoreError> {
    // Prepared once and reused (`control`): parsing these statements for every job showed in
    // the profile as SQLite's parser.
    let control = |sql: &str| control(conn, sql);
    let rollback = || {
        let _ = control("ROLLBACK");
    };
    // Admission defers its alerts only while this transaction has a pass to give them to; the
    // list is dropped however the transaction ends, so nothing outlives a rollback.
    struct Deferring;
    impl Drop for Deferring {
        fn drop(&mut self) {
            DEFERRED.with(|d| d.borrow_mut().take());
        }
    }
    let _deferring = pass.is_some().then(|| {
        DEFERRED.with(|d| *d.borrow_mut() = Some(Vec::new()));
        Deferring
    });
    control("BEGIN IMMEDIATE")?;
    // SQLite itself rolls the whole transaction back on some errors (I/O, disk full, out of
    // memory), even of a read; the batch must not go on outside a transaction.
    let rolled_back =
        || StoreError::Unavailable("the disk failed a write; the batch was rolled back".into());
    for job in jobs.iter_mut() {
        // A panicking job must not take the writer (and every later write) down with it.
        let run = |job: &mut Box<dyn WriteJob>| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(conn))).unwrap_or_else(
                |_| {
                    error!("a write job panicked; rolled back");
                    false
                },
            )
        };
        let deferred = deferred_len();
        if !job.guarded() {
            let before = conn.total_changes();
            let ok = run(job);
            if conn.is_autocommit() {
                return Err(rolled_back());
            }
            if !ok && conn.total_changes() != before {
                rollback();
                return Err(StoreError::Unavailable(
                    "a write failed part-way; its transaction was rolled back".into(),
                ));
            }
            if !ok {
                truncate_deferred(deferred);
            }
            continue;
        }
        if let Err(e) = control("SAVEPOINT job") {
            rollback();
            return Err(e.into());
        }
        let ok = run(job);
        if conn.is_autocommit() {
            return Err(rolled_back());
        }
        let end = if ok {
            control("RELEASE job")
        } else {
            truncate_deferred(deferred);
            control("ROLLBACK TO job").and_then(|()| control("RELEASE job"))
        };
        if let Err(e) = end {
            rollback();
            return Err(e.into());
        }
    }
    let mut wake = Wake::default();
    if let Some(pass) = pass {
        let admitted = DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default();
        if !admitted.is_empty() {
            let ran =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pass(conn, admitted)))
                    .unwrap_or_else(|_| {
                        Err(StoreError::Unavailable(
                            "the pre-commit triage panicked".into(),
                        ))
                    });
            if conn.is_autocommit() {
                return Err(rolled_back());
            }
            match ran {
                Ok(w) => wake = w,
                // Its alerts were neither triaged nor queued: the whole batch goes (503s).
                Err(e) => {
                    rollback();
                    return Err(e);
                }
            }
        }
    }
    if let Err(e) = control("COMMIT") {
        rollback();
        return Err(e.into());
    }
    Ok(wake)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_job_does_not_fail_its_batch_mates() {
        let db = table_db("INTEGER").await;
        let mut handles = Vec::new();
        for i in 0..50i64 {
            let db = db.clone();
            handles.push(tokio::spawn(async move {
                db.write(move |c| {
                    c.execute("INSERT INTO t VALUES (?1)", [i])?;
                    if i % 7 == 0 {
                        return Err(StoreError::Invalid("nope".into()));
                    }
                    Ok(())
                })
                .await
            }));
        }
        let mut failed = 0;
        for h in handles {
            if h.await.unwrap().is_err() {
                failed += 1;
            }
        }
        let n: i64 = db
            .read(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(failed, 8);
        assert_eq!(n, 42);
        db.faults().set(true);
        assert!(db.write(|_| Ok(())).await.is_err());
        db.close();
    }

    /// Holds the writer inside a job until the returned sender is dropped, so whatever is
    /// submitted meanwhile forms the next batch together.
    async fn hold_writer(db: &Db) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (running, is_running) = oneshot::channel();
        let db2 = db.clone();
        tokio::spawn(async move {
            db2.write(move |_| {
                let _ = running.send(());
                let _ = held.recv();
                Ok(())
            })
            .await
        });
        is_running.await.unwrap();
        release
    }

    async fn count(db: &Db) -> i64 {
        db.read(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
            .await
            .unwrap()
    }

    /// Polls a write once: that hands its job to the writer. So the jobs of several writes
    /// polled while the writer is held form one batch.
    fn submitted<F: std::future::Future + Unpin>(mut f: F) -> F {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::pin::Pin::new(&mut f).poll(&mut cx).is_pending());
        f
    }

    /// Jobs without a savepoint: one failing before it writes fails alone; one failing (or
    /// panicking) after it wrote takes its whole batch down, and nothing of that batch stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unguarded_jobs_fail_alone_before_writing_and_with_their_batch_after() {
        let db = table_db("INTEGER").await;
        let insert = |db: &Db, x: i64, fail: Option<&'static str>| {
            let db = db.clone();
            submitted(Box::pin(async move {
                db.write_unguarded(move |c| {
                    if fail == Some("before") {
                        return Err(StoreError::Invalid("refused before writing".into()));
                    }
                    if fail == Some("disk") {
                        // As SQLite does itself on an I/O error: the whole transaction goes.
                        c.execute_batch("ROLLBACK")?;
                        return Err(StoreError::Unavailable("disk I/O error".into()));
                    }
                    c.execute("INSERT INTO t VALUES (?1)", [x])?;
                    match fail {
                        Some("after") => Err(StoreError::Invalid("failed after writing".into())),
                        Some("panic") => panic!("panicked after writing"),
                        _ => Ok(()),
                    }
                })
                .await
            }))
        };

        let release = hold_writer(&db).await;
        let jobs = vec![
            insert(&db, 1, None),
            insert(&db, 2, Some("before")),
            insert(&db, 3, None),
        ];
        drop(release);
        let mut ok = Vec::new();
        for job in jobs {
            ok.push(job.await.is_ok());
        }
        assert_eq!(ok, [true, false, true]);
        assert_eq!(count(&db).await, 2);

        // The job after the failing one must not run either: after "disk" it would commit on
        // its own, outside any transaction.
        for failure in ["after", "panic", "disk"] {
            let release = hold_writer(&db).await;
            let guarded = {
                let db = db.clone();
                submitted(Box::pin(async move {
                    db.write(|c| Ok(c.execute("INSERT INTO t VALUES (10)", [])?))
                        .await
                }))
            };
            let jobs = vec![
                insert(&db, 11, None),
                insert(&db, 12, Some(failure)),
                insert(&db, 13, None),
            ];
            drop(release);
            assert!(guarded.await.is_err(), "{failure}");
            for job in jobs {
                assert!(job.await.is_err(), "{failure}");
            }
            assert_eq!(count(&db).await, 2, "{failure}: nothing of the batch stays");
        }
        // The writer goes on.
        insert(&db, 4, None).await.unwrap();
        assert_eq!(count(&db).await, 3);
        db.close();
    }

    /// Under steady writes the WAL keeps starting over through the hand-over of
    /// `checkpoint_loop`, and stays within WAL_KEEP_BYTES rather than growing to SQLite's own
    /// bound (WAL_HARD_FRAMES, 256 MB). Waits on the hand-over happening, not on time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_under_steady_writes() {
        let dir = tempdir();
        let path = dir.join("t.db");
        let db = Db::open(&path).unwrap();
        db.write(|c| Ok(c.execute_batch("CREATE TABLE t(x BLOB)")?))
            .await
            .unwrap();
        let insert = || db.write(|c| Ok(c.execute("INSERT INTO t VALUES (zeroblob(131072))", [])?));
        // New pages every time (128 KB each), as a busy dedup table's would be. 4,000 writes
        // (500 MB) bound the wait.
        let mut writes = 0;
        while db.inner.wal.caught_up.load(Ordering::Relaxed) < 3 {
            assert!(writes < 4_000, "no WAL hand-over after {writes} writes");
            insert().await.unwrap();
            writes += 1;
        }
        // The next transaction starts the WAL over, trimming the file to WAL_KEEP_BYTES.
        insert().await.unwrap();
        let wal = std::fs::metadata(format!("{}-wal", path.display()))
            .unwrap()
            .len();
        assert!(wal <= WAL_KEEP_BYTES as u64, "the WAL is {wal} bytes");
        db.close();
    }

    fn admitted(id: &str) -> QueuedAlert {
        serde_json::from_value(serde_json::json!({
            "tenantId": "t", "provider": "generic", "incidentId": id,
            "receivedAt": "2026-11-29T00:00:00Z",
            "alert": {"sourceAlertId": id, "status": "firing", "title": "t", "severity": "high"}
        }))
        .unwrap()
    }

    async fn rows(db: &Db) -> Vec<String> {
        db.read(|c| {
            let mut st = c.prepare("SELECT x FROM t ORDER BY x")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await
        .unwrap()
    }

    /// The pre-commit pass gets the alerts deferred by the jobs of its transaction that stood,
    /// none of a job rolled back, and its writes commit with theirs. If it fails, the whole
    /// transaction goes. With no pass installed, nothing is deferred.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pre_commit_pass_gets_what_the_standing_jobs_deferred() {
        let db = table_db("TEXT").await;
        // No pass installed: the alert is handed back, to be queued.
        assert!(db
            .write(|_| Ok(defer_triage(admitted("x")).is_some()))
            .await
            .unwrap());

        let seen = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
        let fail = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (seen2, fail2, committed2) = (seen.clone(), fail.clone(), committed.clone());
        db.triage_before_commit(Box::new(move |c, alerts| {
            let ids: Vec<String> = alerts.iter().map(|m| m.incident_id.clone()).collect();
            for id in &ids {
                c.execute("INSERT INTO t VALUES (?1)", [format!("pass-{id}")])?;
            }
            seen2.lock().unwrap().push(ids);
            if fail2.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("the pass failed".into()));
            }
            let committed = committed2.clone();
            Ok(Wake {
                dispatched: true,
                after: Some(Box::new(move || {
                    committed.fetch_add(1, Ordering::SeqCst);
                })),
                ..Default::default()
            })
        }));
        // A job that defers `id`, writes it unless told not to, and then fails if told to.
        let job = |db: &Db, id: &'static str, guarded: bool, write: bool, fail: bool| {
            let db = db.clone();
            let f = move |c: &Connection| {
                if defer_triage(admitted(id)).is_some() {
                    return Err(StoreError::Invalid("nothing to defer to".into()));
                }
                if write {
                    c.execute("INSERT INTO t VALUES (?1)", [id])?;
                }
                if fail {
                    return Err(StoreError::Invalid("refused".into()));
                }
                Ok(())
            };
            Box::pin(async move {
                if guarded {
                    db.write(f).await
                } else {
                    db.write_unguarded(f).await
                }
            })
        };

        let release = hold_writer(&db).await;
        let jobs = vec![
            submitted(job(&db, "a", true, true, false)),
            submitted(job(&db, "b", true, true, true)),
            submitted(job(&db, "c", false, true, false)),
            submitted(job(&db, "d", false, false, true)),
        ];
        drop(release);
        let mut ok = Vec::new();
        for j in jobs {
            ok.push(j.await.is_ok());
        }
        assert_eq!(ok, [true, false, true, false]);
        assert_eq!(seen.lock().unwrap().clone(), [vec!["a", "c"]]);
        assert_eq!(rows(&db).await, ["a", "c", "pass-a", "pass-c"]);
        assert_eq!(committed.load(Ordering::SeqCst), 1, "after the commit");

        // A failing pass takes its transaction down: the job fails and nothing of it stays.
        fail.store(true, Ordering::SeqCst);
        assert!(job(&db, "e", true, true, false).await.is_err());
        assert_eq!(rows(&db).await, ["a", "c", "pass-a", "pass-c"]);
        assert_eq!(committed.load(Ordering::SeqCst), 1, "not after a rollback");
        fail.store(false, Ordering::SeqCst);

        // Removed: admission queues again.
        db.remove_pre_commit();
        assert!(job(&db, "f", true, true, false).await.is_err());
        assert_eq!(seen.lock().unwrap().len(), 2);
        db.close();
    }

    /// The writer's commits are synced before they return, which its VFS relies on (a commit's
    /// frames are written at that sync, before other connections can see them).
    #[tokio::test]
    async fn the_writer_syncs_every_commit() {
        let db = Db::open(tempdir().join("t.db")).unwrap();
        let level: i64 = db
            .write(|c| Ok(c.pragma_query_value(None, "synchronous", |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(level, 2, "synchronous=FULL");
        db.close();
    }

    /// A new database with one table, `t(x <column>)`.
    async fn table_db(column: &str) -> Db {
        let db = Db::open(tempdir().join("t.db")).unwrap();
        let create = format!("CREATE TABLE t(x {column})");
        db.write(move |c| Ok(c.execute_batch(&create)?))
            .await
            .unwrap();
        db
    }

    pub(crate) use crate::testing::tempdir;

    /// Waits until `check` holds, for what another thread (the writer) does; fails after 10 s.
    pub(crate) fn wait_until(what: &str, check: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(
                std::time::Instant::now() < deadline,
                "waited 10 s for {what}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
