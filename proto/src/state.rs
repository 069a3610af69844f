//! The ticket state machine: the one place that knows which event may follow
//! which status and who may make it. Every hop (origin node, gateway, handling
//! node) checks each event here before it stores it.
//!
//! ```text
//! PENDING ─DISPATCHED▶ DISPATCHED ─DELIVERED▶ DELIVERED ─ACCEPTED▶ ACCEPTED ─RESOLVED▶ RESOLVED ─CLOSED▶ CLOSED
//!                          ▲                      │                              ▲        │
//!                      ASSIGNED                REJECTED                       RESOLVED  REOPENED
//!                          │                      ▼                              │        ▼
//!                          └──────────────── IN_COORDINATION                     └── REOPENED
//! ```
//!
//! A local ticket (for the origin's own city) starts at DELIVERED.

use crate::error::ContractError;
use crate::pb::{EventKind, TicketEvent, TicketStatus};

/// Who may make an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The city whose hotline took the request.
    Origin,
    /// The city that handles it now (the target, or the owner coordination
    /// named).
    Handler,
    /// The gateway, as it commits and delivers.
    Gateway,
    /// The provincial centre, through the Observatory.
    Province,
}

impl Actor {
    pub fn name(self) -> &'static str {
        match self {
            Actor::Origin => "origin",
            Actor::Handler => "handling city",
            Actor::Gateway => "gateway",
            Actor::Province => "province",
        }
    }
}

/// The party that makes events of this kind.
pub fn actor_of(kind: EventKind) -> Actor {
    match kind {
        EventKind::Created | EventKind::Closed | EventKind::Reopened => Actor::Origin,
        EventKind::Accepted | EventKind::Rejected | EventKind::Resolved => Actor::Handler,
        EventKind::Dispatched
        | EventKind::Delivered
        | EventKind::Merged
        | EventKind::Unspecified => Actor::Gateway,
        EventKind::Assigned => Actor::Province,
    }
}

/// The status a new ticket starts in.
pub fn initial_status(local: bool) -> TicketStatus {
    if local {
        TicketStatus::Delivered
    } else {
        TicketStatus::Pending
    }
}

/// The status after `kind` happens in `from`, or why it may not.
pub fn next(from: TicketStatus, kind: EventKind) -> Result<TicketStatus, ContractError> {
    use EventKind as E;
    use TicketStatus as S;
    let to = match (from, kind) {
        (S::Pending, E::Dispatched) => S::Dispatched,
        (S::Dispatched, E::Delivered) => S::Delivered,
        (S::Delivered, E::Accepted) => S::Accepted,
        (S::Delivered, E::Rejected) => S::InCoordination,
        (S::InCoordination, E::Assigned) => S::Dispatched,
        (S::Accepted | S::Reopened, E::Resolved) => S::Resolved,
        (S::Resolved, E::Closed) => S::Closed,
        (S::Resolved, E::Reopened) => S::Reopened,
        (S::Pending, E::Merged) => S::Merged,
        _ => return Err(ContractError::IllegalTransition { from, event: kind }),
    };
    Ok(to)
}

/// A new event, stamped now.
pub fn event(
    ticket_id: &str,
    seq: u64,
    kind: EventKind,
    actor: &str,
    status: TicketStatus,
) -> TicketEvent {
    TicketEvent {
        ticket_id: ticket_id.to_owned(),
        seq,
        kind: kind as i32,
        actor: actor.to_owned(),
        time: Some(crate::time::now()),
        status: status as i32,
        ..Default::default()
    }
}

/// Whether a ticket in this status will see no more events.
pub fn is_terminal(status: TicketStatus) -> bool {
    matches!(status, TicketStatus::Closed | TicketStatus::Merged)
}

/// How far along a status is, for the status of a parent.
fn rank(status: TicketStatus) -> u8 {
    match status {
        TicketStatus::Unspecified | TicketStatus::Pending => 0,
        TicketStatus::Dispatched => 1,
        TicketStatus::InCoordination => 2,
        TicketStatus::Delivered => 3,
        TicketStatus::Accepted => 4,
        TicketStatus::Reopened => 5,
        TicketStatus::Resolved => 6,
        TicketStatus::Closed | TicketStatus::Merged => 7,
    }
}

