//! One SQL interface over the two stores: embedded SQLite, and PostgreSQL
//! for a provincial deployment whose gateway replicas share one database.
//!
//! The services write their SQL once, in the dialect both engines share;
//! on PostgreSQL each statement is translated once and kept prepared:
//!
//! - placeholders `?N` and `?` become `$N`;
//! - `INSERT OR IGNORE` becomes `INSERT ... ON CONFLICT DO NOTHING`;
//! - `min(a, b)` and `max(a, b)` (two or more arguments) become `LEAST` and
//!   `GREATEST`; `ifnull` becomes `coalesce`;
//! - in schemas, `INTEGER` is `BIGINT`, `BLOB` is `BYTEA`, `REAL` is
//!   `DOUBLE PRECISION`, `INTEGER PRIMARY KEY` is an identity column, and
//!   `WITHOUT ROWID` goes;
//! - the marker `/*FOR UPDATE*/` becomes `FOR UPDATE`: the rows read stay
//!   locked until commit, which another replica's write must wait for.
//!   SQLite has one writer and needs no lock.
//!
//! Every integer is bound and read as a 64-bit integer, so the SQL need not
//! say which width a value has.

use std::cell::RefCell;
use std::collections::HashMap;

use postgres::types::{IsNull, Type};

/// A SQL failure on either engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("query returned no rows")]
    NoRows,
    #[error("the connection is closed")]
    Closed,
    #[error("column {index}: {reason}")]
    Column { index: usize, reason: String },
    #[error("cannot start the postgres client's runtime: {0}")]
    Runtime(String),
}

/// The server's own words when it refused a statement.
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                m.push_str(&format!(": {d}"));
            }
            m
        }
        None => e.to_string(),
    }
}

impl Error {
    /// A write that lost a race with another writer of the same database (a
    /// unique key taken meanwhile, a deadlock, a serialization failure):
    /// trying it again may succeed.
    pub fn is_conflict(&self) -> bool {
        use postgres::error::SqlState;
        match self {
            Error::Postgres(e) => e.code().is_some_and(|c| {
                *c == SqlState::UNIQUE_VIOLATION
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE
            }),
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DatabaseBusy
            }
            _ => false,
        }
    }

    /// The connection itself is gone: a new one is needed.
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Postgres(e) if e.is_closed())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `Ok(None)` for a query that found no row.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A value as PostgreSQL is given it.
#[derive(Debug, Clone)]
pub enum PgValue {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

impl PgValue {
    fn ty(&self) -> Type {
        match self {
            PgValue::Int(_) => Type::INT8,
            PgValue::Real(_) => Type::FLOAT8,
            PgValue::Text(_) => Type::TEXT,
            PgValue::Blob(_) => Type::BYTEA,
        }
    }
}

impl postgres::types::ToSql for PgValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            PgValue::Int(v) => v.to_sql(ty, out),
            PgValue::Real(v) => v.to_sql(ty, out),
            PgValue::Text(v) => v.to_sql(ty, out),
            PgValue::Blob(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        [Type::INT8, Type::FLOAT8, Type::TEXT, Type::BYTEA].contains(ty)
    }

    postgres::types::to_sql_checked!();
}

/// A value that can be bound to a statement of either engine.
pub trait ToSql {
    fn sqlite(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>>;
    fn pg(&self) -> PgValue;
}

/// The NULL of a type (what `Option::None` binds on PostgreSQL).
pub trait Typed {
    fn pg_null() -> PgValue;
}

macro_rules! int_to_sql {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn sqlite(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                rusqlite::ToSql::to_sql(self)
            }
            fn pg(&self) -> PgValue {
                PgValue::Int(i64::try_from(*self).ok())
            }
        }
        impl Typed for $t {
            fn pg_null() -> PgValue {
                PgValue::Int(None)
            }
        }
    )*};
}
int_to_sql!(i64, i32, u32, u16, u8, i16, u64, usize);

