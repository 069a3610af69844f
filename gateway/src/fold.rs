//! The counters a commit moves, folded together before they are written.
//!
//! The writer commits many callers' writes in one transaction; each adds
//! its counts here instead of upserting them, and [`Fold::flush`] writes
//! the sum in the same transaction, just before COMMIT. The flow log's
//! entries are gathered the same way and inserted in the order they were
//! made.
//!
//! The counters go first to the journal: one row per commit
//! (`fold_journal`, the commit's sums encoded), in the same transaction as
//! the tickets that moved them, so nothing is lost on a crash. Every
//! [`JOURNAL_ROWS`] commits, or when a reader asks, a commit folds the
//! journal's rows into the counter tables (a checkpoint: one upsert per
//! key for all of them, in multi-row statements) and deletes them. Readers
//! read the tables and the journal in one statement ([`Fold::decode`]), so
//! a figure is exact whether or not its counts are checkpointed yet.

use std::collections::HashMap;

use hotline_durable::sql::{Connection, OptionalExtension, ToSql, params};
use hotline_proto::pb::{FlowEvent, TicketStatus, flow_event::Change};
use hotline_proto::state::status_key;
use hotline_proto::time;
use prost::Message;

use crate::error::GatewayError;
use crate::windows::{Buckets, Duration, Metric, Window};

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
    status: HashMap<(String, String, String), i64>,
    /// `(city, category)`.
    overdue: HashMap<(String, String), i64>,
    /// `(month, city, root)`.
    matters: HashMap<(i64, String, String), i64>,
    flow: Vec<(i64, Vec<u8>)>,
}

/// Commits journaled before one checkpoints them: what a reader decodes
/// besides the tables, at most.
pub const JOURNAL_ROWS: u32 = 64;

/// Counter keys above which a commit writes its counters to the tables at
/// once instead of journaling them (a bulk load, a sweep of many tickets).
const JOURNAL_KEYS: usize = 512;

/// How a commit writes its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Nothing to write.
    Nothing,
    /// One row added to the journal.
    Journaled,
    /// Written to the tables (with the journal's rows when checkpointing).
    Applied,
}

