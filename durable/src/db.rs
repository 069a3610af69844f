//! The database with group commit: embedded SQLite, or PostgreSQL shared by
//! several processes ([`Store`]).
//!
//! One thread owns the writing connection. Callers hand it closures; it takes
//! every closure that is waiting (up to [`MAX_BATCH`]), runs each in a
//! savepoint inside one transaction, commits once (one fsync with
//! `synchronous=FULL`), and only then answers each caller. A caller that
//! hears `Ok` knows its write is on disk.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::lease::Leases;
use crate::sql::{self, Connection};

/// Most writes committed in one transaction.
pub const MAX_BATCH: usize = 1024;

/// Most writes committed in one PostgreSQL transaction. Each update of a
/// row there makes a new version of it, which the next update of the same
/// row in that transaction walks to, and the batch holds its rows locked
/// against the other replicas until it commits: a smaller batch keeps both
/// short. (At the loads measured, the round trips dominate either way:
/// docs/benchmarks.md.)
pub const MAX_BATCH_POSTGRES: usize = 64;

#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(Arc<sql::Error>),
    #[error("database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("the database writer has stopped")]
    WriterGone,
    #[error("a database write panicked")]
    Panicked,
    /// The transaction was rolled back because the one write in it failed
    /// (that write's caller gets its own error).
    #[error("the transaction was rolled back: its only write failed")]
    RolledBack,
    /// Every reader connection stayed in use for as long as a read may
    /// wait: the caller may try again later.
    #[error(
        "the database is busy: all {readers} reader connections stayed in use for {waited_ms} ms"
    )]
    Busy { readers: usize, waited_ms: u64 },
}

impl DbError {
    /// The write lost a race with another replica's and may be tried again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, DbError::Sql(e) if e.is_conflict())
    }
}

impl From<sql::Error> for DbError {
    fn from(e: sql::Error) -> Self {
        DbError::Sql(Arc::new(e))
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sql(Arc::new(sql::Error::Sqlite(e)))
    }
}

type Completion = Box<dyn FnOnce(Result<(), DbError>) + Send>;

/// What a database's owner does around each commit of the writer: write
/// what the batch's writes folded together ([`Hooks::before_commit`], in the
/// same transaction), then learn whether the batch was committed, to publish
/// or drop what it staged in memory. Both run on the writer's thread.
pub trait Hooks: Send + Sync {
    /// Runs after every write of a batch, before COMMIT. An error rolls the
    /// whole batch back.
    fn before_commit(&self, conn: &Connection) -> Result<(), DbError>;
    /// Runs once the batch is committed (`true`) or rolled back (`false`),
    /// before any caller is answered.
    fn after_commit(&self, committed: bool);
    /// A write of the batch starts (in its savepoint).
    fn write_started(&self) {}
    /// That write failed and its savepoint was rolled back: what it staged
    /// must go too.
    fn write_failed(&self) {}
}

/// No hooks.
struct NoHooks;

impl Hooks for NoHooks {
    fn before_commit(&self, _: &Connection) -> Result<(), DbError> {
        Ok(())
    }
    fn after_commit(&self, _: bool) {}
}
/// A write, run with whether it is the only one of its transaction; it
/// returns what to tell its caller once the transaction ends, and whether
/// it failed alone (then the transaction is rolled back).
type Job = Box<dyn FnOnce(&Connection, &dyn Hooks, bool) -> (Completion, bool) + Send>;

/// Counters of the writer, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct DbStats {
    /// Transactions committed (each one fsync).
    pub commits: AtomicU64,
    /// Writes committed.
    pub writes: AtomicU64,
    /// Reader connections open now (in use or idle in the pool).
    pub readers_open: AtomicU64,
    /// Reads refused because every reader stayed in use too long.
    pub reads_refused: AtomicU64,
    /// Reads run.
    pub reads: AtomicU64,
}

/// Reader connections a database opens at most, by default.
pub const DEFAULT_READERS: usize = 16;
/// How long a read waits for a reader connection before it is refused
/// ([`DbError::Busy`]), by default.
pub const DEFAULT_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// A reader connection idle this long is closed when the pool is next used.
const READER_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// The reader connections: at most `permits` at once, idle ones kept for
/// [`READER_IDLE`], newest first.
struct Readers {
    permits: Arc<tokio::sync::Semaphore>,
    size: usize,
    wait: std::time::Duration,
    idle: Mutex<Vec<(Connection, std::time::Instant)>>,
}

impl Readers {
    fn new(size: usize, wait: std::time::Duration) -> Self {
        let size = size.max(1);
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(size)),
            size,
            wait,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Option<Connection> {
        self.idle
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .map(|(c, _)| c)
    }

