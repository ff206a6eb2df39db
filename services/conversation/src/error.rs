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
    /// No such message in the caller's conversations.
    #[error("message {0} not found")]
    MessageNotFound(Uuid),
    /// EditMessage named a reply: only the member's own turns are edited.
    #[error("message {0} is a reply")]
    NotUserTurn(Uuid),
    /// An idempotency key sent with a different request in the conversation.
    #[error("idempotency key reused for a different request")]
    KeyReused,
    /// RegenerateReply while another reply to the same turn is being written.
    #[error("a reply to message {0} is being written")]
    ReplyInProgress(Uuid),
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
            ConversationError::MessageNotFound(id) => Status::not_found(format!(
                "message {id} not found in your conversations (it may have been deleted, or \
                 belong to someone else)"
            )),
            ConversationError::NotUserTurn(id) => Status::invalid_argument(format!(
                "message {id} is the thought partner's reply, not your turn: only your own \
                 turns can be edited (RegenerateReply asks for another reply)"
            )),
            ConversationError::KeyReused => Status::invalid_argument(
                "idempotency_key was already used for a different request in this \
                 conversation; use a new key for each new request (nothing was stored)",
            ),
            ConversationError::ReplyInProgress(id) => Status::failed_precondition(format!(
                "a reply to message {id} is being written right now; wait for it to finish, \
                 then ask again (nothing was stored)"
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
