//! Per-city statistics, kept up to date in the same transaction as each
//! change of the ledger, so a query reads a few small rows and never scans
//! tickets.
//!
//! - the windows ([`crate::windows`]): what happened in an hour, a day, a
//!   month, or since the start;
//! - `city_status`: how many of the tickets a city sent, or handles now, are
//!   in each status (the state now, not windowed).

use std::collections::HashMap;

use hotline_durable::sql::Connection;
use hotline_proto::pb::{CategoryFigures, CityStats};

use crate::error::GatewayError;
use crate::windows::{self, Duration, Histogram, Metric, Window};

pub const SENT: &str = "sent";
pub const RECEIVED: &str = "received";

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// One city's figures as they are summed up.
#[derive(Default)]
struct Tally {
    stats: CityStats,
    to_accept: Histogram,
    to_resolve: Histogram,
    answer_ms_sum: u64,
}

/// The statistics of the given cities over window `w` (zeros for a city
/// with no traffic), counting only `categories` when given. A viewer
/// limited to categories is not shown the status counts, which are kept
/// per city only.
pub fn read(
    conn: &Connection,
    w: Window,
    cities: &[String],
    categories: Option<&[String]>,
) -> Result<Vec<CityStats>, GatewayError> {
    let allowed = |cat: &str| categories.is_none_or(|c| c.iter().any(|x| x == cat));
    let mut out: HashMap<&str, Tally> = cities
        .iter()
        .map(|c| {
            let mut t = Tally::default();
            t.stats.city = c.clone();
            (c.as_str(), t)
        })
        .collect();
    for ((city, category), cell) in windows::read(conn, w, None)? {
        let Some(t) = out.get_mut(city.as_str()) else {
            continue;
        };
        if !allowed(&category) {
            continue;
        }
        let s = &mut t.stats;
        let f = CategoryFigures {
            sent: cell.get(Metric::Sent),
            received: cell.get(Metric::Received),
            accepted: cell.get(Metric::Accepted),
            rejected: cell.get(Metric::Rejected),
            resolved: cell.get(Metric::Resolved),
            resolved_on_time: cell.get(Metric::ResolvedOnTime),
            resolved_overdue: cell.get(Metric::ResolvedOverdue),
            satisfied: cell.get(Metric::Satisfied),
            basically_satisfied: cell.get(Metric::BasicallySatisfied),
            unsatisfied: cell.get(Metric::Unsatisfied),
            reopened: cell.get(Metric::Reopened),
            transfers_out: cell.get(Metric::TransfersOut),
            transfers_in: cell.get(Metric::TransfersIn),
            transfers_answered: cell.get(Metric::TransfersAnswered),
            merged: cell.get(Metric::Merged),
            linked: cell.get(Metric::Linked),
            escalated: cell.get(Metric::Escalated),
            dispatched_late: cell.get(Metric::DispatchedLate),
            accept_ms_p50: quantile(&cell.durations, Duration::ToAccept, 0.5),
            accept_ms_p90: quantile(&cell.durations, Duration::ToAccept, 0.9),
            resolve_ms_p50: quantile(&cell.durations, Duration::ToResolve, 0.5),
            resolve_ms_p90: quantile(&cell.durations, Duration::ToResolve, 0.9),
        };
        s.sent += f.sent;
        s.received += f.received;
        s.accepted += f.accepted;
        s.rejected += f.rejected;
        s.resolved += f.resolved;
        s.resolved_on_time += f.resolved_on_time;
        s.resolved_overdue += f.resolved_overdue;
        s.satisfied += f.satisfied;
        s.basically_satisfied += f.basically_satisfied;
        s.unsatisfied += f.unsatisfied;
        s.reopened += f.reopened;
        s.transfers_out += f.transfers_out;
        s.transfers_in += f.transfers_in;
        s.transfers_answered += f.transfers_answered;
        s.merged += f.merged;
        s.linked += f.linked;
        s.escalated += f.escalated;
        s.dispatched_late += f.dispatched_late;
        t.answer_ms_sum += cell.get(Metric::AnswerMsSum);
        for (state, n) in cell.details(Metric::TransferOutcome) {
            *s.transfers_in_by_outcome.entry(state.clone()).or_default() += n;
        }
        let by = |m: &mut HashMap<String, u64>, n: u64| {
            if n > 0 {
                m.insert(category.clone(), n);
            }
        };
        by(&mut s.sent_by_category, f.sent);
        by(&mut s.received_by_category, f.received);
        by(&mut s.transfers_out_by_category, f.transfers_out);
        by(&mut s.transfers_in_by_category, f.transfers_in);
        by(&mut s.transfers_answered_by_category, f.transfers_answered);
        if let Some(h) = cell.durations.get(&Duration::ToAccept) {
            t.to_accept.add(h);
        }
        if let Some(h) = cell.durations.get(&Duration::ToResolve) {
            t.to_resolve.add(h);
        }
        s.by_category.insert(category, f);
    }
    if categories.is_none() {
        read_statuses(conn, &mut out)?;
    }
    read_overdue(conn, &mut out, &allowed)?;
    Ok(cities
        .iter()
        .filter_map(|c| out.remove(c.as_str()))
        .map(|t| {
            let mut s = t.stats;
            s.answer_rate = ratio(s.transfers_answered, s.transfers_in);
            s.mean_answer_ms = ratio(t.answer_ms_sum, s.transfers_answered);
            s.satisfaction_rate = ratio(
                s.satisfied + s.basically_satisfied,
                s.satisfied + s.basically_satisfied + s.unsatisfied,
            );
            s.accept_ms_p50 = t.to_accept.quantile(0.5);
            s.accept_ms_p90 = t.to_accept.quantile(0.9);
            s.resolve_ms_p50 = t.to_resolve.quantile(0.5);
            s.resolve_ms_p90 = t.to_resolve.quantile(0.9);
            s
        })
        .collect())
}

