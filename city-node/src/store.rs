//! The node's store: the tickets this city sent, handles, or keeps for
//! itself, each with its history, and the outbox of what the gateway is
//! still owed. Every function here runs inside one write or read of the
//! database; a caller's whole change commits together or not at all.

use hotline_durable::outbox;
use hotline_durable::sql::{Connection, OptionalExtension, params};
use hotline_proto::pb::{EventKind, LinkedReport, Ticket, TicketEvent, TicketRole, TicketStatus};
use hotline_proto::state;
use prost::Message;

use crate::error::NodeError;

pub const SCHEMA: &str = "
CREATE TABLE tickets (
    id TEXT PRIMARY KEY,
    role INTEGER NOT NULL,
    is_part INTEGER NOT NULL DEFAULT 0,
    parent_id TEXT,
    status INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    request_id TEXT,
    body BLOB NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX tickets_by_request ON tickets (request_id)
    WHERE request_id IS NOT NULL AND role != 2 AND is_part = 0;
CREATE INDEX tickets_by_role ON tickets (role, is_part, id);
CREATE INDEX tickets_by_parent ON tickets (parent_id) WHERE parent_id IS NOT NULL;
CREATE TABLE events (
    ticket_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (ticket_id, seq)
) WITHOUT ROWID;
";

/// Outbox destination and kinds.
pub const GATEWAY: &str = "gateway";
pub const DISPATCH: &str = "dispatch";
pub const REPORT_EVENT: &str = "report-event";

pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// A stored ticket: its body (without history) and where it stands here.
#[derive(Debug, Clone)]
pub struct Stored {
    pub ticket: Ticket,
    pub role: TicketRole,
    pub is_part: bool,
}

fn corrupt(id: &str, what: impl std::fmt::Display) -> NodeError {
    NodeError::Corrupt(id.to_owned(), what.to_string())
}

pub fn load(c: &Connection, id: &str) -> Result<Option<Stored>> {
    let raw: Option<(i32, bool, Vec<u8>)> = c
        .prepare_cached("SELECT role, is_part, body FROM tickets WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    raw.map(|(role, is_part, body)| {
        Ok(Stored {
            ticket: Ticket::decode(body.as_slice()).map_err(|e| corrupt(id, e))?,
            role: TicketRole::try_from(role).map_err(|_| corrupt(id, format!("role {role}")))?,
            is_part,
        })
    })
    .transpose()
}

pub fn require(c: &Connection, id: &str) -> Result<Stored> {
    load(c, id)?.ok_or_else(|| NodeError::UnknownTicket(id.to_owned()))
}

/// Writes a ticket's row (insert or replace); its history is not touched.
pub fn save(c: &Connection, s: &Stored) -> Result<()> {
    let t = &s.ticket;
    let mut body = t.clone();
    body.history.clear();
    c.write(
        "INSERT INTO tickets (id, role, is_part, parent_id, status, seq, request_id, body, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (id) DO UPDATE SET role = excluded.role, status = excluded.status,
           seq = excluded.seq, body = excluded.body, updated_ms = excluded.updated_ms",
        params![
        t.id,
        s.role as i32,
        s.is_part,
        (!t.parent_id.is_empty()).then_some(&t.parent_id),
        t.status,
        t.seq as i64,
        (!t.request_id.is_empty()).then_some(&t.request_id),
        body.encode_to_vec(),
        hotline_proto::time::now_ms(),
    ],
    )?;
    Ok(())
}

pub fn insert_event(c: &Connection, e: &TicketEvent) -> Result<()> {
    c.write(
        "INSERT OR IGNORE INTO events (ticket_id, seq, body) VALUES (?1, ?2, ?3)",
        params![e.ticket_id, e.seq as i64, e.encode_to_vec()],
    )?;
    Ok(())
}

pub fn history(c: &Connection, id: &str) -> Result<Vec<TicketEvent>> {
    let mut stmt = c.prepare_cached("SELECT body FROM events WHERE ticket_id = ?1 ORDER BY seq")?;
    let rows = stmt.query_map([id], |r| r.get::<_, Vec<u8>>(0))?;
    rows.map(|b| TicketEvent::decode(b?.as_slice()).map_err(|e| corrupt(id, e)))
        .collect()
}

/// The ticket with its history.
pub fn full(c: &Connection, id: &str) -> Result<Ticket> {
    // A reader outside a transaction may see a write land between the two
    // reads: read again until the ticket and its history agree.
    let mut tries = 0;
    loop {
        let mut t = require(c, id)?.ticket;
        t.history = history(c, id)?;
        tries += 1;
        if t.history.len() as u64 == t.seq || tries >= 5 {
            return Ok(t);
        }
    }
}