impl ToSql for bool {
    fn sqlite(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        rusqlite::ToSql::to_sql(self)
    }
    fn pg(&self) -> PgValue {
        PgValue::Int(Some(i64::from(*self)))
    }
}

impl ToSql for f64 {
    fn sqlite(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        rusqlite::ToSql::to_sql(self)
    }
    fn pg(&self) -> PgValue {
        PgValue::Real(Some(*self))
    }
}

impl ToSql for str {
    fn sqlite(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        rusqlite::ToSql::to_sql(self)
    }
    fn pg(&self) -> PgValue {
        PgValue::Text(Some(self.to_owned()))
    }
}

impl ToSql for String {
    fn sqlite(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        rusqlite::ToSql::to_sql(self)
    }
    fn pg(&self) -> PgValue {
        PgValue::Text(Some(self.clone()))
    }
}

impl ToSql for [u8] {
    fn sqlite(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        rusqlite::ToSql::to_sql(self)
    }
    fn pg(&self) -> PgValue {
        PgValue::Blob(Some(self.to_vec()))
    }
}

impl ToSql for Vec<u8> {
    fn sqlite(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        rusqlite::ToSql::to_sql(self)
    }
    fn pg(&self) -> PgValue {
        PgValue::Blob(Some(self.clone()))
    }
}

macro_rules! typed {
    ($($t:ty => $v:ident),*) => {$(
        impl Typed for $t {
            fn pg_null() -> PgValue {
                PgValue::$v(None)
            }
        }
    )*};
}
typed!(bool => Int, f64 => Real, str => Text, String => Text, [u8] => Blob, Vec<u8> => Blob);

impl<T: Typed + ?Sized> Typed for &T {
    fn pg_null() -> PgValue {
        T::pg_null()
    }
}

impl<T: Typed> Typed for Option<T> {
    fn pg_null() -> PgValue {
        T::pg_null()
    }
}

impl<T: ToSql + ?Sized> ToSql for &T {
    fn sqlite(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        (**self).sqlite()
    }
    fn pg(&self) -> PgValue {
        (**self).pg()
    }
}

impl<T: ToSql + Typed> ToSql for Option<T> {
    fn sqlite(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Some(v) => v.sqlite(),
            None => Ok(rusqlite::types::ToSqlOutput::Owned(
                rusqlite::types::Value::Null,
            )),
        }
    }
    fn pg(&self) -> PgValue {
        match self {
            Some(v) => v.pg(),
            None => T::pg_null(),
        }
    }
}

/// Parameters of one statement.
pub trait Params {
    fn with<R>(self, f: impl FnOnce(&[&dyn ToSql]) -> R) -> R;
}

impl Params for &[&dyn ToSql] {
    fn with<R>(self, f: impl FnOnce(&[&dyn ToSql]) -> R) -> R {
        f(self)
    }
}

impl Params for () {
    fn with<R>(self, f: impl FnOnce(&[&dyn ToSql]) -> R) -> R {
        f(&[])
    }
}

impl<T: ToSql, const N: usize> Params for [T; N] {
    fn with<R>(self, f: impl FnOnce(&[&dyn ToSql]) -> R) -> R {
        let refs: [&dyn ToSql; N] = self.each_ref().map(|v| v as &dyn ToSql);
        f(&refs)
    }
}

impl<T: ToSql, const N: usize> Params for &[T; N] {
    fn with<R>(self, f: impl FnOnce(&[&dyn ToSql]) -> R) -> R {
        let refs: [&dyn ToSql; N] = self.each_ref().map(|v| v as &dyn ToSql);
        f(&refs)
    }
}

/// `params![a, b, c]`: parameters of mixed types.
#[macro_export]
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::sql::ToSql]
    };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::sql::ToSql),+] as &[&dyn $crate::sql::ToSql]
    };
}
pub use crate::params;