/// Parallel handling (并联办理): a parent is as far along as its least
/// advanced part, so it is RESOLVED only when every part is resolved (or
/// closed), and CLOSED when every part is.
pub fn parent_status(parts: impl IntoIterator<Item = TicketStatus>) -> TicketStatus {
    parts
        .into_iter()
        .min_by_key(|s| rank(*s))
        .unwrap_or(TicketStatus::Pending)
}

/// The status name used as a key in statistics ("DELIVERED", ...).
pub fn status_key(status: TicketStatus) -> &'static str {
    status
        .as_str_name()
        .strip_prefix("TICKET_STATUS_")
        .unwrap_or("UNSPECIFIED")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL_STATUSES: [TicketStatus; 10] = [
        TicketStatus::Merged,
        TicketStatus::Unspecified,
        TicketStatus::Pending,
        TicketStatus::Dispatched,
        TicketStatus::Delivered,
        TicketStatus::Accepted,
        TicketStatus::InCoordination,
        TicketStatus::Resolved,
        TicketStatus::Reopened,
        TicketStatus::Closed,
    ];
    const ALL_EVENTS: [EventKind; 11] = [
        EventKind::Merged,
        EventKind::Unspecified,
        EventKind::Created,
        EventKind::Dispatched,
        EventKind::Delivered,
        EventKind::Accepted,
        EventKind::Rejected,
        EventKind::Assigned,
        EventKind::Resolved,
        EventKind::Closed,
        EventKind::Reopened,
    ];

    #[test]
    fn the_happy_path_is_legal() {
        let mut s = initial_status(false);
        for e in [
            EventKind::Dispatched,
            EventKind::Delivered,
            EventKind::Accepted,
            EventKind::Resolved,
            EventKind::Reopened,
            EventKind::Resolved,
            EventKind::Closed,
        ] {
            s = next(s, e).unwrap();
        }
        assert_eq!(s, TicketStatus::Closed);
        assert!(is_terminal(s));
    }

    #[test]
    fn a_rejected_ticket_goes_to_coordination_and_only_the_province_moves_it() {
        let s = next(TicketStatus::Delivered, EventKind::Rejected).unwrap();
        assert_eq!(s, TicketStatus::InCoordination);
        assert_eq!(actor_of(EventKind::Assigned), Actor::Province);
        // Nothing but an assignment leaves coordination: no city passes it on.
        for e in ALL_EVENTS {
            assert_eq!(next(s, e).is_ok(), e == EventKind::Assigned, "{e:?}");
        }
    }

    #[test]
    fn closed_is_terminal_and_unresolved_tickets_cannot_close() {
        for e in ALL_EVENTS {
            assert!(next(TicketStatus::Closed, e).is_err());
        }
        for s in ALL_STATUSES {
            if s != TicketStatus::Resolved {
                assert!(next(s, EventKind::Closed).is_err(), "{s:?}");
            }
        }
    }

    #[test]
    fn a_parent_is_resolved_only_when_every_part_is() {
        use TicketStatus as S;
        assert_eq!(
            parent_status([S::Resolved, S::Accepted, S::Resolved]),
            S::Accepted
        );
        assert_eq!(
            parent_status([S::Resolved, S::Closed, S::Resolved]),
            S::Resolved
        );
        assert_eq!(parent_status([S::Closed, S::Closed]), S::Closed);
        assert_eq!(
            parent_status([S::InCoordination, S::Resolved]),
            S::InCoordination
        );
    }

    proptest! {
        /// Random event sequences against a model: the machine never leaves
        /// the graph, and every legal step is made by its one actor.
        #[test]
        fn random_sequences_stay_on_the_graph(events in proptest::collection::vec(0usize..11, 0..64)) {
            let mut s = initial_status(false);
            for i in events {
                let e = ALL_EVENTS[i];
                if let Ok(to) = next(s, e) {
                    prop_assert!(!is_terminal(s));
                    prop_assert_ne!(to, TicketStatus::Unspecified);
                    prop_assert_ne!(to, TicketStatus::Pending);
                    s = to;
                }
            }
        }
    }
}
