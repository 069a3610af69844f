//! The workload of a scenario, drawn in full from its seed before the run
//! starts: every request and every call transfer of every city, with the
//! simulated time it arrives. The same scenario and seed give the same
//! plan, request for request; [`Plan::digest`] fingerprints it.
//!
//! Arrivals follow a Poisson process whose rate follows the scenario's
//! hourly curve (drawn by thinning). Transfers arrive at `per_dispatched`
//! times the rate of cross-city tickets, so the two stand in the
//! scenario's ratio.

use std::collections::BTreeMap;

use hotline_proto::Catalogue;
use hotline_proto::pb::{CallContext, Citizen, Priority, Ticket, TransferMode};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::matters::Matter;
use crate::scenario::{self, Scenario};
use crate::workload::{GIVEN, KINDS, SURNAMES, subject};

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTransfer {
    pub target: String,
    pub category: String,
    pub mode: TransferMode,
    /// The desk cancels it before an answer.
    pub cancel: bool,
    pub context: CallContext,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    /// A draft for `CreateTicket`; its request id is unique within the plan.
    Ticket(Box<Ticket>),
    Transfer(Box<PlannedTransfer>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Simulated milliseconds from the start.
    pub at_ms: u64,
    pub arrival: Arrival,
}

/// What a plan holds, in figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanFigures {
    pub requests: u64,
    /// Requests that arrive again on another channel.
    pub repeats: u64,
    pub local: u64,
    pub cross_city: u64,
    pub multi_city: u64,
    pub urgent: u64,
    pub transfers: u64,
    /// Transfers per cross-city ticket.
    pub transfers_per_dispatched: f64,
    pub digest: String,
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Each city's arrivals, in time order.
    pub cities: BTreeMap<String, Vec<Planned>>,
}

fn weighted<'a>(rng: &mut StdRng, items: &'a [(String, f64)]) -> &'a str {
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
    for (item, w) in items {
        if x < *w {
            return item;
        }
        x -= w;
    }
    items.last().map(|(i, _)| i.as_str()).unwrap_or_default()
}

/// Arrival times (simulated ms) of a Poisson process of `per_hour` at the
/// busiest hour, shaped by `curve`, over `minutes` from `start_hour`.
fn arrivals(
    rng: &mut StdRng,
    per_hour: f64,
    curve: &[f64],
    start_hour: u32,
    minutes: f64,
) -> Vec<u64> {
    let peak = curve.iter().copied().fold(0.0, f64::max);
    let mut out = Vec::new();
    if per_hour <= 0.0 || peak <= 0.0 {
        return out;
    }
    let rate_ms = per_hour * peak / 3_600_000.0;
    let end = minutes * 60_000.0;
    let mut t = 0.0;
    loop {
        let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
        t += -u.ln() / rate_ms;
        if t >= end {
            return out;
        }
        let hour = (start_hour as usize + (t / 3_600_000.0) as usize) % 24;
        let factor = curve.get(hour).copied().unwrap_or(0.0);
        if rng.random_range(0.0..1.0) < factor / peak {
            out.push(t as u64);
        }
    }
}

