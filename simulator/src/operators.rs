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
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            reject: 50,
            reopen: 100,
            poll: Duration::from_millis(150),
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
                            satisfaction: Satisfaction::Satisfied as i32,
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

/// The provincial coordinator: names an owner for each rejected ticket, a
/// city other than the origin and, where it can, other than the one that
/// rejected it.
pub async fn coordinator(
    mut client: ObservatoryClient<Channel>,
    cities: Vec<String>,
    seed: u64,
    actions: Arc<Actions>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !*stop.borrow() {
        let items = client
            .list_coordination_items(ListCoordinationItemsRequest::default())
            .await
            .map(|r| r.into_inner().items)
            .unwrap_or_default();
        for item in items {
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
