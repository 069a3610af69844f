//! What the transport reads of the ledger: the Observatory's and the
//! dashboard's figures, lists and logs, each one read of one snapshot.
//!
//! The transport ([`crate::observatory`], [`crate::http`]) asks for what it
//! shows and says what its caller may see ([`Sees`]); it holds no
//! connection and writes no SQL. The SQL is in the modules that keep each
//! table ([`crate::stats`], [`crate::windows`], [`crate::fold`],
//! [`crate::supervision`], [`crate::flow`], [`crate::ledger`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hotline_proto::pb::{CityStats, CoordinationItem, Escalation, FlowEvent, TopMatter};

use crate::error::GatewayError;
use crate::ledger::Ledger;
use crate::stats::{self, Flow, Overdue};
use crate::supervision::{self, DigestRow, Filter};
use crate::windows::{Grain, Window};
use crate::{flow, ledger};

type Result<T> = std::result::Result<T, GatewayError>;

/// Whether the caller may see a ticket going from a city (its origin) to a
/// city (its handler) in a category: [`crate::roles::Viewer::sees_flow`].
pub type Sees = Arc<dyn Fn(&str, &str, &str) -> bool + Send + Sync>;

/// Everything is seen (the provincial centre's own dashboard).
pub fn everything() -> Sees {
    Arc::new(|_, _, _| true)
}

/// The dashboard's snapshot.
#[derive(Debug)]
pub struct Dashboard {
    pub stats: Vec<CityStats>,
    pub flow: Vec<Flow>,
    pub top_categories: HashMap<String, Vec<(String, u64)>>,
    pub overdue: Vec<Overdue>,
    pub overdue_total: u64,
    pub waiting: Vec<CoordinationItem>,
    pub waiting_total: u64,
    /// The flow log's newest cursor (0 when empty).
    pub cursor: u64,
    pub escalations: Vec<Escalation>,
    pub open_by_rule: BTreeMap<String, u64>,
    pub top_matters: Vec<TopMatter>,
}

/// What the metrics endpoint reads at scrape time.
#[derive(Debug)]
pub struct Scrape {
    pub stats: Vec<CityStats>,
    /// Items owed per destination.
    pub outbox: HashMap<String, i64>,
    pub waiting: u64,
}

/// The top matters of a month, per city asked for, and of the province.
pub type TopMatters = (Vec<(String, Vec<TopMatter>)>, Vec<TopMatter>);

impl Ledger {
    /// The flow matrix of the window `w`.
    pub async fn flow_matrix(&self, w: Window) -> Result<Vec<Flow>> {
        self.db().read(move |c| stats::flow_matrix(c, w)).await
    }

    /// Each city's categories by tickets sent in the window `w`, most first
    /// (ties in the catalogue's order).
    pub async fn top_categories(&self, w: Window) -> Result<HashMap<String, Vec<(String, u64)>>> {
        let order: Vec<String> = self.catalogue().category_ids().map(str::to_owned).collect();
        self.db()
            .read(move |c| stats::top_categories(c, w, &order))
            .await
    }

    /// The open tickets past their deadline at `now_ms` that the caller
    /// sees (a city those it handles), at most `limit`, and how many it
    /// sees in all.
    pub async fn overdue(
        &self,
        now_ms: i64,
        limit: usize,
        sees: Sees,
    ) -> Result<(Vec<Overdue>, u64)> {
        self.db()
            .read(move |c| {
                stats::overdue(
                    c,
                    now_ms,
                    limit,
                    &|o| sees(&o.handler, &o.handler, &o.category),
                    &|city, category| sees(city, city, category),
                )
            })
            .await
    }

    /// Escalations newest first, from number `before` down, that the caller
    /// sees; the number to go on from when there are more.
    pub async fn escalations(
        &self,
        filter: Filter,
        before: i64,
        limit: usize,
        sees: Sees,
    ) -> Result<(Vec<Escalation>, Option<i64>)> {
        self.db()
            .read(move |c| {
                supervision::list(c, &filter, before, limit, &|e| {
                    sees(&e.handling_city, &e.handling_city, &e.category)
                })
            })
            .await
    }

