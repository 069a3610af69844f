//! Provincial supervision (提级督办): deadlines on the working-day calendar,
//! the merging of duplicate reports (合并派单), the escalation rules, the
//! supervision ledger (督办台账) and the recurring matters (专题专办).
//!
//! Everything here runs inside the ledger's transactions: a report is merged
//! or dispatched, and the rules it sets off are recorded, in the same commit
//! as the ticket.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use hotline_durable::sql::{Connection, OptionalExtension, ToSql, params};
use hotline_proto::pb::{
    Escalation, EscalationAction, EscalationActionKind, EscalationRule, EscalationState,
    TicketKind, TopMatter,
};
use hotline_proto::time;
use serde::Deserialize;

use crate::calendar::Calendar;
use crate::error::GatewayError;
use crate::matter::{self, Fingerprint};
use crate::working::{Match, Recent, Work};

type Result<T, E = GatewayError> = std::result::Result<T, E>;

use crate::windows::HOUR_MS;

/// How long each stage of a ticket may take (`[deadlines]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadlineConfig {
    /// Working days from the request to acceptance.
    pub accept_working_days: u32,
    /// Working days from the request to resolution, per kind of ticket.
    pub resolve_working_days: BTreeMap<String, u32>,
    /// Per category, instead of the above.
    pub categories: BTreeMap<String, CategoryDeadlines>,
    /// Urgent tickets: hours to acceptance, working days to resolution.
    pub urgent_accept_hours: u32,
    pub urgent_resolve_working_days: u32,
    /// Urgent tickets must reach the gateway within this many minutes of the
    /// request (直派: 15 minutes).
    pub urgent_dispatch_minutes: u32,
    /// Working days for coordination to name the owner of a rejected ticket.
    pub assign_working_days: u32,
    /// More years of the calendar, one file each (2026 is built in).
    pub calendars: Vec<PathBuf>,
    /// Calendar hours from the request to resolution instead of working
    /// days, for tests and compressed simulations; acceptance is then due by
    /// the same time at the latest.
    pub resolve_hours: Option<u32>,
    pub urgent_resolve_hours: Option<u32>,
    /// Calendar seconds instead of hours, for a demonstration that shows a
    /// duty officer's day in minutes (`simulator demo`); before
    /// `resolve_hours` when both are given.
    pub resolve_seconds: Option<u32>,
    pub urgent_resolve_seconds: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryDeadlines {
    pub accept_working_days: Option<u32>,
    pub resolve_working_days: Option<u32>,
}

impl Default for DeadlineConfig {
    fn default() -> Self {
        Self {
            accept_working_days: 1,
            resolve_working_days: [
                ("consultation", 3),
                ("help", 5),
                ("complaint", 10),
                ("report", 10),
                ("suggestion", 15),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            categories: BTreeMap::new(),
            urgent_accept_hours: 2,
            urgent_resolve_working_days: 1,
            urgent_dispatch_minutes: 15,
            assign_working_days: 3,
            calendars: Vec::new(),
            resolve_hours: None,
            urgent_resolve_hours: None,
            resolve_seconds: None,
            urgent_resolve_seconds: None,
        }
    }
}

/// The merge detector and the escalation rules (`[supervision]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// A report about the same matter in the same place as an open ticket
    /// made less than this many hours before is merged into it; 0 turns
    /// merging off.
    pub merge_window_hours: u32,
    /// The estimated Jaccard similarity of the words, and the similarity of
    /// the places, from which two reports are about one matter.
    pub text_similarity: f64,
    pub place_similarity: f64,
    /// 多人一诉: this many citizens reporting one matter within the window.
    pub cluster_citizens: u32,
    pub cluster_window_hours: u32,
    /// 一人多诉: one citizen making this many reports within the window.
    pub repeat_reports: u32,
    pub repeat_window_days: u32,
    /// 久拖不决: open this many working days past the resolution deadline.
    pub long_unresolved_working_days: u32,
    /// Re-handled (reopened) this many times and still unsatisfied.
    pub rehandled_times: u32,
    /// Taken up at once.
    pub emergency_categories: Vec<String>,
}

