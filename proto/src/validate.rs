//! Checks a ticket before anyone stores it. Errors name the field as the
//! caller wrote it (`ticket.category`), so the gRPC status can say exactly
//! what is wrong.

use crate::catalogue::Catalogue;
use crate::error::ContractError;
use crate::ids::TicketId;
use crate::pb::{Channel, EventKind, Priority, Satisfaction, Ticket, TicketEvent, TicketKind};

/// Longest texts, in characters.
pub const MAX_SUBJECT: usize = 200;
pub const MAX_DESCRIPTION: usize = 4000;
pub const MAX_LOCATION: usize = 200;
pub const MAX_NAME: usize = 64;
pub const MAX_PHONE: usize = 32;
pub const MAX_REASON: usize = 1000;
pub const MAX_NOTE: usize = 1000;
pub const MAX_REQUEST_ID: usize = 128;
/// Most cities one parallel ticket may involve.
pub const MAX_TARGETS: usize = 32;
/// Longest operator ids, transfer references and other short words.
pub const MAX_WORD: usize = 128;
/// How far ahead of the receiver's clock a sender's time may be (clocks
/// differ a little).
pub const MAX_CLOCK_AHEAD_MS: i64 = 5 * 60_000;
/// How long ago a request may have been made by default: a letter
/// registered a while after it came, not a ticket dated 1970, whose
/// deadlines would all have passed the moment it arrived.
pub const DEFAULT_MAX_AGE_DAYS: u32 = 366;

type Result<T = ()> = std::result::Result<T, ContractError>;

fn invalid(field: &str, reason: impl Into<String>) -> ContractError {
    ContractError::invalid(field, reason)
}

/// A value as an error message may show it: quoted, and cut to 64
/// characters, so that no input makes the answer (or a log line) large.
fn shown(value: &str) -> String {
    if value.chars().count() <= 64 {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(64).collect();
        format!("{head:?}… ({} characters)", value.chars().count())
    }
}

