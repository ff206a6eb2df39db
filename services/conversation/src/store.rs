//! Conversation and transcript persistence. Every function opens its own
//! short tenant-scoped transaction through [`tp_store::TxTimer::begin`]
//! (timed, by the operation it serves); the
//! `user_id` filters keep one member's conversations private from other
//! members of the same tenant, and row-level security keeps tenants apart.

use sqlx::PgPool;
use time::OffsetDateTime;
use tp_context::RequestContext;
use tp_store::TxTimer;
use tp_store::paging::Page;
use uuid::Uuid;

use crate::error::ConversationError;
use crate::reply::ProducedReply;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ConversationRow {
    pub conversation_id: Uuid,
    pub title: String,
    pub create_time: OffsetDateTime,
    pub update_time: OffsetDateTime,
    pub list_seq: i64,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct MessageRow {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub seq: i64,
    pub role: String,
    pub content: String,
    pub create_time: OffsetDateTime,
}

/// The durable part of a member's context profile, as stored.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct KeptProfile {
    pub role: Option<String>,
    pub team_size: Option<i32>,
    pub stage: Option<String>,
    pub update_time: OffsetDateTime,
}

impl KeptProfile {
    pub fn to_coach(&self) -> tp_coach::ContextProfile {
        tp_coach::ContextProfile::from_kept(
            self.role.as_deref(),
            self.team_size.and_then(|n| u32::try_from(n).ok()),
            self.stage.as_deref(),
        )
    }
}

/// What [`ConversationStore::begin_exchange`] found or wrote.
pub struct Exchange {
    /// The persisted user turn (new, or the one stored under the same key).
    pub user_message: MessageRow,
    /// Who writes the reply: this call, another call, or no one (stored).
    pub reply: ReplyOwner,
    /// The user's earlier turns, oldest first, for the coach's context.
    pub earlier_user_turns: Vec<String>,
    /// The earlier turns of both sides, oldest first, for a model's prompt.
    pub transcript: Vec<tp_llm::ChatMessage>,
    /// What was kept about the member from earlier conversations.
    pub kept_profile: Option<KeptProfile>,
}

/// Who writes the reply to a user turn.
#[derive(Debug)]
pub enum ReplyOwner {
    /// This call holds the turn's reply lease: it writes the reply,
    /// renewing the lease as it goes.
    This(ReplyLease),
    /// Another call holds the lease (the original of a racing retry): wait
    /// for its reply with [`ConversationStore::await_reply`].
    Another,
    /// The reply is stored: replay it.
    Stored(MessageRow),
}

/// A reply lease held by this call: the holder's id, which renewing and
/// releasing the lease must present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyLease(Uuid);

/// How long a reply lease lasts unless its holder renews it: how long the
/// retries of a turn wait when the process writing its reply has died. A
/// retry that takes over from a holder still alive (cut off from the
/// database for longer than this) costs a second model call, never a
/// second reply: the first reply stored wins.
pub const REPLY_LEASE: std::time::Duration = std::time::Duration::from_secs(15);

/// How often the holder renews its lease: three tries per lease.
pub const REPLY_LEASE_RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Most messages (both sides) one conversation may hold: 10,000 exchanges.
/// Past it, a new conversation is the answer (the coach sees only the last
/// turns anyway); a transcript cannot grow without bound.
pub const MAX_TRANSCRIPT_MESSAGES: usize = 20_000;

/// How many earlier turns (both sides) the responder sees.
const CONTEXT_TURNS: i64 = 40;

// Column lists as macros, so every statement is one `&'static str` built at
// compile time (no per-call formatting, nothing dynamic in the SQL).
macro_rules! conversation_columns {
    () => {
        "conversation_id, title, create_time, update_time, list_seq"
    };
}
macro_rules! message_columns {
    () => {
        "message_id, conversation_id, seq, role, content, create_time"
    };
}

