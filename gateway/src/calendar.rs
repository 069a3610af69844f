//! The Chinese working-day calendar (工作日): Monday to Friday, less the
//! public holidays, plus the weekend days worked instead (调休), from one
//! file per year. Deadlines of tickets are counted on it, in China Standard
//! Time (UTC+8).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::windows::{CST_MS, DAY_MS, Grain, Window};

/// The year the gateway ships, compiled in.
pub const SHIPPED: &str = include_str!("../../config/calendar/2026.toml");

/// A day, as days since 1970-01-01 (CST).
pub type Day = i64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YearFile {
    year: i32,
    holidays: Vec<String>,
    working_days: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Calendar {
    holidays: BTreeSet<Day>,
    working: BTreeSet<Day>,
    /// The years configured, each with the file it came from.
    years: BTreeMap<i32, String>,
}

impl Calendar {
    /// The shipped year, and the files given.
    pub fn load(files: &[impl AsRef<Path>]) -> anyhow::Result<Self> {
        let mut c = Self::default();
        c.add(SHIPPED, "the shipped 2026 calendar")?;
        for f in files {
            let f = f.as_ref();
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the calendar {}", f.display()))?;
            c.add(&text, &f.display().to_string())?;
        }
        Ok(c)
    }

    /// The shipped year only.
    pub fn shipped() -> Self {
        let mut c = Self::default();
        // The shipped file is checked by a test.
        let _ = c.add(SHIPPED, "the shipped 2026 calendar");
        c
    }

    /// Adds one year's file; a later file for the same year replaces it.
    pub fn add(&mut self, text: &str, source: &str) -> anyhow::Result<()> {
        let y: YearFile = toml::from_str(text).with_context(|| format!("in {source}"))?;
        let parse = |field: &str, list: &[String]| -> anyhow::Result<Vec<Day>> {
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    let d =
                        parse_date(s).with_context(|| format!("{source}: {field}[{i}] = {s:?}"))?;
                    if year_of(d) != y.year {
                        bail!("{source}: {field}[{i}] = {s:?} is not in {}", y.year);
                    }
                    Ok(d)
                })
                .collect()
        };
        let holidays = parse("holidays", &y.holidays)?;
        let working = parse("working_days", &y.working_days)?;
        for (i, d) in working.iter().enumerate() {
            if weekday(*d) < 5 {
                bail!(
                    "{source}: working_days[{i}] = {:?} is a weekday; list only the weekend days worked (调休)",
                    y.working_days[i]
                );
            }
            if holidays.contains(d) {
                bail!(
                    "{source}: {:?} is both a holiday and a working day",
                    y.working_days[i]
                );
            }
        }
        let (first, last) = (
            days_from_civil(y.year, 1, 1),
            days_from_civil(y.year + 1, 1, 1),
        );
        self.holidays.retain(|d| !(first..last).contains(d));
        self.working.retain(|d| !(first..last).contains(d));
        self.holidays.extend(holidays);
        self.working.extend(working);
        self.years.insert(y.year, source.to_owned());
        Ok(())
    }

    /// Whether the calendar knows this year's holidays (outside them, only
    /// weekends are days off).
    pub fn knows(&self, year: i32) -> bool {
        self.years.contains_key(&year)
    }

    pub fn years(&self) -> impl Iterator<Item = i32> + '_ {
        self.years.keys().copied()
    }

    pub fn is_working_day(&self, d: Day) -> bool {
        if self.working.contains(&d) {
            return true;
        }
        weekday(d) < 5 && !self.holidays.contains(&d)
    }

    /// The end of the `n`-th working day after the day of `from_ms` (the day
    /// a request comes in does not count): the instant 00:00 CST of the day
    /// after it. With `n` = 0, the end of the day of `from_ms`.
    pub fn add_working_days(&self, from_ms: i64, n: u32) -> i64 {
        let mut d = day_of(from_ms);
        let mut left = n;
        // A year has at least 200 working days; the loop is bounded by the
        // deadline's length.
        while left > 0 {
            d += 1;
            if self.is_working_day(d) {
                left -= 1;
            }
        }
        (d + 1) * DAY_MS - CST_MS
    }
}

/// The CST day of an instant.
pub fn day_of(ms: i64) -> Day {
    Window::at(Grain::Day, ms).period
}

/// Monday = 0 .. Sunday = 6.
pub fn weekday(d: Day) -> i64 {
    (d + 3).rem_euclid(7)
}

