//! Simulated people: each city's operators handle what reaches them (accept,
//! sometimes reject as not their business, resolve) and close what they sent
//! once it is resolved, reopening it when the citizen is unsatisfied; the
//! provincial coordinator names an owner for every rejected ticket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hotline_proto::pb::city_hotline_client::CityHotlineClient;
use hotline_proto::pb::observatory_client::ObservatoryClient;
use hotline_proto::pb::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tonic::transport::Channel;

/// How the simulated people behave, per mille.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    /// Received tickets rejected as not the city's business.
    pub reject: u32,
    /// Resolved tickets the citizen is unsatisfied with (reopened once).
    pub reopen: u32,
    /// How often each operator looks at the queue.
    pub poll: Duration,
    /// How long a department works on an accepted ticket before it is
    /// resolved: up to `quick` for most, between `quick` and `slow` for
    /// `slow_share` per mille of them (zero: resolved when seen).
    pub quick: Duration,
    pub slow: Duration,
    pub slow_share: u32,
    /// Of the tickets closed, those closed basically satisfied and those
    /// closed unsatisfied, per mille (the rest satisfied).
    pub basically_satisfied: u32,
    pub unsatisfied: u32,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            reject: 50,
            reopen: 100,
            poll: Duration::from_millis(150),
            quick: Duration::ZERO,
            slow: Duration::ZERO,
            slow_share: 0,
            basically_satisfied: 0,
            unsatisfied: 0,
        }
    }
}

impl Behaviour {
    /// A duty officer's day, for the demo: most tickets handled within
    /// `quick`, some slow enough to pass a deadline between the two, and
    /// citizens not all satisfied.
    pub fn day(quick: Duration, slow: Duration) -> Self {
        Self {
            quick,
            slow,
            slow_share: 100,
            basically_satisfied: 120,
            unsatisfied: 60,
            ..Self::default()
        }
    }

    /// How long the department works on one ticket.
    fn work(&self, rng: &mut StdRng) -> Duration {
        let (from, to) = if rng.random_range(0..1000) < self.slow_share {
            (self.quick, self.slow)
        } else {
            (Duration::ZERO, self.quick)
        };
        if to <= from {
            return from;
        }
        from + (to - from).mul_f64(rng.random_range(0.0..1.0))
    }

    fn satisfaction(&self, rng: &mut StdRng) -> Satisfaction {
        let roll = rng.random_range(0..1000);
        if roll < self.unsatisfied {
            Satisfaction::Unsatisfied
        } else if roll < self.unsatisfied + self.basically_satisfied {
            Satisfaction::BasicallySatisfied
        } else {
            Satisfaction::Satisfied
        }
    }
}

/// What the simulated people did.
#[derive(Debug, Default)]
pub struct Actions {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub resolved: AtomicU64,
    pub closed: AtomicU64,
    pub reopened: AtomicU64,
    pub assigned: AtomicU64,
    /// Calls refused (a race with another step, or a node down).
    pub refused: AtomicU64,
}

