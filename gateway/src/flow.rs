//! The flow log: every ticket event and transfer move, in the order the
//! gateway committed them, written in the same transaction, with personal
//! data left out (folded per commit, [`crate::fold`]). `WatchFlow` reads it from a cursor, so a watcher that
//! reconnects with the last cursor it saw misses nothing and sees nothing
//! twice. A bell rings after each commit so watchers need not poll.

use hotline_durable::sql::{Connection, OptionalExtension, params};
use hotline_proto::pb::{
    FlowEvent, TicketEvent, TicketFlow, Transfer, TransferFlow, flow_event::Change,
};
use hotline_proto::time;
use prost::Message;
use tokio::sync::watch;

use crate::error::GatewayError;

/// What a ticket's flow entry says of it.
pub struct TicketSide<'a> {
    pub origin: &'a str,
    pub handler: &'a str,
    pub category: &'a str,
    pub urgent: bool,
}

/// A ticket event's flow entry (the commit's fold writes it:
/// [`crate::fold::Fold::flow`]).
pub fn ticket(side: TicketSide<'_>, event: &TicketEvent) -> Change {
    Change::Ticket(TicketFlow {
        ticket_id: event.ticket_id.clone(),
        origin_city: side.origin.to_owned(),
        handling_city: side.handler.to_owned(),
        category: side.category.to_owned(),
        seq: event.seq,
        kind: event.kind,
        status: event.status,
        urgent: side.urgent,
        actor: event.actor.clone(),
    })
}

/// A transfer move's flow entry.
pub fn transfer(t: &Transfer) -> Change {
    Change::Transfer(TransferFlow {
        transfer_id: t.id.clone(),
        origin_city: t.origin_city.clone(),
        target_city: t.target_city.clone(),
        category: t.category.clone(),
        mode: t.mode,
        state: t.state,
        reason: t.reason.clone(),
    })
}

/// How long a gap in the flow log's numbers may be a write still being
/// committed by another replica.
pub const GAP_GRACE_MS: i64 = 3_000;

/// Up to `limit` events after `cursor`, in order.
pub fn after(c: &Connection, cursor: u64, limit: usize) -> Result<Vec<FlowEvent>, GatewayError> {
    let mut stmt =
        c.prepare_cached("SELECT seq, body FROM flow_log WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = stmt.query_map(params![cursor as i64, limit as i64], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut out = Vec::new();
    // On a shared ledger another replica may have taken a number it has not
    // committed yet: stop at a gap until it fills, or until it is old enough
    // to be a rolled-back write's. One writer (SQLite) leaves no such gaps.
    let shared = c.is_postgres();
    let settled_before = time::now_ms() - GAP_GRACE_MS;
    let mut expected = cursor + 1;
    for row in rows {
        let (seq, body) = row?;
        let n = u64::try_from(seq).unwrap_or(0);
        if shared && cursor > 0 && n != expected {
            let at_ms = FlowEvent::decode(body.as_slice())
                .ok()
                .and_then(|e| e.time)
                .map(|t| time::to_unix_ms(&t))
                .unwrap_or(0);
            if at_ms > settled_before {
                break;
            }
        }
        expected = n + 1;
        let mut e = FlowEvent::decode(body.as_slice())
            .map_err(|e| GatewayError::Corrupt(format!("flow event {seq}"), e.to_string()))?;
        e.cursor = u64::try_from(seq).unwrap_or(0);
        out.push(e);
    }
    Ok(out)
}

/// The first and last cursors kept (`None` when the log is empty).
pub fn bounds(c: &Connection) -> Result<Option<(u64, u64)>, GatewayError> {
    let b: Option<(Option<i64>, Option<i64>)> = c
        .prepare_cached("SELECT min(seq), max(seq) FROM flow_log")?
        .query_row((), |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match b {
        Some((Some(lo), Some(hi))) => Some((
            u64::try_from(lo).unwrap_or(0),
            u64::try_from(hi).unwrap_or(0),
        )),
        _ => None,
    })
}

/// Deletes up to `limit` of the oldest events written before `cutoff_ms`;
/// returns how many went.
pub fn prune(c: &Connection, cutoff_ms: i64, limit: i64) -> Result<usize, GatewayError> {
    let oldest: Option<i64> = c
        .prepare_cached("SELECT seq FROM flow_log ORDER BY seq LIMIT 1")?
        .query_row((), |r| r.get(0))
        .optional()?;
    let Some(oldest) = oldest else {
        return Ok(0);
    };
    Ok(
        c.prepare_cached("DELETE FROM flow_log WHERE seq < ?1 AND at_ms < ?2")?
            .execute(params![oldest + limit, cutoff_ms])?,
    )
}

/// Rung after every commit that wrote to the flow log.
#[derive(Clone)]
pub struct Bell(watch::Sender<u64>);

impl Default for Bell {
    fn default() -> Self {
        Self(watch::channel(0).0)
    }
}

impl Bell {
    pub fn ring(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}
