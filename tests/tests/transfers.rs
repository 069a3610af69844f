//! Call-transfer signalling (一键互转, 三方通话) between real city nodes
//! through a real gateway: every mode, every way a transfer fails, faults
//! of real processes, the fallback to a ticket, and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use federation_tests::console::{
    Console, answer, cancel, complete, decline, start_transfer, transfer_request,
};
use federation_tests::{Federation, eventually, get};
use hotline_proto::pb::transfer_signals_request::Signal;
use hotline_proto::pb::*;
use tonic::Code;

/// Short timings, so that rings time out in a test's time.
const NODE_TIMINGS: &str = "ring_timeout_ms = 800\ntransfer_deadline_ms = 6000";

async fn federation() -> Federation {
    Federation::start_with("", NODE_TIMINGS).await
}

/// Starts transfers until one rings at `console`: right after a restart
/// the target's node may not have linked to the gateway yet, and the
/// gateway fails a transfer to a city it cannot reach at once.
async fn transfer_until_rung(
    client: &mut hotline_proto::pb::city_hotline_client::CityHotlineClient<
        tonic::transport::Channel,
    >,
    console: &mut Console,
    req: StartTransferRequest,
) -> Transfer {
    for _ in 0..40 {
        let t = start_transfer(client, req.clone()).await;
        if console.rings_within(Duration::from_millis(500)).await {
            return t;
        }
    }
    panic!("{} never rang", console.operator);
}

fn state(t: &Transfer) -> TransferState {
    TransferState::try_from(t.state).unwrap()
}

