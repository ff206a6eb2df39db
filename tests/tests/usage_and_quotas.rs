//! Monthly quotas (organisation and member) enforced on every send, usage
//! per member from the stored turns and token counts, through the API.

use tonic::Code;
use tp_context::Role;
use tp_e2e::fake_provider::{self, FakeReply, Wire};
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, authed, new_conversation, send};

type QuotaClient = pb::quota_service_client::QuotaServiceClient<tonic::transport::Channel>;
type SubscriptionClient =
    pb::subscription_service_client::SubscriptionServiceClient<tonic::transport::Channel>;

async fn set_quota(
    app: &TestApp,
    admin: &str,
    user_id: &str,
    monthly_messages: i64,
    monthly_tokens: i64,
) -> Result<pb::QuotaStatus, tonic::Status> {
    let mut quotas = QuotaClient::new(app.channel().await.expect("channel"));
    Ok(quotas
        .set_quota(authed(
            pb::SetQuotaRequest {
                user_id: user_id.into(),
                limits: Some(pb::QuotaLimits {
                    monthly_messages,
                    monthly_tokens,
                }),
            },
            admin,
        ))
        .await?
        .into_inner()
        .quota
        .expect("quota"))
}

async fn my_quota(app: &TestApp, token: &str) -> anyhow::Result<pb::GetMyQuotaResponse> {
    let mut quotas = QuotaClient::new(app.channel().await?);
    Ok(quotas
        .get_my_quota(authed(pb::GetMyQuotaRequest {}, token))
        .await?
        .into_inner())
}

#[tokio::test]
async fn an_organisation_quota_refuses_the_message_after_the_last_one() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, member) = app.tenant_with_member("Acme", "mia").await?;
    let admin = app.token("mia-admin", Some(tenant), Role::Admin);
    set_quota(&app, &admin, "", 3, 0).await?;

    let mut conversations = app.conversations(&member).await?;
    let id = new_conversation(&mut conversations, "")
        .await?
        .conversation_id;
    for n in 0..3 {
        send(
            &mut conversations,
            &id,
            "How do I grow my staff engineers?",
            &format!("k{n}"),
        )
        .await?;
    }
    let Err(refused) = send(&mut conversations, &id, "One more?", "k3").await else {
        panic!("the fourth message is over the quota");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("the organisation's monthly message quota (3) is used up; it resets at"),
        "{}",
        refused.message()
    );
    // Nothing of the refused message was stored...
    let stored = tp_e2e::transcript(&mut conversations, &id).await?;
    assert_eq!(stored.len(), 6);
    // ...while a retry of an accepted message still replays its reply.
    let replay = send(
        &mut conversations,
        &id,
        "How do I grow my staff engineers?",
        "k0",
    )
    .await?;
    assert_eq!(replay.user().message_id, stored[0].message_id);

    let mine = my_quota(&app, &member).await?;
    assert_eq!(mine.quotas.len(), 1);
    let org = &mine.quotas[0];
    assert_eq!(org.user_id, "");
    assert_eq!((org.messages_used, org.messages_remaining), (3, 0));
    assert_eq!(org.tokens_remaining, -1, "no token quota: unlimited");
    assert!(mine.resets_at.is_some());

    // Removing the quota lets messages through again.
    set_quota(&app, &admin, "", 0, 0).await?;
    send(&mut conversations, &id, "Thanks.", "k4").await?;
    assert!(my_quota(&app, &member).await?.quotas.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_member_quota_stops_that_member_only() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, mia) = app.tenant_with_member("Acme", "mia").await?;
    let admin = app.token("mia-admin", Some(tenant), Role::Admin);
    let set = set_quota(&app, &admin, "mia", 1, 0).await?;
    assert_eq!(set.messages_remaining, 1);

    let mut as_mia = app.conversations(&mia).await?;
    let id = new_conversation(&mut as_mia, "").await?.conversation_id;
    send(&mut as_mia, &id, "Should I split the team?", "k1").await?;
    let Err(refused) = send(&mut as_mia, &id, "And then?", "k2").await else {
        panic!("mia is over her quota");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("member `mia`'s monthly message quota (1)")
    );

    // The admin is not limited by mia's quota.
    let mut as_admin = app.conversations(&admin).await?;
    let other = new_conversation(&mut as_admin, "").await?.conversation_id;
    send(&mut as_admin, &other, "Planning a re-org.", "k1").await?;

    for (user_id, messages, code) in [
        ("nobody", 5, Code::NotFound),
        ("mia", -1, Code::InvalidArgument),
    ] {
        let status = set_quota(&app, &admin, user_id, messages, 0)
            .await
            .expect_err("bad quota");
        assert_eq!(status.code(), code, "{user_id}");
    }
    Ok(())
}

