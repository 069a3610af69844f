//! The gateway's error, and its gRPC status.

use hotline_durable::DbError;
use hotline_proto::ContractError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("ticket {0} is not in the ledger")]
    UnknownTicket(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The event is ahead of the ledger; the sender retries.
    #[error("sequence gap on ticket {ticket}: the ledger is at {have}, the event is {got}")]
    SequenceGap { ticket: String, have: u64, got: u64 },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("stored data of ticket {0} cannot be read: {1}")]
    Corrupt(String, String),
}

impl From<hotline_durable::sql::Error> for GatewayError {
    fn from(e: hotline_durable::sql::Error) -> Self {
        GatewayError::Db(e.into())
    }
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Contract(c) => c.into(),
            GatewayError::UnknownTicket(_) | GatewayError::NotFound(_) => {
                Status::not_found(e.to_string())
            }
            GatewayError::PermissionDenied(_) => Status::permission_denied(e.to_string()),
            GatewayError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            GatewayError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            GatewayError::SequenceGap { .. } => Status::aborted(e.to_string()),
            // Another replica wrote the same ticket meanwhile: the caller
            // tries again and finds what that write left.
            GatewayError::Db(ref d) if d.is_conflict() => {
                Status::aborted(format!("a concurrent write; try again ({e})"))
            }
            GatewayError::Db(DbError::WriterGone | DbError::Busy { .. }) => {
                Status::unavailable(e.to_string())
            }
            GatewayError::Db(_) | GatewayError::Corrupt(..) => {
                tracing::error!(error = %e, "ledger failure");
                Status::internal(e.to_string())
            }
        }
    }
}
