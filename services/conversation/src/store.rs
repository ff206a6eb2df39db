//! Conversation and transcript persistence. Every function opens its own
//! short tenant-scoped transaction through [`tp_store::TxTimer::begin`]
//! (timed, by the operation it serves); the
//! `user_id` filters keep one member's conversations private from other
//! members of the same tenant, and row-level security keeps tenants apart.

use time::OffsetDateTime;
use tp_context::RequestContext;
use tp_store::Pool;
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
    pub role: String,
    pub content: String,
    pub create_time: OffsetDateTime,
    /// The message this one follows; `None` for a first turn.
    pub parent_id: Option<Uuid>,
    /// Position on its branch, from 1 (the cursor of ListMessages).
    pub depth: i32,
    /// On a reply: the turn it answers.
    pub reply_to: Option<Uuid>,
    /// On a reply: which reply to its turn it is (0 is SendMessage's).
    pub generation: i32,
}

/// A message on a listed branch, with its other versions.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct BranchMessageRow {
    #[sqlx(flatten)]
    pub message: MessageRow,
    /// Messages with the same parent, oldest first, itself excluded.
    pub sibling_ids: Vec<Uuid>,
}

/// Which branch of a conversation ListMessages reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Branch {
    /// The one new turns follow.
    Active,
    /// The one through this message: up to it, then on through the first
    /// version of each later turn.
    Through(Uuid),
    /// The one ending at this message (a page token's).
    EndingAt(Uuid),
}

/// A page of a branch.
pub struct BranchPage {
    /// The branch's last message; `None` for an empty conversation.
    pub end: Option<Uuid>,
    /// Up to the page size plus one (whether there is a next page).
    pub rows: Vec<BranchMessageRow>,
}

/// What a call asks [`ConversationStore::begin_exchange`] for.
#[derive(Clone, Copy, Debug)]
pub enum Turn<'a> {
    /// SendMessage: a new turn after `after`, or after the active branch's
    /// last message.
    Send {
        conversation_id: Uuid,
        content: &'a str,
        key: Option<&'a str>,
        after: Option<Uuid>,
    },
    /// EditMessage: a new version of the caller's turn `message_id`.
    Edit {
        message_id: Uuid,
        content: &'a str,
        key: Option<&'a str>,
    },
    /// RegenerateReply: another reply to the turn of `message_id` (a reply,
    /// or the turn itself).
    Regenerate {
        message_id: Uuid,
        key: Option<&'a str>,
    },
}

/// Which reply to a user turn a call writes or waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTarget {
    /// 0 for SendMessage's (and EditMessage's) reply; RegenerateReply's
    /// count on from there.
    pub generation: i32,
    /// RegenerateReply's idempotency key, stored on the reply it writes.
    pub key: Option<String>,
}

