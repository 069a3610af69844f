//! The gateway's HTTP port: the provincial dashboard (a page and the files
//! it needs, all served from here, no CDN), the JSON it reads, and
//! Prometheus `/metrics`.
//!
//! Everything here is the province's view, aggregated or masked: ids,
//! cities, categories and states, never a citizen's name, phone or words.
//! The port listens on loopback unless configured otherwise; a centre that
//! opens it wider puts its own authenticating proxy in front.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hotline_proto::pb::flow_event::Change;
use hotline_proto::pb::{EventKind, TicketStatus, TransferMode, TransferState};
use hotline_proto::time;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::error::GatewayError;
use crate::ledger::Ledger;
use crate::windows::{Grain, Window};

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

/// Overdue tickets and coordination items the dashboard lists.
const LISTED: usize = 12;
/// Events the dashboard asks for at a time.
const EVENTS_PER_POLL: usize = 200;

#[derive(Clone)]
struct Http {
    ledger: Ledger,
}

/// Whether a request's `Host` (or HTTP/2 authority) may reach the
/// dashboard: an IP address (a DNS rebinding attack needs a name),
/// `localhost`, or one of `allowed` (the configuration's `http_hosts`),
/// with or without a port; no host at all (HTTP/1.0) passes too.
pub fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host.map(str::trim) else {
        return true;
    };
    // `[::1]:7480`, `[::1]`: an IPv6 address.
    if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split(']')
            .next()
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || allowed
            .iter()
            .any(|a| a.trim_end_matches('.').eq_ignore_ascii_case(&name))
}