impl Plan {
    pub fn new(s: &Scenario, catalogue: &Catalogue, seed: u64) -> Self {
        let categories: Vec<(String, f64)> = catalogue
            .category_ids()
            .map(|c| {
                let w = s.tickets.category_weight.get(c).copied().unwrap_or(1.0);
                (c.to_owned(), w)
            })
            .collect();
        let channels: Vec<(String, f64)> = s
            .channels
            .weights
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let modes: Vec<(String, f64)> = s
            .transfers
            .modes
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let city_ids: Vec<String> = catalogue.city_ids().map(str::to_owned).collect();
        let mut cities = BTreeMap::new();
        for (index, city) in city_ids.iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(
                seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(index as u64 + 1),
            );
            let others: Vec<&String> = city_ids.iter().filter(|c| *c != city).collect();
            let weight = s.tickets.city_weight.get(city).copied().unwrap_or(1.0);
            let per_hour = s.tickets.per_hour * weight;
            let mut planned = Vec::new();
            // The words of the requests come from a generator of their own,
            // so the draws of everything else stay as they were. Every fresh
            // request is a matter at a house number of its own.
            let mut words = StdRng::seed_from_u64(
                seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
                    .wrapping_add(index as u64 + 1),
            );
            let mut next_number = (index as u32 + 1) * 1_000_000;
            let mut fresh = |words: &mut StdRng| {
                next_number += 1;
                Matter::numbered(words, next_number)
            };
            let v = &s.supervision;
            let run_ms = (s.duration_minutes * 60_000.0) as u64;
            let times = arrivals(
                &mut rng,
                per_hour,
                &s.tickets.hourly_curve,
                s.start_hour,
                s.duration_minutes,
            );
            for (n, at_ms) in times.into_iter().enumerate() {
                let category = weighted(&mut rng, &categories).to_owned();
                let roll: f64 = rng.random_range(0.0..1.0);
                let targets: Vec<String> = if roll < s.tickets.local_share {
                    vec![city.clone()]
                } else if roll < s.tickets.local_share + s.tickets.multi_city_share
                    && others.len() >= 2
                {
                    let mut picked = others.clone();
                    let keep = rng.random_range(2..=picked.len().min(3));
                    for i in 0..keep {
                        let j = rng.random_range(i..picked.len());
                        picked.swap(i, j);
                    }
                    picked.truncate(keep);
                    picked.into_iter().cloned().collect()
                } else {
                    vec![others[rng.random_range(0..others.len())].clone()]
                };
                let urgent = rng.random_range(0.0..1.0) < s.tickets.urgent_share;
                let channel = weighted(&mut rng, &channels).to_owned();
                let citizen = Citizen {
                    name: format!(
                        "{}{}",
                        SURNAMES[rng.random_range(0..SURNAMES.len())],
                        GIVEN[rng.random_range(0..GIVEN.len())]
                    ),
                    phone: format!(
                        "1{}{:09}",
                        rng.random_range(3..=9),
                        rng.random_range(0..1_000_000_000u64)
                    ),
                };
                let matter = fresh(&mut words);
                let told = matter.told();
                let draft = Ticket {
                    target_cities: targets,
                    subject: told.subject,
                    description: told.description,
                    location: told.place,
                    kind: KINDS[rng.random_range(0..KINDS.len())] as i32,
                    channel: scenario::channel_of(&channel)
                        .map(|c| c as i32)
                        .unwrap_or(1),
                    priority: if urgent {
                        Priority::Urgent
                    } else {
                        Priority::Normal
                    } as i32,
                    citizen: Some(citizen),
                    request_id: format!("{city}-{n}"),
                    category,
                    ..Default::default()
                };
                if rng.random_range(0.0..1.0) < s.channels.repeat_share {
                    // The same citizen and matter again, on another channel
                    // where there is one, 2 to 30 simulated minutes later.
                    let other: Vec<(String, f64)> = channels
                        .iter()
                        .filter(|(c, _)| *c != channel)
                        .cloned()
                        .collect();
                    let again = if other.iter().any(|(_, w)| *w > 0.0) {
                        weighted(&mut rng, &other).to_owned()
                    } else {
                        channel.clone()
                    };
                    let mut repeat = draft.clone();
                    repeat.channel = scenario::channel_of(&again).map(|c| c as i32).unwrap_or(1);
                    repeat.request_id = format!("{city}-{n}-again");
                    let told = matter.reposted(&mut words);
                    repeat.subject = told.subject;
                    repeat.description = told.description;
                    repeat.location = told.place;
                    planned.push(Planned {
                        at_ms: at_ms + rng.random_range(120_000..1_800_000),
                        arrival: Arrival::Ticket(Box::new(repeat)),
                    });
                }
                let single_cross =
                    draft.target_cities.len() == 1 && draft.target_cities[0] != *city;
                if single_cross && words.random_bool(v.cluster_share) {
                    // 多人一诉: other citizens report the same matter.
                    for j in 1..words.random_range(2..=v.cluster_max_citizens) {
                        let mut other = draft.clone();
                        let told = matter.reposted(&mut words);
                        other.subject = told.subject;
                        other.description = told.description;
                        other.location = told.place;
                        other.channel = scenario::channel_of(weighted(&mut rng, &channels))
                            .map(|c| c as i32)
                            .unwrap_or(1);
                        other.citizen = Some(Citizen {
                            name: "市民".into(),
                            phone: format!("137{:08}", words.random_range(0..100_000_000u64)),
                        });
                        other.request_id = format!("{city}-{n}-cluster-{j}");
                        planned.push(Planned {
                            at_ms: at_ms + words.random_range(300_000..3_600_000),
                            arrival: Arrival::Ticket(Box::new(other)),
                        });
                    }
                }
                if words.random_bool(v.repeat_caller_share) {
                    // 一人多诉: the same citizen files other requests later.
                    for j in 1..words.random_range(2..=v.repeat_caller_max_requests) {
                        let mut more = draft.clone();
                        let told = fresh(&mut words).told();
                        more.subject = told.subject;
                        more.description = told.description;
                        more.location = told.place;
                        more.target_cities =
                            vec![others[words.random_range(0..others.len())].clone()];
                        more.request_id = format!("{city}-{n}-caller-{j}");
                        let later = words.random_range(600_000..run_ms.max(600_001));
                        planned.push(Planned {
                            at_ms: (at_ms + later).min(run_ms.saturating_sub(1)),
                            arrival: Arrival::Ticket(Box::new(more)),
                        });
                    }
                }
                planned.push(Planned {
                    at_ms,
                    arrival: Arrival::Ticket(Box::new(draft)),
                });
            }
            // Transfers: per cross-city ticket (repeats included), the
            // scenario's share.
            let x = &s.transfers;
            let cross = (1.0 - s.tickets.local_share) * (1.0 + s.channels.repeat_share);
            let times = arrivals(
                &mut rng,
                per_hour * cross * x.per_dispatched,
                &s.tickets.hourly_curve,
                s.start_hour,
                s.duration_minutes,
            );
            for (n, at_ms) in times.into_iter().enumerate() {
                let target = others[rng.random_range(0..others.len())].clone();
                let category = weighted(&mut rng, &categories).to_owned();
                let mode =
                    scenario::mode_of(weighted(&mut rng, &modes)).unwrap_or(TransferMode::Blind);
                let cancel = rng.random_range(0.0..1.0) < x.cancel;
                let context = CallContext {
                    caller_ref: format!("{city}-call-{n}"),
                    summary: format!("来电咨询{}，需{target}办理", subject(&category)),
                    caller: Some(Citizen {
                        name: format!("{}先生", SURNAMES[rng.random_range(0..SURNAMES.len())]),
                        phone: format!("139{:08}", rng.random_range(0..100_000_000u64)),
                    }),
                };
                planned.push(Planned {
                    at_ms,
                    arrival: Arrival::Transfer(Box::new(PlannedTransfer {
                        target,
                        category,
                        mode,
                        cancel,
                        context,
                    })),
                });
            }
            planned.sort_by_key(|p| p.at_ms);
            cities.insert(city.clone(), planned);
        }
        Self { cities }
    }

    /// A fingerprint of every arrival (FNV-1a over the encoded requests):
    /// equal for equal plans.
    pub fn digest(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (city, planned) in &self.cities {
            feed(city.as_bytes());
            for p in planned {
                feed(&p.at_ms.to_le_bytes());
                match &p.arrival {
                    Arrival::Ticket(t) => feed(&t.encode_to_vec()),
                    Arrival::Transfer(x) => {
                        feed(x.target.as_bytes());
                        feed(x.category.as_bytes());
                        feed(&(x.mode as i32).to_le_bytes());
                        feed(&[u8::from(x.cancel)]);
                        feed(&x.context.encode_to_vec());
                    }
                }
            }
        }
        format!("{h:016x}")
    }

    pub fn figures(&self) -> PlanFigures {
        let mut f = PlanFigures::default();
        for (city, planned) in &self.cities {
            for p in planned {
                match &p.arrival {
                    Arrival::Ticket(t) => {
                        f.requests += 1;
                        if t.request_id.ends_with("-again") {
                            f.repeats += 1;
                        }
                        if t.target_cities.iter().all(|c| c == city) {
                            f.local += 1;
                        } else {
                            f.cross_city += 1;
                        }
                        if t.target_cities.len() > 1 {
                            f.multi_city += 1;
                        }
                        if t.priority == Priority::Urgent as i32 {
                            f.urgent += 1;
                        }
                    }
                    Arrival::Transfer(_) => f.transfers += 1,
                }
            }
        }
        f.transfers_per_dispatched = if f.cross_city == 0 {
            0.0
        } else {
            f.transfers as f64 / f.cross_city as f64
        };
        f.digest = self.digest();
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_plan_and_another_seed_another() {
        let s = Scenario::load("south-sichuan").unwrap();
        let c = s.catalogue().unwrap();
        let a = Plan::new(&s, &c, 1);
        let b = Plan::new(&s, &c, 1);
        let other = Plan::new(&s, &c, 2);
        assert_eq!(a.cities, b.cities);
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), other.digest());
        for (city, planned) in &a.cities {
            assert!(planned.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
            for p in planned {
                if let Arrival::Ticket(t) = &p.arrival {
                    hotline_proto::validate::new_ticket(t, city, &c)
                        .unwrap_or_else(|e| panic!("{}: {e:?}", t.request_id));
                }
            }
        }
    }

    #[test]
    fn south_sichuan_stands_in_the_seeds_ratio_of_transfers_to_tickets() {
        let s = Scenario::load("south-sichuan").unwrap();
        let c = s.catalogue().unwrap();
        // Many seeds' worth of days, so the ratio is the rate's, not luck's.
        let (mut transfers, mut cross) = (0u64, 0u64);
        for seed in 0..20 {
            let f = Plan::new(&s, &c, seed).figures();
            transfers += f.transfers;
            cross += f.cross_city;
        }
        let ratio = transfers as f64 / cross as f64;
        let seed_ratio = 4521.0 / 2560.0;
        assert!(
            (ratio - seed_ratio).abs() / seed_ratio < 0.05,
            "{transfers} transfers to {cross} cross-city tickets: {ratio:.3}, the seed's {seed_ratio:.3}"
        );
    }

    #[test]
    fn the_hourly_curve_shapes_the_day() {
        let s = Scenario::load("south-sichuan").unwrap();
        let c = s.catalogue().unwrap();
        let plan = Plan::new(&s, &c, 3);
        let mut per_hour = [0u64; 24];
        for planned in plan.cities.values() {
            for p in planned {
                per_hour[(s.start_hour as usize + (p.at_ms / 3_600_000) as usize) % 24] += 1;
            }
        }
        // 3 a.m. (0.02) is far quieter than 10 a.m. (1.0).
        assert!(per_hour[3] * 10 < per_hour[10], "{per_hour:?}");
    }
}