/// A text field: at most `max` characters, no control characters but tab
/// and line breaks, and not blank if required.
pub fn text(field: &str, value: &str, max: usize, required: bool) -> Result {
    if required && value.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    let n = value.chars().count();
    if n > max {
        return Err(invalid(field, format!("is {n} characters; at most {max}")));
    }
    if value.contains('\0') {
        return Err(invalid(field, "contains a NUL character"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(invalid(
            field,
            format!(
                "contains the control character U+{:04X}; only tab and line breaks are allowed",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

/// A time a sender says something happened (a request's `create_time`):
/// a real time, not ahead of `now_ms` by more than [`MAX_CLOCK_AHEAD_MS`]
/// and not more than `max_age_days` before it. Returns it in milliseconds.
pub fn past_time(
    field: &str,
    t: &prost_types::Timestamp,
    now_ms: i64,
    max_age_days: u32,
) -> Result<i64> {
    let ms =
        crate::time::checked_unix_ms(t).ok_or_else(|| invalid(field, "is not a valid time"))?;
    if ms > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS) {
        return Err(invalid(
            field,
            "is in the future (more than 5 minutes ahead of this server's clock)",
        ));
    }
    let oldest = now_ms.saturating_sub(i64::from(max_age_days) * 86_400_000);
    if ms < oldest {
        return Err(invalid(
            field,
            format!("is more than {max_age_days} days ago"),
        ));
    }
    Ok(ms)
}

pub fn city(field: &str, id: &str, catalogue: &Catalogue) -> Result {
    if id.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if catalogue.city(id).is_none() {
        return Err(invalid(field, format!("unknown city {}", shown(id))));
    }
    Ok(())
}

pub fn category(field: &str, id: &str, catalogue: &Catalogue) -> Result {
    if id.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if catalogue.category(id).is_none() {
        return Err(invalid(field, format!("unknown category {}", shown(id))));
    }
    Ok(())
}

pub fn ticket_id(field: &str, id: &str) -> Result<TicketId> {
    if id.is_empty() {
        return Err(invalid(field, "is required"));
    }
    id.parse()
        .map_err(|e: crate::ids::BadTicketId| invalid(field, e.to_string()))
}

fn known_enum<E: TryFrom<i32>>(field: &str, value: i32, required: bool) -> Result {
    if E::try_from(value).is_err() {
        return Err(invalid(field, format!("unknown value {value}")));
    }
    if required && value == 0 {
        return Err(invalid(field, "is required"));
    }
    Ok(())
}

pub fn satisfaction(field: &str, value: i32) -> Result {
    known_enum::<Satisfaction>(field, value, true)
}

/// The parts of a ticket both ends check: category, kind, channel, priority,
/// contact and texts.
fn content(ticket: &Ticket, catalogue: &Catalogue) -> Result {
    category("ticket.category", &ticket.category, catalogue)?;
    known_enum::<TicketKind>("ticket.kind", ticket.kind, true)?;
    known_enum::<Channel>("ticket.channel", ticket.channel, false)?;
    known_enum::<Priority>("ticket.priority", ticket.priority, false)?;
    if let Some(c) = &ticket.citizen {
        text("ticket.citizen.name", &c.name, MAX_NAME, false)?;
        text("ticket.citizen.phone", &c.phone, MAX_PHONE, false)?;
        if !c
            .phone
            .chars()
            .all(|ch| ch.is_ascii_digit() || matches!(ch, '+' | '-' | ' '))
        {
            return Err(invalid(
                "ticket.citizen.phone",
                "may hold only digits, '+', '-' and spaces",
            ));
        }
    }
    text("ticket.subject", &ticket.subject, MAX_SUBJECT, true)?;
    text(
        "ticket.description",
        &ticket.description,
        MAX_DESCRIPTION,
        false,
    )?;
    text("ticket.location", &ticket.location, MAX_LOCATION, false)?;
    text(
        "ticket.request_id",
        &ticket.request_id,
        MAX_REQUEST_ID,
        false,
    )?;
    Ok(())
}

/// A ticket a city's own systems ask its node (`origin`) to create.
pub fn new_ticket(ticket: &Ticket, origin: &str, catalogue: &Catalogue) -> Result {
    if !ticket.origin_city.is_empty() && ticket.origin_city != origin {
        return Err(invalid(
            "ticket.origin_city",
            format!("this node is {origin:?}; it creates only its own city's tickets"),
        ));
    }
    if ticket.target_cities.is_empty() {
        return Err(invalid("ticket.target_cities", "is required"));
    }
    if ticket.target_cities.len() > MAX_TARGETS {
        return Err(invalid(
            "ticket.target_cities",
            format!("at most {MAX_TARGETS} cities"),
        ));
    }
    if let Some(t) = &ticket.create_time {
        // The time the citizen made the request, when the platform recorded
        // it earlier (a letter, a message board): deadlines count from it.
        past_time(
            "ticket.create_time",
            t,
            crate::time::now_ms(),
            DEFAULT_MAX_AGE_DAYS,
        )?;
    }
    for (i, target) in ticket.target_cities.iter().enumerate() {
        city(&format!("ticket.target_cities[{i}]"), target, catalogue)?;
        if ticket.target_cities[..i].contains(target) {
            return Err(invalid(
                &format!("ticket.target_cities[{i}]"),
                format!("{} is listed twice", shown(target)),
            ));
        }
    }
    content(ticket, catalogue)
}

/// A ticket (or a part) a node dispatches to the gateway, which receives it
/// at `now_ms` and takes requests made up to `max_age_days` before.
pub fn dispatched_ticket(
    ticket: &Ticket,
    catalogue: &Catalogue,
    now_ms: i64,
    max_age_days: u32,
) -> Result<TicketId> {
    let id = ticket_id("ticket.id", &ticket.id)?;
    if let Some(t) = &ticket.create_time {
        past_time("ticket.create_time", t, now_ms, max_age_days)?;
    }
    city("ticket.origin_city", &ticket.origin_city, catalogue)?;
    if id.origin() != ticket.origin_city {
        return Err(invalid(
            "ticket.id",
            "does not start with the ticket's origin city",
        ));
    }
    let [target] = ticket.target_cities.as_slice() else {
        return Err(invalid(
            "ticket.target_cities",
            "a dispatched ticket names exactly one target city",
        ));
    };
    city("ticket.target_cities[0]", target, catalogue)?;
    if *target == ticket.origin_city {
        return Err(invalid(
            "ticket.target_cities[0]",
            "is the origin itself; a city handles its own tickets locally",
        ));
    }
    match (id.part_target(), id.parent()) {
        (Some(part_target), Some(parent)) => {
            if part_target != target {
                return Err(invalid(
                    "ticket.id",
                    "a part's id must end with its target city",
                ));
            }
            if ticket.parent_id != parent.to_string() {
                return Err(invalid("ticket.parent_id", "does not match the part's id"));
            }
        }
        _ if !ticket.parent_id.is_empty() => {
            return Err(invalid(
                "ticket.parent_id",
                "is set on a ticket that is not a part",
            ));
        }
        _ => {}
    }
    content(ticket, catalogue)?;
    Ok(id)
}

/// An event a city reports: the fields every event needs.
pub fn reported_event(event: &TicketEvent) -> Result<TicketId> {
    let id = ticket_id("event.ticket_id", &event.ticket_id)?;
    if event.seq < 2 {
        return Err(invalid("event.seq", "must be at least 2"));
    }
    let kind = EventKind::try_from(event.kind)
        .map_err(|_| invalid("event.kind", format!("unknown value {}", event.kind)))?;
    match kind {
        EventKind::Rejected | EventKind::Reopened => {
            text("event.reason", &event.reason, MAX_REASON, true)?
        }
        EventKind::Closed => satisfaction("event.satisfaction", event.satisfaction)?,
        EventKind::Accepted | EventKind::Resolved => {}
        _ => {
            return Err(invalid(
                "event.kind",
                format!("{} is not reported by a city", kind.as_str_name()),
            ));
        }
    }
    text("event.note", &event.note, MAX_NOTE, false)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::Citizen;

    fn good() -> Ticket {
        Ticket {
            target_cities: vec!["yibin".into()],
            category: "housing-fund".into(),
            kind: TicketKind::Consultation as i32,
            subject: "公积金异地转移".into(),
            citizen: Some(Citizen {
                name: "李四".into(),
                phone: "13800000000".into(),
            }),
            ..Default::default()
        }
    }

    fn field_of(e: ContractError) -> String {
        match e {
            ContractError::InvalidArgument { field, .. } => field,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_good_ticket_passes() {
        new_ticket(&good(), "luzhou", &Catalogue::default()).unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        let c = Catalogue::default();
        type Mutation = Box<dyn Fn(&mut Ticket)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "ticket.target_cities",
                Box::new(|t| t.target_cities.clear()),
            ),
            (
                "ticket.target_cities[0]",
                Box::new(|t| t.target_cities[0] = "chengdu".into()),
            ),
            (
                "ticket.target_cities[1]",
                Box::new(|t| t.target_cities.push("yibin".into())),
            ),
            (
                "ticket.category",
                Box::new(|t| t.category = "weather".into()),
            ),
            ("ticket.category", Box::new(|t| t.category.clear())),
            ("ticket.kind", Box::new(|t| t.kind = 0)),
            ("ticket.kind", Box::new(|t| t.kind = 99)),
            ("ticket.priority", Box::new(|t| t.priority = -1)),
            ("ticket.subject", Box::new(|t| t.subject = "  ".into())),
            (
                "ticket.subject",
                Box::new(|t| t.subject = "长".repeat(MAX_SUBJECT + 1)),
            ),
            (
                "ticket.description",
                Box::new(|t| t.description = "x".repeat(MAX_DESCRIPTION + 1)),
            ),
            (
                "ticket.citizen.phone",
                Box::new(|t| t.citizen.as_mut().unwrap().phone = "call me".into()),
            ),
            (
                "ticket.origin_city",
                Box::new(|t| t.origin_city = "yibin".into()),
            ),
        ];
        for (field, mutate) in cases {
            let mut t = good();
            mutate(&mut t);
            assert_eq!(field_of(new_ticket(&t, "luzhou", &c).unwrap_err()), field);
        }
    }

    #[test]
    fn a_dispatched_ticket_must_be_consistent() {
        let c = Catalogue::default();
        let id = TicketId::new("luzhou");
        let mut t = good();
        t.id = id.to_string();
        t.origin_city = "luzhou".into();
        dispatched_ticket(&t, &c, now(), DEFAULT_MAX_AGE_DAYS).unwrap();

        let mut other = t.clone();
        other.origin_city = "zigong".into();
        assert_eq!(
            field_of(dispatched_ticket(&other, &c, now(), DEFAULT_MAX_AGE_DAYS).unwrap_err()),
            "ticket.id"
        );

        let mut to_self = t.clone();
        to_self.target_cities = vec!["luzhou".into()];
        assert_eq!(
            field_of(dispatched_ticket(&to_self, &c, now(), DEFAULT_MAX_AGE_DAYS).unwrap_err()),
            "ticket.target_cities[0]"
        );

        let mut part = t.clone();
        part.id = id.part("yibin").to_string();
        assert_eq!(
            field_of(dispatched_ticket(&part, &c, now(), DEFAULT_MAX_AGE_DAYS).unwrap_err()),
            "ticket.parent_id"
        );
        part.parent_id = id.to_string();
        dispatched_ticket(&part, &c, now(), DEFAULT_MAX_AGE_DAYS).unwrap();
    }

    fn now() -> i64 {
        crate::time::now_ms()
    }

    #[test]
    fn a_request_time_is_refused_ahead_of_the_clock_too_old_or_out_of_range() {
        let c = Catalogue::default();
        let now = 1_796_000_000_000;
        let day = 86_400_000;
        let mut t = good();
        t.id = TicketId::new("luzhou").to_string();
        t.origin_city = "luzhou".into();
        let at = |ms: i64| Some(crate::time::from_unix_ms(ms));
        let check = |t: &Ticket| dispatched_ticket(t, &c, now, 30);
        for ok in [now, now - 30 * day, now + MAX_CLOCK_AHEAD_MS] {
            t.create_time = at(ok);
            check(&t).unwrap();
        }
        for bad in [now - 30 * day - 1, now + MAX_CLOCK_AHEAD_MS + 1, 0] {
            t.create_time = at(bad);
            assert_eq!(field_of(check(&t).unwrap_err()), "ticket.create_time");
        }
        // 2^62 seconds: milliseconds would wrap.
        t.create_time = Some(prost_types::Timestamp {
            seconds: 1 << 62,
            nanos: 0,
        });
        let e = check(&t).unwrap_err();
        assert!(e.to_string().contains("not a valid time"), "{e}");
    }

    #[test]
    fn control_characters_are_refused_but_tab_and_line_breaks_pass() {
        text(
            "ticket.description",
            "第一行\n第二行\t（附件）\r\n",
            100,
            true,
        )
        .unwrap();
        for bad in ["a\u{1b}[31mred", "bell\u{7}", "del\u{7f}", "c1\u{85}"] {
            let e = text("ticket.subject", bad, 100, true).unwrap_err();
            let message = e.to_string();
            assert!(message.contains("control character"), "{message}");
            assert_eq!(field_of(e), "ticket.subject");
        }
    }
}
