//! The provincial gateway of the 12345 hotline federation.
//!
//! City nodes dispatch cross-city tickets (工单互派) and report their events
//! through the `Federation` service; the gateway commits each to its
//! [`ledger`] before it answers, and forwards from the ledger's outbox to
//! each city's node ([`delivery`]) until the node acknowledges. The ledger is
//! the single order of each ticket's events and enforces the state machine of
//! the contract crate: a rejected ticket goes to the coordination queue,
//! never on to a third city (一件转办). The provincial centre reads per-city
//! statistics ([`stats`], kept up to date on write) and works the
//! coordination queue through the `Observatory` service ([`observatory`]);
//! departments and cities see their part of it ([`roles`]).
//!
//! Call transfers (一键互转, 三方通话) are live signalling: the
//! [`switchboard`] holds each transfer, orders its moves and relays them
//! over one long-lived stream per node; the [`recorder`] writes every move
//! and the transfer figures to the ledger before the move is relayed.
//!
//! The ledger's shape is decide, then persist: [`rules`] holds its rules as
//! pure functions, [`ledger`] loads what they need and writes what they
//! decide, [`fold`] sums the counters of a whole commit, and [`working`]
//! keeps the merge candidates and open escalations in memory. The
//! transport reads through [`reads`], never through a connection.
//!
//! - [`limits`]: a rate per caller, so that one city cannot starve the
//!   others.
//! - [`config`]: the TOML configuration.
//! - [`federation`]: the `Federation` service.
//! - [`server`]: starts everything on a bound listener and stops gracefully.

pub mod calendar;
pub mod config;
pub mod delivery;
pub mod error;
pub mod federation;
pub mod flow;
pub mod flowtail;
pub mod fold;
pub mod http;
pub mod ledger;
pub mod limits;
pub mod matter;
pub mod observatory;
pub mod reads;
pub mod recorder;
pub mod roles;
pub mod rules;
pub mod schema;
pub mod server;
pub mod stats;
pub mod supervision;
pub mod switchboard;
pub mod windows;
pub mod working;

pub use config::GatewayConfig;
pub use error::GatewayError;
pub use server::serve;