    /// The supervision digest of the day `day` as the caller sees it (a
    /// department its categories, a city the escalations about what it
    /// handles), and the reports merged that day in `cities` and
    /// `categories`.
    pub async fn digest(
        &self,
        day: Window,
        cities: Vec<String>,
        categories: Option<Vec<String>>,
        sees: Sees,
    ) -> Result<(BTreeMap<(i32, String), DigestRow>, u64)> {
        let from = crate::calendar::start_ms(day.period);
        let to = crate::calendar::start_ms(day.period + 1);
        self.db()
            .read(move |c| {
                let keep = |handler: &str, category: &str| sees(handler, handler, category);
                let lines = supervision::digest(c, from, to, &keep)?;
                let merged: u64 = stats::read(c, day, &cities, categories.as_deref())?
                    .iter()
                    .map(|s| s.merged)
                    .sum();
                Ok((lines, merged))
            })
            .await
    }

    /// The matters reported most in the month `month` (its period), in each
    /// of `cities` and, when `province`, in the whole province, as the
    /// caller sees them.
    pub async fn top_matters(
        &self,
        month: i64,
        cities: Vec<String>,
        province: bool,
        limit: usize,
        sees: Sees,
    ) -> Result<TopMatters> {
        self.db()
            .read(move |c| {
                let keep = |handler: &str, category: &str| sees(handler, handler, category);
                let mut out = Vec::new();
                for city in cities {
                    let matters = supervision::top_matters(c, month, &city, limit, &keep)?;
                    out.push((city, matters));
                }
                let all = if province {
                    supervision::top_matters(c, month, "", limit, &keep)?
                } else {
                    Vec::new()
                };
                Ok((out, all))
            })
            .await
    }

    /// The oldest and newest cursor of the flow log, if it holds anything.
    pub async fn flow_bounds(&self) -> Result<Option<(u64, u64)>> {
        self.db().read(flow::bounds).await
    }

    /// The flow log after `cursor`, at most `limit` entries; from `cursor`
    /// 0, the last `last` entries.
    pub async fn flow_after(&self, cursor: u64, last: u64, limit: usize) -> Result<Vec<FlowEvent>> {
        self.db()
            .read(move |c| {
                let after = if cursor == 0 {
                    flow::bounds(c)?
                        .map(|(_, hi)| hi.saturating_sub(last))
                        .unwrap_or(0)
                } else {
                    cursor
                };
                flow::after(c, after, limit)
            })
            .await
    }

    /// The dashboard at `now_ms`: the figures of the window `w`, the top
    /// categories of the month, and the first `listed` of each list.
    pub async fn dashboard(&self, w: Window, now_ms: i64, listed: usize) -> Result<Dashboard> {
        let cities: Vec<String> = self.catalogue().city_ids().map(str::to_owned).collect();
        let order: Vec<String> = self.catalogue().category_ids().map(str::to_owned).collect();
        self.db()
            .read(move |c| {
                let month = Window::at(Grain::Month, now_ms);
                let (overdue, overdue_total) =
                    stats::overdue(c, now_ms, listed, &|_| true, &|_, _| true)?;
                let filter = Filter {
                    rule: None,
                    include_closed: false,
                    ticket_id: None,
                };
                Ok(Dashboard {
                    stats: stats::read(c, w, &cities, None)?,
                    flow: stats::flow_matrix(c, w)?,
                    top_categories: stats::top_categories(c, month, &order)?,
                    overdue,
                    overdue_total,
                    waiting: ledger::coordination(c, 0, listed, false)?.0,
                    waiting_total: ledger::coordination_waiting(c)?,
                    cursor: flow::bounds(c)?.map(|(_, hi)| hi).unwrap_or(0),
                    escalations: supervision::list(c, &filter, i64::MAX, listed, &|_| true)?.0,
                    open_by_rule: supervision::open_by_rule(c)?,
                    top_matters: supervision::top_matters(c, month.period, "", 10, &|_, _| true)?,
                })
            })
            .await
    }

    /// What the metrics endpoint reads: every city's figures since the
    /// start, the outbox's depth, the coordination queue's.
    pub async fn scrape(&self) -> Result<Scrape> {
        let cities: Vec<String> = self.catalogue().city_ids().map(str::to_owned).collect();
        self.db()
            .read(move |c| {
                Ok(Scrape {
                    stats: stats::read(c, Window::ALL, &cities, None)?,
                    outbox: hotline_durable::outbox::depth(c)?,
                    waiting: ledger::coordination_waiting(c)?,
                })
            })
            .await
    }

    /// The store's own counters (commits, reads, connections).
    pub fn store_stats(&self) -> &hotline_durable::db::DbStats {
        self.db().stats()
    }
}
