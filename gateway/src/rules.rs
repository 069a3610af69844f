//! The ledger's rules, decided in memory: pure functions (no connection, no
//! clock: `now` is an argument) from a ticket's row, the few facts a rule
//! needs and the incoming event, to what changes — the new row and the
//! effects it owes, as data. [`crate::ledger`] loads the row and the facts,
//! calls these, and persists what they decide.
//!
//! - [`check_report`]: who may report which event, a retry recognised, the
//!   delivery a handler's event proves (seq + 2), transfer once;
//! - [`step`]: what an event moves: the status counts, the windows, the
//!   durations, the stage and its deadline, the overdue count, long
//!   unresolved;
//! - [`report_rules`]: which escalations a new report opens (many citizens
//!   one matter, one citizen many requests, an emergency category).

use hotline_proto::pb::{
    EscalationRule, EventKind, Satisfaction, Ticket, TicketEvent, TicketStatus,
};
use hotline_proto::state::{self, Actor};

use crate::error::GatewayError;
use crate::stats::{RECEIVED, SENT};
use crate::supervision::{ACCEPT, ASSIGN, Policy, RESOLVE};
use crate::windows::{Duration, HOUR_MS, Metric};

/// A ticket's row: what the ledger decides on.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub origin: String,
    pub handler: String,
    pub category: String,
    pub urgent: bool,
    pub kind: i32,
    pub status: TicketStatus,
    pub seq: u64,
    pub created_ms: i64,
    /// The deadline of the stage the ticket is in, and which stage.
    pub due_ms: Option<i64>,
    pub stage: Option<String>,
    /// Counted in `overdue_open` now.
    pub overdue: bool,
    /// When it must be resolved by, and when it is long unresolved.
    pub resolve_due_ms: Option<i64>,
    pub late_ms: Option<i64>,
}

/// What an event owes besides the new row.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Add `n` to a count of `city` in the ticket's category.
    Count {
        city: String,
        metric: Metric,
        detail: String,
        n: i64,
    },
    /// Record a duration of `city` in the ticket's category.
    Observe {
        city: String,
        what: Duration,
        ms: i64,
    },
    /// One ticket of `city`'s direction moves between statuses.
    Status {
        city: String,
        direction: &'static str,
        from: Option<TicketStatus>,
        to: Option<TicketStatus>,
    },
    /// Add `n` to the open overdue tickets of `city` in the category.
    Overdue { city: String, n: i64 },
    /// The ticket became long unresolved (久拖不决): escalate it.
    LongUnresolved,
}

/// The row after an event, and what it owes.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub row: Row,
    pub effects: Vec<Effect>,
}

/// What to do with an event a city reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The event at this seq is committed already: answer with it.
    Retry,
    /// Apply it, first recording the delivery it proves when `proves`.
    Apply { proves: bool, to: TicketStatus },
}

/// The facts a reported event is checked against besides the row.
#[derive(Debug, Default, Clone)]
pub struct ReportFacts {
    /// The owner provincial coordination named, if it named one.
    pub assigned_to: Option<String>,
}

/// Checks an event `city` reports about the ticket `row` (whose id is
/// `id`): the party, the order, the state machine, transfer once.
pub fn check_report(
    id: &str,
    row: &Row,
    city: &str,
    kind: EventKind,
    seq: u64,
    facts: &ReportFacts,
) -> Result<Verdict, GatewayError> {
    let actor = state::actor_of(kind);
    let allowed = match actor {
        Actor::Origin => row.origin == city,
        Actor::Handler => row.handler == city,
        Actor::Gateway | Actor::Province => false,
    };
    if seq <= row.seq && seq > 0 {
        // Possibly a retry of what is committed: the ledger compares it with
        // the stored event (a ticket handed on to another owner since is
        // still recognised by its first reporter).
        return Ok(Verdict::Retry);
    }
    if !allowed {
        return Err(GatewayError::PermissionDenied(format!(
            "{city} is not the {} of ticket {id}; only it may report {}",
            actor.name(),
            kind.as_str_name()
        )));
    }
    // The handler acts on a ticket whose delivery acknowledgement has not
    // been recorded yet: its report proves the delivery.
    let proves =
        actor == Actor::Handler && row.status == TicketStatus::Dispatched && seq == row.seq + 2;
    let (status, have) = if proves {
        (TicketStatus::Delivered, row.seq + 1)
    } else {
        (row.status, row.seq)
    };
    if seq != have + 1 {
        return Err(GatewayError::SequenceGap {
            ticket: id.to_owned(),
            have,
            got: seq,
        });
    }
    let to = state::next(status, kind)?;
    if kind == EventKind::Rejected && facts.assigned_to.as_deref() == Some(city) {
        return Err(GatewayError::FailedPrecondition(format!(
            "ticket {id} was assigned to {city} by provincial coordination; its owner cannot reject it"
        )));
    }
    Ok(Verdict::Apply { proves, to })
}

