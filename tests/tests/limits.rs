//! Limits at the gateway: one city flooding it cannot starve the others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use federation_tests::{Federation, create, draft, eventually, list_all};
use hotline_proto::pb::observatory_client::ObservatoryClient;
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

    // Luzhou floods, on its own certificate, as fast as its answers come
    // (far past ten times its limit), until Yibin is done and at least 600
    // requests have gone: however slow the machine, the flood lasts as
    // long as Yibin's work.
    let yibin_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let gw = f.federation_as("luzhou").await;
        let yibin_done = yibin_done.clone();
        tokio::spawn(async move {
            let (mut exhausted, mut admitted) = (0u32, 0u32);
            let start = Instant::now();
            while exhausted + admitted < 600 || !yibin_done.load(Ordering::SeqCst) {
                match gw.clone().report_event(ReportEventRequest::default()).await {
                    Err(e) if e.code() == Code::ResourceExhausted => exhausted += 1,
                    // Admitted, and refused by the handler for what it is.
                    Err(e) if e.code() == Code::InvalidArgument => admitted += 1,
                    other => panic!("unexpected answer to the flood: {other:?}"),
                }
            }
            (exhausted, admitted, start.elapsed())
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
    yibin_done.store(true, Ordering::SeqCst);
    let (exhausted, admitted, took) = flood.await.unwrap();
    eprintln!("flood: {exhausted} refused, {admitted} admitted in {took:?}");
    // The bucket: 20 at once, then 20 a second, over however long the
    // flood took (one more for a refill in flight).
    let allowed = 20 + (20.0 * took.as_secs_f64()).ceil() as u32 + 1;
    assert!(
        admitted <= allowed,
        "{admitted} admitted in {took:?}, past the rate ({allowed})"
    );
    assert!(
        exhausted >= 600 - allowed.min(600) && exhausted > 0,
        "the flood was not held back: {exhausted} refused, {admitted} admitted in {took:?}"
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

/// The database connections a process holds: its descriptors open on a
/// SQLite file (`*.db`), or on a TCP connection to PostgreSQL (port 5432).
fn database_connections(pid: u32) -> usize {
    let mut pg_inodes = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[2].ends_with(":1538") {
                pg_inodes.insert(format!("socket:[{}]", cols[9]));
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| {
            let t = target.to_string_lossy();
            t.ends_with(".db") || pg_inodes.contains(t.as_ref())
        })
        .count()
}

/// #18, point 1: 10,000 WatchFlow streams opened from one city's
/// certificate. Past its cap (here 50) each is refused with
/// RESOURCE_EXHAUSTED naming the limit; the streams held share one reader
/// of the flow log, so the gateway never holds more database connections
/// than the configured pool (3), the writer and (on PostgreSQL) the lease
/// keeper; and another city's tickets flow, its own watch stream opens and
/// sees each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watch_streams_from_one_city_are_capped_and_hold_no_more_connections_than_configured()
 {
    use futures::StreamExt;
    use hotline_proto::identity::Identity;
    let f = Federation::start_with(
        "store_readers = 3\n[limits]\nstreams_per_caller = 50\nstreams_total = 200",
        "",
    )
    .await;
    let pid = f.gateway.pid().unwrap();
    let obs =
        ObservatoryClient::new(f.channel_as(&Identity::City("luzhou".into()), &Identity::Gateway));
    let answers: Vec<_> = futures::stream::iter(0..10_000)
        .map(|_| {
            let mut obs = obs.clone();
            async move { obs.watch_flow(WatchFlowRequest::default()).await }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let mut streams = Vec::new();
    let mut refused = 0;
    for a in answers {
        match a {
            Ok(s) => streams.push(s.into_inner()),
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("limits.streams_per_caller"), "{e:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(streams.len(), 50, "luzhou holds its cap of streams");
    assert_eq!(refused, 10_000 - 50);

    // Zigong's own stream opens, and sees Yibin's tickets to it.
    let mut watch =
        ObservatoryClient::new(f.channel_as(&Identity::City("zigong".into()), &Identity::Gateway))
            .watch_flow(WatchFlowRequest::default())
            .await
            .unwrap()
            .into_inner();
    let mut most = 0;
    let mut yibin = f.hotline("yibin").await;
    let zigong = f.hotline("zigong").await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..10 {
        let t = create(&mut yibin, draft(&["zigong"], "education")).await;
        eventually("zigong holds it", Duration::from_secs(30), || {
            let mut z = zigong.clone();
            let id = t.id.clone();
            async move { federation_tests::get(&mut z, &id).await }
        })
        .await;
        ids.insert(t.id);
        most = most.max(database_connections(pid));
    }
    tokio::time::timeout(Duration::from_secs(30), async {
        while !ids.is_empty() {
            let e = watch.message().await.unwrap().unwrap();
            if let Some(hotline_proto::pb::flow_event::Change::Ticket(t)) = e.change {
                ids.remove(&t.ticket_id);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("zigong's stream did not see {ids:?}"));
    // The pool (3), the writer (1), the lease keeper on PostgreSQL (1).
    let limit = if federation_tests::postgres_tests() {
        5
    } else {
        4
    };
    assert!(
        most <= limit && most >= 1,
        "the gateway held {most} database connections"
    );
    drop(streams);
}

/// Every descriptor a process holds open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// #18, point 5: under a descriptor limit of 1,024, 2,000 TCP connections
/// to the gateway's gRPC port that never send a ClientHello and 500
/// slowloris connections on its dashboard port leave the gateway room for
/// its own work (it holds at most 896 descriptors) and do not keep a city
/// from it: twelve dispatches, each on a new connection, all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_connections_under_a_low_descriptor_limit_leave_a_city_its_calls() {
    use hotline_proto::identity::Identity;
    use hotline_proto::pb::federation_client::FederationClient;
    use tokio::io::AsyncWriteExt;
    // This test holds 2,500 sockets itself.
    hotline_tls::server::raise_fd_limit();
    let mut f = Federation::start().await;
    f.gateway.kill();
    f.gateway.wrap(&["prlimit", "--nofile=1024:1024", "--"]);
    f.start_gateway().await;
    let pid = f.gateway.pid().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    assert!(open_files.contains(" 1024 "), "{open_files}");

    let grpc = f.addr_of(&Identity::Gateway);
    let mut silent = Vec::new();
    for _ in 0..2000 {
        if let Ok(s) = tokio::net::TcpStream::connect(grpc).await {
            silent.push(s);
        }
    }
    let mut slow = Vec::new();
    for _ in 0..500 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(f.dashboard).await {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n").await;
            slow.push(s);
        }
    }
    assert!(silent.len() >= 1000, "only {} connected", silent.len());
    // The gateway has taken in what it will of them (its descriptors stop
    // growing), and keeps room for its own work: without the listener's
    // cap it would take all 1,024.
    let mut held = open_fds(pid);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = open_fds(pid);
        if now == held {
            break;
        }
        held = now;
    }
    assert!(held <= 1024 - 128, "the gateway holds {held} descriptors");

    let yibin = Identity::City("yibin".into());
    for i in 0..12 {
        // A new channel: a new connection, and a new handshake.
        let mut gw = FederationClient::new(f.channel_as(&yibin, &Identity::Gateway));
        let t = federation_tests::dispatchable("yibin", "zigong", "education");
        let answer = gw
            .dispatch_ticket(DispatchTicketRequest {
                city: "yibin".into(),
                ticket: Some(t),
            })
            .await;
        assert!(answer.is_ok(), "dispatch {i}: {answer:?}");
    }
    drop((silent, slow));
}

/// #18, point 8: a city node limits its callers as the gateway does. Its
/// own platform flooding it as fast as answers come is held to its rate
/// (RESOURCE_EXHAUSTED past it), while the gateway, another caller with a
/// bucket of its own, delivers Yibin's tickets to it all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holds_its_own_platform_to_its_rate_and_still_takes_the_gateways_deliveries() {
    let f = Federation::start_with(
        "",
        "[limits]\nper_caller_rps = 50.0\nper_caller_burst = 50.0",
    )
    .await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let luzhou = f.hotline("luzhou").await;
        let done = done.clone();
        tokio::spawn(async move {
            let (mut refused, mut admitted) = (0u32, 0u32);
            let start = Instant::now();
            while refused + admitted < 2000 || !done.load(Ordering::SeqCst) {
                let r = luzhou
                    .clone()
                    .get_ticket(GetTicketRequest {
                        ticket_id: "luzhou-01HZZZZZZZZZZZZZZZZZZZZZZZ".into(),
                    })
                    .await;
                match r {
                    Err(e) if e.code() == Code::ResourceExhausted => refused += 1,
                    // Admitted, and answered for what it asks.
                    Err(e) if matches!(e.code(), Code::NotFound | Code::InvalidArgument) => {
                        admitted += 1
                    }
                    other => panic!("unexpected answer to the flood: {other:?}"),
                }
            }
            (refused, admitted, start.elapsed())
        })
    };
    let mut yibin = f.hotline("yibin").await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(
            create(&mut yibin, draft(&["luzhou"], "employment"))
                .await
                .id,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each reached Luzhou's store while the flood went on: the node's
    // outbox toward the gateway's deliveries is the gateway's bucket, and
    // the node tells the gateway it took each (the ticket is DELIVERED).
    let obs = ObservatoryClient::new(f.channel_as(
        &hotline_proto::identity::Identity::Province,
        &hotline_proto::identity::Identity::Gateway,
    ));
    for id in &ids {
        eventually(
            "the gateway hears luzhou took it",
            Duration::from_secs(30),
            || {
                let mut obs = obs.clone();
                let id = id.clone();
                async move {
                    let t = obs
                        .get_ledger_ticket(GetLedgerTicketRequest { ticket_id: id })
                        .await
                        .ok()?
                        .into_inner()
                        .ticket?;
                    (t.status != TicketStatus::Dispatched as i32).then_some(())
                }
            },
        )
        .await;
    }
    done.store(true, Ordering::SeqCst);
    let (refused, admitted, took) = flood.await.unwrap();
    eprintln!("node flood: {refused} refused, {admitted} admitted in {took:?}");
    let allowed = 50 + (50.0 * took.as_secs_f64()).ceil() as u32 + 1;
    assert!(
        admitted <= allowed,
        "{admitted} admitted in {took:?}, past the rate ({allowed})"
    );
    assert!(
        refused > 0,
        "the flood was not held back: {admitted} admitted in {took:?}"
    );
}

/// #18, point 1, for signalling: a city's signalling stream flooded with
/// transfer offers, as fast as the stream takes them, is read at the
/// city's rate (each message takes a token of its bucket) while another
/// city's dispatches all succeed. Each offer the gateway takes in is
/// answered on the stream (OFFERED), so the answers count what it
/// admitted. What waits is bounded by the stream's flow-control window;
/// past h2's budget for small frames held unread, the gateway ends the
/// flooder's connection (GOAWAY, ENHANCE_YOUR_CALM), its own and no other.
/// A new stream of the same city is then served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_flooding_its_signalling_stream_is_read_at_its_rate_and_the_others_dispatch() {
    use hotline_proto::identity::Identity;
    use hotline_proto::pb::federation_client::FederationClient;
    use hotline_proto::pb::transfer_signals_request::Signal;
    let mut f = Federation::start_with(
        "[limits]\nper_caller_rps = 20.0\nper_caller_burst = 20.0",
        "",
    )
    .await;
    // The flood takes Luzhou's stream: its node, which would take it back,
    // is stopped.
    f.node("luzhou").kill();
    let lz = Identity::City("luzhou".into());
    let offer = || TransferSignalsRequest {
        signal: Some(Signal::Transfer(Transfer {
            id: hotline_proto::TicketId::new("luzhou").to_string(),
            origin_city: "luzhou".into(),
            target_city: "zigong".into(),
            category: "tourism".into(),
            mode: TransferMode::Blind as i32,
            state: TransferState::Initiated as i32,
            origin_operator: "lz-1".into(),
            ..Default::default()
        })),
    };
    let open = |tx: &tokio::sync::mpsc::Sender<TransferSignalsRequest>| {
        tx.try_send(TransferSignalsRequest {
            signal: Some(Signal::HelloCity("luzhou".into())),
        })
        .unwrap()
    };
    let mut gw = FederationClient::new(f.channel_as(&lz, &Identity::Gateway));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    open(&tx);
    let start = Instant::now();
    let mut answers = gw
        .transfer_signals(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // As fast as the stream takes them.
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let flood = {
        let sent = sent.clone();
        tokio::spawn(async move {
            while tx.send(offer()).await.is_ok() {
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let offered = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let reader = {
        let offered = offered.clone();
        tokio::spawn(async move {
            loop {
                match answers.message().await {
                    Ok(Some(m)) => {
                        if m.transfer
                            .is_some_and(|t| t.state == TransferState::Offered as i32)
                        {
                            offered.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    // The gateway ended the flooder's connection.
                    Err(e) => return Some(e),
                    Ok(None) => return None,
                }
            }
        })
    };

    // Meanwhile Yibin dispatches 30 tickets: every one is taken.
    let mut yibin = f.federation_as("yibin").await;
    for i in 0..30 {
        let answer = yibin
            .dispatch_ticket(DispatchTicketRequest {
                city: "yibin".into(),
                ticket: Some(federation_tests::dispatchable(
                    "yibin",
                    "zigong",
                    "education",
                )),
            })
            .await;
        assert!(answer.is_ok(), "dispatch {i}: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What the gateway admitted by now, at most the bucket's worth over the
    // time since the stream opened (it took one token itself).
    let admitted = offered.load(Ordering::SeqCst);
    let took = start.elapsed();
    flood.abort();
    let cut = if reader.is_finished() {
        reader.await.unwrap()
    } else {
        reader.abort();
        None
    };
    let sent = sent.load(Ordering::SeqCst);
    eprintln!(
        "signalling flood: {sent} offers sent, {admitted} admitted in {took:?}; the stream ended: {cut:?}"
    );
    let allowed = 20 + (20.0 * took.as_secs_f64()).ceil() as u32 + 1;
    assert!(
        admitted <= allowed,
        "{admitted} offers admitted in {took:?}, past the rate ({allowed})"
    );
    assert!(admitted > 0, "no offer was relayed at all");
    assert!(
        sent > admitted * 10,
        "the flood was not a flood: {sent} sent, {admitted} admitted"
    );

    // What the flood sent and the gateway had not read (up to the stream's
    // window) is read no more once its answers' stream is gone: it is not
    // relayed later, nor does it keep taking Luzhou's tokens.
    drop(gw);
    let then = f.city_stats("luzhou").await.transfers_out;
    // Absence can only be shown by waiting: 3 s is 60 offers at the rate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = f.city_stats("luzhou").await.transfers_out;
    assert!(
        later <= then + 2,
        "the flood's unread offers went on being relayed: {then} transfers out, {later} 3 s later"
    );

    // Luzhou's next stream is served (once its bucket has a token again):
    // its next offer is answered, after any late word of the flood's
    // offers, which go to the city's stream.
    let next = offer();
    let Some(Signal::Transfer(t)) = &next.signal else {
        unreachable!()
    };
    let id = t.id.clone();
    // (The sender is kept: the stream stays open until the answer comes.)
    let (_tx, mut answers) = eventually(
        "luzhou's next stream opens",
        Duration::from_secs(15),
        || {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            open(&tx);
            tx.try_send(next.clone()).unwrap();
            let mut gw = FederationClient::new(f.channel_as(&lz, &Identity::Gateway));
            async move {
                match gw
                    .transfer_signals(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                {
                    Ok(r) => Some((tx, r.into_inner())),
                    Err(e) if e.code() == Code::ResourceExhausted => None,
                    Err(e) => panic!("luzhou's next stream: {e:?}"),
                }
            }
        },
    )
    .await;
    loop {
        let t = tokio::time::timeout(Duration::from_secs(15), answers.message())
            .await
            .expect("an answer in time")
            .unwrap()
            .and_then(|m| m.transfer)
            .unwrap();
        if t.id == id {
            assert_eq!(t.state, TransferState::Offered as i32, "{t:?}");
            break;
        }
    }
}

type Held = tokio::task::JoinHandle<Result<(), tonic::Status>>;

/// A stream holding its connection's one slot: its sender (whose first
/// message never comes) and the task awaiting its answer.
struct Holding<G> {
    sender: G,
    task: Held,
}

impl<G> Holding<G> {
    /// Ends the stream without its first message: refused
    /// (INVALID_ARGUMENT), and no longer in flight.
    async fn end(self) {
        drop(self.sender);
        let ended = self.task.await.unwrap().unwrap_err();
        assert_eq!(ended.code(), Code::InvalidArgument, "{ended:?}");
    }
}

/// Holds a connection's one slot with a stream started by `hold` (one
/// whose first message never comes, so its handler stays in flight), then
/// `probes` the same connection until it is shed. A probe that reaches the
/// server first gets the slot and the stream is shed itself: it is then
/// started again. Returns the holding stream and the refusal.
async fn shed_while_held<G, P, F>(
    hold: impl Fn() -> (G, Held),
    probe: P,
) -> (Holding<G>, tonic::Status)
where
    P: Fn() -> F,
    F: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (sender, task) = hold();
        tokio::time::sleep(Duration::from_millis(100)).await;
        while !task.is_finished() {
            assert!(Instant::now() < deadline, "no request was ever shed");
            match probe().await {
                Err(e)
                    if e.code() == Code::ResourceExhausted
                        && e.message().contains("Too many active requests") =>
                {
                    return (Holding { sender, task }, e);
                }
                // The stream has not reached the server yet.
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// #18, point 8: past `limits.in_flight_per_connection` requests in flight
/// on one connection, the gateway and a node shed load with
/// RESOURCE_EXHAUSTED, while other connections of the same caller are
/// served; once the request in flight ends, its connection is served
/// again. A stream whose first message has not come is in flight (its
/// handler waits for it), which makes the load deterministic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_a_connections_requests_in_flight_the_gateway_and_a_node_shed_load() {
    use hotline_proto::identity::Identity;
    use hotline_proto::pb::city_hotline_client::CityHotlineClient;
    use hotline_proto::pb::federation_client::FederationClient;
    use tokio_stream::wrappers::ReceiverStream;
    let f = Federation::start_with(
        "[limits]\nin_flight_per_connection = 1",
        "[limits]\nin_flight_per_connection = 1",
    )
    .await;

    // At the gateway: a signalling stream that has not said hello holds
    // Yibin's one connection.
    let yb = Identity::City("yibin".into());
    let gw = FederationClient::new(f.channel_as(&yb, &Identity::Gateway));
    let dispatch = |gw: FederationClient<tonic::transport::Channel>| async move {
        gw.clone()
            .dispatch_ticket(DispatchTicketRequest {
                city: "yibin".into(),
                ticket: Some(federation_tests::dispatchable(
                    "yibin",
                    "zigong",
                    "education",
                )),
            })
            .await
            .map(|_| ())
    };
    let (holding, refused) = shed_while_held(
        || {
            let (tx, rx) = tokio::sync::mpsc::channel::<TransferSignalsRequest>(1);
            let mut gw = gw.clone();
            let held = tokio::spawn(async move {
                gw.transfer_signals(ReceiverStream::new(rx))
                    .await
                    .map(|_| ())
            });
            (tx, held)
        },
        || dispatch(gw.clone()),
    )
    .await;
    eprintln!("gateway: {refused:?}");
    // Another connection of Yibin's is served meanwhile.
    dispatch(FederationClient::new(f.channel_as(&yb, &Identity::Gateway)))
        .await
        .unwrap();
    // The stream ends without a hello (refused, and no longer in flight):
    // the connection is served again.
    holding.end().await;
    dispatch(gw.clone()).await.unwrap();

    // At a node: a console session that has not said hello holds the
    // platform's one connection.
    let hotline = f.hotline("luzhou").await;
    let list = |h: CityHotlineClient<tonic::transport::Channel>| async move {
        h.clone()
            .list_tickets(ListTicketsRequest::default())
            .await
            .map(|_| ())
    };
    let (holding, refused) = shed_while_held(
        || {
            let (tx, rx) = tokio::sync::mpsc::channel::<OperatorSessionRequest>(1);
            let mut h = hotline.clone();
            let held = tokio::spawn(async move {
                h.operator_session(ReceiverStream::new(rx))
                    .await
                    .map(|_| ())
            });
            (tx, held)
        },
        || list(hotline.clone()),
    )
    .await;
    eprintln!("node: {refused:?}");
    list(f.hotline("luzhou").await).await.unwrap();
    holding.end().await;
    list(hotline).await.unwrap();
}
