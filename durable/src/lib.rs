//! Durable storage both hops share.
//!
//! Every hop of the federation commits before it acknowledges and forwards
//! from its own durable queue until the next hop acknowledges. This crate is
//! that mechanism, once:
//!
//! - [`db`]: an embedded SQLite database in WAL mode with one writer thread
//!   that commits many callers' writes in one transaction (group commit), so
//!   the cost of the fsync is shared; each caller's write runs in its own
//!   savepoint, so one failing write never takes the others with it. Reads
//!   go to a pool of reader connections and never wait for the writer.
//! - [`outbox`]: a persisted queue per destination, ordered per ticket,
//!   urgent items first, retried with exponential backoff and jitter, with a
//!   dead-letter table for what the next hop refuses for good. A restarted
//!   process resumes it where it stopped.

pub mod db;
pub mod lease;
pub mod outbox;
pub mod sql;
pub mod testing;

pub use db::{Db, DbError, Store};
pub use outbox::{Item, Outbox, Outcome};
