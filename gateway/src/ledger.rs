//! The ledger: every cross-city ticket and event the gateway has committed,
//! the coordination queue, and the outbox of what each city is still owed.
//!
//! Each operation is one transaction: the ticket or event, the statistics it
//! moves, and the outbox items it makes are committed together, before the
//! caller is answered. The ledger is the one order of a ticket's events:
//! an event is accepted only as the next number after the last one, by the
//! party the state machine names for it.
//!
//! Each step loads the ticket's row and the facts its rules need, lets
//! [`crate::rules`] decide (pure functions, unit-tested there), and writes
//! what they decided. The counters a step moves go into the commit's fold
//! ([`crate::fold`]), written once per commit; the merge candidates, the
//! open escalations and the citizens' key come from the working set in
//! memory ([`crate::working`]).

use std::sync::Arc;

use hotline_durable::sql::{Connection, OptionalExtension, params};
use hotline_durable::{Db, Outbox, outbox};
use hotline_proto::pb::{
    CoordinationItem, DeliverEventRequest, DeliverLinkRequest, DeliverTicketRequest,
    EscalationRule, EventKind, LinkedReport, Satisfaction, Ticket, TicketEvent, TicketStatus,
};
use hotline_proto::state::{self, Actor};
use hotline_proto::{Catalogue, ContractError, time};
use prost::Message as _;

use crate::error::GatewayError;
use crate::flow::{self, Bell, TicketSide};
use crate::matter;
use crate::rules::{self, Effect, ReportFacts, Row, Verdict};
use crate::stats::{self, RECEIVED, SENT};
use crate::supervision::{self, Policy};
use crate::windows::{self, DAY_MS, HOUR_MS, Metric};
use crate::working::{Work, Working};

/// Outbox kinds.
pub const DELIVER_TICKET: &str = "deliver-ticket";
pub const DELIVER_EVENT: &str = "deliver-event";
pub const DELIVER_LINK: &str = "deliver-link";

/// The gateway's durable state.
#[derive(Clone)]
pub struct Ledger {
    db: Db,
    outbox: Outbox,
    catalogue: Arc<Catalogue>,
    policy: Policy,
    bell: Bell,
    working: Arc<Working>,
}

type Result<T, E = GatewayError> = std::result::Result<T, E>;

impl Ledger {
    /// Opens the SQLite ledger at `path`.
    pub fn open(path: &std::path::Path, catalogue: Arc<Catalogue>, policy: Policy) -> Result<Self> {
        Self::open_store(
            &hotline_durable::Store::Sqlite(path.to_owned()),
            catalogue,
            policy,
        )
    }

    /// Opens the ledger in `store`, bringing its schema up to date.
    pub fn open_store(
        store: &hotline_durable::Store,
        catalogue: Arc<Catalogue>,
        policy: Policy,
    ) -> Result<Self> {
        let scope = match store {
            hotline_durable::Store::Postgres { schema, .. } => schema.as_str(),
            hotline_durable::Store::Sqlite(_) => "",
        };
        let working = Arc::new(Working::new(scope));
        let db = Db::open_with_hooks(store, &crate::schema::MIGRATIONS, working.clone())?;
        Ok(Self {
            db,
            outbox: Outbox::new(),
            catalogue,
            policy,
            bell: Bell::default(),
            working,
        })
    }