/// A value read back from PostgreSQL, whatever its column's type.
fn pg_read(row: &postgres::Row, i: usize) -> Result<PgValue> {
    let column = |reason: String| Error::Column { index: i, reason };
    let Some(col) = row.columns().get(i) else {
        return Err(column("no such column".into()));
    };
    let ty = col.type_().clone();
    let v = if ty == Type::INT8 {
        PgValue::Int(row.try_get::<_, Option<i64>>(i)?)
    } else if ty == Type::INT4 {
        PgValue::Int(row.try_get::<_, Option<i32>>(i)?.map(i64::from))
    } else if ty == Type::INT2 {
        PgValue::Int(row.try_get::<_, Option<i16>>(i)?.map(i64::from))
    } else if ty == Type::BOOL {
        PgValue::Int(row.try_get::<_, Option<bool>>(i)?.map(i64::from))
    } else if ty == Type::NUMERIC {
        match row.try_get::<_, Option<Numeric>>(i)? {
            Some(Numeric(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
                PgValue::Int(Some(n as i64))
            }
            Some(Numeric(n)) => PgValue::Real(Some(n)),
            None => PgValue::Int(None),
        }
    } else if ty == Type::FLOAT8 {
        PgValue::Real(row.try_get::<_, Option<f64>>(i)?)
    } else if ty == Type::FLOAT4 {
        PgValue::Real(row.try_get::<_, Option<f32>>(i)?.map(f64::from))
    } else if ty == Type::BYTEA {
        PgValue::Blob(row.try_get::<_, Option<Vec<u8>>>(i)?)
    } else if ty == Type::TEXT || ty == Type::VARCHAR || ty == Type::NAME || ty == Type::BPCHAR {
        PgValue::Text(row.try_get::<_, Option<String>>(i)?)
    } else {
        return Err(column(format!("unsupported type {ty}")));
    };
    Ok(v)
}

/// PostgreSQL's `numeric` (what `sum` of integers gives), read as a float.
struct Numeric(f64);

impl<'a> postgres::types::FromSql<'a> for Numeric {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word =
            |k: usize| -> std::result::Result<u16, Box<dyn std::error::Error + Sync + Send>> {
                match raw.get(k..k + 2) {
                    Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
                    None => Err("numeric: truncated".into()),
                }
            };
        let ndigits = word(0)? as usize;
        let weight = word(2)? as i16;
        let sign = word(4)?;
        if sign == 0xC000 {
            return Ok(Numeric(f64::NAN));
        }
        let mut v = 0.0f64;
        for d in 0..ndigits {
            let digit = f64::from(word(8 + 2 * d)?);
            v += digit * 10_000f64.powi(i32::from(weight) - d as i32);
        }
        Ok(Numeric(if sign == 0x4000 { -v } else { v }))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// A value that can be read from a column of either engine.
pub trait FromSql: rusqlite::types::FromSql + Sized {
    fn from_pg(v: PgValue) -> std::result::Result<Self, String>;
}

macro_rules! int_from_sql {
    ($($t:ty),*) => {$(
        impl FromSql for $t {
            fn from_pg(v: PgValue) -> std::result::Result<Self, String> {
                match v {
                    PgValue::Int(Some(n)) => <$t>::try_from(n).map_err(|e| e.to_string()),
                    PgValue::Real(Some(f)) if f.fract() == 0.0 => <$t>::try_from(f as i64).map_err(|e| e.to_string()),
                    other => Err(format!("{other:?} is not an integer")),
                }
            }
        }
    )*};
}
int_from_sql!(i64, i32, u32, u16, u8, i16, u64, usize);

impl FromSql for bool {
    fn from_pg(v: PgValue) -> std::result::Result<Self, String> {
        match v {
            PgValue::Int(Some(n)) => Ok(n != 0),
            other => Err(format!("{other:?} is not a boolean")),
        }
    }
}

impl FromSql for f64 {
    fn from_pg(v: PgValue) -> std::result::Result<Self, String> {
        match v {
            PgValue::Real(Some(f)) => Ok(f),
            PgValue::Int(Some(n)) => Ok(n as f64),
            other => Err(format!("{other:?} is not a number")),
        }
    }
}

impl FromSql for String {
    fn from_pg(v: PgValue) -> std::result::Result<Self, String> {
        match v {
            PgValue::Text(Some(s)) => Ok(s),
            other => Err(format!("{other:?} is not text")),
        }
    }
}

impl FromSql for Vec<u8> {
    fn from_pg(v: PgValue) -> std::result::Result<Self, String> {
        match v {
            PgValue::Blob(Some(b)) => Ok(b),
            other => Err(format!("{other:?} is not a blob")),
        }
    }
}

impl<T: FromSql> FromSql for Option<T> {
    fn from_pg(v: PgValue) -> std::result::Result<Self, String> {
        let null = matches!(
            v,
            PgValue::Int(None) | PgValue::Real(None) | PgValue::Text(None) | PgValue::Blob(None)
        );
        if null {
            Ok(None)
        } else {
            T::from_pg(v).map(Some)
        }
    }
}

/// A column index (by position).
pub trait RowIndex {
    fn index(&self) -> usize;
}

impl RowIndex for usize {
    fn index(&self) -> usize {
        *self
    }
}

/// One row of a result.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Pg(&'a postgres::Row),
}

impl Row<'_> {
    pub fn get<I: RowIndex, T: FromSql>(&self, idx: I) -> Result<T> {
        let i = idx.index();
        match self {
            Row::Sqlite(r) => Ok(r.get::<_, T>(i)?),
            Row::Pg(r) => {
                T::from_pg(pg_read(r, i)?).map_err(|reason| Error::Column { index: i, reason })
            }
        }
    }
}

