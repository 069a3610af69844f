//! The `CityHotline` service: the city's own hotline platform and consoles
//! create tickets here and act on them. Every call checks its input first
//! (a bad field is INVALID_ARGUMENT naming it), then commits its change,
//! with what the gateway is owed, in one transaction.

use std::sync::Arc;

use hotline_durable::{Db, Outbox};
use hotline_proto::identity::Identity;
use hotline_proto::pb::city_hotline_server::CityHotline;
use hotline_proto::pb::*;
use hotline_proto::{Catalogue, error::invalid_argument, validate};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::calls::Calls;
use crate::lifecycle::{self, Action};
use crate::store::{self, GATEWAY};

pub struct HotlineService {
    city: String,
    db: Db,
    outbox: Outbox,
    catalogue: Arc<Catalogue>,
    calls: Calls,
}

impl HotlineService {
    pub fn new(
        city: String,
        db: Db,
        outbox: Outbox,
        catalogue: Arc<Catalogue>,
        calls: Calls,
    ) -> Self {
        Self {
            city,
            db,
            outbox,
            catalogue,
            calls,
        }
    }

    async fn act(
        &self,
        ticket_id: String,
        kind: EventKind,
        action: Action,
    ) -> Result<Ticket, Status> {
        validate::ticket_id("ticket_id", &ticket_id).map_err(Status::from)?;
        validate::text("note", &action.note, validate::MAX_NOTE, false).map_err(Status::from)?;
        let city = self.city.clone();
        let (ticket, queued) = self
            .db
            .write(move |c| lifecycle::act(c, &city, &ticket_id, kind, action))
            .await?;
        if queued {
            self.outbox.wake(GATEWAY);
        }
        tracing::debug!(ticket = %ticket.id, event = kind.as_str_name(), "ticket updated");
        Ok(ticket)
    }
}

fn page_size(requested: i32) -> Result<usize, Status> {
    match requested {
        0 => Ok(100),
        n if n < 0 => Err(invalid_argument("page_size", "must not be negative")),
        n => Ok((n as usize).min(1000)),
    }
}

/// A console's certificate acts only as its own operator; the city's own
/// certificate (its platform) may act for any of them, and an insecure
/// node has no identities to check.
fn acting_as<T>(request: &Request<T>, field: &str, operator_id: &str) -> Result<(), Status> {
    match hotline_tls::Peer::caller(request)? {
        Some(id @ Identity::Console { operator, .. }) if operator != operator_id => {
            Err(Status::permission_denied(format!(
                "{field}: {id} acts as operator {operator} only, not {operator_id}"
            )))
        }
        _ => Ok(()),
    }
}

/// Tickets are the platform's: an operator's console acts on its session
/// and its transfers only.
fn platform_only<T>(request: &Request<T>) -> Result<(), Status> {
    match hotline_tls::Peer::caller(request)? {
        Some(id @ Identity::Console { .. }) => Err(Status::permission_denied(format!(
            "{id} is an operator's console: it acts on its session and transfers only, \
             tickets are the platform's"
        ))),
        _ => Ok(()),
    }
}

fn ids(operator_id: &str, transfer_id: &str) -> Result<(), Status> {
    validate::text("operator_id", operator_id, 64, true).map_err(Status::from)?;
    validate::ticket_id("transfer_id", transfer_id).map_err(Status::from)?;
    Ok(())
}

#[tonic::async_trait]
impl CityHotline for HotlineService {
    type OperatorSessionStream = UnboundedReceiverStream<Result<OperatorSessionResponse, Status>>;

