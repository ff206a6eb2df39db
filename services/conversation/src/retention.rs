//! Internal `RetentionService`: deletes a tenant's expired conversations a
//! batch at a time, for the gateway's retention sweep (which owns the
//! organisations' settings, decides the cutoff and writes the audit entry).
//! Deletion is real: the conversation rows go, their messages with them
//! (`ON DELETE CASCADE`), and so their search entries, which live in the
//! message rows' own GIN-indexed column.

use tonic::{Request, Response, Status};
use tp_proto::internal::conversation::v1 as internal;
use tp_store::Pool;
use tp_store::TxTimer;

use crate::error::ConversationError;

/// Largest batch one call may delete.
pub const MAX_BATCH: i32 = 1_000;

/// `db.operation.name` of a purge.
pub const OPERATION: &str = "purge_expired";

pub struct RetentionHandler {
    pool: Pool,
    timer: TxTimer,
}

impl RetentionHandler {
    pub fn new(pool: Pool, timer: TxTimer) -> Self {
        Self { pool, timer }
    }
}

#[tonic::async_trait]
impl internal::retention_service_server::RetentionService for RetentionHandler {
    async fn purge_expired(
        &self,
        request: Request<internal::PurgeExpiredRequest>,
    ) -> Result<Response<internal::PurgeExpiredResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let request = request.into_inner();
        let cutoff = request
            .cutoff
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
            .ok_or_else(|| Status::invalid_argument("cutoff is required"))?;
        if !(1..=MAX_BATCH).contains(&request.batch_size) {
            return Err(Status::invalid_argument(format!(
                "batch_size must be between 1 and {MAX_BATCH}, got {}",
                request.batch_size
            )));
        }
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, OPERATION)
            .await
            .map_err(ConversationError::from)?;
        // SKIP LOCKED: a conversation in the middle of a turn is left for
        // the next pass rather than waited for.
        let deleted: Vec<i32> = sqlx::query_scalar(
            "WITH doomed AS (
                 SELECT tenant_id, conversation_id FROM conversation.conversations
                  WHERE update_time < $1
                  ORDER BY update_time LIMIT $2
                    FOR UPDATE SKIP LOCKED)
             DELETE FROM conversation.conversations c
              USING doomed d
              WHERE c.tenant_id = d.tenant_id AND c.conversation_id = d.conversation_id
          RETURNING c.message_count",
        )
        .bind(cutoff)
        .bind(i64::from(request.batch_size))
        .fetch_all(&mut *tx)
        .await
        .map_err(ConversationError::from)?;
        tx.commit().await.map_err(ConversationError::from)?;
        Ok(Response::new(internal::PurgeExpiredResponse {
            conversations_deleted: i32::try_from(deleted.len()).unwrap_or(i32::MAX),
            messages_deleted: deleted.iter().sum(),
        }))
    }
}
