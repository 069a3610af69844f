//! `simulator bench-supervision`: what the merge check and the escalation
//! rules cost per ticket at the gateway, with millions of tickets in the
//! ledger.
//!
//! The ledger is filled to `--tickets`:
//! - The tickets of the past year are written straight into their tables
//!   (`tickets`, and the matters and monthly counts that `GetTopMatters`
//!   reads), as closed tickets, many thousands per transaction. Their
//!   events are not written: no check reads another ticket's events.
//! - The last 30 days (the rules' longest window), at the year's rate, go
//!   through the supervision's own `record`. The window of recent reports
//!   and its buckets are then the size they would be.
//!
//! Then `--samples` new reports go through the gateway's whole dispatch
//! transaction (`Ledger::dispatch`), one at a time. A third of them retell a
//! recent matter, which merges; the rest are fresh. Each sample's checks (the
//! bucket lookups and candidate comparisons, the matter's and the citizen's
//! recent reports) are also timed alone, in a read just before it. A ledger
//! kept with `--data-dir` is reused.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use gateway::ledger::Ledger;
use gateway::supervision::{self, Policy};
use hotline_durable::sql::params;
use hotline_proto::ids::TicketId;
use hotline_proto::pb::{Citizen, EventKind, Ticket, TicketKind, TicketStatus};
use hotline_proto::{Catalogue, time};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::bench::percentile;
use crate::matters::Matter;

#[derive(Debug, Clone)]
pub struct Options {
    pub tickets: u64,
    pub samples: usize,
    pub data_dir: Option<PathBuf>,
    pub report: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize)]
pub struct Figures {
    pub tickets_in_ledger: u64,
    /// Reports in the window of the rules (the last 30 days).
    pub recent_reports: u64,
    pub fill_secs: f64,
    pub ledger_bytes: u64,
    pub samples: usize,
    pub merged: usize,
    /// The checks alone, per report (µs).
    pub checks_p50_us: u64,
    pub checks_p99_us: u64,
    pub checks_mean_us: f64,
    /// The whole dispatch transaction, checks included, per report (µs).
    pub dispatch_p50_us: u64,
    pub dispatch_p99_us: u64,
    pub dispatch_mean_us: f64,
}

const DAY_MS: i64 = 86_400_000;
const BATCH: u64 = 50_000;

fn draft(
    rng: &mut StdRng,
    cities: &[String],
    categories: &[String],
    told: crate::matters::Told,
) -> Ticket {
    let origin = cities[rng.random_range(0..cities.len())].clone();
    let mut target = cities[rng.random_range(0..cities.len())].clone();
    if target == origin {
        target = cities[(cities.iter().position(|c| *c == origin).unwrap_or(0) + 1) % cities.len()]
            .clone();
    }
    Ticket {
        id: TicketId::new(&origin).to_string(),
        origin_city: origin,
        target_cities: vec![target],
        category: categories[rng.random_range(0..categories.len())].clone(),
        kind: TicketKind::Complaint as i32,
        channel: rng.random_range(1..=7),
        subject: told.subject,
        description: told.description,
        location: told.place,
        citizen: Some(Citizen {
            name: String::new(),
            phone: format!("139{:08}", rng.random_range(0..100_000_000u64)),
        }),
        ..Default::default()
    }
}

/// Writes a ticket's row as it stands in `status`; returns its target and
/// creation time.
fn write_ticket(
    c: &hotline_durable::sql::Connection,
    t: &Ticket,
    status: TicketStatus,
    now: i64,
) -> Result<(String, i64), gateway::GatewayError> {
    let created = t.create_time.as_ref().map(time::to_unix_ms).unwrap_or(now);
    let target = t.target_cities.first().cloned().unwrap_or_default();
    c.prepare_cached(
        "INSERT INTO tickets (id, origin, handler, category, urgent, status, seq, body, created_ms, updated_ms, kind)
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?8, ?8, ?9)",
    )?
    .execute(params![
        t.id,
        t.origin_city,
        target,
        t.category,
        status as i32,
        if status == TicketStatus::Closed { 6 } else { 2 },
        t.encode_to_vec(),
        created,
        t.kind
    ])?;
    Ok((target, created))
}