    /// Runs `f` as one write of the ledger, in the writer's next
    /// transaction: with the working set, and what `f` stages handed to it
    /// once `f` has succeeded.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Work<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let ledger = self.clone();
        self.db.write(move |c| ledger.with_work(c, f)).await
    }

    /// Runs `f` as a write of the ledger inside a write the caller is
    /// already in (on the writer's connection `c`).
    pub fn with_work<T>(
        &self,
        c: &Connection,
        f: impl FnOnce(&mut Work<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut w = Work::new(c, &self.policy, &self.working)?;
        let out = f(&mut w)?;
        w.finish();
        Ok(out)
    }

    /// The same ledger reading through at most `n` connections.
    pub fn with_readers(mut self, n: usize) -> Self {
        self.db = self
            .db
            .with_readers(n, hotline_durable::db::DEFAULT_READ_WAIT);
        self
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Rung after each commit that adds to the flow log.
    pub fn bell(&self) -> &Bell {
        &self.bell
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Commits a dispatched ticket (already validated) and queues it for its
    /// target. A retry of the same ticket returns the same DISPATCHED event.
    pub async fn dispatch(&self, ticket: Ticket) -> Result<TicketEvent> {
        let (event, wake) = self.write(move |w| dispatch(w, ticket)).await?;
        if !wake.is_empty() {
            for dest in wake {
                self.outbox.wake(&dest);
            }
            self.bell.ring();
        }
        Ok(event)
    }

    /// Commits an event a city reports and queues it for the other side.
    pub async fn report(&self, city: String, event: TicketEvent) -> Result<Vec<TicketEvent>> {
        let (events, wake) = self.write(move |w| report(w, &city, event)).await?;
        for dest in wake {
            self.outbox.wake(&dest);
        }
        self.bell.ring();
        Ok(events)
    }

    /// Coordination names the owner of a rejected ticket.
    pub async fn assign(
        &self,
        ticket_id: String,
        owner: String,
        note: String,
    ) -> Result<TicketEvent> {
        let (event, wake) = self
            .write(move |w| assign(w, &ticket_id, &owner, &note))
            .await?;
        for dest in wake {
            self.outbox.wake(&dest);
        }
        self.bell.ring();
        Ok(event)
    }

    pub async fn coordination(
        &self,
        after: i64,
        limit: usize,
        include_assigned: bool,
    ) -> Result<(Vec<CoordinationItem>, Option<i64>)> {
        self.db
            .read(move |c| coordination(c, after, limit, include_assigned))
            .await
    }

    pub async fn ticket(&self, id: String) -> Result<Ticket> {
        self.db
            .read(move |c| snapshot(c, &id)?.ok_or_else(|| GatewayError::UnknownTicket(id.clone())))
            .await
    }

    /// The figures of `cities` over window `w`, counting only `categories`
    /// when given.
    pub async fn stats(
        &self,
        w: windows::Window,
        cities: Vec<String>,
        categories: Option<Vec<String>>,
    ) -> Result<Vec<hotline_proto::pb::CityStats>> {
        self.db
            .read(move |c| stats::read(c, w, &cities, categories.as_deref()))
            .await
    }
}

fn decode<M: prost::Message + Default>(id: &str, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| GatewayError::Corrupt(id.to_owned(), e.to_string()))
}

fn status_of(id: &str, raw: i64) -> Result<TicketStatus> {
    i32::try_from(raw)
        .ok()
        .and_then(|v| TicketStatus::try_from(v).ok())
        .ok_or_else(|| GatewayError::Corrupt(id.to_owned(), format!("status {raw}")))
}

fn load(c: &Connection, id: &str) -> Result<Option<Row>> {
    let raw = c
        .prepare_cached(
            "SELECT origin, handler, category, urgent, status, seq, created_ms, due_ms, overdue,
                    kind, stage, resolve_due_ms, late_ms
             FROM tickets WHERE id = ?1 /*FOR UPDATE*/",
        )?
        .query_row([id], |r| {
            Ok((
                (
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                ),
                (
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, bool>(8)?,
                ),
                (
                    r.get::<_, i32>(9)?,
                    r.get::<_, Option<String>>(10)?,
                    r.get::<_, Option<i64>>(11)?,
                    r.get::<_, Option<i64>>(12)?,
                ),
            ))
        })
        .optional()?;
    raw.map(
        |(
            (origin, handler, category, urgent),
            (status, seq, created_ms, due_ms, overdue),
            (kind, stage, resolve_due_ms, late_ms),
        )| {
            Ok(Row {
                origin,
                handler,
                category,
                urgent,
                kind,
                status: status_of(id, status)?,
                seq: u64::try_from(seq).unwrap_or(0),
                created_ms,
                due_ms,
                stage,
                overdue,
                resolve_due_ms,
                late_ms,
            })
        },
    )
    .transpose()
}

fn history(c: &Connection, id: &str) -> Result<Vec<TicketEvent>> {
    let mut stmt = c.prepare_cached("SELECT body FROM events WHERE ticket_id = ?1 ORDER BY seq")?;
    let rows = stmt.query_map([id], |r| r.get::<_, Vec<u8>>(0))?;
    rows.map(|b| decode(id, &b?)).collect()
}

fn stored_event(c: &Connection, id: &str, seq: u64) -> Result<Option<TicketEvent>> {
    let body: Option<Vec<u8>> = c
        .prepare_cached("SELECT body FROM events WHERE ticket_id = ?1 AND seq = ?2")?
        .query_row(params![id, seq as i64], |r| r.get(0))
        .optional()?;
    body.map(|b| decode(id, &b)).transpose()
}

/// The reports merged into a ticket, in the order they came.
fn links(c: &Connection, id: &str) -> Result<Vec<LinkedReport>> {
    let mut stmt =
        c.prepare_cached("SELECT report FROM links WHERE ticket_id = ?1 ORDER BY pos")?;
    let rows = stmt.query_map([id], |r| r.get::<_, Vec<u8>>(0))?;
    rows.map(|b| decode(id, &b?)).collect()
}

/// The ticket as the ledger knows it now, with its history.
fn snapshot(c: &Connection, id: &str) -> Result<Option<Ticket>> {
    let raw: Option<(Vec<u8>, String, i64, i64)> = c
        .prepare_cached("SELECT body, handler, status, seq FROM tickets WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((body, handler, status, seq)) = raw else {
        return Ok(None);
    };
    let mut t: Ticket = decode(id, &body)?;
    t.handling_city = handler;
    t.status = status_of(id, status)? as i32;
    t.seq = u64::try_from(seq).unwrap_or(0);
    t.history = history(c, id)?;
    t.linked_reports = links(c, id)?;
    for e in &t.history {
        match EventKind::try_from(e.kind) {
            Ok(EventKind::Reopened) => t.reopen_count += 1,
            Ok(EventKind::Closed) => t.satisfaction = e.satisfaction,
            _ => {}
        }
    }
    Ok(Some(t))
}

/// Writes what the rules decided an event moves on the ticket `row` (of
/// `id`): the counters into the commit's fold, an escalation when it
/// became long unresolved.
fn apply(w: &mut Work<'_>, id: &str, row: &Row, effects: Vec<Effect>, now: i64) -> Result<()> {
    for e in effects {
        match e {
            Effect::Count {
                city,
                metric,
                detail,
                n,
            } => {
                w.st.fold
                    .count(now, &city, &row.category, metric, &detail, n)
            }
            Effect::Observe { city, what, ms } => {
                w.st.fold.observe(now, &city, &row.category, what, ms)
            }
            Effect::Status {
                city,
                direction,
                from,
                to,
            } => w.st.fold.status(&city, direction, from, to),
            Effect::Overdue { city, n } => w.st.fold.overdue(&city, &row.category, n),
            Effect::LongUnresolved => escalate_long_unresolved(w, id, row, now)?,
        }
    }
    Ok(())
}

/// Appends an event and moves the ticket, its deadline, the statistics and
/// the flow log with it, as [`rules::step`] decides.
fn append(w: &mut Work<'_>, row: &mut Row, id: &str, event: &TicketEvent) -> Result<()> {
    let to = status_of(id, i64::from(event.status))?;
    let now = time::now_ms();
    let c = w.c;
    insert_event(c, event)?;
    let kind = EventKind::try_from(event.kind).unwrap_or(EventKind::Unspecified);
    let step = rules::step(row, kind, to, event.satisfaction, now, w.p);
    apply(w, id, &step.row, step.effects, now)?;
    *row = step.row;
    row.seq = event.seq;
    c.write(
        "UPDATE tickets SET status = ?2, seq = ?3, updated_ms = ?4, due_ms = ?5, overdue = ?6,
           stage = ?7, resolve_due_ms = ?8, late_ms = ?9, handler = ?10
         WHERE id = ?1",
        params![
            id,
            to as i32,
            event.seq as i64,
            now,
            row.due_ms,
            row.overdue,
            row.stage,
            row.resolve_due_ms,
            row.late_ms,
            row.handler
        ],
    )?;
    flow_entry(w, row, event, now);
    Ok(())
}

/// The flow log's entry of an event of the ticket `row` (folded with the
/// commit).
fn flow_entry(w: &mut Work<'_>, row: &Row, event: &TicketEvent, now: i64) {
    let side = TicketSide {
        origin: &row.origin,
        handler: &row.handler,
        category: &row.category,
        urgent: row.urgent,
    };
    w.st.fold.flow(now, flow::ticket(side, event));
}

fn escalate_long_unresolved(w: &mut Work<'_>, id: &str, row: &Row, now: i64) -> Result<()> {
    let due = row.resolve_due_ms.unwrap_or(now);
    let days = (now - due).max(0) / DAY_MS;
    let subject = subject_of(w.c, id)?;
    let reason = format!(
        "open {days} days past its resolution deadline (the rule: {} working days past it)",
        w.p.rules().long_unresolved_working_days
    );
    supervision::escalate(
        w,
        &supervision::Subject {
            rule: EscalationRule::LongUnresolved,
            key: id,
            reason,
            category: &row.category,
            handler: &row.handler,
            subject: &subject,
        },
        &[id.to_owned()],
        now,
    )?;
    Ok(())
}

/// A ticket's subject, from its stored body.
fn subject_of(c: &Connection, id: &str) -> Result<String> {
    let body: Vec<u8> = c
        .prepare_cached("SELECT body FROM tickets WHERE id = ?1")?
        .query_row([id], |r| r.get(0))?;
    Ok(decode::<Ticket>(id, &body)?.subject)
}

/// What the ledger owes a city, as the outbox keeps it.
pub enum Message {
    /// A ticket to its handler, with the DELIVERED event it will have once
    /// the handler commits it.
    DeliverTicket(Box<DeliverTicketRequest>),
    /// An event to the other side of a ticket.
    DeliverEvent(DeliverEventRequest),
    /// A report merged into a ticket, to its origin and handler.
    DeliverLink(DeliverLinkRequest),
}

impl Message {
    fn kind(&self) -> &'static str {
        match self {
            Message::DeliverTicket(_) => DELIVER_TICKET,
            Message::DeliverEvent(_) => DELIVER_EVENT,
            Message::DeliverLink(_) => DELIVER_LINK,
        }
    }

    fn payload(&self) -> Vec<u8> {
        match self {
            Message::DeliverTicket(m) => m.encode_to_vec(),
            Message::DeliverEvent(m) => m.encode_to_vec(),
            Message::DeliverLink(m) => m.encode_to_vec(),
        }
    }

    /// Reads an outbox item back.
    pub fn decode(kind: &str, payload: &[u8]) -> std::result::Result<Self, String> {
        let bad = |e: prost::DecodeError| format!("payload does not decode: {e}");
        match kind {
            DELIVER_TICKET => Ok(Message::DeliverTicket(Box::new(
                DeliverTicketRequest::decode(payload).map_err(bad)?,
            ))),
            DELIVER_EVENT => Ok(Message::DeliverEvent(
                DeliverEventRequest::decode(payload).map_err(bad)?,
            )),
            DELIVER_LINK => Ok(Message::DeliverLink(
                DeliverLinkRequest::decode(payload).map_err(bad)?,
            )),
            other => Err(format!("unknown outbox kind {other:?}")),
        }
    }
}