/// A PostgreSQL session, its prepared statements, and the writes it has
/// not sent yet.
///
/// A write whose answer no one reads ([`Connection::write`]) is not sent at
/// once: it waits, and goes with the next statement that is read or
/// counted, or with [`Connection::flush`], all of them in one round trip
/// (pipelined: the client sends every request before it waits for the
/// first answer). A failed write is reported by that statement, or by the
/// flush. A step of the ledger makes a dozen writes and reads two or three
/// rows: it costs three or four round trips, not fifteen.
pub struct Pg {
    session: Option<Session>,
    /// Prepared statements by their SQL text, then their parameters' types.
    statements: HashMap<String, Vec<(Vec<Type>, postgres::Statement)>>,
    /// Writes made and not yet sent, in order.
    pending: Vec<(postgres::Statement, Vec<PgValue>)>,
}

/// The client and what drives it.
struct Session {
    /// Drives the client; it runs only while the session waits for an
    /// answer (a runtime of one thread, its own, as the synchronous client
    /// keeps one).
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    /// The task reading the server's answers (ends when the session does).
    connection: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Ends the session: the client says goodbye to the server, and the
    /// task reading its answers ends.
    fn close(self) {
        let Session {
            runtime,
            client,
            connection,
        } = self;
        drop(client);
        let _ = runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(2), connection).await
        });
    }
}

/// Writes waiting past this many are sent on their own.
const MAX_PENDING: usize = 512;