/// Applies the next event of a ticket: checks its number and the state
/// machine, stores it, moves the ticket, and the parent's status with it.
pub fn apply(c: &Connection, stored: &mut Stored, event: &TicketEvent) -> Result<()> {
    let t = &mut stored.ticket;
    if event.seq != t.seq + 1 {
        return Err(NodeError::SequenceGap {
            ticket: t.id.clone(),
            have: t.seq,
            got: event.seq,
        });
    }
    let from = TicketStatus::try_from(t.status).map_err(|_| corrupt(&t.id, "status"))?;
    let kind = EventKind::try_from(event.kind)
        .map_err(|_| hotline_proto::ContractError::invalid("event.kind", "unknown value"))?;
    let to = state::next(from, kind)?;
    if event.status != to as i32 {
        return Err(NodeError::FailedPrecondition(format!(
            "event {} of ticket {} says status {}, the state machine says {}",
            event.seq,
            t.id,
            event.status,
            to.as_str_name()
        )));
    }
    t.status = to as i32;
    t.seq = event.seq;
    match kind {
        EventKind::Assigned => t.handling_city = event.city.clone(),
        EventKind::Reopened => t.reopen_count += 1,
        EventKind::Closed => t.satisfaction = event.satisfaction,
        _ => {}
    }
    insert_event(c, event)?;
    save(c, stored)?;
    // A part received from another city has its parent there, not here.
    if !stored.ticket.parent_id.is_empty() && stored.role != TicketRole::Received {
        refresh_parent(c, &stored.ticket.parent_id.clone())?;
    }
    Ok(())
}

/// Adds a report the gateway merged into a ticket here, once. Returns
/// whether it is new.
pub fn link(c: &Connection, id: &str, report: LinkedReport) -> Result<bool> {
    let mut stored = require(c, id)?;
    if stored
        .ticket
        .linked_reports
        .iter()
        .any(|r| r.ticket_id == report.ticket_id)
    {
        return Ok(false);
    }
    stored.ticket.linked_reports.push(report);
    save(c, &stored)?;
    Ok(true)
}

/// Applies an event the gateway delivers: once (a repeat is ignored), in
/// order (one ahead of a gap is refused, to be resent).
pub fn apply_remote(c: &Connection, event: &TicketEvent) -> Result<bool> {
    let mut stored = require(c, &event.ticket_id)?;
    if event.seq <= stored.ticket.seq {
        return Ok(false);
    }
    apply(c, &mut stored, event)?;
    Ok(true)
}

/// Parallel handling (并联办理): a parent is as far along as its least
/// advanced part.
pub fn refresh_parent(c: &Connection, parent_id: &str) -> Result<()> {
    let mut stmt = c.prepare_cached("SELECT status FROM tickets WHERE parent_id = ?1")?;
    let statuses: Vec<i32> = stmt
        .query_map([parent_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let status = state::parent_status(
        statuses
            .into_iter()
            .filter_map(|s| TicketStatus::try_from(s).ok()),
    );
    let mut parent = require(c, parent_id)?;
    if parent.ticket.status != status as i32 {
        parent.ticket.status = status as i32;
        save(c, &parent)?;
    }
    Ok(())
}

/// The parts of a parent, with their histories.
pub fn parts(c: &Connection, parent: &Ticket) -> Result<Vec<Ticket>> {
    parent.part_ids.iter().map(|id| full(c, id)).collect()
}

pub fn enqueue(c: &Connection, ticket: &Ticket, kind: &str, payload: Vec<u8>) -> Result<()> {
    let urgent = ticket.priority == hotline_proto::pb::Priority::Urgent as i32;
    outbox::enqueue(c, GATEWAY, &ticket.id, kind, &payload, urgent)?;
    Ok(())
}

/// A page of tickets, by id after `after`.
pub fn list(
    c: &Connection,
    role: TicketRole,
    status: TicketStatus,
    after: &str,
    limit: usize,
    with_history: bool,
) -> Result<Vec<Ticket>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, body FROM tickets
         WHERE id > ?1 AND (?2 = 0 OR (role = ?2 AND is_part = 0) OR (?2 = 3 AND role = 3))
           AND (?3 = 0 OR status = ?3)
         ORDER BY id LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![after, role as i32, status as i32, limit as i64],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)),
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (id, body) = row?;
        let mut t = Ticket::decode(body.as_slice()).map_err(|e| corrupt(&id, e))?;
        if with_history {
            t.history = history(c, &id)?;
            if t.history.len() as u64 != t.seq {
                // Changed since the list was read.
                t = full(c, &id)?;
            }
        }
        out.push(t);
    }
    Ok(out)
}

pub fn by_request_id(c: &Connection, request_id: &str) -> Result<Option<String>> {
    Ok(c.prepare_cached(
        "SELECT id FROM tickets WHERE request_id = ?1 AND role != 2 AND is_part = 0",
    )?
    .query_row([request_id], |r| r.get(0))
    .optional()?)
}
