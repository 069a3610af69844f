//! The node's link to the gateway: its outbox worker sends dispatches and
//! event reports until the gateway acknowledges each. The DISPATCHED event
//! the gateway answers with is applied in the same transaction that removes
//! the dispatch from the outbox.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hotline_durable::outbox::{Item, Outcome, Sender};
use hotline_proto::pb::federation_client::FederationClient;
use hotline_proto::pb::{DispatchTicketRequest, ReportEventRequest};
use prost::Message;
use tonic::Status;
use tonic::transport::Channel;

use crate::error::NodeError;
use crate::store::{self, DISPATCH, REPORT_EVENT};

pub struct GatewaySender {
    /// One client per address of the gateway (its replicas).
    clients: Vec<(String, FederationClient<Channel>)>,
    /// The address in use: the next one after a passing failure.
    current: AtomicUsize,
}

impl GatewaySender {
    /// Lazily connected channels: a gateway that is down now is reached
    /// when it comes back, or another of its addresses meanwhile.
    pub fn new(addrs: &[String], tls: &hotline_tls::ClientTls) -> anyhow::Result<Self> {
        let gateway = hotline_proto::identity::Identity::Gateway;
        let mut clients = Vec::new();
        for addr in addrs {
            let channel = hotline_tls::channel(addr, tls, &gateway, Some(Duration::from_secs(5)))?;
            clients.push((addr.clone(), FederationClient::new(channel)));
        }
        anyhow::ensure!(!clients.is_empty(), "no gateway address");
        Ok(Self {
            clients,
            current: AtomicUsize::new(0),
        })
    }

    fn client(&self) -> (usize, FederationClient<Channel>) {
        let i = self.current.load(Ordering::Relaxed) % self.clients.len();
        (i, self.clients[i].1.clone())
    }

    /// After a passing failure at address `i`, the next attempt goes to the
    /// next address (once per failure, however many sends saw it).
    fn fail_over(&self, i: usize, status: &Status) {
        if self.clients.len() < 2 || !hotline_proto::grpc::is_transient(status.code()) {
            return;
        }
        let next = (i + 1) % self.clients.len();
        if self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(from = %self.clients[i].0, to = %self.clients[next].0,
                code = ?status.code(), "gateway unreachable; trying its next address");
        }
    }
}

/// A passing failure is retried; any other is set aside for good.
fn outcome_of(status: &Status) -> Outcome {
    let text = format!("{:?}: {}", status.code(), status.message());
    Outcome::failed(hotline_proto::grpc::is_transient(status.code()), text)
}

impl Sender for GatewaySender {
    async fn send(&self, item: Item) -> Outcome {
        let (at, mut client) = self.client();
        match item.kind.as_str() {
            DISPATCH => {
                let Ok(req) = DispatchTicketRequest::decode(item.payload.as_slice()) else {
                    return Outcome::Refused("payload does not decode".into());
                };
                match client.dispatch_ticket(hotline_telemetry::traced(req)).await {
                    Ok(resp) => {
                        let Some(event) = resp.into_inner().event else {
                            return Outcome::Retry("the gateway answered without an event".into());
                        };
                        Outcome::Delivered(Some(Box::new(move |c| {
                            match store::apply_remote(c, &event) {
                                Ok(_) => Ok(Vec::new()),
                                Err(NodeError::Db(e)) => Err(e),
                                Err(e) => {
                                    tracing::error!(ticket = %event.ticket_id, error = %e,
                                        "the gateway's DISPATCHED event does not fit");
                                    Ok(Vec::new())
                                }
                            }
                        })))
                    }
                    Err(status) => {
                        self.fail_over(at, &status);
                        outcome_of(&status)
                    }
                }
            }
            REPORT_EVENT => {
                let Ok(req) = ReportEventRequest::decode(item.payload.as_slice()) else {
                    return Outcome::Refused("payload does not decode".into());
                };
                match client.report_event(hotline_telemetry::traced(req)).await {
                    Ok(_) => Outcome::Delivered(None),
                    Err(status) => {
                        self.fail_over(at, &status);
                        outcome_of(&status)
                    }
                }
            }
            other => Outcome::Refused(format!("unknown outbox kind {other:?}")),
        }
    }
}
