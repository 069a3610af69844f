//! A city node given several addresses of the gateway (the replicas of a
//! provincial deployment, issue #9) fails over between them: with a dead
//! address first, its tickets, its events and its transfer signalling reach
//! the gateway through the next one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use federation_tests::console::{Console, start_transfer, transfer_request};
use federation_tests::*;
use hotline_proto::identity::Identity;
use hotline_proto::pb::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fails_over_to_the_gateways_next_address() {
    let mut f = Federation::start().await;
    let gateway = f.addr_of(&Identity::Gateway);
    // Nothing listens here.
    let dead = free_addr();
    let node = f.node("luzhou");
    node.kill();
    let config = node.config().to_owned();
    let text = std::fs::read_to_string(&config).unwrap();
    let line = format!("gateway = \"http://{gateway}\"");
    assert!(text.contains(&line), "{text}");
    std::fs::write(
        &config,
        text.replace(
            &line,
            &format!("gateway = \"http://{dead}\"\ngateways = [\"http://{gateway}\"]"),
        ),
    )
    .unwrap();
    f.start_node("luzhou").await;

    let mut luzhou = f.hotline("luzhou").await;
    let yibin = f.hotline("yibin").await;
    let t = create(&mut luzhou, draft(&["yibin"], "education")).await;
    wait_status(&yibin, &t.id, TicketStatus::Delivered).await;
    // The origin's own event goes up the same way: resolved at Yibin, closed
    // at Luzhou, and Yibin hears of it.
    let mut y = yibin.clone();
    y.accept_ticket(AcceptTicketRequest {
        ticket_id: t.id.clone(),
        note: String::new(),
    })
    .await
    .unwrap();
    y.resolve_ticket(ResolveTicketRequest {
        ticket_id: t.id.clone(),
        note: String::new(),
    })
    .await
    .unwrap();
    wait_status(&luzhou, &t.id, TicketStatus::Resolved).await;
    luzhou
        .close_ticket(CloseTicketRequest {
            ticket_id: t.id.clone(),
            satisfaction: Satisfaction::Satisfied as i32,
            note: String::new(),
        })
        .await
        .unwrap();
    wait_status(&yibin, &t.id, TicketStatus::Closed).await;
    // Transfer signalling found the gateway too: a call transferred from
    // Luzhou rings at Yibin.
    let mut at_luzhou = Console::open(&mut luzhou, "lz-1", &[]).await;
    let mut y = yibin.clone();
    let mut at_yibin = Console::open(&mut y, "yb-1", &[]).await;
    let req = transfer_request("lz-1", "yibin", "education", TransferMode::Blind);
    let mut rung = false;
    for _ in 0..40 {
        start_transfer(&mut luzhou, req.clone()).await;
        if at_yibin.rings_within(Duration::from_millis(500)).await {
            rung = true;
            break;
        }
    }
    assert!(rung, "a transfer from Luzhou never rang at Yibin");
    at_luzhou.close();
    at_yibin.close();
    let logs = f.logs();
    assert!(
        logs.contains("gateway unreachable; trying its next address"),
        "the uplink did not fail over"
    );
    assert!(
        logs.contains("transfer signalling to the gateway failed; trying its next address"),
        "the signalling did not fail over"
    );
}