impl Pg {
    /// A new session with the server `config` names.
    pub fn connect(config: &tokio_postgres::Config) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Runtime(e.to_string()))?;
        let (client, connection) = runtime.block_on(config.connect(tokio_postgres::NoTls))?;
        let connection = runtime.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres session ended");
            }
        });
        Ok(Self {
            session: Some(Session {
                runtime,
                client,
                connection,
            }),
            statements: HashMap::new(),
            pending: Vec::new(),
        })
    }

    fn session(&self) -> Result<&Session> {
        self.session.as_ref().ok_or(Error::Closed)
    }

    fn statement(&mut self, sql: &str, values: &[PgValue]) -> Result<postgres::Statement> {
        let types: Vec<Type> = values.iter().map(PgValue::ty).collect();
        if let Some(s) = self
            .statements
            .get(sql)
            .and_then(|v| v.iter().find(|(t, _)| *t == types))
        {
            return Ok(s.1.clone());
        }
        let translated = translate(sql);
        let session = self.session()?;
        let s = session
            .runtime
            .block_on(session.client.prepare_typed(&translated, &types))?;
        self.statements
            .entry(sql.to_owned())
            .or_default()
            .push((types, s.clone()));
        Ok(s)
    }

    /// The statement of `sql` and the values bound to it.
    fn bind(
        &mut self,
        sql: &str,
        params: &[&dyn ToSql],
    ) -> Result<(postgres::Statement, Vec<PgValue>)> {
        let values: Vec<PgValue> = params.iter().map(|p| p.pg()).collect();
        Ok((self.statement(sql, &values)?, values))
    }

    /// Sends the pending writes and then what `then` sends, pipelined, and
    /// waits for every answer: the first failure is the result.
    fn after_pending<T>(
        &mut self,
        then: impl AsyncFnOnce(&tokio_postgres::Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let pending = std::mem::take(&mut self.pending);
        let Session {
            runtime, client, ..
        } = self.session.as_ref().ok_or(Error::Closed)?;
        runtime.block_on(async {
            let writes = futures::future::join_all(
                pending
                    .iter()
                    .map(|(s, v)| async move { client.execute(s, &bound(v)).await }),
            );
            let (written, answer) = futures::join!(writes, then(client));
            for w in written {
                w?;
            }
            Ok(answer?)
        })
    }

    fn run(&mut self, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<postgres::Row>> {
        let mut answers = self.run_many(&[(sql, params)])?;
        Ok(answers.pop().unwrap_or_default())
    }

    /// The pending writes and then every query of `queries`, pipelined:
    /// one round trip. The rows of each query, in order.
    fn run_many(&mut self, queries: &[(&str, &[&dyn ToSql])]) -> Result<Vec<Vec<postgres::Row>>> {
        let bound_queries = queries
            .iter()
            .map(|(sql, params)| self.bind(sql, params))
            .collect::<Result<Vec<_>>>()?;
        self.after_pending(async |c| {
            futures::future::try_join_all(
                bound_queries
                    .iter()
                    .map(|(s, v)| async move { c.query(s, &bound(v)).await }),
            )
            .await
        })
    }

    fn execute(&mut self, sql: &str, params: &[&dyn ToSql]) -> Result<usize> {
        let (stmt, values) = self.bind(sql, params)?;
        let n = self.after_pending(async |c| c.execute(&stmt, &bound(&values)).await)?;
        Ok(n as usize)
    }

    /// Queues a write, to be sent with the next statement that is answered.
    fn defer(&mut self, sql: &str, params: &[&dyn ToSql]) -> Result<()> {
        let statement = self.bind(sql, params)?;
        self.pending.push(statement);
        if self.pending.len() >= MAX_PENDING {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.after_pending(async |_| Ok(()))
    }

    fn batch_execute(&mut self, sql: &str) -> Result<()> {
        self.flush()?;
        let session = self.session()?;
        Ok(session
            .runtime
            .block_on(session.client.batch_execute(sql))?)
    }

    fn is_closed(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.client.is_closed())
    }
}

impl Drop for Pg {
    /// A runtime may not be waited on, nor dropped, on an async thread:
    /// there the session is closed on a thread of its own.
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new()
                .name("db-close".into())
                .spawn(move || session.close());
        } else {
            session.close();
        }
    }
}

/// The values as the client binds them.
fn bound(values: &[PgValue]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    values
        .iter()
        .map(|v| v as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

enum Inner {
    Sqlite(rusqlite::Connection),
    Pg(Box<RefCell<Pg>>),
}

/// A connection to either engine.
pub struct Connection {
    inner: Inner,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_postgres() {
            "Connection(postgres)"
        } else {
            "Connection(sqlite)"
        })
    }
}

fn sqlite_params<'p>(
    params: &'p [&'p dyn ToSql],
) -> rusqlite::Result<Vec<rusqlite::types::ToSqlOutput<'p>>> {
    params.iter().map(|p| p.sqlite()).collect()
}

impl Connection {
    pub fn sqlite(conn: rusqlite::Connection) -> Self {
        Self {
            inner: Inner::Sqlite(conn),
        }
    }

