//! The node's link to the gateway: its outbox worker sends dispatches and
//! event reports until the gateway acknowledges each. The DISPATCHED event
//! the gateway answers with is applied in the same transaction that removes
//! the dispatch from the outbox.

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
    client: FederationClient<Channel>,
}

impl GatewaySender {
    /// A lazily connected channel: a gateway that is down now is reached
    /// when it comes back.
    pub fn new(addr: &str, tls: &hotline_tls::ClientTls) -> anyhow::Result<Self> {
        let gateway = hotline_proto::identity::Identity::Gateway;
        Ok(Self {
            client: FederationClient::new(hotline_tls::channel(
                addr,
                tls,
                &gateway,
                Some(Duration::from_secs(5)),
            )?),
        })
    }
}

/// A passing failure is retried; any other is set aside for good.
fn outcome_of(status: &Status) -> Outcome {
    let text = format!("{:?}: {}", status.code(), status.message());
    Outcome::failed(hotline_proto::grpc::is_transient(status.code()), text)
}

impl Sender for GatewaySender {
    async fn send(&self, item: Item) -> Outcome {
        let mut client = self.client.clone();
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
                    Err(status) => outcome_of(&status),
                }
            }
            REPORT_EVENT => {
                let Ok(req) = ReportEventRequest::decode(item.payload.as_slice()) else {
                    return Outcome::Refused("payload does not decode".into());
                };
                match client.report_event(hotline_telemetry::traced(req)).await {
                    Ok(_) => Outcome::Delivered(None),
                    Err(status) => outcome_of(&status),
                }
            }
            other => Outcome::Refused(format!("unknown outbox kind {other:?}")),
        }
    }
}