/// `db.operation.name` of each transaction the service runs: one fixed
/// name per store function, never anything from the request.
pub mod op {
    pub const CREATE_CONVERSATION: &str = "create_conversation";
    pub const GET_CONVERSATION: &str = "get_conversation";
    pub const LIST_CONVERSATIONS: &str = "list_conversations";
    pub const DELETE_CONVERSATION: &str = "delete_conversation";
    pub const LIST_MESSAGES: &str = "list_messages";
    /// SendMessage: the user's turn (and the quota check), before the reply.
    pub const BEGIN_EXCHANGE: &str = "begin_exchange";
    /// SendMessage: the assistant's turn, usage and kept profile.
    pub const COMPLETE_EXCHANGE: &str = "complete_exchange";
    /// SendMessage, a retry racing its original: has the reply arrived?
    pub const AWAIT_REPLY: &str = "await_reply";
    /// SendMessage: the reply could not be written; a retry may write it.
    pub const RELEASE_REPLY: &str = "release_reply";
    /// SendMessage: the call writing the reply is still at it.
    pub const RENEW_REPLY: &str = "renew_reply";
    pub const GET_PROFILE: &str = "get_profile";
    pub const CLEAR_PROFILE: &str = "clear_profile";
    pub const GET_MEMBER_USAGE: &str = "get_member_usage";
    pub const GET_QUOTA_STATUS: &str = "get_quota_status";
    pub const SET_QUOTA: &str = "set_quota";
}

#[derive(Clone)]
pub struct ConversationStore {
    pool: PgPool,
    timer: TxTimer,
}