    /// Returns `conn` to the pool, and closes the connections idle too long
    /// (the oldest are first). Returns how many it closed.
    fn give_back(&self, conn: Connection) -> usize {
        let now = std::time::Instant::now();
        let stale: Vec<Connection> = match self.idle.lock() {
            Ok(mut v) => {
                v.push((conn, now));
                let keep = v
                    .iter()
                    .position(|(_, at)| now.duration_since(*at) < READER_IDLE)
                    .unwrap_or(v.len());
                v.drain(..keep).map(|(c, _)| c).collect()
            }
            Err(_) => Vec::new(),
        };
        stale.len()
    }
}

/// Where a database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A schema of a PostgreSQL database, which several processes (the
    /// gateway's replicas) may share.
    Postgres { url: String, schema: String },
}

/// Where a relative `data_dir` of a configuration file in `config_dir`
/// is: beside the file, like the certificates' paths. An earlier version
/// took it from the working directory: where a store `file` is there and
/// not at the new place, this refuses, naming both, rather than let the
/// process start on an empty store beside its old one.
pub fn data_dir_beside(config_dir: &Path, data_dir: &Path, file: &str) -> Result<PathBuf, String> {
    if data_dir.is_absolute() {
        return Ok(data_dir.to_owned());
    }
    let beside = config_dir.join(data_dir);
    let old = data_dir.join(file);
    if beside != data_dir && old.exists() && !beside.join(file).exists() {
        return Err(format!(
            "data_dir: {} is taken from the configuration file's directory, so the store is {}; \
             a store is at {} from the working directory, where an earlier version took it: \
             move it (with its -wal and -shm files) there, or give data_dir as an absolute path",
            data_dir.display(),
            beside.join(file).display(),
            old.display()
        ));
    }
    Ok(beside)
}

impl Store {
    /// The store a configuration names: `store` absent or `"sqlite"` for
    /// the SQLite file `sqlite`, or a PostgreSQL connection string and
    /// `schema`. The error names the field.
    pub fn from_config(store: Option<&str>, schema: &str, sqlite: PathBuf) -> Result<Self, String> {
        match store {
            None | Some("sqlite") => Ok(Store::Sqlite(sqlite)),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let valid = !schema.is_empty()
                    && schema.len() <= 63
                    && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && schema
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !valid {
                    return Err(format!(
                        "store_schema: {schema:?} is not a schema name (lower-case letters, digits and _, at most 63)"
                    ));
                }
                check_url(url)
                    .map_err(|e| format!("store: not a PostgreSQL connection string: {e}"))?;
                Ok(Store::Postgres {
                    url: url.to_owned(),
                    schema: schema.to_owned(),
                })
            }
            Some(other) => Err(format!(
                "store: {:?} is neither \"sqlite\" nor a postgres:// connection string",
                other.split('@').next_back().unwrap_or("")
            )),
        }
    }

    /// What the store is, without its credentials.
    pub fn describe(&self) -> String {
        match self {
            Store::Sqlite(path) => path.display().to_string(),
            Store::Postgres { url, schema } => {
                format!("postgres {} schema {schema}", describe_url(url))
            }
        }
    }
}

