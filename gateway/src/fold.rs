//! The counters a commit moves, folded together before they are written.
//!
//! The writer commits many callers' writes in one transaction; each adds
//! its counts here instead of upserting them, and [`Fold::flush`] writes
//! the sum in the same transaction, just before COMMIT: one row per counter
//! key per commit (not per ticket), in multi-row statements. The flow log's
//! entries are gathered the same way and inserted in the order they were
//! made.

use std::collections::HashMap;

use hotline_durable::sql::{Connection, ToSql};
use hotline_proto::pb::{FlowEvent, TicketStatus, flow_event::Change};
use hotline_proto::state::status_key;
use hotline_proto::time;
use prost::Message;

use crate::error::GatewayError;
use crate::windows::{Duration, Metric, Window};

/// `(grain, period, city, category, metric, detail)`.
type CountKey = (i64, i64, String, String, i64, String);
/// `(grain, period, city, category, duration, bucket)`.
type HistKey = (i64, i64, String, String, i64, i64);

/// What a commit adds to the statistics and the flow log.
#[derive(Debug, Default)]
pub struct Fold {
    counts: HashMap<CountKey, i64>,
    hist: HashMap<HistKey, i64>,
    /// `(city, direction, status)`.
    status: HashMap<(String, &'static str, &'static str), i64>,
    /// `(city, category)`.
    overdue: HashMap<(String, String), i64>,
    /// `(month, city, root)`.
    matters: HashMap<(i64, String, String), i64>,
    flow: Vec<(i64, Vec<u8>)>,
}

/// Rows per multi-row statement: a few fixed sizes, so that the statements
/// stay prepared (a remainder is written in the next smaller size).
const CHUNKS: [usize; 5] = [64, 16, 4, 2, 1];