/// Queues `m` for `dest` about ticket `id`.
fn send(c: &Connection, dest: &str, id: &str, m: &Message, urgent: bool) -> Result<()> {
    outbox::enqueue(c, dest, id, m.kind(), &m.payload(), urgent)?;
    Ok(())
}

fn enqueue_event(c: &Connection, dest: &str, row: &Row, event: &TicketEvent) -> Result<()> {
    let m = Message::DeliverEvent(DeliverEventRequest {
        event: Some(event.clone()),
    });
    send(c, dest, &event.ticket_id, &m, row.urgent)
}

/// Queues the ticket for its handler, with the DELIVERED event it will have
/// once the handler commits it. `known` is the ticket as the ledger holds
/// it when the caller has it at hand (a dispatch); else it is read.
fn enqueue_delivery(c: &Connection, id: &str, row: &Row, known: Option<Ticket>) -> Result<()> {
    let mut ticket = match known {
        Some(t) => t,
        None => snapshot(c, id)?.ok_or_else(|| GatewayError::UnknownTicket(id.to_owned()))?,
    };
    let mut delivered = state::event(
        id,
        row.seq + 1,
        EventKind::Delivered,
        "gateway",
        TicketStatus::Delivered,
    );
    delivered.city = row.handler.clone();
    ticket.history.push(delivered);
    ticket.status = TicketStatus::Delivered as i32;
    ticket.seq = row.seq + 1;
    let m = Message::DeliverTicket(Box::new(DeliverTicketRequest {
        ticket: Some(ticket),
    }));
    send(c, &row.handler, id, &m, row.urgent)
}