impl ConversationStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            timer: TxTimer::disabled(),
        }
    }

    /// Reports how long each transaction took (the service's metrics).
    pub fn with_timer(mut self, timer: TxTimer) -> Self {
        self.timer = timer;
        self
    }

    pub async fn create(
        &self,
        ctx: &RequestContext,
        title: &str,
    ) -> Result<ConversationRow, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::CREATE_CONVERSATION)
            .await?;
        let row = sqlx::query_as::<_, ConversationRow>(
            "INSERT INTO conversation.conversations (conversation_id, tenant_id, user_id, title)
             VALUES ($1, $2, $3, $4)
             RETURNING conversation_id, title, create_time, update_time, list_seq",
        )
        .bind(Uuid::new_v4())
        .bind(ctx.tenant_id.as_uuid())
        .bind(&ctx.user_id)
        .bind(title)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn get(
        &self,
        ctx: &RequestContext,
        conversation_id: Uuid,
    ) -> Result<ConversationRow, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::GET_CONVERSATION)
            .await?;
        let row = sqlx::query_as::<_, ConversationRow>(concat!(
            "SELECT ",
            conversation_columns!(),
            " FROM conversation.conversations
              WHERE conversation_id = $1 AND user_id = $2"
        ))
        .bind(conversation_id)
        .bind(&ctx.user_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.ok_or(ConversationError::ConversationNotFound(conversation_id))
    }

    /// Newest first; the cursor is `list_seq`.
    pub async fn list(
        &self,
        ctx: &RequestContext,
        page: &Page,
    ) -> Result<Vec<ConversationRow>, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::LIST_CONVERSATIONS)
            .await?;
        let rows = sqlx::query_as::<_, ConversationRow>(concat!(
            "SELECT ",
            conversation_columns!(),
            " FROM conversation.conversations
              WHERE user_id = $1 AND ($2::bigint IS NULL OR list_seq < $2)
              ORDER BY list_seq DESC LIMIT $3"
        ))
        .bind(&ctx.user_id)
        .bind(page.after)
        .bind(page.fetch_limit())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Deletes the conversation and, by cascade, its transcript, in one transaction.
    pub async fn delete(
        &self,
        ctx: &RequestContext,
        conversation_id: Uuid,
    ) -> Result<(), ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::DELETE_CONVERSATION)
            .await?;
        let deleted = sqlx::query(
            "DELETE FROM conversation.conversations WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(conversation_id)
        .bind(&ctx.user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if deleted == 0 {
            return Err(ConversationError::ConversationNotFound(conversation_id));
        }
        Ok(())
    }

    /// Oldest first; the cursor is `seq`.
    pub async fn list_messages(
        &self,
        ctx: &RequestContext,
        conversation_id: Uuid,
        page: &Page,
    ) -> Result<Vec<MessageRow>, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::LIST_MESSAGES)
            .await?;
        owned_conversation(&mut tx, ctx, conversation_id, false).await?;
        let rows = sqlx::query_as::<_, MessageRow>(concat!(
            "SELECT ",
            message_columns!(),
            " FROM conversation.messages
              WHERE conversation_id = $1 AND ($2::bigint IS NULL OR seq > $2)
              ORDER BY seq LIMIT $3"
        ))
        .bind(conversation_id)
        .bind(page.after)
        .bind(page.fetch_limit())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Persists the user's turn (or finds the one stored under the same
    /// idempotency key) and commits before any reply is produced: once this
    /// returns, the turn is acknowledged and durable.
    pub async fn begin_exchange(
        &self,
        ctx: &RequestContext,
        conversation_id: Uuid,
        content: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Exchange, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::BEGIN_EXCHANGE)
            .await?;
        // Locking the conversation serialises concurrent sends, so a retry
        // racing its original sees the original's turn.
        owned_conversation(&mut tx, ctx, conversation_id, true).await?;

        let stored = match idempotency_key {
            Some(key) => {
                sqlx::query_as::<_, MessageRow>(concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM conversation.messages
                      WHERE conversation_id = $1 AND idempotency_key = $2"
                ))
                .bind(conversation_id)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?
            }
            None => None,
        };

        let new_turn = stored.is_none();
        let lease = ReplyLease(Uuid::new_v4());
        let (user_message, reply) = match stored {
            Some(user_message) => {
                let owner = reply_owner(&mut tx, user_message.message_id, lease).await?;
                (user_message, owner)
            }
            None => {
                crate::usage::check_quotas(&mut tx, ctx).await?;
                let user_message = sqlx::query_as::<_, MessageRow>(concat!(
                    "INSERT INTO conversation.messages
                        (message_id, tenant_id, conversation_id, role, content, idempotency_key,
                         reply_lease_until, reply_lease_holder)
                     VALUES ($1, $2, $3, 'user', $4, $5, now() + make_interval(secs => $6), $7)
                     RETURNING ",
                    message_columns!()
                ))
                .bind(Uuid::new_v4())
                .bind(ctx.tenant_id.as_uuid())
                .bind(conversation_id)
                .bind(content)
                .bind(idempotency_key)
                .bind(REPLY_LEASE.as_secs_f64())
                .bind(lease.0)
                .fetch_one(&mut *tx)
                .await?;
                count_exchange(&mut tx, conversation_id).await?;
                (user_message, ReplyOwner::This(lease))
            }
        };

        let mut transcript: Vec<(String, String)> = sqlx::query_as(
            "SELECT role, content FROM conversation.messages
              WHERE conversation_id = $1 AND seq < $2
              ORDER BY seq DESC LIMIT $3",
        )
        .bind(conversation_id)
        .bind(user_message.seq)
        .bind(CONTEXT_TURNS)
        .fetch_all(&mut *tx)
        .await?;
        transcript.reverse();
        let kept_profile = kept_profile(&mut tx, ctx).await?;
        // Last before the commit: counting locks the tenant's row for the
        // day until the commit, and every member of the tenant sending at
        // that moment waits for it (measured with tp-loadgen: one tenant's
        // 32 members sent 28 % less than 1,000 tenants' did).
        if new_turn {
            crate::usage::count_message(&mut tx, ctx).await?;
        }
        tx.commit().await?;
        Ok(Exchange {
            user_message,
            reply,
            earlier_user_turns: transcript
                .iter()
                .filter(|(role, _)| role == "user")
                .map(|(_, content)| content.clone())
                .collect(),
            transcript: transcript
                .into_iter()
                .map(|(role, content)| tp_llm::ChatMessage {
                    role: if role == "user" {
                        tp_llm::Role::User
                    } else {
                        tp_llm::Role::Assistant
                    },
                    content,
                })
                .collect(),
            kept_profile,
        })
    }

    /// For a retry waiting on another call's reply: the reply if it is
    /// stored by now; else the lease if the other call let it go or ran
    /// out of time; else still another's.
    pub async fn await_reply(
        &self,
        ctx: &RequestContext,
        user_message: &MessageRow,
    ) -> Result<ReplyOwner, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::AWAIT_REPLY)
            .await?;
        owned_conversation(&mut tx, ctx, user_message.conversation_id, true).await?;
        let owner =
            reply_owner(&mut tx, user_message.message_id, ReplyLease(Uuid::new_v4())).await?;
        tx.commit().await?;
        Ok(owner)
    }

    /// Gives up the reply lease of a user turn this call could not answer
    /// (the model failed, the client left), so that a retry waiting on it,
    /// or the next one, writes the reply at once.
    pub async fn release_reply(
        &self,
        ctx: &RequestContext,
        user_message: &MessageRow,
        lease: ReplyLease,
    ) -> Result<(), ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::RELEASE_REPLY)
            .await?;
        sqlx::query(
            "UPDATE conversation.messages
                SET reply_lease_until = NULL, reply_lease_holder = NULL
              WHERE message_id = $1 AND reply_lease_holder = $2",
        )
        .bind(user_message.message_id)
        .bind(lease.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Extends the reply lease this call holds by another [`REPLY_LEASE`];
    /// false when it is no longer this call's (it ran out and a retry took
    /// it over).
    pub async fn renew_reply(
        &self,
        ctx: &RequestContext,
        user_message: &MessageRow,
        lease: ReplyLease,
    ) -> Result<bool, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::RENEW_REPLY)
            .await?;
        let renewed = sqlx::query(
            "UPDATE conversation.messages
                SET reply_lease_until = now() + make_interval(secs => $3)
              WHERE message_id = $1 AND reply_lease_holder = $2",
        )
        .bind(user_message.message_id)
        .bind(lease.0)
        .bind(REPLY_LEASE.as_secs_f64())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(renewed == 1)
    }

    /// Persists the assistant's reply to a user turn. When a concurrent retry
    /// already stored one, that stored reply wins and is returned.
    pub async fn complete_exchange(
        &self,
        ctx: &RequestContext,
        user_message: &MessageRow,
        reply: &ProducedReply,
    ) -> Result<MessageRow, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::COMPLETE_EXCHANGE)
            .await?;
        let inserted = sqlx::query_as::<_, MessageRow>(concat!(
            "INSERT INTO conversation.messages
                (message_id, tenant_id, conversation_id, role, content, reply_to, responder,
                 cited_frameworks, policy_violations, grounded, input_tokens, output_tokens)
             VALUES ($1, $2, $3, 'assistant', $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (tenant_id, reply_to) DO NOTHING
             RETURNING ",
            message_columns!()
        ))
        .bind(Uuid::new_v4())
        .bind(ctx.tenant_id.as_uuid())
        .bind(user_message.conversation_id)
        .bind(&reply.text)
        .bind(user_message.message_id)
        .bind(reply.responder)
        .bind(&reply.cited_frameworks)
        .bind(&reply.violations)
        .bind(reply.grounded)
        .bind(
            reply
                .usage
                .map(|u| i32::try_from(u.input_tokens).unwrap_or(i32::MAX)),
        )
        .bind(
            reply
                .usage
                .map(|u| i32::try_from(u.output_tokens).unwrap_or(i32::MAX)),
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| match &e {
            // The conversation was deleted while the reply was produced.
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                ConversationError::ConversationNotFound(user_message.conversation_id)
            }
            _ => e.into(),
        })?;
        let stored = match inserted {
            Some(stored) => {
                touch(&mut tx, user_message.conversation_id).await?;
                if let Some(profile) = &reply.profile_to_keep {
                    keep_profile(&mut tx, ctx, profile).await?;
                }
                if let Some(usage) = reply.usage {
                    sqlx::query(
                        "INSERT INTO conversation.tenant_token_usage AS u
                            (tenant_id, day, shard, input_tokens, output_tokens)
                         VALUES ($1, (now() AT TIME ZONE 'UTC')::date,
                                 conversation.usage_shard($4), $2, $3)
                         ON CONFLICT (tenant_id, day, shard) DO UPDATE SET
                            input_tokens = u.input_tokens + EXCLUDED.input_tokens,
                            output_tokens = u.output_tokens + EXCLUDED.output_tokens",
                    )
                    .bind(ctx.tenant_id.as_uuid())
                    .bind(i64::from(usage.input_tokens))
                    .bind(i64::from(usage.output_tokens))
                    .bind(&ctx.user_id)
                    .execute(&mut *tx)
                    .await?;
                    crate::usage::count_tokens(
                        &mut tx,
                        ctx,
                        usage.input_tokens,
                        usage.output_tokens,
                    )
                    .await?;
                }
                stored
            }
            None => stored_reply(&mut tx, user_message.message_id)
                .await?
                .ok_or(ConversationError::ConversationNotFound(
                    user_message.conversation_id,
                ))?,
        };
        tx.commit().await?;
        Ok(stored)
    }
}

