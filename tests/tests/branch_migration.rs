//! Conversation migration 0013 (branching) on transcripts written before
//! it: each becomes one branch, every message linked to the one before it
//! in `seq` order, the active branch ending at the last, nothing lost.

use sqlx::Row;
use tp_context::TenantId;
use tp_e2e::{TestDatabase, set_session_tenant};
use uuid::Uuid;

/// The last migration before branching.
const BEFORE_BRANCHING: i64 = 12;

#[tokio::test]
async fn transcripts_written_before_branching_become_one_branch_each() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    tp_gateway::migrate(&db.owner_url).await?;
    tp_conversation::migrate_to(&db.owner_url, BEFORE_BRANCHING).await?;
    let owner = TestDatabase::pool(&db.owner_url).await?;

    // Two tenants' conversations as the service wrote them: a user turn,
    // its reply, another exchange, a last turn whose reply failed; an empty
    // conversation; another tenant's exchange.
    let (a, b) = (
        TenantId::from(Uuid::new_v4()),
        TenantId::from(Uuid::new_v4()),
    );
    let (long, empty, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let (b_turn, b_reply) = (Uuid::new_v4(), Uuid::new_v4());
    let mut conn = owner.acquire().await?;
    for (tenant, conversations, messages) in [
        (
            a,
            vec![long, empty],
            vec![
                (ids[0], long, "user", None),
                (ids[1], long, "assistant", Some(ids[0])),
                (ids[2], long, "user", None),
                (ids[3], long, "assistant", Some(ids[2])),
                (ids[4], long, "user", None),
            ],
        ),
        (
            b,
            vec![other],
            vec![
                (b_turn, other, "user", None),
                (b_reply, other, "assistant", Some(b_turn)),
            ],
        ),
    ] {
        set_session_tenant(&mut conn, tenant).await?;
        for conversation in conversations {
            sqlx::query(
                "INSERT INTO conversation.conversations (conversation_id, tenant_id, user_id)
                 VALUES ($1, $2, 'ann')",
            )
            .bind(conversation)
            .bind(tenant.as_uuid())
            .execute(&mut *conn)
            .await?;
        }
        for (id, conversation, role, reply_to) in messages {
            sqlx::query(
                "INSERT INTO conversation.messages
                     (message_id, tenant_id, conversation_id, role, content, reply_to)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(tenant.as_uuid())
            .bind(conversation)
            .bind(role)
            .bind(format!("{role} {id}"))
            .bind(reply_to)
            .execute(&mut *conn)
            .await?;
        }
    }
    drop(conn);

    tp_conversation::migrate(&db.owner_url).await?;

    let admin = TestDatabase::pool(&db.admin_url).await?;
    let rows = sqlx::query(
        "SELECT message_id, parent_id, branch_id, depth, generation, content
           FROM conversation.messages WHERE conversation_id = $1 ORDER BY seq",
    )
    .bind(long)
    .fetch_all(&admin)
    .await?;
    assert_eq!(rows.len(), 5, "nothing lost");
    for (n, row) in rows.iter().enumerate() {
        let id: Uuid = row.get("message_id");
        assert_eq!(id, ids[n]);
        let parent: Option<Uuid> = row.get("parent_id");
        assert_eq!(parent, n.checked_sub(1).map(|p| ids[p]), "message {n}");
        assert_eq!(row.get::<Uuid, _>("branch_id"), ids[0], "one segment");
        assert_eq!(row.get::<i32, _>("depth"), i32::try_from(n)? + 1);
        assert_eq!(row.get::<i32, _>("generation"), 0);
        let content: String = row.get("content");
        assert!(content.ends_with(&id.to_string()), "content kept");
    }
    let leaf = |conversation: Uuid| {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar::<_, Option<Uuid>>(
                "SELECT active_leaf_id FROM conversation.conversations WHERE conversation_id = $1",
            )
            .bind(conversation)
            .fetch_one(&admin)
            .await
        }
    };
    assert_eq!(
        leaf(long).await?,
        Some(ids[4]),
        "the unanswered turn ends it"
    );
    assert_eq!(leaf(empty).await?, None);
    assert_eq!(leaf(other).await?, Some(b_reply));
    let b_parent: Option<Uuid> =
        sqlx::query_scalar("SELECT parent_id FROM conversation.messages WHERE message_id = $1")
            .bind(b_reply)
            .fetch_one(&admin)
            .await?;
    assert_eq!(b_parent, Some(b_turn), "per conversation, per tenant");
    // The transcript length is counted (migration 0009's backfill could not
    // see the rows under row-level security; this one redoes it).
    let count: i32 = sqlx::query_scalar(
        "SELECT message_count FROM conversation.conversations WHERE conversation_id = $1",
    )
    .bind(long)
    .fetch_one(&admin)
    .await?;
    assert_eq!(count, 5);
    // Row-level security binds the owner again afterwards.
    let forced: Vec<bool> = sqlx::query_scalar(
        "SELECT relforcerowsecurity FROM pg_class
          WHERE oid IN ('conversation.messages'::regclass, 'conversation.conversations'::regclass)",
    )
    .fetch_all(&admin)
    .await?;
    assert_eq!(forced, [true, true]);
    Ok(())
}