/// Whether `url` is a PostgreSQL connection string.
pub fn check_url(url: &str) -> Result<(), String> {
    url.parse::<postgres::Config>()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Hosts and database of a PostgreSQL connection string, never its
/// password.
pub fn describe_url(url: &str) -> String {
    match url.parse::<postgres::Config>() {
        Ok(c) => {
            let hosts: Vec<String> = c
                .get_hosts()
                .iter()
                .map(|h| match h {
                    postgres::config::Host::Tcp(s) => s.clone(),
                    postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect();
            format!("{}/{}", hosts.join(","), c.get_dbname().unwrap_or(""))
        }
        Err(_) => "(unparsable url)".into(),
    }
}

/// A database: one group-committing writer, pooled readers.
#[derive(Clone)]
pub struct Db {
    jobs: mpsc::UnboundedSender<Job>,
    readers: Arc<Readers>,
    store: Arc<Store>,
    stats: Arc<DbStats>,
    leases: Option<Leases>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("store", &self.store.describe())
            .finish()
    }
}

fn open_sqlite(path: &Path) -> Result<Connection, DbError> {
    let conn = rusqlite::Connection::open(path).map_err(|e| DbError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // WAL: readers never block the writer. FULL: a commit is on disk before
    // anyone is told it happened.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Every statement the services run stays prepared: rusqlite keeps 16 by
    // default, fewer than the ledger's, and callgrind showed a fifth of the
    // gateway's instructions going to preparing evicted statements again.
    conn.set_prepared_statement_cache_capacity(256);
    // The query planner's stability guarantee: a plan does not depend on
    // the values bound. Without it SQLite peeks at a bound `LIMIT ?` and
    // prepares the statement again at each execution (callgrind showed a
    // sixth of the gateway's instructions going to re-preparing).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(Connection::sqlite(conn))
}

/// The client's settings for `url`, with the defaults the services use.
fn postgres_config(url: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| DbError::Open {
        path: describe_url(url),
        reason: format!("{e}"),
    })?;
    if config.get_user().is_none() {
        config.user("postgres");
    }
    config.application_name("hotline");
    config.connect_timeout(std::time::Duration::from_secs(5));
    Ok(config)
}

/// A new PostgreSQL session, its search path set to `schema` (a
/// synchronous client, for the leases and the tools).
pub fn connect_postgres(url: &str, schema: &str) -> Result<postgres::Client, DbError> {
    let open = |reason: String| DbError::Open {
        path: describe_url(url),
        reason,
    };
    let config = postgres::Config::from(postgres_config(url)?);
    let mut client = config
        .connect(postgres::NoTls)
        .map_err(|e| open(format!("cannot connect: {e}")))?;
    client
        .batch_execute(&format!("SET search_path TO \"{schema}\""))
        .map_err(|e| open(format!("{e}")))?;
    Ok(client)
}

/// A new PostgreSQL session of the services' own, which pipelines the
/// writes it is not asked to answer ([`crate::sql::Pg`]).
fn connect_pipelined(url: &str, schema: &str) -> Result<Connection, DbError> {
    let open = |reason: String| DbError::Open {
        path: describe_url(url),
        reason,
    };
    let session = crate::sql::Pg::connect(&postgres_config(url)?)
        .map_err(|e| open(format!("cannot connect: {e}")))?;
    let conn = Connection::postgres(session);
    conn.execute_batch(&format!("SET search_path TO \"{schema}\""))
        .map_err(|e| open(format!("{e}")))?;
    Ok(conn)
}

/// A reader's connection. On PostgreSQL its statements are planned at each
/// execution (`plan_cache_mode = force_custom_plan`), not once for good: a
/// plan made while a table was nearly empty (the outbox, between bursts)
/// reads every row for every row once the table has grown. A generic plan
/// of the outbox's `due` query made on an empty table took 82 s for 20,000
/// items owed; planned afresh, 1 ms (docs/benchmarks.md).
fn open_reader(store: &Store) -> Result<Connection, DbError> {
    let conn = open_connection(store)?;
    if conn.is_postgres() {
        conn.execute_batch("SET plan_cache_mode = force_custom_plan")?;
    }
    Ok(conn)
}

fn open_connection(store: &Store) -> Result<Connection, DbError> {
    match store {
        Store::Sqlite(path) => open_sqlite(path),
        Store::Postgres { url, schema } => connect_pipelined(url, schema),
    }
}

impl Db {
    /// Opens (or creates) the SQLite database at `path` and brings its
    /// schema up to date: `migrations[i]` runs once, when the stored version
    /// is `i`.
    pub fn open(path: &Path, migrations: &[&str]) -> Result<Self, DbError> {
        Self::open_store(&Store::Sqlite(path.to_owned()), migrations)
    }

    /// Opens `store` and brings its schema up to date (see [`Db::open`]).
    /// On PostgreSQL the schema is made if missing, and replicas starting
    /// together migrate it one at a time.
    pub fn open_store(store: &Store, migrations: &[&str]) -> Result<Self, DbError> {
        Self::open_with_hooks(store, migrations, Arc::new(NoHooks))
    }

    /// Opens `store` as [`Db::open_store`] does, with `hooks` run around
    /// each commit of the writer.
    pub fn open_with_hooks(
        store: &Store,
        migrations: &[&str],
        hooks: Arc<dyn Hooks>,
    ) -> Result<Self, DbError> {
        if let Store::Sqlite(path) = store
            && let Some(dir) = path.parent()
        {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Open {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        let (jobs, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(DbStats::default());
        let writer_stats = stats.clone();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let writer_store = store.clone();
        let owned: Vec<String> = migrations.iter().map(|m| (*m).to_owned()).collect();
        // The writer's thread opens and migrates: the PostgreSQL client may
        // not be driven from the async threads.
        std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || {
                let opened = open_connection(&writer_store).and_then(|conn| {
                    migrate(&conn, &writer_store, &owned)?;
                    Ok(conn)
                });
                match opened {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        writer(conn, &writer_store, rx, &writer_stats, hooks.as_ref());
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| DbError::Open {
                path: store.describe(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        ready.recv().map_err(|_| DbError::WriterGone)??;
        let leases = match store {
            Store::Sqlite(_) => None,
            Store::Postgres { url, schema } => Some(Leases::start(url, schema)?),
        };
        Ok(Self {
            jobs,
            readers: Arc::new(Readers::new(DEFAULT_READERS, DEFAULT_READ_WAIT)),
            store: Arc::new(store.clone()),
            stats,
            leases,
        })
    }

    pub fn stats(&self) -> &DbStats {
        &self.stats
    }

    /// The same database with at most `size` reader connections, a read
    /// waiting up to `wait` for one (set before it is read from).
    pub fn with_readers(mut self, size: usize, wait: std::time::Duration) -> Self {
        self.readers = Arc::new(Readers::new(size, wait));
        self
    }

    /// The most reader connections this database opens.
    pub fn reader_limit(&self) -> usize {
        self.readers.size
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether other processes may write this database too (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.leases.is_some()
    }

    /// Asks for the lease `name` (an advisory lock on PostgreSQL, held by one
    /// process at a time and freed when that process dies) and says whether
    /// this process holds it now. A database no one else writes (SQLite)
    /// always holds every lease.
    pub fn holds(&self, name: &str) -> bool {
        match &self.leases {
            None => true,
            Some(leases) => leases.holds(name),
        }
    }

    /// Runs `f` in the writer's next transaction and returns once it is
    /// committed. If `f` fails, its changes are rolled back and the others'
    /// are kept.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, E>>();
        // The caller's span goes with its work to the writer thread, so what
        // the work logs, and the trace context it queues, are the caller's.
        let span = tracing::Span::current();
        let job: Job = Box::new(move |conn: &Connection, hooks: &dyn Hooks, alone: bool| {
            let result = span.in_scope(|| {
                if alone {
                    run_alone(conn, hooks, f)
                } else {
                    in_savepoint(conn, hooks, f)
                }
            });
            let failed = alone && result.is_err();
            let complete: Completion = Box::new(move |committed: Result<(), DbError>| {
                let out = match (committed, result) {
                    (Ok(()), r) => r,
                    (Err(_), Err(e)) => Err(e),
                    (Err(e), Ok(_)) => Err(E::from(e)),
                };
                let _ = tx.send(out);
            });
            (complete, failed)
        });
        self.jobs
            .send(job)
            .map_err(|_| E::from(DbError::WriterGone))?;
        rx.await.map_err(|_| E::from(DbError::WriterGone))?
    }

    /// Runs `f` on a reader connection, off the async threads, in one read
    /// transaction: everything it reads is of one moment.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let readers = self.readers.clone();
        let store = self.store.clone();
        let stats = self.stats.clone();
        // At most `size` reads at once, each on a connection of its own: a
        // flood of reads waits here, not in connections (on PostgreSQL the
        // server's), and past the wait is refused.
        let permit =
            match tokio::time::timeout(readers.wait, readers.permits.clone().acquire_owned()).await
            {
                Ok(Ok(permit)) => permit,
                _ => {
                    stats.reads_refused.fetch_add(1, Ordering::Relaxed);
                    return Err(E::from(DbError::Busy {
                        readers: readers.size,
                        waited_ms: readers.wait.as_millis() as u64,
                    }));
                }
            };
        stats.reads.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match readers.take() {
                Some(c) => c,
                None => {
                    let c = open_reader(&store)?;
                    stats.readers_open.fetch_add(1, Ordering::Relaxed);
                    c
                }
            };
            // One snapshot for the whole read: a ticket and its history, read
            // by two statements, are of the same moment.
            // (On PostgreSQL; SQLite reads as it always has, one
            // statement at a time.)
            // On PostgreSQL the BEGIN goes with the read's first statement.
            let snapshot = conn.is_postgres();
            let out = if snapshot {
                conn.write("BEGIN ISOLATION LEVEL REPEATABLE READ", ())
                    .map_err(|e| E::from(DbError::from(e)))
                    .and_then(|()| f(&conn))
            } else {
                f(&conn)
            };
            if snapshot && conn.execute("COMMIT", ()).is_err() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            // A connection the server dropped is not pooled again.
            let closed = if conn.is_closed() {
                drop(conn);
                1
            } else {
                readers.give_back(conn)
            };
            stats
                .readers_open
                .fetch_sub(closed as u64, Ordering::Relaxed);
            out
        })
        .await
        .map_err(|_| E::from(DbError::Panicked))?
    }
}

/// Runs the only write of a transaction: no savepoint, since a failure
/// rolls the whole transaction back (two statements fewer a write, each a
/// round trip's work for PostgreSQL's server).
fn run_alone<T, E: From<DbError>>(
    conn: &Connection,
    hooks: &dyn Hooks,
    f: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    hooks.write_started();
    let result = catch_unwind(AssertUnwindSafe(|| {
        f(conn).and_then(|v| conn.flush().map(|()| v).map_err(|e| E::from(e.into())))
    }))
    .unwrap_or_else(|_| Err(E::from(DbError::Panicked)));
    if result.is_err() {
        hooks.write_failed();
        // What the write left unsent goes with the rollback.
        let _ = conn.flush();
    }
    result
}

fn in_savepoint<T, E: From<DbError>>(
    conn: &Connection,
    hooks: &dyn Hooks,
    f: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    // Prepared once per connection, not parsed for every job; on PostgreSQL
    // sent with the job's first statement that is answered.
    let run = |sql: &str| -> Result<(), DbError> { Ok(conn.write(sql, ())?) };
    run("SAVEPOINT job")?;
    hooks.write_started();
    // The job's writes are sent before it is judged (on PostgreSQL they may
    // still be waiting): a write that fails fails the job.
    let result = catch_unwind(AssertUnwindSafe(|| {
        f(conn).and_then(|v| conn.flush().map(|()| v).map_err(|e| E::from(e.into())))
    }))
    .unwrap_or_else(|_| Err(E::from(DbError::Panicked)));
    if result.is_err() {
        hooks.write_failed();
        // What the job left unsent is sent and undone with it (a failure of
        // it is the job's, already failed).
        let _ = conn.flush();
        conn.execute("ROLLBACK TO job", ()).map_err(DbError::from)?;
    }
    if let Err(e) = run("RELEASE job") {
        hooks.write_failed();
        return Err(e.into());
    }
    result
}

fn writer(
    mut conn: Connection,
    store: &Store,
    mut rx: mpsc::UnboundedReceiver<Job>,
    stats: &DbStats,
    hooks: &dyn Hooks,
) {
    let begin = if conn.is_postgres() {
        "BEGIN"
    } else {
        "BEGIN IMMEDIATE"
    };
    let max_batch = if conn.is_postgres() {
        MAX_BATCH_POSTGRES
    } else {
        MAX_BATCH
    };
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        // Prepared once, not parsed for every batch; on PostgreSQL the
        // COMMIT goes in one round trip with the writes still waiting.
        let run = |sql: &str| -> Result<(), sql::Error> { conn.execute(sql, ()).map(|_| ()) };
        // On PostgreSQL the BEGIN goes with the first job's first answered
        // statement.
        if let Err(e) = conn.write(begin, ()) {
            // The jobs never ran: dropping them tells each caller the write
            // did not happen.
            tracing::error!(error = %e, "cannot begin a transaction");
            batch.clear();
            reconnect_if_closed(&mut conn, store);
            continue;
        }
        let alone = batch.len() == 1;
        let mut failed_alone = false;
        let completions: Vec<Completion> = batch
            .drain(..)
            .map(|job| {
                let (complete, failed) = job(&conn, hooks, alone);
                failed_alone |= failed;
                complete
            })
            .collect();
        let committed = if failed_alone {
            Err(DbError::RolledBack)
        } else {
            catch_unwind(AssertUnwindSafe(|| hooks.before_commit(&conn)))
                .unwrap_or(Err(DbError::Panicked))
                .and_then(|()| run("COMMIT").map_err(DbError::from))
        };
        hooks.after_commit(committed.is_ok());
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
            reconnect_if_closed(&mut conn, store);
        } else {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats.writes.fetch_add(n, Ordering::Relaxed);
        }
        for complete in completions {
            complete(committed.clone());
        }
    }
}

/// If the server went away, connects again for the next batch.
fn reconnect_if_closed(conn: &mut Connection, store: &Store) {
    if !conn.is_closed() {
        return;
    }
    match open_connection(store) {
        Ok(c) => *conn = c,
        Err(e) => {
            tracing::error!(error = %e, "cannot reconnect to the database");
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}

/// A migration whose text starts with this runs on SQLite only (on
/// PostgreSQL it is counted, not run): an index only a shared store reads,
/// dropped where it is only written.
pub const SQLITE_ONLY: &str = "-- sqlite only";

fn migrate(conn: &Connection, store: &Store, migrations: &[String]) -> Result<(), DbError> {
    match store {
        Store::Sqlite(_) => {
            let version: i64 = conn.query_row("PRAGMA user_version", (), |r| r.get(0))?;
            let start = usize::try_from(version).unwrap_or(0);
            for (i, sql) in migrations.iter().enumerate().skip(start) {
                conn.execute_batch("BEGIN")?;
                let done = conn
                    .execute_batch(sql)
                    .and_then(|()| conn.execute_batch(&format!("PRAGMA user_version = {}", i + 1)));
                match done {
                    Ok(()) => conn.execute_batch("COMMIT")?,
                    Err(e) => {
                        let _ = conn.execute_batch("ROLLBACK");
                        return Err(e.into());
                    }
                }
            }
            Ok(())
        }
        Store::Postgres { schema, .. } => {
            // One replica migrates at a time; the others wait, then find
            // the schema up to date.
            let key = crate::lease::key(schema, "migrate");
            conn.execute("SELECT pg_advisory_lock(?1)", [key])?;
            let done = migrate_postgres(conn, schema, migrations);
            let _ = conn.execute("SELECT pg_advisory_unlock(?1)", [key]);
            done
        }
    }
}

fn migrate_postgres(conn: &Connection, schema: &str, migrations: &[String]) -> Result<(), DbError> {
    conn.execute_batch(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
    ))?;
    let version: Option<i64> =
        conn.query_row("SELECT max(version) FROM schema_version", (), |r| r.get(0))?;
    if version.is_none() {
        conn.execute("INSERT INTO schema_version (version) VALUES (0)", ())?;
    }
    let start = usize::try_from(version.unwrap_or(0)).unwrap_or(0);
    for (i, sql) in migrations.iter().enumerate().skip(start) {
        conn.execute_batch("BEGIN")?;
        let run = if sql.starts_with(SQLITE_ONLY) {
            Ok(())
        } else {
            conn.execute_batch(sql)
        };
        let done = run.and_then(|()| {
            conn.execute("UPDATE schema_version SET version = ?1", [(i + 1) as i64])
                .map(|_| ())
        });
        match done {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(DbError::Open {
                    path: format!("schema {schema}"),
                    reason: format!("migration {}: {e}", i + 1),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params;

    const SCHEMA: &[&str] = &["CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);"];

    /// `t` with an index, which a SQLite-only migration drops.
    const LEAN: &[&str] = &[
        "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL); CREATE INDEX t_v ON t (v);",
        "-- sqlite only\nDROP INDEX t_v;",
    ];

    async fn has_index(db: &Db) -> bool {
        let sql = if db.is_shared() {
            "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() AND indexname = 't_v'"
        } else {
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 't_v'"
        };
        let n: i64 = db
            .read(move |c| c.query_row(sql, (), |r| r.get(0)).map_err(DbError::from))
            .await
            .unwrap();
        n == 1
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sqlite_only_migration_runs_on_sqlite_and_is_counted_on_postgres() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Db::open(&dir.path().join("lean.db"), LEAN).unwrap();
        assert!(!has_index(&sqlite).await);
        let store = crate::testing::postgres_store("lean");
        let pg = Db::open_store(&store, LEAN).unwrap();
        assert!(has_index(&pg).await);
        drop(pg);
        // Opened again, nothing is run twice.
        let pg = Db::open_store(&store, LEAN).unwrap();
        assert!(has_index(&pg).await);
        if let crate::Store::Postgres { url, schema } = &store {
            crate::testing::drop_schema(url, schema);
        }
    }

    #[test]
    fn a_relative_data_dir_is_beside_the_file_unless_a_store_is_where_it_used_to_be() {
        let top = tempfile::tempdir().unwrap();
        let old = tempfile::tempdir().unwrap();
        // `old`, relative to the working directory.
        let cwd = std::env::current_dir().unwrap();
        let up: PathBuf = cwd.components().skip(1).map(|_| "..").collect();
        let relative = up.join(old.path().strip_prefix("/").unwrap());
        assert!(relative.is_relative());
        // A configuration directory deeper than the way up, so that the
        // relative path from it leads elsewhere.
        let deep: PathBuf = cwd.components().map(|_| "d").collect();
        let config_dir = tempfile::TempDir::new_in(top.path()).unwrap();
        let config_dir = config_dir.path().join(deep);
        // Nothing there: beside the file.
        assert_eq!(
            data_dir_beside(&config_dir, &relative, "node.db").unwrap(),
            config_dir.join(&relative)
        );
        assert_eq!(
            data_dir_beside(&config_dir, Path::new("/abs"), "node.db").unwrap(),
            Path::new("/abs")
        );
        // A store where the working directory put it: refused, naming both.
        std::fs::write(old.path().join("node.db"), b"").unwrap();
        let e = data_dir_beside(&config_dir, &relative, "node.db").unwrap_err();
        assert!(e.starts_with("data_dir: "), "{e}");
        assert!(
            e.contains(&relative.join("node.db").display().to_string()),
            "{e}"
        );
        // Moved beside the file: taken.
        let beside = config_dir.join(&relative);
        std::fs::create_dir_all(&beside).unwrap();
        std::fs::write(beside.join("node.db"), b"").unwrap();
        assert_eq!(
            data_dir_beside(&config_dir, &relative, "node.db").unwrap(),
            beside
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_a_failing_one_is_rolled_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db"), SCHEMA).unwrap();
        concurrent_writes(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_same_on_postgres() {
        let store = crate::testing::postgres_store("db");
        concurrent_writes(Db::open_store(&store, SCHEMA).unwrap()).await;
        // Opening again finds the schema migrated (and the 490 rows of the
        // writes together, and the one of the writes one at a time).
        let again = Db::open_store(&store, SCHEMA).unwrap();
        let n: i64 = again
            .read(|c| {
                c.query_row("SELECT count(*) FROM t", (), |r| r.get(0))
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(n, 491);
        if let Store::Postgres { url, schema } = &store {
            crate::testing::drop_schema(url, schema);
        }
    }

    /// Reads wait for one of the pool's connections rather than open more,
    /// and past the wait are refused BUSY; idle connections are kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn reads_beyond_the_pool_wait_and_past_the_wait_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db"), SCHEMA)
            .unwrap()
            .with_readers(2, std::time::Duration::from_secs(30));
        let at_once = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let mut reads = Vec::new();
        for _ in 0..8 {
            let (db, at_once, most) = (db.clone(), at_once.clone(), most.clone());
            reads.push(tokio::spawn(async move {
                db.read(move |c| {
                    let now = at_once.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    at_once.fetch_sub(1, Ordering::SeqCst);
                    c.query_row("SELECT count(*) FROM t", (), |r| r.get::<_, i64>(0))
                        .map_err(DbError::from)
                })
                .await
            }));
        }
        for r in reads {
            assert_eq!(r.await.unwrap().unwrap(), 0);
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert!(db.stats().readers_open.load(Ordering::SeqCst) <= 2);

        // One reader, held until told; a read that may wait 100 ms is
        // refused, and says why.
        let db = db.with_readers(1, std::time::Duration::from_millis(100));
        let (started, has_started) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = {
            let db = db.clone();
            tokio::spawn(async move {
                db.read(move |_| {
                    let _ = started.send(());
                    let _ = released.recv();
                    Ok::<_, DbError>(())
                })
                .await
            })
        };
        tokio::task::spawn_blocking(move || has_started.recv())
            .await
            .unwrap()
            .unwrap();
        let e = db.read(|_| Ok::<_, DbError>(())).await.unwrap_err();
        assert!(matches!(e, DbError::Busy { readers: 1, .. }), "{e}");
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        db.read(|_| Ok::<_, DbError>(())).await.unwrap();
        assert_eq!(db.stats().reads_refused.load(Ordering::SeqCst), 1);
    }

    /// Reads made together answer each query with its own rows, after the
    /// writes not sent yet (on PostgreSQL all in one round trip).
    async fn reads_together(db: Db) {
        let rows = db
            .write(|c| {
                c.write("INSERT INTO t VALUES (1, 'a')", ())?;
                c.write("INSERT INTO t VALUES (2, 'b')", ())?;
                let mut rows: Vec<(usize, String)> = Vec::new();
                c.query_each(
                    &[
                        ("SELECT v FROM t WHERE k >= ?1 ORDER BY k", params![1]),
                        ("SELECT v FROM t WHERE k = ?1", params![3]),
                        ("SELECT v FROM t WHERE k = ?1", params![2]),
                    ],
                    |i, r| {
                        rows.push((i, r.get(0)?));
                        Ok(())
                    },
                )?;
                Ok::<_, DbError>(rows)
            })
            .await
            .unwrap();
        let want = [(0, "a"), (0, "b"), (2, "b")].map(|(i, v)| (i, v.to_owned()));
        assert_eq!(rows, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_made_together_answer_each_query() {
        let dir = tempfile::tempdir().unwrap();
        reads_together(Db::open(&dir.path().join("t.db"), SCHEMA).unwrap()).await;
        let store = crate::testing::postgres_store("each");
        reads_together(Db::open_store(&store, SCHEMA).unwrap()).await;
        if let Store::Postgres { url, schema } = &store {
            crate::testing::drop_schema(url, schema);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_is_held_by_one_process_and_passes_on_when_it_goes() {
        let store = crate::testing::postgres_store("lease");
        let a = Db::open_store(&store, SCHEMA).unwrap();
        let b = Db::open_store(&store, SCHEMA).unwrap();
        let wait = |db: Db| async move {
            for _ in 0..50 {
                if db.holds("outbox/yibin") {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            false
        };
        assert!(wait(a.clone()).await);
        // b wants it too, and does not get it while a holds it.
        assert!(!wait(b.clone()).await);
        assert!(a.holds("outbox/yibin"));
        drop(a);
        assert!(wait(b.clone()).await, "the lease did not pass on");
        if let Store::Postgres { url, schema } = &store {
            crate::testing::drop_schema(url, schema);
        }
    }

    async fn concurrent_writes(db: Db) {
        let mut tasks = Vec::new();
        for k in 0..500i64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.write(move |c| {
                    // Written with the job's answered statement or at its
                    // end (on PostgreSQL): the same outcome.
                    if k % 2 == 0 {
                        c.execute("INSERT INTO t VALUES (?1, 'x')", [k])?;
                    } else {
                        c.write("INSERT INTO t VALUES (?1, 'x')", [k])?;
                    }
                    if k % 100 == 7 {
                        // Writes a row, then fails: its row must not stay.
                        c.write("INSERT INTO t VALUES (?1, 'y')", [k + 10_000])?;
                        return Err(DbError::WriterGone);
                    }
                    if k % 100 == 3 {
                        // A write the server refuses (its key is taken) fails
                        // its job, even when no statement after it is
                        // answered: the rows it wrote before go too.
                        c.write("INSERT INTO t VALUES (?1, 'y')", [k + 20_000])?;
                        c.write("INSERT INTO t VALUES (?1, 'y')", [k])?;
                    }
                    Ok::<_, DbError>(())
                })
                .await
            }));
        }
        let mut failed = 0;
        for t in tasks {
            if t.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 10);
        let n: i64 = db
            .read(|c| {
                c.query_row("SELECT count(*) FROM t", (), |r| r.get(0))
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(n, 490);
        let commits = db.stats().commits.load(Ordering::Relaxed);
        assert!(commits <= 500, "{commits}");
        // One at a time, each write the only one of its transaction (no
        // savepoint): a failure rolls the transaction back, and its caller
        // gets its own error.
        let e = db
            .write(|c| {
                c.write("INSERT INTO t VALUES (30000, 'y')", ())?;
                Err::<(), _>(DbError::WriterGone)
            })
            .await
            .unwrap_err();
        assert!(matches!(e, DbError::WriterGone), "{e}");
        let e = db
            .write(|c| {
                c.write("INSERT INTO t VALUES (30001, 'y')", ())?;
                c.write("INSERT INTO t VALUES (0, 'taken')", ())?;
                Ok::<_, DbError>(())
            })
            .await
            .unwrap_err();
        assert!(matches!(e, DbError::Sql(_)), "{e}");
        db.write(|c| Ok::<_, DbError>(c.write("INSERT INTO t VALUES (30002, 'z')", ())?))
            .await
            .unwrap();
        let rows: Vec<i64> = db
            .read(|c| {
                c.prepare_cached("SELECT k FROM t WHERE k >= 30000 ORDER BY k")?
                    .query_map((), |r| r.get(0))?
                    .collect::<Result<_, _>>()
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(rows, vec![30002]);
    }

    #[tokio::test]
    async fn data_survives_reopening_and_migrations_run_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let db = Db::open(&path, SCHEMA).unwrap();
            db.write(|c| {
                c.execute("INSERT INTO t VALUES (1, 'a')", ())
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        }
        let db = Db::open(&path, SCHEMA).unwrap();
        let v: String = db
            .read(|c| {
                c.query_row("SELECT v FROM t WHERE k = 1", (), |r| r.get(0))
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(v, "a");
    }
}
/// What one PostgreSQL round trip costs here: `cargo test --release -p
/// hotline-durable probe -- --ignored --nocapture` (docs/benchmarks.md).
#[cfg(test)]
mod probe {
    #[test]
    #[ignore]
    fn round_trips() {
        let url = crate::testing::postgres_url();
        let c = crate::db::connect_pipelined(&url, "public").unwrap();
        let n = 2000;
        let t = std::time::Instant::now();
        for i in 0..n {
            let _: i64 = c.query_row("SELECT ?1 + 1", [i], |r| r.get(0)).unwrap();
        }
        eprintln!(
            "one statement, one round trip: {:?}",
            t.elapsed() / n as u32
        );
        let t = std::time::Instant::now();
        for i in 0..n {
            c.write("SELECT ?1 + 1", [i]).unwrap();
        }
        c.flush().unwrap();
        eprintln!("statements pipelined: {:?} each", t.elapsed() / n as u32);
    }
}