async fn count(ledger: &Ledger, table: &'static str) -> anyhow::Result<u64> {
    let n: i64 = ledger
        .db()
        .read(move |c| {
            c.query_row(&format!("SELECT count(*) FROM {table}"), (), |r| r.get(0))
                .map_err(gateway::GatewayError::from)
        })
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub async fn run(o: Options) -> anyhow::Result<Figures> {
    let temp = tempfile::tempdir()?;
    let dir = o.data_dir.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("gateway.db");
    let catalogue = Catalogue::default();
    let policy = Policy::default();
    let ledger = Ledger::open(&db, Arc::new(catalogue.clone()), policy.clone())?;
    let cities: Vec<String> = catalogue.city_ids().map(str::to_owned).collect();
    let categories: Vec<String> = catalogue.category_ids().map(str::to_owned).collect();
    let mut rng = StdRng::seed_from_u64(7);
    let now = time::now_ms();
    // A province's year: the recent window holds 30 days of it.
    let recent_target = o.tickets * 30 / 365;
    let mut f = Figures::default();
    let started = Instant::now();

    // The past year, straight into the tables.
    let mut have = count(&ledger, "tickets").await?;
    let old_target = o.tickets.saturating_sub(recent_target);
    let mut number = 10_000_000 + have as u32;
    while have < old_target {
        let n = BATCH.min(old_target - have);
        let mut rows = Vec::with_capacity(n as usize);
        for i in 0..n {
            number += 1;
            let matter = Matter::numbered(&mut rng, number);
            let mut t = draft(&mut rng, &cities, &categories, matter.told());
            let age = 31 * DAY_MS + ((have + i) as i64 * 7_919) % (334 * DAY_MS);
            t.create_time = Some(time::from_unix_ms(now - age));
            rows.push(t);
        }
        ledger
            .db()
            .write(move |c| {
                let mut matter = c.prepare_cached(
                    "INSERT INTO matters (root, category, handler, subject, place) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                let mut month = c.prepare_cached(
                    "INSERT INTO matter_months (month, city, root, n) VALUES (?1, ?2, ?3, 1)
                     ON CONFLICT (month, city, root) DO UPDATE SET n = n + 1",
                )?;
                for t in rows {
                    let (target, created) = write_ticket(c, &t, TicketStatus::Closed, now)?;
                    matter.execute(params![t.id, t.category, target, t.subject, t.location])?;
                    let m = gateway::windows::month_of(created);
                    month.execute(params![m, target, t.id])?;
                    month.execute(params![m, "", t.id])?;
                }
                Ok::<_, gateway::GatewayError>(())
            })
            .await?;
        have += n;
        println!(
            "[{:5.1}%] {have} tickets of the past year written, {:.0} s",
            100.0 * have as f64 / o.tickets.max(1) as f64,
            started.elapsed().as_secs_f64()
        );
    }
    // The last 30 days, through the supervision's own bookkeeping.
    let mut recent = count(&ledger, "recent").await?;
    while recent < recent_target {
        let n = 10_000.min(recent_target - recent);
        let mut rows = Vec::with_capacity(n as usize);
        for i in 0..n {
            number += 1;
            let matter = Matter::numbered(&mut rng, number);
            let mut t = draft(&mut rng, &cities, &categories, matter.told());
            let age = ((recent + i) as i64 * 104_729) % (30 * DAY_MS);
            t.create_time = Some(time::from_unix_ms(now - age - 60_000));
            rows.push(t);
        }
        ledger
            .write(move |w| {
                for t in rows {
                    let (target, created) = write_ticket(w.c, &t, TicketStatus::Dispatched, now)?;
                    let phone = t.citizen.as_ref().map(|c| c.phone.as_str()).unwrap_or("");
                    let citizen = supervision::citizen_key(w, phone, &t.id)?;
                    let fp = gateway::matter::fingerprint(&t.subject, &t.description, &t.location);
                    supervision::record(
                        w,
                        &supervision::Report {
                            ticket_id: &t.id,
                            target: &target,
                            category: &t.category,
                            created_ms: created,
                            fingerprint: &fp,
                            root: &t.id,
                            merged_into: None,
                            citizen: &citizen,
                        },
                        &target,
                        &t.subject,
                        &t.location,
                    )?;
                }
                Ok::<_, gateway::GatewayError>(())
            })
            .await?;
        recent += n;
        println!(
            "[{:5.1}%] {recent} reports of the last 30 days filed, {:.0} s",
            100.0 * recent as f64 / recent_target.max(1) as f64,
            started.elapsed().as_secs_f64()
        );
    }
    f.fill_secs = started.elapsed().as_secs_f64();
    f.tickets_in_ledger = count(&ledger, "tickets").await?;
    f.recent_reports = count(&ledger, "recent").await?;

    // Samples: a third retell a recent matter (the newest, so its ticket is
    // open and within the merge window), the rest are fresh.
    let mut checks = Vec::with_capacity(o.samples);
    let mut dispatches = Vec::with_capacity(o.samples);
    let mut last: Vec<(Matter, Ticket)> = Vec::new();
    for i in 0..o.samples {
        let t = if i % 3 == 2 && !last.is_empty() {
            let (m, first) = &last[rng.random_range(0..last.len())];
            let told = m.retold(&mut rng);
            let mut t = draft(&mut rng, &cities, &categories, told);
            t.target_cities = first.target_cities.clone();
            t.category = first.category.clone();
            t
        } else {
            number += 1;
            let m = Matter::numbered(&mut rng, number);
            let t = draft(&mut rng, &cities, &categories, m.told());
            last.push((m, t.clone()));
            t
        };
        let probe = t.clone();
        let p = policy.clone();
        let t0 = Instant::now();
        ledger
            .write(move |w| {
                let fp = gateway::matter::fingerprint(
                    &probe.subject,
                    &probe.description,
                    &probe.location,
                );
                let phone = probe
                    .citizen
                    .as_ref()
                    .map(|c| c.phone.as_str())
                    .unwrap_or("");
                let citizen = supervision::citizen_key(w, phone, &probe.id)?;
                let now = time::now_ms();
                let found = supervision::find_matches(
                    w,
                    &probe.target_cities[0],
                    &probe.category,
                    &fp,
                    now - supervision::horizon_ms(&p),
                )?;
                let root = found
                    .into_iter()
                    .next()
                    .map(|m| m.root)
                    .unwrap_or_else(|| probe.id.clone());
                supervision::citizens(w, &root, now - 7 * DAY_MS)?;
                supervision::reports(w, &citizen, now - 30 * DAY_MS)?;
                Ok::<_, gateway::GatewayError>(())
            })
            .await?;
        checks.push(t0.elapsed().as_micros() as u64);
        let t0 = Instant::now();
        let e = ledger.dispatch(t).await?;
        dispatches.push(t0.elapsed().as_micros() as u64);
        if e.kind == EventKind::Merged as i32 {
            f.merged += 1;
        }
    }
    f.samples = o.samples;
    let stats = |mut v: Vec<u64>| {
        v.sort_unstable();
        let mean = v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
        (percentile(&v, 0.5), percentile(&v, 0.99), mean)
    };
    (f.checks_p50_us, f.checks_p99_us, f.checks_mean_us) = stats(checks);
    (f.dispatch_p50_us, f.dispatch_p99_us, f.dispatch_mean_us) = stats(dispatches);
    drop(ledger);
    f.ledger_bytes = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", db.display())).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "{} tickets in the ledger ({} in the 30-day window, {:.1} GB), {} samples, {} merged",
        f.tickets_in_ledger,
        f.recent_reports,
        f.ledger_bytes as f64 / 1e9,
        f.samples,
        f.merged
    );
    println!(
        "checks alone: p50 {} µs, p99 {} µs, mean {:.0} µs; the whole dispatch: p50 {} µs, p99 {} µs, mean {:.0} µs",
        f.checks_p50_us,
        f.checks_p99_us,
        f.checks_mean_us,
        f.dispatch_p50_us,
        f.dispatch_p99_us,
        f.dispatch_mean_us
    );
    if let Some(path) = &o.report {
        std::fs::write(path, serde_json::to_vec_pretty(&f)?)?;
    }
    Ok(f)
}
