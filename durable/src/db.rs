//! SQLite with group commit.
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

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

/// Most writes committed in one transaction.
pub const MAX_BATCH: usize = 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sqlite(Arc<rusqlite::Error>),
    #[error("database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("the database writer has stopped")]
    WriterGone,
    #[error("a database write panicked")]
    Panicked,
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sqlite(Arc::new(e))
    }
}

type Completion = Box<dyn FnOnce(Result<(), DbError>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Completion + Send>;

/// Counters of the writer, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct DbStats {
    /// Transactions committed (each one fsync).
    pub commits: AtomicU64,
    /// Writes committed.
    pub writes: AtomicU64,
}

/// An embedded SQLite database: one group-committing writer, pooled readers.
#[derive(Clone)]
pub struct Db {
    jobs: mpsc::UnboundedSender<Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: Arc<PathBuf>,
    stats: Arc<DbStats>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

fn open_connection(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path).map_err(|e| DbError::Open {
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
    Ok(conn)
}

impl Db {
    /// Opens (or creates) the database at `path` and brings its schema up to
    /// date: `migrations[i]` runs once, when the stored version is `i`.
    pub fn open(path: &Path, migrations: &[&str]) -> Result<Self, DbError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Open {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        let mut conn = open_connection(path)?;
        migrate(&mut conn, migrations)?;
        let (jobs, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(DbStats::default());
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || writer(conn, rx, &writer_stats))
            .map_err(|e| DbError::Open {
                path: path.display().to_string(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Self {
            jobs,
            readers: Arc::new(Mutex::new(Vec::new())),
            path: Arc::new(path.to_owned()),
            stats,
        })
    }

    pub fn stats(&self) -> &DbStats {
        &self.stats
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
        let job: Job = Box::new(move |conn: &Connection| {
            let result = span.in_scope(|| in_savepoint(conn, f));
            Box::new(move |committed: Result<(), DbError>| {
                let out = match (committed, result) {
                    (Ok(()), r) => r,
                    (Err(_), Err(e)) => Err(e),
                    (Err(e), Ok(_)) => Err(E::from(e)),
                };
                let _ = tx.send(out);
            })
        });
        self.jobs
            .send(job)
            .map_err(|_| E::from(DbError::WriterGone))?;
        rx.await.map_err(|_| E::from(DbError::WriterGone))?
    }

    /// Runs `f` on a reader connection, off the async threads.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().map(|mut v| v.pop()).unwrap_or(None);
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&path)?,
            };
            let out = f(&conn);
            if let Ok(mut v) = readers.lock() {
                v.push(conn);
            }
            out
        })
        .await
        .map_err(|_| E::from(DbError::Panicked))?
    }
}

fn in_savepoint<T, E: From<DbError>>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    // Prepared once per connection, not parsed for every job.
    let run = |sql: &str| -> Result<(), DbError> {
        conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    run("SAVEPOINT job")?;
    let result = catch_unwind(AssertUnwindSafe(|| f(conn)))
        .unwrap_or_else(|_| Err(E::from(DbError::Panicked)));
    if result.is_err() {
        run("ROLLBACK TO job")?;
    }
    run("RELEASE job")?;
    result
}

fn writer(conn: Connection, mut rx: mpsc::UnboundedReceiver<Job>, stats: &DbStats) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // The jobs never ran: dropping them tells each caller the write
            // did not happen.
            tracing::error!(error = %e, "cannot begin a transaction");
            batch.clear();
            continue;
        }
        let completions: Vec<Completion> = batch.drain(..).map(|job| job(&conn)).collect();
        let committed = conn.execute_batch("COMMIT").map_err(DbError::from);
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        } else {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats.writes.fetch_add(n, Ordering::Relaxed);
        }
        for complete in completions {
            complete(committed.clone());
        }
    }
}

fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), DbError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let start = usize::try_from(version).unwrap_or(0);
    for (i, sql) in migrations.iter().enumerate().skip(start) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &[&str] = &["CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);"];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_a_failing_one_is_rolled_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db"), SCHEMA).unwrap();
        let mut tasks = Vec::new();
        for k in 0..500i64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.write(move |c| {
                    c.execute("INSERT INTO t VALUES (?1, 'x')", [k])?;
                    if k % 100 == 7 {
                        // Writes a row, then fails: its row must not stay.
                        c.execute("INSERT INTO t VALUES (?1, 'y')", [k + 10_000])?;
                        return Err(DbError::WriterGone);
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
        assert_eq!(failed, 5);
        let n: i64 = db
            .read(|c| {
                c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(n, 495);
        let commits = db.stats().commits.load(Ordering::Relaxed);
        assert!(commits <= 500, "{commits}");
    }

    #[tokio::test]
    async fn data_survives_reopening_and_migrations_run_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let db = Db::open(&path, SCHEMA).unwrap();
            db.write(|c| {
                c.execute("INSERT INTO t VALUES (1, 'a')", [])
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        }
        let db = Db::open(&path, SCHEMA).unwrap();
        let v: String = db
            .read(|c| {
                c.query_row("SELECT v FROM t WHERE k = 1", [], |r| r.get(0))
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(v, "a");
    }
}