    pub fn postgres(session: Pg) -> Self {
        Self {
            inner: Inner::Pg(Box::new(RefCell::new(session))),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.inner, Inner::Pg(_))
    }

    /// Runs the reads of `f` in one snapshot, inside [`crate::Db::read`]:
    /// on PostgreSQL a read is one already; on SQLite, which reads one
    /// statement at a time, in a deferred transaction (its snapshot taken at
    /// the first read).
    pub fn snapshot<T, E: From<Error>>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, E>,
    ) -> Result<T, E> {
        if self.is_postgres() {
            return f(self);
        }
        self.execute_batch("BEGIN")?;
        let out = f(self);
        if self.execute_batch("COMMIT").is_err() {
            let _ = self.execute_batch("ROLLBACK");
        }
        out
    }

    /// The SQLite connection underneath, if that is the engine.
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.inner {
            Inner::Sqlite(c) => Some(c),
            Inner::Pg(_) => None,
        }
    }

    /// The PostgreSQL connection has been lost.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Inner::Sqlite(_) => false,
            Inner::Pg(pg) => pg.try_borrow().map(|p| p.is_closed()).unwrap_or(false),
        }
    }

    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
        match &self.inner {
            Inner::Sqlite(c) => params.with(|p| {
                let values = sqlite_params(p)?;
                Ok(c.prepare_cached(sql)?
                    .execute(rusqlite::params_from_iter(values.iter()))?)
            }),
            Inner::Pg(pg) => params.with(|p| pg.borrow_mut().execute(sql, p)),
        }
    }

    /// A write whose answer is not read (how many rows it changed, or a row
    /// it returns): on SQLite it runs now; on PostgreSQL it is sent with the
    /// next statement that is answered, or with [`Connection::flush`], and
    /// a failure is reported there (see [`Pg`]).
    pub fn write(&self, sql: &str, params: impl Params) -> Result<()> {
        match &self.inner {
            Inner::Sqlite(c) => params.with(|p| {
                let values = sqlite_params(p)?;
                c.prepare_cached(sql)?
                    .execute(rusqlite::params_from_iter(values.iter()))?;
                Ok(())
            }),
            Inner::Pg(pg) => params.with(|p| pg.borrow_mut().defer(sql, p)),
        }
    }

    /// Runs `queries` and hands each row to `f` with the index of its
    /// query: on PostgreSQL in one round trip with the writes not sent yet,
    /// for reads that do not depend on each other's answers.
    pub fn query_each(
        &self,
        queries: &[(&str, &[&dyn ToSql])],
        mut f: impl FnMut(usize, &Row<'_>) -> Result<()>,
    ) -> Result<()> {
        match &self.inner {
            Inner::Sqlite(_) => {
                for (i, (sql, params)) in queries.iter().enumerate() {
                    let mut stmt = self.prepare_cached(sql)?;
                    let mut rows = stmt.query(*params)?;
                    while let Some(r) = rows.next()? {
                        f(i, &r)?;
                    }
                }
                Ok(())
            }
            Inner::Pg(pg) => {
                let answers = pg.borrow_mut().run_many(queries)?;
                for (i, rows) in answers.iter().enumerate() {
                    for r in rows {
                        f(i, &Row::Pg(r))?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Sends the writes not sent yet, and reports the first that failed.
    pub fn flush(&self) -> Result<()> {
        match &self.inner {
            Inner::Sqlite(_) => Ok(()),
            Inner::Pg(pg) => pg.borrow_mut().flush(),
        }
    }

    /// Runs statements separated by `;`, with no parameters.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Pg(pg) => {
                let translated: Vec<String> =
                    split_statements(sql).iter().map(|s| translate(s)).collect();
                pg.borrow_mut().batch_execute(&translated.join(";\n"))
            }
        }
    }

    pub fn query_row<T, P: Params, F: FnOnce(&Row<'_>) -> Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    pub fn prepare_cached(&self, sql: &str) -> Result<Statement<'_>> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(Statement::Sqlite(c.prepare_cached(sql)?)),
            Inner::Pg(pg) => Ok(Statement::Pg {
                pg,
                sql: sql.to_owned(),
            }),
        }
    }

    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        self.prepare_cached(sql)
    }
}