#[tokio::test]
async fn usage_counts_messages_tokens_and_active_seats() -> anyhow::Result<()> {
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![
            FakeReply::Text(vec!["What have you tried so far?".into()], 800, 20),
            FakeReply::Text(vec!["What would success look like?".into()], 900, 30),
        ],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (tenant, mia) = app.tenant_with_member("Acme", "mia").await?;
    let admin = app.token("mia-admin", Some(tenant), Role::Admin);
    let mut as_mia = app.conversations(&mia).await?;
    let id = new_conversation(&mut as_mia, "").await?.conversation_id;
    send(&mut as_mia, &id, "My team misses deadlines.", "k1").await?;
    send(&mut as_mia, &id, "We estimate badly.", "k2").await?;

    let mut subs = SubscriptionClient::new(app.channel().await?);
    let usage = subs
        .get_usage(authed(pb::GetUsageRequest::default(), &admin))
        .await?
        .into_inner();
    assert_eq!((usage.seats_paid, usage.seats_active), (5, 1));
    let of = |user: &str| {
        usage
            .members
            .iter()
            .find(|m| m.user_id == user)
            .cloned()
            .expect("every member is listed")
    };
    let mia_usage = of("mia");
    assert_eq!(mia_usage.messages, 2);
    assert_eq!(
        (mia_usage.input_tokens, mia_usage.output_tokens),
        (1700, 50)
    );
    assert_eq!(mia_usage.active_days, 1);
    assert_eq!(of("mia-admin").messages, 0);

    // A token quota counts the stored token totals.
    set_quota(&app, &admin, "", 0, 1750).await?;
    let Err(refused) = send(&mut as_mia, &id, "And now?", "k3").await else {
        panic!("1750 tokens are used up");
    };
    assert!(refused.message().contains("monthly token quota (1750)"));

    let bad = [
        pb::GetUsageRequest {
            start_time: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            end_time: None,
        },
        pb::GetUsageRequest {
            start_time: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        },
        pb::GetUsageRequest {
            start_time: Some(prost_types::Timestamp {
                seconds: 1_600_000_000,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        },
    ];
    for request in bad {
        let status = subs
            .get_usage(authed(request, &admin))
            .await
            .expect_err("a bad period");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    Ok(())
}

/// A tenant's daily count is spread over several rows by member (so its
/// members do not queue on one row's lock); the organisation's quota is
/// still checked against their sum.
#[tokio::test]
async fn a_tenants_count_spread_over_rows_still_meets_its_quota() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let tenant = app.create_tenant("Spread", 10, "spread-admin").await?;
    let admin = app.token("spread-admin", Some(tenant), Role::Admin);
    let members: Vec<String> = (0..6).map(|i| format!("member-{i}")).collect();
    for member in &members {
        app.members(&admin)
            .await?
            .add_member(pb::AddMemberRequest {
                user_id: member.clone(),
                role: pb::MemberRole::Member.into(),
            })
            .await?;
    }
    set_quota(&app, &admin, "", 6, 0).await?;
    let mut first = None;
    for member in &members {
        let token = app.token(member, Some(tenant), Role::Member);
        let mut conversations = app.conversations(&token).await?;
        let id = new_conversation(&mut conversations, "")
            .await?
            .conversation_id;
        send(
            &mut conversations,
            &id,
            "How do I grow my staff engineers?",
            "k0",
        )
        .await?;
        first.get_or_insert((conversations, id));
    }

    let db = tp_e2e::TestDatabase::pool(&app.db.admin_url).await?;
    let (rows, messages): (i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(messages)::bigint FROM conversation.tenant_token_usage WHERE tenant_id = $1",
    )
    .bind(tenant.as_uuid())
    .fetch_one(&db)
    .await?;
    assert_eq!(messages, 6);
    assert!(rows > 1, "six members' messages on {rows} row(s)");

    let (mut conversations, id) = first.expect("a conversation");
    let Err(refused) = send(&mut conversations, &id, "One more?", "k1").await else {
        panic!("the seventh message is over the organisation's quota of six");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted);
    Ok(())
}
