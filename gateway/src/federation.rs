//! The `Federation` service: city nodes dispatch tickets, report events, and
//! keep their transfer-signalling stream open.

use hotline_proto::error::invalid_argument;
use hotline_proto::pb::federation_server::Federation;
use hotline_proto::pb::transfer_signals_request::Signal;
use hotline_proto::pb::{
    DispatchTicketRequest, DispatchTicketResponse, ReportEventRequest, ReportEventResponse,
    TransferSignalsRequest, TransferSignalsResponse,
};
use hotline_proto::{time, validate};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::GatewayError;
use crate::ledger::Ledger;
use crate::limits::RateLimiter;
use crate::switchboard::Switchboard;

pub struct FederationService {
    ledger: Ledger,
    switchboard: Switchboard,
    /// `limits.max_ticket_age_days`.
    max_age_days: u32,
    /// The callers' rates, which a stream's messages count against as
    /// requests do.
    limiter: RateLimiter,
}

impl FederationService {
    pub fn new(
        ledger: Ledger,
        switchboard: Switchboard,
        max_age_days: u32,
        limiter: RateLimiter,
    ) -> Self {
        Self {
            ledger,
            switchboard,
            max_age_days,
            limiter,
        }
    }
}

/// The city that makes a request: the one its certificate names, which the
/// request's own `city` field may repeat but never contradict. On an
/// insecure gateway (plaintext, loopback) there are no certificates and the
/// field is taken as it is.
fn reporting_city<T>(request: &Request<T>, claimed: &str) -> Result<String, Status> {
    match hotline_tls::caller_city(request)? {
        Some(city) if claimed.is_empty() || claimed == city => Ok(city),
        Some(city) => {
            Err(GatewayError::PermissionDenied(format!("{city} cannot act as {claimed}")).into())
        }
        None => Ok(claimed.to_owned()),
    }
}

#[tonic::async_trait]
impl Federation for FederationService {
    type TransferSignalsStream = UnboundedReceiverStream<Result<TransferSignalsResponse, Status>>;

    async fn transfer_signals(
        &self,
        request: Request<Streaming<TransferSignalsRequest>>,
    ) -> Result<Response<Self::TransferSignalsStream>, Status> {
        if self.switchboard.is_closing() {
            return Err(Status::unavailable("the gateway is stopping"));
        }
        let certified = hotline_tls::caller_city(&request)?;
        let caller = hotline_tls::Peer::caller(&request)?.cloned();
        let mut inbound = request.into_inner();
        let city = match inbound.message().await?.and_then(|m| m.signal) {
            Some(Signal::HelloCity(city)) => match &certified {
                Some(c) if *c != city => {
                    return Err(GatewayError::PermissionDenied(format!(
                        "{c} cannot open the signalling stream of {city}"
                    ))
                    .into());
                }
                _ => city,
            },
            _ => {
                return Err(invalid_argument(
                    "signal",
                    "the first message must be hello_city",
                ));
            }
        };
        validate::city("signal.hello_city", &city, self.ledger.catalogue())
            .map_err(Status::from)?;
        if !self.switchboard.is_held() {
            return Err(Status::unavailable(
                "this gateway replica does not hold the transfer switchboard now: another replica does",
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        // Closed once the answers' stream is gone (the connection cut or
        // dropped): what the city sent and was not read yet is then read no
        // more, nor does it take the city's tokens.
        let answers = tx.clone();
        let link = self.switchboard.connect(&city, tx);
        let switchboard = self.switchboard.clone();
        let limiter = self.limiter.clone();
        let mut closing = self.switchboard.closing();
        let mut held = self.switchboard.held();
        tokio::spawn(async move {
            let mut closed = true;
            loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = closing.wait_for(|c| *c) => break,
                    _ = held.wait_for(|h| !*h) => break,
                    _ = answers.closed() => {
                        closed = false;
                        break;
                    }
                };
                match message {
                    Ok(Some(TransferSignalsRequest {
                        signal: Some(Signal::Transfer(t)),
                    })) => {
                        // Each message takes a token of the city's rate: a
                        // flood of them waits here (and the stream's flow
                        // control pushes back on the sender), and leaves the
                        // city's own requests refused, not the others'.
                        tokio::select! {
                            _ = limiter.wait(caller.as_ref()) => {}
                            _ = answers.closed() => {
                                closed = false;
                                break;
                            }
                        }
                        switchboard.signal(&city, t)
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        closed = false;
                        break;
                    }
                }
            }
            switchboard.disconnect(&city, link, closed);
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn dispatch_ticket(
        &self,
        request: Request<DispatchTicketRequest>,
    ) -> Result<Response<DispatchTicketResponse>, Status> {
        let city = reporting_city(&request, &request.get_ref().city)?;
        let req = request.into_inner();
        let catalogue = self.ledger.catalogue();
        validate::city("city", &city, catalogue).map_err(Status::from)?;
        let ticket = req
            .ticket
            .ok_or_else(|| hotline_proto::error::invalid_argument("ticket", "is required"))?;
        validate::dispatched_ticket(&ticket, catalogue, time::now_ms(), self.max_age_days)
            .map_err(Status::from)?;
        if ticket.origin_city != city {
            return Err(GatewayError::PermissionDenied(format!(
                "{} cannot dispatch a ticket of {}",
                city, ticket.origin_city
            ))
            .into());
        }
        let (id, target, category) = (
            ticket.id.clone(),
            ticket.target_cities.first().cloned().unwrap_or_default(),
            ticket.category.clone(),
        );
        let event = self.ledger.dispatch(ticket).await?;
        tracing::debug!(ticket = %id, origin = %city, target = %target, category = %category, "dispatched");
        Ok(Response::new(DispatchTicketResponse { event: Some(event) }))
    }

    async fn report_event(
        &self,
        request: Request<ReportEventRequest>,
    ) -> Result<Response<ReportEventResponse>, Status> {
        let city = reporting_city(&request, &request.get_ref().city)?;
        let req = request.into_inner();
        validate::city("city", &city, self.ledger.catalogue()).map_err(Status::from)?;
        let event = req
            .event
            .ok_or_else(|| hotline_proto::error::invalid_argument("event", "is required"))?;
        validate::reported_event(&event).map_err(Status::from)?;
        let events = self.ledger.report(city, event).await?;
        Ok(Response::new(ReportEventResponse { events }))
    }
}
