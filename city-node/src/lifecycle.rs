//! What a city's own systems do to tickets, as rules: creating one (single,
//! local, or a parent with one part per city), and the actions of the
//! handling city (accept, reject, resolve) and of the origin (close, reopen).
//! Each action is checked against the state machine, stored with its event,
//! and, for a cross-city ticket, queued for the gateway in the same
//! transaction.

use hotline_durable::sql::Connection;
use hotline_proto::pb::{
    Channel, DispatchTicketRequest, EventKind, Priority, ReportEventRequest, Satisfaction, Ticket,
    TicketEvent, TicketRole, TicketStatus,
};
use hotline_proto::state::{self, Actor};
use hotline_proto::{ContractError, TicketId, time};
use prost::Message;

use crate::error::NodeError;
use crate::store::{self, DISPATCH, REPORT_EVENT, Result, Stored};

/// What an action carries besides its kind.
#[derive(Debug, Default, Clone)]
pub struct Action {
    pub reason: String,
    pub note: String,
    pub satisfaction: Satisfaction,
}

/// What [`create`] did.
pub struct Created {
    pub ticket: Ticket,
    /// Something for the gateway was queued.
    pub queued: bool,
    /// The request id had made this ticket before: nothing was created.
    pub replay: bool,
    /// On a replay, whether the draft says what the first request said
    /// ([`same_request`]): a retry, or another request under the same id.
    pub same_request: bool,
}

/// Whether `draft` says what the ticket made from an earlier request with
/// its request id says (a retry), as far as the platform wrote it.
fn same_request(draft: &Ticket, made: &Ticket) -> bool {
    draft.target_cities == made.target_cities
        && draft.category == made.category
        && draft.kind == made.kind
        && draft.subject == made.subject
        && draft.description == made.description
        && draft.location == made.location
        && draft.citizen == made.citizen
}

/// Records a new ticket made at `city`, and whether anything was queued
/// for the gateway. A repeated `request_id` returns the ticket first made
/// (a replay) and creates nothing.
pub fn create(c: &Connection, city: &str, draft: Ticket) -> Result<Created> {
    if !draft.request_id.is_empty()
        && let Some(id) = store::by_request_id(c, &draft.request_id)?
    {
        let ticket = store::full(c, &id)?;
        return Ok(Created {
            same_request: same_request(&draft, &ticket),
            ticket,
            queued: false,
            replay: true,
        });
    }
    let (ticket, queued) = create_new(c, city, draft)?;
    Ok(Created {
        ticket,
        queued,
        replay: false,
        same_request: true,
    })
}

fn create_new(c: &Connection, city: &str, draft: Ticket) -> Result<(Ticket, bool)> {
    let id = TicketId::new(city);
    let mut base = Ticket {
        id: id.to_string(),
        origin_city: city.to_owned(),
        // When the request was made: now, unless the platform recorded it
        // earlier (validated: not in the future).
        create_time: Some(draft.create_time.unwrap_or_else(time::now)),
        history: Vec::new(),
        linked_reports: Vec::new(),
        parent_id: String::new(),
        part_ids: Vec::new(),
        handling_city: String::new(),
        seq: 0,
        reopen_count: 0,
        satisfaction: Satisfaction::Unspecified as i32,
        status: TicketStatus::Unspecified as i32,
        ..draft
    };
    if base.channel == Channel::Unspecified as i32 {
        base.channel = Channel::Phone as i32;
    }
    if base.priority == Priority::Unspecified as i32 {
        base.priority = Priority::Normal as i32;
    }
    let mut queued = false;
    if let [target] = base.target_cities.as_slice() {
        let target = target.clone();
        queued |= create_one(c, city, base.clone(), &target, false)?;
        return Ok((store::full(c, &base.id)?, queued));
    }
    // Parallel handling: a parent, and one part per target city.
    base.part_ids = base
        .target_cities
        .iter()
        .map(|t| id.part(t).to_string())
        .collect();
    let mut parent = base.clone();
    parent.seq = 1;
    parent.status = TicketStatus::Pending as i32;
    let created = state::event(
        &parent.id,
        1,
        EventKind::Created,
        city,
        TicketStatus::Pending,
    );
    store::save(
        c,
        &Stored {
            ticket: parent.clone(),
            role: TicketRole::Sent,
            is_part: false,
        },
    )?;
    store::insert_event(c, &created)?;
    for (target, part_id) in base.target_cities.iter().zip(&base.part_ids) {
        let part = Ticket {
            id: part_id.clone(),
            parent_id: parent.id.clone(),
            target_cities: vec![target.clone()],
            part_ids: Vec::new(),
            request_id: String::new(),
            ..base.clone()
        };
        queued |= create_one(c, city, part, target, true)?;
    }
    store::refresh_parent(c, &parent.id)?;
    Ok((store::full(c, &parent.id)?, queued))
}