/// Whether a new report made at `created_ms` may merge into the ticket
/// `row` it matches (合并派单): the ticket still open and made within the
/// merge window; never when merging is off (`window_hours` 0). The ledger
/// asks it of the matches best first and merges into the first that may,
/// so a closed best match does not make the report a new dispatch while a
/// ticket it also matches is open.
/// A dispatched ticket as the ledger keeps it: what only the ledger may say
/// of a ticket (its status, history, handler, sequence, reports merged into
/// it) and what only its origin's node knows (its parts, reopenings and
/// satisfaction) cleared, whatever the sender put there.
pub fn clear_output_only(t: &mut Ticket) {
    t.history.clear();
    t.status = TicketStatus::Unspecified as i32;
    t.seq = 0;
    t.handling_city.clear();
    t.linked_reports.clear();
    t.part_ids.clear();
    t.reopen_count = 0;
    t.satisfaction = Satisfaction::Unspecified as i32;
}

/// The CREATED event of a dispatched ticket, made by the ledger from the
/// checked ticket, not taken as sent: its actor is the origin, it carries
/// no note nor reason, and its time is the sender's (`sent_ms`) only when
/// that lies between the request's own time (`created_ms`) and `now`
/// (give or take the clocks' skew), else `now`.
pub fn created_event(
    id: &str,
    origin: &str,
    sent_ms: Option<i64>,
    created_ms: i64,
    now: i64,
) -> TicketEvent {
    let skew = hotline_proto::validate::MAX_CLOCK_AHEAD_MS;
    let at = sent_ms
        .filter(|ms| *ms >= created_ms.saturating_sub(skew) && *ms <= now.saturating_add(skew))
        .unwrap_or(now);
    let mut e = state::event(id, 1, EventKind::Created, origin, TicketStatus::Pending);
    e.time = Some(hotline_proto::time::from_unix_ms(at));
    e
}

pub fn mergeable(window_hours: u32, created_ms: i64, row: &Row) -> bool {
    window_hours > 0
        && !state::is_terminal(row.status)
        && row.created_ms >= created_ms - i64::from(window_hours) * HOUR_MS
}

/// Whose overdue count a ticket past its deadline is in: the handler's, or
/// the province's while coordination owes it an owner.
pub fn overdue_city<'a>(stage: Option<&str>, handler: &'a str) -> &'a str {
    if stage == Some(ASSIGN) {
        "province"
    } else {
        handler
    }
}

/// Gives a ticket a new deadline and stage (or none), keeping the overdue
/// counts: a ticket counted overdue stops counting; one whose new deadline
/// has already passed counts at once (the sweep only looks ahead of where
/// it has been).
pub fn move_due(
    row: &mut Row,
    due: Option<i64>,
    stage: Option<String>,
    now: i64,
    effects: &mut Vec<Effect>,
) {
    if row.overdue {
        let city = overdue_city(row.stage.as_deref(), &row.handler).to_owned();
        effects.push(Effect::Overdue { city, n: -1 });
    }
    let overdue = due.is_some_and(|d| d <= now);
    if overdue {
        let city = overdue_city(stage.as_deref(), &row.handler).to_owned();
        effects.push(Effect::Overdue { city, n: 1 });
    }
    row.due_ms = due;
    row.stage = stage;
    row.overdue = overdue;
}

