//! The ledger's working set: what the rules of a dispatch consult on every
//! report, kept in memory instead of read from the store each time.
//!
//! - the recent reports (the rules' longest window) with their fingerprints,
//!   in locality-sensitive buckets for the merge detector and by matter and
//!   by citizen for the escalation rules;
//! - the escalations open now, by rule and key;
//! - the key of the citizens' keyed hash;
//! - the counters the current commit moves ([`Fold`]).
//!
//! Rebuilt from the store at start ([`Working::load`]). Only the writer's
//! thread changes it, and what a batch adds is undone if the batch is not
//! committed ([`hotline_durable::db::Hooks`]), so it always equals what the
//! store holds. A write adds to it as its last step, once nothing of the
//! write can fail any more.
//!
//! On a ledger several replicas share (PostgreSQL) the others' reports are
//! not in this replica's memory: before deciding on a report, the ledger
//! takes a transaction lock of the report's target and category and reads
//! that bucket's reports newer than the newest it knows ([`Working::tail`]);
//! the lock is held to the commit, so two replicas decide on one matter one
//! after the other, each seeing the other's report. The escalation rules
//! there read the store (they span buckets).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use hotline_durable::DbError;
use hotline_durable::sql::{Connection, OptionalExtension, params};

use crate::error::GatewayError;
use crate::fold::Fold;
use crate::matter::{self, Fingerprint, K};

/// A recent report, as the rules read it.
#[derive(Debug, Clone)]
pub struct Recent {
    /// Its row number in the store (`recent.w`).
    pub w: i64,
    pub ticket_id: String,
    pub target: String,
    pub category: String,
    pub created_ms: i64,
    pub signature: [u32; K],
    pub place: String,
    /// The place ready for comparing (made from `place`).
    pub prepared: matter::Place,
    pub root: String,
    pub merged_into: Option<String>,
    pub citizen: String,
}

/// Newest entries of a bucket read per band, and of those, at most this
/// many at the same house number compared (as the store's lookup did).
const BUCKET_READ: usize = 256;
const BUCKET_COMPARE: usize = 64;

/// Most matches a lookup returns: the merge looks for an open ticket among
/// them, best first.
pub const MAX_MATCHES: usize = 8;

#[derive(Default)]
struct Inner {
    loaded: bool,
    reports: HashMap<i64, Recent>,
    /// Band key → (w, house-number key), oldest first. Dispatched reports
    /// only: a merged one is found through the ticket it joined.
    bands: HashMap<i64, Vec<(i64, i64)>>,
    by_root: HashMap<String, Vec<i64>>,
    by_citizen: HashMap<String, Vec<i64>>,
    /// (created_ms, w), oldest first: what a prune takes from the front.
    by_time: std::collections::BTreeSet<(i64, i64)>,
    /// The newest `w` known per (target, category): where a tail read of
    /// another replica's reports starts.
    newest: HashMap<(String, String), i64>,
    /// (rule, key) → escalation number, the open ones.
    open: HashMap<(i32, String), i64>,
    secret: Option<Vec<u8>>,
    /// What each write of the batch under way folded.
    folds: Vec<Fold>,
    /// What the batch under way added, to take back if it is not committed.
    undo: Vec<Undo>,
    /// Where the write under way started in `folds` and `undo`.
    mark: (usize, usize),
    /// This process's rows of the counters' journal.
    mine: crate::fold::Mine,
}

enum Undo {
    Report(i64),
    Opened(i32, String),
    Closed(i32, String, i64),
    Secret,
}

/// The working set; see the module's documentation.
#[derive(Default)]
pub struct Working {
    inner: Mutex<Inner>,
    /// What the bucket locks of a shared store are keyed by besides the
    /// bucket (its schema): advisory locks are the database's, and two
    /// ledgers in one database must not wait for each other.
    scope: String,
}

/// What one write adds to the working set once it has done its SQL.
#[derive(Default)]
pub struct Staged {
    pub fold: Fold,
    reports: Vec<Recent>,
    opened: Vec<(i32, String, i64)>,
    closed: Vec<(i32, String)>,
    secret: Option<Vec<u8>>,
}