fn quantile(h: &std::collections::BTreeMap<Duration, Histogram>, d: Duration, q: f64) -> f64 {
    h.get(&d).map(|h| h.quantile(q)).unwrap_or(0.0)
}

fn read_statuses(conn: &Connection, out: &mut HashMap<&str, Tally>) -> Result<(), GatewayError> {
    for ((city, direction, status), n) in crate::fold::statuses(conn)? {
        let Some(t) = out.get_mut(city.as_str()) else {
            continue;
        };
        let n = u64::try_from(n).unwrap_or(0);
        if direction == SENT {
            t.stats.sent_by_status.insert(status, n);
        } else {
            t.stats.received_by_status.insert(status, n);
        }
    }
    Ok(())
}

/// Open tickets past their deadline now, by handler: counted as they pass
/// it (the ledger's overdue sweep), so read from a few rows.
fn read_overdue(
    conn: &Connection,
    out: &mut HashMap<&str, Tally>,
    allowed: &dyn Fn(&str) -> bool,
) -> Result<(), GatewayError> {
    for ((city, category), n) in crate::fold::overdue_open(conn)? {
        if let Some(t) = out.get_mut(city.as_str())
            && allowed(&category)
        {
            t.stats.overdue_open += u64::try_from(n).unwrap_or(0);
        }
    }
    Ok(())
}

/// One cell of the flow matrix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flow {
    pub origin: String,
    pub target: String,
    pub category: String,
    pub tickets: u64,
    pub transfers: u64,
}

/// What went from each city to each other, per category, in window `w`:
/// the sent tickets and started transfers by their target.
pub fn flow_matrix(conn: &Connection, w: Window) -> Result<Vec<Flow>, GatewayError> {
    let contents = windows::read(conn, w, Some(&[Metric::Sent, Metric::TransfersOut]))?;
    let mut cells: std::collections::BTreeMap<(String, String, String), Flow> = Default::default();
    for ((origin, category), cell) in contents {
        for (m, is_ticket) in [(Metric::Sent, true), (Metric::TransfersOut, false)] {
            for (target, n) in cell.details(m) {
                let f = cells
                    .entry((origin.clone(), target.clone(), category.clone()))
                    .or_insert_with(|| Flow {
                        origin: origin.clone(),
                        target: target.clone(),
                        category: category.clone(),
                        ..Default::default()
                    });
                if is_ticket {
                    f.tickets += n;
                } else {
                    f.transfers += n;
                }
            }
        }
    }
    Ok(cells.into_values().collect())
}

/// Each city's categories in month `w`, by tickets sent plus calls
/// transferred, most first (ties in the order of `catalogue_order`).
pub fn top_categories(
    conn: &Connection,
    w: Window,
    catalogue_order: &[String],
) -> Result<HashMap<String, Vec<(String, u64)>>, GatewayError> {
    let contents = windows::read(conn, w, Some(&[Metric::Sent, Metric::TransfersOut]))?;
    let mut out: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    for ((city, category), cell) in contents {
        let n = cell.get(Metric::Sent) + cell.get(Metric::TransfersOut);
        if n > 0 {
            out.entry(city).or_default().push((category, n));
        }
    }
    let rank = |c: &str| {
        catalogue_order
            .iter()
            .position(|x| x == c)
            .unwrap_or(usize::MAX)
    };
    for list in out.values_mut() {
        list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| rank(&a.0).cmp(&rank(&b.0))));
    }
    Ok(out)
}

/// An open ticket past its deadline.
#[derive(Debug, Clone)]
pub struct Overdue {
    pub id: String,
    pub origin: String,
    pub handler: String,
    pub category: String,
    pub status: i32,
    pub due_ms: i64,
    pub urgent: bool,
    pub stage: String,
}

/// Open tickets past their deadline, the most overdue first: the first
/// `limit` that `keep` lets the viewer see, read through the index of
/// deadlines until that many are found, and how many the viewer may see in
/// all, from the overdue counts (`keep_count` says which of those counts,
/// by city and category, are the viewer's).
pub fn overdue(
    conn: &Connection,
    now_ms: i64,
    limit: usize,
    keep: &dyn Fn(&Overdue) -> bool,
    keep_count: &dyn Fn(&str, &str) -> bool,
) -> Result<(Vec<Overdue>, u64), GatewayError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, origin, handler, category, status, due_ms, urgent, stage FROM tickets
         WHERE due_ms IS NOT NULL AND overdue = 1
           AND due_ms <= ?1
         ORDER BY due_ms",
    )?;
    let mut rows = stmt.query([now_ms])?;
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(r) = rows.next()? else {
            break;
        };
        let o = Overdue {
            id: r.get(0)?,
            origin: r.get(1)?,
            handler: r.get(2)?,
            category: r.get(3)?,
            status: r.get(4)?,
            due_ms: r.get(5)?,
            urgent: r.get(6)?,
            stage: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
        };
        if keep(&o) {
            out.push(o);
        }
    }
    let mut total = 0;
    for ((city, category), n) in crate::fold::overdue_open(conn)? {
        if keep_count(&city, &category) {
            total += u64::try_from(n).unwrap_or(0);
        }
    }
    Ok((out, total))
}