/// Serves the dashboard and `/metrics` on `listener` until `shutdown`,
/// to requests whose host [`host_allowed`] accepts among `hosts`.
pub async fn serve(
    listener: TcpListener,
    ledger: Ledger,
    hosts: Vec<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let hosts = Arc::new(hosts);
    let guard = move |request: axum::extract::Request, next: axum::middleware::Next| {
        let hosts = hosts.clone();
        async move {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| request.uri().authority().map(|a| a.as_str()));
            if host_allowed(host, &hosts) {
                next.run(request).await
            } else {
                (
                    StatusCode::MISDIRECTED_REQUEST,
                    "this host name is not the gateway's dashboard: add it to http_hosts in the gateway's configuration\n",
                )
                    .into_response()
            }
        }
    };
    let app = Router::new()
        .route(
            "/",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { page(STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .route("/api/overview", get(overview))
        .route("/api/events", get(events))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Arc::new(Http { ledger }))
        .layer(axum::middleware::from_fn(guard));
    accept(listener, app, shutdown).await;
    Ok(())
}

/// How long a client of the HTTP port may take to send a request's
/// headers (the first, and each next one on a kept-alive connection)
/// before the connection is closed: a slow or idle client (slowloris)
/// lets go of its file descriptor.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Connections the HTTP port holds at once; past them a new one is closed
/// at once, so that the dashboard cannot take the file descriptors the
/// gRPC port needs.
pub const MAX_CONNECTIONS: usize = 256;

/// Serves `app` on every connection `listener` accepts, at most
/// [`MAX_CONNECTIONS`] at once, each with [`HEADER_TIMEOUT`]; on `shutdown`
/// stops accepting and gives open connections five seconds to finish.
async fn accept(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, for instance: wait, go on.
                    tracing::warn!(error = %e, "the dashboard cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "the dashboard holds {MAX_CONNECTIONS} connections: one more closed");
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let served = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(error = %e, "a dashboard connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn failure(e: GatewayError) -> Response {
    tracing::error!(error = %e, "dashboard query failed");
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

#[derive(Deserialize)]
struct OverviewQuery {
    /// "hour", "day", "month" or "all".
    window: Option<String>,
}

async fn overview(State(http): State<Arc<Http>>, Query(q): Query<OverviewQuery>) -> Response {
    let grain = match q.window.as_deref().unwrap_or("day") {
        "hour" => Grain::Hour,
        "day" => Grain::Day,
        "month" => Grain::Month,
        "all" => Grain::All,
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("window: {other:?} is not one of hour, day, month, all"),
            )
                .into_response();
        }
    };
    let now = time::now_ms();
    let w = Window::at(grain, now);
    let catalogue = http.ledger.catalogue();
    let d = match http.ledger.dashboard(w, now, LISTED).await {
        Ok(d) => d,
        Err(e) => return failure(e),
    };
    let crate::reads::Dashboard {
        stats,
        flow,
        top_categories: top,
        overdue,
        overdue_total,
        waiting,
        waiting_total,
        cursor,
        escalations,
        open_by_rule,
        top_matters: matters,
    } = d;
    let names: HashMap<&str, &str> = catalogue
        .cities
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str()))
        .collect();
    let body = json!({
        "window": match grain { Grain::All => "all", Grain::Hour => "hour", Grain::Day => "day", Grain::Month => "month" },
        "period": w.label(),
        "now_ms": now,
        "cursor": cursor,
        "cities": catalogue.cities.iter().map(|c| json!({"id": c.id, "name": c.name})).collect::<Vec<_>>(),
        "categories": catalogue.categories.iter().map(|c| json!({"id": c.id, "name": c.name})).collect::<Vec<_>>(),
        "stats": stats.iter().map(|s| json!({
            "city": s.city,
            "name": names.get(s.city.as_str()).copied().unwrap_or(""),
            "sent": s.sent,
            "received": s.received,
            "accepted": s.accepted,
            "rejected": s.rejected,
            "resolved": s.resolved,
            "resolved_on_time": s.resolved_on_time,
            "resolved_overdue": s.resolved_overdue,
            "satisfaction_rate": s.satisfaction_rate,
            "reopened": s.reopened,
            "accept_ms_p50": s.accept_ms_p50,
            "accept_ms_p90": s.accept_ms_p90,
            "resolve_ms_p50": s.resolve_ms_p50,
            "resolve_ms_p90": s.resolve_ms_p90,
            "transfers_out": s.transfers_out,
            "transfers_in": s.transfers_in,
            "answer_rate": s.answer_rate,
            "overdue_open": s.overdue_open,
            "sent_by_category": s.sent_by_category,
            "received_by_category": s.received_by_category,
        })).collect::<Vec<_>>(),
        "flow": flow.iter().map(|f| json!({
            "origin": f.origin, "target": f.target, "category": f.category,
            "tickets": f.tickets, "transfers": f.transfers,
        })).collect::<Vec<_>>(),
        "top_month": top.iter().map(|(city, list)| (city.clone(), list.iter().take(10).map(|(c, n)| json!([c, n])).collect::<Vec<_>>())).collect::<HashMap<_, _>>(),
        "overdue": {
            "total": overdue_total,
            "tickets": overdue.iter().map(|o| json!({
                "id": o.id, "origin": o.origin, "handler": o.handler, "category": o.category,
                "status": status_name(o.status), "due_ms": o.due_ms, "urgent": o.urgent,
                "stage": o.stage,
            })).collect::<Vec<_>>(),
        },
        "supervision": {
            "open": open_by_rule.values().sum::<u64>(),
            "open_by_rule": open_by_rule,
            "merged": stats.iter().map(|s| s.merged).sum::<u64>(),
            "escalations": escalations.iter().map(|e| json!({
                "id": e.id,
                "rule": crate::supervision::rule_name(e.rule),
                "reason": e.reason,
                "handler": e.handling_city,
                "category": e.category,
                "department": e.department,
                "tickets": e.ticket_ids.len(),
                "actions": e.actions.len(),
                "open_ms": e.open_time.as_ref().map(time::to_unix_ms),
            })).collect::<Vec<_>>(),
            "top_matters": matters.iter().map(|m| json!({
                "id": m.ticket_id, "subject": m.subject, "location": m.location,
                "handler": m.handling_city, "category": m.category, "reports": m.reports,
            })).collect::<Vec<_>>(),
        },
        "coordination": {
            "waiting": waiting_total,
            "items": waiting.iter().map(|i| json!({
                "id": i.ticket_id, "origin": i.origin_city, "category": i.category,
                "rejected_by": i.rejected_by,
                "reject_ms": i.reject_time.as_ref().map(time::to_unix_ms),
            })).collect::<Vec<_>>(),
        },
    });
    axum::Json(body).into_response()
}

fn status_name(raw: i32) -> &'static str {
    TicketStatus::try_from(raw)
        .map(|s| s.as_str_name().trim_start_matches("TICKET_STATUS_"))
        .unwrap_or("UNKNOWN")
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<u64>,
}