fn create_one(
    c: &Connection,
    city: &str,
    mut t: Ticket,
    target: &str,
    is_part: bool,
) -> Result<bool> {
    let local = target == city;
    let status = state::initial_status(local);
    t.status = status as i32;
    t.seq = 1;
    t.handling_city = target.to_owned();
    let created = state::event(&t.id, 1, EventKind::Created, city, status);
    let role = if local {
        TicketRole::Local
    } else {
        TicketRole::Sent
    };
    store::save(
        c,
        &Stored {
            ticket: t.clone(),
            role,
            is_part,
        },
    )?;
    store::insert_event(c, &created)?;
    if !local {
        t.history = vec![created];
        let payload = DispatchTicketRequest {
            city: city.to_owned(),
            ticket: Some(t.clone()),
        }
        .encode_to_vec();
        store::enqueue(c, &t, DISPATCH, payload)?;
    }
    Ok(!local)
}

/// An action of this city on one of its tickets. Returns the ticket after
/// it, and whether anything was queued for the gateway.
pub fn act(
    c: &Connection,
    city: &str,
    id: &str,
    kind: EventKind,
    action: Action,
) -> Result<(Ticket, bool)> {
    let stored = store::require(c, id)?;
    let actor = state::actor_of(kind);
    let t = &stored.ticket;
    let may = match (actor, stored.role) {
        (Actor::Handler, TicketRole::Received | TicketRole::Local) => t.part_ids.is_empty(),
        (Actor::Origin, TicketRole::Sent | TicketRole::Local) => true,
        _ => false,
    };
    if !may {
        let what = if actor == Actor::Handler {
            "handled by"
        } else {
            "sent by"
        };
        return Err(NodeError::FailedPrecondition(format!(
            "ticket {id} is not {what} {city}, so {city} cannot {} it",
            verb(kind)
        )));
    }
    if kind == EventKind::Rejected && stored.role == TicketRole::Local {
        return Err(NodeError::FailedPrecondition(format!(
            "ticket {id} is {city}'s own; route it within the city instead of rejecting it"
        )));
    }
    if kind == EventKind::Rejected
        && store::history(c, id)?
            .iter()
            .any(|e| e.kind == EventKind::Assigned as i32 && e.city == city)
    {
        // Coordination's decision is final: a ticket goes origin → target →
        // coordination → owner, never round again.
        return Err(NodeError::FailedPrecondition(format!(
            "ticket {id} was assigned to {city} by provincial coordination; its owner cannot reject it"
        )));
    }
    if !t.part_ids.is_empty() {
        return act_on_parent(c, city, stored, kind, action);
    }
    let queued = act_on_one(c, city, stored, kind, &action)?;
    Ok((store::full(c, id)?, queued))
}

fn act_on_one(
    c: &Connection,
    city: &str,
    mut stored: Stored,
    kind: EventKind,
    action: &Action,
) -> Result<bool> {
    let t = &stored.ticket;
    let from = TicketStatus::try_from(t.status).unwrap_or(TicketStatus::Unspecified);
    let to = state::next(from, kind)?;
    let mut event = state::event(&t.id, t.seq + 1, kind, city, to);
    event.reason = action.reason.clone();
    event.note = action.note.clone();
    if kind == EventKind::Closed {
        event.satisfaction = action.satisfaction as i32;
    }
    store::apply(c, &mut stored, &event)?;
    if stored.role == TicketRole::Local {
        return Ok(false);
    }
    report(c, city, &stored.ticket, event)?;
    Ok(true)
}

/// The origin closes or reopens a parent: every resolved part with it.
fn act_on_parent(
    c: &Connection,
    city: &str,
    parent: Stored,
    kind: EventKind,
    action: Action,
) -> Result<(Ticket, bool)> {
    let parent_status = TicketStatus::try_from(parent.ticket.status).unwrap_or_default();
    if parent_status != TicketStatus::Resolved {
        return Err(ContractError::IllegalTransition {
            from: parent_status,
            event: kind,
        }
        .into());
    }
    let mut queued = false;
    for part_id in &parent.ticket.part_ids {
        let part = store::require(c, part_id)?;
        if part.ticket.status == TicketStatus::Resolved as i32 {
            queued |= act_on_one(c, city, part, kind, &action)?;
        }
    }
    Ok((store::full(c, &parent.ticket.id)?, queued))
}

fn report(c: &Connection, city: &str, ticket: &Ticket, event: TicketEvent) -> Result<()> {
    let payload = ReportEventRequest {
        city: city.to_owned(),
        event: Some(event),
    }
    .encode_to_vec();
    store::enqueue(c, ticket, REPORT_EVENT, payload)
}

/// What a city does to make an event of `kind`, as a verb.
fn verb(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Accepted => "accept",
        EventKind::Rejected => "reject",
        EventKind::Resolved => "resolve",
        EventKind::Closed => "close",
        EventKind::Reopened => "reopen",
        EventKind::Assigned => "be assigned",
        EventKind::Created => "create",
        EventKind::Dispatched => "dispatch",
        EventKind::Delivered => "take delivery of",
        EventKind::Merged => "merge",
        EventKind::Unspecified => "act on",
    }
}