/// 00:00 CST of a day, as Unix milliseconds.
pub fn start_ms(d: Day) -> i64 {
    d * DAY_MS - CST_MS
}

/// "2026-10-01" to a day.
pub fn parse_date(s: &str) -> anyhow::Result<Day> {
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        bail!("not a date YYYY-MM-DD");
    };
    let (y, m, d): (i32, u32, u32) = (
        y.parse().context("year")?,
        m.parse().context("month")?,
        d.parse().context("day")?,
    );
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        bail!("no such date");
    }
    Ok(days_from_civil(y, m, d))
}

/// A day as "2026-10-01".
pub fn format_date(d: Day) -> String {
    let (y, m, day) = civil_from_days(d);
    format!("{y:04}-{m:02}-{day:02}")
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn year_of(d: Day) -> i32 {
    civil_from_days(d).0
}

fn days_from_civil(y: i32, m: u32, d: u32) -> Day {
    crate::windows::days_from_civil(i64::from(y), i64::from(m), i64::from(d))
}

fn civil_from_days(d: Day) -> (i32, u32, u32) {
    let (y, m, d) = crate::windows::civil_from_days(d);
    (y as i32, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> Day {
        parse_date(s).unwrap()
    }

    #[test]
    fn the_shipped_year_loads_and_dates_round_trip() {
        let c = Calendar::load(&[] as &[&str]).unwrap();
        assert!(c.knows(2026));
        assert_eq!(format_date(day("2026-10-01")), "2026-10-01");
        assert_eq!(weekday(day("2026-10-01")), 3, "a Thursday");
        assert_eq!(weekday(day("2026-11-25")), 2, "a Wednesday");
        assert!(parse_date("2026-02-29").is_err());
        assert!(parse_date("2026-13-01").is_err());
    }

    #[test]
    fn holidays_are_off_and_adjusted_weekends_are_worked() {
        let c = Calendar::shipped();
        assert!(!c.is_working_day(day("2026-10-01")), "National Day");
        assert!(
            !c.is_working_day(day("2026-10-05")),
            "a Monday of the holiday"
        );
        assert!(c.is_working_day(day("2026-10-10")), "the Saturday worked");
        assert!(c.is_working_day(day("2026-09-20")), "the Sunday worked");
        assert!(!c.is_working_day(day("2026-10-11")), "an ordinary Sunday");
        assert!(c.is_working_day(day("2026-11-25")), "an ordinary Wednesday");
        // 2027 is not configured: weekends only.
        assert!(!c.knows(2027));
        assert!(c.is_working_day(day("2027-01-01")));
    }

    #[test]
    fn deadlines_cross_a_holiday_and_an_adjusted_weekend() {
        let c = Calendar::shipped();
        // A request on Wednesday 30 September at 16:00 CST, five working
        // days: 8 (Thu), 9 (Fri), 10 (Sat, worked), 12 (Mon), 13 (Tue)
        // October; due at the end of the 13th.
        let from = start_ms(day("2026-09-30")) + 16 * 3_600_000;
        assert_eq!(c.add_working_days(from, 5), start_ms(day("2026-10-14")));
        assert_eq!(c.add_working_days(from, 1), start_ms(day("2026-10-09")));
        assert_eq!(c.add_working_days(from, 0), start_ms(day("2026-10-01")));
        // Across the Spring Festival: Friday 13 February, 3 working days:
        // 14 (Sat, worked), 24 (Tue), 25 (Wed).
        let from = start_ms(day("2026-02-13")) + 3_600_000;
        assert_eq!(c.add_working_days(from, 3), start_ms(day("2026-02-26")));
    }

    #[test]
    fn a_bad_year_file_is_refused_with_the_entry_named() {
        let mut c = Calendar::default();
        let e = c
            .add(
                "year = 2027\nholidays = [\"2027-10-01\"]\nworking_days = [\"2027-10-06\"]\n",
                "2027.toml",
            )
            .unwrap_err();
        assert!(format!("{e:#}").contains("working_days[0]"), "{e:#}");
        let e = c
            .add(
                "year = 2027\nholidays = [\"2026-10-01\"]\nworking_days = []\n",
                "2027.toml",
            )
            .unwrap_err();
        assert!(format!("{e:#}").contains("holidays[0]"), "{e:#}");
    }
}
