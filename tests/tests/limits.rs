//! Limits at the gateway: one city flooding it cannot starve the others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use federation_tests::{Federation, create, draft, eventually, list_all};
use hotline_proto::pb::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_flooding_the_gateway_at_ten_times_its_limit_leaves_the_others_tickets_flowing() {
    // Each caller: 20 requests a second, 20 at once.
    let f = Federation::start_with(
        "[limits]\nper_caller_rps = 20.0\nper_caller_burst = 20.0",
        "",
    )
    .await;

    // Luzhou floods: 200 a second for three seconds, on its own certificate.
    let flood = {
        let gw = f.federation_as("luzhou").await;
        tokio::spawn(async move {
            let (mut exhausted, mut admitted) = (0u32, 0u32);
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while start.elapsed() < Duration::from_secs(3) {
                tick.tick().await;
                match gw.clone().report_event(ReportEventRequest::default()).await {
                    Err(e) if e.code() == Code::ResourceExhausted => exhausted += 1,
                    // Admitted, and refused by the handler for what it is.
                    Err(e) if e.code() == Code::InvalidArgument => admitted += 1,
                    other => panic!("unexpected answer to the flood: {other:?}"),
                }
            }
            (exhausted, admitted)
        })
    };

    // Meanwhile Yibin's platform creates 30 tickets for Zigong.
    let mut yibin = f.hotline("yibin").await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(
            create(&mut yibin, draft(&["zigong"], "employment"))
                .await
                .id,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (exhausted, admitted) = flood.await.unwrap();
    assert!(
        exhausted > 400,
        "the flood was not held back: {exhausted} refused, {admitted} admitted"
    );
    assert!(
        admitted <= 20 + 3 * 20 + 5,
        "{admitted} admitted past the rate"
    );

    // Every one of Yibin's tickets reached Zigong.
    let zigong = f.hotline("zigong").await;
    eventually("zigong holds all 30", Duration::from_secs(30), || {
        let mut z = zigong.clone();
        async move {
            let got = list_all(&mut z, TicketRole::Received).await;
            (got.len() == 30).then_some(())
        }
    })
    .await;
    let mut z = zigong.clone();
    let got = list_all(&mut z, TicketRole::Received).await;
    for id in ids {
        assert!(got.iter().any(|t| t.id == id), "{id} missing");
    }
}