/// The flow log after a cursor, for the dashboard's live ticker.
async fn events(State(http): State<Arc<Http>>, Query(q): Query<EventsQuery>) -> Response {
    let after = q.after.unwrap_or(0);
    // From the start, the last twenty.
    let read = http.ledger.flow_after(after, 20, EVENTS_PER_POLL).await;
    let events = match read {
        Ok(e) => e,
        Err(e) => return failure(e),
    };
    let list: Vec<Value> = events
        .iter()
        .map(|e| {
            let at = e.time.as_ref().map(time::to_unix_ms);
            match &e.change {
                Some(Change::Ticket(t)) => json!({
                    "cursor": e.cursor, "at_ms": at, "type": "ticket", "id": t.ticket_id,
                    "origin": t.origin_city, "target": t.handling_city, "category": t.category,
                    "what": EventKind::try_from(t.kind).map(|k| k.as_str_name().trim_start_matches("EVENT_KIND_")).unwrap_or("UNKNOWN"),
                    "urgent": t.urgent,
                }),
                Some(Change::Transfer(t)) => json!({
                    "cursor": e.cursor, "at_ms": at, "type": "transfer", "id": t.transfer_id,
                    "origin": t.origin_city, "target": t.target_city, "category": t.category,
                    "what": TransferState::try_from(t.state).map(|k| k.as_str_name().trim_start_matches("TRANSFER_STATE_")).unwrap_or("UNKNOWN"),
                    "mode": TransferMode::try_from(t.mode).map(|k| k.as_str_name().trim_start_matches("TRANSFER_MODE_")).unwrap_or("UNKNOWN"),
                }),
                None => json!({"cursor": e.cursor}),
            }
        })
        .collect();
    axum::Json(json!({ "events": list })).into_response()
}

/// One metric family with its samples, read at scrape time.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    samples: Vec<(Vec<(&'static str, String)>, i64)>,
}