async fn page(
    client: &mut CityHotlineClient<Channel>,
    role: TicketRole,
    status: TicketStatus,
) -> Vec<Ticket> {
    client
        .list_tickets(ListTicketsRequest {
            role: role as i32,
            status: status as i32,
            page_size: 200,
            omit_history: true,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().tickets)
        .unwrap_or_default()
}

fn count<T>(result: Result<T, tonic::Status>, on_ok: &AtomicU64, refused: &AtomicU64) {
    match result {
        Ok(_) => on_ok.fetch_add(1, Ordering::Relaxed),
        Err(_) => refused.fetch_add(1, Ordering::Relaxed),
    };
}

/// One city's operators, until `stop`.
pub async fn operators(
    mut client: CityHotlineClient<Channel>,
    seed: u64,
    behaviour: Behaviour,
    actions: Arc<Actions>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let a = &actions;
    // When each ticket in hand is done: decided when first seen accepted
    // (or reopened), forgotten once resolved.
    let mut done_at: std::collections::HashMap<String, std::time::Instant> = Default::default();
    while !*stop.borrow() {
        // As the handling city: what was delivered, accepted or reopened.
        for role in [TicketRole::Received, TicketRole::Local] {
            for t in page(&mut client, role, TicketStatus::Delivered).await {
                let reject =
                    role == TicketRole::Received && rng.random_range(0..1000) < behaviour.reject;
                if reject {
                    let r = client
                        .reject_ticket(RejectTicketRequest {
                            ticket_id: t.id,
                            reason: "经核实不属于本市管辖".into(),
                        })
                        .await;
                    count(r, &a.rejected, &a.refused);
                } else {
                    let r = client
                        .accept_ticket(AcceptTicketRequest {
                            ticket_id: t.id,
                            note: "已受理".into(),
                        })
                        .await;
                    count(r, &a.accepted, &a.refused);
                }
            }
            for status in [TicketStatus::Accepted, TicketStatus::Reopened] {
                for t in page(&mut client, role, status).await {
                    let now = std::time::Instant::now();
                    let at = *done_at
                        .entry(t.id.clone())
                        .or_insert_with(|| now + behaviour.work(&mut rng));
                    if at > now {
                        continue;
                    }
                    done_at.remove(&t.id);
                    let r = client
                        .resolve_ticket(ResolveTicketRequest {
                            ticket_id: t.id,
                            note: "已办结并答复".into(),
                        })
                        .await;
                    count(r, &a.resolved, &a.refused);
                }
            }
        }
        // As the origin: follow up on what was resolved (回访).
        for role in [TicketRole::Sent, TicketRole::Local] {
            for t in page(&mut client, role, TicketStatus::Resolved).await {
                if !t.parent_id.is_empty() {
                    continue; // closed with its parent
                }
                let unsatisfied =
                    t.reopen_count == 0 && rng.random_range(0..1000) < behaviour.reopen;
                if unsatisfied {
                    let r = client
                        .reopen_ticket(ReopenTicketRequest {
                            ticket_id: t.id,
                            reason: "市民对答复不满意".into(),
                        })
                        .await;
                    count(r, &a.reopened, &a.refused);
                } else {
                    let r = client
                        .close_ticket(CloseTicketRequest {
                            ticket_id: t.id,
                            satisfaction: behaviour.satisfaction(&mut rng) as i32,
                            note: String::new(),
                        })
                        .await;
                    count(r, &a.closed, &a.refused);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(behaviour.poll) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Which tickets the simulated people may act on: a run against a
/// federation that has other work leaves that work alone.
pub type Mine = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// Every ticket (a federation of the simulator's own).
pub fn all() -> Mine {
    Arc::new(|_, _| true)
}

/// The provincial coordinator: names an owner for each rejected ticket, a
/// city other than the origin and, where it can, other than the one that
/// rejected it.
pub async fn coordinator(
    client: ObservatoryClient<Channel>,
    cities: Vec<String>,
    seed: u64,
    actions: Arc<Actions>,
    stop: watch::Receiver<bool>,
) {
    coordinator_of(client, cities, seed, actions, all(), stop).await
}

/// As [`coordinator`], for the tickets `mine` accepts (by id; the request
/// id is not in the coordination queue, so it is given empty).
pub async fn coordinator_of(
    mut client: ObservatoryClient<Channel>,
    cities: Vec<String>,
    seed: u64,
    actions: Arc<Actions>,
    mine: Mine,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !*stop.borrow() {
        let items = client
            .list_coordination_items(ListCoordinationItemsRequest::default())
            .await
            .map(|r| r.into_inner().items)
            .unwrap_or_default();
        for item in items.into_iter().filter(|i| mine(&i.ticket_id, "")) {
            let mut candidates: Vec<&String> = cities
                .iter()
                .filter(|c| **c != item.origin_city && **c != item.rejected_by)
                .collect();
            if candidates.is_empty() {
                candidates = cities.iter().filter(|c| **c != item.origin_city).collect();
            }
            let Some(owner) = candidates.get(rng.random_range(0..candidates.len().max(1))) else {
                continue;
            };
            let r = client
                .assign_owner(AssignOwnerRequest {
                    ticket_id: item.ticket_id,
                    owner_city: (*owner).clone(),
                    note: "协调后明确承办单位".into(),
                })
                .await;
            count(r, &actions.assigned, &actions.refused);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// How a scenario's operators and citizens behave, in real time.
#[derive(Debug, Clone, Copy)]
pub struct Handling {
    /// Operators per city, each with one ticket in hand at a time.
    pub operators: usize,
    /// From delivery to acceptance (busy), and from acceptance to
    /// resolution (the department's work: the operator is free meanwhile).
    pub accept: crate::scenario::Minutes,
    pub resolve: crate::scenario::Minutes,
    pub reject: f64,
    pub unsatisfied: f64,
    pub basically_satisfied: f64,
    /// How many times an unsatisfied citizen has a ticket reopened before
    /// closing it unsatisfied.
    pub max_reopens: u32,
    /// Simulated seconds per real second.
    pub speed: f64,
}

impl Handling {
    /// A log-normal draw of `m`, in real time.
    fn draw(&self, rng: &mut StdRng, m: crate::scenario::Minutes) -> Duration {
        // Box–Muller; 1.2816 is the standard normal's 90th percentile.
        let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.random_range(0.0..1.0);
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let sigma = (m.p90 / m.median).ln() / 1.2816;
        let minutes = m.median * (sigma * z).exp();
        Duration::from_secs_f64((minutes * 60.0 / self.speed).min(3600.0))
    }
}

/// Retries `call` while it fails for a passing reason (the node restarting,
/// a link down) for up to a minute; counts the outcome.
async fn persist<T, F, Fut>(mut call: F, on_ok: &AtomicU64, refused: &AtomicU64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Ok(_) => {
                on_ok.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e)
                if hotline_proto::grpc::is_transient(e.code())
                    && tokio::time::Instant::now() < until =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => {
                refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// One city's operators at the pace of a scenario, until `stop`: each
/// delivered ticket waits for a free operator, who takes the accept time
/// to accept (or reject) it; it is resolved after the resolve time. As the
/// origin the city follows up on what was resolved: closes it, or reopens
/// it when the citizen is unsatisfied (up to the scenario's `max_reopens`).
pub async fn handlers(
    client: CityHotlineClient<Channel>,
    seed: u64,
    h: Handling,
    actions: Arc<Actions>,
    mine: Mine,
    mut stop: watch::Receiver<bool>,
) {
    use std::collections::HashSet;
    use std::sync::Mutex;
    let in_hand: Arc<Mutex<HashSet<String>>> = Arc::default();
    let free = Arc::new(tokio::sync::Semaphore::new(h.operators.max(1)));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut work = tokio::task::JoinSet::new();
    let mut lister = client.clone();
    while !*stop.borrow() {
        let mut queue = Vec::new();
        for role in [TicketRole::Received, TicketRole::Local] {
            for status in [TicketStatus::Delivered, TicketStatus::Reopened] {
                queue.extend(
                    page(&mut lister, role, status)
                        .await
                        .into_iter()
                        .map(|t| (role, t)),
                );
            }
        }
        for (role, t) in queue
            .into_iter()
            .filter(|(_, t)| mine(&t.id, &t.request_id))
        {
            let fresh = in_hand
                .lock()
                .map(|mut s| s.insert(t.id.clone()))
                .unwrap_or(false);
            if !fresh {
                continue;
            }
            let reopened = t.status == TicketStatus::Reopened as i32;
            let reject =
                !reopened && role == TicketRole::Received && rng.random_range(0.0..1.0) < h.reject;
            let accept_after = h.draw(&mut rng, h.accept);
            let resolve_after = h.draw(&mut rng, h.resolve);
            let (client, free, in_hand, a) = (
                client.clone(),
                free.clone(),
                in_hand.clone(),
                actions.clone(),
            );
            work.spawn(async move {
                let Ok(_operator) = free.acquire().await else {
                    return;
                };
                tokio::time::sleep(accept_after).await;
                let id = t.id.clone();
                if reject {
                    persist(
                        || {
                            let (mut c, id) = (client.clone(), id.clone());
                            async move {
                                c.reject_ticket(RejectTicketRequest {
                                    ticket_id: id,
                                    reason: "经核实不属于本市管辖".into(),
                                })
                                .await
                            }
                        },
                        &a.rejected,
                        &a.refused,
                    )
                    .await;
                } else {
                    if !reopened {
                        persist(
                            || {
                                let (mut c, id) = (client.clone(), id.clone());
                                async move {
                                    c.accept_ticket(AcceptTicketRequest {
                                        ticket_id: id,
                                        note: "已受理".into(),
                                    })
                                    .await
                                }
                            },
                            &a.accepted,
                            &a.refused,
                        )
                        .await;
                    }
                    drop(_operator);
                    tokio::time::sleep(resolve_after).await;
                    persist(
                        || {
                            let (mut c, id) = (client.clone(), id.clone());
                            async move {
                                c.resolve_ticket(ResolveTicketRequest {
                                    ticket_id: id,
                                    note: "已办结并答复".into(),
                                })
                                .await
                            }
                        },
                        &a.resolved,
                        &a.refused,
                    )
                    .await;
                }
                if let Ok(mut s) = in_hand.lock() {
                    s.remove(&id);
                }
            });
        }
        // As the origin: the follow-up call (回访).
        for role in [TicketRole::Sent, TicketRole::Local] {
            for t in page(&mut lister, role, TicketStatus::Resolved).await {
                if !t.parent_id.is_empty() || !mine(&t.id, &t.request_id) {
                    continue; // closed with its parent, or not this run's
                }
                let unhappy = rng.random_range(0.0..1.0) < h.unsatisfied;
                if unhappy && t.reopen_count < h.max_reopens {
                    let r = lister
                        .reopen_ticket(ReopenTicketRequest {
                            ticket_id: t.id,
                            reason: "市民对答复不满意".into(),
                        })
                        .await;
                    count(r, &actions.reopened, &actions.refused);
                    continue;
                }
                let satisfaction = if unhappy {
                    Satisfaction::Unsatisfied
                } else if rng.random_range(0.0..1.0) < h.basically_satisfied {
                    Satisfaction::BasicallySatisfied
                } else {
                    Satisfaction::Satisfied
                };
                let r = lister
                    .close_ticket(CloseTicketRequest {
                        ticket_id: t.id,
                        satisfaction: satisfaction as i32,
                        note: String::new(),
                    })
                    .await;
                count(r, &actions.closed, &actions.refused);
            }
        }
        while work.try_join_next().is_some() {}
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => {}
        }
    }
    work.abort_all();
}