impl ConversationStore {
    /// What is kept about the caller between conversations.
    pub async fn get_profile(
        &self,
        ctx: &RequestContext,
    ) -> Result<Option<KeptProfile>, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::GET_PROFILE)
            .await?;
        let kept = kept_profile(&mut tx, ctx).await?;
        tx.commit().await?;
        Ok(kept)
    }

    /// Forgets what is kept about the caller.
    pub async fn clear_profile(&self, ctx: &RequestContext) -> Result<(), ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::CLEAR_PROFILE)
            .await?;
        sqlx::query("DELETE FROM conversation.member_profiles WHERE user_id = $1")
            .bind(&ctx.user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

type Tx = tp_store::TenantTx;

async fn kept_profile(
    tx: &mut Tx,
    ctx: &RequestContext,
) -> Result<Option<KeptProfile>, ConversationError> {
    Ok(sqlx::query_as(
        "SELECT role, team_size, stage, update_time FROM conversation.member_profiles WHERE user_id = $1",
    )
    .bind(&ctx.user_id)
    .fetch_optional(&mut **tx)
    .await?)
}

async fn keep_profile(
    tx: &mut Tx,
    ctx: &RequestContext,
    profile: &tp_coach::ContextProfile,
) -> Result<(), ConversationError> {
    sqlx::query(
        "INSERT INTO conversation.member_profiles (tenant_id, user_id, role, team_size, stage)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant_id, user_id) DO UPDATE SET
            role = EXCLUDED.role, team_size = EXCLUDED.team_size, stage = EXCLUDED.stage,
            update_time = now()",
    )
    .bind(ctx.tenant_id.as_uuid())
    .bind(&ctx.user_id)
    .bind(profile.role)
    .bind(profile.team_size.and_then(|n| i32::try_from(n).ok()))
    .bind(profile.stage.map(|s| s.label()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Checks the conversation exists and belongs to the caller, optionally
/// locking it for the rest of the transaction.
async fn owned_conversation(
    tx: &mut Tx,
    ctx: &RequestContext,
    conversation_id: Uuid,
    lock: bool,
) -> Result<(), ConversationError> {
    let sql = if lock {
        "SELECT 1 FROM conversation.conversations
          WHERE conversation_id = $1 AND user_id = $2 FOR UPDATE"
    } else {
        "SELECT 1 FROM conversation.conversations WHERE conversation_id = $1 AND user_id = $2"
    };
    let found: Option<i32> = sqlx::query_scalar(sql)
        .bind(conversation_id)
        .bind(&ctx.user_id)
        .fetch_optional(&mut **tx)
        .await?;
    found
        .map(|_| ())
        .ok_or(ConversationError::ConversationNotFound(conversation_id))
}

/// Who writes the reply to a stored user turn: no one if it is stored,
/// else this call if it can take the lease (as `lease`). The caller holds
/// the conversation's row lock, which serialises racing retries: at most
/// one of them takes the lease.
async fn reply_owner(
    tx: &mut Tx,
    user_message_id: Uuid,
    lease: ReplyLease,
) -> Result<ReplyOwner, ConversationError> {
    Ok(match stored_reply(tx, user_message_id).await? {
        Some(reply) => ReplyOwner::Stored(reply),
        None if claim_reply(tx, user_message_id, lease).await? => ReplyOwner::This(lease),
        None => ReplyOwner::Another,
    })
}

/// Takes the reply lease of a user turn unless another call holds an
/// unexpired one; true when taken.
async fn claim_reply(
    tx: &mut Tx,
    user_message_id: Uuid,
    lease: ReplyLease,
) -> Result<bool, ConversationError> {
    let claimed = sqlx::query(
        "UPDATE conversation.messages
            SET reply_lease_until = now() + make_interval(secs => $2),
                reply_lease_holder = $3
          WHERE message_id = $1
            AND (reply_lease_until IS NULL OR reply_lease_until < now())",
    )
    .bind(user_message_id)
    .bind(REPLY_LEASE.as_secs_f64())
    .bind(lease.0)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

/// The assistant turn that answers a user turn, if one is stored.
async fn stored_reply(
    tx: &mut Tx,
    user_message_id: Uuid,
) -> Result<Option<MessageRow>, ConversationError> {
    Ok(sqlx::query_as::<_, MessageRow>(concat!(
        "SELECT ",
        message_columns!(),
        " FROM conversation.messages WHERE reply_to = $1"
    ))
    .bind(user_message_id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Counts a new exchange (the user's turn and the reply to come) against
/// the conversation's length limit; refuses it past the limit. The caller
/// holds the conversation's row lock.
async fn count_exchange(tx: &mut Tx, conversation_id: Uuid) -> Result<(), ConversationError> {
    let count: i32 = sqlx::query_scalar(
        "UPDATE conversation.conversations
            SET update_time = now(), message_count = message_count + 2
          WHERE conversation_id = $1
          RETURNING message_count",
    )
    .bind(conversation_id)
    .fetch_one(&mut **tx)
    .await?;
    if usize::try_from(count).unwrap_or(usize::MAX) > MAX_TRANSCRIPT_MESSAGES {
        return Err(ConversationError::TranscriptFull(conversation_id));
    }
    Ok(())
}

async fn touch(tx: &mut Tx, conversation_id: Uuid) -> Result<(), ConversationError> {
    sqlx::query(
        "UPDATE conversation.conversations SET update_time = now() WHERE conversation_id = $1",
    )
    .bind(conversation_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
