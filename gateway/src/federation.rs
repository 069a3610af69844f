//! The `Federation` service: city nodes dispatch tickets and report events.

use hotline_proto::pb::federation_server::Federation;
use hotline_proto::pb::{
    DispatchTicketRequest, DispatchTicketResponse, ReportEventRequest, ReportEventResponse,
};
use hotline_proto::validate;
use tonic::{Request, Response, Status};

use crate::error::GatewayError;
use crate::ledger::Ledger;

pub struct FederationService {
    ledger: Ledger,
}

impl FederationService {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

#[tonic::async_trait]
impl Federation for FederationService {
    async fn dispatch_ticket(
        &self,
        request: Request<DispatchTicketRequest>,
    ) -> Result<Response<DispatchTicketResponse>, Status> {
        let req = request.into_inner();
        let catalogue = self.ledger.catalogue();
        validate::city("city", &req.city, catalogue).map_err(Status::from)?;
        let ticket = req
            .ticket
            .ok_or_else(|| hotline_proto::error::invalid_argument("ticket", "is required"))?;
        validate::dispatched_ticket(&ticket, catalogue).map_err(Status::from)?;
        if ticket.origin_city != req.city {
            return Err(GatewayError::PermissionDenied(format!(
                "{} cannot dispatch a ticket of {}",
                req.city, ticket.origin_city
            ))
            .into());
        }
        let (id, target, category) = (
            ticket.id.clone(),
            ticket.target_cities.first().cloned().unwrap_or_default(),
            ticket.category.clone(),
        );
        let event = self.ledger.dispatch(ticket).await?;
        tracing::debug!(ticket = %id, origin = %req.city, target = %target, category = %category, "dispatched");
        Ok(Response::new(DispatchTicketResponse { event: Some(event) }))
    }

    async fn report_event(
        &self,
        request: Request<ReportEventRequest>,
    ) -> Result<Response<ReportEventResponse>, Status> {
        let req = request.into_inner();
        validate::city("city", &req.city, self.ledger.catalogue()).map_err(Status::from)?;
        let event = req
            .event
            .ok_or_else(|| hotline_proto::error::invalid_argument("event", "is required"))?;
        validate::reported_event(&event).map_err(Status::from)?;
        let events = self.ledger.report(req.city, event).await?;
        Ok(Response::new(ReportEventResponse { events }))
    }
}
