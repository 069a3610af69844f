//! Statistics over windows of time, kept up to date in the transaction that
//! writes each change, so a query reads the rows of one window and never the
//! ledger.
//!
//! Every count is kept four times, in one upsert: for its hour, its day and
//! its month (China Standard Time, UTC+8, which has no summer time), and
//! since the ledger began. A row is `(grain, period, city, category, metric,
//! detail) → n`; `detail` is the other city of a flow (so the flow matrix is
//! the sent counts by target) or a transfer's final state.
//!
//! Durations (to accept, to resolve) go into log-scale histograms with four
//! buckets per doubling, so a percentile read from them is within about 9%
//! of the true value, whatever the range, and a window holds at most about
//! 140 buckets per city, category and duration (a millisecond to a year).

use std::collections::{BTreeMap, HashMap};

use hotline_durable::sql::{Connection, params};
use hotline_proto::ContractError;

use crate::error::GatewayError;
use crate::fold::Fold;

/// What is counted. The numbers are stored: never renumber one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// A ticket dispatched, at its origin; detail: the target.
    Sent = 1,
    /// A ticket delivered, at its handler; detail: the origin.
    Received = 2,
    Accepted = 3,
    Rejected = 4,
    Resolved = 5,
    ResolvedOnTime = 6,
    ResolvedOverdue = 7,
    Satisfied = 8,
    BasicallySatisfied = 9,
    Unsatisfied = 10,
    Reopened = 11,
    /// A transfer started, at its origin; detail: the target.
    TransfersOut = 12,
    /// A transfer offered, at its target; detail: the origin.
    TransfersIn = 13,
    TransfersAnswered = 14,
    /// The sum of the milliseconds from start to answer.
    AnswerMsSum = 15,
    /// A transfer ended, at its target; detail: its final state.
    TransferOutcome = 16,
    /// A report merged into an open ticket, at its origin; detail: the
    /// handler of the ticket it was merged into.
    Merged = 17,
    /// A report merged into a ticket this city handles; detail: the
    /// report's origin.
    Linked = 18,
    /// An escalation opened about a ticket this city handles; detail: the
    /// rule.
    Escalated = 19,
    /// An urgent ticket that reached the gateway late, at its origin.
    DispatchedLate = 20,
}

impl Metric {
    const ALL: [Metric; 20] = [
        Metric::Sent,
        Metric::Received,
        Metric::Accepted,
        Metric::Rejected,
        Metric::Resolved,
        Metric::ResolvedOnTime,
        Metric::ResolvedOverdue,
        Metric::Satisfied,
        Metric::BasicallySatisfied,
        Metric::Unsatisfied,
        Metric::Reopened,
        Metric::TransfersOut,
        Metric::TransfersIn,
        Metric::TransfersAnswered,
        Metric::AnswerMsSum,
        Metric::TransferOutcome,
        Metric::Merged,
        Metric::Linked,
        Metric::Escalated,
        Metric::DispatchedLate,
    ];

    fn from_i64(n: i64) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| *m as i64 == n)
    }
}

/// Durations kept as histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Duration {
    ToAccept = 1,
    ToResolve = 2,
}

/// A window's length. The numbers are those of the `Window` enum on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grain {
    All = 0,
    Hour = 1,
    Day = 2,
    Month = 3,
}

pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;
/// China Standard Time is UTC+8 all year.
pub(crate) const CST_MS: i64 = 8 * HOUR_MS;

/// One window: a grain and which hour, day or month of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub grain: Grain,
    /// Hours or days since 1970-01-01T00 CST, or `year * 12 + month - 1`.
    pub period: i64,
}

impl Window {
    pub const ALL: Window = Window {
        grain: Grain::All,
        period: 0,
    };

    /// The window of `grain` that holds the instant `ms`.
    pub fn at(grain: Grain, ms: i64) -> Window {
        let local = ms + CST_MS;
        let period = match grain {
            Grain::All => 0,
            Grain::Hour => local.div_euclid(HOUR_MS),
            Grain::Day => local.div_euclid(DAY_MS),
            Grain::Month => {
                let (y, m, _) = civil_from_days(local.div_euclid(DAY_MS));
                y * 12 + m - 1
            }
        };
        Window { grain, period }
    }

