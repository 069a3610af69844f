//! Provincial supervision against real processes: a request reported by
//! three channels reaches its target once, with the other reports linked;
//! every escalation rule fires on real traffic at its threshold and not one
//! short of it; deadlines in working days cross a public holiday and an
//! adjusted working weekend; the supervision ledger takes actions, a daily
//! digest and the monthly top matters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use federation_tests::*;
use gateway::calendar::{self, Calendar};
use gateway::supervision::{DeadlineConfig, Policy, RuleConfig};
use hotline_proto::identity::Identity;
use hotline_proto::pb::observatory_client::ObservatoryClient;
use hotline_proto::pb::*;
use hotline_proto::time;
use tonic::Code;

/// Small thresholds, so a test reaches them: 3 citizens on one matter, 3
/// reports by one citizen, re-handled twice.
const RULES: &str = "[supervision]\nmerge_window_hours = 72\ncluster_citizens = 3\nrepeat_reports = 3\nrehandled_times = 2\n[departments]\nnatural-disaster = [\"natural-disaster\", \"safety\", \"social-stability\"]\n";

fn policy() -> Policy {
    Policy::new(
        DeadlineConfig::default(),
        RuleConfig {
            cluster_citizens: 3,
            repeat_reports: 3,
            rehandled_times: 2,
            ..Default::default()
        },
        Calendar::shipped(),
        &Default::default(),
    )
}

fn report(
    subject: &str,
    description: &str,
    place: &str,
    phone: &str,
    channel: Channel,
    category: &str,
) -> Ticket {
    Ticket {
        target_cities: vec!["yibin".into()],
        category: category.into(),
        kind: TicketKind::Complaint as i32,
        channel: channel as i32,
        subject: subject.into(),
        description: description.into(),
        location: place.into(),
        citizen: Some(Citizen {
            name: "市民".into(),
            phone: phone.into(),
        }),
        ..Default::default()
    }
}

