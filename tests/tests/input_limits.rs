//! Every input limit of the public API, in one table: each row sends one
//! request just over a limit, through the gateway, and expects the code and
//! a message that names the limit. RELIABILITY.md lists the same table.
//! (The transcript length limit has its own test in `conversation_flow.rs`;
//! bearer tokens over 8 KiB are in `identity_provider.rs`; webhook bodies
//! over 1 MiB in `stripe_billing.rs`.)

use prost::Message;
use tonic::Code;
use tp_context::Role;
use tp_e2e::raw::call_raw;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, new_conversation};

struct Limit {
    what: &'static str,
    method: &'static str,
    /// Whose token: a member, the tenant's admin, or an operator.
    caller: Role,
    body: Vec<u8>,
    code: Code,
    /// The message names the limit.
    says: &'static str,
}

#[tokio::test]
async fn every_input_limit_is_refused_with_a_message_naming_it() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, member) = app.tenant_with_member("Acme", "alice").await?;
    let admin = app.token("alice-admin", Some(tenant), Role::Admin);
    let operator = app.token("ops", None, Role::Operator);
    let mut client = app.conversations(&member).await?;
    let conversation = new_conversation(&mut client, "limits")
        .await?
        .conversation_id;
    let turn = tp_e2e::send(&mut client, &conversation, "A turn to edit.", "")
        .await?
        .completed;
    let (turn, reply) = (
        turn.user_message.unwrap_or_default().message_id,
        turn.assistant_message.unwrap_or_default().message_id,
    );
    let rows_before = app.count_rows("conversation.messages").await?;
    let documents_before = app.count_rows("knowledge.documents").await?;

    let send = |content: String, key: String| pb::SendMessageRequest {
        conversation_id: conversation.clone(),
        content,
        idempotency_key: key,
        ..Default::default()
    };
    let over_page = 101;
    let limits = vec![
        Limit {
            what: "a message over 16 KiB",
            method: "/thoughtpartner.v1.ConversationService/SendMessage",
            caller: Role::Member,
            body: send("x".repeat(16 * 1024 + 1), String::new()).encode_to_vec(),
            code: Code::InvalidArgument,
            says: "the limit is 16384 bytes",
        },
        Limit {
            what: "an idempotency key over 128 characters",
            method: "/thoughtpartner.v1.ConversationService/SendMessage",
            caller: Role::Member,
            body: send("Hello".into(), "k".repeat(129)).encode_to_vec(),
            code: Code::InvalidArgument,
            says: "at most 128",
        },
        Limit {
            what: "an edited message over 16 KiB",
            method: "/thoughtpartner.v1.ConversationService/EditMessage",
            caller: Role::Member,
            body: pb::EditMessageRequest {
                message_id: turn.clone(),
                content: "x".repeat(16 * 1024 + 1),
                ..Default::default()
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "the limit is 16384 bytes",
        },
        Limit {
            what: "an EditMessage idempotency key over 128 characters",
            method: "/thoughtpartner.v1.ConversationService/EditMessage",
            caller: Role::Member,
            body: pb::EditMessageRequest {
                message_id: turn,
                content: "Hello".into(),
                idempotency_key: "k".repeat(129),
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "at most 128",
        },
        Limit {
            what: "a RegenerateReply idempotency key over 128 characters",
            method: "/thoughtpartner.v1.ConversationService/RegenerateReply",
            caller: Role::Member,
            body: pb::RegenerateReplyRequest {
                message_id: reply,
                idempotency_key: "k".repeat(129),
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "at most 128",
        },
        Limit {
            what: "a conversation title over 200 characters",
            method: "/thoughtpartner.v1.ConversationService/CreateConversation",
            caller: Role::Member,
            body: pb::CreateConversationRequest {
                title: "t".repeat(201),
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "the limit is 200",
        },
        Limit {
            what: "a transcript search over 200 characters",
            method: "/thoughtpartner.v1.ConversationService/SearchMessages",
            caller: Role::Member,
            body: pb::SearchMessagesRequest {
                query: "q".repeat(201),
                ..Default::default()
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "the limit is 200",
        },
        Limit {
            what: "a page of search hits over 50",
            method: "/thoughtpartner.v1.ConversationService/SearchMessages",
            caller: Role::Member,
            body: pb::SearchMessagesRequest {
                query: "hiring".into(),
                page_size: 51,
                ..Default::default()
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "between 0 and 50",
        },
        Limit {
            what: "a page of conversations over 100",
            method: "/thoughtpartner.v1.ConversationService/ListConversations",
            caller: Role::Member,
            body: pb::ListConversationsRequest {
                page_size: over_page,
                ..Default::default()
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "between 0 and 100",
        },
        Limit {
            what: "a page of messages over 100",
            method: "/thoughtpartner.v1.ConversationService/ListMessages",
            caller: Role::Member,
            body: pb::ListMessagesRequest {
                conversation_id: conversation.clone(),
                page_size: over_page,
                ..Default::default()
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "between 0 and 100",
        },
        Limit {
            what: "a page of members over 100",
            method: "/thoughtpartner.v1.MemberService/ListMembers",
            caller: Role::Admin,
            body: pb::ListMembersRequest {
                page_size: over_page,
                ..Default::default()
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "100",
        },
        Limit {
            what: "a page of documents over 100",
            method: "/thoughtpartner.v1.KnowledgeService/ListDocuments",
            caller: Role::Member,
            body: pb::ListDocumentsRequest {
                page_size: over_page,
                ..Default::default()
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "100",
        },
        Limit {
            what: "a page of audit events over 100",
            method: "/thoughtpartner.v1.AuditService/ListAuditEvents",
            caller: Role::Admin,
            body: pb::ListAuditEventsRequest {
                page_size: over_page,
                ..Default::default()
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "100",
        },
        Limit {
            what: "a search query over 1,000 characters",
            method: "/thoughtpartner.v1.KnowledgeService/Search",
            caller: Role::Member,
            body: pb::SearchRequest {
                query: "q".repeat(1001),
                ..Default::default()
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "the limit is 1000",
        },
        Limit {
            what: "more than 50 search results",
            method: "/thoughtpartner.v1.KnowledgeService/Search",
            caller: Role::Member,
            body: pb::SearchRequest {
                query: "staff engineers".into(),
                limit: 51,
                ..Default::default()
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "between 0 and 50",
        },
        Limit {
            what: "a document over 1 MiB",
            method: "/thoughtpartner.v1.KnowledgeService/CreateDocument",
            caller: Role::Admin,
            body: pb::CreateDocumentRequest {
                title: "Big".into(),
                content: vec![b'a'; 1024 * 1024 + 1],
                content_type: pb::ContentType::Text.into(),
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "the limit is 1048576 bytes",
        },
        Limit {
            what: "a document title over 200 characters",
            method: "/thoughtpartner.v1.KnowledgeService/CreateDocument",
            caller: Role::Admin,
            body: pb::CreateDocumentRequest {
                title: "t".repeat(201),
                content: b"Some text.".to_vec(),
                content_type: pb::ContentType::Text.into(),
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "1..=200 characters",
        },
        Limit {
            what: "more than 100,000 seats",
            method: "/thoughtpartner.v1.SubscriptionService/UpdateSeats",
            caller: Role::Admin,
            body: pb::UpdateSeatsRequest { seats: 100_001 }.encode_to_vec(),
            code: Code::InvalidArgument,
            says: "between 1 and 100000",
        },
        Limit {
            what: "a usage period over 366 days",
            method: "/thoughtpartner.v1.SubscriptionService/GetUsage",
            caller: Role::Admin,
            body: pb::GetUsageRequest {
                start_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                end_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000 + 367 * 86_400,
                    nanos: 0,
                }),
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "at most 366 days",
        },
        Limit {
            what: "a tenant name over 200 characters",
            method: "/thoughtpartner.v1.TenantAdminService/CreateTenant",
            caller: Role::Operator,
            body: pb::CreateTenantRequest {
                display_name: "n".repeat(201),
                seats: 1,
                admin_user_id: "ada".into(),
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "1..=200 characters",
        },
        Limit {
            what: "a suspension reason over 500 characters",
            method: "/thoughtpartner.v1.TenantAdminService/SuspendTenant",
            caller: Role::Operator,
            body: pb::SuspendTenantRequest {
                tenant_id: tenant.to_string(),
                reason: "r".repeat(501),
            }
            .encode_to_vec(),
            code: Code::InvalidArgument,
            says: "1..=500 characters",
        },
    ];

    for limit in limits {
        let token = match limit.caller {
            Role::Member => &member,
            Role::Admin => &admin,
            Role::Operator => &operator,
        };
        let streaming = limit.method.ends_with("/SendMessage");
        let answer = call_raw(
            app.channel().await?,
            limit.method,
            token,
            limit.body,
            streaming,
        )
        .await?;
        let status = answer
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", limit.what));
        assert_eq!(status.code(), limit.code, "{}: {status:?}", limit.what);
        assert!(
            status.message().contains(limit.says),
            "{}: the message names the limit ({:?}): {:?}",
            limit.what,
            limit.says,
            status.message()
        );
    }
    // Nothing refused was stored.
    assert_eq!(app.count_rows("conversation.messages").await?, rows_before);
    assert_eq!(
        app.count_rows("knowledge.documents").await?,
        documents_before
    );
    Ok(())
}