    /// The four windows an instant counts in.
    pub(crate) fn all_at(ms: i64) -> [Window; 4] {
        [
            Window::ALL,
            Window::at(Grain::Hour, ms),
            Window::at(Grain::Day, ms),
            Window::at(Grain::Month, ms),
        ]
    }

    /// The window a request names: `wire_window` is the `Window` enum's
    /// number, `period` its text ("" for the current one).
    pub fn parse(
        field: &str,
        wire_window: i32,
        period: &str,
        now_ms: i64,
    ) -> Result<Window, ContractError> {
        let grain = match wire_window {
            0 => Grain::All,
            1 => Grain::Hour,
            2 => Grain::Day,
            3 => Grain::Month,
            _ => return Err(ContractError::invalid("window", "unknown value")),
        };
        if period.is_empty() {
            return Ok(Window::at(grain, now_ms));
        }
        let bad = |why: &str| ContractError::invalid(field, why);
        let num = |s: &str, lo: i64, hi: i64| -> Result<i64, ContractError> {
            s.parse::<i64>()
                .ok()
                .filter(|n| (lo..=hi).contains(n) && s.len() >= 2)
                .ok_or_else(|| bad("is not a period (2026-11-25T14, 2026-11-25 or 2026-11)"))
        };
        let parts: Vec<&str> = period.split(['-', 'T']).collect();
        let want = match grain {
            Grain::All => return Err(bad("must be empty for the window since the start")),
            Grain::Hour => 4,
            Grain::Day => 3,
            Grain::Month => 2,
        };
        if parts.len() != want {
            return Err(bad(match grain {
                Grain::Hour => "must name an hour, as 2026-11-25T14",
                Grain::Day => "must name a day, as 2026-11-25",
                _ => "must name a month, as 2026-11",
            }));
        }
        let y = num(parts[0], 1970, 9999)?;
        let m = num(parts[1], 1, 12)?;
        if grain == Grain::Month {
            return Ok(Window {
                grain,
                period: y * 12 + m - 1,
            });
        }
        let d = num(parts[2], 1, days_in_month(y, m))?;
        let day = days_from_civil(y, m, d);
        Ok(match grain {
            Grain::Day => Window { grain, period: day },
            _ => Window {
                grain,
                period: day * 24 + num(parts[3], 0, 23)?,
            },
        })
    }

    /// The period as text, as [`Window::parse`] reads it.
    pub fn label(&self) -> String {
        match self.grain {
            Grain::All => String::new(),
            Grain::Month => format!(
                "{:04}-{:02}",
                self.period.div_euclid(12),
                self.period.rem_euclid(12) + 1
            ),
            Grain::Day => {
                let (y, m, d) = civil_from_days(self.period);
                format!("{y:04}-{m:02}-{d:02}")
            }
            Grain::Hour => {
                let (y, m, d) = civil_from_days(self.period.div_euclid(24));
                format!("{y:04}-{m:02}-{d:02}T{:02}", self.period.rem_euclid(24))
            }
        }
    }
}

fn days_in_month(y: i64, m: i64) -> i64 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)
}

/// The month of an instant (CST), as `year * 12 + month - 1`.
pub fn month_of(ms: i64) -> i64 {
    Window::at(Grain::Month, ms).period
}

/// Days since 1970-01-01 of a date of the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Buckets per doubling of a duration.
const STEPS: f64 = 4.0;

pub(crate) fn bucket_of(ms: i64) -> i64 {
    ((ms.max(0) as f64 + 1.0).log2() * STEPS).floor() as i64
}

/// The middle of a bucket (geometrically), in milliseconds.
fn value_of(bucket: i64) -> f64 {
    ((bucket as f64 + 0.5) / STEPS).exp2() - 1.0
}

/// A histogram's buckets as a packed row keeps them: bucket → how many.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(BTreeMap<i64, i64>);

/// The packed row's encoding.
#[derive(Clone, PartialEq, prost::Message)]
struct PackedBuckets {
    #[prost(sint64, repeated, tag = "1")]
    bucket: Vec<i64>,
    #[prost(int64, repeated, tag = "2")]
    n: Vec<i64>,
}

