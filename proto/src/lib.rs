//! The federation contract, shared by every service.
//!
//! - [`pb`]: the generated gRPC types of package `hotline.federation.v1`
//!   (messages, clients and servers of `CityHotline`, `Federation`,
//!   `CityNode` and `Observatory`).
//! - [`catalogue`]: the member cities and the hot categories, from
//!   configuration, with the defaults of the south-Sichuan federation.
//! - [`ids`]: ticket ids, made at the origin, globally unique and sortable.
//! - [`state`]: the ticket state machine: which event may follow which
//!   status, and who may make it. The only place that knows.
//! - [`validate`]: checks a new ticket before anyone stores it.
//! - [`error`]: the contract's error, which knows its gRPC status.
//! - [`privacy`]: masking of citizens' personal data.
//! - [`time`]: timestamps on the wire.

pub mod catalogue;
pub mod error;
pub mod grpc;
pub mod identity;
pub mod ids;
pub mod privacy;
pub mod state;
pub mod time;
pub mod transfer;
pub mod validate;

/// Generated code of `hotline.federation.v1`.
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod pb {
    tonic::include_proto!("hotline.federation.v1");

    /// The encoded descriptor set, for the gRPC reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/hotline_descriptor.bin"));
}

pub use catalogue::Catalogue;
pub use error::ContractError;
pub use ids::TicketId;
