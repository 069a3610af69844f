//! The life of cross-city tickets, end to end, against real processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use federation_tests::*;
use hotline_proto::pb::*;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

fn status_of(t: &Ticket) -> TicketStatus {
    TicketStatus::try_from(t.status).unwrap()
}

async fn wait_status(
    client: &mut city_hotline_client::CityHotlineClient<tonic::transport::Channel>,
    id: &str,
    want: TicketStatus,
) -> Ticket {
    let what = format!("{id} is {}", want.as_str_name());
    eventually(&what, WAIT, || {
        let mut client = client.clone();
        let id = id.to_owned();
        async move { get(&mut client, &id).await.filter(|t| status_of(t) == want) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_from_luzhou_to_yibin_is_delivered_accepted_resolved_and_closed_and_luzhou_sees_every_step()
 {
    let f = Federation::start().await;
    let mut luzhou = f.hotline("luzhou").await;
    let mut yibin = f.hotline("yibin").await;

    let t = create(&mut luzhou, draft(&["yibin"], "social-security")).await;
    assert!(t.id.starts_with("luzhou-"));
    assert_eq!(status_of(&t), TicketStatus::Pending);

    // Delivered at Yibin, and Luzhou hears of it.
    let at_yibin = wait_status(&mut yibin, &t.id, TicketStatus::Delivered).await;
    assert_eq!(at_yibin.origin_city, "luzhou");
    assert_eq!(at_yibin.subject, t.subject);
    wait_status(&mut luzhou, &t.id, TicketStatus::Delivered).await;

    yibin
        .accept_ticket(AcceptTicketRequest {
            ticket_id: t.id.clone(),
            note: "已受理".into(),
        })
        .await
        .unwrap();
    wait_status(&mut luzhou, &t.id, TicketStatus::Accepted).await;
    yibin
        .resolve_ticket(ResolveTicketRequest {
            ticket_id: t.id.clone(),
            note: "已办结".into(),
        })
        .await
        .unwrap();
    wait_status(&mut luzhou, &t.id, TicketStatus::Resolved).await;

    // The citizen is unsatisfied once: re-handled (重办), then closed.
    luzhou
        .reopen_ticket(ReopenTicketRequest {
            ticket_id: t.id.clone(),
            reason: "未解决转移问题".into(),
        })
        .await
        .unwrap();
    wait_status(&mut yibin, &t.id, TicketStatus::Reopened).await;
    yibin
        .resolve_ticket(ResolveTicketRequest {
            ticket_id: t.id.clone(),
            note: "再次办结".into(),
        })
        .await
        .unwrap();
    wait_status(&mut luzhou, &t.id, TicketStatus::Resolved).await;
    luzhou
        .close_ticket(CloseTicketRequest {
            ticket_id: t.id.clone(),
            satisfaction: Satisfaction::Satisfied as i32,
            note: String::new(),
        })
        .await
        .unwrap();
    let closed_at_yibin = wait_status(&mut yibin, &t.id, TicketStatus::Closed).await;
    assert_eq!(closed_at_yibin.reopen_count, 1);

    // Luzhou saw every step, once, in order.
    let seen = get(&mut luzhou, &t.id).await.unwrap();
    let kinds: Vec<EventKind> = seen
        .history
        .iter()
        .map(|e| EventKind::try_from(e.kind).unwrap())
        .collect();
    use EventKind as E;
    assert_eq!(
        kinds,
        [
            E::Created,
            E::Dispatched,
            E::Delivered,
            E::Accepted,
            E::Resolved,
            E::Reopened,
            E::Resolved,
            E::Closed
        ]
    );
    let seqs: Vec<u64> = seen.history.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    assert_eq!(seen.satisfaction, Satisfaction::Satisfied as i32);
    assert_eq!(closed_at_yibin.history, seen.history);

    // The ledger agrees, and counts it.
    let mut obs = f.observatory().await;
    let stats = obs
        .get_city_stats(GetCityStatsRequest {
            city: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .cities;
    let lz = stats.iter().find(|s| s.city == "luzhou").unwrap();
    let yb = stats.iter().find(|s| s.city == "yibin").unwrap();
    assert_eq!(lz.sent, 1);
    assert_eq!(lz.sent_by_category["social-security"], 1);
    assert_eq!(lz.sent_by_status["CLOSED"], 1);
    assert_eq!(yb.received, 1);
    assert_eq!(yb.received_by_status["CLOSED"], 1);
    assert_eq!(stats.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_city_ticket_is_handled_in_parallel_and_resolved_when_all_parts_are() {
    let f = Federation::start().await;
    let mut zigong = f.hotline("zigong").await;
    let parent = create(
        &mut zigong,
        draft(&["luzhou", "yibin", "neijiang"], "ecology"),
    )
    .await;
    assert_eq!(parent.part_ids.len(), 3);

    let mut handlers = Vec::new();
    for city in ["luzhou", "yibin", "neijiang"] {
        let part_id = format!("{}.{city}", parent.id);
        assert!(parent.part_ids.contains(&part_id));
        let mut client = f.hotline(city).await;
        let part = wait_status(&mut client, &part_id, TicketStatus::Delivered).await;
        assert_eq!(part.parent_id, parent.id);
        client
            .accept_ticket(AcceptTicketRequest {
                ticket_id: part_id.clone(),
                note: String::new(),
            })
            .await
            .unwrap();
        handlers.push((client, part_id));
    }
    // Two of three resolved: the parent is not.
    for (client, id) in handlers.iter_mut().take(2) {
        client
            .resolve_ticket(ResolveTicketRequest {
                ticket_id: id.clone(),
                note: String::new(),
            })
            .await
            .unwrap();
    }
    let waiting = eventually("two parts resolved at the origin", WAIT, || {
        let mut z = zigong.clone();
        let id = parent.id.clone();
        async move {
            let r = z
                .get_ticket(GetTicketRequest { ticket_id: id })
                .await
                .ok()?
                .into_inner();
            let resolved = r
                .parts
                .iter()
                .filter(|p| p.status == TicketStatus::Resolved as i32)
                .count();
            (resolved == 2).then_some(r)
        }
    })
    .await;
    assert_eq!(status_of(&waiting.ticket.unwrap()), TicketStatus::Accepted);
    let (client, id) = &mut handlers[2];
    client
        .resolve_ticket(ResolveTicketRequest {
            ticket_id: id.clone(),
            note: String::new(),
        })
        .await
        .unwrap();
    wait_status(&mut zigong, &parent.id, TicketStatus::Resolved).await;

    // Closing the parent closes every part, at every city.
    zigong
        .close_ticket(CloseTicketRequest {
            ticket_id: parent.id.clone(),
            satisfaction: Satisfaction::BasicallySatisfied as i32,
            note: String::new(),
        })
        .await
        .unwrap();
    wait_status(&mut zigong, &parent.id, TicketStatus::Closed).await;
    for (client, id) in &mut handlers {
        wait_status(client, id, TicketStatus::Closed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_ticket_lands_in_coordination_and_reaches_the_assigned_owner() {
    let f = Federation::start().await;
    let mut neijiang = f.hotline("neijiang").await;
    let mut luzhou = f.hotline("luzhou").await;
    let mut yibin = f.hotline("yibin").await;
    let mut obs = f.observatory().await;

    let t = create(&mut neijiang, draft(&["luzhou"], "wage-arrears")).await;
    wait_status(&mut luzhou, &t.id, TicketStatus::Delivered).await;

    // A reason is required.
    let err = luzhou
        .reject_ticket(RejectTicketRequest {
            ticket_id: t.id.clone(),
            reason: " ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("reason"), "{}", err.message());

    luzhou
        .reject_ticket(RejectTicketRequest {
            ticket_id: t.id.clone(),
            reason: "用工单位注册地在宜宾".into(),
        })
        .await
        .unwrap();
    wait_status(&mut neijiang, &t.id, TicketStatus::InCoordination).await;

    let items = eventually("the ticket is in the coordination queue", WAIT, || {
        let mut obs = obs.clone();
        async move {
            let items = obs
                .list_coordination_items(ListCoordinationItemsRequest::default())
                .await
                .ok()?
                .into_inner()
                .items;
            (!items.is_empty()).then_some(items)
        }
    })
    .await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].ticket_id, t.id);
    assert_eq!(items[0].rejected_by, "luzhou");
    assert_eq!(items[0].reason, "用工单位注册地在宜宾");

    // Transfer once: nobody else has it, and Luzhou cannot act on it again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for city in ["yibin", "zigong"] {
        let mut c = f.hotline(city).await;
        assert!(get(&mut c, &t.id).await.is_none(), "{city} has it");
    }
    let err = luzhou
        .accept_ticket(AcceptTicketRequest {
            ticket_id: t.id.clone(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());

    // Coordination cannot give it back to its origin, nor to a stranger.
    let err = obs
        .assign_owner(AssignOwnerRequest {
            ticket_id: t.id.clone(),
            owner_city: "neijiang".into(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = obs
        .assign_owner(AssignOwnerRequest {
            ticket_id: t.id.clone(),
            owner_city: "chengdu".into(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("owner_city"));

    obs.assign_owner(AssignOwnerRequest {
        ticket_id: t.id.clone(),
        owner_city: "yibin".into(),
        note: "三个工作日内明确承办".into(),
    })
    .await
    .unwrap();
    let owned = wait_status(&mut yibin, &t.id, TicketStatus::Delivered).await;
    assert_eq!(owned.handling_city, "yibin");
    yibin
        .accept_ticket(AcceptTicketRequest {
            ticket_id: t.id.clone(),
            note: String::new(),
        })
        .await
        .unwrap();
    let at_origin = wait_status(&mut neijiang, &t.id, TicketStatus::Accepted).await;
    assert_eq!(at_origin.handling_city, "yibin");

    // The queue shows it assigned, and no longer waiting.
    let waiting = obs
        .list_coordination_items(ListCoordinationItemsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(waiting.is_empty());
    let all = obs
        .list_coordination_items(ListCoordinationItemsRequest {
            include_assigned: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(all[0].assigned_city, "yibin");
    let stats = obs
        .get_city_stats(GetCityStatsRequest {
            city: "luzhou".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .cities;
    assert_eq!(stats[0].received, 1);
    assert_eq!(stats[0].received_by_status.get("IN_COORDINATION"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_dispatch_sent_100_times_also_concurrently_makes_one_ticket() {
    let f = Federation::start().await;
    let mut yibin = f.hotline("yibin").await;
    let gw = f.federation_as("luzhou").await;

    let ticket = federation_tests::dispatchable("luzhou", "yibin", "tourism");
    let id = ticket.id.clone();
    let request = DispatchTicketRequest {
        city: "luzhou".into(),
        ticket: Some(ticket.clone()),
    };
    let mut first = None;
    for _ in 0..50 {
        let r = gw.clone().dispatch_ticket(request.clone()).await.unwrap();
        let event = r.into_inner().event.unwrap();
        assert_eq!(event.seq, 2);
        first.get_or_insert(event.clone());
        assert_eq!(Some(&event), first.as_ref());
    }
    let concurrent = (0..50).map(|_| {
        let mut gw = gw.clone();
        let request = request.clone();
        async move {
            gw.dispatch_ticket(request)
                .await
                .map(|r| r.into_inner().event)
        }
    });
    for r in futures::future::join_all(concurrent).await {
        assert_eq!(r.unwrap(), first);
    }
    // Same id, other content: refused.
    let mut other = request.clone();
    other.ticket.as_mut().unwrap().subject = "另一件事".into();
    let err = gw.clone().dispatch_ticket(other).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    wait_status(&mut yibin, &id, TicketStatus::Delivered).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = list_all(&mut yibin, TicketRole::Received).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].history.len(), 3);
    let stats = f
        .observatory()
        .await
        .get_city_stats(GetCityStatsRequest {
            city: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .cities;
    assert_eq!(stats.iter().map(|s| s.sent).sum::<u64>(), 1);
    assert_eq!(stats.iter().map(|s| s.received).sum::<u64>(), 1);

    // The hotline's own retries: one request id, one ticket, 100 calls.
    let mut luzhou = f.hotline("luzhou").await;
    let mut d = draft(&["zigong"], "education");
    d.request_id = "platform-req-42".into();
    let calls = (0..100).map(|_| {
        let mut c = luzhou.clone();
        let d = d.clone();
        async move { create(&mut c, d).await.id }
    });
    let ids = futures::future::join_all(calls).await;
    assert!(ids.iter().all(|i| *i == ids[0]));
    let sent = list_all(&mut luzhou, TicketRole::Sent).await;
    assert_eq!(sent.len(), 1);
    // The same id on a request that says something else is not a retry:
    // ALREADY_EXISTS, naming the field and the ticket the id made, and no
    // second ticket.
    let mut other = d.clone();
    other.subject = "另一件事".into();
    let e = luzhou
        .create_ticket(CreateTicketRequest {
            ticket: Some(other),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().starts_with("request_id:"), "{}", e.message());
    assert!(e.message().contains(&ids[0]), "{}", e.message());
    assert_eq!(list_all(&mut luzhou, TicketRole::Sent).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_matching_status_and_changes_nothing() {
    let f = Federation::start().await;
    let mut luzhou = f.hotline("luzhou").await;

    let bad = |mutate: fn(&mut Ticket)| {
        let mut t = draft(&["yibin"], "housing-fund");
        mutate(&mut t);
        CreateTicketRequest { ticket: Some(t) }
    };
    type Mutation = fn(&mut Ticket);
    let cases: [(Mutation, &str); 9] = [
        (
            |t| t.target_cities = vec!["chengdu".into()],
            "ticket.target_cities[0]",
        ),
        (|t| t.category = "weather".into(), "ticket.category"),
        (|t| t.subject.clear(), "ticket.subject"),
        (|t| t.kind = 0, "ticket.kind"),
        (|t| t.description = "长".repeat(5000), "ticket.description"),
        (|t| t.origin_city = "yibin".into(), "ticket.origin_city"),
        // Dated 1970: every deadline past on arrival (#18, point 2).
        (
            |t| t.create_time = Some(hotline_proto::time::from_unix_ms(0)),
            "ticket.create_time",
        ),
        (
            |t| {
                let mut wraps = hotline_proto::time::from_unix_ms(0);
                wraps.seconds = 1 << 62;
                t.create_time = Some(wraps);
            },
            "ticket.create_time",
        ),
        (|t| t.location = "江阳区\u{7}".into(), "ticket.location"),
    ];
    for (mutate, field) in cases {
        let err = luzhou.create_ticket(bad(mutate)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
        use tonic_types::StatusExt;
        let details = err.get_error_details();
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, field);
    }
    assert!(
        list_all(&mut luzhou, TicketRole::Unspecified)
            .await
            .is_empty()
    );

    let err = luzhou
        .get_ticket(GetTicketRequest {
            ticket_id: "luzhou-01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = luzhou
        .get_ticket(GetTicketRequest {
            ticket_id: "not an id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // An illegal transition: the origin cannot resolve its own dispatched
    // ticket, nor close one that is not resolved.
    let t = create(&mut luzhou, draft(&["yibin"], "housing-fund")).await;
    let err = luzhou
        .resolve_ticket(ResolveTicketRequest {
            ticket_id: t.id.clone(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .ends_with("is not handled by luzhou, so luzhou cannot resolve it"),
        "{}",
        err.message()
    );
    let err = luzhou
        .close_ticket(CloseTicketRequest {
            ticket_id: t.id.clone(),
            satisfaction: Satisfaction::Satisfied as i32,
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    let err = luzhou
        .close_ticket(CloseTicketRequest {
            ticket_id: t.id.clone(),
            satisfaction: 0,
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let after = get(&mut luzhou, &t.id).await.unwrap();
    assert!(after.history.len() <= 3, "a refused call wrote an event");

    // A city reporting for a ticket it does not handle is refused by the
    // gateway.
    let mut yibin = f.hotline("yibin").await;
    wait_status(&mut yibin, &t.id, TicketStatus::Delivered).await;
    let err = f
        .federation_as("zigong")
        .await
        .report_event(ReportEventRequest {
            city: "zigong".into(),
            event: Some(hotline_proto::state::event(
                &t.id,
                4,
                EventKind::Accepted,
                "zigong",
                TicketStatus::Accepted,
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());

    // The personal data never reached a log.
    for p in ["gateway", "luzhou", "yibin"] {
        let log = std::fs::read_to_string(f.dir.path().join(format!("{p}.log"))).unwrap();
        assert!(!log.contains("13912345678"), "{p} logged a phone number");
        assert!(!log.contains("王小明"), "{p} logged a name");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordination_decides_once_and_a_city_it_sends_a_ticket_back_to_holds_it_counted_once() {
    let f = Federation::start().await;
    let mut luzhou = f.hotline("luzhou").await;
    let mut yibin = f.hotline("yibin").await;
    let mut zigong = f.hotline("zigong").await;
    let mut obs = f.observatory().await;

    // A ticket goes origin → target → coordination → owner, and no
    // further (一件转办): the owner coordination names cannot reject it.
    let first = create(&mut luzhou, draft(&["yibin"], "real-estate")).await;
    wait_status(&mut yibin, &first.id, TicketStatus::Delivered).await;
    yibin
        .reject_ticket(RejectTicketRequest {
            ticket_id: first.id.clone(),
            reason: "房产在自贡".into(),
        })
        .await
        .unwrap();
    wait_status(&mut luzhou, &first.id, TicketStatus::InCoordination).await;
    obs.assign_owner(AssignOwnerRequest {
        ticket_id: first.id.clone(),
        owner_city: "zigong".into(),
        note: String::new(),
    })
    .await
    .unwrap();
    wait_status(&mut zigong, &first.id, TicketStatus::Delivered).await;
    let err = zigong
        .reject_ticket(RejectTicketRequest {
            ticket_id: first.id.clone(),
            reason: "登记机关在宜宾".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("coordination"), "{}", err.message());
    zigong
        .accept_ticket(AcceptTicketRequest {
            ticket_id: first.id.clone(),
            note: String::new(),
        })
        .await
        .unwrap();
    wait_status(&mut luzhou, &first.id, TicketStatus::Accepted).await;
    // Yibin's node sends its REJECTED again, as after a crash before it saw
    // the answer: the ticket is Zigong's now, and the gateway still knows
    // the resend for what it is, a retry of what it committed, and answers
    // it as the first time (not PERMISSION_DENIED, which would put the
    // resend among Yibin's dead letters; issue #23).
    let held = get(&mut luzhou, &first.id).await.unwrap();
    let rejected = held
        .history
        .iter()
        .find(|e| e.kind == EventKind::Rejected as i32)
        .cloned()
        .unwrap();
    let answer = f
        .federation_as("yibin")
        .await
        .report_event(ReportEventRequest {
            city: "yibin".into(),
            event: Some(rejected.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let last = answer.events.last().unwrap();
    assert_eq!((last.seq, last.kind), (rejected.seq, rejected.kind));
    assert_eq!(last.actor, "yibin");
    // Another event at that seq, or one Yibin never made, is no retry.
    let mut other = rejected.clone();
    other.kind = EventKind::Accepted as i32;
    let err = f
        .federation_as("yibin")
        .await
        .report_event(ReportEventRequest {
            city: "yibin".into(),
            event: Some(other),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert_eq!(
        get(&mut luzhou, &first.id).await.unwrap().history.len(),
        held.history.len()
    );

    // Coordination may decide a rejected ticket is the rejecting city's
    // after all: it holds it again, with the whole history, once.
    let t = create(&mut luzhou, draft(&["yibin"], "real-estate")).await;
    wait_status(&mut yibin, &t.id, TicketStatus::Delivered).await;
    yibin
        .reject_ticket(RejectTicketRequest {
            ticket_id: t.id.clone(),
            reason: "房产在自贡".into(),
        })
        .await
        .unwrap();
    wait_status(&mut luzhou, &t.id, TicketStatus::InCoordination).await;
    obs.assign_owner(AssignOwnerRequest {
        ticket_id: t.id.clone(),
        owner_city: "yibin".into(),
        note: String::new(),
    })
    .await
    .unwrap();
    let again = wait_status(&mut yibin, &t.id, TicketStatus::Delivered).await;
    let seqs: Vec<u64> = again.history.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(
        again
            .history
            .iter()
            .any(|e| e.kind == EventKind::Rejected as i32)
    );
    yibin
        .accept_ticket(AcceptTicketRequest {
            ticket_id: t.id.clone(),
            note: String::new(),
        })
        .await
        .unwrap();
    wait_status(&mut luzhou, &t.id, TicketStatus::Accepted).await;
    assert_eq!(list_all(&mut yibin, TicketRole::Received).await.len(), 2);

    let stats = obs
        .get_city_stats(GetCityStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .cities;
    let of = |city: &str| stats.iter().find(|s| s.city == city).unwrap();
    assert_eq!(
        of("yibin").received,
        2,
        "counted twice at the city it came back to"
    );
    assert_eq!(of("zigong").received, 1);
    assert_eq!(of("yibin").received_by_status["ACCEPTED"], 1);
    assert_eq!(of("zigong").received_by_status["ACCEPTED"], 1);
    assert_eq!(of("luzhou").sent, 2);
}
