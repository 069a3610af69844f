//! What must hold however the federation is treated, checked from the
//! nodes' and the gateway's own answers — live while a run goes on, and at
//! the end once it has settled:
//!
//! - `exactly-once`: every acknowledged ticket is delivered, and held once;
//! - `events-in-order`: every ticket's events are applied once and in order
//!   (sequence 1, 2, 3… with no gap or repeat), and at the end the origin
//!   and the handling city hold the same history;
//! - `route`: no ticket visits more cities than origin → target →
//!   coordination → owner;
//! - `transfer-terminal`: every transfer is terminal by its deadline, and
//!   ends the same at both cities;
//! - `statistics`: the gateway's statistics equal the simulator's recount;
//! - `merge`: the reports of one open matter were dispatched once, and
//!   merged into that dispatch, never into another matter's (合并派单);
//! - `rules`: each escalation rule fired for exactly the matters, citizens
//!   and tickets whose reports reach its threshold.
//!
//! A violation carries the ticket's or transfer's history, never a
//! citizen's name or number.

use std::collections::{BTreeMap, HashMap};

use hotline_proto::pb::city_hotline_client::CityHotlineClient;
use hotline_proto::pb::*;
use serde::Serialize;
use tonic::transport::Channel;

use crate::report::{Created, Report, list_tickets};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Violation {
    pub invariant: String,
    /// The ticket or transfer id (or the city, for statistics).
    pub subject: String,
    pub detail: String,
    /// Its events as the origin holds them, one per line.
    pub history: Vec<String>,
    /// Seen while the run went on (`live`) or at the end (`end`).
    pub found: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "VIOLATION {} ({}): {}: {}",
            self.invariant, self.found, self.subject, self.detail
        )?;
        for line in &self.history {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

fn name<E: std::fmt::Debug>(e: Result<E, prost::UnknownEnumValue>) -> String {
    e.map(|k| format!("{k:?}")).unwrap_or_else(|_| "?".into())
}

/// One event, as a line a person reads.
pub fn event_line(e: &TicketEvent) -> String {
    let time = e
        .time
        .as_ref()
        .map(|t| hotline_proto::time::to_unix_ms(t).to_string())
        .unwrap_or_default();
    let mut line = format!(
        "#{} {} by {} → {} (at {time} ms)",
        e.seq,
        name(EventKind::try_from(e.kind)),
        e.actor,
        name(TicketStatus::try_from(e.status)),
    );
    if !e.city.is_empty() {
        line.push_str(&format!(" city {}", e.city));
    }
    if !e.reason.is_empty() {
        line.push_str(&format!(" reason “{}”", e.reason));
    }
    line
}

fn in_order(t: &Ticket) -> Option<String> {
    let seqs: Vec<u64> = t.history.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    if seqs != expected {
        return Some(format!("events {seqs:?}: not 1, 2, 3… once each"));
    }
    if t.seq != seqs.len() as u64 {
        return Some(format!("at seq {} but holds {} events", t.seq, seqs.len()));
    }
    None
}

/// The checks on what each city holds: live during the run (`end` false)
/// and at the end, when the origin's and the handler's copies must also
/// agree.
pub async fn holdings(
    nodes: &BTreeMap<String, Channel>,
    gateway: &Channel,
    created: &[Created],
    end: bool,
) -> anyhow::Result<Vec<Violation>> {
    let found = if end { "end" } else { "live" };
    let mut received: BTreeMap<String, Vec<Ticket>> = BTreeMap::new();
    let mut origin_copies: HashMap<String, Ticket> = HashMap::new();
    for (city, channel) in nodes {
        let mut client = CityHotlineClient::new(channel.clone());
        received.insert(
            city.clone(),
            list_tickets(&mut client, TicketRole::Received, true).await?,
        );
        if end {
            // Every copy this city holds as the origin, parts included.
            for t in list_tickets(&mut client, TicketRole::Unspecified, true).await? {
                if t.origin_city == *city {
                    origin_copies.insert(t.id.clone(), t);
                }
            }
        }
    }
    // Read after the holdings: an owner's copy seen above was assigned
    // before it was delivered, so its assignment is in this list.
    let assigned = crate::report::owners(gateway).await?;
    let mut target_of: HashMap<String, String> = HashMap::new();
    for c in created {
        for (id, target) in c.units() {
            target_of.insert(id, target);
        }
    }
    let history_of = |id: &str, fallback: &Ticket| -> Vec<String> {
        origin_copies
            .get(id)
            .unwrap_or(fallback)
            .history
            .iter()
            .map(event_line)
            .collect()
    };
    let mut out = Vec::new();
    let mut violation = |invariant: &str, t: &Ticket, detail: String| {
        out.push(Violation {
            invariant: invariant.into(),
            subject: t.id.clone(),
            detail,
            history: history_of(&t.id, t),
            found: found.into(),
        });
    };
    for (city, tickets) in &received {
        let mut by_request: HashMap<&str, Vec<&Ticket>> = HashMap::new();
        for t in tickets {
            by_request.entry(t.request_id.as_str()).or_default().push(t);
            if let Some(why) = in_order(t) {
                violation("events-in-order", t, format!("at {city}: {why}"));
            }
            let assignments = t
                .history
                .iter()
                .filter(|e| e.kind == EventKind::Assigned as i32)
                .count();
            if assignments > 1 {
                violation(
                    "route",
                    t,
                    format!("assigned {assignments} times: coordination went round again"),
                );
            }
            if let Some(target) = target_of.get(&t.id) {
                let owner = assigned.get(&t.id);
                if city != target && Some(city) != owner {
                    violation(
                        "route",
                        t,
                        format!(
                            "held at {city}, neither its target {target} nor an owner named by coordination ({})",
                            owner.map(String::as_str).unwrap_or("none")
                        ),
                    );
                }
            }
            if end && let Some(o) = origin_copies.get(&t.id) {
                // The current handler's copy must have caught up with the
                // origin's; a city the ticket left (rejected, then owned
                // elsewhere) keeps the history up to its leaving.
                let handler = assigned.get(&t.id).unwrap_or(&t.handling_city);
                let kinds = |x: &Ticket| x.history.iter().map(|e| e.kind).collect::<Vec<_>>();
                if handler == city && (o.seq != t.seq || kinds(o) != kinds(t)) {
                    violation(
                        "events-in-order",
                        t,
                        format!(
                            "{city} holds seq {} ({:?}), the origin {} seq {}",
                            t.seq,
                            TicketStatus::try_from(t.status).unwrap_or_default(),
                            o.origin_city,
                            o.seq
                        ),
                    );
                }
            }
        }
        for (request, copies) in by_request {
            let n = copies.len();
            if n > 1 && !request.is_empty() {
                for t in copies {
                    violation(
                        "exactly-once",
                        t,
                        format!("{city} holds {n} tickets for one request"),
                    );
                }
            }
        }
    }
    Ok(out)
}

/// Everything at the end: the holdings, and what the recount in `report`
/// found lost, doubled, stuck or miscounted.
pub async fn at_end(
    report: &Report,
    nodes: &BTreeMap<String, Channel>,
    gateway: &Channel,
    created: &[Created],
) -> anyhow::Result<Vec<Violation>> {
    let mut out = holdings(nodes, gateway, created, true).await?;
    let origin_of: HashMap<&str, &str> = created
        .iter()
        .map(|c| (c.id.as_str(), c.origin.as_str()))
        .collect();
    let s = &report.suspects;
    for (id, should_be_at) in &s.lost {
        let parent = id.split('.').next().unwrap_or(id);
        let origin = origin_of.get(parent).copied().unwrap_or_default();
        out.push(Violation {
            invariant: "exactly-once".into(),
            subject: id.clone(),
            detail: format!("acknowledged by {origin}, not held at {should_be_at}"),
            history: history(nodes, origin, id).await,
            found: "end".into(),
        });
    }
    for (city, id, why) in &s.duplicated {
        out.push(Violation {
            invariant: "exactly-once".into(),
            subject: id.clone(),
            detail: format!("at {city}: {why}"),
            history: history(nodes, city, id).await,
            found: "end".into(),
        });
    }
    for (id, why) in &s.stuck {
        out.push(Violation {
            invariant: "transfer-terminal".into(),
            subject: id.clone(),
            detail: why.clone(),
            history: Vec::new(),
            found: "end".into(),
        });
    }
    for what in &s.statistics {
        out.push(Violation {
            invariant: "statistics".into(),
            subject: what.split(':').next().unwrap_or("gateway").to_owned(),
            detail: what.clone(),
            history: Vec::new(),
            found: "end".into(),
        });
    }
    // The same finding live and at the end is one violation.
    out.dedup_by(|a, b| a.invariant == b.invariant && a.subject == b.subject);
    Ok(out)
}

/// Transfers past their deadline (and the grace a node's sweep takes) that
/// are still neither terminal nor answered, at the origin or, when the
/// origin's node lost it, at the target. `ended` remembers the transfers
/// already seen terminal, so that each is asked about until then only.
pub async fn transfers_past_deadline(
    nodes: &BTreeMap<String, Channel>,
    started: &[crate::calls::Started],
    ended: &mut std::collections::HashSet<String>,
) -> anyhow::Result<Vec<Violation>> {
    let now = hotline_proto::time::now_ms();
    let mut out = Vec::new();
    for s in started {
        if ended.contains(&s.id)
            || now <= s.deadline_ms.saturating_add(crate::report::STUCK_GRACE_MS)
        {
            continue;
        }
        let view = match crate::report::transfer_at(nodes, &s.origin, &s.id).await? {
            Some(t) => Some((t, &s.origin)),
            None => crate::report::transfer_at(nodes, &s.target, &s.id)
                .await?
                .map(|t| (t, &s.target)),
        };
        let Some((t, city)) = view else {
            // Known to neither: nothing is waiting on it.
            ended.insert(s.id.clone());
            continue;
        };
        let state = TransferState::try_from(t.state).unwrap_or_default();
        if hotline_proto::transfer::is_terminal(state)
            || matches!(state, TransferState::Answered | TransferState::Conferenced)
        {
            ended.insert(s.id.clone());
            continue;
        }
        out.push(Violation {
            invariant: "transfer-terminal".into(),
            subject: s.id.clone(),
            detail: format!(
                "still {state:?} at {city}, {} ms past its deadline",
                now - s.deadline_ms
            ),
            history: vec![format!(
                "{} → {} in {}, {:?} mode",
                s.origin,
                s.target,
                s.category,
                TransferMode::try_from(t.mode).unwrap_or_default()
            )],
            found: "live".into(),
        });
        ended.insert(s.id.clone());
    }
    Ok(out)
}

/// `id`'s history as `city` holds it (empty when it holds none).
async fn history(nodes: &BTreeMap<String, Channel>, city: &str, id: &str) -> Vec<String> {
    let Some(channel) = nodes.get(city) else {
        return Vec::new();
    };
    CityHotlineClient::new(channel.clone())
        .get_ticket(GetTicketRequest {
            ticket_id: id.to_owned(),
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().ticket)
        .map(|t| t.history.iter().map(event_line).collect())
        .unwrap_or_default()
}

/// The matter a request is about, from its request id: a repeat on another
/// channel (`-again`) and the other citizens of a cluster (`-cluster-N`) tell
/// the matter of the request they follow.
fn matter_of(request_id: &str) -> &str {
    if let Some(base) = request_id.strip_suffix("-again") {
        return base;
    }
    if let Some(i) = request_id.rfind("-cluster-") {
        return &request_id[..i];
    }
    request_id
}

/// Every escalation the gateway's supervision ledger holds.
async fn escalations(gateway: &Channel) -> anyhow::Result<Vec<Escalation>> {
    let mut obs = hotline_proto::pb::observatory_client::ObservatoryClient::new(gateway.clone());
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = obs
            .list_escalations(ListEscalationsRequest {
                include_closed: true,
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(page.escalations);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// `merge` and `rules`, at the end: the run's reports of one open matter
/// were dispatched once and merged into that dispatch, never into another
/// matter's; and each escalation rule fired for exactly the matters,
/// citizens and tickets whose reports reach its threshold. Checked against
/// the thresholds the run gave the gateway, from the origins' stores.
pub async fn supervision(
    nodes: &BTreeMap<String, Channel>,
    gateway: &Channel,
    created: &[Created],
    v: &crate::scenario::Supervision,
) -> anyhow::Result<(Vec<Violation>, BTreeMap<String, u64>)> {
    use std::collections::BTreeSet;
    let units: BTreeSet<String> = created
        .iter()
        .flat_map(|c| c.units().into_iter().map(|(id, _)| id))
        .collect();
    let mut tickets: HashMap<String, Ticket> = HashMap::new();
    for (city, channel) in nodes {
        let mut client = CityHotlineClient::new(channel.clone());
        for t in list_tickets(&mut client, TicketRole::Unspecified, true).await? {
            if t.origin_city == *city && units.contains(&t.id) {
                tickets.insert(t.id.clone(), t);
            }
        }
    }
    let all = escalations(gateway).await?;
    let mut opened: BTreeMap<String, u64> = BTreeMap::new();
    for e in &all {
        *opened
            .entry(gateway::supervision::rule_name(e.rule))
            .or_default() += 1;
    }
    let escalated = |rule: EscalationRule| -> BTreeSet<&str> {
        all.iter()
            .filter(|e| e.rule == rule as i32)
            .flat_map(|e| e.ticket_ids.iter().map(String::as_str))
            .collect()
    };
    let mut out = Vec::new();
    let mut violation = |invariant: &str, t: &Ticket, detail: String| {
        out.push(Violation {
            invariant: invariant.into(),
            subject: t.id.clone(),
            detail,
            history: t.history.iter().map(event_line).collect(),
            found: "end".into(),
        });
    };
    let at = |t: &Ticket, seq: u64| {
        t.history
            .iter()
            .find(|e| e.seq == seq)
            .and_then(|e| e.time.as_ref())
            .map(hotline_proto::time::to_unix_ms)
            .unwrap_or(i64::MAX)
    };
    let closed_at = |t: &Ticket| {
        t.history
            .iter()
            .find(|e| e.kind == EventKind::Closed as i32)
            .and_then(|e| e.time.as_ref())
            .map(hotline_proto::time::to_unix_ms)
    };
    let merged = |t: &Ticket| t.status == TicketStatus::Merged as i32;

    // The run's reports (not parts of parallel tickets), by matter.
    let mut matters: BTreeMap<String, Vec<&Ticket>> = BTreeMap::new();
    for t in tickets.values().filter(|t| t.parent_id.is_empty()) {
        // A ticket with no request id (a failed transfer's) is a matter of
        // its own.
        let key = if t.request_id.is_empty() {
            t.id.clone()
        } else {
            format!("{}/{}", t.origin_city, matter_of(&t.request_id))
        };
        matters.entry(key).or_default().push(t);
    }
    let cluster = escalated(EscalationRule::ManyReportsOneMatter);
    let emergency = escalated(EscalationRule::Emergency);
    let emergency_categories = hotline_proto::catalogue::EMERGENCY_CATEGORIES;
    for reports in matters.values_mut() {
        reports.sort_by_key(|t| at(t, 2));
        let ids: BTreeSet<&str> = reports.iter().map(|t| t.id.as_str()).collect();
        let mut dispatched: Vec<&Ticket> = Vec::new();
        for t in reports.iter() {
            if merged(t) {
                let into = t
                    .history
                    .iter()
                    .find(|e| e.kind == EventKind::Merged as i32)
                    .map(|e| e.linked_ticket_id.as_str())
                    .unwrap_or_default();
                if !ids.contains(into) {
                    violation(
                        "merge",
                        t,
                        format!("merged into {into}, which is not a report of the same matter"),
                    );
                }
                if !v.merge {
                    violation("merge", t, "merged although merging is off".into());
                }
                continue;
            }
            if v.merge {
                let when = at(t, 2);
                if let Some(open) = dispatched
                    .iter()
                    .find(|e| closed_at(e).is_none_or(|c| c > when))
                {
                    violation(
                        "merge",
                        t,
                        format!(
                            "dispatched again while {} about the same matter was open",
                            open.id
                        ),
                    );
                }
            }
            dispatched.push(t);
        }
        // 多人一诉: fired for the matter if and only if enough citizens.
        let citizens: BTreeSet<String> = reports
            .iter()
            .map(|t| {
                t.citizen
                    .as_ref()
                    .map(|c| c.phone.clone())
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| t.id.clone())
            })
            .collect();
        let expected = citizens.len() as u64 >= u64::from(v.cluster_citizens);
        let fired = ids.iter().any(|id| cluster.contains(id));
        if expected != fired {
            violation(
                "rules",
                reports[0],
                format!(
                    "{} citizens reported this matter (the rule: {}), and the many-reports rule {}",
                    citizens.len(),
                    v.cluster_citizens,
                    if fired { "fired" } else { "did not fire" }
                ),
            );
        }
    }
    // Emergencies: every report in an emergency category, and no other.
    for t in tickets.values() {
        let expected = emergency_categories.contains(&t.category.as_str());
        if expected != emergency.contains(t.id.as_str()) {
            violation(
                "rules",
                t,
                format!(
                    "category {}: the emergency rule {}",
                    t.category,
                    if expected { "did not fire" } else { "fired" }
                ),
            );
        }
    }
    // 一人多诉: per citizen, if and only if enough reports.
    let repeat = escalated(EscalationRule::OneCitizenManyRequests);
    let mut by_citizen: BTreeMap<&str, Vec<&Ticket>> = BTreeMap::new();
    for t in tickets.values().filter(|t| t.parent_id.is_empty()) {
        if let Some(c) = t.citizen.as_ref().filter(|c| !c.phone.is_empty()) {
            by_citizen.entry(c.phone.as_str()).or_default().push(t);
        }
    }
    for reports in by_citizen.values() {
        let expected = reports.len() as u64 >= u64::from(v.repeat_reports);
        let fired = reports.iter().any(|t| repeat.contains(t.id.as_str()));
        if expected != fired {
            violation(
                "rules",
                reports[0],
                format!(
                    "one citizen made {} reports (the rule: {}), and the repeat-caller rule {}",
                    reports.len(),
                    v.repeat_reports,
                    if fired { "fired" } else { "did not fire" }
                ),
            );
        }
    }
    // Re-handled and still unsatisfied.
    let unsatisfied = escalated(EscalationRule::StillUnsatisfied);
    let k = u64::from(v.rehandled_times);
    for t in tickets.values() {
        let reopens = t
            .history
            .iter()
            .filter(|e| e.kind == EventKind::Reopened as i32)
            .count() as u64;
        let closed_unhappy = t.history.iter().any(|e| {
            e.kind == EventKind::Closed as i32 && e.satisfaction == Satisfaction::Unsatisfied as i32
        });
        let expected = reopens > k || (closed_unhappy && reopens >= k);
        if expected != unsatisfied.contains(t.id.as_str()) {
            violation(
                "rules",
                t,
                format!(
                    "reopened {reopens} times, closed {}unsatisfied (the rule: {k}), and the rule {}",
                    if closed_unhappy { "" } else { "not " },
                    if expected { "did not fire" } else { "fired" }
                ),
            );
        }
    }
    Ok((out, opened))
}