impl Fold {
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
            && self.hist.is_empty()
            && self.status.is_empty()
            && self.overdue.is_empty()
            && self.matters.is_empty()
            && self.flow.is_empty()
    }

    /// Adds `n` to a count in the four windows of the instant `at_ms`.
    pub fn count(
        &mut self,
        at_ms: i64,
        city: &str,
        category: &str,
        metric: Metric,
        detail: &str,
        n: i64,
    ) {
        for w in Window::all_at(at_ms) {
            let key = (
                w.grain as i64,
                w.period,
                city.to_owned(),
                category.to_owned(),
                metric as i64,
                detail.to_owned(),
            );
            *self.counts.entry(key).or_default() += n;
        }
    }

    /// Records one duration in the four windows of the instant `at_ms`.
    pub fn observe(&mut self, at_ms: i64, city: &str, category: &str, what: Duration, ms: i64) {
        let bucket = crate::windows::bucket_of(ms);
        for w in Window::all_at(at_ms) {
            let key = (
                w.grain as i64,
                w.period,
                city.to_owned(),
                category.to_owned(),
                what as i64,
                bucket,
            );
            *self.hist.entry(key).or_default() += 1;
        }
    }

    /// Moves one ticket of `city`'s `direction` from status `from` to `to`.
    pub fn status(
        &mut self,
        city: &str,
        direction: &'static str,
        from: Option<TicketStatus>,
        to: Option<TicketStatus>,
    ) {
        if from == to {
            return;
        }
        if let Some(from) = from {
            *self
                .status
                .entry((city.to_owned(), direction, status_key(from)))
                .or_default() -= 1;
        }
        if let Some(to) = to {
            *self
                .status
                .entry((city.to_owned(), direction, status_key(to)))
                .or_default() += 1;
        }
    }

    /// Adds `n` to the open overdue tickets of `city` in `category`.
    pub fn overdue(&mut self, city: &str, category: &str, n: i64) {
        *self
            .overdue
            .entry((city.to_owned(), category.to_owned()))
            .or_default() += n;
    }

    /// Counts a report of the matter `root` in `month`, for `city`.
    pub fn matter(&mut self, month: i64, city: &str, root: &str) {
        *self
            .matters
            .entry((month, city.to_owned(), root.to_owned()))
            .or_default() += 1;
    }

    /// Appends an entry to the flow log.
    pub fn flow(&mut self, at_ms: i64, change: Change) {
        let body = FlowEvent {
            cursor: 0,
            time: Some(time::from_unix_ms(at_ms)),
            change: Some(change),
        }
        .encode_to_vec();
        self.flow.push((at_ms, body));
    }

    /// Adds everything of `other`.
    pub fn absorb(&mut self, other: Fold) {
        for (k, n) in other.counts {
            *self.counts.entry(k).or_default() += n;
        }
        for (k, n) in other.hist {
            *self.hist.entry(k).or_default() += n;
        }
        for (k, n) in other.status {
            *self.status.entry(k).or_default() += n;
        }
        for (k, n) in other.overdue {
            *self.overdue.entry(k).or_default() += n;
        }
        for (k, n) in other.matters {
            *self.matters.entry(k).or_default() += n;
        }
        self.flow.extend(other.flow);
    }

    /// Writes what was folded, in the caller's transaction, and empties it.
    pub fn flush(&mut self, c: &Connection) -> Result<(), GatewayError> {
        let counts: Vec<_> = self.counts.drain().filter(|(_, n)| *n != 0).collect();
        upsert(
            c,
            "window_counts (grain, period, city, category, metric, detail, n)",
            "(grain, period, city, category, metric, detail) DO UPDATE SET n = window_counts.n + excluded.n",
            7,
            &counts,
            |((g, p, city, cat, m, d), n)| vec![g, p, city, cat, m, d, n],
        )?;
        let hist: Vec<_> = self.hist.drain().filter(|(_, n)| *n != 0).collect();
        upsert(
            c,
            "window_hist (grain, period, city, category, metric, bucket, n)",
            "(grain, period, city, category, metric, bucket) DO UPDATE SET n = window_hist.n + excluded.n",
            7,
            &hist,
            |((g, p, city, cat, m, b), n)| vec![g, p, city, cat, m, b, n],
        )?;
        let status: Vec<_> = self.status.drain().filter(|(_, n)| *n != 0).collect();
        upsert(
            c,
            "city_status (city, direction, status, n)",
            "(city, direction, status) DO UPDATE SET n = city_status.n + excluded.n",
            4,
            &status,
            |((city, dir, st), n)| vec![city, dir, st, n],
        )?;
        let overdue: Vec<_> = self.overdue.drain().filter(|(_, n)| *n != 0).collect();
        upsert(
            c,
            "overdue_open (city, category, n)",
            "(city, category) DO UPDATE SET n = overdue_open.n + excluded.n",
            3,
            &overdue,
            |((city, cat), n)| vec![city, cat, n],
        )?;
        let matters: Vec<_> = self.matters.drain().collect();
        upsert(
            c,
            "matter_months (month, city, root, n)",
            "(month, city, root) DO UPDATE SET n = matter_months.n + excluded.n",
            4,
            &matters,
            |((month, city, root), n)| vec![month, city, root, n],
        )?;
        let flow = std::mem::take(&mut self.flow);
        insert(c, "flow_log (at_ms, body)", 2, &flow, |(at, body)| {
            vec![at, body]
        })?;
        Ok(())
    }

    /// Forgets what was folded (the commit did not happen).
    pub fn clear(&mut self) {
        *self = Fold::default();
    }
}

/// `INSERT INTO {table} VALUES (…), (…) ON CONFLICT {conflict}` over `rows`,
/// `width` values a row, in chunks of [`CHUNKS`].
fn upsert<R>(
    c: &Connection,
    table: &'static str,
    conflict: &'static str,
    width: usize,
    rows: &[R],
    values: impl Fn(&R) -> Vec<&dyn ToSql>,
) -> Result<(), GatewayError> {
    write_rows(c, table, conflict, width, rows, values)
}

fn insert<R>(
    c: &Connection,
    table: &'static str,
    width: usize,
    rows: &[R],
    values: impl Fn(&R) -> Vec<&dyn ToSql>,
) -> Result<(), GatewayError> {
    write_rows(c, table, "", width, rows, values)
}