/// What the event `kind` (to status `to`, with `satisfaction` when it
/// closes) moves on the ticket `row` at `now`.
pub fn step(
    row: &Row,
    kind: EventKind,
    to: TicketStatus,
    satisfaction: i32,
    now: i64,
    p: &Policy,
) -> Step {
    let mut effects = vec![
        Effect::Status {
            city: row.origin.clone(),
            direction: SENT,
            from: Some(row.status),
            to: Some(to),
        },
        Effect::Status {
            city: row.handler.clone(),
            direction: RECEIVED,
            from: Some(row.status),
            to: Some(to),
        },
    ];
    let count = |effects: &mut Vec<Effect>, city: &str, metric: Metric, detail: &str| {
        effects.push(Effect::Count {
            city: city.to_owned(),
            metric,
            detail: detail.to_owned(),
            n: 1,
        });
    };
    // The deadline of each stage: accept (from the request, or from the
    // hand-over by coordination), resolve, and coordination's own.
    let mut due = (row.due_ms, row.stage.clone());
    let mut resolve_due = row.resolve_due_ms;
    match kind {
        EventKind::Dispatched => {
            count(&mut effects, &row.origin, Metric::Sent, &row.handler);
            if row.urgent && now - row.created_ms > p.urgent_dispatch_ms() {
                count(
                    &mut effects,
                    &row.origin,
                    Metric::DispatchedLate,
                    &row.handler,
                );
            }
            let r = p.resolve_due(row.created_ms, row.urgent, row.kind, &row.category);
            resolve_due = Some(r);
            let a = p.accept_due(row.created_ms, row.urgent, &row.category, r);
            due = (Some(a), Some(ACCEPT.to_owned()));
        }
        EventKind::Assigned => {
            let r = p.resolve_due(now, row.urgent, row.kind, &row.category);
            resolve_due = Some(r);
            let a = p.accept_due(now, row.urgent, &row.category, r);
            due = (Some(a), Some(ACCEPT.to_owned()));
        }
        EventKind::Accepted => {
            count(&mut effects, &row.handler, Metric::Accepted, "");
            effects.push(Effect::Observe {
                city: row.handler.clone(),
                what: Duration::ToAccept,
                ms: (now - row.created_ms).max(0),
            });
            due = (resolve_due, Some(RESOLVE.to_owned()));
        }
        EventKind::Rejected => {
            count(&mut effects, &row.handler, Metric::Rejected, "");
            due = (Some(p.assign_due(now)), Some(ASSIGN.to_owned()));
        }
        EventKind::Resolved => {
            count(&mut effects, &row.handler, Metric::Resolved, "");
            let late = row.resolve_due_ms.is_some_and(|d| now > d);
            let verdict = if late {
                Metric::ResolvedOverdue
            } else {
                Metric::ResolvedOnTime
            };
            count(&mut effects, &row.handler, verdict, "");
            effects.push(Effect::Observe {
                city: row.handler.clone(),
                what: Duration::ToResolve,
                ms: (now - row.created_ms).max(0),
            });
            due = (None, None);
        }
        EventKind::Closed => {
            let verdict = match Satisfaction::try_from(satisfaction) {
                Ok(Satisfaction::Satisfied) => Some(Metric::Satisfied),
                Ok(Satisfaction::BasicallySatisfied) => Some(Metric::BasicallySatisfied),
                Ok(Satisfaction::Unsatisfied) => Some(Metric::Unsatisfied),
                _ => None,
            };
            if let Some(m) = verdict {
                count(&mut effects, &row.handler, m, "");
            }
            due = (None, None);
        }
        EventKind::Reopened => {
            count(&mut effects, &row.handler, Metric::Reopened, "");
            let r = p.resolve_due(now, row.urgent, row.kind, &row.category);
            resolve_due = Some(r);
            due = (Some(r), Some(RESOLVE.to_owned()));
        }
        _ => {}
    }
    let mut next = row.clone();
    if due != (row.due_ms, row.stage.clone()) {
        move_due(&mut next, due.0, due.1, now, &mut effects);
    }
    next.resolve_due_ms = resolve_due;
    // Long unresolved (久拖不决): open in the city's hands, past the
    // resolution deadline by the margin.
    let in_hand = matches!(next.stage.as_deref(), Some(ACCEPT | RESOLVE));
    let late = resolve_due.filter(|_| in_hand).map(|r| p.late(r));
    if late != next.late_ms {
        next.late_ms = late;
        if late.is_some_and(|l| l <= now) {
            effects.push(Effect::LongUnresolved);
        }
    }
    next.status = to;
    Step { row: next, effects }
}

/// Coordination hands the ticket to `owner`: the old handler lets go of
/// it, the owner takes it, its deadlines start again from the hand-over.
pub fn hand_over(row: &Row, owner: &str, now: i64, effects: &mut Vec<Effect>) -> Row {
    effects.push(Effect::Status {
        city: row.handler.clone(),
        direction: RECEIVED,
        from: Some(row.status),
        to: None,
    });
    effects.push(Effect::Status {
        city: owner.to_owned(),
        direction: RECEIVED,
        from: None,
        to: Some(row.status),
    });
    let mut next = row.clone();
    move_due(&mut next, None, None, now, effects);
    next.handler = owner.to_owned();
    next
}

/// Re-handled (重办) the configured number of times and the citizen still
/// unsatisfied: how many times, when the rule fires. `reopened` counts the
/// ticket's REOPENED events, this one included.
pub fn still_unsatisfied(
    kind: EventKind,
    satisfaction: i32,
    reopened: i64,
    rehandled_times: u32,
) -> Option<i64> {
    let rehandled = match kind {
        EventKind::Reopened => reopened - 1,
        EventKind::Closed if satisfaction == Satisfaction::Unsatisfied as i32 => reopened,
        _ => return None,
    };
    (rehandled >= i64::from(rehandled_times)).then_some(rehandled)
}