impl Buckets {
    pub fn add(&mut self, bucket: i64, n: i64) {
        *self.0.entry(bucket).or_default() += n;
    }

    pub fn absorb(&mut self, other: &Buckets) {
        for (b, n) in &other.0 {
            self.add(*b, *n);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.0.iter().map(|(b, n)| (*b, *n))
    }

    pub fn encode(&self) -> Vec<u8> {
        use prost::Message as _;
        PackedBuckets {
            bucket: self.0.keys().copied().collect(),
            n: self.0.values().copied().collect(),
        }
        .encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, GatewayError> {
        use prost::Message as _;
        let p = PackedBuckets::decode(bytes).map_err(|e| {
            GatewayError::Corrupt(
                "window_hist_packed".into(),
                format!("a row does not decode: {e}"),
            )
        })?;
        if p.bucket.len() != p.n.len() {
            return Err(GatewayError::Corrupt(
                "window_hist_packed".into(),
                format!("{} buckets and {} counts", p.bucket.len(), p.n.len()),
            ));
        }
        let mut b = Buckets::default();
        for (bucket, n) in p.bucket.into_iter().zip(p.n) {
            b.add(bucket, n);
        }
        Ok(b)
    }
}

/// A histogram: bucket → how many.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram(BTreeMap<i64, u64>);

impl Histogram {
    pub fn add(&mut self, other: &Histogram) {
        for (b, n) in &other.0 {
            *self.0.entry(*b).or_default() += n;
        }
    }

    /// The `q` quantile (0 < q ≤ 1) in milliseconds; 0 when empty.
    /// How many durations it holds.
    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn quantile(&self, q: f64) -> f64 {
        let total: u64 = self.0.values().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (b, n) in &self.0 {
            seen += n;
            if seen >= rank {
                return value_of(*b);
            }
        }
        0.0
    }
}

/// What one window holds for one city and category.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    /// Metric → detail → n.
    pub counts: BTreeMap<Metric, BTreeMap<String, u64>>,
    pub durations: BTreeMap<Duration, Histogram>,
}

impl Cell {
    pub fn get(&self, m: Metric) -> u64 {
        self.counts.get(&m).map(|d| d.values().sum()).unwrap_or(0)
    }