/// Commits a dispatched ticket: merged into an open ticket about the same
/// matter (合并派单), or queued for its target; then the escalation rules it
/// sets off. Returns the event to answer with and the destinations to wake
/// (none for a retry).
fn dispatch(w: &mut Work<'_>, mut ticket: Ticket) -> Result<(TicketEvent, Vec<String>)> {
    let c = w.c;
    let id = ticket.id.clone();
    let now = time::now_ms();
    // The sender's CREATED event is not stored as sent: only when it says
    // it was made counts, if that is a time the ledger can believe.
    let sent_created = ticket
        .history
        .first()
        .filter(|e| e.kind == EventKind::Created as i32 && e.seq == 1)
        .and_then(|e| e.time.as_ref())
        .and_then(time::checked_unix_ms);
    rules::clear_output_only(&mut ticket);
    let body = ticket.encode_to_vec();

    let existing: Option<Vec<u8>> = c
        .prepare_cached("SELECT body FROM tickets WHERE id = ?1")?
        .query_row([&id], |r| r.get(0))
        .optional()?;
    if let Some(stored) = existing {
        if stored != body {
            return Err(GatewayError::AlreadyExists(format!(
                "ticket {id} is already in the ledger with other content"
            )));
        }
        let event = stored_event(c, &id, 2)?
            .ok_or_else(|| GatewayError::Corrupt(id.clone(), "no DISPATCHED event".into()))?;
        return Ok((event, Vec::new()));
    }

    let target = ticket.target_cities.first().cloned().unwrap_or_default();
    let urgent = ticket.priority == hotline_proto::pb::Priority::Urgent as i32;
    let created_ms = ticket
        .create_time
        .as_ref()
        .map(time::to_unix_ms)
        .unwrap_or(now);

    // Is it about a matter already reported?
    let fingerprint = matter::fingerprint(&ticket.subject, &ticket.description, &ticket.location);
    let phone = ticket
        .citizen
        .as_ref()
        .map(|c| c.phone.as_str())
        .unwrap_or("");
    let citizen = supervision::citizen_key(w, phone, &id)?;
    let rules = w.p.rules().clone();
    let found = if ticket.parent_id.is_empty() {
        supervision::find_matches(
            w,
            &target,
            &ticket.category,
            &fingerprint,
            created_ms - supervision::horizon_ms(w.p),
        )?
    } else {
        // A part of parallel handling is one city's share of a ticket, not
        // a report of its own.
        Vec::new()
    };
    // The first of the tickets the matches stand for (the one a merged
    // report joined), best first, that the report may merge into; each
    // loaded once, and no more than it takes to find one.
    let mut merge_into = None;
    let mut merged_root = None;
    let mut tried: Vec<&str> = Vec::new();
    for m in found.iter().take_while(|_| rules.merge_window_hours > 0) {
        let into = m.merged_into.as_deref().unwrap_or(&m.ticket_id);
        if tried.contains(&into) {
            continue;
        }
        tried.push(into);
        if let Some(r) = load(c, into)?
            && rules::mergeable(rules.merge_window_hours, created_ms, &r)
        {
            merge_into = Some((into.to_owned(), r));
            merged_root = Some(m.root.clone());
            break;
        }
    }

    let created = rules::created_event(&id, &ticket.origin_city, sent_created, created_ms, now);

    let mut row = Row {
        origin: ticket.origin_city.clone(),
        handler: target.clone(),
        category: ticket.category.clone(),
        urgent,
        kind: ticket.kind,
        status: TicketStatus::Pending,
        seq: 1,
        created_ms,
        due_ms: None,
        stage: None,
        overdue: false,
        resolve_due_ms: None,
        late_ms: None,
    };
    // The matter it counts for: the one it merged into, else its best
    // match's, else its own.
    let root = merged_root
        .or_else(|| found.first().map(|m| m.root.clone()))
        .unwrap_or_else(|| id.clone());
    let parent = (!ticket.parent_id.is_empty()).then_some(ticket.parent_id.as_str());
    // The ticket's row is written once, as the step leaves it.
    let (answer, mut wake, handler) = match merge_into {
        Some((into, primary)) => {
            row.status = TicketStatus::Merged;
            row.seq = 2;
            insert_ticket(c, &id, &row, parent, &body, now)?;
            insert_event(c, &created)?;
            let (event, wake) = merge(w, &ticket, &row, &into, &primary, now)?;
            (event, wake, primary.handler)
        }
        None => {
            w.st.fold
                .status(&row.origin, SENT, None, Some(TicketStatus::Pending));
            w.st.fold
                .status(&row.handler, RECEIVED, None, Some(TicketStatus::Pending));
            let mut dispatched = state::event(
                &id,
                2,
                EventKind::Dispatched,
                "gateway",
                TicketStatus::Dispatched,
            );
            dispatched.city = target.clone();
            let step = rules::step(
                &row,
                EventKind::Dispatched,
                TicketStatus::Dispatched,
                0,
                now,
                w.p,
            );
            row = step.row;
            row.seq = 2;
            insert_ticket(c, &id, &row, parent, &body, now)?;
            insert_event(c, &created)?;
            insert_event(c, &dispatched)?;
            apply(w, &id, &row, step.effects, now)?;
            flow_entry(w, &row, &dispatched, now);
            // The ticket as the ledger now holds it, without reading it back.
            let mut held = ticket.clone();
            held.handling_city = row.handler.clone();
            held.status = row.status as i32;
            held.seq = row.seq;
            held.history = vec![created, dispatched.clone()];
            enqueue_delivery(c, &id, &row, Some(held))?;
            (dispatched, vec![target.clone()], target.clone())
        }
    };
    let merged_into = answer.linked_ticket_id.clone();
    if !ticket.parent_id.is_empty() {
        // A part is one city's share of one request: the request counts
        // once, in its emergency if it is one, not as a report per city.
        emergency(w, &ticket, &ticket.parent_id, &handler, now)?;
        return Ok((answer, wake));
    }
    supervision::record(
        w,
        &supervision::Report {
            ticket_id: &id,
            target: &target,
            category: &ticket.category,
            created_ms,
            fingerprint: &fingerprint,
            root: &root,
            merged_into: (!merged_into.is_empty()).then_some(merged_into.as_str()),
            citizen: &citizen,
        },
        &handler,
        &ticket.subject,
        &ticket.location,
    )?;
    apply_report_rules(w, &ticket, &root, &citizen, &handler, created_ms, now)?;
    wake.dedup();
    Ok((answer, wake))
}