impl ReplyTarget {
    fn first() -> Self {
        Self {
            generation: 0,
            key: None,
        }
    }
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

/// One of the user's earlier turns, by id: a turn's text never changes
/// (an edit is a new turn), so what is read from it can be kept by id.
pub struct EarlierTurn {
    pub message_id: Uuid,
    pub content: String,
}

/// What [`ConversationStore::begin_exchange`] found or wrote.
pub struct Exchange {
    /// The persisted user turn (new, or the one stored under the same key).
    pub user_message: MessageRow,
    /// Who writes the reply: this call, another call, or no one (stored).
    pub reply: ReplyOwner,
    /// Which reply that is.
    pub target: ReplyTarget,
    /// The user's earlier turns, oldest first, for the coach's context.
    pub earlier_user_turns: Vec<EarlierTurn>,
    /// The earlier turns of both sides, oldest first, for a model's prompt;
    /// empty when the exchange was begun with [`TranscriptSides::User`].
    pub transcript: Vec<tp_llm::ChatMessage>,
    /// The frameworks the reply before the user's turn cited, its lead
    /// first: the coach does not ask the member the same again. Read for
    /// the coach only ([`TranscriptSides::User`]): a model's prompt has
    /// that reply whole in `transcript`.
    pub previous_citations: Vec<String>,
    /// The text of the reply before the user's turn: the coach does not
    /// ask again straight away for context that reply asked for.
    pub previous_reply: Option<String>,
    /// What was kept about the member from earlier conversations.
    pub kept_profile: Option<KeptProfile>,
}

/// Which earlier turns a responder reads. The offline coach reads only the
/// user's: the assistant's replies are most of a transcript's bytes (a
/// 180-word reply against a sentence or two), and reading them for nothing
/// cost every SendMessage ~20 KB from PostgreSQL, decoded and copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranscriptSides {
    /// The user's turns only.
    User,
    /// Both sides (a model's prompt).
    Both,
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
        "message_id, conversation_id, role, content, create_time, parent_id, depth, reply_to, \
         generation"
    };
}
/// The segments of the branch ending at message `$1`, as a CTE `chain
/// (branch_id, upto)`: the last message's segment up to it, then each
/// segment it forks from, up to the fork. One step per fork, each step two
/// lookups by id written as LATERAL … LIMIT 1, so that no plan can turn a
/// step into a join of the tenant's messages with themselves: measured on a
/// fresh database (statistics from a nearly empty table), the plain join
/// was cached as a hash join over every message of the tenant, 200 ms a
/// step.
/// With an argument: the branch ending at the message it selects.
macro_rules! branch_segments {
    () => {
        branch_segments!("$1")
    };
    ($end:literal) => {
        concat!(
            "WITH RECURSIVE chain (branch_id, upto) AS (
             SELECT branch_id, depth FROM conversation.messages WHERE message_id = ",
            $end,
            "
           UNION ALL
             SELECT p.branch_id, p.depth
               FROM chain c
               CROSS JOIN LATERAL (
                   SELECT parent_id FROM conversation.messages
                    WHERE message_id = c.branch_id LIMIT 1) f
               CROSS JOIN LATERAL (
                   SELECT branch_id, depth FROM conversation.messages
                    WHERE message_id = f.parent_id LIMIT 1) p
         )"
        )
    };
}
/// A page of a branch, for [`ConversationStore::list_branch`]: `$1` the
/// branch's last message, or NULL for the active branch; `$2` the
/// conversation, which must be `$5`'s (else no rows); the messages at
/// depths `($3, $3 + $4]`, each with its other versions and the branch's
/// end (`branch_end`).
const LIST_PAGE: &str = concat!(
    branch_segments!("(SELECT end_id FROM branch_end)"),
    // Read once, by the chain's first step and by every row (a later CTE
    // may be named in a WITH RECURSIVE list).
    ", branch_end (end_id) AS (
         SELECT COALESCE($1, o.active_leaf_id) FROM conversation.conversations o
          WHERE o.conversation_id = $2 AND o.user_id = $5
     ), page AS (
         SELECT m.* FROM chain c CROSS JOIN LATERAL (
             SELECT ",
    message_columns!(),
    // Depths run on without a gap along a branch: the page is the range
    // ($3, $3 + $4], bounded in each segment whichever plan reads it.
    " FROM conversation.messages
              WHERE branch_id = c.branch_id AND conversation_id = $2
                AND depth > $3 AND depth <= LEAST(c.upto, $3 + $4)
              ORDER BY depth LIMIT $4) m
          ORDER BY m.depth LIMIT $4
     )
     SELECT page.*,
            -- A message's other versions. Any child of a message but its
            -- first starts a segment, so a parent with no such child has
            -- one child and its page row no siblings: one scan of the
            -- small index of segment starts (migration 0014) spares the
            -- page's other rows a lookup.
            CASE WHEN page.parent_id IS NULL THEN
                ARRAY(SELECT s.message_id FROM conversation.messages s
                       WHERE s.parent_id IS NULL
                         AND s.conversation_id = page.conversation_id
                         AND s.message_id <> page.message_id ORDER BY s.seq)
            WHEN page.parent_id IN (
                SELECT f.parent_id FROM conversation.messages f
                 WHERE f.conversation_id = $2 AND f.branch_id = f.message_id
                   AND f.parent_id IS NOT NULL) THEN
                ARRAY(SELECT s.message_id FROM conversation.messages s
                       WHERE s.parent_id = page.parent_id
                         AND s.message_id <> page.message_id ORDER BY s.seq)
            ELSE '{}'::uuid[]
            END AS sibling_ids,
            (SELECT end_id FROM branch_end) AS branch_end
       FROM page ORDER BY page.depth"
);

/// A row of [`LIST_PAGE`].
#[derive(sqlx::FromRow)]
struct ListedRow {
    #[sqlx(flatten)]
    row: BranchMessageRow,
    branch_end: Uuid,
}

