//! The contract's error, and how every error of the project becomes a gRPC
//! status: a bad field is INVALID_ARGUMENT with a `google.rpc.BadRequest`
//! naming the field.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::pb::{EventKind, TicketStatus};

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("a ticket in status {} cannot take event {}", from.as_str_name(), event.as_str_name())]
    IllegalTransition {
        from: TicketStatus,
        event: EventKind,
    },
}

impl ContractError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// INVALID_ARGUMENT that names the field, in the message and in a
/// `google.rpc.BadRequest` detail.
pub fn invalid_argument(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

impl From<ContractError> for Status {
    fn from(e: ContractError) -> Self {
        match &e {
            ContractError::InvalidArgument { field, reason } => invalid_argument(field, reason),
            ContractError::IllegalTransition { .. } => Status::failed_precondition(e.to_string()),
        }
    }
}
