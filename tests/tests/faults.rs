//! Crashes for real: SIGKILL of the gateway, or of a target node, in the
//! middle of a stream of tickets. Every ticket a city acknowledged must end
//! up delivered exactly once, with its events applied once and in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use federation_tests::*;
use hotline_proto::pb::*;
use tokio::task::JoinSet;

/// Tickets each sending city creates.
const PER_CITY: usize = 150;

/// Each city sends a stream of tickets to the others while the fault runs; returns the acknowledged ticket ids by target city.
async fn stream_with_fault(
    f: &mut Federation,
    fault: impl AsyncFnOnce(&mut Federation),
) -> BTreeMap<String, BTreeSet<String>> {
    let mut senders = JoinSet::new();
    for (i, origin) in CITIES.iter().enumerate() {
        let client = f.hotline(origin).await;
        let origin = origin.to_string();
        senders.spawn(async move {
            let mut acked = Vec::new();
            for n in 0..PER_CITY {
                let target = CITIES[(i + 1 + n % 3) % 4];
                let mut d = draft(&[target], "transport");
                d.request_id = format!("{origin}-{n}");
                // Creating needs only the origin's own node: it commits and
                // answers whatever the gateway or the target is doing. While
                // the origin's node itself is down the platform retries with
                // the same request id, which never makes a second ticket.
                let id = loop {
                    let req = CreateTicketRequest {
                        ticket: Some(d.clone()),
                    };
                    match client.clone().create_ticket(req).await {
                        Ok(r) => break r.into_inner().ticket.unwrap().id,
                        // A call in flight when its node is killed ends in a
                        // connection reset (UNKNOWN); the same request id
                        // makes every retry safe.
                        Err(e) if hotline_proto::grpc::is_transient(e.code()) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("create: {e}"),
                    }
                };
                acked.push((target.to_string(), id));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    fault(f).await;
    let mut by_target: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    while let Some(acked) = senders.join_next().await {
        for (target, id) in acked.unwrap() {
            by_target.entry(target).or_default().insert(id);
        }
    }
    by_target
}

async fn assert_each_delivered_once(f: &Federation, expected: &BTreeMap<String, BTreeSet<String>>) {
    let total: usize = expected.values().map(BTreeSet::len).sum();
    assert_eq!(total, PER_CITY * CITIES.len());
    for (target, ids) in expected {
        let client = f.hotline(target).await;
        let received = eventually(
            &format!("{target} holds all {} tickets sent to it", ids.len()),
            Duration::from_secs(60),
            || {
                let mut client = client.clone();
                async move {
                    let got = list_all(&mut client, TicketRole::Received).await;
                    (got.len() >= ids.len()).then_some(got)
                }
            },
        )
        .await;
        let got: BTreeSet<String> = received.iter().map(|t| t.id.clone()).collect();
        assert_eq!(&got, ids, "{target} holds other tickets than were sent");
        assert_eq!(received.len(), ids.len(), "{target} holds a ticket twice");
        for t in &received {
            let seqs: Vec<u64> = t.history.iter().map(|e| e.seq).collect();
            assert_eq!(
                seqs,
                [1, 2, 3],
                "{}: events not applied once, in order",
                t.id
            );
            assert_eq!(t.status, TicketStatus::Delivered as i32);
        }
        // One request id, one ticket: no origin made a second one.
        let requests: BTreeSet<&str> = received.iter().map(|t| t.request_id.as_str()).collect();
        assert_eq!(requests.len(), received.len());
    }
    // The origins hear of every delivery, and the ledger counted each once.
    for origin in CITIES {
        let client = f.hotline(origin).await;
        eventually(
            &format!("{origin} sees all its tickets delivered"),
            Duration::from_secs(60),
            || {
                let mut client = client.clone();
                async move {
                    let sent = list_all(&mut client, TicketRole::Sent).await;
                    (sent.len() == PER_CITY
                        && sent
                            .iter()
                            .all(|t| t.status == TicketStatus::Delivered as i32))
                    .then_some(())
                }
            },
        )
        .await;
    }
    let stats = f
        .observatory()
        .await
        .get_city_stats(GetCityStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .cities;
    for s in stats {
        assert_eq!(s.sent as usize, PER_CITY, "{}", s.city);
        assert_eq!(s.received as usize, expected[&s.city].len(), "{}", s.city);
        assert_eq!(
            s.received_by_status.get("DELIVERED").copied().unwrap_or(0) as usize,
            expected[&s.city].len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_gateway_mid_stream_loses_and_doubles_nothing() {
    let mut f = Federation::start().await;
    let expected = stream_with_fault(&mut f, async |f: &mut Federation| {
        f.gateway.kill();
        tokio::time::sleep(Duration::from_millis(700)).await;
        f.start_gateway().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        f.gateway.kill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        f.start_gateway().await;
    })
    .await;
    assert_each_delivered_once(&f, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_target_node_mid_stream_loses_and_doubles_nothing() {
    let mut f = Federation::start().await;
    // Yibin dies while it is being sent tickets, and while it sends its own:
    // those it acknowledged before dying must still go out after restart.
    let expected = stream_with_fault(&mut f, async |f: &mut Federation| {
        f.node("yibin").kill();
        tokio::time::sleep(Duration::from_millis(700)).await;
        f.start_node("yibin").await;
    })
    .await;
    assert_each_delivered_once(&f, &expected).await;
}
