//! Delivery to the city nodes: one outbox worker per member city, over one
//! long-lived HTTP/2 channel per city. What a city acknowledges leaves the
//! outbox in the same transaction that records it; what it cannot take now
//! is retried with backoff; what it refuses for good is set aside.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hotline_durable::outbox::{Item, Outcome, Sender};
use hotline_proto::pb::EventKind;
use hotline_proto::pb::city_node_client::CityNodeClient;
use tonic::Status;
use tonic::transport::Channel;

use crate::ledger::{self, Message};

/// How long one delivery may take before it counts as failed and is retried.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends outbox items to the city nodes.
pub struct NodeSender {
    clients: HashMap<String, CityNodeClient<Channel>>,
    ledger: ledger::Ledger,
}

impl NodeSender {
    /// One lazily connected channel per city; a city that is down now is
    /// reached when it comes back.
    pub fn new(
        nodes: &HashMap<String, String>,
        tls: &hotline_tls::ClientTls,
        ledger: &ledger::Ledger,
    ) -> anyhow::Result<Self> {
        let mut clients = HashMap::new();
        for (city, addr) in nodes {
            // The node must present its city's certificate.
            let server = hotline_proto::identity::Identity::City(city.clone());
            let channel = hotline_tls::channel(addr, tls, &server, Some(DELIVERY_TIMEOUT))?;
            clients.insert(city.clone(), CityNodeClient::new(channel));
        }
        Ok(Self {
            clients,
            ledger: ledger.clone(),
        })
    }
}

/// A passing failure is retried; any other is set aside for good.
fn outcome_of(status: &Status) -> Outcome {
    let text = format!("{:?}: {}", status.code(), status.message());
    Outcome::failed(hotline_proto::grpc::is_transient(status.code()), text)
}

impl Sender for NodeSender {
    async fn send(&self, item: Item) -> Outcome {
        let Some(client) = self.clients.get(&item.dest) else {
            return Outcome::Retry(format!("no node address for city {:?}", item.dest));
        };
        let mut client = client.clone();
        let message = match Message::decode(&item.kind, &item.payload) {
            Ok(m) => m,
            Err(why) => return Outcome::Refused(why),
        };
        match message {
            Message::DeliverTicket(req) => {
                let delivered = req
                    .ticket
                    .as_ref()
                    .and_then(|t| t.history.last())
                    .filter(|e| e.kind == EventKind::Delivered as i32)
                    .cloned();
                let Some(delivered) = delivered else {
                    return Outcome::Refused("delivery without its DELIVERED event".into());
                };
                let ledger = self.ledger.clone();
                match client.deliver_ticket(hotline_telemetry::traced(*req)).await {
                    Ok(_) => {
                        // Rung a moment before the commit: watchers also look
                        // again on their own a little later.
                        self.ledger.bell().ring();
                        Outcome::Delivered(Some(Box::new(move |c| {
                            let recorded =
                                ledger.with_work(c, |w| ledger::mark_delivered(w, &delivered));
                            match recorded {
                                Ok(wake) => Ok(wake),
                                Err(crate::GatewayError::Db(e)) => Err(e),
                                Err(e) => {
                                    tracing::error!(ticket = %delivered.ticket_id, error = %e,
                                    "delivered ticket does not fit the ledger");
                                    Ok(Vec::new())
                                }
                            }
                        })))
                    }
                    Err(status) => outcome_of(&status),
                }
            }
            Message::DeliverEvent(req) => {
                match client.deliver_event(hotline_telemetry::traced(req)).await {
                    Ok(_) => Outcome::Delivered(None),
                    Err(status) => outcome_of(&status),
                }
            }
            Message::DeliverLink(req) => {
                match client.deliver_link(hotline_telemetry::traced(req)).await {
                    Ok(_) => Outcome::Delivered(None),
                    Err(status) => outcome_of(&status),
                }
            }
        }
    }
}

/// Starts a delivery worker for every city.
pub fn spawn_workers(
    ledger: &ledger::Ledger,
    nodes: &HashMap<String, String>,
    tls: &hotline_tls::ClientTls,
    tasks: &mut tokio::task::JoinSet<()>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let sender = Arc::new(NodeSender::new(nodes, tls, ledger)?);
    for city in nodes.keys() {
        ledger.outbox().spawn_worker(
            tasks,
            ledger.db().clone(),
            city.clone(),
            sender.clone(),
            stop.clone(),
        );
    }
    Ok(())
}
