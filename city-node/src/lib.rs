//! A city's node in the 12345 hotline federation.
//!
//! The city's hotline platform and operator consoles call the `CityHotline`
//! service ([`hotline`]) to create tickets and act on them; the rules of
//! those actions are in [`lifecycle`]. A ticket for another city is
//! committed here, then dispatched to the gateway from the node's outbox
//! ([`uplink`]) until the gateway acknowledges it, so the caller never
//! waits on the network and nothing is lost if the gateway is down. The
//! gateway delivers tickets for this city, and events of tickets this city
//! sent, through the `CityNode` service ([`inbound`]); both are applied once
//! and in order. Everything is kept in the node's [`store`].
//!
//! Operators' consoles keep a session open (`OperatorSession`); call
//! transfers to and from other cities (一键互转, 三方通话) are signalled in
//! [`calls`], over one long-lived stream to the gateway ([`signalling`]),
//! and routed to this city's consoles ([`operators`]).
//!
//! - [`config`]: the TOML configuration.
//! - [`server`]: starts everything on a bound listener and stops gracefully.

pub mod calls;
pub mod config;
pub mod error;
pub mod hotline;
pub mod inbound;
pub mod lifecycle;
pub mod operators;
pub mod server;
pub mod signalling;
pub mod store;
pub mod uplink;

pub use config::NodeConfig;
pub use error::NodeError;
pub use server::serve;
