//! Counting what happened, from the nodes' own stores: never assumed from
//! what the simulator meant to do. A ticket is lost when a city acknowledged
//! it and its target (or the owner coordination named) does not hold it; it
//! is duplicated when a city holds a second ticket for one request, or a
//! ticket nobody created.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use hotline_proto::pb::city_hotline_client::CityHotlineClient;
use hotline_proto::pb::observatory_client::ObservatoryClient;
use hotline_proto::pb::*;
use serde::Serialize;
use tonic::transport::Channel;

use crate::calls::Started;

/// A ticket the simulator created, as the origin acknowledged it.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: String,
    pub origin: String,
    pub targets: Vec<String>,
    pub category: String,
}

impl Created {
    /// The (ticket or part id, target) pairs that must cross to another city.
    pub fn units(&self) -> Vec<(String, String)> {
        let multi = self.targets.len() > 1;
        self.targets
            .iter()
            .filter(|t| **t != self.origin)
            .map(|t| {
                let id = if multi {
                    format!("{}.{t}", self.id)
                } else {
                    self.id.clone()
                };
                (id, t.clone())
            })
            .collect()
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Tickets {
    pub created: u64,
    pub cross_city: u64,
    pub local: u64,
    pub multi_city: u64,
    /// Cross-city tickets (parts count one each) that must reach a target.
    pub dispatched: u64,
    pub delivered: u64,
    pub resolved: u64,
    pub closed: u64,
    pub rejected: u64,
    pub reassigned: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Reports the gateway merged into an open ticket about the same matter
    /// (合并派单): not dispatched, so never expected at a target.
    pub merged: u64,
}

/// Call transfers, as the nodes hold them at the end.
#[derive(Debug, Default, Serialize)]
pub struct Transfers {
    pub started: u64,
    pub completed: u64,
    /// Ended otherwise, by the reason the node gives ("declined",
    /// "ring-timeout", "no-operator", "cancelled", "console-lost"...).
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Failed transfers the desk turned into tickets.
    pub converted_to_tickets: u64,
    /// Not terminal although past their deadline: must be 0.
    pub stuck: u64,
    /// Not terminal, within their deadline (0 once the demo has settled).
    pub live: u64,
    /// Ended in one state at the origin and another at the target (a
    /// link cut mid-call leaves each side its own view).
    pub disagreements: u64,
    /// Known at neither city any more: the origin's node died with the
    /// call (transfers live in a node's memory) before the target heard
    /// of it.
    pub lost_with_origin: u64,
    /// Not known to have reached the gateway (see
    /// `CityFigures::transfers_out_unconfirmed`).
    pub unconfirmed: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct CityFigures {
    pub transfers_out: u64,
    pub transfers_in: u64,
    /// Of those, transfers the gateway may never have heard of: started at
    /// a node whose link to the gateway was dying, and not known at the
    /// target (the gateway's count may lack them).
    pub transfers_out_unconfirmed: u64,
    pub transfers_in_unconfirmed: u64,
    pub sent: u64,
    pub received: u64,
    /// Reports this city sent that the gateway merged.
    pub merged: u64,
    /// Tickets this city sent, per category.
    pub by_category: BTreeMap<String, u64>,
    pub received_by_category: BTreeMap<String, u64>,
    pub local: u64,
    /// What this city did with the cross-city tickets it handled, from the
    /// histories in the origins' stores: events, not tickets (a ticket
    /// reopened and resolved again counts twice in `resolved`).
    pub handled: Handled,
}

/// Events of the tickets a city handled, as the gateway counts them.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Handled {
    pub accepted: u64,
    pub rejected: u64,
    pub resolved: u64,
    pub reopened: u64,
    pub satisfied: u64,
    pub basically_satisfied: u64,
    pub unsatisfied: u64,
}

impl Handled {
    fn of_stats(s: &CityStats) -> Self {
        Self {
            accepted: s.accepted,
            rejected: s.rejected,
            resolved: s.resolved,
            reopened: s.reopened,
            satisfied: s.satisfied,
            basically_satisfied: s.basically_satisfied,
            unsatisfied: s.unsatisfied,
        }
    }

    /// Counts `t`'s history, following the handler through coordination.
    fn count(t: &Ticket, cities: &mut BTreeMap<String, CityFigures>) {
        let mut handler = t.target_cities.first().cloned().unwrap_or_default();
        for e in &t.history {
            let Ok(kind) = EventKind::try_from(e.kind) else {
                continue;
            };
            if kind == EventKind::Assigned {
                handler = e.city.clone();
                continue;
            }
            let Some(h) = cities.get_mut(&handler).map(|f| &mut f.handled) else {
                continue;
            };
            match kind {
                EventKind::Accepted => h.accepted += 1,
                EventKind::Rejected => h.rejected += 1,
                EventKind::Resolved => h.resolved += 1,
                EventKind::Reopened => h.reopened += 1,
                EventKind::Closed => match Satisfaction::try_from(e.satisfaction) {
                    Ok(Satisfaction::Satisfied) => h.satisfied += 1,
                    Ok(Satisfaction::BasicallySatisfied) => h.basically_satisfied += 1,
                    Ok(Satisfaction::Unsatisfied) => h.unsatisfied += 1,
                    _ => {}
                },
                _ => {}
            }
        }
    }
}

/// (origin, target, category) → (tickets, transfers).
pub type FlowRecount = BTreeMap<(String, String, String), (u64, u64)>;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub duration_secs: f64,
    pub seed: u64,
    pub tickets: Tickets,
    pub transfers: Transfers,
    pub cities: BTreeMap<String, CityFigures>,
    /// The gateway's statistics equal this recount, city by city.
    pub gateway_stats_agree: bool,
    /// Up to 20 lost or duplicated ids, to look at.
    pub problems: Vec<String>,
    /// Every ticket and transfer found wrong, by what is wrong (for the
    /// simulator's invariants, which print their histories).
    #[serde(skip)]
    pub suspects: Suspects,
}

/// Ids found wrong by [`count`], all of them.
#[derive(Debug, Default, Clone)]
pub struct Suspects {
    /// (ticket or part id, city it should be at)
    pub lost: Vec<(String, String)>,
    /// (city, ticket id, why)
    pub duplicated: Vec<(String, String, String)>,
    /// (transfer id, why)
    pub stuck: Vec<(String, String)>,
    /// (transfer id, why)
    pub disagreeing: Vec<(String, String)>,
    /// What the gateway's statistics disagree with the recount on.
    pub statistics: Vec<String>,
}

async fn list_all(
    client: &mut CityHotlineClient<Channel>,
    role: TicketRole,
) -> anyhow::Result<Vec<Ticket>> {
    list_tickets(client, role, role != TicketRole::Received).await
}

/// Every ticket `client`'s node holds in `role`, page by page.
pub async fn list_tickets(
    client: &mut CityHotlineClient<Channel>,
    role: TicketRole,
    with_history: bool,
) -> anyhow::Result<Vec<Ticket>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_tickets(ListTicketsRequest {
                role: role as i32,
                page_size: 1000,
                page_token: token,
                omit_history: !with_history,
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(page.tickets);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// The owner coordination named for each ticket it assigned.
pub async fn owners(gateway: &Channel) -> anyhow::Result<HashMap<String, String>> {
    let mut observatory = ObservatoryClient::new(gateway.clone());
    let mut assigned = HashMap::new();
    let mut token = String::new();
    loop {
        let page = observatory
            .list_coordination_items(ListCoordinationItemsRequest {
                page_size: 1000,
                page_token: token,
                include_assigned: true,
            })
            .await?
            .into_inner();
        for item in page.items {
            if !item.assigned_city.is_empty() {
                assigned.insert(item.ticket_id, item.assigned_city);
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(assigned);
        }
        token = page.next_page_token;
    }
}

/// The gateway's statistics before a run, for a federation that has a
/// history: the run's recount is compared with what its figures grew by.
#[derive(Debug, Default, Clone)]
pub struct Baseline {
    stats: HashMap<String, CityStats>,
    flow: FlowRecount,
    /// The tickets each city had received before the run.
    held: HashMap<String, std::collections::HashSet<String>>,
}

impl Baseline {
    pub async fn take(gateway: Channel, nodes: &BTreeMap<String, Channel>) -> anyhow::Result<Self> {
        let mut held = HashMap::new();
        for (city, channel) in nodes {
            let mut client = CityHotlineClient::new(channel.clone());
            let ids = list_all(&mut client, TicketRole::Received)
                .await?
                .into_iter()
                .map(|t| t.id)
                .collect();
            held.insert(city.clone(), ids);
        }
        let mut observatory = ObservatoryClient::new(gateway);
        let stats = observatory
            .get_city_stats(GetCityStatsRequest::default())
            .await?
            .into_inner()
            .cities
            .into_iter()
            .map(|s| (s.city.clone(), s))
            .collect();
        let flow = observatory
            .get_flow_matrix(GetFlowMatrixRequest::default())
            .await?
            .into_inner()
            .cells
            .into_iter()
            .map(|c| {
                (
                    (c.origin_city, c.target_city, c.category),
                    (c.tickets, c.transfers),
                )
            })
            .collect();
        Ok(Self { stats, flow, held })
    }

    /// `s` less what it was before the run.
    fn since(&self, mut s: CityStats) -> CityStats {
        if let Some(b) = self.stats.get(&s.city) {
            for (now, before) in [
                (&mut s.sent, b.sent),
                (&mut s.received, b.received),
                (&mut s.transfers_out, b.transfers_out),
                (&mut s.transfers_in, b.transfers_in),
                (&mut s.accepted, b.accepted),
                (&mut s.rejected, b.rejected),
                (&mut s.resolved, b.resolved),
                (&mut s.reopened, b.reopened),
                (&mut s.satisfied, b.satisfied),
                (&mut s.basically_satisfied, b.basically_satisfied),
                (&mut s.unsatisfied, b.unsatisfied),
                (&mut s.merged, b.merged),
            ] {
                *now = now.saturating_sub(before);
            }
        }
        s
    }
}

/// Counts everything from the stores of the nodes at `nodes` and the
/// gateway's ledger at `gateway`.
pub async fn count(
    created: &[Created],
    started: &[Started],
    nodes: &BTreeMap<String, Channel>,
    gateway: Channel,
) -> anyhow::Result<Report> {
    count_since(created, started, nodes, gateway, &Baseline::default()).await
}

/// As [`count`], comparing the recount with what the gateway's figures
/// grew by since `baseline`.
pub async fn count_since(
    created: &[Created],
    started: &[Started],
    nodes: &BTreeMap<String, Channel>,
    gateway: Channel,
    baseline: &Baseline,
) -> anyhow::Result<Report> {
    let mut received: HashMap<String, HashMap<String, Ticket>> = HashMap::new();
    let mut everything: HashMap<String, Ticket> = HashMap::new();
    for (city, channel) in nodes {
        let mut client = CityHotlineClient::new(channel.clone());
        let got = list_all(&mut client, TicketRole::Received).await?;
        let before = baseline.held.get(city);
        received.insert(
            city.clone(),
            got.into_iter()
                .filter(|t| !before.is_some_and(|b| b.contains(&t.id)))
                .map(|t| (t.id.clone(), t))
                .collect(),
        );
        for t in list_all(&mut client, TicketRole::Unspecified).await? {
            if t.origin_city == *city {
                everything.insert(t.id.clone(), t);
            }
        }
    }
    let assigned = owners(&gateway).await?;
    let mut observatory = ObservatoryClient::new(gateway);

    let mut r = Report::default();
    let mut flow = FlowRecount::new();
    for city in nodes.keys() {
        r.cities.insert(city.clone(), CityFigures::default());
    }
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for c in created {
        r.tickets.created += 1;
        let units = c.units();
        if units.is_empty() {
            r.tickets.local += 1;
        } else {
            r.tickets.cross_city += 1;
        }
        if c.targets.len() > 1 {
            r.tickets.multi_city += 1;
        }
        if c.targets.contains(&c.origin)
            && let Some(f) = r.cities.get_mut(&c.origin)
        {
            f.local += 1;
        }
        for (id, target) in units {
            if everything
                .get(&id)
                .is_some_and(|t| t.status == TicketStatus::Merged as i32)
            {
                r.tickets.merged += 1;
                if let Some(f) = r.cities.get_mut(&c.origin) {
                    f.merged += 1;
                }
                continue;
            }
            r.tickets.dispatched += 1;
            expected.insert(id.clone());
            if let Some(f) = r.cities.get_mut(&c.origin) {
                f.sent += 1;
                *f.by_category.entry(c.category.clone()).or_default() += 1;
            }
            flow.entry((c.origin.clone(), target.clone(), c.category.clone()))
                .or_default()
                .0 += 1;
            let at_target = received.get(&target).is_some_and(|m| m.contains_key(&id));
            let owner_ok = match assigned.get(&id) {
                Some(owner) => {
                    r.tickets.reassigned += 1;
                    received.get(owner).is_some_and(|m| m.contains_key(&id))
                }
                None => true,
            };
            if at_target {
                r.tickets.delivered += 1;
            }
            if !at_target || !owner_ok {
                r.tickets.lost += 1;
                let should = if at_target {
                    assigned.get(&id).cloned().unwrap_or_default()
                } else {
                    target.clone()
                };
                r.suspects.lost.push((id.clone(), should));
                if r.problems.len() < 20 {
                    r.problems.push(format!("lost: {id} (to {target})"));
                }
            }
            if let Some(t) = everything.get(&id) {
                Handled::count(t, &mut r.cities);
                match TicketStatus::try_from(t.status) {
                    Ok(TicketStatus::Resolved) => r.tickets.resolved += 1,
                    Ok(TicketStatus::Closed) => {
                        r.tickets.resolved += 1;
                        r.tickets.closed += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    for (city, tickets) in &received {
        let mut requests: HashMap<&str, u64> = HashMap::new();
        for t in tickets.values() {
            if let Some(f) = r.cities.get_mut(city) {
                f.received += 1;
                *f.received_by_category
                    .entry(t.category.clone())
                    .or_default() += 1;
            }
            if !expected.contains(&t.id) {
                r.tickets.duplicated += 1;
                r.suspects.duplicated.push((
                    city.clone(),
                    t.id.clone(),
                    "held, and no city acknowledged creating it".into(),
                ));
                if r.problems.len() < 20 {
                    r.problems
                        .push(format!("unknown ticket at {city}: {}", t.id));
                }
            }
            // Parts of one request carry its request id, one per city.
            *requests.entry(t.request_id.as_str()).or_default() += 1;
        }
        for (request, n) in requests {
            if n > 1 && !request.is_empty() {
                r.tickets.duplicated += n - 1;
                for t in tickets.values().filter(|t| t.request_id == request) {
                    r.suspects.duplicated.push((
                        city.clone(),
                        t.id.clone(),
                        format!("one of {n} tickets held for one request"),
                    ));
                }
                if r.problems.len() < 20 {
                    r.problems
                        .push(format!("request {request} held {n} times at {city}"));
                }
            }
        }
    }
    r.tickets.rejected = assigned.len() as u64
        + everything
            .values()
            .filter(|t| t.status == TicketStatus::InCoordination as i32)
            .count() as u64;

    let unconfirmed = count_transfers(started, nodes, &mut r).await?;
    let mut maybe: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for s in started {
        let key = (s.origin.clone(), s.target.clone(), s.category.clone());
        if unconfirmed.contains(&s.id) {
            *maybe.entry(key.clone()).or_default() += 1;
            flow.entry(key).or_default();
        } else {
            flow.entry(key).or_default().1 += 1;
        }
    }

    let stats_problems_from = r.problems.len();
    let stats = observatory
        .get_city_stats(GetCityStatsRequest::default())
        .await?
        .into_inner()
        .cities
        .into_iter()
        .map(|s| baseline.since(s))
        .collect::<Vec<_>>();
    r.gateway_stats_agree = true;
    let matrix = observatory
        .get_flow_matrix(GetFlowMatrixRequest::default())
        .await?
        .into_inner()
        .cells;
    let gateway_flow: FlowRecount = matrix
        .into_iter()
        .filter_map(|c| {
            let key = (c.origin_city, c.target_city, c.category);
            let (t0, x0) = baseline.flow.get(&key).copied().unwrap_or_default();
            let grown = (c.tickets.saturating_sub(t0), c.transfers.saturating_sub(x0));
            (grown != (0, 0)).then_some((key, grown))
        })
        .collect();
    // Tickets exactly; transfers between what surely reached the gateway
    // and that plus what may have.
    let fits = |key: &(String, String, String), mine: (u64, u64), theirs: (u64, u64)| {
        let extra = maybe.get(key).copied().unwrap_or(0);
        theirs.0 == mine.0 && mine.1 <= theirs.1 && theirs.1 <= mine.1 + extra
    };
    let flow_fits = flow.len() >= gateway_flow.len()
        && flow
            .iter()
            .all(|(k, mine)| fits(k, *mine, gateway_flow.get(k).copied().unwrap_or_default()));
    if !flow_fits {
        r.gateway_stats_agree = false;
        for (key, mine) in &flow {
            let theirs = gateway_flow.get(key).copied().unwrap_or_default();
            if !fits(key, *mine, theirs) && r.problems.len() < 20 {
                r.problems.push(format!(
                    "flow {} → {} in {}: the gateway counts {theirs:?} (tickets, transfers), the record {mine:?}",
                    key.0, key.1, key.2
                ));
            }
        }
        if let Some(extra) = gateway_flow.keys().find(|k| !flow.contains_key(*k)) {
            r.problems
                .push(format!("flow {extra:?}: counted by the gateway only"));
        }
    }
    for s in &stats {
        let (out, into, out_maybe, in_maybe) = r
            .cities
            .get(&s.city)
            .map(|f| {
                (
                    f.transfers_out,
                    f.transfers_in,
                    f.transfers_out_unconfirmed,
                    f.transfers_in_unconfirmed,
                )
            })
            .unwrap_or_default();
        let within = |theirs: u64, all: u64, maybe: u64| all - maybe <= theirs && theirs <= all;
        if !within(s.transfers_out, out, out_maybe) || !within(s.transfers_in, into, in_maybe) {
            r.gateway_stats_agree = false;
            r.problems.push(format!(
                "{}: the gateway counts {} transfers out and {} in; the desks started {out} out ({out_maybe} unconfirmed) and {into} in ({in_maybe} unconfirmed)",
                s.city, s.transfers_out, s.transfers_in
            ));
        }
        let (sent, received) = r
            .cities
            .get(&s.city)
            .map(|f| (f.sent, f.received))
            .unwrap_or_default();
        let handled = r
            .cities
            .get(&s.city)
            .map(|f| f.handled.clone())
            .unwrap_or_default();
        if handled != Handled::of_stats(s) {
            r.gateway_stats_agree = false;
            r.problems.push(format!(
                "{}: the gateway counts {:?}; the histories hold {handled:?}",
                s.city,
                Handled::of_stats(s)
            ));
        }
        let merged = r.cities.get(&s.city).map(|f| f.merged).unwrap_or_default();
        if merged != s.merged {
            r.gateway_stats_agree = false;
            r.problems.push(format!(
                "{}: the gateway counts {} reports merged; the stores hold {merged}",
                s.city, s.merged
            ));
        }
        if sent != s.sent || received != s.received {
            r.gateway_stats_agree = false;
            r.problems.push(format!(
                "{}: the gateway counts {} sent and {} received; the stores hold {sent} sent and {received} received",
                s.city, s.sent, s.received
            ));
        }
    }
    r.suspects.statistics = r.problems[stats_problems_from..].to_vec();
    Ok(r)
}

/// How long past its deadline a transfer may take to be seen ended (the
/// nodes' own sweep allows three seconds past the gateway's).
pub const STUCK_GRACE_MS: i64 = 5_000;

/// Counts the transfers the desks started from what the nodes hold: the
/// origin's view decides (the target's when the origin's node died with
/// it); the target's, where it has one, should agree. Returns the ids not
/// known to have reached the gateway.
async fn count_transfers(
    started: &[Started],
    nodes: &BTreeMap<String, Channel>,
    r: &mut Report,
) -> anyhow::Result<std::collections::HashSet<String>> {
    let now = hotline_proto::time::now_ms();
    let mut unconfirmed = std::collections::HashSet::new();
    let seen = views(nodes, started).await?;
    for (s, (at_origin, at_target)) in started.iter().zip(seen) {
        r.transfers.started += 1;
        if let Some(f) = r.cities.get_mut(&s.origin) {
            f.transfers_out += 1;
        }
        if let Some(f) = r.cities.get_mut(&s.target) {
            f.transfers_in += 1;
        }
        // The gateway relayed it if the target heard of it, or if the
        // gateway itself ended it (the target unreachable, a city's link
        // lost: reasons only the gateway gives).
        let by_gateway = |t: &Transfer| {
            t.reason == "target-unreachable"
                || (t.reason.ends_with("-lost")
                    && t.reason != "gateway-lost"
                    && t.reason != "console-lost")
        };
        let confirmed = at_target.is_some() || at_origin.as_ref().is_some_and(by_gateway);
        if !confirmed {
            unconfirmed.insert(s.id.clone());
            r.transfers.unconfirmed += 1;
            if let Some(f) = r.cities.get_mut(&s.origin) {
                f.transfers_out_unconfirmed += 1;
            }
            if let Some(f) = r.cities.get_mut(&s.target) {
                f.transfers_in_unconfirmed += 1;
            }
        }
        let Some(view) = at_origin.clone().or_else(|| at_target.clone()) else {
            r.transfers.lost_with_origin += 1;
            *r.transfers
                .failed_by_reason
                .entry("lost-with-origin".into())
                .or_default() += 1;
            continue;
        };
        let state = TransferState::try_from(view.state).unwrap_or_default();
        if !hotline_proto::transfer::is_terminal(state) {
            let deadline = view
                .deadline
                .as_ref()
                .map(hotline_proto::time::to_unix_ms)
                .unwrap_or(i64::MAX);
            let answered = matches!(state, TransferState::Answered | TransferState::Conferenced);
            if !answered && now > deadline.saturating_add(STUCK_GRACE_MS) {
                r.transfers.stuck += 1;
                let side = if at_origin.is_some() {
                    &s.origin
                } else {
                    &s.target
                };
                r.suspects.stuck.push((
                    s.id.clone(),
                    format!(
                        "still {state:?} at {side}, {} ms past its deadline",
                        now - deadline
                    ),
                ));
                if r.problems.len() < 20 {
                    r.problems.push(format!(
                        "transfer {} stuck in {:?} past its deadline",
                        s.id, state
                    ));
                }
            } else {
                r.transfers.live += 1;
            }
            continue;
        }
        if state == TransferState::Completed {
            r.transfers.completed += 1;
        } else {
            let reason = if view.reason.is_empty() {
                hotline_proto::transfer::state_key(state).to_lowercase()
            } else {
                view.reason.clone()
            };
            *r.transfers.failed_by_reason.entry(reason).or_default() += 1;
        }
        if !view.ticket_id.is_empty() {
            r.transfers.converted_to_tickets += 1;
        }
        if let (Some(o), Some(t)) = (&at_origin, &at_target)
            && hotline_proto::transfer::is_terminal(
                TransferState::try_from(t.state).unwrap_or_default(),
            )
            && t.state != o.state
        {
            r.transfers.disagreements += 1;
            r.suspects.disagreeing.push((
                s.id.clone(),
                format!(
                    "ended {:?} at {} but {:?} at {}",
                    state,
                    s.origin,
                    TransferState::try_from(t.state).unwrap_or_default(),
                    s.target
                ),
            ));
        }
    }
    Ok(unconfirmed)
}

/// Each transfer as its origin and its target hold it, asked 64 at a time.
async fn views(
    nodes: &BTreeMap<String, Channel>,
    started: &[Started],
) -> anyhow::Result<Vec<(Option<Transfer>, Option<Transfer>)>> {
    let mut out = Vec::with_capacity(started.len());
    for chunk in started.chunks(64) {
        let mut asking = tokio::task::JoinSet::new();
        for (i, s) in chunk.iter().enumerate() {
            let (nodes, s) = (nodes.clone(), s.clone());
            asking.spawn(async move {
                let origin = transfer_at(&nodes, &s.origin, &s.id).await;
                let target = transfer_at(&nodes, &s.target, &s.id).await;
                (i, origin, target)
            });
        }
        let mut got = vec![(None, None); chunk.len()];
        while let Some(answer) = asking.join_next().await {
            let (i, origin, target) = answer?;
            got[i] = (origin?, target?);
        }
        out.extend(got);
    }
    Ok(out)
}

/// A transfer as `city`'s node holds it, or `None` when it knows none.
pub async fn transfer_at(
    nodes: &BTreeMap<String, Channel>,
    city: &str,
    id: &str,
) -> anyhow::Result<Option<Transfer>> {
    let Some(channel) = nodes.get(city) else {
        return Ok(None);
    };
    match CityHotlineClient::new(channel.clone())
        .get_transfer(GetTransferRequest {
            transfer_id: id.to_owned(),
        })
        .await
    {
        Ok(r) => Ok(r.into_inner().transfer),
        Err(e) if e.code() == tonic::Code::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The per-city table a person reads at the end.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "{:<10} {:>7} {:>9} {:>7} {:>9} {:>9}  {}\n",
        "city", "sent", "received", "local", "calls out", "calls in", "top category"
    );
    for (city, f) in &r.cities {
        let top = f
            .by_category
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(c, n)| format!("{c} ({n})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{city:<10} {:>7} {:>9} {:>7} {:>9} {:>9}  {top}\n",
            f.sent, f.received, f.local, f.transfers_out, f.transfers_in
        ));
    }
    let t = &r.tickets;
    // Requests are counted once; what is dispatched, once per target city
    // (a request for several cities is a part for each), less the reports
    // merged into a ticket already open about the same matter.
    out.push_str(&format!(
        "\nrequests {}: for one other city {}, for several cities {}, for the city itself {} (handled there, never dispatched)\n\
         dispatched {} (one per target city of each cross-city request), merged into an open ticket of the same matter {} (not dispatched); \
         delivered {} of the {} dispatched\n\
         resolved {}, closed {}; rejected to coordination {}, reassigned {}; lost {}, duplicated {}; gateway statistics {}\n",
        t.created,
        t.cross_city.saturating_sub(t.multi_city),
        t.multi_city,
        t.local,
        t.dispatched,
        t.merged,
        t.delivered,
        t.dispatched,
        t.resolved,
        t.closed,
        t.rejected,
        t.reassigned,
        t.lost,
        t.duplicated,
        if r.gateway_stats_agree { "agree" } else { "DISAGREE" }
    ));
    let c = &r.transfers;
    let failed: Vec<String> = c
        .failed_by_reason
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    out.push_str(&format!(
        "transfers started {}, completed {}, ended otherwise {} ({}); converted to tickets {}; stuck {}\n",
        c.started,
        c.completed,
        c.failed_by_reason.values().sum::<u64>(),
        failed.join(", "),
        c.converted_to_tickets,
        c.stuck
    ));
    if c.disagreements + c.unconfirmed + c.lost_with_origin > 0 {
        out.push_str(&format!(
            "transfers under faults: ended differently at the two cities {}, not known to have reached the gateway {}, lost with their origin's node {}\n",
            c.disagreements, c.unconfirmed, c.lost_with_origin
        ));
    }
    out
}

/// Channels to every node, by city.
pub fn channels(
    pki: &crate::pki::Pki,
    nodes: &BTreeMap<String, SocketAddr>,
) -> anyhow::Result<BTreeMap<String, Channel>> {
    nodes
        .iter()
        .map(|(c, a)| Ok((c.clone(), pki.node_channel(*a, c)?)))
        .collect()
}
