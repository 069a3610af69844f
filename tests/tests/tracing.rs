//! One ticket's dispatch is one trace across three processes: the origin
//! node, the gateway and the target node export their spans over OTLP to a
//! real receiver (a gRPC OTLP trace service on the opentelemetry-proto
//! types, in this test), and the spans of each share one trace id, although
//! every hop commits and forwards later from its outbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use federation_tests::*;
use hotline_proto::pb::TicketStatus;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tonic::{Request, Response, Status};

/// A span as received: its service, name, trace id and span ids.
#[derive(Debug, Clone)]
struct Seen {
    service: String,
    name: String,
    trace: Vec<u8>,
    span: Vec<u8>,
    parent: Vec<u8>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Seen>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut seen = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    seen.push(Seen {
                        service: service.clone(),
                        name: s.name,
                        trace: s.trace_id,
                        span: s.span_id,
                        parent: s.parent_span_id,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dispatch_is_one_trace_from_origin_node_through_gateway_to_target_node() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let endpoint = format!("http://{addr}");
    let f = Federation::start_with_env(
        "",
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let mut luzhou = f.hotline("luzhou").await;
    let yibin = f.hotline("yibin").await;
    let t = create(&mut luzhou, draft(&["yibin"], "tourism")).await;
    wait_status(&yibin, &t.id, TicketStatus::Delivered).await;

    // The target's DeliverTicket span, and every span of its trace.
    let trace = eventually(
        "the three processes export one trace, each span's parent in it",
        Duration::from_secs(20),
        || {
            let seen = receiver.0.lock().unwrap().clone();
            async move {
                let deliver = seen.iter().find(|s| {
                    s.service == "city-node-yibin" && s.name.ends_with("CityNode/DeliverTicket")
                })?;
                let of_trace: Vec<Seen> = seen
                    .iter()
                    .filter(|s| s.trace == deliver.trace)
                    .cloned()
                    .collect();
                let services: BTreeSet<&str> =
                    of_trace.iter().map(|s| s.service.as_str()).collect();
                let wanted = ["city-node-luzhou", "gateway", "city-node-yibin"];
                // A span is exported when it ends: the gateway's send ends
                // after the target's DeliverTicket it is the parent of, so
                // the trace is whole only once no span waits for its parent.
                (wanted.iter().all(|w| services.contains(w)) && roots(&of_trace).len() == 1)
                    .then_some(of_trace)
            }
        },
    )
    .await;
    let names: BTreeMap<&str, Vec<&str>> = trace.iter().fold(BTreeMap::new(), |mut m, s| {
        m.entry(s.service.as_str())
            .or_default()
            .push(s.name.as_str());
        m
    });
    let has = |service: &str, suffix: &str| names[service].iter().any(|n| n.ends_with(suffix));
    assert!(
        has("city-node-luzhou", "CityHotline/CreateTicket"),
        "{names:?}"
    );
    assert!(has("gateway", "Federation/DispatchTicket"), "{names:?}");
    assert!(
        has("city-node-yibin", "CityNode/DeliverTicket"),
        "{names:?}"
    );
    // One tree: every span but the root has its parent in the trace.
    let roots = roots(&trace);
    assert_eq!(roots.len(), 1, "one root: {roots:?}\n{names:?}");
    assert!(
        roots[0].name.ends_with("CityHotline/CreateTicket"),
        "{roots:?}"
    );
}

/// The spans of `trace` whose parent is not in it.
fn roots(trace: &[Seen]) -> Vec<&Seen> {
    let ids: BTreeSet<&Vec<u8>> = trace.iter().map(|s| &s.span).collect();
    trace
        .iter()
        .filter(|s| s.parent.is_empty() || !ids.contains(&s.parent))
        .collect()
}