fn of_rule(all: &[Escalation], rule: EscalationRule) -> Vec<&Escalation> {
    all.iter().filter(|e| e.rule == rule as i32).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reported_by_three_channels_reaches_its_target_once_and_many_citizens_escalate() {
    let f = Federation::start_with(RULES, "").await;
    let mut luzhou = f.hotline("luzhou").await;
    let mut zigong = f.hotline("zigong").await;
    let mut yibin = f.hotline("yibin").await;
    let mut obs = f.observatory().await;

    // One matter, three channels, slightly different words; two citizens.
    let first = create(
        &mut luzhou,
        report(
            "翠屏区南岸东路18号小区停水",
            "翠屏区南岸东路18号小区连续两天停水，物业无人处理，请尽快恢复供水。",
            "宜宾市翠屏区南岸东路18号",
            "13800000001",
            Channel::Phone,
            "consumer-rights",
        ),
    )
    .await;
    wait_status(&yibin, &first.id, TicketStatus::Delivered).await;
    let second = create(
        &mut luzhou,
        report(
            "南岸东路18号小区停水两天",
            "反映翠屏区南岸东路18号小区已经连续两天停水了，物业没人管，希望尽快恢复供水。",
            "宜宾市翠屏区南岸东路18号",
            "13800000001",
            Channel::MayorMailbox,
            "consumer-rights",
        ),
    )
    .await;
    let third = create(
        &mut zigong,
        report(
            "翠屏区南岸东路18号停水",
            "翠屏区南岸东路18号小区停水两天，物业无人处理，请协调尽快恢复供水！",
            "宜宾翠屏区南岸东路18号附近",
            "13800000002",
            Channel::WenzhengSichuan,
            "consumer-rights",
        ),
    )
    .await;
    // Another matter in the same category and city, and the same matter in
    // another category: dispatched on their own.
    let other = create(
        &mut luzhou,
        report(
            "叙州区工地夜间施工噪音",
            "叙州区南岸西路工地每晚十一点后仍在施工，噪音扰民，请查处。",
            "宜宾市叙州区南岸西路",
            "13800000003",
            Channel::Phone,
            "consumer-rights",
        ),
    )
    .await;
    let merged2 = wait_status(&luzhou, &second.id, TicketStatus::Merged).await;
    let merged3 = wait_status(&zigong, &third.id, TicketStatus::Merged).await;
    for m in [&merged2, &merged3] {
        let e = m.history.last().unwrap();
        assert_eq!(e.kind, EventKind::Merged as i32);
        assert_eq!(e.linked_ticket_id, first.id);
    }
    wait_status(&yibin, &other.id, TicketStatus::Delivered).await;

    // Yibin holds the matter once, with both other reports linked to it.
    let held = eventually(
        "yibin sees two linked reports",
        Duration::from_secs(20),
        || {
            let mut y = yibin.clone();
            let id = first.id.clone();
            async move {
                get(&mut y, &id)
                    .await
                    .filter(|t| t.linked_reports.len() == 2)
            }
        },
    )
    .await;
    let linked: Vec<&str> = held
        .linked_reports
        .iter()
        .map(|r| r.ticket_id.as_str())
        .collect();
    assert_eq!(linked, [second.id.as_str(), third.id.as_str()]);
    assert_eq!(held.linked_reports[0].channel, Channel::MayorMailbox as i32);
    assert_eq!(held.linked_reports[1].origin_city, "zigong");
    let received = list_all(&mut yibin, TicketRole::Received).await;
    let ids: Vec<&str> = received.iter().map(|t| t.id.as_str()).collect();
    assert!(ids.contains(&first.id.as_str()) && ids.contains(&other.id.as_str()));
    assert!(!ids.contains(&second.id.as_str()) && !ids.contains(&third.id.as_str()));
    assert_eq!(received.len(), 2, "{ids:?}");
    // The origin sees the link too.
    eventually("luzhou sees the links", Duration::from_secs(20), || {
        let mut l = luzhou.clone();
        let id = first.id.clone();
        async move {
            get(&mut l, &id)
                .await
                .filter(|t| t.linked_reports.len() == 2)
        }
    })
    .await;

    // Two citizens on the matter: one short of the rule.
    let all = escalations(&mut obs).await;
    assert!(
        of_rule(&all, EscalationRule::ManyReportsOneMatter).is_empty(),
        "{all:?}"
    );
    // A third citizen, by yet another channel: the rule fires, once, with
    // every report behind it.
    let fourth = create(
        &mut luzhou,
        report(
            "南岸东路18号小区停水",
            "翠屏区南岸东路18号小区连续停水两天，请尽快恢复供水。",
            "宜宾市翠屏区南岸东路18号",
            "13800000004",
            Channel::PeopleDailyBoard,
            "consumer-rights",
        ),
    )
    .await;
    wait_status(&luzhou, &fourth.id, TicketStatus::Merged).await;
    let all = escalations(&mut obs).await;
    let cluster = of_rule(&all, EscalationRule::ManyReportsOneMatter);
    assert_eq!(cluster.len(), 1, "{all:?}");
    assert_eq!(
        cluster[0].ticket_ids,
        [
            first.id.clone(),
            second.id.clone(),
            third.id.clone(),
            fourth.id.clone()
        ]
    );
    assert_eq!(cluster[0].handling_city, "yibin");
    assert!(
        cluster[0].reason.contains("3 citizens"),
        "{}",
        cluster[0].reason
    );

    // The figures: merged at the origins, linked at the handler.
    let stats = obs
        .get_city_stats(GetCityStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .cities;
    let at = |c: &str| stats.iter().find(|s| s.city == c).unwrap().clone();
    assert_eq!(at("luzhou").merged, 2);
    assert_eq!(at("zigong").merged, 1);
    assert_eq!(at("yibin").linked, 3);
    assert_eq!(at("yibin").escalated, 1);
    assert_eq!(at("luzhou").sent, 2, "merged reports are not dispatched");

    // The month's top matters: this one first, with its four reports.
    let top = obs
        .get_top_matters(GetTopMattersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(top.province[0].ticket_id, first.id);
    assert_eq!(top.province[0].reports, 4);
    let y = top.cities.iter().find(|c| c.city == "yibin").unwrap();
    assert_eq!(y.matters[0].reports, 4);
    assert_eq!(y.matters[1].ticket_id, other.id);
    assert_eq!(y.matters[1].reports, 1);

    // Nothing of the citizens reaches the ledger's views.
    let text = format!("{all:?}{top:?}");
    assert!(!text.contains("1380000000"), "a phone number leaked");
}

/// The create time, within the last 30 days, whose resolution deadline has
/// passed but is not yet the long-unresolved margin behind (an hour of slack
/// either side).
fn past_due_not_late(p: &Policy, now: i64) -> i64 {
    let hour = 3_600_000;
    let mut t = now - hour;
    while t > now - 30 * 24 * hour {
        let due = p.resolve_due(t, false, TicketKind::Complaint as i32, "tourism");
        if due < now - hour && p.late(due) > now + hour {
            return t;
        }
        t -= hour;
    }
    panic!("no such time in 30 days");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_fires_at_its_threshold_and_not_below_and_deadlines_cross_holidays() {
    let f = Federation::start_with(RULES, "").await;
    let mut luzhou = f.hotline("luzhou").await;
    let yibin = f.hotline("yibin").await;
    let mut obs = f.observatory().await;
    let p = policy();
    let places = [
        "长宁县竹海镇",
        "江安县迎安路",
        "兴文县石海大道",
        "珙县巡场镇",
    ];

    // 一人多诉: one citizen, two different requests: one short; the third
    // fires.
    let mut repeat = Vec::new();
    for (i, (subject, place)) in [
        ("竹海景区门票乱收费", places[0]),
        ("迎安路公交站牌损坏", places[1]),
        ("石海大道路灯不亮", places[2]),
    ]
    .into_iter()
    .enumerate()
    {
        let t = create(
            &mut luzhou,
            report(
                subject,
                &format!("{place}{subject}，请相关部门处理。"),
                place,
                "13911112222",
                Channel::Phone,
                "tourism",
            ),
        )
        .await;
        wait_status(&yibin, &t.id, TicketStatus::Delivered).await;
        repeat.push(t.id.clone());
        let all = escalations(&mut obs).await;
        let fired = of_rule(&all, EscalationRule::OneCitizenManyRequests);
        if i < 2 {
            assert!(fired.is_empty(), "fired at {} reports: {all:?}", i + 1);
        } else {
            assert_eq!(fired.len(), 1);
            assert_eq!(fired[0].ticket_ids, repeat);
        }
    }

    // Emergency categories at once; an ordinary one not.
    let flood = create(
        &mut luzhou,
        report(
            "珙县巡场镇山体滑坡",
            "珙县巡场镇后山出现裂缝和滑坡迹象，威胁居民安全。",
            places[3],
            "13933334444",
            Channel::Phone,
            "natural-disaster",
        ),
    )
    .await;
    wait_status(&yibin, &flood.id, TicketStatus::Delivered).await;
    let all = escalations(&mut obs).await;
    let emergency = of_rule(&all, EscalationRule::Emergency);
    assert_eq!(emergency.len(), 1, "{all:?}");
    assert_eq!(emergency[0].ticket_ids, std::slice::from_ref(&flood.id));
    assert_eq!(emergency[0].department, "natural-disaster");

    // Re-handled twice and still unsatisfied fires; once does not.
    let rehandle = |n: u32, subject: &'static str, place: &'static str| {
        let mut luzhou = luzhou.clone();
        let mut yibin = yibin.clone();
        async move {
            let t = create(
                &mut luzhou,
                report(
                    subject,
                    &format!("{place}{subject}，多次反映未解决。"),
                    place,
                    "",
                    Channel::Web,
                    "transport",
                ),
            )
            .await;
            wait_status(&yibin, &t.id, TicketStatus::Delivered).await;
            yibin
                .accept_ticket(AcceptTicketRequest {
                    ticket_id: t.id.clone(),
                    note: String::new(),
                })
                .await
                .unwrap();
            for round in 0..=n {
                yibin
                    .resolve_ticket(ResolveTicketRequest {
                        ticket_id: t.id.clone(),
                        note: String::new(),
                    })
                    .await
                    .unwrap();
                wait_status(&luzhou, &t.id, TicketStatus::Resolved).await;
                if round < n {
                    luzhou
                        .reopen_ticket(ReopenTicketRequest {
                            ticket_id: t.id.clone(),
                            reason: "仍未解决".into(),
                        })
                        .await
                        .unwrap();
                    wait_status(&yibin, &t.id, TicketStatus::Reopened).await;
                }
            }
            luzhou
                .close_ticket(CloseTicketRequest {
                    ticket_id: t.id.clone(),
                    satisfaction: Satisfaction::Unsatisfied as i32,
                    note: String::new(),
                })
                .await
                .unwrap();
            wait_status(&yibin, &t.id, TicketStatus::Closed).await;
            t.id
        }
    };
    let once = rehandle(1, "跨市客运班线停运", "宜宾南客站").await;
    let twice = rehandle(2, "城际公交票价上涨", "宜宾北客站").await;
    let all = escalations(&mut obs).await;
    let unsatisfied = of_rule(&all, EscalationRule::StillUnsatisfied);
    assert_eq!(unsatisfied.len(), 1, "{all:?}");
    assert_eq!(unsatisfied[0].ticket_ids, std::slice::from_ref(&twice));
    assert!(!all.iter().any(|e| e.ticket_ids.contains(&once)));

    // 久拖不决 and deadlines on the calendar. A request made on Wednesday
    // 30 September 2026, 16:00 CST: one working day to accept, over the
    // National Day holiday (1-7 October) to the end of Thursday 8 October;
    // three to resolve a consultation: 8, 9 and Saturday 10 October (worked
    // instead, 调休), due at the end of the 10th. Long past: escalated.
    let sep30 = calendar::start_ms(calendar::parse_date("2026-09-30").unwrap()) + 16 * 3_600_000;
    let mut old = report(
        "跨市医保报销材料被退回",
        "在宜宾就医的医保报销材料被退回，要求重新提交。",
        "宜宾市医保局",
        "",
        Channel::MayorMailbox,
        "medical-insurance",
    );
    old.kind = TicketKind::Consultation as i32;
    old.create_time = Some(time::from_unix_ms(sep30));
    let old = create(&mut luzhou, old).await;
    wait_status(&yibin, &old.id, TicketStatus::Delivered).await;
    let overdue = obs
        .list_overdue_tickets(ListOverdueTicketsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let o = overdue
        .tickets
        .iter()
        .find(|t| t.ticket_id == old.id)
        .unwrap();
    assert_eq!(o.stage, "accept");
    assert_eq!(
        o.due_time.map(|t| time::to_unix_ms(&t)),
        Some(calendar::start_ms(
            calendar::parse_date("2026-10-09").unwrap()
        ))
    );
    yibin
        .clone()
        .accept_ticket(AcceptTicketRequest {
            ticket_id: old.id.clone(),
            note: String::new(),
        })
        .await
        .unwrap();
    let o = eventually(
        "the resolution deadline is listed",
        Duration::from_secs(20),
        || {
            let mut obs = obs.clone();
            let id = old.id.clone();
            async move {
                obs.list_overdue_tickets(ListOverdueTicketsRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .tickets
                    .into_iter()
                    .find(|t| t.ticket_id == id && t.stage == "resolve")
            }
        },
    )
    .await;
    assert_eq!(
        o.due_time.map(|t| time::to_unix_ms(&t)),
        Some(calendar::start_ms(
            calendar::parse_date("2026-10-11").unwrap()
        ))
    );
    // Past its deadline but within the margin: not escalated.
    let now = time::now_ms();
    let mut recent = report(
        "跨市景区退票难",
        "在宜宾景区购票后无法退票，客服无人应答。",
        "宜宾市蜀南竹海",
        "",
        Channel::App,
        "tourism",
    );
    recent.create_time = Some(time::from_unix_ms(past_due_not_late(&p, now)));
    let recent = create(&mut luzhou, recent).await;
    wait_status(&yibin, &recent.id, TicketStatus::Delivered).await;
    let all = escalations(&mut obs).await;
    let late = of_rule(&all, EscalationRule::LongUnresolved);
    assert_eq!(late.len(), 1, "{all:?}");
    assert_eq!(late[0].ticket_ids, std::slice::from_ref(&old.id));
    assert!(
        overdue_has(&mut obs, &recent.id).await,
        "past due, so overdue"
    );

    // The ledger's actions: a reminder letter, a forward (which needs its
    // department), a close; nothing after the close; the province only.
    let esc = late[0].id.clone();
    let act = |kind: EscalationActionKind, department: &str| RecordEscalationActionRequest {
        escalation_id: esc.clone(),
        kind: kind as i32,
        note: "提示函已发".into(),
        department: department.into(),
    };
    obs.record_escalation_action(act(EscalationActionKind::ReminderLetter, ""))
        .await
        .unwrap();
    let e = obs
        .record_escalation_action(act(EscalationActionKind::Forwarded, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("department"), "{}", e.message());
    obs.record_escalation_action(act(EscalationActionKind::Forwarded, "healthcare-security"))
        .await
        .unwrap();
    let closed = obs
        .record_escalation_action(act(EscalationActionKind::Closed, ""))
        .await
        .unwrap()
        .into_inner()
        .escalation
        .unwrap();
    assert_eq!(closed.state, EscalationState::Closed as i32);
    assert_eq!(closed.department, "healthcare-security");
    assert_eq!(closed.actions.len(), 3);
    let e = obs
        .record_escalation_action(act(EscalationActionKind::ReminderLetter, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let city =
        ObservatoryClient::new(f.channel_as(&Identity::City("yibin".into()), &Identity::Gateway));
    let e = city
        .clone()
        .record_escalation_action(act(EscalationActionKind::ReminderLetter, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // The day's digest counts what was opened, done and closed.
    let digest = obs
        .get_supervision_digest(GetSupervisionDigestRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(digest.opened, 4, "{digest:?}");
    assert_eq!(digest.actions, 3);
    assert_eq!(digest.closed, 1);
    assert_eq!(digest.open_now, 3);
    // A department sees only its categories: the emergency department its
    // one escalation.
    let dept = ObservatoryClient::new(f.channel_as(
        &Identity::Department("natural-disaster".into()),
        &Identity::Gateway,
    ));
    let seen = dept
        .clone()
        .list_escalations(ListEscalationsRequest {
            include_closed: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .escalations;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].rule, EscalationRule::Emergency as i32);
}

async fn overdue_has(obs: &mut ObservatoryClient<tonic::transport::Channel>, id: &str) -> bool {
    obs.list_overdue_tickets(ListOverdueTicketsRequest { page_size: 1000 })
        .await
        .unwrap()
        .into_inner()
        .tickets
        .iter()
        .any(|t| t.ticket_id == id)
}

/// Reports of one matter that reach the gateway at the same instant, from
/// one city and from several, are decided as if they came one after the
/// other: the first is dispatched, every other merged into it (issue #24).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_one_matter_arriving_together_are_one_dispatch() {
    let f = Federation::start_with("[supervision]\nmerge_window_hours = 72\n", "").await;
    let luzhou = f.federation_as("luzhou").await;
    let zigong = f.federation_as("zigong").await;
    let neijiang = f.federation_as("neijiang").await;
    let mut obs = f.observatory().await;
    let luzhou_alone = [("luzhou", luzhou.clone())];
    one_matter_at_once(&luzhou_alone, &mut obs, "yibin", 2).await;
    one_matter_at_once(&luzhou_alone, &mut obs, "yibin", 20).await;
    one_matter_at_once(
        &[
            ("luzhou", luzhou),
            ("zigong", zigong),
            ("neijiang", neijiang),
        ],
        &mut obs,
        "yibin",
        20,
    )
    .await;
}

/// A report more like a closed ticket than like the open one of the same
/// matter still merges into the open one: the detector's best match being
/// closed does not make the report a new dispatch while another report it
/// matches is open (issue #24: whether the best match was closed yet
/// depended on timing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_whose_best_match_is_closed_merges_into_the_open_one() {
    let f = Federation::start_with("[supervision]\nmerge_window_hours = 72\n", "").await;
    let mut luzhou = f.hotline("luzhou").await;
    let mut yibin = f.hotline("yibin").await;
    let told = |phone: &str, subject: &str, description: &str| {
        report(
            subject,
            description,
            "宜宾市翠屏区南岸东路18号",
            phone,
            Channel::Phone,
            "consumer-rights",
        )
    };
    const SUBJECT: &str = "翠屏区南岸东路18号小区停水";
    const WORDS: &str = "翠屏区南岸东路18号小区连续两天停水，物业无人处理，请尽快恢复供水。";
    // The first report, handled and closed.
    let closed = create(&mut luzhou, told("13800000011", SUBJECT, WORDS)).await;
    wait_status(&yibin, &closed.id, TicketStatus::Delivered).await;
    yibin
        .accept_ticket(AcceptTicketRequest {
            ticket_id: closed.id.clone(),
            note: String::new(),
        })
        .await
        .unwrap();
    yibin
        .resolve_ticket(ResolveTicketRequest {
            ticket_id: closed.id.clone(),
            note: String::new(),
        })
        .await
        .unwrap();
    wait_status(&luzhou, &closed.id, TicketStatus::Resolved).await;
    luzhou
        .close_ticket(CloseTicketRequest {
            ticket_id: closed.id.clone(),
            satisfaction: Satisfaction::Satisfied as i32,
            note: String::new(),
        })
        .await
        .unwrap();
    wait_status(&yibin, &closed.id, TicketStatus::Closed).await;
    // The water goes off again: told in other words, a new dispatch (the
    // matter's ticket is closed).
    let open = create(
        &mut luzhou,
        told(
            "13800000012",
            "南岸东路18号小区停水两天",
            "反映翠屏区南岸东路18号小区已经连续两天停水了，物业没人管，希望尽快恢复供水。",
        ),
    )
    .await;
    wait_status(&yibin, &open.id, TicketStatus::Delivered).await;
    // A third citizen uses the first one's very words: its best match is the
    // closed ticket, and it merges into the open one.
    let third = create(&mut luzhou, told("13800000013", SUBJECT, WORDS)).await;
    let merged = wait_status(&luzhou, &third.id, TicketStatus::Merged).await;
    let into = merged
        .history
        .iter()
        .find(|e| e.kind == EventKind::Merged as i32)
        .map(|e| e.linked_ticket_id.clone());
    assert_eq!(into.as_deref(), Some(open.id.as_str()), "{merged:?}");
}
