//! The `CityNode` service: what the gateway delivers to this city. Both calls
//! are idempotent: a ticket or event already stored is acknowledged again
//! and changes nothing, so the gateway may resend freely.

use std::sync::Arc;

use hotline_durable::Db;
use hotline_durable::sql::Connection;
use hotline_proto::pb::city_node_server::CityNode;
use hotline_proto::pb::{
    DeliverEventRequest, DeliverEventResponse, DeliverLinkRequest, DeliverLinkResponse,
    DeliverTicketRequest, DeliverTicketResponse, Ticket, TicketRole,
};
use hotline_proto::{Catalogue, error::invalid_argument, validate};
use tonic::{Request, Response, Status};

use crate::error::NodeError;
use crate::store::{self, Result, Stored};

pub struct InboundService {
    city: String,
    db: Db,
    catalogue: Arc<Catalogue>,
}

impl InboundService {
    pub fn new(city: String, db: Db, catalogue: Arc<Catalogue>) -> Self {
        if broken_ack_before_commit() {
            tracing::warn!(
                "HOTLINE_BROKEN=ack-before-commit: deliveries are acknowledged before they are committed"
            );
        }
        Self {
            city,
            db,
            catalogue,
        }
    }
}

fn deliver(c: &Connection, mut ticket: Ticket) -> Result<bool> {
    if let Some(existing) = store::load(c, &ticket.id)? {
        if existing.role != TicketRole::Received {
            return Err(NodeError::FailedPrecondition(format!(
                "ticket {} is this city's own; it cannot be delivered here",
                ticket.id
            )));
        }
        if existing.ticket.seq >= ticket.seq {
            return Ok(false);
        }
    }
    let history = std::mem::take(&mut ticket.history);
    for event in &history {
        store::insert_event(c, event)?;
    }
    store::save(
        c,
        &Stored {
            ticket,
            role: TicketRole::Received,
            is_part: false,
        },
    )?;
    Ok(true)
}

/// `HOTLINE_BROKEN=ack-before-commit` breaks delivery on purpose (the
/// acknowledgement goes out before the ticket is committed), so that a test
/// can show the simulator's chaos run catching it. Only debug builds honour
/// it: a release build cannot be broken this way.
fn broken_ack_before_commit() -> bool {
    cfg!(debug_assertions)
        && std::env::var("HOTLINE_BROKEN").is_ok_and(|v| v == "ack-before-commit")
}

/// How long the broken build waits to commit what it acknowledged: longer
/// than the simulator's test runs before it kills the node.
const BROKEN_COMMIT_DELAY: std::time::Duration = std::time::Duration::from_secs(30);

#[tonic::async_trait]
impl CityNode for InboundService {
    async fn deliver_ticket(
        &self,
        request: Request<DeliverTicketRequest>,
    ) -> Result<Response<DeliverTicketResponse>, Status> {
        let ticket = request
            .into_inner()
            .ticket
            .ok_or_else(|| invalid_argument("ticket", "is required"))?;
        validate::ticket_id("ticket.id", &ticket.id).map_err(Status::from)?;
        validate::category("ticket.category", &ticket.category, &self.catalogue)
            .map_err(Status::from)?;
        if ticket.handling_city != self.city {
            return Err(invalid_argument(
                "ticket.handling_city",
                &format!("this node is {:?}", self.city),
            ));
        }
        if ticket.origin_city == self.city {
            return Err(invalid_argument(
                "ticket.origin_city",
                "is this city; its own tickets are not delivered to it",
            ));
        }
        let last_seq = ticket.history.last().map(|e| e.seq);
        if last_seq != Some(ticket.seq) || ticket.history.len() as u64 != ticket.seq {
            return Err(invalid_argument(
                "ticket.history",
                "must hold every event up to ticket.seq",
            ));
        }
        let (id, origin, category) = (
            ticket.id.clone(),
            ticket.origin_city.clone(),
            ticket.category.clone(),
        );
        if broken_ack_before_commit() {
            // A deliberately broken build, for the simulator's test that its
            // invariants catch one: acknowledge now, commit much later
            // (longer than the test's run before its kill), so that every
            // delivery acknowledged before the kill dies with the process,
            // however fast or slow the machine.
            let db = self.db.clone();
            tokio::spawn(async move {
                tokio::time::sleep(BROKEN_COMMIT_DELAY).await;
                let _ = db.write(move |c| deliver(c, ticket)).await;
            });
            return Ok(Response::new(DeliverTicketResponse {}));
        }
        let fresh = self.db.write(move |c| deliver(c, ticket)).await?;
        if fresh {
            tracing::info!(ticket = %id, origin = %origin, category = %category, "ticket received");
        }
        Ok(Response::new(DeliverTicketResponse {}))
    }

    async fn deliver_event(
        &self,
        request: Request<DeliverEventRequest>,
    ) -> Result<Response<DeliverEventResponse>, Status> {
        let event = request
            .into_inner()
            .event
            .ok_or_else(|| invalid_argument("event", "is required"))?;
        validate::ticket_id("event.ticket_id", &event.ticket_id).map_err(Status::from)?;
        if event.seq < 2 {
            return Err(invalid_argument("event.seq", "must be at least 2"));
        }
        self.db
            .write(move |c| store::apply_remote(c, &event))
            .await?;
        Ok(Response::new(DeliverEventResponse {}))
    }

    async fn deliver_link(
        &self,
        request: Request<DeliverLinkRequest>,
    ) -> Result<Response<DeliverLinkResponse>, Status> {
        let req = request.into_inner();
        validate::ticket_id("ticket_id", &req.ticket_id).map_err(Status::from)?;
        let report = req
            .report
            .ok_or_else(|| invalid_argument("report", "is required"))?;
        validate::ticket_id("report.ticket_id", &report.ticket_id).map_err(Status::from)?;
        let (id, merged) = (req.ticket_id.clone(), report.ticket_id.clone());
        let fresh = self
            .db
            .write(move |c| store::link(c, &req.ticket_id, report))
            .await?;
        if fresh {
            tracing::info!(ticket = %id, report = %merged, "a report of the same matter was merged into this ticket");
        }
        Ok(Response::new(DeliverLinkResponse {}))
    }
}
