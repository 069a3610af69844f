//! Timestamps on the wire.

use std::time::{SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;

/// Now, as a protobuf timestamp.
pub fn now() -> Timestamp {
    from_unix_ms(now_ms())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn from_unix_ms(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Milliseconds since the epoch, saturated at the ends of `i64` (a peer's
/// timestamp may be anything: see [`checked_unix_ms`] to refuse it).
pub fn to_unix_ms(t: &Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}

/// Milliseconds since the epoch, or `None` if the timestamp is not a time
/// (nanos outside 0..10⁹, or seconds too large to count in milliseconds).
pub fn checked_unix_ms(t: &Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    t.seconds
        .checked_mul(1000)?
        .checked_add(i64::from(t.nanos) / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_out_of_range_are_refused_or_saturated_not_wrapped() {
        let t = Timestamp {
            seconds: 1 << 62,
            nanos: 0,
        };
        assert_eq!(checked_unix_ms(&t), None);
        assert_eq!(to_unix_ms(&t), i64::MAX);
        let bad_nanos = Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert_eq!(checked_unix_ms(&bad_nanos), None);
        let ok = from_unix_ms(1_796_000_000_123);
        assert_eq!(checked_unix_ms(&ok), Some(1_796_000_000_123));
        assert_eq!(to_unix_ms(&ok), 1_796_000_000_123);
    }
}