/// A prepared statement.
pub enum Statement<'c> {
    Sqlite(rusqlite::CachedStatement<'c>),
    Pg { pg: &'c RefCell<Pg>, sql: String },
}

impl Statement<'_> {
    pub fn execute(&mut self, params: impl Params) -> Result<usize> {
        match self {
            Statement::Sqlite(s) => params.with(|p| {
                let values = sqlite_params(p)?;
                Ok(s.execute(rusqlite::params_from_iter(values.iter()))?)
            }),
            Statement::Pg { pg, sql } => params.with(|p| pg.borrow_mut().execute(sql, p)),
        }
    }

    pub fn query_row<T, P: Params, F: FnOnce(&Row<'_>) -> Result<T>>(
        &mut self,
        params: P,
        f: F,
    ) -> Result<T> {
        let mut rows = self.query(params)?;
        match rows.next()? {
            Some(r) => f(&r),
            None => Err(Error::NoRows),
        }
    }

    /// Every row, each through `f`.
    pub fn query_map<T, P: Params, F: FnMut(&Row<'_>) -> Result<T>>(
        &mut self,
        params: P,
        mut f: F,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let mut rows = self.query(params)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(f(&r));
        }
        Ok(out.into_iter())
    }

    pub fn exists(&mut self, params: impl Params) -> Result<bool> {
        Ok(self.query(params)?.next()?.is_some())
    }

    /// The rows one at a time (on SQLite read lazily).
    pub fn query(&mut self, params: impl Params) -> Result<Rows<'_>> {
        match self {
            Statement::Sqlite(s) => params.with(|p| {
                let values = sqlite_params(p)?;
                Ok(Rows::Sqlite(
                    s.query(rusqlite::params_from_iter(values.iter()))?,
                ))
            }),
            Statement::Pg { pg, sql } => {
                let rows = params.with(|p| pg.borrow_mut().run(sql, p))?;
                Ok(Rows::Pg {
                    rows: rows.into_iter(),
                    current: None,
                })
            }
        }
    }
}

/// Rows of a query.
pub enum Rows<'s> {
    Sqlite(rusqlite::Rows<'s>),
    Pg {
        rows: std::vec::IntoIter<postgres::Row>,
        current: Option<postgres::Row>,
    },
}

impl Rows<'_> {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Row<'_>>> {
        match self {
            Rows::Sqlite(rows) => Ok(rows.next()?.map(Row::Sqlite)),
            Rows::Pg { rows, current } => {
                *current = rows.next();
                Ok(current.as_ref().map(Row::Pg))
            }
        }
    }
}

/// The statements of a batch, split at the `;` outside quotes and comments.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\'' | '"' => {
                cur.push(ch);
                for c in chars.by_ref() {
                    cur.push(c);
                    if c == ch {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        cur.push('\n');
                        break;
                    }
                }
            }
            ';' => {
                if !cur.trim().is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                cur.clear();
            }
            _ => cur.push(ch),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// One statement in PostgreSQL's dialect (see the module's notes).
