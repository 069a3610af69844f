//! The `Observatory` service: what the provincial centre sees and does;
//! departments and cities see their part of it ([`crate::roles`]).

use hotline_proto::pb::observatory_server::Observatory;
use hotline_proto::pb::{
    AssignOwnerRequest, AssignOwnerResponse, GetCityStatsRequest, GetCityStatsResponse,
    GetLedgerTicketRequest, GetLedgerTicketResponse, ListCoordinationItemsRequest,
    ListCoordinationItemsResponse,
};
use std::sync::Arc;

use hotline_proto::{error::invalid_argument, privacy, validate};
use tonic::{Request, Response, Status};

use crate::error::GatewayError;
use crate::ledger::Ledger;
use crate::roles::{Departments, Viewer};

pub struct ObservatoryService {
    ledger: Ledger,
    departments: Arc<Departments>,
}

impl ObservatoryService {
    pub fn new(ledger: Ledger, departments: Arc<Departments>) -> Self {
        Self {
            ledger,
            departments,
        }
    }
}

/// A page size: 0 means the default (100); at most 1000.
pub fn page_size(field: &str, requested: i32) -> Result<usize, Status> {
    match requested {
        0 => Ok(100),
        n if n < 0 => Err(invalid_argument(field, "must not be negative")),
        n => Ok((n as usize).min(1000)),
    }
}

#[tonic::async_trait]
impl Observatory for ObservatoryService {
    async fn get_city_stats(
        &self,
        request: Request<GetCityStatsRequest>,
    ) -> Result<Response<GetCityStatsResponse>, Status> {
        let viewer = Viewer::of(&request, &self.departments)?;
        let req = request.into_inner();
        let catalogue = self.ledger.catalogue();
        if !req.city.is_empty() {
            validate::city("city", &req.city, catalogue).map_err(Status::from)?;
        }
        let cities = viewer.cities(&req.city, catalogue.city_ids().map(str::to_owned).collect())?;
        let cities = viewer.filter_stats(self.ledger.stats(cities).await?);
        Ok(Response::new(GetCityStatsResponse { cities }))
    }

    async fn list_coordination_items(
        &self,
        request: Request<ListCoordinationItemsRequest>,
    ) -> Result<Response<ListCoordinationItemsResponse>, Status> {
        let viewer = Viewer::of(&request, &self.departments)?;
        let req = request.into_inner();
        let limit = page_size("page_size", req.page_size)?;
        let after = if req.page_token.is_empty() {
            0
        } else {
            req.page_token
                .parse::<i64>()
                .map_err(|_| invalid_argument("page_token", "is not a token this service gave"))?
        };
        let (items, next) = self
            .ledger
            .coordination(after, limit, req.include_assigned)
            .await?;
        // A page holds what this viewer may see of it (perhaps fewer than
        // page_size); the token pages on through the whole queue.
        let items = items.into_iter().filter(|i| viewer.sees_item(i)).collect();
        Ok(Response::new(ListCoordinationItemsResponse {
            items,
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn assign_owner(
        &self,
        request: Request<AssignOwnerRequest>,
    ) -> Result<Response<AssignOwnerResponse>, Status> {
        Viewer::of(&request, &self.departments)?.must_be_province()?;
        let req = request.into_inner();
        validate::ticket_id("ticket_id", &req.ticket_id).map_err(Status::from)?;
        validate::city("owner_city", &req.owner_city, self.ledger.catalogue())
            .map_err(Status::from)?;
        validate::text("note", &req.note, validate::MAX_NOTE, false).map_err(Status::from)?;
        let event = self
            .ledger
            .assign(req.ticket_id, req.owner_city, req.note)
            .await?;
        Ok(Response::new(AssignOwnerResponse { event: Some(event) }))
    }

    async fn get_ledger_ticket(
        &self,
        request: Request<GetLedgerTicketRequest>,
    ) -> Result<Response<GetLedgerTicketResponse>, Status> {
        let viewer = Viewer::of(&request, &self.departments)?;
        let req = request.into_inner();
        validate::ticket_id("ticket_id", &req.ticket_id).map_err(Status::from)?;
        let ticket = self.ledger.ticket(req.ticket_id.clone()).await?;
        // What a viewer may not see, it is not told exists.
        if !viewer.sees_ticket(&ticket) {
            return Err(GatewayError::UnknownTicket(req.ticket_id).into());
        }
        Ok(Response::new(GetLedgerTicketResponse {
            ticket: Some(privacy::masked_ticket(ticket)),
        }))
    }
}