/// What the report rules know of a new report, read before they decide.
#[derive(Debug, Default, Clone)]
pub struct ReportCounts {
    /// The citizens who reported its matter within the cluster window and
    /// those reports' tickets; `None` when an escalation of the matter is
    /// open already (the report joined it).
    pub matter: Option<(u64, Vec<String>)>,
    /// The citizen's reports within the repeat window; `None` when an
    /// escalation of the citizen is open already.
    pub citizen: Option<Vec<String>>,
    /// Its category is one the rules take up at once.
    pub emergency: bool,
}

/// An escalation a report opens.
#[derive(Debug, Clone, PartialEq)]
pub struct Opens {
    pub rule: EscalationRule,
    /// What it is about: the matter's root, the citizen's key, or (an
    /// emergency) the matter's root.
    pub key: String,
    pub reason: String,
    pub tickets: Vec<String>,
}

/// The escalations a new report of the matter `root` by the citizen
/// `citizen` (ticket `ticket_id`, in `category`) opens, in the order they
/// are opened.
pub fn report_rules(
    rules: &crate::supervision::RuleConfig,
    root: &str,
    citizen: &str,
    ticket_id: &str,
    category: &str,
    counts: ReportCounts,
) -> Vec<Opens> {
    let mut out = Vec::new();
    if let Some((citizens, tickets)) = counts.matter
        && !tickets.is_empty()
        && citizens >= u64::from(rules.cluster_citizens)
    {
        out.push(Opens {
            rule: EscalationRule::ManyReportsOneMatter,
            key: root.to_owned(),
            reason: format!(
                "{citizens} citizens reported one matter within {} h (the rule: {})",
                rules.cluster_window_hours, rules.cluster_citizens
            ),
            tickets,
        });
    }
    if let Some(reports) = counts.citizen
        && !reports.is_empty()
        && reports.len() as u64 >= u64::from(rules.repeat_reports)
    {
        out.push(Opens {
            rule: EscalationRule::OneCitizenManyRequests,
            key: citizen.to_owned(),
            reason: format!(
                "one citizen made {} reports within {} days (the rule: {})",
                reports.len(),
                rules.repeat_window_days,
                rules.repeat_reports
            ),
            tickets: reports,
        });
    }
    if counts.emergency {
        out.push(emergency(root, ticket_id, category));
    }
    out
}