thread_local! {
    /// The statements' texts, made once per table and size (the writer is
    /// one thread).
    static TEXTS: std::cell::RefCell<HashMap<(&'static str, usize), std::rc::Rc<str>>> =
        std::cell::RefCell::new(HashMap::new());
}

fn write_rows<R>(
    c: &Connection,
    table: &'static str,
    conflict: &'static str,
    width: usize,
    rows: &[R],
    values: impl Fn(&R) -> Vec<&dyn ToSql>,
) -> Result<(), GatewayError> {
    let mut rest = rows;
    while !rest.is_empty() {
        let size = CHUNKS
            .iter()
            .copied()
            .find(|s| *s <= rest.len())
            .unwrap_or(1);
        let (chunk, after) = rest.split_at(size);
        let sql = TEXTS.with(|t| {
            t.borrow_mut()
                .entry((table, size))
                .or_insert_with(|| {
                    let tail = if conflict.is_empty() {
                        String::new()
                    } else {
                        format!(" ON CONFLICT {conflict}")
                    };
                    statement(table, &tail, width, size).into()
                })
                .clone()
        });
        let params: Vec<&dyn ToSql> = chunk.iter().flat_map(&values).collect();
        c.write(&sql, params.as_slice())?;
        rest = after;
    }
    Ok(())
}

/// The text of a multi-row insert of `rows` rows of `width` values.
fn statement(table: &str, tail: &str, width: usize, rows: usize) -> String {
    let mut sql = format!("INSERT INTO {table} VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for v in 0..width {
            if v > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("?{}", r * width + v + 1));
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

/// An in-memory database with the tables a fold writes, for tests.
#[cfg(test)]
pub(crate) fn test_db() -> Connection {
    #![allow(clippy::unwrap_used)]
    let c = Connection::sqlite(rusqlite::Connection::open_in_memory().unwrap());
    c.execute_batch(crate::windows::SCHEMA).unwrap();
    c.execute_batch(
        "CREATE TABLE city_status (city TEXT, direction TEXT, status TEXT, n INTEGER,
           PRIMARY KEY (city, direction, status));
         CREATE TABLE overdue_open (city TEXT, category TEXT, n INTEGER, PRIMARY KEY (city, category));
         CREATE TABLE matter_months (month INTEGER, city TEXT, root TEXT, n INTEGER,
           PRIMARY KEY (month, city, root));
         CREATE TABLE flow_log (seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, body BLOB NOT NULL);",
    )
    .unwrap();
    c
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn db() -> Connection {
        test_db()
    }

    #[test]
    fn a_commit_writes_one_row_per_key_and_adds_to_what_is_there() {
        let c = db();
        let ms = 1_795_624_200_000;
        let mut f = Fold::default();
        for _ in 0..100 {
            f.count(ms, "luzhou", "education", Metric::Sent, "yibin", 1);
        }
        f.count(ms, "luzhou", "education", Metric::Sent, "zigong", 1);
        f.status("yibin", "received", None, Some(TicketStatus::Pending));
        f.status(
            "yibin",
            "received",
            Some(TicketStatus::Pending),
            Some(TicketStatus::Dispatched),
        );
        // 101 counts in 2 keys of 4 windows each.
        assert_eq!(f.counts.len(), 8);
        f.flush(&c).unwrap();
        assert!(f.is_empty());
        let mut g = Fold::default();
        g.count(ms, "luzhou", "education", Metric::Sent, "yibin", 1);
        g.flush(&c).unwrap();
        let all = crate::windows::read(&c, Window::ALL, None).unwrap();
        let cell = &all[&("luzhou".to_owned(), "education".to_owned())];
        assert_eq!(cell.get(Metric::Sent), 102);
        let n: i64 = c
            .query_row(
                "SELECT n FROM city_status WHERE city = 'yibin' AND status = ?1",
                [status_key(TicketStatus::Dispatched)],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
        // Pending came and went: a zero is not written.
        let rows: i64 = c
            .query_row("SELECT count(*) FROM city_status", (), |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }

    #[test]
    fn chunks_cover_any_number_of_rows() {
        let c = db();
        let mut f = Fold::default();
        for i in 0..87 {
            f.overdue(&format!("city{i}"), "x", 1);
        }
        f.flush(&c).unwrap();
        let n: i64 = c
            .query_row("SELECT sum(n) FROM overdue_open", (), |r| r.get(0))
            .unwrap();
        assert_eq!(n, 87);
        assert_eq!(
            statement("t (a, b)", "", 2, 2),
            "INSERT INTO t (a, b) VALUES (?1, ?2), (?3, ?4)"
        );
    }
}