    async fn operator_session(
        &self,
        request: Request<Streaming<OperatorSessionRequest>>,
    ) -> Result<Response<Self::OperatorSessionStream>, Status> {
        // The caller, kept for the check once the hello names the operator.
        let mut caller = Request::new(());
        if let Some(peer) = hotline_tls::Peer::of(&request) {
            caller.extensions_mut().insert(peer.clone());
        }
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await?.and_then(|m| m.message) {
            Some(operator_session_request::Message::Hello(h)) => h,
            _ => {
                return Err(invalid_argument(
                    "message",
                    "the first message must be hello",
                ));
            }
        };
        acting_as(&caller, "hello.operator_id", &hello.operator_id)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let session = self.calls.open_session(&hello, tx)?;
        let calls = self.calls.clone();
        let mut closing = self.calls.closing();
        tokio::spawn(async move {
            let operator = hello.operator_id;
            loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = closing.wait_for(|c| *c) => break,
                };
                match message {
                    Ok(Some(OperatorSessionRequest {
                        message: Some(operator_session_request::Message::Available(a)),
                    })) => calls.set_available(&operator, session, a),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            calls.close_session(&operator, session);
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn start_transfer(
        &self,
        request: Request<StartTransferRequest>,
    ) -> Result<Response<StartTransferResponse>, Status> {
        acting_as(&request, "operator_id", &request.get_ref().operator_id)?;
        let transfer = self.calls.start(request.into_inner())?;
        Ok(Response::new(StartTransferResponse {
            transfer: Some(transfer),
        }))
    }

    async fn answer_transfer(
        &self,
        request: Request<AnswerTransferRequest>,
    ) -> Result<Response<AnswerTransferResponse>, Status> {
        acting_as(&request, "operator_id", &request.get_ref().operator_id)?;
        let req = request.into_inner();
        ids(&req.operator_id, &req.transfer_id)?;
        let transfer = self.calls.answer(&req.operator_id, &req.transfer_id)?;
        Ok(Response::new(AnswerTransferResponse {
            transfer: Some(transfer),
        }))
    }

    async fn decline_transfer(
        &self,
        request: Request<DeclineTransferRequest>,
    ) -> Result<Response<DeclineTransferResponse>, Status> {
        acting_as(&request, "operator_id", &request.get_ref().operator_id)?;
        let req = request.into_inner();
        ids(&req.operator_id, &req.transfer_id)?;
        let transfer = self.calls.decline(&req.operator_id, &req.transfer_id)?;
        Ok(Response::new(DeclineTransferResponse {
            transfer: Some(transfer),
        }))
    }

    async fn cancel_transfer(
        &self,
        request: Request<CancelTransferRequest>,
    ) -> Result<Response<CancelTransferResponse>, Status> {
        acting_as(&request, "operator_id", &request.get_ref().operator_id)?;
        let req = request.into_inner();
        ids(&req.operator_id, &req.transfer_id)?;
        let transfer = self.calls.cancel(&req.operator_id, &req.transfer_id)?;
        Ok(Response::new(CancelTransferResponse {
            transfer: Some(transfer),
        }))
    }

    async fn complete_transfer(
        &self,
        request: Request<CompleteTransferRequest>,
    ) -> Result<Response<CompleteTransferResponse>, Status> {
        acting_as(&request, "operator_id", &request.get_ref().operator_id)?;
        let req = request.into_inner();
        ids(&req.operator_id, &req.transfer_id)?;
        let transfer = self.calls.complete(&req.operator_id, &req.transfer_id)?;
        Ok(Response::new(CompleteTransferResponse {
            transfer: Some(transfer),
        }))
    }

    async fn get_transfer(
        &self,
        request: Request<GetTransferRequest>,
    ) -> Result<Response<GetTransferResponse>, Status> {
        let caller = hotline_tls::Peer::caller(&request)?.cloned();
        let req = request.into_inner();
        validate::ticket_id("transfer_id", &req.transfer_id).map_err(Status::from)?;
        let transfer = self.calls.get(&req.transfer_id)?;
        // A console reads the transfers it takes part in.
        if let Some(id @ Identity::Console { operator, .. }) = &caller
            && transfer.origin_operator != *operator
            && transfer.target_operator != *operator
        {
            return Err(Status::permission_denied(format!(
                "transfer_id: {id} takes no part in transfer {}",
                req.transfer_id
            )));
        }
        Ok(Response::new(GetTransferResponse {
            transfer: Some(transfer),
        }))
    }

    async fn convert_transfer_to_ticket(
        &self,
        request: Request<ConvertTransferToTicketRequest>,
    ) -> Result<Response<ConvertTransferToTicketResponse>, Status> {
        acting_as(&request, "operator_id", &request.get_ref().operator_id)?;
        let req = request.into_inner();
        ids(&req.operator_id, &req.transfer_id)?;
        let ticket = self
            .calls
            .convert(&req.operator_id, &req.transfer_id, req.note)
            .await?;
        Ok(Response::new(ConvertTransferToTicketResponse {
            ticket: Some(ticket),
        }))
    }

    async fn create_ticket(
        &self,
        request: Request<CreateTicketRequest>,
    ) -> Result<Response<CreateTicketResponse>, Status> {
        platform_only(&request)?;
        let draft = request
            .into_inner()
            .ticket
            .ok_or_else(|| invalid_argument("ticket", "is required"))?;
        validate::new_ticket(&draft, &self.city, &self.catalogue).map_err(Status::from)?;
        let city = self.city.clone();
        let request_id = draft.request_id.clone();
        let created = self
            .db
            .write(move |c| lifecycle::create(c, &city, draft))
            .await?;
        let ticket = created.ticket;
        if created.replay {
            // A retry answers what the first call made; a request that says
            // something else under the same id is another request.
            if !created.same_request {
                return Err(crate::error::NodeError::AlreadyExists(format!(
                    "request_id: {request_id:?} made ticket {} from another request; give this one an id of its own",
                    ticket.id
                ))
                .into());
            }
            tracing::debug!(ticket = %ticket.id, "a retry of a request already made: its ticket");
        } else {
            tracing::info!(ticket = %ticket.id, targets = ?ticket.target_cities,
                category = %ticket.category, "ticket created");
        }
        if created.queued {
            self.outbox.wake(GATEWAY);
        }
        Ok(Response::new(CreateTicketResponse {
            ticket: Some(ticket),
        }))
    }

    async fn get_ticket(
        &self,
        request: Request<GetTicketRequest>,
    ) -> Result<Response<GetTicketResponse>, Status> {
        platform_only(&request)?;
        let id = request.into_inner().ticket_id;
        validate::ticket_id("ticket_id", &id).map_err(Status::from)?;
        let (ticket, parts) = self
            .db
            .read(move |c| {
                let t = store::full(c, &id)?;
                let parts = store::parts(c, &t)?;
                Ok::<_, crate::NodeError>((t, parts))
            })
            .await?;
        Ok(Response::new(GetTicketResponse {
            ticket: Some(ticket),
            parts,
        }))
    }

    async fn list_tickets(
        &self,
        request: Request<ListTicketsRequest>,
    ) -> Result<Response<ListTicketsResponse>, Status> {
        platform_only(&request)?;
        let req = request.into_inner();
        let role = TicketRole::try_from(req.role)
            .map_err(|_| invalid_argument("role", "unknown value"))?;
        let status = TicketStatus::try_from(req.status)
            .map_err(|_| invalid_argument("status", "unknown value"))?;
        let limit = page_size(req.page_size)?;
        if !req.page_token.is_empty() {
            validate::ticket_id("page_token", &req.page_token).map_err(Status::from)?;
        }
        let after = req.page_token;
        let with_history = !req.omit_history;
        let tickets = self
            .db
            .read(move |c| store::list(c, role, status, &after, limit, with_history))
            .await?;
        let next_page_token = if tickets.len() == limit {
            tickets.last().map(|t| t.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListTicketsResponse {
            tickets,
            next_page_token,
        }))
    }

    async fn accept_ticket(
        &self,
        request: Request<AcceptTicketRequest>,
    ) -> Result<Response<AcceptTicketResponse>, Status> {
        platform_only(&request)?;
        let req = request.into_inner();
        let action = Action {
            note: req.note,
            ..Default::default()
        };
        let ticket = self.act(req.ticket_id, EventKind::Accepted, action).await?;
        Ok(Response::new(AcceptTicketResponse {
            ticket: Some(ticket),
        }))
    }

    async fn reject_ticket(
        &self,
        request: Request<RejectTicketRequest>,
    ) -> Result<Response<RejectTicketResponse>, Status> {
        platform_only(&request)?;
        let req = request.into_inner();
        validate::text("reason", &req.reason, validate::MAX_REASON, true).map_err(Status::from)?;
        let action = Action {
            reason: req.reason,
            ..Default::default()
        };
        let ticket = self.act(req.ticket_id, EventKind::Rejected, action).await?;
        Ok(Response::new(RejectTicketResponse {
            ticket: Some(ticket),
        }))
    }

    async fn resolve_ticket(
        &self,
        request: Request<ResolveTicketRequest>,
    ) -> Result<Response<ResolveTicketResponse>, Status> {
        platform_only(&request)?;
        let req = request.into_inner();
        let action = Action {
            note: req.note,
            ..Default::default()
        };
        let ticket = self.act(req.ticket_id, EventKind::Resolved, action).await?;
        Ok(Response::new(ResolveTicketResponse {
            ticket: Some(ticket),
        }))
    }

    async fn close_ticket(
        &self,
        request: Request<CloseTicketRequest>,
    ) -> Result<Response<CloseTicketResponse>, Status> {
        platform_only(&request)?;
        let req = request.into_inner();
        validate::satisfaction("satisfaction", req.satisfaction).map_err(Status::from)?;
        let action = Action {
            note: req.note,
            satisfaction: Satisfaction::try_from(req.satisfaction).unwrap_or_default(),
            ..Default::default()
        };
        let ticket = self.act(req.ticket_id, EventKind::Closed, action).await?;
        Ok(Response::new(CloseTicketResponse {
            ticket: Some(ticket),
        }))
    }

    async fn reopen_ticket(
        &self,
        request: Request<ReopenTicketRequest>,
    ) -> Result<Response<ReopenTicketResponse>, Status> {
        platform_only(&request)?;
        let req = request.into_inner();
        validate::text("reason", &req.reason, validate::MAX_REASON, true).map_err(Status::from)?;
        let action = Action {
            reason: req.reason,
            ..Default::default()
        };
        let ticket = self.act(req.ticket_id, EventKind::Reopened, action).await?;
        Ok(Response::new(ReopenTicketResponse {
            ticket: Some(ticket),
        }))
    }
}