impl Default for RuleConfig {
    fn default() -> Self {
        Self {
            merge_window_hours: 72,
            text_similarity: 0.5,
            place_similarity: 0.5,
            cluster_citizens: 5,
            cluster_window_hours: 7 * 24,
            repeat_reports: 5,
            repeat_window_days: 30,
            long_unresolved_working_days: 5,
            rehandled_times: 2,
            emergency_categories: hotline_proto::catalogue::EMERGENCY_CATEGORIES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

impl RuleConfig {
    pub fn check(&self) -> anyhow::Result<()> {
        for (name, v) in [
            ("text_similarity", self.text_similarity),
            ("place_similarity", self.place_similarity),
        ] {
            if !(0.0..=1.0).contains(&v) || v == 0.0 {
                anyhow::bail!("supervision.{name} = {v}: must be above 0 and at most 1");
            }
        }
        for (name, v) in [
            ("cluster_citizens", self.cluster_citizens),
            ("repeat_reports", self.repeat_reports),
            ("rehandled_times", self.rehandled_times),
        ] {
            if v == 0 {
                anyhow::bail!("supervision.{name} = 0: must be at least 1");
            }
            if v > MAX_SCAN {
                anyhow::bail!("supervision.{name} = {v}: at most {MAX_SCAN}");
            }
        }
        Ok(())
    }
}

/// Deadlines, calendar and rules, as the ledger applies them.
#[derive(Debug, Clone)]
pub struct Policy(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    deadlines: DeadlineConfig,
    rules: RuleConfig,
    calendar: Calendar,
    /// The department each category goes to.
    departments: BTreeMap<String, String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self::new(
            DeadlineConfig::default(),
            RuleConfig::default(),
            Calendar::shipped(),
            &BTreeMap::new(),
        )
    }
}

/// Which stage a ticket's deadline is of.
pub const ACCEPT: &str = "accept";
pub const RESOLVE: &str = "resolve";
pub const ASSIGN: &str = "assign";

impl Policy {
    pub fn new(
        deadlines: DeadlineConfig,
        rules: RuleConfig,
        calendar: Calendar,
        departments: &BTreeMap<String, Vec<String>>,
    ) -> Self {
        let mut by_category = BTreeMap::new();
        for (dept, cats) in departments {
            for c in cats {
                by_category.entry(c.clone()).or_insert_with(|| dept.clone());
            }
        }
        Self(Arc::new(Inner {
            deadlines,
            rules,
            calendar,
            departments: by_category,
        }))
    }

    pub fn rules(&self) -> &RuleConfig {
        &self.0.rules
    }

    pub fn calendar(&self) -> &Calendar {
        &self.0.calendar
    }

    /// The provincial department a category goes to: the one that oversees
    /// it, or the one named after it.
    pub fn department(&self, category: &str) -> String {
        self.0
            .departments
            .get(category)
            .cloned()
            .unwrap_or_else(|| category.to_owned())
    }

    fn resolve_days(&self, kind: i32, category: &str) -> u32 {
        let d = &self.0.deadlines;
        if let Some(n) = d
            .categories
            .get(category)
            .and_then(|c| c.resolve_working_days)
        {
            return n;
        }
        let kind = TicketKind::try_from(kind)
            .unwrap_or(TicketKind::Unspecified)
            .as_str_name()
            .trim_start_matches("TICKET_KIND_")
            .to_ascii_lowercase();
        d.resolve_working_days.get(&kind).copied().unwrap_or(10)
    }

    /// When a ticket made (or handed on, or reopened) at `from_ms` must be
    /// resolved by.
    pub fn resolve_due(&self, from_ms: i64, urgent: bool, kind: i32, category: &str) -> i64 {
        let d = &self.0.deadlines;
        let seconds = if urgent {
            d.urgent_resolve_seconds
        } else {
            d.resolve_seconds
        };
        if let Some(s) = seconds {
            return from_ms + i64::from(s) * 1000;
        }
        let hours = if urgent {
            d.urgent_resolve_hours
        } else {
            d.resolve_hours
        };
        if let Some(h) = hours {
            return from_ms + i64::from(h) * HOUR_MS;
        }
        let days = if urgent {
            d.urgent_resolve_working_days
        } else {
            self.resolve_days(kind, category)
        };
        self.0.calendar.add_working_days(from_ms, days)
    }

    /// When a ticket made at `from_ms` must be accepted by: never later than
    /// its resolution.
    pub fn accept_due(&self, from_ms: i64, urgent: bool, category: &str, resolve_due: i64) -> i64 {
        let d = &self.0.deadlines;
        let due = if urgent {
            from_ms + i64::from(d.urgent_accept_hours) * HOUR_MS
        } else {
            let days = d
                .categories
                .get(category)
                .and_then(|c| c.accept_working_days)
                .unwrap_or(d.accept_working_days);
            self.0.calendar.add_working_days(from_ms, days)
        };
        due.min(resolve_due)
    }

    /// When coordination must name an owner for a ticket rejected at
    /// `from_ms`.
    pub fn assign_due(&self, from_ms: i64) -> i64 {
        self.0
            .calendar
            .add_working_days(from_ms, self.0.deadlines.assign_working_days)
    }

    /// When an open ticket due at `resolve_due` counts as long unresolved.
    pub fn late(&self, resolve_due: i64) -> i64 {
        self.0
            .calendar
            .add_working_days(resolve_due, self.0.rules.long_unresolved_working_days)
            .max(resolve_due)
    }

    pub fn urgent_dispatch_ms(&self) -> i64 {
        i64::from(self.0.deadlines.urgent_dispatch_minutes) * 60_000
    }

    pub fn is_emergency(&self, category: &str) -> bool {
        self.0
            .rules
            .emergency_categories
            .iter()
            .any(|c| c == category)
    }
}

/// The citizen's keyed hash: HMAC-SHA-256 of the phone number's digits under
/// a key that never leaves the ledger, so that one person's reports can be
/// counted without the number being kept. A report with no number is its own
/// citizen.
pub fn citizen_key(w: &mut Work<'_>, phone: &str, ticket_id: &str) -> Result<String> {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return Ok(format!("ticket:{ticket_id}"));
    }
    let secret = match w.w.secret() {
        Some(s) => s,
        None => {
            let c = w.c;
            let read = || {
                c.prepare_cached("SELECT value FROM secrets WHERE name = 'citizen-key'")?
                    .query_row((), |r| r.get::<_, Vec<u8>>(0))
                    .optional()
            };
            let secret = match read()? {
                Some(s) => s,
                None => {
                    let mut fresh = [0u8; 32];
                    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
                        .map_err(|_| {
                            GatewayError::FailedPrecondition("no system randomness".into())
                        })?;
                    // Another replica may make it at the same moment: the
                    // first kept.
                    c.prepare_cached(
                        "INSERT OR IGNORE INTO secrets (name, value) VALUES ('citizen-key', ?1)",
                    )?
                    .execute([fresh.as_slice()])?;
                    read()?.unwrap_or_else(|| fresh.to_vec())
                }
            };
            w.st.secret(secret.clone());
            secret
        }
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let tag = ring::hmac::sign(&key, digits.as_bytes());
    Ok(tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The recent reports about the same matter (same target city and
/// category, similar words, similar place), made after `since_ms`, best
/// first: from the working set, after reading what other replicas filed in
/// its bucket.
pub fn find_matches(
    w: &Work<'_>,
    target: &str,
    category: &str,
    fp: &Fingerprint,
    since_ms: i64,
) -> Result<Vec<Match>> {
    if fp.place.is_empty() {
        // A report with no place matches nothing.
        return Ok(Vec::new());
    }
    if w.shared {
        w.w.tail(w.c, target, category)?;
    }
    let rules = w.p.rules();
    Ok(w.w.find_matches(
        rules.text_similarity,
        rules.place_similarity,
        target,
        category,
        fp,
        since_ms,
    ))
}

/// A report as the rules see it.
pub struct Report<'a> {
    pub ticket_id: &'a str,
    pub target: &'a str,
    pub category: &'a str,
    pub created_ms: i64,
    pub fingerprint: &'a Fingerprint,
    pub root: &'a str,
    pub merged_into: Option<&'a str>,
    pub citizen: &'a str,
}

/// Files a report among the recent ones and counts it for its matter.
pub fn record(
    w: &mut Work<'_>,
    r: &Report<'_>,
    handler: &str,
    subject: &str,
    location: &str,
) -> Result<()> {
    let c = w.c;
    let row = c.prepare_cached(
        "INSERT INTO recent (ticket_id, target, category, created_ms, signature, place, root, merged_into, citizen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING w",
    )?
    .query_row(
        params![
            r.ticket_id,
            r.target,
            r.category,
            r.created_ms,
            matter::encode(&r.fingerprint.signature),
            r.fingerprint.place,
            r.root,
            r.merged_into,
            r.citizen
        ],
        |row| row.get::<_, i64>(0),
    )?;
    if r.root == r.ticket_id {
        c.write(
            "INSERT OR IGNORE INTO matters (root, category, handler, subject, place) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![r.root, r.category, handler, subject, location],
        )?;
    }
    let month = crate::windows::month_of(r.created_ms);
    w.st.fold.matter(month, handler, r.root);
    w.st.fold.matter(month, "", r.root);
    // The working set files it in its buckets: a merged report is found
    // through the ticket it was merged into, so only dispatched ones are.
    w.st.report(Recent {
        w: row,
        ticket_id: r.ticket_id.to_owned(),
        target: r.target.to_owned(),
        category: r.category.to_owned(),
        created_ms: r.created_ms,
        signature: r.fingerprint.signature,
        place: r.fingerprint.place.clone(),
        prepared: matter::Place::of(&r.fingerprint.place),
        root: r.root.to_owned(),
        merged_into: r.merged_into.map(str::to_owned),
        citizen: r.citizen.to_owned(),
    });
    // The rules this report sets off count it.
    w.publish();
    Ok(())
}

/// Forgets the recent reports made before `before_ms`; returns how many.
pub fn prune(c: &Connection, before_ms: i64) -> Result<usize> {
    let ws: Vec<i64> = c
        .prepare_cached("SELECT w FROM recent WHERE created_ms < ?1 LIMIT 5000")?
        .query_map([before_ms], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for w in &ws {
        c.write("DELETE FROM recent WHERE w = ?1", [w])?;
    }
    Ok(ws.len())
}

/// The longest window the rules look back over.
pub fn horizon_ms(p: &Policy) -> i64 {
    let r = p.rules();
    i64::from(r.merge_window_hours)
        .max(i64::from(r.cluster_window_hours))
        .max(i64::from(r.repeat_window_days) * 24)
        * HOUR_MS
}

/// The most reports a rule reads to decide (a rule with a higher
/// threshold is refused by the configuration check).
pub const MAX_SCAN: u32 = 1000;

/// How many citizens reported a matter since `since_ms` (reading at most
/// [`MAX_SCAN`] reports), and the reports: from the working set, or on a
/// shared ledger from the store (the rule spans the replicas' buckets).
pub fn citizens(w: &Work<'_>, root: &str, since_ms: i64) -> Result<(u64, Vec<String>)> {
    if w.shared {
        return citizens_of(w.c, root, since_ms);
    }
    Ok(w.w.citizens_of(root, since_ms, MAX_SCAN as usize))
}

/// The reports one citizen made since `since_ms` (see [`citizens`]).
pub fn reports(w: &Work<'_>, citizen: &str, since_ms: i64) -> Result<Vec<String>> {
    if w.shared {
        return reports_of(w.c, citizen, since_ms);
    }
    Ok(w.w.reports_of(citizen, since_ms, MAX_SCAN as usize))
}

/// What the report rules read of a shared store, in two round trips on
/// PostgreSQL (not four): the escalations open for the matter and for the
/// citizen, then the reports of those of the two with none open (a report
/// that joins an open escalation needs no counting). None of these reads
/// depends on what the rules write in between.
pub struct SharedFacts {
    pub many_open: Option<i64>,
    pub one_open: Option<i64>,
    pub citizens: (u64, Vec<String>),
    pub reports: Vec<String>,
}

/// Reads the [`SharedFacts`] of a report of the matter `root` by `citizen`.
pub fn shared_facts(
    c: &Connection,
    root: &str,
    citizen: &str,
    cluster_since_ms: i64,
    repeat_since_ms: i64,
) -> Result<SharedFacts> {
    let many = EscalationRule::ManyReportsOneMatter as i32;
    let one = EscalationRule::OneCitizenManyRequests as i32;
    let mut facts = SharedFacts {
        many_open: None,
        one_open: None,
        citizens: (0, Vec::new()),
        reports: Vec::new(),
    };
    c.query_each(
        &[
            (OPEN_ESCALATION, params![many, root]),
            (OPEN_ESCALATION, params![one, citizen]),
        ],
        |i, r| {
            if i == 0 {
                facts.many_open = Some(r.get(0)?);
            } else {
                facts.one_open = Some(r.get(0)?);
            }
            Ok(())
        },
    )?;
    let matter = params![root, cluster_since_ms];
    let mine = params![citizen, repeat_since_ms];
    let mut reads: Vec<(&str, &[&dyn ToSql])> = Vec::new();
    if facts.many_open.is_none() {
        reads.push((MATTER_REPORTS, matter));
    }
    if facts.one_open.is_none() {
        reads.push((CITIZEN_REPORTS, mine));
    }
    let mut matter_reports: Vec<(String, String)> = Vec::new();
    let first_is_matter = facts.many_open.is_none();
    if !reads.is_empty() {
        c.query_each(&reads, |i, r| {
            if i == 0 && first_is_matter {
                matter_reports.push((r.get(0)?, r.get(1)?));
            } else {
                facts.reports.push(r.get(0)?);
            }
            Ok(())
        })?;
    }
    facts.citizens = count_citizens(matter_reports);
    Ok(facts)
}

const OPEN_ESCALATION: &str =
    "SELECT n FROM escalations WHERE rule = ?1 AND subject_key = ?2 AND state = 1";
const MATTER_REPORTS: &str = "SELECT ticket_id, citizen FROM recent WHERE root = ?1 AND created_ms >= ?2 ORDER BY w LIMIT 1000";
const CITIZEN_REPORTS: &str =
    "SELECT ticket_id FROM recent WHERE citizen = ?1 AND created_ms >= ?2 ORDER BY w LIMIT 1000";

/// How many citizens the reports `(ticket, citizen)` come from, and the
/// reports.
fn count_citizens(rows: Vec<(String, String)>) -> (u64, Vec<String>) {
    let distinct: std::collections::BTreeSet<&str> = rows.iter().map(|(_, c)| c.as_str()).collect();
    let n = distinct.len() as u64;
    (n, rows.into_iter().map(|(t, _)| t).collect())
}

fn citizens_of(c: &Connection, root: &str, since_ms: i64) -> Result<(u64, Vec<String>)> {
    let rows: Vec<(String, String)> = c
        .prepare_cached(MATTER_REPORTS)?
        .query_map(params![root, since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(count_citizens(rows))
}

fn reports_of(c: &Connection, citizen: &str, since_ms: i64) -> Result<Vec<String>> {
    Ok(c.prepare_cached(CITIZEN_REPORTS)?
        .query_map(params![citizen, since_ms], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// What an escalation is about.
pub struct Subject<'a> {
    pub rule: EscalationRule,
    /// One open escalation per rule and key: a matter's first ticket, a
    /// citizen's keyed hash, a ticket.
    pub key: &'a str,
    pub reason: String,
    pub category: &'a str,
    pub handler: &'a str,
    pub subject: &'a str,
}

/// Opens an escalation, or adds the tickets to the one open for the same
/// rule and key. Returns the escalation's number and whether it is new.
pub fn escalate(
    w: &mut Work<'_>,
    s: &Subject<'_>,
    tickets: &[String],
    now_ms: i64,
) -> Result<(i64, bool)> {
    let (c, p) = (w.c, w.p);
    let (n, fresh) = match open(w, s.rule, s.key)? {
        Some(n) => {
            c.write(
                "UPDATE escalations SET reason = ?2 WHERE n = ?1",
                params![n, s.reason],
            )?;
            (n, false)
        }
        None => {
            let n = c.prepare_cached(
                "INSERT INTO escalations (rule, subject_key, reason, category, handler, department, subject, state, open_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8) RETURNING n",
            )?
            .query_row(
                params![
                    s.rule as i32,
                    s.key,
                    s.reason,
                    s.category,
                    s.handler,
                    p.department(s.category),
                    s.subject,
                    now_ms
                ],
                |row| row.get::<_, i64>(0),
            )?;
            w.st.fold.count(
                now_ms,
                s.handler,
                s.category,
                crate::windows::Metric::Escalated,
                s.rule.as_str_name(),
                1,
            );
            w.st.opened(s.rule as i32, s.key, n);
            tracing::info!(escalation = n, rule = s.rule.as_str_name(), category = %s.category,
                handler = %s.handler, "escalated to the province");
            (n, true)
        }
    };
    for t in tickets {
        add_ticket(c, n, t)?;
    }
    Ok((n, fresh))
}

/// The most tickets an escalation lists (the first ones); the rest join it
/// without being listed.
pub const MAX_LISTED: i64 = 1000;

fn add_ticket(c: &Connection, n: i64, ticket_id: &str) -> Result<()> {
    let listed: i64 = c
        .prepare_cached("SELECT tickets FROM escalations WHERE n = ?1")?
        .query_row([n], |r| r.get(0))?;
    if listed >= MAX_LISTED {
        return Ok(());
    }
    let added = c
        .prepare_cached(
            "INSERT OR IGNORE INTO escalation_tickets (n, ticket_id, pos) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![n, ticket_id, listed])?;
    if added == 1 {
        c.write(
            "UPDATE escalations SET tickets = tickets + 1 WHERE n = ?1",
            [n],
        )?;
    }
    Ok(())
}

/// The escalation of `rule` open for `key`, if one is: from the working
/// set (or what this write opened), or on a shared ledger from the store.
fn open(w: &Work<'_>, rule: EscalationRule, key: &str) -> Result<Option<i64>> {
    if let Some(n) = w.st.opened_now(rule as i32, key) {
        return Ok(Some(n));
    }
    if w.shared {
        return open_escalation(w.c, rule, key);
    }
    Ok(w.w.open_escalation(rule as i32, key))
}

/// The escalation of `rule` open for `key` in the store, if one is.
fn open_escalation(c: &Connection, rule: EscalationRule, key: &str) -> Result<Option<i64>> {
    Ok(c.prepare_cached(OPEN_ESCALATION)?
        .query_row(params![rule as i32, key], |r| r.get(0))
        .optional()?)
}

/// Adds a report to the escalation open for `rule` and `key`, if one is:
/// then it needs no counting again. Returns whether it joined one.
/// `known` is the escalation open in the store when the caller has read it
/// ([`shared_facts`]).
pub fn join(
    w: &Work<'_>,
    rule: EscalationRule,
    key: &str,
    ticket_id: &str,
    known: Option<Option<i64>>,
) -> Result<bool> {
    let open = match (w.st.opened_now(rule as i32, key), known) {
        (Some(n), _) => Some(n),
        (None, Some(known)) => known,
        (None, None) => open(w, rule, key)?,
    };
    let Some(n) = open else {
        return Ok(false);
    };
    add_ticket(w.c, n, ticket_id)?;
    Ok(true)
}

/// An escalation id on the wire, "esc-{n}".
pub fn escalation_id(n: i64) -> String {
    format!("esc-{n}")
}

pub fn parse_escalation_id(id: &str) -> Option<i64> {
    id.strip_prefix("esc-")?.parse().ok().filter(|n| *n > 0)
}

fn read_escalation(c: &Connection, n: i64) -> Result<Option<Escalation>> {
    let head = c
        .prepare_cached(
            "SELECT rule, reason, category, handler, department, subject, state, open_ms
             FROM escalations WHERE n = ?1",
        )?
        .query_row([n], |r| {
            Ok(Escalation {
                id: escalation_id(n),
                rule: r.get(0)?,
                reason: r.get(1)?,
                category: r.get(2)?,
                handling_city: r.get(3)?,
                department: r.get(4)?,
                subject: r.get(5)?,
                state: r.get(6)?,
                open_time: Some(time::from_unix_ms(r.get(7)?)),
                ..Default::default()
            })
        })
        .optional()?;
    let Some(mut e) = head else {
        return Ok(None);
    };
    e.ticket_ids = c
        .prepare_cached("SELECT ticket_id FROM escalation_tickets WHERE n = ?1 ORDER BY pos")?
        .query_map([n], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    e.actions = c
        .prepare_cached(
            "SELECT kind, note, department, at_ms FROM escalation_actions WHERE n = ?1 ORDER BY pos",
        )?
        .query_map([n], |r| {
            Ok(EscalationAction {
                kind: r.get(0)?,
                note: r.get(1)?,
                department: r.get(2)?,
                time: Some(time::from_unix_ms(r.get(3)?)),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(e))
}

/// A rule's short name: "many_reports_one_matter", ...
pub fn rule_name(raw: i32) -> String {
    EscalationRule::try_from(raw)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("ESCALATION_RULE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// How many escalations are open, per rule (by its name, lowercase).
pub fn open_by_rule(c: &Connection) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    let mut stmt =
        c.prepare_cached("SELECT rule, count(*) FROM escalations WHERE state = 1 GROUP BY rule")?;
    let rows = stmt.query_map((), |r| Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (rule, n) = row?;
        out.insert(rule_name(rule), u64::try_from(n).unwrap_or(0));
    }
    Ok(out)
}

/// Filters of the supervision ledger's listing.
pub struct Filter {
    pub rule: Option<EscalationRule>,
    pub include_closed: bool,
    pub ticket_id: Option<String>,
}

/// Escalations newest first, from number `before` down, that `keep` lets
/// the viewer see; the number to go on from when there are more.
pub fn list(
    c: &Connection,
    f: &Filter,
    before: i64,
    limit: usize,
    keep: &dyn Fn(&Escalation) -> bool,
) -> Result<(Vec<Escalation>, Option<i64>)> {
    let ns: Vec<i64> = match &f.ticket_id {
        Some(t) => c
            .prepare_cached(
                "SELECT n FROM escalation_tickets WHERE ticket_id = ?1 AND n < ?2 ORDER BY n DESC",
            )?
            .query_map(params![t, before], |r| r.get(0))?
            .collect::<Result<_, _>>()?,
        None => c
            .prepare_cached(
                "SELECT n FROM escalations WHERE n < ?1 AND (?2 = 1 OR state = 1) AND (?3 = 0 OR rule = ?3)
                 ORDER BY n DESC",
            )?
            .query_map(
                params![
                    before,
                    f.include_closed,
                    f.rule.map(|r| r as i32).unwrap_or(0)
                ],
                |r| r.get(0),
            )?
            .collect::<Result<_, _>>()?,
    };
    let mut out = Vec::new();
    for n in ns {
        let Some(e) = read_escalation(c, n)? else {
            continue;
        };
        if f.ticket_id.is_some() {
            if !f.include_closed && e.state != EscalationState::Open as i32 {
                continue;
            }
            if f.rule.is_some_and(|r| r as i32 != e.rule) {
                continue;
            }
        }
        if !keep(&e) {
            continue;
        }
        if out.len() == limit {
            let next = out.last().map(|(n, _)| *n);
            return Ok((out.into_iter().map(|(_, e)| e).collect(), next));
        }
        out.push((n, e));
    }
    Ok((out.into_iter().map(|(_, e)| e).collect(), None))
}

/// Records an action of the province on an escalation.
pub fn act(
    w: &mut Work<'_>,
    n: i64,
    kind: EscalationActionKind,
    note: &str,
    department: &str,
    now_ms: i64,
) -> Result<Escalation> {
    let c = w.c;
    let Some(e) = read_escalation(c, n)? else {
        return Err(GatewayError::NotFound(format!(
            "escalation {} is not in the supervision ledger",
            escalation_id(n)
        )));
    };
    if e.state == EscalationState::Closed as i32 {
        return Err(GatewayError::FailedPrecondition(format!(
            "escalation {} is closed; it takes no more actions",
            e.id
        )));
    }
    c.prepare_cached(
        "INSERT INTO escalation_actions (n, pos, kind, note, department, at_ms)
         VALUES (?1, (SELECT count(*) FROM escalation_actions WHERE n = ?1), ?2, ?3, ?4, ?5)",
    )?
    .execute(params![n, kind as i32, note, department, now_ms])?;
    if kind == EscalationActionKind::Forwarded {
        c.write(
            "UPDATE escalations SET department = ?2 WHERE n = ?1",
            params![n, department],
        )?;
    }
    if kind == EscalationActionKind::Closed {
        c.write(
            "UPDATE escalations SET state = 2, close_ms = ?2 WHERE n = ?1",
            params![n, now_ms],
        )?;
        let key: String = c
            .prepare_cached("SELECT subject_key FROM escalations WHERE n = ?1")?
            .query_row([n], |r| r.get(0))?;
        w.st.closed(e.rule, &key);
    }
    read_escalation(c, n)?.ok_or_else(|| GatewayError::NotFound(escalation_id(n)))
}

/// One line of the daily digest.
#[derive(Debug, Default, Clone)]
pub struct DigestRow {
    pub opened: u64,
    pub actions: u64,
    pub closed: u64,
    pub open_now: u64,
}

/// The day `[from_ms, to_ms)`'s digest, per (rule, department), for the
/// escalations `keep` (handling city, category) lets the viewer see.
pub fn digest(
    c: &Connection,
    from_ms: i64,
    to_ms: i64,
    keep: &dyn Fn(&str, &str) -> bool,
) -> Result<BTreeMap<(i32, String), DigestRow>> {
    let mut out: BTreeMap<(i32, String), DigestRow> = BTreeMap::new();
    let mut stmt = c.prepare_cached(
        "SELECT rule, department, handler, category, open_ms, state, close_ms FROM escalations
         WHERE state = 1 OR (open_ms >= ?1 AND open_ms < ?2) OR (close_ms >= ?1 AND close_ms < ?2)",
    )?;
    let rows = stmt.query_map(params![from_ms, to_ms], |r| {
        Ok((
            r.get::<_, i32>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i32>(5)?,
            r.get::<_, Option<i64>>(6)?,
        ))
    })?;
    let within = |t: i64| t >= from_ms && t < to_ms;
    for row in rows {
        let (rule, dept, handler, category, open_ms, state, close_ms) = row?;
        if !keep(&handler, &category) {
            continue;
        }
        let line = out.entry((rule, dept)).or_default();
        line.opened += u64::from(within(open_ms));
        line.closed += u64::from(close_ms.is_some_and(within));
        line.open_now += u64::from(state == 1);
    }
    let mut stmt = c.prepare_cached(
        "SELECT e.rule, e.department, e.handler, e.category FROM escalation_actions a
         JOIN escalations e ON e.n = a.n WHERE a.at_ms >= ?1 AND a.at_ms < ?2",
    )?;
    let rows = stmt.query_map(params![from_ms, to_ms], |r| {
        Ok((
            r.get::<_, i32>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    for row in rows {
        let (rule, dept, handler, category) = row?;
        if keep(&handler, &category) {
            out.entry((rule, dept)).or_default().actions += 1;
        }
    }
    Ok(out)
}

/// The matters reported most in a month in `city` ("" for the province).
/// A matter whose reports are journaled, not checkpointed yet
/// ([`crate::fold`]), is read on its own and set in its place, all in one
/// snapshot.
pub fn top_matters(
    c: &Connection,
    month: i64,
    city: &str,
    limit: usize,
    keep: &dyn Fn(&str, &str) -> bool,
) -> Result<Vec<TopMatter>> {
    c.snapshot(|c| top_matters_now(c, month, city, limit, keep))
}

fn top_matters_now(
    c: &Connection,
    month: i64,
    city: &str,
    limit: usize,
    keep: &dyn Fn(&str, &str) -> bool,
) -> Result<Vec<TopMatter>> {
    let journaled = crate::fold::matters_journaled(c, month, city)?;
    let top = |r: &hotline_durable::sql::Row<'_>, extra: i64| -> Result<Option<TopMatter>> {
        let category: String = r.get(2)?;
        let handler: String = r.get(3)?;
        if !keep(&handler, &category) {
            return Ok(None);
        }
        Ok(Some(TopMatter {
            ticket_id: r.get(0)?,
            reports: u64::try_from(r.get::<_, i64>(1)? + extra).unwrap_or(0),
            category,
            handling_city: handler,
            subject: r.get(4)?,
            location: r.get(5)?,
        }))
    };
    let mut stmt = c.prepare_cached(
        "SELECT m.root, m.n, t.category, t.handler, t.subject, t.place
         FROM matter_months m JOIN matters t ON t.root = m.root
         WHERE m.month = ?1 AND m.city = ?2 ORDER BY m.n DESC, m.root",
    )?;
    let mut rows = stmt.query(params![month, city])?;
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(r) = rows.next()? else {
            break;
        };
        if journaled.contains_key(&r.get::<_, String>(0)?) {
            continue;
        }
        out.extend(top(&r, 0)?);
    }
    drop(rows);
    let mut one = c.prepare_cached(
        "SELECT t.root, coalesce(m.n, 0), t.category, t.handler, t.subject, t.place
         FROM matters t LEFT JOIN matter_months m ON m.root = t.root AND m.month = ?1 AND m.city = ?2
         WHERE t.root = ?3",
    )?;
    for (root, n) in &journaled {
        let mut rows = one.query(params![month, city, root])?;
        if let Some(r) = rows.next()? {
            out.extend(top(&r, *n)?);
        }
    }
    out.sort_by(|a, b| {
        b.reports
            .cmp(&a.reports)
            .then_with(|| a.ticket_id.cmp(&b.ticket_id))
    });
    out.truncate(limit);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::fold::Fold;

    #[test]
    fn the_top_matters_count_the_reports_not_checkpointed_yet() {
        let c = crate::fold::test_db();
        c.execute_batch(
            "CREATE TABLE matters (root TEXT PRIMARY KEY, category TEXT, handler TEXT,
               subject TEXT, place TEXT);",
        )
        .unwrap();
        for root in ["a", "b", "c", "d", "e"] {
            c.execute(
                "INSERT INTO matters VALUES (?1, 'water', 'yibin', 'no water', 'x')",
                [root],
            )
            .unwrap();
        }
        let month = 7;
        let mut f = Fold::default();
        for (root, n) in [("a", 5), ("b", 3), ("d", 4), ("e", 1)] {
            for _ in 0..n {
                f.matter(month, "yibin", root);
            }
        }
        // Another month and another city count apart.
        f.matter(month + 1, "yibin", "b");
        f.matter(month, "luzhou", "b");
        f.flush(&c, &mut crate::fold::Mine::due()).unwrap();
        // Journaled: c's first four reports, d's fifth.
        for (root, n) in [("c", 4), ("d", 1)] {
            let mut f = Fold::default();
            for _ in 0..n {
                f.matter(month, "yibin", root);
            }
            f.flush(&c, &mut crate::fold::Mine::default()).unwrap();
        }
        let top = |limit| {
            top_matters(&c, month, "yibin", limit, &|_, _| true)
                .unwrap()
                .into_iter()
                .map(|m| (m.ticket_id, m.reports))
                .collect::<Vec<_>>()
        };
        let want = vec![
            ("a".to_owned(), 5),
            ("d".to_owned(), 5),
            ("c".to_owned(), 4),
            ("b".to_owned(), 3),
        ];
        assert_eq!(top(3), want[..3]);
        assert_eq!(top(4), want);
        // Checkpointed, the same.
        Fold::default()
            .flush(&c, &mut crate::fold::Mine::due())
            .unwrap();
        assert_eq!(crate::fold::journal_rows(&c), 0);
        assert_eq!(top(4), want);
        // What the viewer may not see is left out.
        let none = top_matters(&c, month, "yibin", 4, &|_, _| false).unwrap();
        assert!(none.is_empty());
    }
}
