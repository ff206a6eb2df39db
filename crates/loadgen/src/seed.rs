//! What the scenarios need in the database, made through the public API
//! where the API can make it (tenants, members, conversations, documents)
//! and in bulk SQL only for the long transcripts (10,000 turns through
//! SendMessage would take minutes and measure nothing new).

use futures_util::StreamExt;
use sqlx::PgPool;
use tonic::transport::Channel;
use tp_context::{Role, TenantId};
use tp_proto::v1 as pb;
use uuid::Uuid;

use tp_loadgen::handbook::{XorShift, document};
use tp_loadgen::transcript::{SeedTurn, append_turns};

use crate::api::{Member, authorized, bearer};

type Tenants = pb::tenant_admin_service_client::TenantAdminServiceClient<Channel>;
type Members = pb::member_service_client::MemberServiceClient<Channel>;
type Conversations = pb::conversation_service_client::ConversationServiceClient<Channel>;
type Knowledge = pb::knowledge_service_client::KnowledgeServiceClient<Channel>;

/// One tenant made for the load: its admin and its members.
#[derive(Clone, Debug)]
pub struct SeededTenant {
    pub admin: Member,
    pub members: Vec<Member>,
}

/// Creates `count` tenants with `members` members each (and an admin),
/// through the gateway as an operator, 16 at a time.
pub async fn tenants(
    channel: Channel,
    secret: &str,
    prefix: &str,
    count: usize,
    members: usize,
) -> anyhow::Result<Vec<SeededTenant>> {
    let operator = bearer(secret, "loadgen-operator", None, Role::Operator)?;
    let made: Vec<anyhow::Result<SeededTenant>> = futures_util::stream::iter(0..count)
        .map(|i| {
            let channel = channel.clone();
            let operator = operator.clone();
            async move {
                let admin_id = format!("{prefix}-{i}-admin");
                let tenant = Tenants::new(channel.clone())
                    .create_tenant(authorized(
                        &operator,
                        pb::CreateTenantRequest {
                            display_name: format!("Load {prefix} {i}"),
                            seats: i32::try_from(members + 1)?,
                            admin_user_id: admin_id.clone(),
                        },
                    ))
                    .await?
                    .into_inner()
                    .tenant
                    .ok_or_else(|| anyhow::anyhow!("CreateTenant returned no tenant"))?;
                let tenant_id: TenantId = tenant.tenant_id.parse()?;
                let admin = Member::new(secret, tenant_id, &admin_id, Role::Admin)?;
                let mut seeded = SeededTenant {
                    admin,
                    members: Vec::with_capacity(members),
                };
                for m in 0..members {
                    let user_id = format!("{prefix}-{i}-member-{m}");
                    Members::new(channel.clone())
                        .add_member(seeded.admin.via_gateway(pb::AddMemberRequest {
                            user_id: user_id.clone(),
                            role: pb::MemberRole::Member.into(),
                        }))
                        .await?;
                    seeded
                        .members
                        .push(Member::new(secret, tenant_id, &user_id, Role::Member)?);
                }
                Ok(seeded)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    made.into_iter().collect()
}

/// A new conversation of `member`'s; returns its id.
pub async fn conversation(
    channel: Channel,
    member: &Member,
    title: &str,
) -> anyhow::Result<String> {
    let conversation = Conversations::new(channel)
        .create_conversation(member.via_gateway(pb::CreateConversationRequest {
            title: title.to_owned(),
        }))
        .await?
        .into_inner()
        .conversation
        .ok_or_else(|| anyhow::anyhow!("CreateConversation returned no conversation"))?;
    Ok(conversation.conversation_id)
}

/// A user turn's text, about as long as leaders write.
const USER_TURN: &str = "We are 40 engineers at series B and the platform team keeps getting \
    pulled into feature work. How should I think about protecting their roadmap?";

/// An assistant turn's text, about as long as the coach's replies.
const ASSISTANT_TURN: &str = "Before I suggest anything, let me check I have the picture. \
    You lead about 40 engineers, the platform team is being pulled into feature work, and \
    you want its roadmap protected. Two questions first: who decides what the platform team \
    works on today, and what happens to a feature team when platform says no? One lens that \
    may help is Trunk and Branches: a small trunk team keeps shared infrastructure coherent \
    while branch teams own product surfaces. If platform is the trunk, the question becomes \
    how much of its capacity is reserved for the trunk, and who arbitrates when a branch needs \
    help. The pull into feature work is usually a symptom: either the paved road does not \
    cover what feature teams need, or no one owns saying no. Which of those feels closer?";

/// Adds `turns` turns (user and assistant alternating, each answer
/// linked to its question as SendMessage links them) to a conversation,
/// as the schema owner in one statement per 1,000 turns, on one branch.
pub async fn long_transcript(
    owner: &PgPool,
    tenant_id: TenantId,
    conversation_id: &str,
    turns: usize,
) -> anyhow::Result<()> {
    let conversation_id: Uuid = conversation_id.parse()?;
    let mut tx = owner.begin().await?;
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant_id.to_string())
        .execute(&mut *tx)
        .await?;
    let pairs = turns / 2;
    for start in (0..pairs).step_by(500) {
        let batch = (pairs - start).min(500);
        let mut seeded = Vec::with_capacity(batch * 2);
        for _ in 0..batch {
            let question = Uuid::new_v4();
            seeded.push(SeedTurn {
                message_id: question,
                role: "user",
                content: USER_TURN,
                reply_to: None,
            });
            seeded.push(SeedTurn {
                message_id: Uuid::new_v4(),
                role: "assistant",
                content: ASSISTANT_TURN,
                reply_to: Some(question),
            });
        }
        append_turns(&mut tx, tenant_id.as_uuid(), conversation_id, &seeded).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Adds `documents` generated Markdown documents to the admin's tenant.
pub async fn documents(
    channel: Channel,
    admin: &Member,
    tenant: usize,
    documents: usize,
) -> anyhow::Result<()> {
    let mut rng = XorShift(0x5eed_1234_abcd_9876 ^ tenant as u64);
    let mut knowledge = Knowledge::new(channel);
    for number in 0..documents {
        knowledge
            .create_document(admin.via_gateway(pb::CreateDocumentRequest {
                title: format!("Handbook part {number}"),
                content: document(&mut rng, tenant, number).into_bytes(),
                content_type: pb::ContentType::Markdown.into(),
            }))
            .await?;
    }
    Ok(())
}
