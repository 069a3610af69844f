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
//! - `statistics`: the gateway's statistics equal the simulator's recount.
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
