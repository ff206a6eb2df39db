//! Domain errors, mapped to gRPC status at the edge.

use tonic::Status;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("conversation {0} not found")]
    ConversationNotFound(Uuid),
    #[error(transparent)]
    Store(#[from] tp_store::StoreError),
    #[error("{0}")]
    QuotaExceeded(crate::usage::QuotaExceeded),
    #[error("conversation {0} is full")]
    TranscriptFull(Uuid),
}

impl From<sqlx::Error> for ConversationError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<ConversationError> for Status {
    fn from(e: ConversationError) -> Self {
        match e {
            ConversationError::ConversationNotFound(id) => Status::not_found(format!(
                "conversation {id} not found (it may have been deleted, or belong to someone else)"
            )),
            ConversationError::TranscriptFull(id) => Status::failed_precondition(format!(
                "conversation {id} has reached its limit of {} messages; start a new \
                 conversation to go on (nothing was stored)",
                crate::store::MAX_TRANSCRIPT_MESSAGES
            )),
            ConversationError::QuotaExceeded(exceeded) => {
                Status::resource_exhausted(exceeded.to_string())
            }
            ConversationError::Store(e) => {
                tracing::error!(error = %e, "storage failure");
                Status::unavailable("storage is unavailable; retry with the same idempotency_key")
            }
        }
    }
}