/// Where a new message goes on the tree, as the `parent_id, branch_id,
/// depth` of an `INSERT … SELECT` whose `$1` is the new message's id, `$2`
/// the tenant, and `p` the parent's row (NULLs for a first turn). The first
/// child of a message continues its parent's segment; any later one (an
/// edit, a regenerated reply) starts a segment of its own. The caller holds
/// the conversation's row lock, so "first" cannot race.
macro_rules! placed_under_p {
    () => {
        "p.message_id,
         CASE WHEN p.message_id IS NULL OR EXISTS (
                  SELECT 1 FROM conversation.messages c
                   WHERE c.tenant_id = $2 AND c.parent_id = p.message_id)
              THEN $1 ELSE p.branch_id END,
         COALESCE(p.depth, 0) + 1"
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
    /// SendMessage, EditMessage, RegenerateReply: the user's turn (or the
    /// claim on another reply) and the quota check, before the reply.
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
    pool: Pool,
    timer: TxTimer,
}

impl ConversationStore {
    pub fn new(pool: Pool) -> Self {
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

    /// A page of one branch, oldest first: the messages after depth
    /// `after` (0 for the first page), at most `limit`.
    pub async fn list_branch(
        &self,
        ctx: &RequestContext,
        conversation_id: Uuid,
        branch: Branch,
        after: i32,
        limit: i64,
    ) -> Result<BranchPage, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::LIST_MESSAGES)
            .await?;
        let named_end = match branch {
            Branch::Active => None,
            Branch::EndingAt(end) => Some(end),
            Branch::Through(message_id) => {
                owned_conversation(&mut tx, ctx, conversation_id, false).await?;
                // The tip of the message's segment: its own descendants
                // along the first version of each later turn.
                let tip: Option<Uuid> = sqlx::query_scalar(
                    "SELECT (SELECT t.message_id FROM conversation.messages t
                              WHERE t.tenant_id = x.tenant_id AND t.branch_id = x.branch_id
                              ORDER BY t.depth DESC LIMIT 1)
                       FROM conversation.messages x
                      WHERE x.message_id = $1 AND x.conversation_id = $2",
                )
                .bind(message_id)
                .bind(conversation_id)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
                Some(tip.ok_or(ConversationError::MessageNotFound(message_id))?)
            }
        };
        // One statement checks the owner, finds the branch's end (the one
        // named, else the active one) and reads the page: a round trip
        // fewer than asking for the conversation first. Only an empty
        // page asks again, to tell an unknown conversation from an empty
        // one or a page past the end.
        let listed = sqlx::query_as::<_, ListedRow>(LIST_PAGE)
            .bind(named_end)
            .bind(conversation_id)
            .bind(after)
            .bind(limit)
            .bind(&ctx.user_id)
            .fetch_all(&mut *tx)
            .await?;
        let page = match listed.first() {
            Some(first) => BranchPage {
                end: Some(first.branch_end),
                rows: listed.into_iter().map(|listed| listed.row).collect(),
            },
            None => {
                let active = match branch {
                    // Its owner was checked above.
                    Branch::Through(_) => None,
                    _ => owned_conversation(&mut tx, ctx, conversation_id, false).await?,
                };
                BranchPage {
                    end: named_end.or(active),
                    rows: Vec::new(),
                }
            }
        };
        tx.commit().await?;
        Ok(page)
    }

    /// Persists the user's turn (or finds the one stored under the same
    /// idempotency key), or for RegenerateReply claims another reply to a
    /// stored turn, and commits before any reply is produced: once this
    /// returns, the turn is acknowledged and durable.
    pub async fn begin_exchange(
        &self,
        ctx: &RequestContext,
        turn: Turn<'_>,
        sides: TranscriptSides,
    ) -> Result<Exchange, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::BEGIN_EXCHANGE)
            .await?;
        let lease = ReplyLease(Uuid::new_v4());
        // Every branch below starts by locking the conversation, which
        // serialises concurrent sends: a retry racing its original sees the
        // original's turn, and two new children of one message cannot both
        // take its segment.
        let (user_message, reply, target, new_message) = match turn {
            Turn::Send {
                conversation_id,
                content,
                key,
                after,
            } => {
                let active = owned_conversation(&mut tx, ctx, conversation_id, true).await?;
                let parent = match after {
                    Some(parent) => {
                        message_in(&mut tx, conversation_id, parent).await?;
                        Some(parent)
                    }
                    None => active,
                };
                let started =
                    start_turn(&mut tx, ctx, conversation_id, content, key, parent, lease).await?;
                (started.0, started.1, ReplyTarget::first(), started.2)
            }
            Turn::Edit {
                message_id,
                content,
                key,
            } => {
                let edited = owned_message(&mut tx, ctx, message_id).await?;
                if edited.role != "user" {
                    return Err(ConversationError::NotUserTurn(message_id));
                }
                let started = start_turn(
                    &mut tx,
                    ctx,
                    edited.conversation_id,
                    content,
                    key,
                    edited.parent_id,
                    lease,
                )
                .await?;
                (started.0, started.1, ReplyTarget::first(), started.2)
            }
            Turn::Regenerate { message_id, key } => {
                let named = owned_message(&mut tx, ctx, message_id).await?;
                let user_message = match named.reply_to {
                    Some(turn) => message_in(&mut tx, named.conversation_id, turn).await?,
                    None => named,
                };
                let (reply, target) =
                    claim_another_reply(&mut tx, ctx, &user_message, key, lease).await?;
                let new_reply = matches!(reply, ReplyOwner::This(_));
                (user_message, reply, target, new_reply)
            }
        };

        // A regenerated reply counts as a message: it costs what a turn's
        // reply costs.
        let ReadContext {
            transcript: read,
            previous_citations,
            previous_reply,
            kept: kept_profile,
        } = context_and_count(&mut tx, ctx, user_message.parent_id, new_message, sides).await?;
        tx.commit().await?;
        let (earlier_user_turns, transcript) = match sides {
            // Only the user's turns were read: no copies.
            TranscriptSides::User => (
                read.into_iter()
                    .map(|(message_id, _, content)| EarlierTurn {
                        message_id,
                        content,
                    })
                    .collect(),
                Vec::new(),
            ),
            TranscriptSides::Both => (
                read.iter()
                    .filter(|(_, role, _)| role == "user")
                    .map(|(message_id, _, content)| EarlierTurn {
                        message_id: *message_id,
                        content: content.clone(),
                    })
                    .collect(),
                read.into_iter()
                    .map(|(_, role, content)| tp_llm::ChatMessage {
                        role: if role == "user" {
                            tp_llm::Role::User
                        } else {
                            tp_llm::Role::Assistant
                        },
                        content,
                    })
                    .collect(),
            ),
        };
        Ok(Exchange {
            user_message,
            reply,
            target,
            earlier_user_turns,
            transcript,
            previous_citations,
            previous_reply,
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
        target: &ReplyTarget,
    ) -> Result<ReplyOwner, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::AWAIT_REPLY)
            .await?;
        owned_conversation(&mut tx, ctx, user_message.conversation_id, true).await?;
        let owner = reply_owner(
            &mut tx,
            user_message.message_id,
            target,
            ReplyLease(Uuid::new_v4()),
        )
        .await?;
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

    /// Persists the assistant's reply to a user turn, and moves the active
    /// branch on to it when it still ends at that turn (a member who edited
    /// meanwhile stays on their edit). When a concurrent retry already
    /// stored this reply, that stored reply wins and is returned.
    pub async fn complete_exchange(
        &self,
        ctx: &RequestContext,
        user_message: &MessageRow,
        target: &ReplyTarget,
        reply: &ProducedReply,
    ) -> Result<MessageRow, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::COMPLETE_EXCHANGE)
            .await?;
        let conversation_id = user_message.conversation_id;
        // The lock placing a child under the turn needs; gone when the
        // conversation was deleted while the reply was produced.
        let locked: Option<Option<Uuid>> = sqlx::query_scalar(
            "SELECT active_leaf_id FROM conversation.conversations
              WHERE conversation_id = $1 FOR UPDATE",
        )
        .bind(conversation_id)
        .fetch_optional(&mut *tx)
        .await?;
        if locked.is_none() {
            return Err(ConversationError::ConversationNotFound(conversation_id));
        }
        // The reply, and the conversation moved on to it, in one statement
        // (one round trip): the end of the active branch moves only when it
        // is still the turn answered (a member who edited meanwhile stays
        // on their edit), and nothing moves when a concurrent retry stored
        // this reply first.
        let inserted = sqlx::query_as::<_, MessageRow>(concat!(
            "WITH reply AS (
                 INSERT INTO conversation.messages
                    (message_id, tenant_id, conversation_id, role, content, reply_to, responder,
                     cited_frameworks, policy_violations, grounded, input_tokens, output_tokens,
                     generation, idempotency_key, parent_id, branch_id, depth)
                 SELECT $1, $2, $3, 'assistant', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, ",
            placed_under_p!(),
            "    FROM conversation.messages p WHERE p.tenant_id = $2 AND p.message_id = $5
                 ON CONFLICT (tenant_id, reply_to, generation) DO NOTHING
                 RETURNING ",
            message_columns!(),
            "), moved AS (
                 UPDATE conversation.conversations c
                    SET update_time = now(),
                        active_leaf_id = CASE WHEN c.active_leaf_id = $5
                                              THEN r.message_id ELSE c.active_leaf_id END
                   FROM reply r
                  WHERE c.conversation_id = $3)
             SELECT * FROM reply"
        ))
        .bind(Uuid::new_v4())
        .bind(ctx.tenant_id.as_uuid())
        .bind(conversation_id)
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
        .bind(target.generation)
        .bind(target.key.as_deref())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| match &e {
            // The key went to another request of the conversation meanwhile.
            sqlx::Error::Database(db) if db.is_unique_violation() => ConversationError::KeyReused,
            _ => e.into(),
        })?;
        let stored = match inserted {
            Some(stored) => {
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
            None => stored_reply(&mut tx, user_message.message_id, target.generation)
                .await?
                .ok_or(ConversationError::ConversationNotFound(conversation_id))?,
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
/// locking it for the rest of the transaction; the last message of its
/// active branch (`None` while it is empty).
async fn owned_conversation(
    tx: &mut Tx,
    ctx: &RequestContext,
    conversation_id: Uuid,
    lock: bool,
) -> Result<Option<Uuid>, ConversationError> {
    let sql = if lock {
        "SELECT active_leaf_id FROM conversation.conversations
          WHERE conversation_id = $1 AND user_id = $2 FOR UPDATE"
    } else {
        "SELECT active_leaf_id FROM conversation.conversations
          WHERE conversation_id = $1 AND user_id = $2"
    };
    let found: Option<Option<Uuid>> = sqlx::query_scalar(sql)
        .bind(conversation_id)
        .bind(&ctx.user_id)
        .fetch_optional(&mut **tx)
        .await?;
    found.ok_or(ConversationError::ConversationNotFound(conversation_id))
}

/// A message of one of the caller's conversations, locking that
/// conversation for the rest of the transaction.
async fn owned_message(
    tx: &mut Tx,
    ctx: &RequestContext,
    message_id: Uuid,
) -> Result<MessageRow, ConversationError> {
    sqlx::query_as::<_, MessageRow>(
        "SELECT m.message_id, m.conversation_id, m.role, m.content, m.create_time,
                m.parent_id, m.depth, m.reply_to, m.generation
           FROM conversation.messages m
           JOIN conversation.conversations c
             ON c.tenant_id = m.tenant_id AND c.conversation_id = m.conversation_id
          WHERE m.message_id = $1 AND c.user_id = $2
            FOR UPDATE OF c",
    )
    .bind(message_id)
    .bind(&ctx.user_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(ConversationError::MessageNotFound(message_id))
}

/// A message of a conversation the caller owns and has locked.
async fn message_in(
    tx: &mut Tx,
    conversation_id: Uuid,
    message_id: Uuid,
) -> Result<MessageRow, ConversationError> {
    sqlx::query_as::<_, MessageRow>(concat!(
        "SELECT ",
        message_columns!(),
        " FROM conversation.messages WHERE message_id = $1 AND conversation_id = $2"
    ))
    .bind(message_id)
    .bind(conversation_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(ConversationError::MessageNotFound(message_id))
}

/// A new user turn under `parent` (SendMessage, EditMessage), which becomes
/// the end of the active branch; or the turn stored under the same
/// idempotency key. True when the turn is new.
async fn start_turn(
    tx: &mut Tx,
    ctx: &RequestContext,
    conversation_id: Uuid,
    content: &str,
    key: Option<&str>,
    parent: Option<Uuid>,
    lease: ReplyLease,
) -> Result<(MessageRow, ReplyOwner, bool), ConversationError> {
    if let Some(stored) = keyed_message(tx, conversation_id, key).await? {
        if stored.role != "user" {
            return Err(ConversationError::KeyReused);
        }
        let owner = reply_owner(tx, stored.message_id, &ReplyTarget::first(), lease).await?;
        return Ok((stored, owner, false));
    }
    // The turn, the conversation's count and the quotas in one statement
    // (one round trip): the caller holds the conversation's row lock, so
    // the UPDATE sees what the INSERT's snapshot saw; a turn past a limit
    // or quota is refused afterwards, which rolls it back.
    let counted = sqlx::query_as::<_, CountedTurn>(concat!(
        "WITH turn AS (
             INSERT INTO conversation.messages
                (message_id, tenant_id, conversation_id, role, content, idempotency_key,
                 reply_lease_until, reply_lease_holder, reply_lease_generation,
                 parent_id, branch_id, depth)
             SELECT $1, $2, $3, 'user', $4, $5, now() + make_interval(secs => $6), $7, 0, ",
        placed_under_p!(),
        "    FROM (VALUES (1)) AS one
               LEFT JOIN conversation.messages p ON p.tenant_id = $2 AND p.message_id = $8
             RETURNING ",
        message_columns!(),
        "), counted AS (
             UPDATE conversation.conversations
                SET update_time = now(), message_count = message_count + 2, active_leaf_id = $1
              WHERE conversation_id = $3
              RETURNING message_count)
         SELECT turn.*, counted.message_count, quotas.*
           FROM turn, counted, ",
        crate::usage::quotas_of_member!()
    ))
    .bind(Uuid::new_v4())
    .bind(ctx.tenant_id.as_uuid())
    .bind(conversation_id)
    .bind(content)
    .bind(key)
    .bind(REPLY_LEASE.as_secs_f64())
    .bind(lease.0)
    .bind(parent)
    .bind(&ctx.user_id)
    .fetch_one(&mut **tx)
    .await?;
    within_length(conversation_id, counted.message_count)?;
    let quotas = rows_of(
        counted.quota_users,
        counted.quota_messages,
        counted.quota_tokens,
    );
    crate::usage::check_quotas_read(tx, quotas).await?;
    Ok((counted.turn, ReplyOwner::This(lease), true))
}

/// A new user turn as stored, with its conversation's message count after
/// it and the quotas that apply to it.
#[derive(sqlx::FromRow)]
struct CountedTurn {
    #[sqlx(flatten)]
    turn: MessageRow,
    message_count: i32,
    quota_users: Vec<String>,
    quota_messages: Vec<i64>,
    quota_tokens: Vec<i64>,
}

/// RegenerateReply: the reply its idempotency key already produced (or is
/// producing), else a claim on the next reply to `turn`, which becomes the
/// end of the active branch until the reply lands.
async fn claim_another_reply(
    tx: &mut Tx,
    ctx: &RequestContext,
    turn: &MessageRow,
    key: Option<&str>,
    lease: ReplyLease,
) -> Result<(ReplyOwner, ReplyTarget), ConversationError> {
    if let Some(stored) = keyed_message(tx, turn.conversation_id, key).await? {
        if stored.reply_to != Some(turn.message_id) {
            return Err(ConversationError::KeyReused);
        }
        let target = ReplyTarget {
            generation: stored.generation,
            key: key.map(str::to_owned),
        };
        return Ok((ReplyOwner::Stored(stored), target));
    }
    // Another call holds the turn's lease and its reply is not stored yet:
    // a retry of this request waits for that reply; anything else is
    // refused rather than queued. (A lease outlives the reply it was for
    // until it expires: storing a reply does not spend a statement on it.)
    let (generation, lease_key): (Option<i32>, Option<String>) = sqlx::query_as(
        "SELECT u.reply_lease_generation, u.reply_lease_key FROM conversation.messages u
          WHERE u.message_id = $1 AND u.reply_lease_until >= now()
            AND NOT EXISTS (SELECT 1 FROM conversation.messages r
                             WHERE r.tenant_id = u.tenant_id AND r.reply_to = u.message_id
                               AND r.generation = u.reply_lease_generation)",
    )
    .bind(turn.message_id)
    .fetch_optional(&mut **tx)
    .await?
    .unwrap_or_default();
    if let Some(generation) = generation {
        if key.is_some() && lease_key.as_deref() == key {
            let target = ReplyTarget {
                generation,
                key: lease_key,
            };
            return Ok((ReplyOwner::Another, target));
        }
        return Err(ConversationError::ReplyInProgress(turn.message_id));
    }
    crate::usage::check_quotas(tx, ctx).await?;
    let generation: i32 = sqlx::query_scalar(
        "UPDATE conversation.messages
            SET reply_lease_until = now() + make_interval(secs => $2),
                reply_lease_holder = $3, reply_lease_key = $4,
                reply_lease_generation = (
                    SELECT COALESCE(max(r.generation) + 1, 0) FROM conversation.messages r
                     WHERE r.tenant_id = $5 AND r.reply_to = $1)
          WHERE message_id = $1
          RETURNING reply_lease_generation",
    )
    .bind(turn.message_id)
    .bind(REPLY_LEASE.as_secs_f64())
    .bind(lease.0)
    .bind(key)
    .bind(ctx.tenant_id.as_uuid())
    .fetch_one(&mut **tx)
    .await?;
    count_exchange(tx, turn.conversation_id, 1, turn.message_id).await?;
    let target = ReplyTarget {
        generation,
        key: key.map(str::to_owned),
    };
    Ok((ReplyOwner::This(lease), target))
}

/// The message stored under an idempotency key in a conversation.
async fn keyed_message(
    tx: &mut Tx,
    conversation_id: Uuid,
    key: Option<&str>,
) -> Result<Option<MessageRow>, ConversationError> {
    let Some(key) = key else {
        return Ok(None);
    };
    Ok(sqlx::query_as::<_, MessageRow>(concat!(
        "SELECT ",
        message_columns!(),
        " FROM conversation.messages WHERE conversation_id = $1 AND idempotency_key = $2"
    ))
    .bind(conversation_id)
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?)
}

/// What the responder needs besides the turn, read in the statement that
/// counts the turn (when `count`), the last before the commit:
///
/// * the branch ending at `last`, of its last [`CONTEXT_TURNS`] messages
///   those of `sides` as (role, content), oldest first: what the responder
///   sees before the turn it answers;
/// * what is kept about the member from earlier conversations.
///
/// One statement, one round trip, where these were three: each round trip
/// costs both processes a send, a receive and a wake-up (measured with
/// `strace -c` and `perf`: conversation's `send()` to PostgreSQL alone was
/// a quarter of its CPU). Counting comes last because it locks the tenant's
/// row for the day until the commit, and every member of the tenant sending
/// at that moment waits for it (measured with tp-loadgen: one tenant's 32
/// members sent 28 % less than 1,000 tenants' did).
///
/// The branch is read by segments, as ListMessages reads a branch (a step
/// per fork, then one bounded range scan per segment), not by a walk up
/// `parent_id` a message at a time: measured with `tp-loadgen --phases
/// send-message` on a fresh database, whose statistics were taken while the
/// table was nearly empty, the cached plan of the 40-step walk scanned the
/// tenant's messages at every step (SendMessage 330/s against 626/s before
/// branching).
async fn context_and_count(
    tx: &mut Tx,
    ctx: &RequestContext,
    last: Option<Uuid>,
    count: bool,
    sides: TranscriptSides,
) -> Result<ReadContext, ConversationError> {
    // Depths run on without a gap along a branch, so the last N messages
    // are those deeper than the last one's depth minus N: a bounded range
    // in each segment, read the same whichever plan is chosen. A first turn
    // (`last` NULL) has an empty chain.
    let read: ContextRow = sqlx::query_as(concat!(
        branch_segments!(),
        ", ",
        crate::usage::counted_message!(),
        ", transcript AS (
             SELECT m.message_id, m.role, m.content, m.depth FROM chain c CROSS JOIN LATERAL (
                 SELECT message_id, role, content, depth FROM conversation.messages
                  WHERE branch_id = c.branch_id AND depth <= c.upto
                    AND depth > (SELECT max(upto) FROM chain) - $2
                    AND (role = 'user' OR $6)
                  ORDER BY depth DESC LIMIT $2) m
              ORDER BY m.depth DESC LIMIT $2)
         SELECT ARRAY(SELECT message_id FROM transcript ORDER BY depth) AS message_ids,
                ARRAY(SELECT role FROM transcript ORDER BY depth) AS roles,
                ARRAY(SELECT content FROM transcript ORDER BY depth) AS contents,
                previous.cited_frameworks AS previous_citations,
                previous.content AS previous_reply,
                p.role, p.team_size, p.stage, p.update_time
           FROM (VALUES (1)) AS one
           LEFT JOIN conversation.messages previous
             ON previous.tenant_id = $3 AND previous.message_id = $1
            AND previous.role = 'assistant' AND NOT $6
           LEFT JOIN conversation.member_profiles p ON p.user_id = $4"
    ))
    .bind(last)
    .bind(CONTEXT_TURNS)
    .bind(ctx.tenant_id.as_uuid())
    .bind(&ctx.user_id)
    .bind(count)
    .bind(sides == TranscriptSides::Both)
    .fetch_one(&mut **tx)
    .await?;
    let transcript = rows_of(read.message_ids, read.roles, read.contents);
    let kept = read.update_time.map(|update_time| KeptProfile {
        role: read.role,
        team_size: read.team_size,
        stage: read.stage,
        update_time,
    });
    Ok(ReadContext {
        transcript,
        previous_citations: read.previous_citations.unwrap_or_default(),
        previous_reply: read.previous_reply,
        kept,
    })
}

/// What [`context_and_count`] read for a reply.
struct ReadContext {
    /// (message id, role, content) of the earlier turns, oldest first.
    transcript: Vec<(Uuid, String, String)>,
    /// What the reply before the user's turn cited (none if the turn
    /// follows no reply).
    previous_citations: Vec<String>,
    /// The text of that reply.
    previous_reply: Option<String>,
    kept: Option<KeptProfile>,
}

/// Rows from the columns a statement returned as arrays (`ARRAY(SELECT …)`
/// per column, one round trip), cut to the shortest.
fn rows_of<A, B, C>(a: Vec<A>, b: Vec<B>, c: Vec<C>) -> Vec<(A, B, C)> {
    a.into_iter()
        .zip(b)
        .zip(c)
        .map(|((a, b), c)| (a, b, c))
        .collect()
}

/// The row [`context_and_count`] reads.
#[derive(sqlx::FromRow)]
struct ContextRow {
    message_ids: Vec<Uuid>,
    roles: Vec<String>,
    contents: Vec<String>,
    previous_citations: Option<Vec<String>>,
    previous_reply: Option<String>,
    role: Option<String>,
    team_size: Option<i32>,
    stage: Option<String>,
    update_time: Option<OffsetDateTime>,
}

/// Who writes a reply to a stored user turn: no one if it is stored,
/// else this call if it can take the lease (as `lease`). The caller holds
/// the conversation's row lock, which serialises racing retries: at most
/// one of them takes the lease.
async fn reply_owner(
    tx: &mut Tx,
    user_message_id: Uuid,
    target: &ReplyTarget,
    lease: ReplyLease,
) -> Result<ReplyOwner, ConversationError> {
    Ok(
        match stored_reply(tx, user_message_id, target.generation).await? {
            Some(reply) => ReplyOwner::Stored(reply),
            None if claim_reply(tx, user_message_id, target, lease).await? => {
                ReplyOwner::This(lease)
            }
            None => ReplyOwner::Another,
        },
    )
}

/// Takes the reply lease of a user turn, to write the reply `target`,
/// unless another call holds an unexpired one; true when taken.
async fn claim_reply(
    tx: &mut Tx,
    user_message_id: Uuid,
    target: &ReplyTarget,
    lease: ReplyLease,
) -> Result<bool, ConversationError> {
    let claimed = sqlx::query(
        "UPDATE conversation.messages
            SET reply_lease_until = now() + make_interval(secs => $2),
                reply_lease_holder = $3, reply_lease_generation = $4, reply_lease_key = $5
          WHERE message_id = $1
            AND (reply_lease_until IS NULL OR reply_lease_until < now())",
    )
    .bind(user_message_id)
    .bind(REPLY_LEASE.as_secs_f64())
    .bind(lease.0)
    .bind(target.generation)
    .bind(target.key.as_deref())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

/// A stored reply to a user turn: the given generation of it.
async fn stored_reply(
    tx: &mut Tx,
    user_message_id: Uuid,
    generation: i32,
) -> Result<Option<MessageRow>, ConversationError> {
    Ok(sqlx::query_as::<_, MessageRow>(concat!(
        "SELECT ",
        message_columns!(),
        " FROM conversation.messages WHERE reply_to = $1 AND generation = $2"
    ))
    .bind(user_message_id)
    .bind(generation)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Counts `added` messages (a turn and the reply to come, or another
/// reply) against the conversation's length limit, refusing them past it,
/// and makes `leaf` the end of the active branch. The caller holds the
/// conversation's row lock.
async fn count_exchange(
    tx: &mut Tx,
    conversation_id: Uuid,
    added: i32,
    leaf: Uuid,
) -> Result<(), ConversationError> {
    let count: i32 = sqlx::query_scalar(
        "UPDATE conversation.conversations
            SET update_time = now(), message_count = message_count + $2, active_leaf_id = $3
          WHERE conversation_id = $1
          RETURNING message_count",
    )
    .bind(conversation_id)
    .bind(added)
    .bind(leaf)
    .fetch_one(&mut **tx)
    .await?;
    within_length(conversation_id, count)
}

/// Refuses a conversation counting `count` messages past the length limit.
fn within_length(conversation_id: Uuid, count: i32) -> Result<(), ConversationError> {
    if usize::try_from(count).unwrap_or(usize::MAX) > MAX_TRANSCRIPT_MESSAGES {
        return Err(ConversationError::TranscriptFull(conversation_id));
    }
    Ok(())
}