/// Writes a new ticket's row as its first step leaves it.
fn insert_ticket(
    c: &Connection,
    id: &str,
    row: &Row,
    parent: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<()> {
    c.write(
        "INSERT INTO tickets (id, origin, handler, parent_id, category, urgent, status, seq, body,
           created_ms, updated_ms, kind, due_ms, overdue, stage, resolve_due_ms, late_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        params![
            id,
            row.origin,
            row.handler,
            parent,
            row.category,
            row.urgent,
            row.status as i32,
            row.seq as i64,
            body,
            row.created_ms,
            now,
            row.kind,
            row.due_ms,
            row.overdue,
            row.stage,
            row.resolve_due_ms,
            row.late_ms
        ],
    )?;
    Ok(())
}

fn insert_event(c: &Connection, e: &TicketEvent) -> Result<()> {
    c.write(
        "INSERT INTO events (ticket_id, seq, kind, body) VALUES (?1, ?2, ?3, ?4)",
        params![e.ticket_id, e.seq as i64, e.kind, e.encode_to_vec()],
    )?;
    Ok(())
}

/// Links a report to the open ticket about the same matter instead of
/// dispatching it (合并派单): the report ends MERGED at seq 2; the ticket's
/// origin and handler are sent the linked report.
fn merge(
    w: &mut Work<'_>,
    ticket: &Ticket,
    row: &Row,
    into: &str,
    primary: &Row,
    now: i64,
) -> Result<(TicketEvent, Vec<String>)> {
    let c = w.c;
    let id = &ticket.id;
    let mut merged = state::event(id, 2, EventKind::Merged, "gateway", TicketStatus::Merged);
    merged.linked_ticket_id = into.to_owned();
    insert_event(c, &merged)?;
    let fold = &mut w.st.fold;
    fold.status(&row.origin, SENT, None, Some(TicketStatus::Merged));
    fold.count(
        now,
        &row.origin,
        &row.category,
        Metric::Merged,
        &primary.handler,
        1,
    );
    fold.count(
        now,
        &primary.handler,
        &primary.category,
        Metric::Linked,
        &row.origin,
        1,
    );
    fold.flow(
        now,
        flow::ticket(
            TicketSide {
                origin: &row.origin,
                handler: &primary.handler,
                category: &row.category,
                urgent: row.urgent,
            },
            &merged,
        ),
    );
    let report = LinkedReport {
        ticket_id: id.clone(),
        origin_city: ticket.origin_city.clone(),
        channel: ticket.channel,
        subject: ticket.subject.clone(),
        description: ticket.description.clone(),
        create_time: ticket.create_time,
    };
    c.write(
        "INSERT INTO links (ticket_id, pos, report)
         VALUES (?1, (SELECT count(*) FROM links WHERE ticket_id = ?1), ?2)",
        params![into, report.encode_to_vec()],
    )?;
    let m = Message::DeliverLink(DeliverLinkRequest {
        ticket_id: into.to_owned(),
        report: Some(report),
    });
    let mut wake = vec![primary.origin.clone()];
    send(c, &primary.origin, into, &m, primary.urgent)?;
    if primary.handler != primary.origin {
        send(c, &primary.handler, into, &m, primary.urgent)?;
        wake.push(primary.handler.clone());
    }
    tracing::info!(ticket = %id, into = %into, "report merged into an open ticket about the same matter");
    Ok((merged, wake))
}

/// The rules a new report can set off: many citizens on one matter (多人一诉),
/// one citizen on many (一人多诉), an emergency category.
fn apply_report_rules(
    w: &mut Work<'_>,
    ticket: &Ticket,
    root: &str,
    citizen: &str,
    handler: &str,
    created_ms: i64,
    now: i64,
) -> Result<()> {
    let rules = w.p.rules().clone();
    let hours = i64::from(rules.cluster_window_hours);
    let days = i64::from(rules.repeat_window_days);
    // On a shared store, what the rules read of it, read at once.
    let mut facts = if w.shared {
        Some(supervision::shared_facts(
            w.c,
            root,
            citizen,
            created_ms - hours * HOUR_MS,
            created_ms - days * DAY_MS,
        )?)
    } else {
        None
    };
    let mut counts = rules::ReportCounts {
        emergency: w.p.is_emergency(&ticket.category),
        ..Default::default()
    };
    let many = EscalationRule::ManyReportsOneMatter;
    let known = facts.as_ref().map(|f| f.many_open);
    if !supervision::join(w, many, root, &ticket.id, known)? {
        counts.matter = Some(if let Some(f) = facts.as_mut() {
            std::mem::take(&mut f.citizens)
        } else {
            supervision::citizens(w, root, created_ms - hours * HOUR_MS)?
        });
    }
    let one = EscalationRule::OneCitizenManyRequests;
    let known = facts.as_ref().map(|f| f.one_open);
    if !supervision::join(w, one, citizen, &ticket.id, known)? {
        counts.citizen = Some(if let Some(f) = facts.as_mut() {
            std::mem::take(&mut f.reports)
        } else {
            supervision::reports(w, citizen, created_ms - days * DAY_MS)?
        });
    }
    for opens in rules::report_rules(&rules, root, citizen, &ticket.id, &ticket.category, counts) {
        open_escalation(w, ticket, handler, opens, now)?;
    }
    Ok(())
}

/// Opens what a rule decided, about `ticket` handled by `handler`.
fn open_escalation(
    w: &mut Work<'_>,
    ticket: &Ticket,
    handler: &str,
    o: rules::Opens,
    now: i64,
) -> Result<()> {
    supervision::escalate(
        w,
        &supervision::Subject {
            rule: o.rule,
            key: &o.key,
            reason: o.reason,
            category: &ticket.category,
            handler,
            subject: &ticket.subject,
        },
        &o.tickets,
        now,
    )?;
    Ok(())
}

/// A part of parallel handling in an emergency category: its request is
/// taken up at once, once.
fn emergency(w: &mut Work<'_>, ticket: &Ticket, key: &str, handler: &str, now: i64) -> Result<()> {
    if w.p.is_emergency(&ticket.category) {
        let opens = rules::emergency(key, &ticket.id, &ticket.category);
        open_escalation(w, ticket, handler, opens, now)?;
    }
    Ok(())
}

/// Records that the handler committed the ticket (its DELIVERED event), once.
/// Returns the destinations to wake.
pub fn mark_delivered(w: &mut Work<'_>, delivered: &TicketEvent) -> Result<Vec<String>> {
    let c = w.c;
    let id = &delivered.ticket_id;
    let Some(mut row) = load(c, id)? else {
        return Err(GatewayError::UnknownTicket(id.clone()));
    };
    if row.seq >= delivered.seq {
        // Already known, from a report that proved delivery first.
        return Ok(Vec::new());
    }
    if row.seq + 1 != delivered.seq || row.status != TicketStatus::Dispatched {
        return Err(GatewayError::FailedPrecondition(format!(
            "ticket {id}: a delivery at seq {} does not follow status {} at seq {}",
            delivered.seq,
            row.status.as_str_name(),
            row.seq
        )));
    }
    append(w, &mut row, id, delivered)?;
    let first_time = c
        .prepare_cached("INSERT OR IGNORE INTO deliveries (ticket_id, city) VALUES (?1, ?2)")?
        .execute(params![id, row.handler])?
        == 1;
    if first_time {
        w.st.fold.count(
            time::now_ms(),
            &row.handler,
            &row.category,
            Metric::Received,
            &row.origin,
            1,
        );
    }
    enqueue_event(c, &row.origin, &row, delivered)?;
    Ok(vec![row.origin])
}

fn report(
    w: &mut Work<'_>,
    city: &str,
    mut event: TicketEvent,
) -> Result<(Vec<TicketEvent>, Vec<String>)> {
    let c = w.c;
    let id = event.ticket_id.clone();
    let Some(mut row) = load(c, &id)? else {
        return Err(GatewayError::UnknownTicket(id));
    };
    let kind = EventKind::try_from(event.kind)
        .map_err(|_| ContractError::invalid("event.kind", "unknown value"))?;
    let facts = ReportFacts {
        assigned_to: if kind == EventKind::Rejected {
            assigned_to(c, &id)?
        } else {
            None
        },
    };
    let (proves, to) = match rules::check_report(&id, &row, city, kind, event.seq, &facts)? {
        Verdict::Retry => {
            // The same event again, by the city that made it, is fine (even
            // after coordination handed the ticket on); another one is a
            // conflict.
            return match stored_event(c, &id, event.seq)? {
                Some(stored) if stored.kind == event.kind && stored.actor == city => {
                    Ok((vec![stored], Vec::new()))
                }
                _ => Err(GatewayError::FailedPrecondition(format!(
                    "ticket {id} already has a different event at seq {}",
                    event.seq
                ))),
            };
        }
        Verdict::Apply { proves, to } => (proves, to),
    };
    let mut committed = Vec::new();
    let mut wake = Vec::new();
    if proves {
        let mut delivered = state::event(
            &id,
            row.seq + 1,
            EventKind::Delivered,
            "gateway",
            TicketStatus::Delivered,
        );
        delivered.city = row.handler.clone();
        wake.extend(mark_delivered(w, &delivered)?);
        row.status = TicketStatus::Delivered;
        row.seq += 1;
        committed.push(delivered);
    }
    event.status = to as i32;
    event.actor = city.to_owned();
    if event.time.is_none() {
        event.time = Some(time::now());
    }
    append(w, &mut row, &id, &event)?;
    if matches!(kind, EventKind::Closed | EventKind::Reopened) {
        still_unsatisfied(w, &id, &row, kind, event.satisfaction)?;
    }
    if kind == EventKind::Rejected {
        c.write(
            "INSERT INTO coordination (ticket_id, origin, category, rejected_by, reason, reject_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (ticket_id) DO UPDATE SET rejected_by = excluded.rejected_by,
               reason = excluded.reason, reject_ms = excluded.reject_ms,
               assigned_city = NULL, assign_ms = NULL",
            params![
                id,
                row.origin,
                row.category,
                city,
                event.reason,
                time::now_ms()
            ],
        )?;
        tracing::info!(ticket = %id, rejected_by = %city, "ticket sent to coordination");
    }
    let dest = if state::actor_of(kind) == Actor::Origin {
        row.handler.clone()
    } else {
        row.origin.clone()
    };
    enqueue_event(c, &dest, &row, &event)?;
    wake.push(dest);
    committed.push(event);
    Ok((committed, wake))
}

/// Re-handled (重办) the configured number of times and the citizen still
/// unsatisfied: reopened once more, or closed unsatisfied.
fn still_unsatisfied(
    w: &mut Work<'_>,
    id: &str,
    row: &Row,
    kind: EventKind,
    satisfaction: i32,
) -> Result<()> {
    let reopened: i64 =
        w.c.prepare_cached("SELECT count(*) FROM events WHERE ticket_id = ?1 AND kind = ?2")?
            .query_row(params![id, EventKind::Reopened as i32], |r| r.get(0))?;
    let k = w.p.rules().rehandled_times;
    let Some(rehandled) = rules::still_unsatisfied(kind, satisfaction, reopened, k) else {
        return Ok(());
    };
    let subject = subject_of(w.c, id)?;
    supervision::escalate(
        w,
        &supervision::Subject {
            rule: EscalationRule::StillUnsatisfied,
            key: id,
            reason: format!(
                "re-handled {rehandled} times and the citizen is still unsatisfied (the rule: {k})"
            ),
            category: &row.category,
            handler: &row.handler,
            subject: &subject,
        },
        &[id.to_owned()],
        time::now_ms(),
    )?;
    Ok(())
}

/// The owner coordination named for `id`, if it named one.
fn assigned_to(c: &Connection, id: &str) -> Result<Option<String>> {
    Ok(
        c.prepare_cached("SELECT assigned_city FROM coordination WHERE ticket_id = ?1")?
            .query_row([id], |r| r.get::<_, Option<String>>(0))
            .optional()?
            .flatten(),
    )
}

fn assign(
    w: &mut Work<'_>,
    id: &str,
    owner: &str,
    note: &str,
) -> Result<(TicketEvent, Vec<String>)> {
    let c = w.c;
    let Some(row) = load(c, id)? else {
        return Err(GatewayError::UnknownTicket(id.to_owned()));
    };
    if owner == row.origin {
        return Err(ContractError::invalid(
            "owner_city",
            "is the ticket's origin; name another city (the origin handles its own requests locally)",
        )
        .into());
    }
    let to = state::next(row.status, EventKind::Assigned)?;
    let mut event = state::event(id, row.seq + 1, EventKind::Assigned, "province", to);
    event.city = owner.to_owned();
    event.note = note.to_owned();
    // The old handler lets go of it; the owner takes it, with deadlines of
    // its own from now.
    let now = time::now_ms();
    let mut effects = Vec::new();
    let mut row = rules::hand_over(&row, owner, now, &mut effects);
    apply(w, id, &row, effects, now)?;
    append(w, &mut row, id, &event)?;
    c.write(
        "UPDATE coordination SET assigned_city = ?2, assign_ms = ?3 WHERE ticket_id = ?1",
        params![id, owner, time::now_ms()],
    )?;
    enqueue_event(c, &row.origin, &row, &event)?;
    enqueue_delivery(c, id, &row, None)?;
    tracing::info!(ticket = %id, owner = %owner, "coordination named an owner");
    Ok((event, vec![row.origin.clone(), owner.to_owned()]))
}

/// Counts the open tickets whose deadline passed since the last sweep, up
/// to `now_ms`; returns how many. Reads only that stretch of the deadline
/// index.
pub fn sweep_overdue(w: &mut Work<'_>, now_ms: i64) -> Result<usize> {
    let c = w.c;
    let since = swept(c, "overdue")?;
    let due: Vec<(String, String, String, Option<String>)> = c
        .prepare_cached(
            "SELECT id, handler, category, stage FROM tickets
             WHERE due_ms IS NOT NULL AND due_ms > ?1 AND due_ms <= ?2 AND overdue = 0",
        )?
        .query_map(params![since, now_ms], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    for (id, handler, category, stage) in &due {
        let city = rules::overdue_city(stage.as_deref(), handler);
        w.st.fold.overdue(city, category, 1);
        c.write("UPDATE tickets SET overdue = 1 WHERE id = ?1", [id])?;
    }
    sweep_to(c, "overdue", now_ms)?;
    Ok(due.len())
}

fn swept(c: &Connection, name: &str) -> Result<i64> {
    Ok(
        c.prepare_cached("SELECT at_ms FROM sweeps WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?
            .unwrap_or(i64::MIN),
    )
}

fn sweep_to(c: &Connection, name: &str, now_ms: i64) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO sweeps (name, at_ms) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET at_ms = excluded.at_ms",
    )?
    .execute(params![name, now_ms])?;
    Ok(())
}

/// Escalates the open tickets that became long unresolved (久拖不决) since
/// the last sweep, and forgets the reports older than the rules' longest
/// window. Returns how many it escalated.
pub fn sweep_supervision(w: &mut Work<'_>, now_ms: i64) -> Result<usize> {
    let c = w.c;
    let since = swept(c, "late")?;
    let late: Vec<String> = c
        .prepare_cached(
            "SELECT id FROM tickets WHERE late_ms IS NOT NULL AND late_ms > ?1 AND late_ms <= ?2",
        )?
        .query_map(params![since, now_ms], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &late {
        if let Some(row) = load(c, id)? {
            escalate_long_unresolved(w, id, &row, now_ms)?;
        }
    }
    sweep_to(c, "late", now_ms)?;
    let horizon = now_ms - supervision::horizon_ms(w.p);
    supervision::prune(c, horizon)?;
    w.w.prune(horizon);
    Ok(late.len())
}

/// How many rejected tickets wait for an owner.
pub fn coordination_waiting(c: &Connection) -> Result<u64> {
    let n: i64 = c
        .prepare_cached("SELECT count(*) FROM coordination WHERE assigned_city IS NULL")?
        .query_row((), |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// A page of the coordination queue after position `after`, and the
/// position to go on from when there is more.
pub fn coordination(
    c: &Connection,
    after: i64,
    limit: usize,
    include_assigned: bool,
) -> Result<(Vec<CoordinationItem>, Option<i64>)> {
    let mut stmt = c.prepare_cached(
        "SELECT pos, ticket_id, coordination.origin, coordination.category, rejected_by, reason,
                reject_ms, assigned_city, assign_ms,
                CASE WHEN t.stage = 'assign' THEN t.due_ms END
         FROM coordination LEFT JOIN tickets t ON t.id = coordination.ticket_id
         WHERE pos > ?1 AND (?2 = 1 OR assigned_city IS NULL)
         ORDER BY pos LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![after, include_assigned, (limit + 1) as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            CoordinationItem {
                ticket_id: r.get(1)?,
                origin_city: r.get(2)?,
                category: r.get(3)?,
                rejected_by: r.get(4)?,
                reason: r.get(5)?,
                reject_time: Some(time::from_unix_ms(r.get(6)?)),
                assigned_city: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
                assign_time: r.get::<_, Option<i64>>(8)?.map(time::from_unix_ms),
                assign_due_time: r.get::<_, Option<i64>>(9)?.map(time::from_unix_ms),
            },
        ))
    })?;
    let mut items: Vec<(i64, CoordinationItem)> = rows.collect::<Result<_, _>>()?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|(pos, _)| *pos)
    } else {
        None
    };
    Ok((items.into_iter().map(|(_, i)| i).collect(), next))
}