#[derive(Debug)]
struct Scrape(Vec<Family>);

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            if f.counter {
                let t = ConstCounter::new(0u64).metric_type();
                let mut m = encoder.encode_descriptor(f.name, f.help, None, t)?;
                for (labels, v) in &f.samples {
                    let c = ConstCounter::new(u64::try_from(*v).unwrap_or(0));
                    c.encode(m.encode_family(labels)?)?;
                }
            } else {
                let t = ConstGauge::new(0i64).metric_type();
                let mut m = encoder.encode_descriptor(f.name, f.help, None, t)?;
                for (labels, v) in &f.samples {
                    ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// Every label value here is a city or category id of the catalogue, a
/// status or state name, or a fixed word: the label sets are bounded.
async fn metrics(State(http): State<Arc<Http>>) -> Response {
    let crate::reads::Scrape {
        stats,
        outbox: depth,
        waiting,
    } = match http.ledger.scrape().await {
        Ok(r) => r,
        Err(e) => return failure(e),
    };
    let mut families = Vec::new();
    let mut family = |name, help, counter, samples| {
        families.push(Family {
            name,
            help,
            counter,
            samples,
        })
    };
    let per_category = |pick: fn(&hotline_proto::pb::CategoryFigures) -> u64| {
        let mut out = Vec::new();
        for s in &stats {
            let mut cats: Vec<_> = s.by_category.iter().collect();
            cats.sort_by(|a, b| a.0.cmp(b.0));
            for (cat, f) in cats {
                out.push((
                    vec![("city", s.city.clone()), ("category", cat.clone())],
                    pick(f) as i64,
                ));
            }
        }
        out
    };
    family(
        "hotline_tickets_sent",
        "Cross-city tickets a city dispatched, by category.",
        true,
        per_category(|f| f.sent),
    );
    family(
        "hotline_tickets_received",
        "Cross-city tickets delivered to a city to handle, by category.",
        true,
        per_category(|f| f.received),
    );
    let mut events = Vec::new();
    for s in &stats {
        for (event, n) in [
            ("accepted", s.accepted),
            ("rejected", s.rejected),
            ("resolved", s.resolved),
            ("reopened", s.reopened),
        ] {
            events.push((
                vec![("city", s.city.clone()), ("event", event.to_owned())],
                n as i64,
            ));
        }
    }
    family(
        "hotline_ticket_events",
        "Events of the tickets a city handles.",
        true,
        events,
    );
    let per_city = |pick: fn(&hotline_proto::pb::CityStats) -> u64| {
        stats
            .iter()
            .map(|s| (vec![("city", s.city.clone())], pick(s) as i64))
            .collect::<Vec<_>>()
    };
    family(
        "hotline_tickets_resolved_overdue",
        "Tickets a city resolved after their deadline.",
        true,
        per_city(|s| s.resolved_overdue),
    );
    family(
        "hotline_tickets_overdue_open",
        "Open tickets a city handles that are past their deadline now.",
        false,
        per_city(|s| s.overdue_open),
    );
    family(
        "hotline_reports_merged",
        "Reports a city sent that the gateway merged into an open ticket about the same matter (合并派单).",
        true,
        per_city(|s| s.merged),
    );
    family(
        "hotline_escalations",
        "Escalations the province opened about tickets a city handles (督办).",
        true,
        per_city(|s| s.escalated),
    );
    let mut status = Vec::new();
    for s in &stats {
        for (side, map) in [
            ("sent", &s.sent_by_status),
            ("handled", &s.received_by_status),
        ] {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort();
            for (st, n) in entries {
                status.push((
                    vec![
                        ("city", s.city.clone()),
                        ("side", side.to_owned()),
                        ("status", st.clone()),
                    ],
                    *n as i64,
                ));
            }
        }
    }
    family(
        "hotline_tickets",
        "Tickets a city sent or handles now, by their status now.",
        false,
        status,
    );
    let mut transfers = Vec::new();
    for s in &stats {
        for (direction, n) in [
            ("out", s.transfers_out),
            ("in", s.transfers_in),
            ("answered", s.transfers_answered),
        ] {
            transfers.push((
                vec![
                    ("city", s.city.clone()),
                    ("direction", direction.to_owned()),
                ],
                n as i64,
            ));
        }
    }
    family(
        "hotline_transfers",
        "Call transfers a city started (out), was offered (in) and answered.",
        true,
        transfers,
    );
    let mut outcomes = Vec::new();
    for s in &stats {
        let mut entries: Vec<_> = s.transfers_in_by_outcome.iter().collect();
        entries.sort();
        for (state, n) in entries {
            outcomes.push((
                vec![("city", s.city.clone()), ("state", state.clone())],
                *n as i64,
            ));
        }
    }
    family(
        "hotline_transfers_ended",
        "Call transfers to a city that ended, by final state.",
        true,
        outcomes,
    );
    family(
        "hotline_coordination_waiting",
        "Rejected tickets waiting in the provincial coordination queue.",
        false,
        vec![(vec![], waiting as i64)],
    );
    let mut backlog: Vec<_> = depth
        .into_iter()
        .map(|(city, n)| (vec![("city", city)], n))
        .collect();
    backlog.sort();
    family(
        "hotline_outbox_items",
        "Deliveries the gateway still owes each city.",
        false,
        backlog,
    );
    let db = http.ledger.store_stats();
    family(
        "hotline_ledger_commits",
        "Ledger transactions committed (one fsync each) since the gateway started.",
        true,
        vec![(vec![], db.commits.load(Ordering::Relaxed) as i64)],
    );
    family(
        "hotline_ledger_writes",
        "Ledger writes committed since the gateway started.",
        true,
        vec![(vec![], db.writes.load(Ordering::Relaxed) as i64)],
    );
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(families)));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn only_addresses_localhost_and_the_configured_names_reach_the_dashboard() {
        let none: Vec<String> = Vec::new();
        for ok in [
            "127.0.0.1:7480",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:7480",
            "[::1]",
            "localhost:7480",
            "LOCALHOST",
        ] {
            assert!(host_allowed(Some(ok), &none), "{ok}");
        }
        assert!(host_allowed(None, &none));
        // A name that resolves to loopback is what DNS rebinding uses.
        for refused in [
            "evil.example:7480",
            "evil.example",
            "127.0.0.1.nip.io",
            "[evil]:1",
            "",
        ] {
            assert!(!host_allowed(Some(refused), &none), "{refused}");
        }
        let named = vec!["dashboard.hotline.example".to_owned()];
        assert!(host_allowed(Some("Dashboard.Hotline.Example:443"), &named));
        assert!(host_allowed(Some("dashboard.hotline.example."), &named));
        assert!(!host_allowed(Some("other.hotline.example"), &named));
    }
}
