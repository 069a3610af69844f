//! Limits at the gateway, which every city shares: a token bucket per
//! caller (a city, the province, a department; [`RateLimiter`], shared with
//! the city nodes), so that one noisy city cannot starve the others; past
//! its rate a caller hears RESOURCE_EXHAUSTED, which the nodes' outboxes
//! retry with backoff. The transport's own limits (streams, headers,
//! in-flight requests per connection, load shedding) are set where the
//! server is built.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hotline_proto::identity::Identity;
pub use hotline_tls::rate::RateLimiter;
use serde::Deserialize;
use tonic::Status;

/// The `[limits]` table of the gateway's configuration.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests a second each caller may make on average.
    #[serde(default = "default_rate")]
    pub per_caller_rps: f64,
    /// How many requests a caller may make at once above that rate.
    #[serde(default = "default_burst")]
    pub per_caller_burst: f64,
    /// Requests one connection may have in flight; past it the gateway sheds
    /// load with RESOURCE_EXHAUSTED.
    #[serde(default = "default_in_flight")]
    pub in_flight_per_connection: usize,
    /// How long before its dispatch a request may have been made
    /// (`create_time`), in days: an older one is refused, naming the field,
    /// since every deadline it carries would have passed on arrival.
    #[serde(default = "default_max_age_days")]
    pub max_ticket_age_days: u32,
    /// Streams (`WatchFlow`) one caller may hold open at once; past it, a
    /// new one is refused with RESOURCE_EXHAUSTED.
    #[serde(default = "default_streams_per_caller")]
    pub streams_per_caller: usize,
    /// Streams all callers together may hold open at once.
    #[serde(default = "default_streams_total")]
    pub streams_total: usize,
}

fn default_streams_per_caller() -> usize {
    64
}

fn default_streams_total() -> usize {
    1_024
}

fn default_max_age_days() -> u32 {
    hotline_proto::validate::DEFAULT_MAX_AGE_DAYS
}

fn default_rate() -> f64 {
    5_000.0
}

fn default_burst() -> f64 {
    10_000.0
}

fn default_in_flight() -> usize {
    1_024
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_caller_rps: default_rate(),
            per_caller_burst: default_burst(),
            in_flight_per_connection: default_in_flight(),
            max_ticket_age_days: default_max_age_days(),
            streams_per_caller: default_streams_per_caller(),
            streams_total: default_streams_total(),
        }
    }
}

impl Limits {
    pub fn check(&self) -> Result<(), String> {
        if !(self.per_caller_rps.is_finite() && self.per_caller_rps > 0.0) {
            return Err("limits.per_caller_rps: must be a positive number".into());
        }
        if !(self.per_caller_burst.is_finite() && self.per_caller_burst >= 1.0) {
            return Err("limits.per_caller_burst: must be at least 1".into());
        }
        if self.in_flight_per_connection == 0 {
            return Err("limits.in_flight_per_connection: must be positive".into());
        }
        if self.streams_per_caller == 0 {
            return Err("limits.streams_per_caller: must be positive".into());
        }
        if self.streams_total < self.streams_per_caller {
            return Err("limits.streams_total: must be at least limits.streams_per_caller".into());
        }
        Ok(())
    }
}

/// The streams open now, by caller and in all, within [`Limits`]'
/// `streams_per_caller` and `streams_total`.
#[derive(Clone)]
pub struct StreamSlots {
    per_caller: usize,
    total: usize,
    held: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_caller: HashMap<Option<Identity>, usize>,
}

/// One open stream's place: given back when dropped, however the stream
/// ends.
pub struct StreamSlot {
    held: Arc<Mutex<Held>>,
    caller: Option<Identity>,
}

impl StreamSlots {
    pub fn new(limits: &Limits) -> Self {
        Self {
            per_caller: limits.streams_per_caller,
            total: limits.streams_total,
            held: Arc::default(),
        }
    }

    /// A place for a stream of `caller`, or RESOURCE_EXHAUSTED naming the
    /// limit it is past.
    pub fn take(&self, caller: Option<&Identity>) -> Result<StreamSlot, Status> {
        let mut held = lock(&self.held);
        let key = caller.cloned();
        let mine = held.by_caller.get(&key).copied().unwrap_or(0);
        let who = || {
            caller
                .map(|id| id.to_string())
                .unwrap_or_else(|| "an unauthenticated caller".to_owned())
        };
        if mine >= self.per_caller {
            return Err(Status::resource_exhausted(format!(
                "{} holds {mine} open streams, its limit (limits.streams_per_caller); close one first",
                who()
            )));
        }
        if held.total >= self.total {
            return Err(Status::resource_exhausted(format!(
                "the gateway holds {} open streams, its limit (limits.streams_total); retry later",
                held.total
            )));
        }
        held.total += 1;
        *held.by_caller.entry(key.clone()).or_default() += 1;
        Ok(StreamSlot {
            held: self.held.clone(),
            caller: key,
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        lock(&self.held).total
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_caller.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.by_caller.remove(&self.caller);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_past_a_callers_limit_or_the_total_are_refused_and_given_back_on_drop() {
        let slots = StreamSlots::new(&Limits {
            streams_per_caller: 2,
            streams_total: 3,
            ..Limits::default()
        });
        let luzhou = Identity::City("luzhou".into());
        let yibin = Identity::City("yibin".into());
        let a = slots.take(Some(&luzhou)).unwrap();
        let _b = slots.take(Some(&luzhou)).unwrap();
        let refused = slots.take(Some(&luzhou)).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("limits.streams_per_caller"),
            "{refused}"
        );
        let _c = slots.take(Some(&yibin)).unwrap();
        let full = slots.take(None).err().unwrap();
        assert!(full.message().contains("limits.streams_total"), "{full}");
        assert_eq!(slots.open(), 3);
        drop(a);
        assert_eq!(slots.open(), 2);
        assert!(
            slots.take(Some(&luzhou)).is_ok(),
            "luzhou's place came back"
        );
    }

    #[test]
    fn bad_limits_are_named() {
        let bad = Limits {
            per_caller_rps: 0.0,
            ..Limits::default()
        };
        assert!(
            bad.check()
                .unwrap_err()
                .starts_with("limits.per_caller_rps")
        );
    }
}
