//! A token bucket per caller (a city, the province, a department, the
//! gateway), so that one noisy caller cannot starve the others; past its
//! rate a caller hears RESOURCE_EXHAUSTED, which the senders' outboxes
//! retry with backoff. The gateway and the city nodes both use it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hotline_proto::identity::Identity;
use tonic::{Request, Status};

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One token bucket per caller.
#[derive(Clone)]
pub struct RateLimiter {
    /// Requests a second each caller may make on average, and how many at
    /// once above that.
    rps: f64,
    burst: f64,
    /// By caller; `None` for the unauthenticated callers of an insecure
    /// gateway, who share one bucket.
    buckets: Arc<Mutex<HashMap<Option<Identity>, Bucket>>>,
}

impl RateLimiter {
    /// `rps` must be positive and finite, `burst` at least 1 (the
    /// configurations check it).
    pub fn new(rps: f64, burst: f64) -> Self {
        Self {
            rps,
            burst,
            buckets: Arc::default(),
        }
    }

    /// Takes a token of `caller`'s bucket, if it has one. Runs on every
    /// request: it allocates only for a caller's first.
    pub fn try_take(&self, caller: Option<&Identity>) -> bool {
        let now = Instant::now();
        let mut buckets = match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let burst = self.burst;
        let key = caller.cloned();
        let b = match buckets.get_mut(&key) {
            Some(b) => b,
            None => buckets.entry(key).or_insert(Bucket {
                tokens: burst,
                at: now,
            }),
        };
        let refill = now.duration_since(b.at).as_secs_f64() * self.rps;
        b.tokens = (b.tokens + refill).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes a token of `caller`'s bucket, waiting for one to come (for a
    /// stream's messages, which cannot be refused one by one).
    pub async fn wait(&self, caller: Option<&Identity>) {
        use std::time::Duration;
        let refill = Duration::try_from_secs_f64(1.0 / self.rps)
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(1), Duration::from_secs(1));
        while !self.try_take(caller) {
            tokio::time::sleep(refill).await;
        }
    }

    /// The interceptor of a service: the caller must be one `rule` admits
    /// (see [`crate::allow`]) and within its rate.
    pub fn guard(
        &self,
        rule: impl Fn(&Identity) -> bool + Clone + Send + Sync + 'static,
    ) -> impl tonic::service::Interceptor + Clone + Send + Sync + 'static {
        let limiter = self.clone();
        let allow = crate::allow(rule);
        move |request: Request<()>| {
            let mut allow = allow.clone();
            let request = tonic::service::Interceptor::call(&mut allow, request)?;
            let caller = crate::Peer::caller(&request)?;
            if !limiter.try_take(caller) {
                let caller = caller
                    .map(|id| id.to_string())
                    .unwrap_or_else(|| "an unauthenticated caller".to_owned());
                return Err(Status::resource_exhausted(format!(
                    "{caller} is over its rate of {} requests a second; retry later",
                    limiter.rps
                )));
            }
            Ok(request)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_past_its_burst_is_refused_and_the_others_are_not() {
        let limiter = RateLimiter::new(1.0, 5.0);
        let luzhou = Identity::City("luzhou".into());
        let yibin = Identity::City("yibin".into());
        let taken = (0..50).filter(|_| limiter.try_take(Some(&luzhou))).count();
        assert_eq!(taken, 5, "only the burst, at one a second");
        assert!(
            limiter.try_take(Some(&yibin)),
            "yibin has a bucket of its own"
        );
    }
}