async fn transfer_at(f: &Federation, city: &str, id: &str) -> Transfer {
    f.hotline(city)
        .await
        .get_transfer(GetTransferRequest {
            transfer_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .transfer
        .unwrap()
}

async fn city_stats(f: &Federation, city: &str) -> CityStats {
    f.city_stats(city).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_warm_and_three_way_transfers_complete_between_two_cities() {
    let f = federation().await;
    let mut luzhou = f.hotline("luzhou").await;
    let mut yibin = f.hotline("yibin").await;
    let mut lz = Console::open(&mut luzhou, "lz-1", &[]).await;
    let mut yb = Console::open(&mut yibin, "yb-1", &["housing-fund"]).await;

    for mode in [
        TransferMode::Blind,
        TransferMode::Warm,
        TransferMode::Conference,
    ] {
        let started = start_transfer(
            &mut luzhou,
            transfer_request("lz-1", "yibin", "housing-fund", mode),
        )
        .await;
        assert_eq!(state(&started), TransferState::Initiated);
        let ringing = yb.ringing().await;
        assert_eq!(ringing.id, started.id);
        assert_eq!(ringing.origin_operator, "lz-1");
        // The target hears what the call is about, not who the caller is.
        let caller = ringing.context.as_ref().unwrap().caller.clone().unwrap();
        assert_ne!(caller.phone, "13800001111");
        assert_ne!(caller.name, "李四");
        assert_eq!(
            ringing.context.as_ref().unwrap().summary,
            "公积金异地转移咨询"
        );
        lz.hears(&started.id, TransferState::Ringing).await;

        let answered = answer(&mut yibin, "yb-1", &started.id).await.unwrap();
        assert!(!answered.bridge_ref.is_empty());
        match mode {
            TransferMode::Blind => {}
            TransferMode::Warm => {
                let t = lz.hears(&started.id, TransferState::Answered).await;
                assert_eq!(
                    t.bridge_ref, answered.bridge_ref,
                    "both sides share the bridge"
                );
            }
            _ => {
                lz.hears(&started.id, TransferState::Conferenced).await;
                yb.hears(&started.id, TransferState::Conferenced).await;
            }
        }
        if mode != TransferMode::Blind {
            // The origin operator drops out: handed over.
            complete(&mut luzhou, "lz-1", &started.id).await.unwrap();
        }
        lz.hears(&started.id, TransferState::Completed).await;
        yb.hears(&started.id, TransferState::Completed).await;
        for city in ["luzhou", "yibin"] {
            let t = transfer_at(&f, city, &started.id).await;
            assert_eq!(state(&t), TransferState::Completed, "at {city}");
        }
        // The origin keeps the caller's contact for its own use.
        let at_origin = transfer_at(&f, "luzhou", &started.id).await;
        assert_eq!(
            at_origin.context.unwrap().caller.unwrap().phone,
            "13800001111"
        );
    }

    // The gateway recorded every one, per city and category.
    let yb_stats = eventually(
        "the gateway counted three answers",
        Duration::from_secs(10),
        || async {
            let s = city_stats(&f, "yibin").await;
            (s.transfers_in_by_outcome.get("COMPLETED") == Some(&3)).then_some(s)
        },
    )
    .await;
    assert_eq!(yb_stats.transfers_in, 3);
    assert_eq!(yb_stats.transfers_answered, 3);
    assert!((yb_stats.answer_rate - 1.0).abs() < 1e-9);
    assert_eq!(yb_stats.transfers_in_by_category["housing-fund"], 3);
    assert_eq!(yb_stats.transfers_answered_by_category["housing-fund"], 3);
    let lz_stats = city_stats(&f, "luzhou").await;
    assert_eq!(lz_stats.transfers_out, 3);
    assert_eq!(lz_stats.transfers_out_by_category["housing-fund"], 3);
    assert_eq!(lz_stats.transfers_in, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_transfer_ends_declined_for_both_operators() {
    let f = federation().await;
    let mut luzhou = f.hotline("luzhou").await;
    let mut zigong = f.hotline("zigong").await;
    let mut lz = Console::open(&mut luzhou, "lz-1", &[]).await;
    let mut zg = Console::open(&mut zigong, "zg-1", &[]).await;
    let t = start_transfer(
        &mut luzhou,
        transfer_request("lz-1", "zigong", "education", TransferMode::Warm),
    )
    .await;
    zg.ringing().await;
    decline(&mut zigong, "zg-1", &t.id).await.unwrap();
    let end = lz.hears(&t.id, TransferState::Declined).await;
    assert_eq!(end.reason, "declined");
    zg.hears(&t.id, TransferState::Declined).await;
    assert_eq!(
        state(&transfer_at(&f, "zigong", &t.id).await),
        TransferState::Declined
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_timeout_falls_over_to_a_second_operator_who_answers() {
    let f = federation().await;
    let mut luzhou = f.hotline("luzhou").await;
    let mut neijiang = f.hotline("neijiang").await;
    let mut lz = Console::open(&mut luzhou, "lz-1", &[]).await;
    // The longest idle is rung first: nj-a registered first.
    let mut first = Console::open(&mut neijiang, "nj-a", &["transport"]).await;
    let mut second = Console::open(&mut neijiang, "nj-b", &["transport", "tourism"]).await;
    // Takes other categories only: never rung for transport.
    let mut other = Console::open(&mut neijiang, "nj-c", &["taxation"]).await;

    let t = start_transfer(
        &mut luzhou,
        transfer_request("lz-1", "neijiang", "transport", TransferMode::Blind),
    )
    .await;
    let rang = first.ringing().await;
    assert_eq!(rang.target_operator, "nj-a");
    // nj-a does not pick up; after the ring timeout nj-b rings.
    let rang = second.ringing().await;
    assert_eq!(rang.id, t.id);
    assert_eq!(rang.attempts, 2);
    answer(&mut neijiang, "nj-b", &t.id).await.unwrap();
    let done = lz.hears(&t.id, TransferState::Completed).await;
    assert_eq!(done.target_operator, "nj-b");
    // nj-a can no longer take it.
    let late = answer(&mut neijiang, "nj-a", &t.id).await.unwrap_err();
    assert_eq!(late.code(), Code::PermissionDenied, "{late:?}");
    assert!(!other.rings_within(Duration::from_millis(200)).await);

    // Alone, an operator who never answers ends it: TIMED_OUT for both.
    let mut lone = Console::open(&mut neijiang, "nj-d", &["ecology"]).await;
    let t = start_transfer(
        &mut luzhou,
        transfer_request("lz-1", "neijiang", "ecology", TransferMode::Warm),
    )
    .await;
    lone.ringing().await;
    let end = lz.hears(&t.id, TransferState::TimedOut).await;
    assert_eq!(end.reason, "ring-timeout");
    lone.hears(&t.id, TransferState::TimedOut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_operator_available_the_transfer_fails_and_converts_to_a_ticket_the_target_receives()
 {
    let f = federation().await;
    let mut luzhou = f.hotline("luzhou").await;
    let mut yibin = f.hotline("yibin").await;
    let mut lz = Console::open(&mut luzhou, "lz-1", &[]).await;
    // Yibin's one operator is on a break.
    let mut away = Console::open(&mut yibin, "yb-1", &[]).await;
    away.set_available(false);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let t = start_transfer(
        &mut luzhou,
        transfer_request("lz-1", "yibin", "wage-arrears", TransferMode::Blind),
    )
    .await;
    let end = lz.hears(&t.id, TransferState::Failed).await;
    assert_eq!(end.reason, "no-operator");
    assert!(!away.rings_within(Duration::from_millis(200)).await);

    // One call: the failed transfer becomes a ticket for Yibin.
    let convert = || ConvertTransferToTicketRequest {
        operator_id: "lz-1".into(),
        transfer_id: t.id.clone(),
        note: "来电人同意转为工单".into(),
    };
    let ticket = luzhou
        .convert_transfer_to_ticket(convert())
        .await
        .unwrap()
        .into_inner()
        .ticket
        .unwrap();
    assert_eq!(ticket.target_cities, vec!["yibin".to_string()]);
    assert_eq!(ticket.category, "wage-arrears");
    assert_eq!(ticket.channel, Channel::CallTransfer as i32);
    assert!(ticket.description.contains(&t.id));
    // A second call returns the same ticket.
    let again = luzhou
        .convert_transfer_to_ticket(convert())
        .await
        .unwrap()
        .into_inner()
        .ticket
        .unwrap();
    assert_eq!(again.id, ticket.id);
    let held = eventually("yibin holds the ticket", Duration::from_secs(15), || {
        let mut yibin = yibin.clone();
        let id = ticket.id.clone();
        async move { get(&mut yibin, &id).await }
    })
    .await;
    assert_eq!(held.status, TicketStatus::Delivered as i32);
    assert_eq!(held.subject, "公积金异地转移咨询");
    // The caller's contact travels with the ticket: Yibin must call back.
    assert_eq!(held.citizen.unwrap().phone, "13800001111");

    // A completed transfer is not converted.
    let mut yb = Console::open(&mut yibin, "yb-2", &[]).await;
    let ok = start_transfer(
        &mut luzhou,
        transfer_request("lz-1", "yibin", "tourism", TransferMode::Blind),
    )
    .await;
    yb.ringing().await;
    answer(&mut yibin, "yb-2", &ok.id).await.unwrap();
    lz.hears(&ok.id, TransferState::Completed).await;
    let refused = luzhou
        .convert_transfer_to_ticket(ConvertTransferToTicketRequest {
            operator_id: "lz-1".into(),
            transfer_id: ok.id.clone(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_cancels_a_ringing_transfer_and_both_operators_learn_it() {
    let f = federation().await;
    let mut luzhou = f.hotline("luzhou").await;
    let mut yibin = f.hotline("yibin").await;
    let mut lz = Console::open(&mut luzhou, "lz-1", &[]).await;
    let mut yb = Console::open(&mut yibin, "yb-1", &[]).await;
    let t = start_transfer(
        &mut luzhou,
        transfer_request("lz-1", "yibin", "market-access", TransferMode::Conference),
    )
    .await;
    yb.ringing().await;
    cancel(&mut luzhou, "lz-1", &t.id).await.unwrap();
    lz.hears(&t.id, TransferState::Cancelled).await;
    yb.hears(&t.id, TransferState::Cancelled).await;
    // Too late to answer.
    let late = answer(&mut yibin, "yb-1", &t.id).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    // And the freed operator takes the next call.
    let next = start_transfer(
        &mut luzhou,
        transfer_request("lz-1", "yibin", "market-access", TransferMode::Blind),
    )
    .await;
    assert_eq!(yb.ringing().await.id, next.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_target_node_while_ringing_leaves_no_transfer_stuck() {
    let mut f = federation().await;
    let mut luzhou = f.hotline("luzhou").await;
    let mut yibin = f.hotline("yibin").await;
    let mut lz = Console::open(&mut luzhou, "lz-1", &[]).await;
    let mut yb = Console::open(&mut yibin, "yb-1", &[]).await;
    let t = start_transfer(
        &mut luzhou,
        transfer_request("lz-1", "yibin", "social-security", TransferMode::Warm),
    )
    .await;
    yb.ringing().await;
    lz.hears(&t.id, TransferState::Ringing).await;

    f.node("yibin").kill();
    let end = lz.hears(&t.id, TransferState::Failed).await;
    assert_eq!(end.reason, "yibin-lost");
    assert_eq!(
        state(&transfer_at(&f, "luzhou", &t.id).await),
        TransferState::Failed
    );
    // The gateway's ledger has it ended too.
    eventually(
        "the gateway recorded the failure",
        Duration::from_secs(10),
        || async {
            let s = city_stats(&f, "yibin").await;
            (s.transfers_in_by_outcome.get("FAILED") == Some(&1)).then_some(())
        },
    )
    .await;

    // Yibin comes back and takes calls again.
    f.start_node("yibin").await;
    let mut yibin = f.hotline("yibin").await;
    let mut yb = Console::open(&mut yibin, "yb-1", &[]).await;
    let again = transfer_until_rung(
        &mut luzhou,
        &mut yb,
        transfer_request("lz-1", "yibin", "social-security", TransferMode::Blind),
    )
    .await;
    assert_eq!(yb.heard.last().unwrap().id, again.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_mid_call_leaves_no_transfer_stuck() {
    let mut f = federation().await;
    let mut luzhou = f.hotline("luzhou").await;
    let mut zigong = f.hotline("zigong").await;
    let mut lz = Console::open(&mut luzhou, "lz-1", &[]).await;
    let mut zg = Console::open(&mut zigong, "zg-1", &[]).await;
    let t = start_transfer(
        &mut luzhou,
        transfer_request("lz-1", "zigong", "employment", TransferMode::Conference),
    )
    .await;
    zg.ringing().await;
    answer(&mut zigong, "zg-1", &t.id).await.unwrap();
    lz.hears(&t.id, TransferState::Conferenced).await;
    eventually(
        "the gateway recorded the answer",
        Duration::from_secs(10),
        || async { (city_stats(&f, "zigong").await.transfers_answered == 1).then_some(()) },
    )
    .await;

    // Mid-call, the gateway dies and comes back.
    f.gateway.kill();
    let a = lz.hears(&t.id, TransferState::Failed).await;
    let b = zg.hears(&t.id, TransferState::Failed).await;
    assert_eq!(a.reason, "gateway-lost");
    assert_eq!(b.reason, "gateway-lost");
    f.start_gateway().await;
    // The restarted gateway ends what its ledger still showed live.
    let s = eventually(
        "the ledger shows it failed",
        Duration::from_secs(10),
        || async {
            let s = city_stats(&f, "zigong").await;
            (s.transfers_in_by_outcome.get("FAILED") == Some(&1)).then_some(s)
        },
    )
    .await;
    assert_eq!(s.transfers_in_by_outcome.values().sum::<u64>(), 1);
    for city in ["luzhou", "zigong"] {
        assert_eq!(
            state(&transfer_at(&f, city, &t.id).await),
            TransferState::Failed
        );
    }
    // Signalling comes back by itself.
    let again = transfer_until_rung(
        &mut luzhou,
        &mut zg,
        transfer_request("lz-1", "zigong", "employment", TransferMode::Blind),
    )
    .await;
    assert_eq!(zg.heard.last().unwrap().id, again.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transfer_requests_get_a_clear_status_and_change_nothing() {
    // Rings long enough for every refusal below to happen while it rings.
    let f =
        Federation::start_with("", "ring_timeout_ms = 30000\ntransfer_deadline_ms = 60000").await;
    let mut luzhou = f.hotline("luzhou").await;
    let mut yibin = f.hotline("yibin").await;
    let _lz = Console::open(&mut luzhou, "lz-1", &[]).await;
    let mut yb = Console::open(&mut yibin, "yb-1", &[]).await;
    let _yb2 = Console::open(&mut yibin, "yb-2", &["taxation"]).await;
    // Wait for the link, with a good one.
    let t = start_transfer(
        &mut luzhou,
        transfer_request("lz-1", "yibin", "education", TransferMode::Warm),
    )
    .await;
    yb.ringing().await;

    let cases = [
        (
            "target_city",
            transfer_request("lz-1", "chongqing", "education", TransferMode::Warm),
            Code::InvalidArgument,
        ),
        (
            "category",
            transfer_request("lz-1", "yibin", "weather", TransferMode::Warm),
            Code::InvalidArgument,
        ),
        (
            "target_city",
            transfer_request("lz-1", "luzhou", "education", TransferMode::Warm),
            Code::InvalidArgument,
        ),
        (
            "mode",
            transfer_request("lz-1", "yibin", "education", TransferMode::Unspecified),
            Code::InvalidArgument,
        ),
        (
            "operator",
            transfer_request("lz-9", "yibin", "education", TransferMode::Warm),
            Code::FailedPrecondition,
        ),
    ];
    for (field, req, code) in cases {
        let e = luzhou.start_transfer(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{field}: {e:?}");
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }

    // Another operator cannot answer or decline a call ringing at yb-1,
    // nor can the target cancel it or the origin answer it.
    let e = answer(&mut yibin, "yb-2", &t.id).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = decline(&mut yibin, "yb-2", &t.id).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = cancel(&mut yibin, "yb-1", &t.id).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = answer(&mut luzhou, "lz-1", &t.id).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Not known at a third city.
    let e = cancel(&mut f.hotline("zigong").await, "zg-1", &t.id)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = luzhou
        .get_transfer(GetTransferRequest {
            transfer_id: "not an id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A third city that claims a move on the gateway's stream is ignored.
    let mut fed = f.federation_as("zigong").await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(TransferSignalsRequest {
        signal: Some(Signal::HelloCity("zigong".into())),
    })
    .unwrap();
    let _stream = fed
        .transfer_signals(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap();
    let mut forged = transfer_at(&f, "luzhou", &t.id).await;
    forged.state = TransferState::Cancelled as i32;
    tx.send(TransferSignalsRequest {
        signal: Some(Signal::Transfer(forged)),
    })
    .unwrap();
    // A first message that is not a hello is refused.
    let (bad_tx, bad_rx) = tokio::sync::mpsc::unbounded_channel();
    bad_tx
        .send(TransferSignalsRequest {
            signal: Some(Signal::Transfer(Transfer::default())),
        })
        .unwrap();
    let e = fed
        .transfer_signals(tokio_stream::wrappers::UnboundedReceiverStream::new(bad_rx))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Nothing changed: still ringing at yb-1, who can answer it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for city in ["luzhou", "yibin"] {
        assert_eq!(
            state(&transfer_at(&f, city, &t.id).await),
            TransferState::Ringing,
            "at {city}"
        );
    }
    answer(&mut yibin, "yb-1", &t.id).await.unwrap();
    yb.hears(&t.id, TransferState::Answered).await;
}