/// A commit's counters as the journal keeps them.
#[derive(Clone, PartialEq, prost::Message)]
struct Journal {
    #[prost(message, repeated, tag = "1")]
    counts: Vec<CountRow>,
    #[prost(message, repeated, tag = "2")]
    hist: Vec<HistRow>,
    #[prost(message, repeated, tag = "3")]
    status: Vec<StatusRow>,
    #[prost(message, repeated, tag = "4")]
    overdue: Vec<OverdueRow>,
    #[prost(message, repeated, tag = "5")]
    matters: Vec<MatterRow>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CountRow {
    #[prost(int64, tag = "1")]
    grain: i64,
    #[prost(int64, tag = "2")]
    period: i64,
    #[prost(string, tag = "3")]
    city: String,
    #[prost(string, tag = "4")]
    category: String,
    #[prost(int64, tag = "5")]
    metric: i64,
    #[prost(string, tag = "6")]
    detail: String,
    #[prost(int64, tag = "7")]
    n: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HistRow {
    #[prost(int64, tag = "1")]
    grain: i64,
    #[prost(int64, tag = "2")]
    period: i64,
    #[prost(string, tag = "3")]
    city: String,
    #[prost(string, tag = "4")]
    category: String,
    #[prost(int64, tag = "5")]
    what: i64,
    #[prost(int64, tag = "6")]
    bucket: i64,
    #[prost(int64, tag = "7")]
    n: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusRow {
    #[prost(string, tag = "1")]
    city: String,
    #[prost(string, tag = "2")]
    direction: String,
    #[prost(string, tag = "3")]
    status: String,
    #[prost(int64, tag = "4")]
    n: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OverdueRow {
    #[prost(string, tag = "1")]
    city: String,
    #[prost(string, tag = "2")]
    category: String,
    #[prost(int64, tag = "3")]
    n: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MatterRow {
    #[prost(int64, tag = "1")]
    month: i64,
    #[prost(string, tag = "2")]
    city: String,
    #[prost(string, tag = "3")]
    root: String,
    #[prost(int64, tag = "4")]
    n: i64,
}

/// This process's rows of the journal, as its writer remembers them: so
/// that a checkpoint writes their sum without reading them back.
#[derive(Debug)]
pub struct Mine {
    /// The process's key in the journal, drawn at random when it starts.
    writer: i64,
    /// The number of its next row.
    next: i64,
    /// Its rows not checkpointed yet, and their sum.
    rows: u32,
    sum: Fold,
    /// Whether `sum` is the sum of those rows (not when a checkpoint that
    /// took it did not commit).
    exact: bool,
    /// What the commit under way journals, and whether it checkpoints.
    staged: Option<Fold>,
    took: bool,
}

impl Default for Mine {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // std's hasher keys are drawn from the system's randomness.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        Self {
            writer: (h.finish() >> 1) as i64,
            next: 0,
            rows: 0,
            sum: Fold::default(),
            exact: true,
            staged: None,
            took: false,
        }
    }
}

impl Mine {
    /// The commit under way committed, or not.
    pub fn committed(&mut self, ok: bool) {
        if ok {
            if self.took {
                self.rows = 0;
                self.sum = Fold::default();
                self.exact = true;
            }
            if let Some(f) = self.staged.take() {
                self.sum.absorb_counters(f);
                self.rows += 1;
            }
        } else if self.took {
            // The sum went with the checkpoint that failed: the next one
            // reads the rows back.
            self.exact = false;
        }
        self.staged = None;
        self.took = false;
    }

    /// Rows this process journaled and no checkpoint has taken yet.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// A writer whose next commit checkpoints (remembering none of the
    /// journal's rows), for tests.
    #[cfg(test)]
    pub(crate) fn due() -> Self {
        Self {
            rows: JOURNAL_ROWS,
            exact: false,
            ..Self::default()
        }
    }
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
                .entry((
                    city.to_owned(),
                    direction.to_owned(),
                    status_key(from).to_owned(),
                ))
                .or_default() -= 1;
        }
        if let Some(to) = to {
            *self
                .status
                .entry((
                    city.to_owned(),
                    direction.to_owned(),
                    status_key(to).to_owned(),
                ))
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
    pub fn absorb(&mut self, mut other: Fold) {
        self.flow.append(&mut other.flow);
        self.absorb_counters(other);
    }

    /// Adds the counters of `other`.
    pub fn absorb_counters(&mut self, other: Fold) {
        if self.keys() == 0 {
            // Nothing to add to: take its maps as they are.
            let flow = std::mem::take(&mut self.flow);
            *self = other;
            self.flow = flow;
            return;
        }
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
    }

    /// How many counter keys it holds.
    fn keys(&self) -> usize {
        self.counts.len()
            + self.hist.len()
            + self.status.len()
            + self.overdue.len()
            + self.matters.len()
    }

    /// Writes what was folded, in the caller's transaction, and empties it:
    /// the flow log's entries, and the counters to the journal as this
    /// process's row ([`Mine`]), or to their tables when they are many, or
    /// with the whole journal when a checkpoint is due.
    pub fn flush(&mut self, c: &Connection, mine: &mut Mine) -> Result<Flushed, GatewayError> {
        let flow = std::mem::take(&mut self.flow);
        insert(c, "flow_log (at_ms, body)", 2, &flow, |(at, body)| {
            vec![at, body]
        })?;
        if mine.rows >= JOURNAL_ROWS {
            let rows = take_journal(c)?;
            let own = rows.iter().filter(|(w, _)| *w == mine.writer).count();
            // This process's rows are summed in memory, unless another
            // replica took some of them or a checkpoint that failed took
            // the sum.
            let remembered = mine.exact && own == mine.rows as usize;
            if remembered {
                self.absorb_counters(std::mem::take(&mut mine.sum));
            }
            for (writer, body) in rows {
                if !(remembered && writer == mine.writer) {
                    self.absorb_counters(Fold::decode(&body)?);
                }
            }
            mine.took = true;
        } else if self.keys() == 0 {
            return Ok(Flushed::Nothing);
        } else if self.keys() <= JOURNAL_KEYS {
            c.write(
                "INSERT INTO fold_journal (writer, n, body) VALUES (?1, ?2, ?3)",
                params![mine.writer, mine.next, self.encode()],
            )?;
            mine.next += 1;
            mine.staged = Some(std::mem::take(self));
            return Ok(Flushed::Journaled);
        }
        self.write_counters(c)?;
        Ok(Flushed::Applied)
    }

    /// The counters, as a row of the journal.
    fn encode(&self) -> Vec<u8> {
        let mut j = Journal::default();
        for ((grain, period, city, category, metric, detail), n) in &self.counts {
            j.counts.push(CountRow {
                grain: *grain,
                period: *period,
                city: city.clone(),
                category: category.clone(),
                metric: *metric,
                detail: detail.clone(),
                n: *n,
            });
        }
        for ((grain, period, city, category, what, bucket), n) in &self.hist {
            j.hist.push(HistRow {
                grain: *grain,
                period: *period,
                city: city.clone(),
                category: category.clone(),
                what: *what,
                bucket: *bucket,
                n: *n,
            });
        }
        for ((city, direction, status), n) in &self.status {
            j.status.push(StatusRow {
                city: city.clone(),
                direction: direction.clone(),
                status: status.clone(),
                n: *n,
            });
        }
        for ((city, category), n) in &self.overdue {
            j.overdue.push(OverdueRow {
                city: city.clone(),
                category: category.clone(),
                n: *n,
            });
        }
        for ((month, city, root), n) in &self.matters {
            j.matters.push(MatterRow {
                month: *month,
                city: city.clone(),
                root: root.clone(),
                n: *n,
            });
        }
        j.encode_to_vec()
    }

    /// A row of the journal, read back.
    pub fn decode(body: &[u8]) -> Result<Fold, GatewayError> {
        let j = Journal::decode(body).map_err(|e| {
            GatewayError::Corrupt("fold_journal".into(), format!("a row does not decode: {e}"))
        })?;
        let mut f = Fold::default();
        for r in j.counts {
            *f.counts
                .entry((r.grain, r.period, r.city, r.category, r.metric, r.detail))
                .or_default() += r.n;
        }
        for r in j.hist {
            *f.hist
                .entry((r.grain, r.period, r.city, r.category, r.what, r.bucket))
                .or_default() += r.n;
        }
        for r in j.status {
            *f.status.entry((r.city, r.direction, r.status)).or_default() += r.n;
        }
        for r in j.overdue {
            *f.overdue.entry((r.city, r.category)).or_default() += r.n;
        }
        for r in j.matters {
            *f.matters.entry((r.month, r.city, r.root)).or_default() += r.n;
        }
        Ok(f)
    }

    /// The counts of the window `(grain, period)`:
    /// `(city, category, metric, detail, n)`.
    pub fn counts_in(
        &self,
        grain: i64,
        period: i64,
    ) -> impl Iterator<Item = (&str, &str, i64, &str, i64)> {
        self.counts
            .iter()
            .filter(move |((g, p, ..), _)| *g == grain && *p == period)
            .map(|((_, _, city, cat, m, d), n)| (city.as_str(), cat.as_str(), *m, d.as_str(), *n))
    }

    /// The durations of the window `(grain, period)`:
    /// `(city, category, what, bucket, n)`.
    pub fn hist_in(
        &self,
        grain: i64,
        period: i64,
    ) -> impl Iterator<Item = (&str, &str, i64, i64, i64)> {
        self.hist
            .iter()
            .filter(move |((g, p, ..), _)| *g == grain && *p == period)
            .map(|((_, _, city, cat, w, b), n)| (city.as_str(), cat.as_str(), *w, *b, *n))
    }

    /// Adds the durations to their packed histograms: a read and a write
    /// of each histogram moved (made once per checkpoint, not per ticket).
    /// On a shared store the histograms are locked for the rest of the
    /// transaction first, so that two replicas' checkpoints do not write
    /// over each other's.
    fn write_hist(&mut self, c: &Connection) -> Result<(), GatewayError> {
        let mut packed: std::collections::BTreeMap<(i64, i64, String, String, i64), Buckets> =
            std::collections::BTreeMap::new();
        for ((g, p, city, cat, m, b), n) in self.hist.drain() {
            if n != 0 {
                packed.entry((g, p, city, cat, m)).or_default().add(b, n);
            }
        }
        if packed.is_empty() {
            return Ok(());
        }
        if c.is_postgres() {
            c.write(
                "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '/window_hist_packed'))",
                (),
            )?;
        }
        for ((g, p, city, cat, m), add) in packed {
            let mut buckets = c
                .prepare_cached(
                    "SELECT buckets FROM window_hist_packed
                     WHERE grain = ?1 AND period = ?2 AND city = ?3 AND category = ?4 AND metric = ?5",
                )?
                .query_row(params![g, p, city, cat, m], |r| r.get::<_, Vec<u8>>(0))
                .optional()?
                .map(|b| Buckets::decode(&b))
                .transpose()?
                .unwrap_or_default();
            buckets.absorb(&add);
            c.write(
                "INSERT INTO window_hist_packed (grain, period, city, category, metric, buckets)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (grain, period, city, category, metric) DO UPDATE SET buckets = excluded.buckets",
                params![g, p, city, cat, m, buckets.encode()],
            )?;
        }
        Ok(())
    }

    /// Writes the counters to their tables, one row per key.
    fn write_counters(&mut self, c: &Connection) -> Result<(), GatewayError> {
        let counts: Vec<_> = self.counts.drain().filter(|(_, n)| *n != 0).collect();
        upsert(
            c,
            "window_counts (grain, period, city, category, metric, detail, n)",
            "(grain, period, city, category, metric, detail) DO UPDATE SET n = window_counts.n + excluded.n",
            7,
            &counts,
            |((g, p, city, cat, m, d), n)| vec![g, p, city, cat, m, d, n],
        )?;
        self.write_hist(c)?;
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
        Ok(())
    }

    /// Forgets what was folded (the commit did not happen).
    pub fn clear(&mut self) {
        *self = Fold::default();
    }
}

/// Every ticket count by status, `(city, direction, status)` → n: the
/// table and the journal, in one statement.
pub fn statuses(c: &Connection) -> Result<HashMap<(String, String, String), i64>, GatewayError> {
    let mut stmt = c.prepare_cached(
        "SELECT city, direction, status, n, NULL FROM city_status WHERE n != 0
         UNION ALL SELECT NULL, NULL, NULL, NULL, body FROM fold_journal",
    )?;
    let rows = stmt.query_map((), |r| {
        Ok((
            r.get::<_, Option<String>>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<Vec<u8>>>(4)?,
        ))
    })?;
    let mut out = Fold::default();
    for row in rows {
        match row? {
            (_, _, _, _, Some(body)) => out.absorb_counters(Fold::decode(&body)?),
            (Some(city), Some(d), Some(st), Some(n), None) => {
                *out.status.entry((city, d, st)).or_default() += n
            }
            _ => {}
        }
    }
    out.status.retain(|_, n| *n != 0);
    Ok(out.status)
}

/// The open tickets past their deadline, `(city, category)` → n (only
/// those above zero): the table and the journal, in one statement.
pub fn overdue_open(c: &Connection) -> Result<HashMap<(String, String), i64>, GatewayError> {
    let mut stmt = c.prepare_cached(
        "SELECT city, category, n, NULL FROM overdue_open WHERE n != 0
         UNION ALL SELECT NULL, NULL, NULL, body FROM fold_journal",
    )?;
    let rows = stmt.query_map((), |r| {
        Ok((
            r.get::<_, Option<String>>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, Option<Vec<u8>>>(3)?,
        ))
    })?;
    let mut out = Fold::default();
    for row in rows {
        match row? {
            (_, _, _, Some(body)) => out.absorb_counters(Fold::decode(&body)?),
            (Some(city), Some(cat), Some(n), None) => {
                *out.overdue.entry((city, cat)).or_default() += n
            }
            _ => {}
        }
    }
    out.overdue.retain(|_, n| *n > 0);
    Ok(out.overdue)
}

/// The reports journaled but not checkpointed per matter of `month` in
/// `city`: root → n.
pub fn matters_journaled(
    c: &Connection,
    month: i64,
    city: &str,
) -> Result<HashMap<String, i64>, GatewayError> {
    let bodies: Vec<Vec<u8>> = c
        .prepare_cached("SELECT body FROM fold_journal")?
        .query_map((), |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = HashMap::new();
    for b in bodies {
        for ((m, c, root), n) in Fold::decode(&b)?.matters {
            if m == month && c == city {
                *out.entry(root).or_default() += n;
            }
        }
    }
    Ok(out)
}

/// Takes every row of the journal out, with its writer (each exactly once,
/// also with another replica checkpointing at the same time: a row another
/// deletes first is not returned here).
fn take_journal(c: &Connection) -> Result<Vec<(i64, Vec<u8>)>, GatewayError> {
    Ok(
        c.prepare_cached("DELETE FROM fold_journal RETURNING writer, body")?
            .query_map((), |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?,
    )
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
    for m in TEST_SCHEMA {
        c.execute_batch(m).unwrap();
    }
    c
}

/// The tables a fold writes, for tests.
#[cfg(test)]
pub(crate) const TEST_SCHEMA: [&str; 5] = [
    crate::schema::WINDOWS,
    "CREATE TABLE city_status (city TEXT NOT NULL, direction TEXT NOT NULL, status TEXT NOT NULL,
       n INTEGER NOT NULL, PRIMARY KEY (city, direction, status));
     CREATE TABLE overdue_open (city TEXT NOT NULL, category TEXT NOT NULL, n INTEGER NOT NULL,
       PRIMARY KEY (city, category));
     CREATE TABLE matter_months (month INTEGER NOT NULL, city TEXT NOT NULL, root TEXT NOT NULL,
       n INTEGER NOT NULL, PRIMARY KEY (month, city, root));",
    crate::schema::FLOW_LOG,
    crate::schema::FOLD_JOURNAL,
    crate::schema::HIST_PACKED,
];

/// How many rows the journal holds, for tests.
#[cfg(test)]
pub(crate) fn journal_rows(c: &Connection) -> i64 {
    #![allow(clippy::unwrap_used)]
    c.query_row("SELECT count(*) FROM fold_journal", (), |r| r.get(0))
        .unwrap()
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
        assert_eq!(f.flush(&c, &mut Mine::due()).unwrap(), Flushed::Applied);
        assert!(f.is_empty());
        let mut g = Fold::default();
        g.count(ms, "luzhou", "education", Metric::Sent, "yibin", 1);
        g.flush(&c, &mut Mine::due()).unwrap();
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
        f.flush(&c, &mut Mine::due()).unwrap();
        let n: i64 = c
            .query_row("SELECT sum(n) FROM overdue_open", (), |r| r.get(0))
            .unwrap();
        assert_eq!(n, 87);
        assert_eq!(
            statement("t (a, b)", "", 2, 2),
            "INSERT INTO t (a, b) VALUES (?1, ?2), (?3, ?4)"
        );
    }

    type Statuses = Vec<((String, String, String), i64)>;

    /// What the figures read: the windows, the statuses, the overdue.
    fn figures(c: &Connection, ms: i64) -> (u64, u64, Statuses, i64) {
        let key = ("luzhou".to_owned(), "education".to_owned());
        let all = crate::windows::read(c, Window::ALL, None).unwrap();
        let sent = all.get(&key).map(|k| k.get(Metric::Sent)).unwrap_or(0);
        let day =
            crate::windows::read(c, Window::at(crate::windows::Grain::Day, ms), None).unwrap();
        let accepted = day
            .get(&key)
            .and_then(|k| k.durations.get(&Duration::ToAccept))
            .map(|h| h.quantile(0.5) as u64)
            .unwrap_or(0);
        let mut st: Vec<_> = statuses(c).unwrap().into_iter().collect();
        st.sort();
        let overdue = overdue_open(c).unwrap().values().sum();
        (sent, accepted, st, overdue)
    }

    #[test]
    fn journaled_counters_read_the_same_before_and_after_their_checkpoint() {
        let c = db();
        let ms = 1_795_624_200_000;
        let mut seen = Vec::new();
        let mut mine = Mine::default();
        for i in 0..5 {
            let mut f = Fold::default();
            f.count(ms, "luzhou", "education", Metric::Sent, "yibin", 1);
            f.observe(ms, "luzhou", "education", Duration::ToAccept, 2_000);
            f.status("yibin", "received", None, Some(TicketStatus::Pending));
            // A ticket that came due and then was resolved: in, then out.
            f.overdue("yibin", "education", if i % 2 == 0 { 1 } else { -1 });
            f.flow(ms, Change::Ticket(Default::default()));
            assert_eq!(f.flush(&c, &mut mine).unwrap(), Flushed::Journaled);
            mine.committed(true);
            seen.push(figures(&c, ms));
        }
        assert_eq!(journal_rows(&c), 5);
        // Nothing is in the tables yet, and every figure counts the journal.
        let in_table: i64 = c
            .query_row("SELECT count(*) FROM window_counts", (), |r| r.get(0))
            .unwrap();
        assert_eq!(in_table, 0);
        let (sent, accepted, st, overdue) = seen.last().cloned().unwrap();
        assert_eq!(sent, 5);
        assert!((1_800..=2_200).contains(&accepted), "{accepted}");
        assert_eq!(
            st,
            vec![(("yibin".into(), "received".into(), "PENDING".into()), 5)]
        );
        assert_eq!(overdue, 1);
        assert_eq!(seen[1].3, 0, "an overdue taken back is not counted");
        // The flow log is written at once, whatever happens to the counters.
        let flow: i64 = c
            .query_row("SELECT count(*) FROM flow_log", (), |r| r.get(0))
            .unwrap();
        assert_eq!(flow, 5);
        // A checkpoint with a commit's own counts: the journal is emptied
        // into the tables, and the figures are the same plus that commit's.
        let mut f = Fold::default();
        f.count(ms, "luzhou", "education", Metric::Sent, "yibin", 1);
        assert_eq!(f.flush(&c, &mut Mine::due()).unwrap(), Flushed::Applied);
        assert_eq!(journal_rows(&c), 0);
        let after = figures(&c, ms);
        assert_eq!(after.0, 6);
        assert_eq!((&after.1, &after.2, after.3), (&accepted, &st, overdue));
        // An empty checkpoint changes nothing.
        Fold::default().flush(&c, &mut Mine::due()).unwrap();
        assert_eq!(figures(&c, ms), after);
    }

    #[test]
    fn a_commit_of_many_keys_writes_its_tables_at_once() {
        let c = db();
        let mut f = Fold::default();
        for i in 0..=JOURNAL_KEYS {
            f.overdue(&format!("city{i}"), "x", 1);
        }
        let mut mine = Mine::default();
        assert_eq!(f.flush(&c, &mut mine).unwrap(), Flushed::Applied);
        assert_eq!(journal_rows(&c), 0);
        assert_eq!(overdue_open(&c).unwrap().len(), JOURNAL_KEYS + 1);
        assert_eq!(
            Fold::default().flush(&c, &mut mine).unwrap(),
            Flushed::Nothing
        );
    }

    #[test]
    fn a_row_of_the_journal_decodes_to_what_was_folded() {
        let ms = 1_795_624_200_000;
        let mut f = Fold::default();
        f.count(ms, "luzhou", "education", Metric::Sent, "yibin", 3);
        f.observe(ms, "luzhou", "education", Duration::ToResolve, 9_000);
        f.status(
            "yibin",
            "sent",
            Some(TicketStatus::Pending),
            Some(TicketStatus::Resolved),
        );
        f.overdue("yibin", "water", -1);
        f.matter(7, "yibin", "t1");
        let back = Fold::decode(&f.encode()).unwrap();
        assert_eq!(back.counts, f.counts);
        assert_eq!(back.hist, f.hist);
        assert_eq!(back.status, f.status);
        assert_eq!(back.overdue, f.overdue);
        assert_eq!(back.matters, f.matters);
        assert!(matches!(
            Fold::decode(b"\xff\xff"),
            Err(GatewayError::Corrupt(..))
        ));
    }

    #[test]
    fn a_replica_that_checkpoints_anothers_rows_counts_them_once() {
        let c = db();
        let (mut a, mut b) = (Mine::default(), Mine::default());
        let one = |c: &Connection, m: &mut Mine, ok: bool| {
            let mut f = Fold::default();
            f.overdue("yibin", "water", 1);
            let done = f.flush(c, m).unwrap();
            m.committed(ok);
            done
        };
        for _ in 0..3 {
            assert_eq!(one(&c, &mut a, true), Flushed::Journaled);
        }
        // b's checkpoint takes a's three rows (read back: b remembers none).
        b.rows = JOURNAL_ROWS;
        b.exact = false;
        assert_eq!(one(&c, &mut b, true), Flushed::Applied);
        assert_eq!(journal_rows(&c), 0);
        for _ in 3..JOURNAL_ROWS {
            one(&c, &mut a, true);
        }
        // a remembers 64 rows, finds 61: it reads them back, counting
        // none of b's three again.
        assert_eq!(a.rows(), JOURNAL_ROWS);
        assert_eq!(one(&c, &mut a, true), Flushed::Applied);
        assert_eq!(a.rows(), 0);
        let total = |c: &Connection| overdue_open(c).unwrap().values().sum::<i64>();
        assert_eq!(total(&c), i64::from(JOURNAL_ROWS) + 2);
        // A checkpoint that does not commit loses nothing: the next one
        // reads back what the first had summed in memory.
        for _ in 0..JOURNAL_ROWS {
            one(&c, &mut a, true);
        }
        let c2 = db();
        let failed = one(&c2, &mut a, false);
        assert_eq!(failed, Flushed::Applied);
        assert_eq!(one(&c, &mut a, true), Flushed::Applied);
        assert_eq!(total(&c), 2 * i64::from(JOURNAL_ROWS) + 3);
        assert_eq!(journal_rows(&c), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn journal_checkpoint_and_packed_histograms_on_postgres() {
        use hotline_durable::{Db, DbError};
        let store = hotline_durable::testing::postgres_store("fold");
        let db = Db::open_store(&store, &TEST_SCHEMA).unwrap();
        let ms = 1_795_624_200_000;
        // Two writers journal, a third checkpoints what both wrote.
        for (n, due) in [(3, false), (2, false), (1, true)] {
            db.write(move |c| {
                let mut mine = if due { Mine::due() } else { Mine::default() };
                for _ in 0..n {
                    let mut f = Fold::default();
                    f.count(ms, "luzhou", "education", Metric::Sent, "yibin", 1);
                    f.observe(ms, "luzhou", "education", Duration::ToAccept, 5_000);
                    f.status("yibin", "received", None, Some(TicketStatus::Pending));
                    f.overdue("yibin", "education", 1);
                    f.matter(7, "yibin", "t1");
                    f.flush(c, &mut mine).map_err(|e| DbError::Open {
                        path: "test".into(),
                        reason: e.to_string(),
                    })?;
                    mine.committed(true);
                }
                Ok::<_, DbError>(())
            })
            .await
            .unwrap();
            let read = db
                .read(move |c| {
                    let all = crate::windows::read(c, Window::ALL, None)?;
                    let cell = &all[&("luzhou".to_owned(), "education".to_owned())];
                    let accepted = cell.durations[&Duration::ToAccept].count();
                    let st: i64 = statuses(c)?.values().sum();
                    let od: i64 = overdue_open(c)?.values().sum();
                    let m = matters_journaled(c, 7, "yibin")?;
                    Ok::<_, GatewayError>((
                        cell.get(Metric::Sent),
                        accepted,
                        st,
                        od,
                        journal_rows(c),
                        m,
                    ))
                })
                .await
                .unwrap();
            let total = match n {
                3 => 3,
                2 => 5,
                _ => 6,
            };
            assert_eq!(read.0, total);
            assert_eq!(
                (read.1, read.2, read.3),
                (total, total as i64, total as i64)
            );
            if due {
                assert_eq!(read.4, 0, "the checkpoint took both writers' rows");
                assert!(read.5.is_empty());
            } else {
                assert_eq!(read.4, total as i64);
                assert_eq!(read.5["t1"], total as i64);
            }
        }
        if let hotline_durable::Store::Postgres { url, schema } = &store {
            hotline_durable::testing::drop_schema(url, schema);
        }
    }
}
