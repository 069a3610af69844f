//! What an operator of the processes relies on: stock tools find the
//! services (health, reflection), and SIGTERM stops a process cleanly
//! without losing what it still owed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use federation_tests::*;
use hotline_proto::identity::Identity;
use hotline_proto::pb::*;
use tokio_stream::StreamExt;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn services(f: &Federation, server: &Identity) -> Vec<String> {
    let mut client = ServerReflectionClient::new(f.channel_as(&Identity::Province, server));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.next().await.unwrap().unwrap();
    match response.message_response.unwrap() {
        MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_answers_health_and_reflection() {
    let f = Federation::start().await;
    let gw = services(&f, &Identity::Gateway).await;
    for s in [
        "hotline.federation.v1.Federation",
        "hotline.federation.v1.Observatory",
        "grpc.health.v1.Health",
    ] {
        assert!(gw.iter().any(|g| g == s), "gateway lacks {s}: {gw:?}");
    }
    let node = services(&f, &Identity::City("zigong".into())).await;
    for s in [
        "hotline.federation.v1.CityHotline",
        "hotline.federation.v1.CityNode",
        "grpc.health.v1.Health",
    ] {
        assert!(node.iter().any(|g| g == s), "node lacks {s}: {node:?}");
    }
    // Their logs go to files here: plain text, no terminal colour codes,
    // and each says it started.
    let logs = f.logs();
    assert!(!logs.contains('\x1b'), "colour codes in a log file: {logs}");
    assert!(logs.contains("gateway started"), "{logs}");
    assert!(logs.contains("city node started"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_queued_work_goes_out_after_restart() {
    let mut f = Federation::start().await;
    // Yibin is away: what Luzhou sends it waits in the gateway's outbox.
    assert!(
        f.node("yibin").terminate().success(),
        "yibin did not stop cleanly"
    );
    let mut luzhou = f.hotline("luzhou").await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            create(&mut luzhou, draft(&["yibin"], "employment"))
                .await
                .id,
        );
    }
    eventually("the gateway has all 20", Duration::from_secs(20), || {
        let mut luzhou = luzhou.clone();
        let ids = ids.clone();
        async move {
            for id in &ids {
                let t = get(&mut luzhou, id).await?;
                (t.status == TicketStatus::Dispatched as i32).then_some(())?;
            }
            Some(())
        }
    })
    .await;
    // The gateway stops cleanly with them still owed, and starts again.
    assert!(
        f.gateway.terminate().success(),
        "the gateway did not stop cleanly"
    );
    f.start_gateway().await;
    f.start_node("yibin").await;
    let yibin = f.hotline("yibin").await;
    let got = eventually("yibin has all 20", Duration::from_secs(30), || {
        let mut yibin = yibin.clone();
        async move {
            let got = list_all(&mut yibin, TicketRole::Received).await;
            (got.len() == 20).then_some(got)
        }
    })
    .await;
    let mut got: Vec<String> = got.into_iter().map(|t| t.id).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
}
