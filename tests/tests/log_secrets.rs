//! Every log line the three services write, at debug level, through a
//! session that touches every secret they hold and carries message text
//! both ways: none of the secrets, tokens or message text may appear.
//! The services run as real processes, so their logs are the files an
//! operator's log shipper would read.

use tp_context::Role;
use tp_e2e::fake_provider::{self, FakeReply, Wire};
use tp_e2e::fake_stripe::{self, FakeStripe, SEAT_PRICE};
use tp_e2e::processes::ProcessStack;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{new_conversation, send};

const SERVICE_BINARY: &str = env!("CARGO_BIN_EXE_tp-e2e-service");

const STRIPE_KEY: &str = "sk_test_logscan_7c1e9a0b";
const WEBHOOK_SECRET: &str = "whsec_logscan_4d2f8b61";
const LLM_KEY: &str = "sk-llm-logscan-93be27c4";
const USER_TEXT: &str = "Our kestrelwidget reorg is failing and I blame Priya";
const MODEL_TEXT: &str = "What would marmosetplan success look like to you?";

#[tokio::test]
async fn no_secret_token_or_message_text_reaches_any_log() -> anyhow::Result<()> {
    let stripe = FakeStripe::start().await?;
    let model = fake_provider::start(
        Wire::OpenAi,
        vec![FakeReply::Text(vec![MODEL_TEXT.into()], 20, 12); 2],
    )
    .await?;
    let env =
        |service: &'static str, key: &str, value: &str| (service, key.to_owned(), value.to_owned());
    let mut app = ProcessStack::start(
        SERVICE_BINARY,
        vec![
            env("gateway", "RUST_LOG", "debug"),
            env("conversation", "RUST_LOG", "debug"),
            env("knowledge", "RUST_LOG", "debug"),
            env("gateway", "TP_BILLING_PROVIDER", "stripe"),
            env("gateway", "TP_STRIPE_SECRET_KEY", STRIPE_KEY),
            env("gateway", "TP_STRIPE_SEAT_PRICE_ID", SEAT_PRICE),
            env("gateway", "TP_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
            env("gateway", "TP_STRIPE_API_BASE", &stripe.base_url()),
            env("conversation", "TP_LLM_PROVIDER", "openai"),
            env("conversation", "TP_LLM_BASE_URL", &model.base_url),
            env("conversation", "TP_LLM_API_KEY", LLM_KEY),
            env("conversation", "TP_LLM_MODEL", "test-model"),
        ],
    )
    .await?;

    // A session: a tenant opened in Stripe, a member, a seat change, two
    // turns with the model, a document, a search, a forged and a signed
    // webhook, and calls with a broken and a foreign token.
    let (tenant, member_token) = app.tenant_with_member("Logscan", "lena").await?;
    let admin_token = app.token("lena-admin", Some(tenant), Role::Admin);
    app.subscriptions(&admin_token)
        .await?
        .update_seats(pb::UpdateSeatsRequest { seats: 6 })
        .await?;
    let mut conversations = app.conversations(&member_token).await?;
    let id = new_conversation(&mut conversations, "kestrelwidget planning")
        .await?
        .conversation_id;
    for key in ["k1", "k2"] {
        let exchange = send(&mut conversations, &id, USER_TEXT, key).await?;
        assert!(exchange.assistant().content.contains("marmosetplan"));
    }
    app.knowledge(&admin_token)
        .await?
        .create_document(pb::CreateDocumentRequest {
            title: "kestrelwidget charter".into(),
            content: format!("# Charter\n\n{USER_TEXT}.").into_bytes(),
            content_type: pb::ContentType::Markdown.into(),
        })
        .await?;
    app.knowledge(&member_token)
        .await?
        .search(pb::SearchRequest {
            query: "kestrelwidget reorg".into(),
            ..Default::default()
        })
        .await?;
    let subscription = stripe
        .subscription_of(&tenant.to_string())
        .ok_or_else(|| anyhow::anyhow!("the tenant has a Stripe subscription"))?;
    let payload = fake_stripe::event(
        "evt_logscan",
        "customer.subscription.updated",
        fake_stripe::subscription_object(&subscription, "cus_logscan"),
    );
    let http = app.stack.http_addr("gateway")?;
    let forged = fake_stripe::post_webhook(http, &payload, Some("t=1,v1=00")).await?;
    assert_eq!(forged.0, 400, "a forged webhook is refused");
    let signed = fake_stripe::sign(&payload, WEBHOOK_SECRET, fake_stripe::unix_now());
    let delivered = fake_stripe::post_webhook(http, &payload, Some(&signed)).await?;
    assert_eq!(
        delivered.0, 200,
        "a signed webhook is accepted: {delivered:?}"
    );
    let mut broken = app
        .conversations_with_auth(Some(&format!("Bearer {member_token}x")))
        .await?;
    assert!(
        broken
            .list_conversations(pb::ListConversationsRequest::default())
            .await
            .is_err()
    );

    // Stop the services (they flush their logs on the way out), then read
    // every line.
    app.terminate_all().await?;
    let signature = member_token
        .rsplit('.')
        .next()
        .ok_or_else(|| anyhow::anyhow!("a JWT has a signature"))?
        .to_owned();
    let secrets = [
        ("the JWT signing secret", tp_loadgen::stack::SIGNING_SECRET),
        ("the Stripe secret key", STRIPE_KEY),
        ("the Stripe webhook secret", WEBHOOK_SECRET),
        ("the model provider's API key", LLM_KEY),
        ("a bearer token's signature", signature.as_str()),
        ("the user's message text", "kestrelwidget"),
        ("the user's message text", "Priya"),
        ("the model's reply text", "marmosetplan"),
    ];
    let mut lines = 0;
    for service in ["gateway", "conversation", "knowledge"] {
        let path = app.log_dir().join(format!("{service}.log"));
        let log = std::fs::read_to_string(&path)?;
        lines += log.lines().count();
        for (what, secret) in &secrets {
            if let Some(line) = log.lines().find(|line| line.contains(secret)) {
                panic!("{what} is in {service}'s log: {line}");
            }
        }
    }
    // The scan read real logs: debug lines from every service, and the
    // calls' canonical events.
    assert!(lines > 100, "only {lines} log lines were written");
    Ok(())
}
