//! The node's end of the transfer-signalling stream: kept open to the
//! gateway for the node's whole life, reopened with backoff when it drops.
//! While it is down the node fails its live transfers (see
//! [`Calls::link_down`]) and refuses new ones with UNAVAILABLE.

use std::time::Duration;

use hotline_proto::pb::TransferSignalsRequest;
use hotline_proto::pb::federation_client::FederationClient;
use hotline_proto::pb::transfer_signals_request::Signal;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::calls::Calls;

pub async fn run(
    calls: Calls,
    gateways: Vec<String>,
    tls: hotline_tls::ClientTls,
    mut stop: watch::Receiver<bool>,
) {
    let server = hotline_proto::identity::Identity::Gateway;
    let mut clients = Vec::new();
    for gateway in &gateways {
        match hotline_tls::channel(gateway, &tls, &server, None) {
            Ok(c) => clients.push((gateway.clone(), FederationClient::new(c))),
            Err(e) => {
                tracing::error!(error = %e, gateway = %gateway, "no transfer signalling");
                return;
            }
        }
    }
    if clients.is_empty() {
        tracing::error!("no gateway address: no transfer signalling");
        return;
    }
    // The address in use; each time the stream cannot open or drops, the
    // next one (another replica of the gateway) is tried.
    let mut at = 0;
    let mut backoff = Duration::from_millis(100);
    let mut sweep = tokio::time::interval(Duration::from_millis(250));
    while !*stop.borrow() {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(TransferSignalsRequest {
            signal: Some(Signal::HelloCity(calls.city().to_owned())),
        });
        let client = &mut clients[at].1;
        let opened = tokio::select! {
            r = client.transfer_signals(UnboundedReceiverStream::new(rx)) => r,
            _ = stop.changed() => break,
        };
        if let Ok(response) = opened {
            let mut inbound = response.into_inner();
            calls.link_up(tx);
            backoff = Duration::from_millis(100);
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(r)) => if let Some(t) = r.transfer { calls.on_signal(t) },
                        _ => break,
                    },
                    _ = sweep.tick() => calls.sweep(),
                    _ = stop.changed() => break,
                }
            }
            calls.link_down(*stop.borrow());
        }
        if clients.len() > 1 && !*stop.borrow() {
            let next = (at + 1) % clients.len();
            tracing::warn!(from = %clients[at].0, to = %clients[next].0,
                "transfer signalling to the gateway failed; trying its next address");
            at = next;
        }
        // While the gateway is away, transfers still end by their deadline.
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                _ = sweep.tick() => calls.sweep(),
                _ = stop.changed() => return,
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