pub fn translate(sql: &str) -> String {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = String::with_capacity(sql.len() + 32);
    let mut i = 0;
    let mut highest = 0u32;
    let mut ignore = false;
    let mut words: Vec<String> = Vec::new();
    while i < chars.len() {
        let ch = chars[i];
        match ch {
            '\'' | '"' => {
                out.push(ch);
                i += 1;
                while i < chars.len() {
                    out.push(chars[i]);
                    i += 1;
                    if chars[i - 1] == ch {
                        break;
                    }
                }
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let start = i;
                i += 2;
                while i < chars.len() && !(chars[i] == '/' && chars[i - 1] == '*') {
                    i += 1;
                }
                i += 1;
                let comment: String = chars[start..i.min(chars.len())].iter().collect();
                if comment == "/*FOR UPDATE*/" {
                    out.push_str(" FOR UPDATE");
                }
            }
            '?' => {
                i += 1;
                let start = i;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let n = if i > start {
                    chars[start..i]
                        .iter()
                        .collect::<String>()
                        .parse()
                        .unwrap_or(0)
                } else {
                    highest + 1
                };
                highest = highest.max(n);
                out.push('$');
                out.push_str(&n.to_string());
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let upper = word.to_ascii_uppercase();
                let prev = |k: usize| {
                    words
                        .len()
                        .checked_sub(k)
                        .and_then(|j| words.get(j))
                        .map(String::as_str)
                };
                let next_open = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
                match upper.as_str() {
                    "OR" if prev(1) == Some("INSERT") => {
                        // `INSERT OR IGNORE`: the IGNORE is dropped next.
                        out.truncate(out.trim_end().len());
                    }
                    "IGNORE" if prev(1) == Some("OR") && prev(2) == Some("INSERT") => {
                        out.truncate(out.trim_end().len());
                        ignore = true;
                    }
                    "INTEGER" => out.push_str("BIGINT"),
                    "BLOB" => out.push_str("BYTEA"),
                    "REAL" => out.push_str("DOUBLE PRECISION"),
                    // `INTEGER PRIMARY KEY` numbers the rows it is not given.
                    "KEY" if prev(1) == Some("PRIMARY") && prev(2) == Some("INTEGER") => {
                        out.push_str("KEY GENERATED BY DEFAULT AS IDENTITY");
                    }
                    "AUTOINCREMENT" => out.truncate(out.trim_end().len()),
                    "ROWID" if prev(1) == Some("WITHOUT") => {
                        let keep = out.trim_end().len() - "WITHOUT".len();
                        out.truncate(keep);
                    }
                    "IFNULL" if next_open => out.push_str("coalesce"),
                    "MIN" | "MAX" if next_open && has_top_level_comma(&chars[i..]) => {
                        out.push_str(if upper == "MIN" { "LEAST" } else { "GREATEST" });
                    }
                    _ => out.push_str(&word),
                }
                words.push(upper);
            }
            _ => {
                out.push(ch);
                i += 1;
            }
        }
    }
    if ignore {
        let trimmed = out.trim_end().trim_end_matches(';').to_owned();
        // Before a RETURNING clause, if any.
        match trimmed.to_ascii_uppercase().rfind("RETURNING") {
            Some(at) => {
                let (head, tail) = trimmed.split_at(at);
                return format!("{head} ON CONFLICT DO NOTHING {tail}");
            }
            None => return format!("{trimmed} ON CONFLICT DO NOTHING"),
        }
    }
    out.truncate(out.trim_end().len());
    out
}

/// Whether the parenthesised list starting at `rest` (after optional
/// whitespace) has more than one argument.
fn has_top_level_comma(rest: &[char]) -> bool {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for &c in rest {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return false;
                }
            }
            ',' if depth == 1 => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_the_shared_dialect() {
        assert_eq!(
            translate("SELECT max(a, ?2), max(b) FROM t WHERE x = ?1 AND y = ?"),
            "SELECT GREATEST(a, $2), max(b) FROM t WHERE x = $1 AND y = $3"
        );
        assert_eq!(
            translate("INSERT OR IGNORE INTO d (a, b) VALUES (?1, ?2)"),
            "INSERT INTO d (a, b) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            translate(
                "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, b BLOB, '?' TEXT) WITHOUT ROWID"
            ),
            "CREATE TABLE t (id BIGINT PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, b BYTEA, '?' TEXT)"
        );
        assert_eq!(
            translate("SELECT seq FROM t WHERE id = ?1 /*FOR UPDATE*/"),
            "SELECT seq FROM t WHERE id = $1  FOR UPDATE"
        );
        assert_eq!(split_statements("A; -- x;\nB 'a;b';").len(), 2);
    }
}
