//! The `Observatory` service: what the provincial centre sees and does;
//! departments and cities see their part of it ([`crate::roles`]).

use std::pin::Pin;
use std::sync::Arc;

use hotline_proto::pb::observatory_server::Observatory;
use hotline_proto::pb::{
    AssignOwnerRequest, AssignOwnerResponse, CategoryCount, CityTopCategories, FlowCell, FlowEvent,
    GetCityStatsRequest, GetCityStatsResponse, GetFlowMatrixRequest, GetFlowMatrixResponse,
    GetLedgerTicketRequest, GetLedgerTicketResponse, GetTopCategoriesRequest,
    GetTopCategoriesResponse, ListCoordinationItemsRequest, ListCoordinationItemsResponse,
    ListOverdueTicketsRequest, ListOverdueTicketsResponse, OverdueTicket, WatchFlowRequest,
    flow_event::Change,
};
use hotline_proto::pb::{
    CityTopMatters, DigestLine, EscalationActionKind, EscalationRule, GetSupervisionDigestRequest,
    GetSupervisionDigestResponse, GetTopMattersRequest, GetTopMattersResponse,
    ListEscalationsRequest, ListEscalationsResponse, RecordEscalationActionRequest,
    RecordEscalationActionResponse,
};
use hotline_proto::{error::invalid_argument, privacy, time, validate};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::GatewayError;
use crate::flowtail::{self, FlowTail};
use crate::ledger::Ledger;
use crate::limits::StreamSlots;
use crate::roles::{Departments, Viewer};
use crate::supervision;
use crate::windows::{Grain, Window};

pub struct ObservatoryService {
    ledger: Ledger,
    departments: Arc<Departments>,
    /// Set when the gateway stops: the watch streams end.
    closing: watch::Receiver<bool>,
    /// The one reader of the flow log the watch streams share.
    tail: FlowTail,
    /// The watch streams open, within their limits.
    streams: StreamSlots,
}

impl ObservatoryService {
    pub fn new(
        ledger: Ledger,
        departments: Arc<Departments>,
        closing: watch::Receiver<bool>,
        tail: FlowTail,
        streams: StreamSlots,
    ) -> Self {
        Self {
            ledger,
            departments,
            closing,
            tail,
            streams,
        }
    }

    fn window(&self, field: &str, wire: i32, period: &str) -> Result<Window, Status> {
        Window::parse(field, wire, period, time::now_ms()).map_err(Status::from)
    }

    /// A monthly ranking's month, the cities the viewer may read of `city`
    /// ("" for all), and its limit (default and at most 10).
    fn monthly(
        &self,
        viewer: &Viewer,
        city: &str,
        month: &str,
        limit: i32,
    ) -> Result<(Window, Vec<String>, usize), Status> {
        let catalogue = self.ledger.catalogue();
        if !city.is_empty() {
            validate::city("city", city, catalogue).map_err(Status::from)?;
        }
        let limit = match limit {
            0 => 10,
            n if n < 0 => return Err(invalid_argument("limit", "must not be negative")),
            n => (n as usize).min(10),
        };
        let w = self.window("month", Grain::Month as i32, month)?;
        let cities = viewer.cities(city, catalogue.city_ids().map(str::to_owned).collect())?;
        Ok((w, cities, limit))
    }
}

/// The most events a new watcher may ask to replay.
const MAX_REPLAY: u32 = 10_000;

