//! Bulk transcripts for benchmarks and tests: turns written straight into
//! the database, as SendMessage would have stored them, when sending them
//! one by one would take minutes and measure nothing new.

use sqlx::PgConnection;
use uuid::Uuid;

/// One message to store.
pub struct SeedTurn<'a> {
    pub message_id: Uuid,
    /// `user` or `assistant`.
    pub role: &'static str,
    pub content: &'a str,
    /// For a reply: the turn it answers (the message before it).
    pub reply_to: Option<Uuid>,
}

/// Appends `turns`, in order, to the end of a conversation's active branch
/// (each message the child of the one before, as SendMessage links them),
/// in one statement, and moves the active branch to the last of them. Run
/// as the schema owner inside a transaction with `app.tenant_id` set; the
/// active branch must end at a message with no children (it always does
/// between exchanges).
pub async fn append_turns(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    conversation_id: Uuid,
    turns: &[SeedTurn<'_>],
) -> sqlx::Result<()> {
    let Some(last) = turns.last() else {
        return Ok(());
    };
    let ids: Vec<Uuid> = turns.iter().map(|t| t.message_id).collect();
    let roles: Vec<&str> = turns.iter().map(|t| t.role).collect();
    let contents: Vec<&str> = turns.iter().map(|t| t.content).collect();
    let reply_to: Vec<Option<Uuid>> = turns.iter().map(|t| t.reply_to).collect();
    sqlx::query(
        "WITH leaf AS (
             SELECT m.message_id, m.branch_id, m.depth
               FROM conversation.conversations c
               JOIN conversation.messages m
                 ON m.tenant_id = c.tenant_id AND m.message_id = c.active_leaf_id
              WHERE c.conversation_id = $6
         ), added AS (
             INSERT INTO conversation.messages
                 (message_id, tenant_id, conversation_id, role, content, reply_to, responder,
                  parent_id, branch_id, depth)
             SELECT id, $5, $6, role, content, reply_to,
                    CASE WHEN role = 'assistant' THEN 'offline' END,
                    COALESCE(lag(id) OVER (ORDER BY n), (SELECT message_id FROM leaf)),
                    COALESCE((SELECT branch_id FROM leaf), first_value(id) OVER (ORDER BY n)),
                    COALESCE((SELECT depth FROM leaf), 0) + n
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[])
                    WITH ORDINALITY AS t (id, role, content, reply_to, n)
              ORDER BY n
             RETURNING 1
         )
         UPDATE conversation.conversations
            SET active_leaf_id = $7, message_count = message_count + (SELECT count(*) FROM added)
          WHERE conversation_id = $6",
    )
    .bind(&ids)
    .bind(&roles)
    .bind(&contents)
    .bind(&reply_to)
    .bind(tenant_id)
    .bind(conversation_id)
    .bind(last.message_id)
    .execute(conn)
    .await?;
    Ok(())
}