/// How a ticket loaded by [`bulk_load`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Delivered, accepted, resolved and closed satisfied.
    Closed,
    /// Rejected by its target: it waits in coordination.
    Rejected,
    /// Delivered, still open.
    Open,
}

/// Writes tickets into the ledger as their lives would have, for
/// benchmarks at scale: each goes through the same transaction bodies as
/// the served path (dispatch, delivery, the target's and the origin's
/// events), all of `tickets` in the caller's one transaction; the outbox
/// they fill is emptied as if every city had acknowledged at once.
pub fn bulk_load(w: &mut Work<'_>, tickets: Vec<(Ticket, Fate)>) -> Result<()> {
    for (ticket, fate) in tickets {
        let origin = ticket.origin_city.clone();
        let target = ticket.target_cities.first().cloned().unwrap_or_default();
        let (dispatched, _) = dispatch(w, ticket)?;
        if dispatched.kind == EventKind::Merged as i32 {
            continue;
        }
        let id = dispatched.ticket_id.clone();
        let mut delivered = state::event(
            &id,
            3,
            EventKind::Delivered,
            "gateway",
            TicketStatus::Delivered,
        );
        delivered.city = target.clone();
        mark_delivered(w, &delivered)?;
        let by = |seq, kind, status| state::event(&id, seq, kind, "", status);
        match fate {
            Fate::Open => {}
            Fate::Rejected => {
                let mut e = by(4, EventKind::Rejected, TicketStatus::InCoordination);
                e.reason = "非本市事项".into();
                report(w, &target, e)?;
            }
            Fate::Closed => {
                report(
                    w,
                    &target,
                    by(4, EventKind::Accepted, TicketStatus::Accepted),
                )?;
                report(
                    w,
                    &target,
                    by(5, EventKind::Resolved, TicketStatus::Resolved),
                )?;
                let mut e = by(6, EventKind::Closed, TicketStatus::Closed);
                e.satisfaction = Satisfaction::Satisfied as i32;
                report(w, &origin, e)?;
            }
        }
    }
    w.c.execute("DELETE FROM outbox", ())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ticket(origin: &str, target: &str, created_ms: i64) -> Ticket {
        Ticket {
            id: hotline_proto::ids::TicketId::new(origin).to_string(),
            origin_city: origin.into(),
            target_cities: vec![target.into()],
            category: "education".into(),
            create_time: Some(time::from_unix_ms(created_ms)),
            ..Default::default()
        }
    }

    fn overdue_at(c: &Connection, city: &str) -> i64 {
        crate::fold::overdue_open(c)
            .unwrap()
            .into_iter()
            .filter(|((c, _), _)| c == city)
            .map(|(_, n)| n)
            .sum()
    }

    #[tokio::test]
    async fn the_sweep_counts_a_ticket_once_when_it_passes_its_deadline_and_resolving_uncounts_it()
    {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy::new(
            supervision::DeadlineConfig {
                resolve_hours: Some(1),
                urgent_resolve_hours: Some(1),
                ..Default::default()
            },
            // Both tickets say the same (nothing): not a merge here.
            supervision::RuleConfig {
                merge_window_hours: 0,
                ..Default::default()
            },
            crate::calendar::Calendar::shipped(),
            &Default::default(),
        );
        let ledger = Ledger::open(
            &dir.path().join("g.db"),
            Arc::new(Catalogue::default()),
            policy.clone(),
        )
        .unwrap();
        let now = time::now_ms();
        let t = ticket("luzhou", "yibin", now);
        let id = t.id.clone();
        // One made two hours ago is overdue as soon as it is dispatched.
        let old = ticket("luzhou", "yibin", now - 2 * 3_600_000);
        ledger
            .write(move |w| bulk_load(w, vec![(t, Fate::Open), (old, Fate::Open)]))
            .await
            .unwrap();
        // Each step its own commit: the counts are written at commit.
        type Step = Box<dyn FnOnce(&mut Work<'_>) -> Result<usize> + Send>;
        let step = |f: Step| {
            let ledger = ledger.clone();
            async move {
                ledger.write(f).await.unwrap();
                ledger
                    .db()
                    .read(|c| Ok::<_, GatewayError>(overdue_at(c, "yibin")))
                    .await
                    .unwrap()
            }
        };
        let before = step(Box::new(|_| Ok(0))).await;
        let first = step(Box::new(move |w| sweep_overdue(w, now + 30 * 60_000))).await;
        let second = step(Box::new(move |w| sweep_overdue(w, now + 2 * 3_600_000))).await;
        let accepted = step(Box::new(move |w| {
            report(
                w,
                "yibin",
                state::event(&id, 4, EventKind::Accepted, "", TicketStatus::Accepted),
            )?;
            report(
                w,
                "yibin",
                state::event(&id, 5, EventKind::Resolved, "", TicketStatus::Resolved),
            )?;
            Ok(0)
        }))
        .await;
        assert_eq!((before, first, second, accepted), (1, 1, 2, 1));
    }
}
