//! Scenarios: what `simulator run` plays, as TOML files in
//! `simulator/scenarios/` (documented in its README). A scenario names the
//! cities, the load per city and category over the hours of a day, the
//! share of cross-city, multi-city, urgent and repeated requests, the
//! channels, the call transfers, the operators and citizens, and the faults.
//!
//! Time in a scenario is simulated: rates are per simulated hour, handling
//! times in simulated minutes; `speed` compresses it (at 600, a simulated
//! hour takes six real seconds). Faults act on real processes, so their
//! times are real seconds from the start of the run.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use hotline_proto::Catalogue;
use hotline_proto::pb::{Channel, TransferMode};
use serde::{Deserialize, Serialize};

/// The scenarios shipped with the simulator, by name.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "south-sichuan",
        include_str!("../scenarios/south-sichuan.toml"),
    ),
    ("province", include_str!("../scenarios/province.toml")),
    (
        "flood-season",
        include_str!("../scenarios/flood-season.toml"),
    ),
    ("chaos", include_str!("../scenarios/chaos.toml")),
    ("supervision", include_str!("../scenarios/supervision.toml")),
];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// `"south-sichuan"` (the four cities), `"province"` (all 21), or a
    /// list of city ids of the province.
    pub cities: Cities,
    /// Simulated minutes of load.
    pub duration_minutes: f64,
    /// Simulated seconds per real second (overridden by `--speed`).
    #[serde(default = "one")]
    pub speed: f64,
    /// The simulated hour of day the run starts at (0–23).
    #[serde(default = "eight")]
    pub start_hour: u32,
    pub tickets: TicketLoad,
    #[serde(default)]
    pub channels: Channels,
    #[serde(default)]
    pub transfers: TransferLoad,
    #[serde(default)]
    pub operators: Operators,
    #[serde(default)]
    pub citizens: Citizens,
    /// Duplicates, clusters, repeat callers, and the gateway's supervision
    /// rules they are checked against.
    #[serde(default)]
    pub supervision: Supervision,
    /// Faults on a schedule.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Faults at random, drawn from the seed.
    #[serde(default)]
    pub random_faults: Option<RandomFaults>,
}