impl Staged {
    pub fn report(&mut self, r: Recent) {
        self.reports.push(r);
    }

    pub fn opened(&mut self, rule: i32, key: &str, n: i64) {
        self.opened.push((rule, key.to_owned(), n));
    }

    pub fn closed(&mut self, rule: i32, key: &str) {
        self.closed.push((rule, key.to_owned()));
    }

    pub fn secret(&mut self, s: Vec<u8>) {
        self.secret = Some(s);
    }

    /// The escalation this write opened for `(rule, key)`, if it did.
    pub fn opened_now(&self, rule: i32, key: &str) -> Option<i64> {
        self.opened
            .iter()
            .find(|(r, k, _)| *r == rule && k == key)
            .map(|(_, _, n)| *n)
    }
}

impl Inner {
    fn add(&mut self, r: Recent) {
        let w = r.w;
        if r.merged_into.is_none() {
            let num = matter::numbers_key(&r.place);
            for key in matter::band_keys(&r.target, &r.category, &r.signature) {
                self.bands.entry(key).or_default().push((w, num));
            }
        }
        self.by_root.entry(r.root.clone()).or_default().push(w);
        self.by_citizen
            .entry(r.citizen.clone())
            .or_default()
            .push(w);
        let newest = self
            .newest
            .entry((r.target.clone(), r.category.clone()))
            .or_insert(w);
        *newest = (*newest).max(w);
        self.by_time.insert((r.created_ms, w));
        self.reports.insert(w, r);
    }

    fn remove(&mut self, w: i64) {
        let Some(r) = self.reports.remove(&w) else {
            return;
        };
        self.by_time.remove(&(r.created_ms, w));
        if r.merged_into.is_none() {
            for key in matter::band_keys(&r.target, &r.category, &r.signature) {
                if let Some(v) = self.bands.get_mut(&key) {
                    v.retain(|(e, _)| *e != w);
                    if v.is_empty() {
                        self.bands.remove(&key);
                    }
                }
            }
        }
        remove_from(&mut self.by_root, &r.root, w);
        remove_from(&mut self.by_citizen, &r.citizen, w);
    }
}

fn remove_from(map: &mut HashMap<String, Vec<i64>>, key: &str, w: i64) {
    if let Some(v) = map.get_mut(key) {
        v.retain(|e| *e != w);
        if v.is_empty() {
            map.remove(key);
        }
    }
}

/// One write of the ledger: its connection, the rules, the working set,
/// and what the write stages for it ([`Working::absorb`], once the write
/// has done all its SQL).
pub struct Work<'a> {
    pub c: &'a Connection,
    pub p: &'a crate::supervision::Policy,
    pub w: &'a Working,
    /// Other replicas write the same ledger (PostgreSQL).
    pub shared: bool,
    pub st: Staged,
}

impl<'a> Work<'a> {
    pub fn new(
        c: &'a Connection,
        p: &'a crate::supervision::Policy,
        w: &'a Working,
    ) -> Result<Self, GatewayError> {
        w.ensure_loaded(c)?;
        Ok(Self {
            c,
            p,
            w,
            shared: c.is_postgres(),
            st: Staged::default(),
        })
    }

    /// Hands what this write staged to the working set.
    pub fn finish(self) {
        self.w.absorb(self.st);
    }

    /// Hands what this write staged so far to the working set now, so that
    /// the write's next lookups see it (a report counts for the rules it
    /// sets off). Taken back with the write if it fails
    /// ([`hotline_durable::db::Hooks::write_failed`]).
    pub fn publish(&mut self) {
        self.w.absorb(std::mem::take(&mut self.st));
    }
}

/// A recent report the new one matches.
#[derive(Debug, Clone)]
pub struct Match {
    pub ticket_id: String,
    pub root: String,
    pub merged_into: Option<String>,
    pub created_ms: i64,
    pub score: f64,
}