    pub fn details(&self, m: Metric) -> impl Iterator<Item = (&String, &u64)> {
        self.counts.get(&m).into_iter().flatten()
    }
}

/// Everything one window holds: (city, category) → cell.
pub type Contents = HashMap<(String, String), Cell>;

/// Reads one window, only the metrics in `metrics` when given: the
/// counter tables and the counts journaled but not checkpointed yet
/// ([`crate::fold`]), in one statement each.
pub fn read(
    c: &Connection,
    w: Window,
    metrics: Option<&[Metric]>,
) -> Result<Contents, GatewayError> {
    let mut out: Contents = HashMap::new();
    let (grain, period) = (w.grain as i64, w.period);
    let mut add_count = |city: &str, category: &str, metric: i64, detail: &str, n: i64| {
        let Some(metric) = Metric::from_i64(metric) else {
            return;
        };
        if metrics.is_some_and(|m| !m.contains(&metric)) {
            return;
        }
        let cell = out
            .entry((city.to_owned(), category.to_owned()))
            .or_default();
        let v = cell
            .counts
            .entry(metric)
            .or_default()
            .entry(detail.to_owned())
            .or_default();
        *v = v.saturating_add_signed(n);
    };
    let mut stmt = c.prepare_cached(
        "SELECT city, category, metric, detail, n, NULL FROM window_counts WHERE grain = ?1 AND period = ?2
         UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, body FROM fold_journal",
    )?;
    let rows = stmt.query_map(params![grain, period], |r| {
        Ok((
            r.get::<_, Option<String>>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, Option<Vec<u8>>>(5)?,
        ))
    })?;
    // The journal's rows summed first, then added: a figure is never
    // short of a move the journal takes back.
    let mut journal = Fold::default();
    for row in rows {
        match row? {
            (_, _, _, _, _, Some(body)) => journal.absorb_counters(Fold::decode(&body)?),
            (Some(city), Some(cat), Some(m), Some(d), Some(n), None) => {
                add_count(&city, &cat, m, &d, n)
            }
            _ => {}
        }
    }
    for (city, cat, m, d, n) in journal.counts_in(grain, period) {
        add_count(city, cat, m, d, n);
    }
    if metrics.is_some() {
        return Ok(out);
    }
    let mut add_hist = |city: &str, category: &str, what: i64, bucket: i64, n: i64| {
        let what = match what {
            1 => Duration::ToAccept,
            2 => Duration::ToResolve,
            _ => return,
        };
        let v = out
            .entry((city.to_owned(), category.to_owned()))
            .or_default()
            .durations
            .entry(what)
            .or_default()
            .0
            .entry(bucket)
            .or_default();
        *v = v.saturating_add_signed(n);
    };
    // The packed histograms (kind 1), the rows of before them, a bucket
    // each (kind 0), and the journal (kind 2).
    let mut stmt = c.prepare_cached(
        "SELECT 1, city, category, metric, NULL, NULL, buckets FROM window_hist_packed WHERE grain = ?1 AND period = ?2
         UNION ALL SELECT 0, city, category, metric, bucket, n, NULL FROM window_hist WHERE grain = ?1 AND period = ?2
         UNION ALL SELECT 2, NULL, NULL, NULL, NULL, NULL, body FROM fold_journal",
    )?;
    let rows = stmt.query_map(params![grain, period], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, Option<i64>>(5)?,
            r.get::<_, Option<Vec<u8>>>(6)?,
        ))
    })?;
    let mut journal = Fold::default();
    for row in rows {
        match row? {
            (2, .., Some(body)) => journal.absorb_counters(Fold::decode(&body)?),
            (1, Some(city), Some(cat), Some(what), _, _, Some(packed)) => {
                for (b, n) in Buckets::decode(&packed)?.iter() {
                    add_hist(&city, &cat, what, b, n);
                }
            }
            (0, Some(city), Some(cat), Some(what), Some(b), Some(n), None) => {
                add_hist(&city, &cat, what, b, n)
            }
            _ => {}
        }
    }
    for (city, cat, what, b, n) in journal.hist_in(grain, period) {
        add_hist(city, cat, what, b, n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_china_standard_time() {
        // 2026-11-25T16:30Z is 2026-11-26T00:30 in Beijing.
        let ms = 1_795_624_200_000;
        assert_eq!(Window::at(Grain::Day, ms).label(), "2026-11-26");
        assert_eq!(Window::at(Grain::Hour, ms).label(), "2026-11-26T00");
        assert_eq!(Window::at(Grain::Month, ms).label(), "2026-11");
        // The last hour of a year in Beijing, 15:00Z on 31 December.
        let ms = 1_798_729_200_000;
        assert_eq!(Window::at(Grain::Hour, ms).label(), "2026-12-31T23");
        assert_eq!(Window::at(Grain::Month, ms + HOUR_MS).label(), "2027-01");
    }

    #[test]
    fn a_label_reads_back_as_its_window() {
        for ms in [0, 951_782_400_000, 1_795_624_200_000, 4_102_444_800_000] {
            for grain in [Grain::Hour, Grain::Day, Grain::Month] {
                let w = Window::at(grain, ms);
                let wire = grain as i32;
                assert_eq!(Window::parse("period", wire, &w.label(), 0).unwrap(), w);
            }
        }
        assert_eq!(
            Window::parse("period", 2, "2024-02-29", 0).unwrap().label(),
            "2024-02-29"
        );
    }

    #[test]
    fn a_bad_period_names_the_field() {
        for (window, period) in [
            (2, "2023-02-29"),
            (2, "2026-11"),
            (1, "2026-11-25T24"),
            (3, "2026-13"),
            (3, "26-11"),
            (0, "2026-11"),
            (2, "yesterday"),
        ] {
            let e = Window::parse("period", window, period, 0).unwrap_err();
            assert!(e.to_string().contains("period"), "{period}: {e}");
        }
        assert!(Window::parse("period", 9, "", 0).is_err());
    }

    #[test]
    fn quantiles_are_within_ten_percent() {
        let mut h = Histogram::default();
        for ms in 1..=10_000 {
            *h.0.entry(bucket_of(ms)).or_default() += 1;
        }
        for (q, want) in [(0.5, 5_000.0), (0.9, 9_000.0), (0.99, 9_900.0)] {
            let got = h.quantile(q);
            assert!((got - want).abs() / want < 0.10, "q{q}: {got} vs {want}");
        }
        assert_eq!(Histogram::default().quantile(0.5), 0.0);
    }

    #[test]
    fn a_count_lands_in_four_windows_and_reads_back() {
        // Journaled, then checkpointed into the tables.
        for checkpoint in [false, true] {
            four_windows(checkpoint);
        }
    }

    fn four_windows(checkpoint: bool) {
        let c = crate::fold::test_db();
        let ms = 1_795_624_200_000;
        let mut f = crate::fold::Fold::default();
        f.count(ms, "luzhou", "education", Metric::Sent, "yibin", 1);
        f.count(ms, "luzhou", "education", Metric::Sent, "yibin", 1);
        f.count(
            ms + DAY_MS,
            "luzhou",
            "education",
            Metric::Sent,
            "zigong",
            1,
        );
        f.observe(ms, "luzhou", "education", Duration::ToAccept, 1_000);
        let mut mine = if checkpoint {
            crate::fold::Mine::due()
        } else {
            crate::fold::Mine::default()
        };
        f.flush(&c, &mut mine).unwrap();
        assert_eq!(crate::fold::journal_rows(&c), i64::from(!checkpoint));
        let key = ("luzhou".to_string(), "education".to_string());
        let all = read(&c, Window::ALL, None).unwrap();
        assert_eq!(all[&key].get(Metric::Sent), 3);
        let day = read(&c, Window::at(Grain::Day, ms), None).unwrap();
        assert_eq!(day[&key].get(Metric::Sent), 2);
        assert_eq!(day[&key].details(Metric::Sent).count(), 1);
        let q = day[&key].durations[&Duration::ToAccept].quantile(0.5);
        assert!((q - 1_000.0).abs() < 100.0, "{q}");
        let month = read(&c, Window::at(Grain::Month, ms), Some(&[Metric::Sent])).unwrap();
        assert_eq!(month[&key].get(Metric::Sent), 3);
        assert!(month[&key].durations.is_empty());
    }

    #[test]
    fn a_packed_histogram_adds_each_checkpoint_to_itself_and_to_the_rows_of_before() {
        let c = crate::fold::test_db();
        let ms = 1_795_624_200_000;
        let key = ("luzhou".to_string(), "education".to_string());
        // A row of before the packing: one ticket accepted in 1 s.
        c.execute(
            "INSERT INTO window_hist VALUES (0, 0, 'luzhou', 'education', 1, ?1, 1)",
            [bucket_of(1_000)],
        )
        .unwrap();
        for ms_taken in [1_000, 100_000, 100_000] {
            let mut f = crate::fold::Fold::default();
            f.observe(ms, "luzhou", "education", Duration::ToAccept, ms_taken);
            f.flush(&c, &mut crate::fold::Mine::due()).unwrap();
        }
        let packed: i64 = c
            .query_row(
                "SELECT count(*) FROM window_hist_packed WHERE grain = 0",
                (),
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(packed, 1, "one row per window, city, category, duration");
        let all = read(&c, Window::ALL, None).unwrap();
        let h = &all[&key].durations[&Duration::ToAccept];
        let n: u64 = h.0.values().sum();
        assert_eq!(n, 4);
        assert_eq!(h.0[&bucket_of(1_000)], 2);
        assert_eq!(h.0[&bucket_of(100_000)], 2);
        let bad = Buckets::decode(&[0xff]);
        assert!(matches!(bad, Err(GatewayError::Corrupt(..))));
        let mut b = Buckets::default();
        b.add(3, 2);
        b.add(-1, 1);
        assert_eq!(Buckets::decode(&b.encode()).unwrap(), b);
    }
}