/// The escalation a report in an emergency category opens at once, keyed
/// by `key` (its matter, or the request a part belongs to).
pub fn emergency(key: &str, ticket_id: &str, category: &str) -> Opens {
    Opens {
        rule: EscalationRule::Emergency,
        key: key.to_owned(),
        reason: format!("an emergency category ({category}): taken up at once"),
        tickets: vec![ticket_id.to_owned()],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::supervision::{DeadlineConfig, RuleConfig};
    use crate::windows::{DAY_MS, HOUR_MS};

    /// Deadlines in calendar hours: resolve in 10 h, accept within it.
    fn policy() -> Policy {
        Policy::new(
            DeadlineConfig {
                resolve_hours: Some(10),
                urgent_resolve_hours: Some(2),
                ..Default::default()
            },
            RuleConfig::default(),
            crate::calendar::Calendar::shipped(),
            &Default::default(),
        )
    }

    const T0: i64 = 1_795_624_200_000;

    #[test]
    fn what_a_sender_may_not_set_is_cleared_and_created_is_rebuilt() {
        let mut t = Ticket {
            id: "luzhou-x".into(),
            subject: "社保关系转移".into(),
            part_ids: vec!["luzhou-x-yibin".into()],
            status: TicketStatus::Closed as i32,
            seq: 9,
            handling_city: "zigong".into(),
            reopen_count: 3,
            satisfaction: Satisfaction::Satisfied as i32,
            history: vec![TicketEvent::default()],
            ..Default::default()
        };
        clear_output_only(&mut t);
        let expected = Ticket {
            id: "luzhou-x".into(),
            subject: "社保关系转移".into(),
            ..Default::default()
        };
        assert_eq!(t, expected);

        let now = 1_796_000_000_000;
        let made = now - HOUR_MS;
        let e = created_event("luzhou-x", "luzhou", Some(made + 1), made, now);
        assert_eq!(
            (e.seq, e.kind, e.actor.as_str(), e.status),
            (
                1,
                EventKind::Created as i32,
                "luzhou",
                TicketStatus::Pending as i32
            )
        );
        assert!(e.note.is_empty() && e.reason.is_empty());
        let at = |e: &TicketEvent| e.time.as_ref().map(hotline_proto::time::to_unix_ms);
        assert_eq!(at(&e), Some(made + 1));
        // A time before the request, after now, or none: now.
        for sent in [Some(made - DAY_MS), Some(now + DAY_MS), None] {
            let e = created_event("luzhou-x", "luzhou", sent, made, now);
            assert_eq!(at(&e), Some(now), "{sent:?}");
        }
    }

    fn row(status: TicketStatus, seq: u64) -> Row {
        Row {
            origin: "luzhou".into(),
            handler: "yibin".into(),
            category: "education".into(),
            urgent: false,
            kind: 0,
            status,
            seq,
            created_ms: T0,
            due_ms: None,
            stage: None,
            overdue: false,
            resolve_due_ms: None,
            late_ms: None,
        }
    }

    fn counts(s: &Step) -> Vec<(String, Metric)> {
        s.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Count { city, metric, .. } => Some((city.clone(), *metric)),
                _ => None,
            })
            .collect()
    }

    fn overdue(s: &Step) -> Vec<(String, i64)> {
        s.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Overdue { city, n } => Some((city.clone(), *n)),
                _ => None,
            })
            .collect()
    }

    fn facts() -> ReportFacts {
        ReportFacts::default()
    }

    #[test]
    fn each_event_is_made_by_its_party_alone() {
        let r = row(TicketStatus::Delivered, 3);
        let id = "luzhou-x";
        let ok = check_report(id, &r, "yibin", EventKind::Accepted, 4, &facts()).unwrap();
        assert_eq!(
            ok,
            Verdict::Apply {
                proves: false,
                to: TicketStatus::Accepted
            }
        );
        // The origin cannot accept; a third city cannot act at all.
        for city in ["luzhou", "zigong"] {
            let e = check_report(id, &r, city, EventKind::Accepted, 4, &facts()).unwrap_err();
            assert!(matches!(e, GatewayError::PermissionDenied(_)), "{e}");
        }
        let r = row(TicketStatus::Resolved, 5);
        assert!(check_report(id, &r, "luzhou", EventKind::Closed, 6, &facts()).is_ok());
        let e = check_report(id, &r, "yibin", EventKind::Closed, 6, &facts()).unwrap_err();
        assert!(matches!(e, GatewayError::PermissionDenied(_)));
        // Nobody reports the gateway's or the province's events.
        let r = row(TicketStatus::InCoordination, 4);
        for city in ["luzhou", "yibin"] {
            assert!(check_report(id, &r, city, EventKind::Assigned, 5, &facts()).is_err());
        }
    }

    #[test]
    fn a_handlers_event_two_past_dispatch_proves_the_delivery() {
        let r = row(TicketStatus::Dispatched, 2);
        let v = check_report("t", &r, "yibin", EventKind::Accepted, 4, &facts()).unwrap();
        assert_eq!(
            v,
            Verdict::Apply {
                proves: true,
                to: TicketStatus::Accepted
            }
        );
        // Not the origin's, and not three past.
        assert!(check_report("t", &r, "luzhou", EventKind::Closed, 4, &facts()).is_err());
        let e = check_report("t", &r, "yibin", EventKind::Accepted, 5, &facts()).unwrap_err();
        assert!(
            matches!(
                e,
                GatewayError::SequenceGap {
                    have: 2,
                    got: 5,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_gap_an_illegal_move_and_a_retry_are_told_apart() {
        let r = row(TicketStatus::Delivered, 3);
        let e = check_report("t", &r, "yibin", EventKind::Accepted, 5, &facts()).unwrap_err();
        assert!(matches!(
            e,
            GatewayError::SequenceGap {
                have: 3,
                got: 5,
                ..
            }
        ));
        let e = check_report("t", &r, "yibin", EventKind::Resolved, 4, &facts()).unwrap_err();
        assert!(matches!(e, GatewayError::Contract(_)), "{e}");
        // At or below the ticket's seq: a retry, whoever sends it now (the
        // ledger compares it with the stored event).
        assert_eq!(
            check_report("t", &r, "yibin", EventKind::Accepted, 3, &facts()).unwrap(),
            Verdict::Retry
        );
    }

    #[test]
    fn transfer_once_the_owner_coordination_named_cannot_reject() {
        let r = row(TicketStatus::Delivered, 6);
        let named = ReportFacts {
            assigned_to: Some("yibin".into()),
        };
        let e = check_report("t", &r, "yibin", EventKind::Rejected, 7, &named).unwrap_err();
        assert!(matches!(e, GatewayError::FailedPrecondition(_)), "{e}");
        // The first target may, and it goes to coordination.
        let v = check_report("t", &r, "yibin", EventKind::Rejected, 7, &facts()).unwrap();
        assert_eq!(
            v,
            Verdict::Apply {
                proves: false,
                to: TicketStatus::InCoordination
            }
        );
    }

    /// The ledger's choice among matches, best first.
    fn merge_target<'a>(
        window_hours: u32,
        created_ms: i64,
        candidates: impl IntoIterator<Item = &'a Row>,
    ) -> Option<usize> {
        candidates
            .into_iter()
            .position(|r| mergeable(window_hours, created_ms, r))
    }

    #[test]
    fn a_report_merges_into_the_first_open_match_within_the_window() {
        let closed = row(TicketStatus::Closed, 9);
        let merged = row(TicketStatus::Merged, 2);
        let open = row(TicketStatus::Accepted, 4);
        let mut old = row(TicketStatus::Delivered, 3);
        old.created_ms = T0 - 73 * HOUR_MS;
        let now = T0 + HOUR_MS;
        // The best match closed, the next open: the open one.
        assert_eq!(merge_target(72, now, [&closed, &open]), Some(1));
        assert_eq!(merge_target(72, now, [&merged, &closed, &open]), Some(2));
        // Open but made before the window: none, nor with merging off.
        assert_eq!(merge_target(72, now, [&closed, &old]), None);
        assert_eq!(merge_target(72, T0 - 72 * HOUR_MS, [&old]), Some(0));
        assert_eq!(merge_target(0, now, [&open]), None);
        assert_eq!(merge_target(72, now, []), None);
    }

    #[test]
    fn dispatch_sets_the_accept_deadline_and_counts_sent() {
        let p = policy();
        let s = step(
            &row(TicketStatus::Pending, 1),
            EventKind::Dispatched,
            TicketStatus::Dispatched,
            0,
            T0 + 1_000,
            &p,
        );
        assert_eq!(counts(&s), vec![("luzhou".into(), Metric::Sent)]);
        assert_eq!(s.row.stage.as_deref(), Some(ACCEPT));
        assert_eq!(s.row.resolve_due_ms, Some(T0 + 10 * HOUR_MS));
        assert!(s.row.due_ms.unwrap() <= T0 + 10 * HOUR_MS);
        assert!(overdue(&s).is_empty());
        assert_eq!(s.row.status, TicketStatus::Dispatched);
    }

    #[test]
    fn an_urgent_ticket_dispatched_late_is_counted() {
        let p = policy();
        let mut r = row(TicketStatus::Pending, 1);
        r.urgent = true;
        let on_time = step(
            &r,
            EventKind::Dispatched,
            TicketStatus::Dispatched,
            0,
            T0 + 60_000,
            &p,
        );
        assert!(
            !counts(&on_time)
                .iter()
                .any(|(_, m)| *m == Metric::DispatchedLate)
        );
        let late = step(
            &r,
            EventKind::Dispatched,
            TicketStatus::Dispatched,
            0,
            T0 + 16 * 60_000,
            &p,
        );
        assert!(
            counts(&late)
                .iter()
                .any(|(_, m)| *m == Metric::DispatchedLate)
        );
    }

    #[test]
    fn a_ticket_dispatched_past_its_deadline_is_overdue_at_once_and_accepting_moves_it_on() {
        let p = policy();
        let mut r = row(TicketStatus::Pending, 1);
        r.created_ms = T0 - 11 * HOUR_MS;
        let s = step(
            &r,
            EventKind::Dispatched,
            TicketStatus::Dispatched,
            0,
            T0,
            &p,
        );
        assert_eq!(overdue(&s), vec![("yibin".into(), 1)]);
        assert!(s.row.overdue);
        // Accepting moves it to the resolve stage, still past: out of the
        // count and in again, and long unresolved is not yet reached.
        let mut d = s.row.clone();
        d.status = TicketStatus::Delivered;
        let a = step(&d, EventKind::Accepted, TicketStatus::Accepted, 0, T0, &p);
        assert_eq!(a.row.stage.as_deref(), Some(RESOLVE));
        // Same deadline, same stage → no move? The stage changed.
        assert_eq!(overdue(&a), vec![("yibin".into(), -1), ("yibin".into(), 1)]);
        assert!(!a.effects.contains(&Effect::LongUnresolved));
    }

    #[test]
    fn resolving_on_time_and_late_are_counted_apart_and_end_the_deadline() {
        let p = policy();
        let mut r = row(TicketStatus::Accepted, 4);
        r.resolve_due_ms = Some(T0 + 10 * HOUR_MS);
        r.due_ms = r.resolve_due_ms;
        r.stage = Some(RESOLVE.into());
        let early = step(
            &r,
            EventKind::Resolved,
            TicketStatus::Resolved,
            0,
            T0 + HOUR_MS,
            &p,
        );
        assert!(counts(&early).contains(&("yibin".into(), Metric::ResolvedOnTime)));
        assert_eq!(early.row.due_ms, None);
        assert_eq!(early.row.stage, None);
        r.overdue = true;
        let late = step(
            &r,
            EventKind::Resolved,
            TicketStatus::Resolved,
            0,
            T0 + 11 * HOUR_MS,
            &p,
        );
        assert!(counts(&late).contains(&("yibin".into(), Metric::ResolvedOverdue)));
        // Out of the overdue count.
        assert_eq!(overdue(&late), vec![("yibin".into(), -1)]);
        assert!(late.effects.iter().any(|e| matches!(
            e,
            Effect::Observe {
                what: Duration::ToResolve,
                ..
            }
        )));
    }

    #[test]
    fn a_rejected_ticket_is_the_provinces_overdue_while_it_waits_for_an_owner() {
        let p = policy();
        let mut r = row(TicketStatus::Delivered, 3);
        r.due_ms = Some(T0 - 1);
        r.stage = Some(ACCEPT.into());
        r.overdue = true;
        let s = step(
            &r,
            EventKind::Rejected,
            TicketStatus::InCoordination,
            0,
            T0,
            &p,
        );
        assert_eq!(s.row.stage.as_deref(), Some(ASSIGN));
        // Out of Yibin's count; the assign deadline is days away.
        assert_eq!(overdue(&s), vec![("yibin".into(), -1)]);
        let mut past = s.row.clone();
        past.due_ms = Some(T0 - 1);
        past.overdue = false;
        let mut fx = Vec::new();
        move_due(&mut past, Some(T0 - 1), Some(ASSIGN.into()), T0, &mut fx);
        assert_eq!(
            fx,
            vec![Effect::Overdue {
                city: "province".into(),
                n: 1
            }]
        );
        // Handed over: out of the province's count, into the owner's
        // statuses, deadlines anew.
        let mut fx = Vec::new();
        let owned = hand_over(&past, "zigong", T0, &mut fx);
        assert_eq!(owned.handler, "zigong");
        assert!(fx.contains(&Effect::Overdue {
            city: "province".into(),
            n: -1
        }));
        let a = step(
            &owned,
            EventKind::Assigned,
            TicketStatus::Dispatched,
            0,
            T0,
            &p,
        );
        assert_eq!(a.row.stage.as_deref(), Some(ACCEPT));
        assert_eq!(a.row.resolve_due_ms, Some(T0 + 10 * HOUR_MS));
    }

    #[test]
    fn deadlines_in_seconds_come_before_hours_and_acceptance_is_due_by_them() {
        let p = Policy::new(
            DeadlineConfig {
                resolve_hours: Some(10),
                resolve_seconds: Some(45),
                urgent_resolve_seconds: Some(20),
                ..Default::default()
            },
            RuleConfig::default(),
            crate::calendar::Calendar::shipped(),
            &Default::default(),
        );
        let complaint = hotline_proto::pb::TicketKind::Complaint as i32;
        let due = |p: &Policy, urgent| p.resolve_due(T0, urgent, complaint, "education");
        let normal = due(&p, false);
        assert_eq!(normal, T0 + 45_000);
        assert_eq!(p.accept_due(T0, false, "education", normal), normal);
        let urgent = due(&p, true);
        assert_eq!(urgent, T0 + 20_000);
        assert_eq!(p.accept_due(T0, true, "education", urgent), urgent);
        // Without seconds, the hours.
        assert_eq!(due(&policy(), false), T0 + 10 * HOUR_MS);
    }

    #[test]
    fn long_unresolved_fires_once_the_margin_past_the_deadline_has_passed() {
        let p = Policy::new(
            DeadlineConfig {
                resolve_hours: Some(10),
                ..Default::default()
            },
            RuleConfig {
                long_unresolved_working_days: 0,
                ..Default::default()
            },
            crate::calendar::Calendar::shipped(),
            &Default::default(),
        );
        let mut r = row(TicketStatus::Delivered, 3);
        r.resolve_due_ms = Some(T0 - 30 * DAY_MS);
        r.due_ms = r.resolve_due_ms;
        r.stage = Some(ACCEPT.into());
        r.late_ms = None;
        let s = step(&r, EventKind::Accepted, TicketStatus::Accepted, 0, T0, &p);
        assert!(s.effects.contains(&Effect::LongUnresolved));
        assert!(s.row.late_ms.is_some_and(|l| l <= T0));
        // Not yet past: the time is kept for the sweep, no escalation now.
        r.resolve_due_ms = Some(T0 + 30 * DAY_MS);
        let s = step(&r, EventKind::Accepted, TicketStatus::Accepted, 0, T0, &p);
        assert!(!s.effects.contains(&Effect::LongUnresolved));
        assert!(s.row.late_ms.is_some_and(|l| l > T0));
    }

    #[test]
    fn closing_counts_the_citizens_verdict_and_reopening_restarts_resolution() {
        let p = policy();
        let r = row(TicketStatus::Resolved, 5);
        let s = step(
            &r,
            EventKind::Closed,
            TicketStatus::Closed,
            Satisfaction::Unsatisfied as i32,
            T0,
            &p,
        );
        assert!(counts(&s).contains(&("yibin".into(), Metric::Unsatisfied)));
        let s = step(
            &r,
            EventKind::Reopened,
            TicketStatus::Reopened,
            0,
            T0 + HOUR_MS,
            &p,
        );
        assert!(counts(&s).contains(&("yibin".into(), Metric::Reopened)));
        assert_eq!(s.row.resolve_due_ms, Some(T0 + 11 * HOUR_MS));
        assert_eq!(s.row.stage.as_deref(), Some(RESOLVE));
    }

    #[test]
    fn still_unsatisfied_fires_at_its_threshold_and_not_one_below() {
        let unsatisfied = Satisfaction::Unsatisfied as i32;
        let satisfied = Satisfaction::Satisfied as i32;
        // Threshold 2: the third reopening is the second re-handling after
        // the first.
        assert_eq!(still_unsatisfied(EventKind::Reopened, 0, 3, 2), Some(2));
        assert_eq!(still_unsatisfied(EventKind::Reopened, 0, 2, 2), None);
        assert_eq!(
            still_unsatisfied(EventKind::Closed, unsatisfied, 2, 2),
            Some(2)
        );
        assert_eq!(
            still_unsatisfied(EventKind::Closed, unsatisfied, 1, 2),
            None
        );
        assert_eq!(still_unsatisfied(EventKind::Closed, satisfied, 5, 2), None);
        assert_eq!(still_unsatisfied(EventKind::Accepted, 0, 5, 2), None);
    }

    #[test]
    fn every_move_keeps_both_cities_status_counts() {
        let p = policy();
        let s = step(
            &row(TicketStatus::Delivered, 3),
            EventKind::Accepted,
            TicketStatus::Accepted,
            0,
            T0,
            &p,
        );
        let statuses: Vec<_> = s
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::Status { .. }))
            .collect();
        assert_eq!(statuses.len(), 2);
        assert!(s.effects.contains(&Effect::Status {
            city: "luzhou".into(),
            direction: SENT,
            from: Some(TicketStatus::Delivered),
            to: Some(TicketStatus::Accepted),
        }));
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i}")).collect()
    }

    fn opened(counts: ReportCounts) -> Vec<EscalationRule> {
        let rules = RuleConfig {
            cluster_citizens: 5,
            repeat_reports: 3,
            ..RuleConfig::default()
        };
        report_rules(&rules, "root", "citizen", "t9", "water", counts)
            .into_iter()
            .map(|o| o.rule)
            .collect()
    }

    #[test]
    fn many_citizens_one_matter_opens_at_its_threshold_and_not_one_below() {
        let at = ReportCounts {
            matter: Some((5, ids(6))),
            ..Default::default()
        };
        assert_eq!(opened(at), vec![EscalationRule::ManyReportsOneMatter]);
        let below = ReportCounts {
            matter: Some((4, ids(6))),
            ..Default::default()
        };
        assert!(opened(below).is_empty());
        // An escalation of the matter is open: the report joined it.
        assert!(opened(ReportCounts::default()).is_empty());
        let rules = RuleConfig::default();
        let o = report_rules(
            &rules,
            "root",
            "c",
            "t9",
            "water",
            ReportCounts {
                matter: Some((5, ids(5))),
                ..Default::default()
            },
        );
        assert_eq!(o[0].key, "root");
        assert_eq!(o[0].tickets, ids(5));
        assert!(o[0].reason.contains("5 citizens"), "{}", o[0].reason);
    }

    #[test]
    fn one_citizen_many_requests_opens_at_its_threshold_and_not_one_below() {
        let at = ReportCounts {
            citizen: Some(ids(3)),
            ..Default::default()
        };
        assert_eq!(opened(at), vec![EscalationRule::OneCitizenManyRequests]);
        let below = ReportCounts {
            citizen: Some(ids(2)),
            ..Default::default()
        };
        assert!(opened(below).is_empty());
    }

    #[test]
    fn an_emergency_opens_at_once_after_the_others() {
        let all = ReportCounts {
            matter: Some((9, ids(9))),
            citizen: Some(ids(4)),
            emergency: true,
        };
        assert_eq!(
            opened(all),
            vec![
                EscalationRule::ManyReportsOneMatter,
                EscalationRule::OneCitizenManyRequests,
                EscalationRule::Emergency
            ]
        );
        let e = emergency("parent", "t9", "public-safety");
        assert_eq!(
            (e.key.as_str(), e.tickets),
            ("parent", vec!["t9".to_owned()])
        );
        assert!(e.reason.contains("public-safety"));
    }
}