impl Working {
    /// The working set of a ledger whose bucket locks are keyed by `scope`.
    pub fn new(scope: &str) -> Self {
        Self {
            inner: Mutex::default(),
            scope: scope.to_owned(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Reads the working set from the store the first time a write needs
    /// it (on the writer's thread, in its transaction).
    fn ensure_loaded(&self, c: &Connection) -> Result<(), GatewayError> {
        if self.lock().loaded {
            return Ok(());
        }
        self.load(c)
    }

    /// Reads the working set from the store: the recent reports, the open
    /// escalations, the citizens' key.
    pub fn load(&self, c: &Connection) -> Result<(), GatewayError> {
        let mut inner = Inner {
            loaded: true,
            ..Inner::default()
        };
        let mut stmt = c.prepare(
            "SELECT w, ticket_id, target, category, created_ms, signature, place, root, merged_into, citizen
             FROM recent ORDER BY w",
        )?;
        let rows = stmt.query_map((), read_recent)?;
        for r in rows {
            if let Some(r) = r? {
                inner.add(r);
            }
        }
        let mut stmt = c.prepare("SELECT rule, subject_key, n FROM escalations WHERE state = 1")?;
        let rows = stmt.query_map((), |r| {
            Ok((
                r.get::<_, i32>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for r in rows {
            let (rule, key, n) = r?;
            inner.open.insert((rule, key), n);
        }
        inner.secret = c
            .query_row(
                "SELECT value FROM secrets WHERE name = 'citizen-key'",
                (),
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?;
        *self.lock() = inner;
        Ok(())
    }

    /// Reads the reports of `target`'s `category` that other replicas
    /// committed since this one last looked, after locking that bucket for
    /// the rest of the transaction. Only on a shared store.
    pub fn tail(&self, c: &Connection, target: &str, category: &str) -> Result<(), GatewayError> {
        let key = hotline_durable::lease::key(&self.scope, &format!("merge/{target}/{category}"));
        // Sent with the read below, and run before it: pipelined requests
        // are run in the order they are sent.
        c.write("SELECT pg_advisory_xact_lock(?1)", [key])?;
        let since = self
            .lock()
            .newest
            .get(&(target.to_owned(), category.to_owned()))
            .copied()
            .unwrap_or(0);
        let mut stmt = c.prepare_cached(
            "SELECT w, ticket_id, target, category, created_ms, signature, place, root, merged_into, citizen
             FROM recent WHERE target = ?1 AND category = ?2 AND w > ?3 ORDER BY w",
        )?;
        let rows: Vec<Option<Recent>> = stmt
            .query_map(params![target, category, since], read_recent)?
            .collect::<Result<_, _>>()?;
        let mut inner = self.lock();
        for r in rows.into_iter().flatten() {
            // Committed by another replica (or staged by this batch, which
            // this replica knows already).
            if !inner.reports.contains_key(&r.w) {
                inner.add(r);
            }
        }
        Ok(())
    }

    /// The recent reports about the same matter (same target city and
    /// category, similar words, similar place), made after `since_ms`, best
    /// first: the higher score, then the newer report. At most
    /// [`MAX_MATCHES`].
    pub fn find_matches(
        &self,
        text_similarity: f64,
        place_similarity: f64,
        target: &str,
        category: &str,
        fp: &Fingerprint,
        since_ms: i64,
    ) -> Vec<Match> {
        let inner = self.lock();
        let num = matter::numbers_key(&fp.place);
        let place = matter::Place::of(&fp.place);
        let mut seen = BTreeSet::new();
        // (score, made, w) of each match; the reports' texts are copied
        // for the best ones only.
        let mut found: Vec<(f64, i64, i64)> = Vec::new();
        for key in matter::band_keys(target, category, &fp.signature) {
            let Some(bucket) = inner.bands.get(&key) else {
                continue;
            };
            let near = bucket
                .iter()
                .rev()
                .take(BUCKET_READ)
                .filter(|(_, n)| *n == 0 || num == 0 || *n == num)
                .take(BUCKET_COMPARE);
            for (w, _) in near {
                if !seen.insert(*w) {
                    continue;
                }
                let Some(r) = inner.reports.get(w) else {
                    continue;
                };
                if r.target != target || r.category != category || r.created_ms < since_ms {
                    continue;
                }
                let score = matter::similarity(&fp.signature, &r.signature);
                if score < text_similarity || place.similarity(&r.prepared) < place_similarity {
                    continue;
                }
                found.push((score, r.created_ms, *w));
            }
        }
        found.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        found
            .iter()
            .take(MAX_MATCHES)
            .filter_map(|(score, _, w)| {
                let r = inner.reports.get(w)?;
                Some(Match {
                    ticket_id: r.ticket_id.clone(),
                    root: r.root.clone(),
                    merged_into: r.merged_into.clone(),
                    created_ms: r.created_ms,
                    score: *score,
                })
            })
            .collect()
    }

    /// How many citizens reported the matter `root` since `since_ms`, and
    /// the reports (at most `limit`, the first ones).
    pub fn citizens_of(&self, root: &str, since_ms: i64, limit: usize) -> (u64, Vec<String>) {
        let inner = self.lock();
        let mut citizens = BTreeSet::new();
        let mut tickets = Vec::new();
        for w in inner.by_root.get(root).into_iter().flatten() {
            let Some(r) = inner.reports.get(w) else {
                continue;
            };
            if r.created_ms < since_ms {
                continue;
            }
            if tickets.len() == limit {
                break;
            }
            citizens.insert(r.citizen.as_str());
            tickets.push(r.ticket_id.clone());
        }
        (citizens.len() as u64, tickets)
    }

    /// The reports one citizen made since `since_ms` (at most `limit`).
    pub fn reports_of(&self, citizen: &str, since_ms: i64, limit: usize) -> Vec<String> {
        let inner = self.lock();
        inner
            .by_citizen
            .get(citizen)
            .into_iter()
            .flatten()
            .filter_map(|w| inner.reports.get(w))
            .filter(|r| r.created_ms >= since_ms)
            .take(limit)
            .map(|r| r.ticket_id.clone())
            .collect()
    }

    /// The escalation open for `rule` and `key`, if one is.
    pub fn open_escalation(&self, rule: i32, key: &str) -> Option<i64> {
        self.lock().open.get(&(rule, key.to_owned())).copied()
    }

    pub fn secret(&self) -> Option<Vec<u8>> {
        self.lock().secret.clone()
    }

    /// Adds what a write staged, to be taken back if its batch is not
    /// committed.
    pub fn absorb(&self, staged: Staged) {
        let mut inner = self.lock();
        if !staged.fold.is_empty() {
            inner.folds.push(staged.fold);
        }
        for r in staged.reports {
            inner.undo.push(Undo::Report(r.w));
            inner.add(r);
        }
        for (rule, key, n) in staged.opened {
            inner.undo.push(Undo::Opened(rule, key.clone()));
            inner.open.insert((rule, key), n);
        }
        for (rule, key) in staged.closed {
            if let Some(n) = inner.open.remove(&(rule, key.clone())) {
                inner.undo.push(Undo::Closed(rule, key, n));
            }
        }
        if let Some(s) = staged.secret
            && inner.secret.is_none()
        {
            inner.secret = Some(s);
            inner.undo.push(Undo::Secret);
        }
    }

    /// Forgets the reports made before `before_ms`, reading only those.
    pub fn prune(&self, before_ms: i64) {
        let mut inner = self.lock();
        while inner
            .by_time
            .first()
            .is_some_and(|(created, _)| *created < before_ms)
        {
            if let Some((_, w)) = inner.by_time.pop_first() {
                inner.remove(w);
            }
        }
    }
}

fn read_recent(r: &hotline_durable::sql::Row<'_>) -> hotline_durable::sql::Result<Option<Recent>> {
    let signature: Vec<u8> = r.get(5)?;
    let Some(signature) = matter::decode(&signature) else {
        return Ok(None);
    };
    let place: String = r.get(6)?;
    Ok(Some(Recent {
        w: r.get(0)?,
        ticket_id: r.get(1)?,
        target: r.get(2)?,
        category: r.get(3)?,
        created_ms: r.get(4)?,
        signature,
        prepared: matter::Place::of(&place),
        place,
        root: r.get(7)?,
        merged_into: r.get(8)?,
        citizen: r.get(9)?,
    }))
}

impl Inner {
    /// Takes back the undo entries past `from`, newest first.
    fn undo_to(&mut self, from: usize) {
        let undo = self.undo.split_off(from);
        for u in undo.into_iter().rev() {
            match u {
                Undo::Report(w) => self.remove(w),
                Undo::Opened(rule, key) => {
                    self.open.remove(&(rule, key));
                }
                Undo::Closed(rule, key, n) => {
                    self.open.insert((rule, key), n);
                }
                Undo::Secret => self.secret = None,
            }
        }
    }
}

impl hotline_durable::db::Hooks for Working {
    fn write_started(&self) {
        let mut inner = self.lock();
        inner.mark = (inner.folds.len(), inner.undo.len());
    }

    fn write_failed(&self) {
        let mut inner = self.lock();
        let (folds, undo) = inner.mark;
        inner.folds.truncate(folds);
        inner.undo_to(undo);
    }

    fn before_commit(&self, c: &Connection) -> Result<(), DbError> {
        let (folds, mut mine) = {
            let mut inner = self.lock();
            (
                std::mem::take(&mut inner.folds),
                std::mem::take(&mut inner.mine),
            )
        };
        let mut fold = Fold::default();
        for f in folds {
            fold.absorb(f);
        }
        let flushed = fold.flush(c, &mut mine);
        self.lock().mine = mine;
        flushed.map(|_| ()).map_err(|e| match e {
            GatewayError::Db(e) => e,
            other => DbError::Open {
                path: "ledger".into(),
                reason: other.to_string(),
            },
        })
    }

    fn after_commit(&self, committed: bool) {
        let mut inner = self.lock();
        inner.folds.clear();
        inner.mark = (0, 0);
        inner.mine.committed(committed);
        if committed {
            inner.undo.clear();
        } else {
            inner.undo_to(0);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hotline_durable::db::Hooks;

    fn recent(w: i64, id: &str, subject: &str, place: &str, created_ms: i64) -> Recent {
        let fp = matter::fingerprint(subject, "", place);
        Recent {
            w,
            ticket_id: id.into(),
            target: "yibin".into(),
            category: "water".into(),
            created_ms,
            signature: fp.signature,
            prepared: matter::Place::of(&fp.place),
            place: fp.place,
            root: id.into(),
            merged_into: None,
            citizen: format!("c-{id}"),
        }
    }

    const SUBJECT: &str = "江阳区春雨路3号小区连续两天停水，物业无人处理";

    #[test]
    fn a_report_finds_the_same_matter_in_the_same_place_and_not_another() {
        let ws = Working::default();
        let mut s = Staged::default();
        s.report(recent(1, "t1", SUBJECT, "春雨路3号", 1_000));
        s.report(recent(2, "t2", "工地夜间施工噪音扰民", "春雨路3号", 1_000));
        ws.absorb(s);
        let fp = matter::fingerprint(SUBJECT, "", "春雨路3号");
        let m = ws
            .find_matches(0.5, 0.5, "yibin", "water", &fp, 0)
            .remove(0);
        assert_eq!(m.ticket_id, "t1");
        // Another house number, another category, too old, no place: none.
        let other = matter::fingerprint(SUBJECT, "", "春雨路13号");
        assert!(
            ws.find_matches(0.5, 0.5, "yibin", "water", &other, 0)
                .is_empty()
        );
        assert!(
            ws.find_matches(0.5, 0.5, "yibin", "ecology", &fp, 0)
                .is_empty()
        );
        assert!(
            ws.find_matches(0.5, 0.5, "yibin", "water", &fp, 2_000)
                .is_empty()
        );
        let nowhere = matter::fingerprint(SUBJECT, "", "");
        assert!(
            ws.find_matches(0.5, 0.5, "yibin", "water", &nowhere, 0)
                .is_empty()
        );
    }

    #[tokio::test]
    async fn every_so_many_commits_one_checkpoints_the_counters_journal() {
        let dir = tempfile::tempdir().unwrap();
        let ws = std::sync::Arc::new(Working::default());
        let db = hotline_durable::Db::open_with_hooks(
            &hotline_durable::Store::Sqlite(dir.path().join("l.db")),
            &crate::fold::TEST_SCHEMA,
            ws.clone(),
        )
        .unwrap();
        async fn rows(db: &hotline_durable::Db) -> Result<i64, DbError> {
            db.read(|c| Ok::<_, DbError>(crate::fold::journal_rows(c)))
                .await
        }
        let limit = i64::from(crate::fold::JOURNAL_ROWS);
        for i in 1..=2 * limit + 1 {
            if i == 2 {
                // A write that fails adds nothing to the journal.
                let w = ws.clone();
                let failed = db
                    .write(move |_| {
                        let mut s = Staged::default();
                        s.fold.overdue("yibin", "water", 1);
                        w.absorb(s);
                        Err::<(), _>(DbError::Panicked)
                    })
                    .await;
                assert!(failed.is_err());
                assert_eq!(rows(&db).await.unwrap(), 1);
            }
            let w = ws.clone();
            db.write(move |_| {
                let mut s = Staged::default();
                s.fold.overdue("yibin", "water", 1);
                w.absorb(s);
                Ok::<_, DbError>(())
            })
            .await
            .unwrap();
            // The (limit + 1)th commit folds the journal into the table,
            // and its own counts with it.
            let want = if i <= limit { i } else { i - limit - 1 };
            assert_eq!(rows(&db).await.unwrap(), want, "after commit {i}");
        }
        let total: i64 = db
            .read(|c| Ok::<_, GatewayError>(crate::fold::overdue_open(c)?.values().sum()))
            .await
            .unwrap();
        assert_eq!(total, 2 * limit + 1);
        assert_eq!(rows(&db).await.unwrap(), limit);
    }

    #[test]
    fn what_a_batch_added_is_taken_back_when_it_is_not_committed() {
        let ws = Working::default();
        let mut s = Staged::default();
        s.report(recent(1, "t1", SUBJECT, "春雨路3号", 1_000));
        s.opened(1, "t1", 7);
        ws.absorb(s);
        ws.after_commit(true);
        let mut s = Staged::default();
        s.report(recent(2, "t2", SUBJECT, "春雨路3号", 2_000));
        s.closed(1, "t1");
        s.fold.overdue("yibin", "water", 1);
        ws.absorb(s);
        assert_eq!(ws.citizens_of("t1", 0, 10).0, 1);
        assert_eq!(ws.reports_of("c-t2", 0, 10), vec!["t2".to_owned()]);
        assert_eq!(ws.open_escalation(1, "t1"), None);
        ws.after_commit(false);
        assert!(ws.reports_of("c-t2", 0, 10).is_empty());
        assert_eq!(ws.open_escalation(1, "t1"), Some(7));
        assert!(ws.lock().folds.is_empty());
        let fp = matter::fingerprint(SUBJECT, "", "春雨路3号");
        assert_eq!(
            ws.find_matches(0.5, 0.5, "yibin", "water", &fp, 0)[0].ticket_id,
            "t1"
        );
    }

    #[test]
    fn rules_count_citizens_and_reports_within_their_window() {
        let ws = Working::default();
        let mut s = Staged::default();
        for i in 0..5 {
            let mut r = recent(i + 1, &format!("t{i}"), SUBJECT, "春雨路3号", 1_000 * i);
            r.root = "t0".into();
            r.citizen = if i < 3 {
                "same".into()
            } else {
                format!("c{i}")
            };
            s.report(r);
        }
        ws.absorb(s);
        assert_eq!(
            ws.citizens_of("t0", 0, 1000),
            (3, (0..5).map(|i| format!("t{i}")).collect())
        );
        assert_eq!(ws.citizens_of("t0", 2_000, 1000).0, 3);
        assert_eq!(
            ws.reports_of("same", 1_000, 1000),
            vec!["t1".to_owned(), "t2".to_owned()]
        );
        ws.prune(3_000);
        assert_eq!(
            ws.citizens_of("t0", 0, 1000).1,
            vec!["t3".to_owned(), "t4".to_owned()]
        );
    }
}