fn one() -> f64 {
    1.0
}
fn eight() -> u32 {
    8
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Cities {
    Named(String),
    List(Vec<String>),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TicketLoad {
    /// Requests per simulated hour at each city's hotline, at the busiest
    /// hour of the curve (before the city's weight).
    pub per_hour: f64,
    /// A weight per city (1 when absent).
    #[serde(default)]
    pub city_weight: BTreeMap<String, f64>,
    /// A weight per category (1 when absent).
    #[serde(default)]
    pub category_weight: BTreeMap<String, f64>,
    /// 24 factors, one per hour of the day, of `per_hour`.
    #[serde(default = "flat_day")]
    pub hourly_curve: Vec<f64>,
    /// Requests about the origin's own city only.
    pub local_share: f64,
    /// Requests that involve several other cities (并联办理).
    pub multi_city_share: f64,
    pub urgent_share: f64,
}

fn flat_day() -> Vec<f64> {
    vec![1.0; 24]
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Channels {
    /// A weight per channel: phone, people-daily-board, wenzheng-sichuan,
    /// mala-community, mayor-mailbox, web, app.
    pub weights: BTreeMap<String, f64>,
    /// Requests that arrive again on another channel (the same citizen and
    /// matter), a few simulated minutes later.
    pub repeat_share: f64,
}

impl Default for Channels {
    fn default() -> Self {
        Self {
            weights: [("phone", 3.0), ("web", 1.0), ("app", 1.0)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            repeat_share: 0.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransferLoad {
    /// Calls transferred per cross-city ticket the citizens create (the
    /// seed's figures, 4,521 calls to 2,560 tickets, give 1.766).
    pub per_dispatched: f64,
    /// A weight per mode: blind, warm, conference.
    pub modes: BTreeMap<String, f64>,
    /// Operators at consoles per city, taking transferred calls.
    pub console_operators: usize,
    /// Of the calls rung at an operator: answered, declined (the rest ring
    /// out).
    pub answer: f64,
    pub decline: f64,
    /// Transfers the desk cancels before an answer.
    pub cancel: f64,
}

impl Default for TransferLoad {
    fn default() -> Self {
        Self {
            per_dispatched: 0.0,
            modes: [("blind", 1.0)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            console_operators: 2,
            answer: 0.85,
            decline: 0.06,
            cancel: 0.02,
        }
    }
}

/// A log-normal duration given by its median and 90th percentile, in
/// simulated minutes.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Minutes {
    pub median: f64,
    pub p90: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Operators {
    /// Operators handling tickets at each city, one ticket at a time.
    pub per_city: usize,
    /// From delivery to acceptance, and from acceptance to resolution.
    pub accept: Minutes,
    pub resolve: Minutes,
    /// Received tickets rejected as not the city's business.
    pub reject_share: f64,
    /// Cities slower than the rest: their accept and resolve times are
    /// multiplied by the factor.
    #[serde(default)]
    pub slow_cities: BTreeMap<String, f64>,
}

impl Default for Operators {
    fn default() -> Self {
        Self {
            per_city: 4,
            accept: Minutes {
                median: 10.0,
                p90: 40.0,
            },
            resolve: Minutes {
                median: 120.0,
                p90: 600.0,
            },
            reject_share: 0.05,
            slow_cities: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Citizens {
    /// At each follow-up of a resolved ticket, the share of citizens
    /// unsatisfied: reopened (重办) up to `max_reopens` times, then closed
    /// unsatisfied.
    pub unsatisfied_share: f64,
    pub basically_satisfied_share: f64,
    #[serde(default = "one_reopen")]
    pub max_reopens: u32,
}

fn one_reopen() -> u32 {
    1
}

impl Default for Citizens {
    fn default() -> Self {
        Self {
            unsatisfied_share: 0.1,
            basically_satisfied_share: 0.2,
            max_reopens: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Supervision {
    /// The gateway merges reports of one open matter (合并派单). Off, the
    /// repeats are dispatched as tickets of their own.
    pub merge: bool,
    /// Requests that are a matter several citizens report (多人一诉), each
    /// by 2 to `cluster_max_citizens` citizens, the others 5 to 60
    /// simulated minutes after the first.
    pub cluster_share: f64,
    pub cluster_max_citizens: u32,
    /// Citizens who file several different requests (一人多诉): this share
    /// of requests starts such a citizen, who files 2 to
    /// `repeat_caller_max_requests` requests over the run.
    pub repeat_caller_share: f64,
    pub repeat_caller_max_requests: u32,
    /// The gateway's `[supervision]` thresholds for this run.
    pub cluster_citizens: u32,
    pub repeat_reports: u32,
    pub rehandled_times: u32,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            merge: false,
            cluster_share: 0.0,
            cluster_max_citizens: 6,
            repeat_caller_share: 0.0,
            repeat_caller_max_requests: 6,
            cluster_citizens: 5,
            repeat_reports: 5,
            rehandled_times: 2,
        }
    }
}

impl Supervision {
    /// The gateway's `[supervision]` for this run.
    pub fn gateway_toml(&self) -> String {
        format!(
            "[supervision]\nmerge_window_hours = {}\ncluster_citizens = {}\nrepeat_reports = {}\nrehandled_times = {}\n",
            if self.merge { 72 } else { 0 },
            self.cluster_citizens,
            self.repeat_reports,
            self.rehandled_times
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL, then a restart after `for_secs`.
    Kill,
    /// Every link of the city (node ↔ gateway) cut for `for_secs`.
    Partition,
    /// `latency_ms` added each way on the city's links for `for_secs`.
    Latency,
    /// SIGSTOP for `for_secs`, then SIGCONT: a node that hangs.
    Stall,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Real seconds from the start of the load.
    pub at_secs: f64,
    pub kind: FaultKind,
    /// `"gateway"` or a city id (the city's node, or its links).
    pub target: String,
    pub for_secs: f64,
    #[serde(default)]
    pub latency_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RandomFaults {
    /// On average one fault per this many real seconds.
    pub every_secs: f64,
    pub kinds: Vec<FaultKind>,
    /// Whether the gateway may be killed or stalled too.
    #[serde(default)]
    pub gateway: bool,
    pub for_secs: f64,
    #[serde(default = "latency")]
    pub latency_ms: u64,
}

fn latency() -> u64 {
    200
}

fn share(field: &str, v: f64) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&v) {
        bail!("{field}: {v} must be a share between 0 and 1");
    }
    Ok(())
}

fn weight(field: &str, v: f64) -> anyhow::Result<()> {
    if v.is_nan() || v < 0.0 || v.is_infinite() {
        bail!("{field}: {v} must not be negative");
    }
    Ok(())
}

fn positive(field: &str, v: f64) -> anyhow::Result<()> {
    if !(v > 0.0 && v.is_finite()) {
        bail!("{field}: {v} must be a positive number");
    }
    Ok(())
}

pub fn channel_of(name: &str) -> Option<Channel> {
    Some(match name {
        "phone" => Channel::Phone,
        "people-daily-board" => Channel::PeopleDailyBoard,
        "wenzheng-sichuan" => Channel::WenzhengSichuan,
        "mala-community" => Channel::MalaCommunity,
        "mayor-mailbox" => Channel::MayorMailbox,
        "web" => Channel::Web,
        "app" => Channel::App,
        _ => return None,
    })
}

pub fn mode_of(name: &str) -> Option<TransferMode> {
    Some(match name {
        "blind" => TransferMode::Blind,
        "warm" => TransferMode::Warm,
        "conference" => TransferMode::Conference,
        _ => return None,
    })
}

impl Scenario {
    /// A built-in scenario by name, or a file.
    pub fn load(name_or_path: &str) -> anyhow::Result<Self> {
        if let Some((_, text)) = BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(text).with_context(|| format!("built-in scenario {name_or_path}"));
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).with_context(|| {
            let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
            format!(
                "read scenario {} (built in: {})",
                path.display(),
                names.join(", ")
            )
        })?;
        Self::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    /// Parses and checks a scenario; every error names its field.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let s: Scenario = toml::from_str(text)?;
        s.check()?;
        Ok(s)
    }

    /// The scenario's cities, with the 17 categories (14 hot, 3 emergency).
    pub fn catalogue(&self) -> anyhow::Result<Catalogue> {
        let province = Catalogue::province();
        Ok(match &self.cities {
            Cities::Named(n) if n == "south-sichuan" => Catalogue::south_sichuan(),
            Cities::Named(n) if n == "province" => province,
            Cities::Named(n) => {
                bail!("cities: {n:?} is not \"south-sichuan\", \"province\" or a list of city ids")
            }
            Cities::List(ids) => {
                let mut cities = Vec::new();
                for id in ids {
                    let Some(c) = province.cities.iter().find(|c| c.id == *id) else {
                        bail!("cities: {id:?} is not a city of Sichuan");
                    };
                    cities.push(c.clone());
                }
                Catalogue::new(cities, province.categories).map_err(anyhow::Error::msg)?
            }
        })
    }

    fn check(&self) -> anyhow::Result<()> {
        let catalogue = self.catalogue()?;
        if catalogue.cities.len() < 2 {
            bail!("cities: a federation needs at least two cities");
        }
        positive("duration_minutes", self.duration_minutes)?;
        positive("speed", self.speed)?;
        if self.start_hour > 23 {
            bail!("start_hour: {} is not an hour of the day", self.start_hour);
        }
        let t = &self.tickets;
        positive("tickets.per_hour", t.per_hour)?;
        if t.hourly_curve.len() != 24 || t.hourly_curve.iter().any(|f| f.is_nan() || *f < 0.0) {
            bail!("tickets.hourly_curve: needs 24 factors, none negative");
        }
        if t.hourly_curve.iter().all(|f| *f == 0.0) {
            bail!("tickets.hourly_curve: every hour is zero; nothing would happen");
        }
        for (city, w) in &t.city_weight {
            if catalogue.city(city).is_none() {
                bail!("tickets.city_weight.{city}: not a city of this scenario");
            }
            weight(&format!("tickets.city_weight.{city}"), *w)?;
        }
        for (cat, w) in &t.category_weight {
            if catalogue.category(cat).is_none() {
                bail!("tickets.category_weight.{cat}: not a category of the catalogue");
            }
            weight(&format!("tickets.category_weight.{cat}"), *w)?;
        }
        let v = &self.supervision;
        share("supervision.cluster_share", v.cluster_share)?;
        share("supervision.repeat_caller_share", v.repeat_caller_share)?;
        for (name, n, min) in [
            (
                "supervision.cluster_max_citizens",
                v.cluster_max_citizens,
                2,
            ),
            (
                "supervision.repeat_caller_max_requests",
                v.repeat_caller_max_requests,
                2,
            ),
            ("supervision.cluster_citizens", v.cluster_citizens, 1),
            ("supervision.repeat_reports", v.repeat_reports, 1),
            ("supervision.rehandled_times", v.rehandled_times, 1),
        ] {
            if n < min || n > 1000 {
                bail!("{name}: {n} must be between {min} and 1000");
            }
        }
        share("tickets.local_share", t.local_share)?;
        share("tickets.multi_city_share", t.multi_city_share)?;
        share("tickets.urgent_share", t.urgent_share)?;
        if t.local_share + t.multi_city_share > 1.0 {
            bail!("tickets.local_share + tickets.multi_city_share: more than 1");
        }
        for (ch, w) in &self.channels.weights {
            if channel_of(ch).is_none() {
                bail!(
                    "channels.weights.{ch}: not a channel (phone, people-daily-board, wenzheng-sichuan, mala-community, mayor-mailbox, web, app)"
                );
            }
            weight(&format!("channels.weights.{ch}"), *w)?;
        }
        if self.channels.weights.values().sum::<f64>() <= 0.0 {
            bail!("channels.weights: at least one channel needs a positive weight");
        }
        share("channels.repeat_share", self.channels.repeat_share)?;
        let x = &self.transfers;
        if !(x.per_dispatched >= 0.0 && x.per_dispatched.is_finite()) {
            bail!("transfers.per_dispatched: must be zero or more");
        }
        for (m, w) in &x.modes {
            if mode_of(m).is_none() {
                bail!("transfers.modes.{m}: not a mode (blind, warm, conference)");
            }
            weight(&format!("transfers.modes.{m}"), *w)?;
        }
        if x.per_dispatched > 0.0 && x.modes.values().sum::<f64>() <= 0.0 {
            bail!("transfers.modes: at least one mode needs a positive weight");
        }
        if x.per_dispatched > 0.0 && x.console_operators == 0 {
            bail!("transfers.console_operators: transfers need at least one");
        }
        share("transfers.answer", x.answer)?;
        share("transfers.decline", x.decline)?;
        share("transfers.cancel", x.cancel)?;
        if x.answer + x.decline > 1.0 {
            bail!("transfers.answer + transfers.decline: more than 1");
        }
        let o = &self.operators;
        if o.per_city == 0 {
            bail!("operators.per_city: needs at least one");
        }
        for (f, m) in [
            ("operators.accept", o.accept),
            ("operators.resolve", o.resolve),
        ] {
            positive(&format!("{f}.median"), m.median)?;
            if !(m.p90 >= m.median && m.p90.is_finite()) {
                bail!("{f}.p90: must be at least the median");
            }
        }
        share("operators.reject_share", o.reject_share)?;
        for (city, factor) in &o.slow_cities {
            if catalogue.city(city).is_none() {
                bail!("operators.slow_cities.{city}: not a city of this scenario");
            }
            positive(&format!("operators.slow_cities.{city}"), *factor)?;
        }
        share(
            "citizens.unsatisfied_share",
            self.citizens.unsatisfied_share,
        )?;
        share(
            "citizens.basically_satisfied_share",
            self.citizens.basically_satisfied_share,
        )?;
        for (i, f) in self.faults.iter().enumerate() {
            let field = format!("faults[{i}]");
            if !(f.at_secs >= 0.0 && f.at_secs.is_finite()) {
                bail!("{field}.at_secs: must be zero or more");
            }
            positive(&format!("{field}.for_secs"), f.for_secs)?;
            if f.target != "gateway" && catalogue.city(&f.target).is_none() {
                bail!(
                    "{field}.target: {:?} is neither \"gateway\" nor a city of this scenario",
                    f.target
                );
            }
            if f.target == "gateway" && matches!(f.kind, FaultKind::Partition | FaultKind::Latency)
            {
                bail!(
                    "{field}.target: partitions and latency are per city (its links to the gateway)"
                );
            }
            if f.kind == FaultKind::Latency && f.latency_ms == 0 {
                bail!("{field}.latency_ms: a latency fault needs a positive latency");
            }
        }
        if let Some(r) = &self.random_faults {
            positive("random_faults.every_secs", r.every_secs)?;
            positive("random_faults.for_secs", r.for_secs)?;
            if r.kinds.is_empty() {
                bail!("random_faults.kinds: name at least one kind");
            }
        }
        Ok(())
    }

    /// Real seconds the load lasts at `speed`.
    pub fn real_secs(&self, speed: f64) -> f64 {
        self.duration_minutes * 60.0 / speed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_scenario_parses() {
        for (name, _) in BUILT_IN {
            let s = Scenario::load(name).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(s.name, *name);
        }
        let province = Scenario::load("province").unwrap();
        assert_eq!(province.catalogue().unwrap().cities.len(), 21);
    }

    #[test]
    fn errors_name_the_field() {
        let good = BUILT_IN[0].1;
        let bad = good.replace("local_share = 0.3", "local_share = 1.5");
        assert_ne!(bad, good);
        let e = format!("{:#}", Scenario::parse(&bad).unwrap_err());
        assert!(e.contains("tickets.local_share"), "{e}");
        let e = format!(
            "{:#}",
            Scenario::parse(&good.replace("[tickets]", "[tickets]\nper_day = 3")).unwrap_err()
        );
        assert!(e.contains("per_day"), "{e}");
    }
}
