//! The provincial observatory against real processes: statistics equal what
//! the cities did, per window and after the gateway is killed; the flow
//! matrix, top categories and overdue tickets; WatchFlow resumes from a
//! cursor without gaps or repeats; Prometheus `/metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use federation_tests::*;
use hotline_proto::identity::Identity;
use hotline_proto::pb::observatory_client::ObservatoryClient;
use hotline_proto::pb::*;
use tokio_stream::StreamExt;
use tonic::Code;

const CATEGORIES: [&str; 3] = ["social-security", "education", "tourism"];

/// What the test did, counted its own way.
#[derive(Default, Debug, PartialEq)]
struct Record {
    sent: BTreeMap<String, u64>,
    received: BTreeMap<String, u64>,
    /// city → [accepted, rejected, resolved, reopened, satisfied, unsatisfied]
    handled: BTreeMap<String, [u64; 6]>,
    flow: BTreeMap<(String, String, String), u64>,
    sent_by_category: BTreeMap<(String, String), u64>,
}

fn handled_of(s: &CityStats) -> [u64; 6] {
    [
        s.accepted,
        s.rejected,
        s.resolved,
        s.reopened,
        s.satisfied,
        s.unsatisfied,
    ]
}

async fn stats(
    obs: &mut ObservatoryClient<tonic::transport::Channel>,
    window: Window,
    period: &str,
) -> Vec<CityStats> {
    obs.get_city_stats(GetCityStatsRequest {
        city: String::new(),
        window: window as i32,
        period: period.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .cities
}

/// The day in China Standard Time of the instant `ms`, as "2026-11-25".
fn cst_day(ms: i64) -> String {
    let days = (ms + 8 * 3_600_000).div_euclid(86_400_000);
    let date = time::Date::from_julian_day((days + 2_440_588) as i32).unwrap();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

fn check(record: &Record, got: &[CityStats], flow: &[FlowCell]) {
    for s in got {
        let c = s.city.as_str();
        assert_eq!(s.sent, record.sent.get(c).copied().unwrap_or(0), "{c} sent");
        assert_eq!(
            s.received,
            record.received.get(c).copied().unwrap_or(0),
            "{c} received"
        );
        assert_eq!(
            handled_of(s),
            record.handled.get(c).copied().unwrap_or_default(),
            "{c} handled"
        );
        let by_cat: u64 = s.by_category.values().map(|f| f.sent).sum();
        assert_eq!(by_cat, s.sent, "{c}: categories add up");
        for (cat, f) in &s.by_category {
            assert_eq!(
                f.sent,
                record
                    .sent_by_category
                    .get(&(c.to_string(), cat.clone()))
                    .copied()
                    .unwrap_or(0),
                "{c} {cat}"
            );
        }
    }
    let cells: BTreeMap<(String, String, String), u64> = flow
        .iter()
        .map(|f| {
            (
                (
                    f.origin_city.clone(),
                    f.target_city.clone(),
                    f.category.clone(),
                ),
                f.tickets,
            )
        })
        .collect();
    assert_eq!(cells, record.flow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_equal_what_the_cities_did_per_window_and_after_the_gateway_is_killed() {
    let mut f = Federation::start().await;
    let start_ms = hotline_proto::time::now_ms();
    let mut record = Record::default();
    let mut hotlines = BTreeMap::new();
    for city in CITIES {
        hotlines.insert(city, f.hotline(city).await);
    }
    for i in 0..12usize {
        let origin = CITIES[i % 4];
        let target = CITIES[(i + 1) % 4];
        let category = CATEGORIES[i % 3];
        let mut o = hotlines[origin].clone();
        let mut t = hotlines[target].clone();
        let ticket = create(&mut o, draft(&[target], category)).await;
        let id = ticket.id.clone();
        wait_status(&t, &id, TicketStatus::Delivered).await;
        *record.sent.entry(origin.into()).or_default() += 1;
        *record.received.entry(target.into()).or_default() += 1;
        *record
            .flow
            .entry((origin.into(), target.into(), category.into()))
            .or_default() += 1;
        *record
            .sent_by_category
            .entry((origin.into(), category.into()))
            .or_default() += 1;
        let h = record.handled.entry(target.into()).or_default();
        match i % 4 {
            // Accepted, resolved, closed satisfied.
            0 | 1 => {
                t.accept_ticket(AcceptTicketRequest {
                    ticket_id: id.clone(),
                    note: String::new(),
                })
                .await
                .unwrap();
                t.resolve_ticket(ResolveTicketRequest {
                    ticket_id: id.clone(),
                    note: String::new(),
                })
                .await
                .unwrap();
                wait_status(&o, &id, TicketStatus::Resolved).await;
                h[0] += 1;
                h[2] += 1;
                if i % 4 == 1 {
                    // Reopened once, resolved again, closed unsatisfied.
                    o.reopen_ticket(ReopenTicketRequest {
                        ticket_id: id.clone(),
                        reason: "仍未解决".into(),
                    })
                    .await
                    .unwrap();
                    wait_status(&t, &id, TicketStatus::Reopened).await;
                    t.resolve_ticket(ResolveTicketRequest {
                        ticket_id: id.clone(),
                        note: String::new(),
                    })
                    .await
                    .unwrap();
                    wait_status(&o, &id, TicketStatus::Resolved).await;
                    h[3] += 1;
                    h[2] += 1;
                }
                let verdict = if i % 4 == 0 {
                    Satisfaction::Satisfied
                } else {
                    Satisfaction::Unsatisfied
                };
                o.close_ticket(CloseTicketRequest {
                    ticket_id: id.clone(),
                    satisfaction: verdict as i32,
                    note: String::new(),
                })
                .await
                .unwrap();
                wait_status(&t, &id, TicketStatus::Closed).await;
                h[if i % 4 == 0 { 4 } else { 5 }] += 1;
            }
            // Rejected to coordination.
            2 => {
                t.reject_ticket(RejectTicketRequest {
                    ticket_id: id.clone(),
                    reason: "非本市事项".into(),
                })
                .await
                .unwrap();
                wait_status(&o, &id, TicketStatus::InCoordination).await;
                h[1] += 1;
            }
            // Accepted only.
            _ => {
                t.accept_ticket(AcceptTicketRequest {
                    ticket_id: id.clone(),
                    note: String::new(),
                })
                .await
                .unwrap();
                wait_status(&o, &id, TicketStatus::Accepted).await;
                h[0] += 1;
            }
        }
    }
    let end_ms = hotline_proto::time::now_ms();
    let mut obs = f.observatory().await;
    let flow = |obs: &mut ObservatoryClient<_>, window: Window, period: &str| {
        let mut obs = obs.clone();
        let period = period.to_owned();
        async move {
            obs.get_flow_matrix(GetFlowMatrixRequest {
                window: window as i32,
                period,
            })
            .await
            .unwrap()
            .into_inner()
            .cells
        }
    };
    let all = stats(&mut obs, Window::Unspecified, "").await;
    check(
        &record,
        &all,
        &flow(&mut obs, Window::Unspecified, "").await,
    );

    // The days the run spans add up to the same (one day, or two when it
    // crossed midnight in Beijing).
    let days: BTreeSet<String> = [cst_day(start_ms), cst_day(end_ms)].into();
    let mut summed: BTreeMap<String, CityStats> = BTreeMap::new();
    let mut cells = Vec::new();
    for day in &days {
        for s in stats(&mut obs, Window::Day, day).await {
            let e = summed.entry(s.city.clone()).or_insert_with(|| CityStats {
                city: s.city.clone(),
                ..Default::default()
            });
            e.sent += s.sent;
            e.received += s.received;
            e.accepted += s.accepted;
            e.rejected += s.rejected;
            e.resolved += s.resolved;
            e.reopened += s.reopened;
            e.satisfied += s.satisfied;
            e.unsatisfied += s.unsatisfied;
            for (cat, fig) in s.by_category {
                e.by_category.entry(cat).or_default().sent += fig.sent;
            }
        }
        cells.extend(flow(&mut obs, Window::Day, day).await);
    }
    let mut merged: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for c in cells {
        *merged
            .entry((c.origin_city, c.target_city, c.category))
            .or_default() += c.tickets;
    }
    let merged: Vec<FlowCell> = merged
        .into_iter()
        .map(|((o, t, c), n)| FlowCell {
            origin_city: o,
            target_city: t,
            category: c,
            tickets: n,
            transfers: 0,
        })
        .collect();
    check(&record, &summed.into_values().collect::<Vec<_>>(), &merged);
    // A day with nothing in it is all zeros.
    let empty = stats(&mut obs, Window::Day, "2020-01-01").await;
    assert!(
        empty
            .iter()
            .all(|s| s.sent == 0 && s.received == 0 && s.by_category.is_empty())
    );

    // Durations: every city that accepted has a median and a p90 above it.
    for s in &all {
        if s.accepted > 0 {
            assert!(
                s.accept_ms_p50 > 0.0 && s.accept_ms_p90 >= s.accept_ms_p50,
                "{s:?}"
            );
        }
        if s.resolved > 0 {
            assert!(
                s.resolve_ms_p90 >= s.resolve_ms_p50 && s.resolve_ms_p50 > 0.0,
                "{s:?}"
            );
            // Default deadlines are days: all on time.
            assert_eq!(s.resolved_on_time, s.resolved);
        }
    }

    // Top categories this month: each city's sent categories, most first.
    let top = obs
        .get_top_categories(GetTopCategoriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    for c in &top.cities {
        let counts: Vec<u64> = c.categories.iter().map(|x| x.count).collect();
        let mut sorted = counts.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(counts, sorted, "{c:?}");
        for x in &c.categories {
            assert_eq!(
                x.count,
                record.sent_by_category[&(c.city.clone(), x.category.clone())]
            );
        }
    }
    let bad = obs
        .get_top_categories(GetTopCategoriesRequest {
            month: "2026-13".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("month"), "{}", bad.message());

    // Killed without warning and started again: the same figures, exactly.
    let before_day = stats(&mut obs, Window::Day, "").await;
    f.restart_gateway().await;
    let mut obs = f.observatory().await;
    assert_eq!(stats(&mut obs, Window::Unspecified, "").await, all);
    if cst_day(hotline_proto::time::now_ms()) == cst_day(end_ms) {
        assert_eq!(stats(&mut obs, Window::Day, "").await, before_day);
    }
    check(
        &record,
        &stats(&mut obs, Window::Unspecified, "").await,
        &flow(&mut obs, Window::Unspecified, "").await,
    );
}

/// Reads from a watch until `n` events came or it ends.
async fn take(stream: &mut tonic::Streaming<FlowEvent>, n: usize) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
            Ok(Some(Ok(e))) => out.push(e),
            Ok(Some(Err(status))) => panic!("watch failed: {status:?}"),
            Ok(None) => break,
            Err(_) => panic!("no event within 20 s after {} of {n}", out.len()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_flow_resumes_from_a_cursor_without_gaps_or_repeats_also_across_a_gateway_kill() {
    let mut f = Federation::start().await;
    let mut luzhou = f.hotline("luzhou").await;
    let yibin = f.hotline("yibin").await;
    let mut obs = f.observatory().await;
    let mut watch = obs
        .watch_flow(WatchFlowRequest::default())
        .await
        .unwrap()
        .into_inner();
    // A city watches its own flow only.
    let zigong_obs =
        ObservatoryClient::new(f.channel_as(&Identity::City("zigong".into()), &Identity::Gateway));
    let mut zigong_watch = zigong_obs
        .clone()
        .watch_flow(WatchFlowRequest::default())
        .await
        .unwrap()
        .into_inner();

    let mut ids = Vec::new();
    for _ in 0..3 {
        let t = create(&mut luzhou, draft(&["yibin"], "education")).await;
        wait_status(&yibin, &t.id, TicketStatus::Delivered).await;
        ids.push(t.id);
    }
    // DISPATCHED and DELIVERED each.
    let first = take(&mut watch, 6).await;
    drop(watch);
    let last = first.last().unwrap().cursor;

    // While nobody watches: more events, and the gateway is killed.
    for id in &ids {
        yibin
            .clone()
            .accept_ticket(AcceptTicketRequest {
                ticket_id: id.clone(),
                note: String::new(),
            })
            .await
            .unwrap();
        wait_status(&luzhou, id, TicketStatus::Accepted).await;
    }
    f.restart_gateway().await;
    let t = create(&mut luzhou, draft(&["yibin"], "education")).await;
    wait_status(&yibin, &t.id, TicketStatus::Delivered).await;
    ids.push(t.id.clone());

    let mut obs = f.observatory().await;
    let mut resumed = obs
        .watch_flow(WatchFlowRequest {
            after_cursor: last,
            replay: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // 3 ACCEPTED, then DISPATCHED and DELIVERED of the fourth.
    let second = take(&mut resumed, 5).await;
    let all: Vec<&FlowEvent> = first.iter().chain(second.iter()).collect();
    let cursors: Vec<u64> = all.iter().map(|e| e.cursor).collect();
    for w in cursors.windows(2) {
        assert_eq!(w[1], w[0] + 1, "no gap, no repeat: {cursors:?}");
    }
    let kinds: Vec<(String, EventKind)> = all
        .iter()
        .map(|e| match &e.change {
            Some(flow_event::Change::Ticket(t)) => {
                (t.ticket_id.clone(), EventKind::try_from(t.kind).unwrap())
            }
            other => panic!("not a ticket event: {other:?}"),
        })
        .collect();
    let mut want = Vec::new();
    for id in &ids[..3] {
        want.push((id.clone(), EventKind::Dispatched));
        want.push((id.clone(), EventKind::Delivered));
    }
    for id in &ids[..3] {
        want.push((id.clone(), EventKind::Accepted));
    }
    want.push((ids[3].clone(), EventKind::Dispatched));
    want.push((ids[3].clone(), EventKind::Delivered));
    assert_eq!(kinds, want);
    // Nothing personal travels: the draft's phone number and name are in
    // none of the events.
    for e in &all {
        let bytes = prost::Message::encode_to_vec(*e);
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("13912345678") && !text.contains("王小明"));
    }

    // Zigong saw none of it: it was neither origin nor handler. Its stream
    // ended with the killed gateway, empty.
    let zig = tokio::time::timeout(Duration::from_secs(5), zigong_watch.next()).await;
    match zig {
        Ok(Some(Ok(e))) => panic!("zigong saw {e:?}"),
        Ok(Some(Err(_))) | Ok(None) => {}
        Err(_) => panic!("zigong's stream should have ended with the gateway"),
    }

    // A cursor from the future is refused, naming the field.
    let e = obs
        .watch_flow(WatchFlowRequest {
            after_cursor: 1_000_000,
            replay: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(e.message().contains("after_cursor"));
    // Replaying the latest events from 0 ends with the newest.
    let mut replay = obs
        .watch_flow(WatchFlowRequest {
            after_cursor: 0,
            replay: 2,
        })
        .await
        .unwrap()
        .into_inner();
    let r = take(&mut replay, 2).await;
    assert_eq!(r.last().unwrap().cursor, second.last().unwrap().cursor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overdue_tickets_are_listed_counted_and_scoped_to_the_viewer() {
    // A deadline of zero hours: every ticket is overdue once dispatched.
    let f = Federation::start_with(
        "[deadlines]\nresolve_hours = 0\nurgent_resolve_hours = 0\n[departments]\neducation = [\"education\"]\n",
        "",
    )
    .await;
    let mut luzhou = f.hotline("luzhou").await;
    let yibin = f.hotline("yibin").await;
    let mut ids = Vec::new();
    for category in ["education", "tourism", "tourism"] {
        let t = create(&mut luzhou, draft(&["yibin"], category)).await;
        wait_status(&yibin, &t.id, TicketStatus::Delivered).await;
        ids.push(t.id);
    }
    yibin
        .clone()
        .accept_ticket(AcceptTicketRequest {
            ticket_id: ids[2].clone(),
            note: String::new(),
        })
        .await
        .unwrap();
    yibin
        .clone()
        .resolve_ticket(ResolveTicketRequest {
            ticket_id: ids[2].clone(),
            note: String::new(),
        })
        .await
        .unwrap();
    wait_status(&luzhou, &ids[2], TicketStatus::Resolved).await;

    let mut obs = f.observatory().await;
    let list = obs
        .list_overdue_tickets(ListOverdueTicketsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 2);
    let listed: BTreeSet<String> = list.tickets.iter().map(|t| t.ticket_id.clone()).collect();
    assert_eq!(listed, ids[..2].iter().cloned().collect());
    assert!(list.tickets.iter().all(|t| t.handling_city == "yibin"));
    let s = stats(&mut obs, Window::Unspecified, "").await;
    let y = s.iter().find(|s| s.city == "yibin").unwrap();
    assert_eq!(y.overdue_open, 2);
    assert_eq!((y.resolved_on_time, y.resolved_overdue), (0, 1));

    // The education department sees its one ticket; Zigong none.
    let dept = ObservatoryClient::new(f.channel_as(
        &Identity::Department("education".into()),
        &Identity::Gateway,
    ));
    let d = dept
        .clone()
        .list_overdue_tickets(ListOverdueTicketsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.total, 1);
    assert_eq!(d.tickets[0].ticket_id, ids[0]);
    let ds = dept
        .clone()
        .get_city_stats(GetCityStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .cities;
    let dy = ds.iter().find(|s| s.city == "yibin").unwrap();
    assert_eq!((dy.received, dy.overdue_open, dy.resolved), (1, 1, 0));
    assert!(dy.by_category.keys().all(|k| k == "education"));
    assert!(
        dy.received_by_status.is_empty(),
        "status counts are per city, not per category"
    );
    let zigong =
        ObservatoryClient::new(f.channel_as(&Identity::City("zigong".into()), &Identity::Gateway));
    let z = zigong
        .clone()
        .list_overdue_tickets(ListOverdueTicketsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(z.total, 0);
    let flow = zigong
        .clone()
        .get_flow_matrix(GetFlowMatrixRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(flow.cells.is_empty(), "{flow:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_prometheus_text_with_bounded_labels_and_no_personal_data() {
    let f = Federation::start().await;
    let mut luzhou = f.hotline("luzhou").await;
    let yibin = f.hotline("yibin").await;
    let t = create(&mut luzhou, draft(&["yibin"], "social-security")).await;
    wait_status(&yibin, &t.id, TicketStatus::Delivered).await;
    // An emergency: escalated at once, counted for the city handling it.
    let flood = create(&mut luzhou, draft(&["yibin"], "natural-disaster")).await;
    wait_status(&yibin, &flood.id, TicketStatus::Delivered).await;

    // A name that is not the dashboard's (DNS rebinding from a page the
    // duty officer opens) is refused; localhost and the address are not.
    for path in ["/", "/api/overview", "/metrics"] {
        let (code, body) =
            federation_tests::http_get_as(f.dashboard, "rebind.example:7480", path).await;
        assert_eq!(code, 421, "{path}: {body}");
        assert!(body.contains("http_hosts"), "{body}");
    }
    let localhost = format!("localhost:{}", f.dashboard.port());
    let (code, _) = federation_tests::http_get_as(f.dashboard, &localhost, "/healthz").await;
    assert_eq!(code, 200);
    let (code, body) = http_get(f.dashboard, "/metrics").await;
    assert!(
        body.contains("hotline_escalations_total{city=\"yibin\"} 1"),
        "{body}"
    );
    assert!(body.contains("hotline_reports_merged_total{city=\"luzhou\"} 0"));
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("hotline_tickets_sent_total{city=\"luzhou\",category=\"social-security\"} 1"),
        "{body}"
    );
    assert!(
        body.contains(
            "hotline_tickets_received_total{city=\"yibin\",category=\"social-security\"} 1"
        )
    );
    assert!(body.contains("# TYPE hotline_ledger_commits counter"));
    assert!(
        !body.contains("13912345678") && !body.contains(&t.id) && !body.contains(&flood.id),
        "no phone, no ticket id in metrics"
    );
    // Every label value is a city, a category, a status or a fixed word.
    let catalogue = hotline_proto::Catalogue::default();
    let known: BTreeSet<String> = catalogue
        .city_ids()
        .chain(catalogue.category_ids())
        .map(str::to_owned)
        .collect();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('{'))
    {
        let labels = &line[line.find('{').unwrap() + 1..line.find('}').unwrap()];
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap();
            let v = v.trim_matches('"');
            match k {
                "city" | "category" => assert!(known.contains(v), "{line}"),
                "status" | "state" => assert!(
                    v.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                    "{line}"
                ),
                "side" | "direction" | "event" => {
                    assert!(v.chars().all(|c| c.is_ascii_lowercase()), "{line}")
                }
                other => panic!("unexpected label {other} in {line}"),
            }
        }
    }
    // The dashboard's own files and data are served from the same port.
    let (code, page) = http_get(f.dashboard, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("/app.js") && !page.contains("http://") && !page.contains("https://"));
    let (code, _) = http_get(f.dashboard, "/api/overview?window=fortnight").await;
    assert_eq!(code, 400);
}

/// The simulator's citizens, operators and coordinator drive the real
/// processes for a few seconds; the simulator's own recount (from its
/// record and the nodes' stores) must equal the gateway's statistics and
/// flow matrix, before and after the gateway is killed and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_simulator_run_the_statistics_equal_its_recount_also_after_a_gateway_kill() {
    use simulator::operators::{self, Actions, Behaviour};
    use simulator::report::{self, Created};
    use simulator::workload::{Citizens, Mix};
    use std::sync::{Arc, Mutex};

    let mut f = Federation::start().await;
    let catalogue = hotline_proto::Catalogue::default();
    let nodes: BTreeMap<String, tonic::transport::Channel> = CITIES
        .iter()
        .map(|c| {
            let id = Identity::City(c.to_string());
            (c.to_string(), f.channel_as(&id, &id))
        })
        .collect();
    let created: Arc<Mutex<Vec<Created>>> = Arc::default();
    let actions = Arc::new(Actions::default());
    let (stop_load, load_rx) = tokio::sync::watch::channel(false);
    let (stop_people, people_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (city, channel)) in nodes.iter().enumerate() {
        let client = city_hotline_client::CityHotlineClient::new(channel.clone());
        tasks.spawn(simulator::demo::citizens_of(
            client.clone(),
            Citizens::new(city, &catalogue, 5, Mix::default()),
            10.0,
            created.clone(),
            load_rx.clone(),
        ));
        tasks.spawn(operators::operators(
            client,
            100 + i as u64,
            Behaviour::default(),
            actions.clone(),
            people_rx.clone(),
        ));
    }
    tasks.spawn(operators::coordinator(
        f.observatory().await,
        CITIES.iter().map(|c| c.to_string()).collect(),
        7,
        actions.clone(),
        people_rx.clone(),
    ));
    // How long the citizens call, then how long the operators go on working
    // off what is left: the length of the workload, not a wait for a result
    // (the recount below waits for what is in flight).
    const CALLING: Duration = Duration::from_secs(4);
    const WORKING_OFF: Duration = Duration::from_secs(4);
    tokio::time::sleep(CALLING).await;
    stop_load.send(true).unwrap();
    tokio::time::sleep(WORKING_OFF).await;
    stop_people.send(true).unwrap();
    while tasks.join_next().await.is_some() {}
    let created = created.lock().unwrap().clone();
    assert!(created.len() > 40, "{} tickets", created.len());

    // Everything in flight settles, then the recount must agree.
    let recount = |gateway: tonic::transport::Channel| {
        let (created, nodes) = (created.clone(), nodes.clone());
        async move {
            eventually(
                "the recount agrees with the gateway",
                Duration::from_secs(20),
                || {
                    let (created, nodes, gateway) =
                        (created.clone(), nodes.clone(), gateway.clone());
                    async move {
                        let r = report::count(&created, &[], &nodes, gateway).await.ok()?;
                        (r.gateway_stats_agree && r.tickets.lost == 0 && r.tickets.duplicated == 0)
                            .then_some(r)
                    }
                },
            )
            .await
        }
    };
    let before = recount(f.channel_as(&Identity::Province, &Identity::Gateway)).await;
    assert!(
        before.tickets.resolved > 0 && before.tickets.rejected > 0,
        "{before:?}"
    );
    let stats_before = stats(&mut f.observatory().await, Window::Unspecified, "").await;

    f.restart_gateway().await;
    let after = recount(f.channel_as(&Identity::Province, &Identity::Gateway)).await;
    assert_eq!(after.cities.len(), before.cities.len());
    assert_eq!(
        stats(&mut f.observatory().await, Window::Unspecified, "").await,
        stats_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_client_that_never_finishes_its_headers_is_let_go() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Federation::start().await;
    // Slowloris: a request's first lines, and then nothing.
    let mut slow = tokio::net::TcpStream::connect(f.dashboard).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    // The others are answered meanwhile.
    let (code, _) = http_get(f.dashboard, "/healthz").await;
    assert_eq!(code, 200);
    // The gateway closes it after its header timeout (10 s): the read
    // ends (whatever it says first) long before a minute.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut rest)).await;
    assert!(
        ended.is_ok(),
        "a connection that never finished its headers is still open after a minute"
    );
}
