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
//! - [`bench`]: `simulator bench-transfers`, ring latency and how many live
//!   transfers one gateway holds.

pub mod bench;
pub mod calls;
pub mod cluster;
pub mod demo;
pub mod operators;
pub mod report;
pub mod spawn;
pub mod workload;

/// A lazily connected channel to a process of the federation.
pub fn channel(addr: std::net::SocketAddr) -> anyhow::Result<tonic::transport::Channel> {
    Ok(
        hotline_proto::grpc::endpoint(&addr.to_string(), Some(std::time::Duration::from_secs(10)))
            .map_err(anyhow::Error::msg)?
            .connect_lazy(),
    )
}
