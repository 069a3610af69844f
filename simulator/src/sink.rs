//! A city node that only acknowledges: for benchmarks, the city at the far
//! end of what is not being measured (the origin, which the gateway tells
//! of each delivery), so that nothing piles up, is retried or is set aside
//! on the measured path. Plaintext, on loopback.

use std::net::SocketAddr;

use hotline_proto::pb::city_node_server::{CityNode, CityNodeServer};
use hotline_proto::pb::{
    DeliverEventRequest, DeliverEventResponse, DeliverLinkRequest, DeliverLinkResponse,
    DeliverTicketRequest, DeliverTicketResponse,
};
use tonic::{Request, Response, Status};

struct Sink;

#[tonic::async_trait]
impl CityNode for Sink {
    async fn deliver_ticket(
        &self,
        _: Request<DeliverTicketRequest>,
    ) -> Result<Response<DeliverTicketResponse>, Status> {
        Ok(Response::new(DeliverTicketResponse {}))
    }

    async fn deliver_event(
        &self,
        _: Request<DeliverEventRequest>,
    ) -> Result<Response<DeliverEventResponse>, Status> {
        Ok(Response::new(DeliverEventResponse {}))
    }

    async fn deliver_link(
        &self,
        _: Request<DeliverLinkRequest>,
    ) -> Result<Response<DeliverLinkResponse>, Status> {
        Ok(Response::new(DeliverLinkResponse {}))
    }
}

/// Starts a sink on a free loopback port; it runs until the runtime ends.
pub async fn start() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CityNodeServer::new(Sink))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(addr)
}
