//! The simulator: drives a whole federation for integration tests, demos and
//! benchmarks.
//!
//! - [`cluster`]: the gateway and a node per city, in this process, on real
//!   loopback sockets.
//! - [`workload`]: citizens' requests from a seed.
//! - [`operators`]: simulated operators and the provincial coordinator.
//! - [`calls`]: calls that transfer to another city: each city's desk and
//!   its operators at consoles.
//! - [`report`]: counts what the stores hold (lost, duplicated, per city)
//!   and compares it with the gateway's statistics.
//! - [`demo`]: the front door, `simulator demo`.
//! - [`spawn`]: a federation of real child processes, each measurable.
//! - [`flood`]: `simulator bench-flood`, another city's latency while one
//!   floods the gateway.
//! - [`peers`]: `simulator bench`, the gateway beside a direct call,
//!   haproxy and nginx.
//! - [`pki`]: the run's development CA; every link is mutual TLS.
//! - [`scenario`], [`plan`]: `simulator run`'s scenarios (TOML) and the
//!   workload drawn from one and a seed.
//! - [`run`]: `simulator run`, a scenario against spawned processes or a
//!   running federation, with faults ([`faultproxy`]) and [`invariants`].
//! - [`bench`]: `simulator bench-transfers`, ring latency and how many live
//!   transfers one gateway holds.

pub mod bench;
pub mod calls;
pub mod cluster;
pub mod demo;
pub mod faultproxy;
pub mod flood;
pub mod html;
pub mod instructions;
pub mod invariants;
pub mod matters;
pub mod operators;
pub mod peers;
pub mod pki;
pub mod plan;
pub mod replbench;
pub mod report;
pub mod run;
pub mod scenario;
pub mod sink;
pub mod spawn;
pub mod statsbench;
pub mod supbench;
pub mod workload;
