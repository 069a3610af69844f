//! Per-city statistics, kept up to date in the same transaction as each
//! change of the ledger, so a query reads a few small rows and never scans
//! tickets.
//!
//! - `city_totals`: tickets a city sent (on dispatch) and received (on each
//!   delivery), per category, cumulative;
//! - `city_status`: how many of the tickets a city sent, or handles now, are
//!   in each status.

use std::collections::HashMap;

use hotline_proto::pb::{CityStats, TicketStatus};
use hotline_proto::state::status_key;
use rusqlite::{Connection, params};

use crate::error::GatewayError;

pub const SCHEMA: &str = "
CREATE TABLE city_totals (
    city TEXT NOT NULL,
    direction TEXT NOT NULL,
    category TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (city, direction, category)
) WITHOUT ROWID;
CREATE TABLE city_status (
    city TEXT NOT NULL,
    direction TEXT NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (city, direction, status)
) WITHOUT ROWID;
";

pub const SENT: &str = "sent";
pub const RECEIVED: &str = "received";

pub fn count_total(
    conn: &Connection,
    city: &str,
    direction: &str,
    category: &str,
) -> Result<(), GatewayError> {
    conn.prepare_cached(
        "INSERT INTO city_totals (city, direction, category, n) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT (city, direction, category) DO UPDATE SET n = n + 1",
    )?
    .execute(params![city, direction, category])?;
    Ok(())
}

/// Moves one ticket of `city`'s `direction` from status `from` to `to`
/// (either may be absent: a ticket arriving or leaving).
pub fn move_status(
    conn: &Connection,
    city: &str,
    direction: &str,
    from: Option<TicketStatus>,
    to: Option<TicketStatus>,
) -> Result<(), GatewayError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO city_status (city, direction, status, n) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (city, direction, status) DO UPDATE SET n = n + excluded.n",
    )?;
    if let Some(from) = from {
        stmt.execute(params![city, direction, status_key(from), -1])?;
    }
    if let Some(to) = to {
        stmt.execute(params![city, direction, status_key(to), 1])?;
    }
    Ok(())
}

/// The statistics of the given cities (zeros for a city with no traffic).
pub fn read(conn: &Connection, cities: &[String]) -> Result<Vec<CityStats>, GatewayError> {
    let mut out: HashMap<&str, CityStats> = cities
        .iter()
        .map(|c| {
            (
                c.as_str(),
                CityStats {
                    city: c.clone(),
                    ..Default::default()
                },
            )
        })
        .collect();
    let mut totals = conn.prepare_cached("SELECT city, direction, category, n FROM city_totals")?;
    let rows = totals.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (city, direction, category, n) = row?;
        let Some(s) = out.get_mut(city.as_str()) else {
            continue;
        };
        let n = u64::try_from(n).unwrap_or(0);
        if direction == SENT {
            s.sent += n;
            *s.sent_by_category.entry(category).or_default() += n;
        } else {
            s.received += n;
            *s.received_by_category.entry(category).or_default() += n;
        }
    }
    let mut statuses =
        conn.prepare_cached("SELECT city, direction, status, n FROM city_status WHERE n != 0")?;
    let rows = statuses.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (city, direction, status, n) = row?;
        let Some(s) = out.get_mut(city.as_str()) else {
            continue;
        };
        let n = u64::try_from(n).unwrap_or(0);
        if direction == SENT {
            s.sent_by_status.insert(status, n);
        } else {
            s.received_by_status.insert(status, n);
        }
    }
    read_transfers(conn, &mut out)?;
    Ok(cities
        .iter()
        .filter_map(|c| out.remove(c.as_str()))
        .collect())
}

/// The call-transfer figures, from the tables the recorder keeps.
fn read_transfers(
    conn: &Connection,
    out: &mut HashMap<&str, CityStats>,
) -> Result<(), GatewayError> {
    let mut totals =
        conn.prepare_cached("SELECT city, direction, category, n FROM transfer_totals")?;
    let rows = totals.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    for row in rows {
        let (city, direction, category, n) = row?;
        let Some(s) = out.get_mut(city.as_str()) else {
            continue;
        };
        let n = u64::try_from(n).unwrap_or(0);
        match direction.as_str() {
            "out" => {
                s.transfers_out += n;
                *s.transfers_out_by_category.entry(category).or_default() += n;
            }
            "in" => {
                s.transfers_in += n;
                *s.transfers_in_by_category.entry(category).or_default() += n;
            }
            "answered" => {
                *s.transfers_answered_by_category
                    .entry(category)
                    .or_default() += n;
            }
            _ => {}
        }
    }
    let mut answers = conn.prepare_cached("SELECT city, n, answer_ms_sum FROM transfer_answers")?;
    let rows = answers.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (city, n, sum) = row?;
        let Some(s) = out.get_mut(city.as_str()) else {
            continue;
        };
        s.transfers_answered = u64::try_from(n).unwrap_or(0);
        if n > 0 {
            s.mean_answer_ms = sum as f64 / n as f64;
        }
    }
    let mut outcomes = conn.prepare_cached("SELECT city, state, n FROM transfer_outcomes")?;
    let rows = outcomes.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (city, state, n) = row?;
        let Some(s) = out.get_mut(city.as_str()) else {
            continue;
        };
        s.transfers_in_by_outcome
            .insert(state, u64::try_from(n).unwrap_or(0));
    }
    for s in out.values_mut() {
        if s.transfers_in > 0 {
            s.answer_rate = s.transfers_answered as f64 / s.transfers_in as f64;
        }
    }
    Ok(())
}
