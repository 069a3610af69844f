//! Ticket ids: made at the origin, globally unique, sortable.
//!
//! `{origin}-{ULID}` for a ticket, `{origin}-{ULID}.{target}` for the part of
//! a parallel ticket that goes to `target`. The ULID sorts by creation time;
//! the origin prefix makes ids of different cities disjoint without any
//! coordination, so an id is the idempotency key at every hop.

use std::fmt;
use std::str::FromStr;

use ulid::Ulid;

use crate::catalogue::is_valid_id;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TicketId {
    origin: String,
    ulid: Ulid,
    part: Option<String>,
}

impl TicketId {
    /// A new id for a ticket made now at `origin`.
    pub fn new(origin: &str) -> Self {
        Self {
            origin: origin.to_owned(),
            ulid: Ulid::new(),
            part: None,
        }
    }

    /// The id of this ticket's part for `target` (parallel handling).
    pub fn part(&self, target: &str) -> Self {
        Self {
            origin: self.origin.clone(),
            ulid: self.ulid,
            part: Some(target.to_owned()),
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// For a part: the target city it names.
    pub fn part_target(&self) -> Option<&str> {
        self.part.as_deref()
    }

    /// For a part: its parent's id.
    pub fn parent(&self) -> Option<Self> {
        self.part.as_ref().map(|_| Self {
            origin: self.origin.clone(),
            ulid: self.ulid,
            part: None,
        })
    }

    /// Milliseconds since the Unix epoch at which the id was made.
    pub fn timestamp_ms(&self) -> u64 {
        self.ulid.timestamp_ms()
    }
}

impl fmt::Display for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.origin, self.ulid)?;
        if let Some(part) = &self.part {
            write!(f, ".{part}")?;
        }
        Ok(())
    }
}

/// Why a string is not a ticket id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a ticket id (expected ORIGIN-ULID or ORIGIN-ULID.TARGET)")]
pub struct BadTicketId;

impl FromStr for TicketId {
    type Err = BadTicketId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 100 {
            return Err(BadTicketId);
        }
        let (base, part) = match s.split_once('.') {
            Some((base, part)) => (base, Some(part)),
            None => (s, None),
        };
        if part.is_some_and(|p| !is_valid_id(p)) {
            return Err(BadTicketId);
        }
        // The ULID is the last 26 characters, after a hyphen.
        let split = base.len().checked_sub(27).ok_or(BadTicketId)?;
        if !base.is_char_boundary(split) || base.as_bytes()[split] != b'-' {
            return Err(BadTicketId);
        }
        let origin = &base[..split];
        if !is_valid_id(origin) {
            return Err(BadTicketId);
        }
        let ulid = Ulid::from_string(&base[split + 1..]).map_err(|_| BadTicketId)?;
        Ok(Self {
            origin: origin.to_owned(),
            ulid,
            part: part.map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_time() {
        let a = TicketId::new("luzhou");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = TicketId::new("luzhou");
        assert!(a.to_string() < b.to_string());
        let parsed: TicketId = a.to_string().parse().unwrap();
        assert_eq!(parsed, a);
        let part = a.part("yibin");
        let parsed: TicketId = part.to_string().parse().unwrap();
        assert_eq!(parsed.part_target(), Some("yibin"));
        assert_eq!(parsed.parent(), Some(a));
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "luzhou",
            "luzhou-",
            "-01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "Luzhou-01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "luzhou_01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "luzhou-01ARZ3NDEKTSV4RRFFQ69G5FA",
            "luzhou-01ARZ3NDEKTSV4RRFFQ69G5FAV.",
            "luzhou-01ARZ3NDEKTSV4RRFFQ69G5FAV.Yibin",
            "泸州-01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "luzhou-01ARZ3NDEKTSV4RRFFQ69G5F泸",
        ] {
            assert!(bad.parse::<TicketId>().is_err(), "{bad:?} parsed");
        }
        assert!(
            "ya-an-01ARZ3NDEKTSV4RRFFQ69G5FAV"
                .parse::<TicketId>()
                .is_ok()
        );
    }
}
