//! The city node's error, and its gRPC status.

use hotline_durable::DbError;
use hotline_proto::ContractError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("ticket {0} is not known here")]
    UnknownTicket(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    /// A request id already used by a request that said something else.
    #[error("{0}")]
    AlreadyExists(String),
    #[error("transfer {0} is not known here")]
    UnknownTransfer(String),
    /// An event ahead of what this node has; the gateway resends it.
    #[error("sequence gap on ticket {ticket}: this node is at {have}, the event is {got}")]
    SequenceGap { ticket: String, have: u64, got: u64 },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("stored data of ticket {0} cannot be read: {1}")]
    Corrupt(String, String),
}

impl From<hotline_durable::sql::Error> for NodeError {
    fn from(e: hotline_durable::sql::Error) -> Self {
        NodeError::Db(e.into())
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Contract(c) => c.into(),
            NodeError::UnknownTicket(_) | NodeError::UnknownTransfer(_) => {
                Status::not_found(e.to_string())
            }
            NodeError::PermissionDenied(_) => Status::permission_denied(e.to_string()),
            NodeError::Unavailable(_)
            | NodeError::Db(
                hotline_durable::DbError::WriterGone | hotline_durable::DbError::Busy { .. },
            ) => Status::unavailable(e.to_string()),
            NodeError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            NodeError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            NodeError::SequenceGap { .. } => Status::aborted(e.to_string()),
            NodeError::Db(_) | NodeError::Corrupt(..) => {
                tracing::error!(error = %e, "store failure");
                Status::internal(e.to_string())
            }
        }
    }
}
