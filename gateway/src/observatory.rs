//! The `Observatory` service: what the provincial centre sees and does.

use hotline_proto::pb::observatory_server::Observatory;
use hotline_proto::pb::{
    AssignOwnerRequest, AssignOwnerResponse, GetCityStatsRequest, GetCityStatsResponse,
    GetLedgerTicketRequest, GetLedgerTicketResponse, ListCoordinationItemsRequest,
    ListCoordinationItemsResponse,
};
use hotline_proto::{error::invalid_argument, privacy, validate};
use tonic::{Request, Response, Status};

use crate::ledger::Ledger;

pub struct ObservatoryService {
    ledger: Ledger,
}

impl ObservatoryService {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
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
        let req = request.into_inner();
        let catalogue = self.ledger.catalogue();
        let cities = if req.city.is_empty() {
            catalogue.city_ids().map(str::to_owned).collect()
        } else {
            validate::city("city", &req.city, catalogue).map_err(Status::from)?;
            vec![req.city]
        };
        let cities = self.ledger.stats(cities).await?;
        Ok(Response::new(GetCityStatsResponse { cities }))
    }

    async fn list_coordination_items(
        &self,
        request: Request<ListCoordinationItemsRequest>,
    ) -> Result<Response<ListCoordinationItemsResponse>, Status> {
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
        Ok(Response::new(ListCoordinationItemsResponse {
            items,
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn assign_owner(
        &self,
        request: Request<AssignOwnerRequest>,
    ) -> Result<Response<AssignOwnerResponse>, Status> {
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
        let req = request.into_inner();
        validate::ticket_id("ticket_id", &req.ticket_id).map_err(Status::from)?;
        let ticket = self.ledger.ticket(req.ticket_id).await?;
        Ok(Response::new(GetLedgerTicketResponse {
            ticket: Some(privacy::masked_ticket(ticket)),
        }))
    }
}