fn sees_event(viewer: &Viewer, e: &FlowEvent) -> bool {
    match &e.change {
        Some(Change::Ticket(t)) => viewer.sees_flow(&t.origin_city, &t.handling_city, &t.category),
        Some(Change::Transfer(t)) => viewer.sees_flow(&t.origin_city, &t.target_city, &t.category),
        None => false,
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
        let w = self.window("period", req.window, &req.period)?;
        let cities = viewer.cities(&req.city, catalogue.city_ids().map(str::to_owned).collect())?;
        let cities = self.ledger.stats(w, cities, viewer.categories()).await?;
        Ok(Response::new(GetCityStatsResponse {
            cities,
            window: req.window,
            period: w.label(),
        }))
    }

    async fn get_flow_matrix(
        &self,
        request: Request<GetFlowMatrixRequest>,
    ) -> Result<Response<GetFlowMatrixResponse>, Status> {
        let viewer = Viewer::of(&request, &self.departments)?;
        let req = request.into_inner();
        let w = self.window("period", req.window, &req.period)?;
        let flows = self.ledger.flow_matrix(w).await.map_err(Status::from)?;
        let cells = flows
            .into_iter()
            .filter(|f| viewer.sees_flow(&f.origin, &f.target, &f.category))
            .map(|f| FlowCell {
                origin_city: f.origin,
                target_city: f.target,
                category: f.category,
                tickets: f.tickets,
                transfers: f.transfers,
            })
            .collect();
        Ok(Response::new(GetFlowMatrixResponse {
            cells,
            window: req.window,
            period: w.label(),
        }))
    }

    async fn get_top_categories(
        &self,
        request: Request<GetTopCategoriesRequest>,
    ) -> Result<Response<GetTopCategoriesResponse>, Status> {
        let viewer = Viewer::of(&request, &self.departments)?;
        let req = request.into_inner();
        let (w, cities, limit) = self.monthly(&viewer, &req.city, &req.month, req.limit)?;
        let mut top = self.ledger.top_categories(w).await.map_err(Status::from)?;
        let allowed = viewer.categories();
        let cities = cities
            .into_iter()
            .map(|city| {
                let categories = top
                    .remove(&city)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(c, _)| allowed.as_ref().is_none_or(|a| a.contains(c)))
                    .take(limit)
                    .map(|(category, count)| CategoryCount { category, count })
                    .collect();
                CityTopCategories { city, categories }
            })
            .collect();
        Ok(Response::new(GetTopCategoriesResponse {
            month: w.label(),
            cities,
        }))
    }

    async fn list_overdue_tickets(
        &self,
        request: Request<ListOverdueTicketsRequest>,
    ) -> Result<Response<ListOverdueTicketsResponse>, Status> {
        let viewer = Viewer::of(&request, &self.departments)?;
        let limit = page_size("page_size", request.get_ref().page_size)?;
        // A city answers for the overdue tickets it handles.
        let (rows, total) = self
            .ledger
            .overdue(time::now_ms(), limit, viewer.sees())
            .await
            .map_err(Status::from)?;
        let tickets = rows
            .into_iter()
            .map(|o| OverdueTicket {
                ticket_id: o.id,
                origin_city: o.origin,
                handling_city: o.handler,
                category: o.category,
                status: o.status,
                due_time: Some(time::from_unix_ms(o.due_ms)),
                urgent: o.urgent,
                stage: o.stage,
            })
            .collect();
        Ok(Response::new(ListOverdueTicketsResponse { tickets, total }))
    }

    type WatchFlowStream = Pin<Box<dyn Stream<Item = Result<FlowEvent, Status>> + Send>>;

    async fn watch_flow(
        &self,
        request: Request<WatchFlowRequest>,
    ) -> Result<Response<Self::WatchFlowStream>, Status> {
        let viewer = Viewer::of(&request, &self.departments)?;
        // A place among the open streams first: past its caller's or the
        // gateway's limit, nothing else is done for it.
        let slot = self.streams.take(hotline_tls::Peer::caller(&request)?)?;
        let req = request.into_inner();
        if req.replay > MAX_REPLAY {
            return Err(invalid_argument(
                "replay",
                &format!("must be at most {MAX_REPLAY}"),
            ));
        }
        let bounds = self.ledger.flow_bounds().await.map_err(Status::from)?;
        let mut cursor = req.after_cursor;
        match bounds {
            Some((lo, hi)) if cursor > 0 => {
                if cursor + 1 < lo {
                    return Err(Status::out_of_range(format!(
                        "after_cursor {cursor} is older than the oldest event kept ({lo}); \
                         start again from 0"
                    )));
                }
                if cursor > hi {
                    return Err(Status::out_of_range(format!(
                        "after_cursor {cursor} is ahead of the last event written ({hi})"
                    )));
                }
            }
            Some((_, hi)) => cursor = hi.saturating_sub(u64::from(req.replay)),
            None => {}
        }
        let (tx, rx) = mpsc::channel(flowtail::BATCH);
        let tail = self.tail.clone();
        let mut head = tail.head();
        let mut closing = self.closing.clone();
        tokio::spawn(async move {
            // Held as long as the stream is open.
            let _slot = slot;
            loop {
                if *closing.borrow() {
                    return;
                }
                let batch = match tail.after(cursor).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    tokio::select! {
                        _ = head.changed() => {}
                        _ = closing.changed() => {}
                        _ = tx.closed() => return,
                    }
                    continue;
                }
                for e in batch {
                    cursor = e.cursor;
                    if sees_event(&viewer, &e) && tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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

    async fn list_escalations(
        &self,
        request: Request<ListEscalationsRequest>,
    ) -> Result<Response<ListEscalationsResponse>, Status> {
        let viewer = Viewer::of(&request, &self.departments)?;
        let req = request.into_inner();
        let limit = page_size("page_size", req.page_size)?;
        let rule = match EscalationRule::try_from(req.rule) {
            Ok(EscalationRule::Unspecified) => None,
            Ok(r) => Some(r),
            Err(_) => return Err(invalid_argument("rule", "unknown value")),
        };
        if !req.ticket_id.is_empty() {
            validate::ticket_id("ticket_id", &req.ticket_id).map_err(Status::from)?;
        }
        let before = if req.page_token.is_empty() {
            i64::MAX
        } else {
            supervision::parse_escalation_id(&req.page_token)
                .ok_or_else(|| invalid_argument("page_token", "is not a token this service gave"))?
        };
        let filter = supervision::Filter {
            rule,
            include_closed: req.include_closed,
            ticket_id: (!req.ticket_id.is_empty()).then_some(req.ticket_id),
        };
        let (escalations, next) = self
            .ledger
            .escalations(filter, before, limit, viewer.sees())
            .await
            .map_err(Status::from)?;
        Ok(Response::new(ListEscalationsResponse {
            escalations,
            next_page_token: next.map(supervision::escalation_id).unwrap_or_default(),
        }))
    }

    async fn record_escalation_action(
        &self,
        request: Request<RecordEscalationActionRequest>,
    ) -> Result<Response<RecordEscalationActionResponse>, Status> {
        let viewer = Viewer::of(&request, &self.departments)?;
        if viewer != Viewer::Province {
            return Err(Status::permission_denied(
                "only the provincial centre acts on the supervision ledger",
            ));
        }
        let req = request.into_inner();
        let n = supervision::parse_escalation_id(&req.escalation_id).ok_or_else(|| {
            invalid_argument("escalation_id", "is not an escalation id (\"esc-N\")")
        })?;
        let kind = match EscalationActionKind::try_from(req.kind) {
            Ok(EscalationActionKind::Unspecified) | Err(_) => {
                return Err(invalid_argument(
                    "kind",
                    "must be REMINDER_LETTER, COORDINATION_MEETING, FORWARDED or CLOSED",
                ));
            }
            Ok(k) => k,
        };
        validate::text("note", &req.note, validate::MAX_NOTE, false).map_err(Status::from)?;
        if kind == EscalationActionKind::Forwarded {
            if req.department.is_empty() {
                return Err(invalid_argument(
                    "department",
                    "is required to forward: name the provincial department",
                ));
            }
            if !hotline_proto::catalogue::is_valid_id(&req.department) {
                return Err(invalid_argument(
                    "department",
                    "must be lowercase letters, digits and inner hyphens, at most 32 characters",
                ));
            }
        } else if !req.department.is_empty() {
            return Err(invalid_argument("department", "is only for FORWARDED"));
        }
        let escalation = self
            .ledger
            .write(move |w| {
                supervision::act(w, n, kind, &req.note, &req.department, time::now_ms())
            })
            .await
            .map_err(|e: GatewayError| Status::from(e))?;
        tracing::info!(escalation = %escalation.id, action = kind.as_str_name(), "supervision action recorded");
        Ok(Response::new(RecordEscalationActionResponse {
            escalation: Some(escalation),
        }))
    }

    async fn get_supervision_digest(
        &self,
        request: Request<GetSupervisionDigestRequest>,
    ) -> Result<Response<GetSupervisionDigestResponse>, Status> {
        let viewer = Viewer::of(&request, &self.departments)?;
        let req = request.into_inner();
        let w = self.window("day", Grain::Day as i32, &req.day)?;
        let categories = viewer.categories();
        let cities = viewer.cities(
            "",
            self.ledger
                .catalogue()
                .city_ids()
                .map(str::to_owned)
                .collect(),
        )?;
        // What the viewer sees of the ledger: a department its categories,
        // a city the escalations about what it handles.
        let (lines, merged) = self
            .ledger
            .digest(w, cities, categories, viewer.sees())
            .await
            .map_err(Status::from)?;
        let mut out = GetSupervisionDigestResponse {
            day: w.label(),
            merged,
            ..Default::default()
        };
        for ((rule, department), l) in lines {
            out.opened += l.opened;
            out.actions += l.actions;
            out.closed += l.closed;
            out.open_now += l.open_now;
            out.lines.push(DigestLine {
                rule,
                department,
                opened: l.opened,
                actions: l.actions,
                closed: l.closed,
                open_now: l.open_now,
            });
        }
        Ok(Response::new(out))
    }

    async fn get_top_matters(
        &self,
        request: Request<GetTopMattersRequest>,
    ) -> Result<Response<GetTopMattersResponse>, Status> {
        let viewer = Viewer::of(&request, &self.departments)?;
        let req = request.into_inner();
        let (w, cities, limit) = self.monthly(&viewer, &req.city, &req.month, req.limit)?;
        let province = !matches!(viewer, Viewer::City(_)) && req.city.is_empty();
        let (cities, province) = self
            .ledger
            .top_matters(w.period, cities, province, limit, viewer.sees())
            .await
            .map_err(Status::from)?;
        let cities = cities
            .into_iter()
            .map(|(city, matters)| CityTopMatters { city, matters })
            .collect();
        Ok(Response::new(GetTopMattersResponse {
            month: w.label(),
            cities,
            province,
        }))
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
