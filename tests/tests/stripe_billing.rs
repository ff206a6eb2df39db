//! Stripe as the billing provider, end to end: a gateway configured with
//! `TP_BILLING_PROVIDER=stripe` against a fake Stripe (`fake_stripe`),
//! tenant creation and seat changes going to Stripe first, and signed
//! webhooks bringing Stripe's state (Dashboard quantity changes, failed
//! payments) back to the tenant exactly once.

use std::net::SocketAddr;

use anyhow::Context;
use tonic::Code;
use tonic::transport::Channel;
use tp_context::{Role, TenantId};
use tp_e2e::fake_stripe::{self, FakeStripe, SEAT_PRICE, sign, stripe_error, unix_now};
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, TestDatabase, authed};

const WEBHOOK_SECRET: &str = "whsec_test_gateway_signing_secret";

struct Stack {
    app: TestApp,
    stripe: FakeStripe,
    grpc: SocketAddr,
    http: SocketAddr,
}

async fn stack() -> anyhow::Result<Stack> {
    let app = TestApp::spawn().await?;
    let stripe = FakeStripe::start().await?;
    let base = stripe.base_url();
    let (grpc, http) = app
        .spawn_gateway_with_http(|config| {
            config.billing_provider = tp_gateway::BillingProviderKind::Stripe;
            config.stripe_secret_key = Some("sk_test_gateway_key".into());
            config.stripe_seat_price_id = Some(SEAT_PRICE.into());
            config.stripe_webhook_secret = Some(WEBHOOK_SECRET.into());
            config.stripe_api_base = Some(base);
        })
        .await?;
    Ok(Stack {
        app,
        stripe,
        grpc,
        http,
    })
}

impl Stack {
    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.grpc))?
            .connect()
            .await?)
    }

    async fn create_tenant(&self, seats: i32, admin: &str) -> Result<TenantId, tonic::Status> {
        let operator = self.app.token("operator-1", None, Role::Operator);
        let channel = self
            .channel()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let tenant = pb::tenant_admin_service_client::TenantAdminServiceClient::new(channel)
            .create_tenant(authed(
                pb::CreateTenantRequest {
                    display_name: "Acme & Co.".into(),
                    seats,
                    admin_user_id: admin.into(),
                },
                &operator,
            ))
            .await?
            .into_inner()
            .tenant
            .ok_or_else(|| tonic::Status::internal("no tenant"))?;
        tenant
            .tenant_id
            .parse()
            .map_err(|_| tonic::Status::internal("bad tenant id"))
    }

    fn admin(&self, tenant: TenantId) -> String {
        self.app.token("ada", Some(tenant), Role::Admin)
    }

    async fn subscription(
        &self,
        tenant: TenantId,
    ) -> anyhow::Result<tonic::Response<pb::GetSubscriptionResponse>> {
        Ok(
            pb::subscription_service_client::SubscriptionServiceClient::new(self.channel().await?)
                .get_subscription(authed(
                    pb::GetSubscriptionRequest::default(),
                    &self.admin(tenant),
                ))
                .await?,
        )
    }

    async fn seats(&self, tenant: TenantId) -> anyhow::Result<i32> {
        Ok(self
            .subscription(tenant)
            .await?
            .into_inner()
            .subscription
            .context("subscription")?
            .seats)
    }

    async fn status(&self, tenant: TenantId) -> anyhow::Result<pb::TenantStatus> {
        Ok(self
            .subscription(tenant)
            .await?
            .into_inner()
            .subscription
            .context("subscription")?
            .status())
    }

    async fn update_seats(&self, tenant: TenantId, seats: i32) -> Result<(), tonic::Status> {
        let channel = self
            .channel()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        pb::subscription_service_client::SubscriptionServiceClient::new(channel)
            .update_seats(authed(
                pb::UpdateSeatsRequest { seats },
                &self.admin(tenant),
            ))
            .await?;
        Ok(())
    }

    /// `(actor, action)` of the tenant's audit events, oldest first.
    async fn audit(&self, tenant: TenantId) -> anyhow::Result<Vec<(String, String)>> {
        let events = pb::audit_service_client::AuditServiceClient::new(self.channel().await?)
            .list_audit_events(authed(
                pb::ListAuditEventsRequest::default(),
                &self.admin(tenant),
            ))
            .await?
            .into_inner()
            .events;
        Ok(events
            .into_iter()
            .rev()
            .map(|e| (e.actor, e.action))
            .collect())
    }

    /// The tenant's account row, read as the superuser.
    async fn account(&self, tenant: TenantId) -> anyhow::Result<Option<(String, String, String)>> {
        let pool = TestDatabase::pool(&self.app.db.admin_url).await?;
        let row = sqlx::query_as(
            "SELECT customer_id, subscription_id, item_id FROM gateway.billing_accounts
              WHERE tenant_id = $1 AND provider = 'stripe'",
        )
        .bind(tenant.as_uuid())
        .fetch_optional(&pool)
        .await?;
        pool.close().await;
        Ok(row)
    }

    /// A tenant with a Stripe account; `(tenant, subscription, customer)`.
    async fn tenant(&self, seats: i32) -> anyhow::Result<(TenantId, String, String)> {
        let tenant = self.create_tenant(seats, "ada").await?;
        let (customer, subscription, _) = self.account(tenant).await?.context("account row")?;
        Ok((tenant, subscription, customer))
    }

    async fn deliver(&self, payload: &[u8]) -> anyhow::Result<(u16, String)> {
        let signature = sign(payload, WEBHOOK_SECRET, unix_now());
        fake_stripe::post_webhook(self.http, payload, Some(&signature)).await
    }
}

#[tokio::test]
async fn creating_a_tenant_opens_a_stripe_customer_and_subscription() -> anyhow::Result<()> {
    let stack = stack().await?;
    let tenant = stack.create_tenant(3, "ada").await?;
    let id = tenant.to_string();

    let requests = stack.stripe.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let (customer, subscription) = (&requests[0], &requests[1]);
    assert_eq!(
        (customer.method.as_str(), customer.path.as_str()),
        ("POST", "/v1/customers")
    );
    assert_eq!(
        customer.idempotency_key.as_deref(),
        Some(format!("tenant-{id}-customer").as_str())
    );
    assert_eq!(customer.form.get("metadata[tenant_id]"), Some(&id));
    assert_eq!(
        (subscription.method.as_str(), subscription.path.as_str()),
        ("POST", "/v1/subscriptions")
    );
    assert_eq!(
        subscription.idempotency_key.as_deref(),
        Some(format!("tenant-{id}-subscription").as_str())
    );
    assert_eq!(subscription.form.get("metadata[tenant_id]"), Some(&id));
    assert_eq!(
        subscription.form.get("items[0][price]").map(String::as_str),
        Some(SEAT_PRICE)
    );
    assert_eq!(
        subscription
            .form
            .get("items[0][quantity]")
            .map(String::as_str),
        Some("3")
    );

    let (customer_id, subscription_id, item_id) =
        stack.account(tenant).await?.context("account row")?;
    assert_eq!(
        Some(subscription_id),
        stack.stripe.subscription_of(&id),
        "the stored subscription is the one Stripe made"
    );
    assert!(customer_id.starts_with("cus_"), "{customer_id}");
    assert!(item_id.starts_with("si_"), "{item_id}");

    let subscription = stack
        .subscription(tenant)
        .await?
        .into_inner()
        .subscription
        .context("subscription")?;
    assert_eq!(subscription.billing_provider, "stripe");
    assert_eq!(subscription.seats, 3);
    Ok(())
}

#[tokio::test]
async fn a_stripe_failure_creates_no_tenant() -> anyhow::Result<()> {
    let stack = stack().await?;
    stack.stripe.fail_next(
        "POST /v1/subscriptions",
        402,
        stripe_error("card_error", "card_declined", "Your card was declined."),
    );
    let refused = stack.create_tenant(3, "ada").await.expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("declined"), "{refused:?}");

    stack.stripe.fail_next(
        "POST /v1/customers",
        500,
        stripe_error("api_error", "", "Something went wrong"),
    );
    let unavailable = stack.create_tenant(3, "ada").await.expect_err("down");
    assert_eq!(unavailable.code(), Code::Unavailable, "{unavailable:?}");

    assert_eq!(stack.app.count_rows("gateway.tenants").await?, 0);
    assert_eq!(stack.app.count_rows("gateway.billing_accounts").await?, 0);
    assert_eq!(stack.app.count_rows("gateway.audit_events").await?, 0);
    Ok(())
}

#[tokio::test]
async fn seat_changes_go_to_stripe_first_and_a_refusal_changes_nothing() -> anyhow::Result<()> {
    let stack = stack().await?;
    let (tenant, _, _) = stack.tenant(3).await?;
    let (_, _, item) = stack.account(tenant).await?.context("account")?;

    stack.update_seats(tenant, 5).await?;
    assert_eq!(stack.seats(tenant).await?, 5);
    let requests = stack.stripe.requests();
    let update = requests.last().context("a request")?;
    assert_eq!(
        (update.method.as_str(), update.path.as_str()),
        ("POST", format!("/v1/subscription_items/{item}").as_str())
    );
    assert_eq!(update.form.get("quantity").map(String::as_str), Some("5"));
    assert_eq!(
        update.form.get("proration_behavior").map(String::as_str),
        Some("create_prorations")
    );
    let key = update.idempotency_key.clone().context("idempotency key")?;
    assert!(
        key.starts_with(&format!("seats-{tenant}-")) && key.ends_with("-5"),
        "{key}"
    );

    stack.stripe.fail_next(
        "POST /v1/subscription_items/",
        402,
        stripe_error("card_error", "card_declined", "Your card was declined."),
    );
    let refused = stack.update_seats(tenant, 7).await.expect_err("declined");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(stack.seats(tenant).await?, 5, "seats are unchanged");
    Ok(())
}

#[tokio::test]
async fn a_dashboard_quantity_change_reaches_the_tenant_once() -> anyhow::Result<()> {
    let stack = stack().await?;
    let (tenant, subscription, customer) = stack.tenant(3).await?;

    stack.stripe.set_quantity(&subscription, 9);
    let event = fake_stripe::event(
        "evt_1DashboardQty",
        "customer.subscription.updated",
        fake_stripe::subscription_object(&subscription, &customer),
    );
    let (status, body) = stack.deliver(&event).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.seats(tenant).await?, 9);
    let by_stripe = |events: &[(String, String)]| {
        events
            .iter()
            .filter(|(actor, action)| actor == "billing:stripe" && action == "seats.updated")
            .count()
    };
    assert_eq!(by_stripe(&stack.audit(tenant).await?), 1);

    // The same event again, with Stripe's quantity moved on since: it was
    // processed already, so nothing is applied.
    stack.stripe.set_quantity(&subscription, 11);
    let (status, body) = stack.deliver(&event).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("duplicate"), "{body}");
    assert_eq!(stack.seats(tenant).await?, 9);
    assert_eq!(by_stripe(&stack.audit(tenant).await?), 1);
    assert_eq!(stack.app.count_rows("gateway.billing_events").await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_failed_payment_makes_the_tenant_past_due_and_a_paid_invoice_clears_it()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let (tenant, subscription, customer) = stack.tenant(3).await?;
    // The cached standing is active.
    assert!(
        stack
            .subscription(tenant)
            .await?
            .metadata()
            .get("tp-billing-warning")
            .is_none()
    );

    stack.stripe.set_status(&subscription, "past_due");
    let event = fake_stripe::event(
        "evt_1PaymentFailed",
        "invoice.payment_failed",
        fake_stripe::invoice_object(&subscription, &customer),
    );
    let (status, body) = stack.deliver(&event).await?;
    assert_eq!(status, 200, "{body}");
    let response = stack.subscription(tenant).await?;
    assert!(
        response.metadata().get("tp-billing-warning").is_some(),
        "a past-due tenant's responses carry the warning"
    );
    let sub = response.into_inner().subscription.context("subscription")?;
    assert_eq!(sub.status(), pb::TenantStatus::PastDue);
    assert!(
        stack
            .audit(tenant)
            .await?
            .contains(&("billing:stripe".into(), "tenant.status_changed".into()))
    );

    stack.stripe.set_status(&subscription, "active");
    let event = fake_stripe::event(
        "evt_1InvoicePaid",
        "invoice.paid",
        fake_stripe::invoice_object(&subscription, &customer),
    );
    let (status, body) = stack.deliver(&event).await?;
    assert_eq!(status, 200, "{body}");
    let response = stack.subscription(tenant).await?;
    assert!(response.metadata().get("tp-billing-warning").is_none());
    assert_eq!(
        response
            .into_inner()
            .subscription
            .context("subscription")?
            .status(),
        pb::TenantStatus::Active
    );
    Ok(())
}

#[tokio::test]
async fn deliveries_that_are_not_authentic_are_refused() -> anyhow::Result<()> {
    let stack = stack().await?;
    let (tenant, subscription, customer) = stack.tenant(3).await?;
    // Were any of these applied, the seats would change.
    stack.stripe.set_quantity(&subscription, 8);
    let event = fake_stripe::event(
        "evt_1Forged",
        "customer.subscription.updated",
        fake_stripe::subscription_object(&subscription, &customer),
    );

    let wrong_secret = sign(&event, "whsec_someone_elses_secret", unix_now());
    let stale = sign(&event, WEBHOOK_SECRET, unix_now() - 600);
    let garbage = b"{not json".to_vec();
    let garbage_signature = sign(&garbage, WEBHOOK_SECRET, unix_now());
    let cases: [(&str, &[u8], Option<&str>, &str); 5] = [
        ("wrong secret", &event, Some(&wrong_secret), "signature"),
        ("stale timestamp", &event, Some(&stale), "tolerance"),
        (
            "malformed JSON",
            &garbage,
            Some(&garbage_signature),
            "not JSON",
        ),
        ("no signature", &event, None, "Stripe-Signature"),
        (
            "malformed header",
            &event,
            Some("v1=abc"),
            "Stripe-Signature",
        ),
    ];
    for (case, payload, signature, reason) in cases {
        let (status, body) = fake_stripe::post_webhook(stack.http, payload, signature).await?;
        assert_eq!(status, 400, "{case}: {body}");
        assert!(body.contains(reason), "{case}: {body}");
        assert!(!body.contains(WEBHOOK_SECRET), "{case}: {body}");
    }
    assert_eq!(stack.seats(tenant).await?, 3);
    assert_eq!(stack.app.count_rows("gateway.billing_events").await?, 0);
    Ok(())
}

#[tokio::test]
async fn events_that_are_not_a_tenants_change_nothing() -> anyhow::Result<()> {
    let stack = stack().await?;
    let (tenant, subscription, customer) = stack.tenant(3).await?;
    stack.stripe.set_quantity(&subscription, 6);
    stack.stripe.set_status(&subscription, "past_due");

    // A type the gateway does not handle, about the tenant's subscription.
    let (status, body) = stack
        .deliver(&fake_stripe::event(
            "evt_1Unhandled",
            "customer.subscription.trial_will_end",
            fake_stripe::subscription_object(&subscription, &customer),
        ))
        .await?;
    assert_eq!(
        (status, body.trim()),
        (200, "ignored: event type not handled")
    );

    // A subscription Stripe does not know.
    let (status, body) = stack
        .deliver(&fake_stripe::event(
            "evt_1NoSuchSub",
            "customer.subscription.updated",
            fake_stripe::subscription_object("sub_1DoesNotExist", "cus_1Nobody"),
        ))
        .await?;
    assert_eq!(
        (status, body.trim()),
        (200, "ignored: unknown subscription")
    );

    // Subscriptions made elsewhere: one claiming this tenant (but not its
    // account), one for a tenant that does not exist, one for no tenant.
    for claimed in [
        Some(tenant.to_string()),
        Some(uuid::Uuid::new_v4().to_string()),
        None,
    ] {
        let other = stack.stripe.add_subscription(claimed.as_deref(), 40);
        let (status, body) = stack
            .deliver(&fake_stripe::event(
                &format!("evt_1Other{}", other),
                "customer.subscription.updated",
                fake_stripe::subscription_object(&other, "cus_1Elsewhere"),
            ))
            .await?;
        assert_eq!(status, 200, "{claimed:?}: {body}");
        assert!(body.starts_with("ignored"), "{claimed:?}: {body}");
    }

    let subscription = stack
        .subscription(tenant)
        .await?
        .into_inner()
        .subscription
        .context("subscription")?;
    assert_eq!(subscription.seats, 3);
    assert_eq!(subscription.status(), pb::TenantStatus::Active);
    assert_eq!(stack.app.count_rows("gateway.billing_events").await?, 0);
    assert_eq!(stack.app.count_rows("gateway.tenants").await?, 1);
    assert_eq!(stack.app.count_rows("gateway.billing_accounts").await?, 1);
    Ok(())
}

#[tokio::test]
async fn stripe_without_its_settings_does_not_start() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let error = app
        .spawn_gateway_with_http(|config| {
            config.billing_provider = tp_gateway::BillingProviderKind::Stripe;
            config.stripe_seat_price_id = Some(SEAT_PRICE.into());
        })
        .await
        .expect_err("no secret key or webhook secret");
    let message = format!("{error:#}");
    assert!(
        message.contains("TP_STRIPE_SECRET_KEY") && message.contains("TP_STRIPE_WEBHOOK_SECRET"),
        "{message}"
    );
    assert!(!message.contains("TP_STRIPE_SEAT_PRICE_ID"), "{message}");
    // The local provider serves no webhooks (its HTTP port has only the
    // ops routes).
    let (_, http) = app.spawn_gateway_with_http(|_| {}).await?;
    let (status, _) = fake_stripe::post_webhook(http, b"{}", Some("t=1,v1=00")).await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn an_operators_suspension_stands_until_stripe_cancels() -> anyhow::Result<()> {
    let stack = stack().await?;
    let (tenant, subscription, customer) = stack.tenant(3).await?;
    let operator = stack.app.token("ops", None, Role::Operator);
    stack
        .app
        .tenants(&operator)
        .await?
        .suspend_tenant(pb::SuspendTenantRequest {
            tenant_id: tenant.to_string(),
            reason: "fraud review".into(),
        })
        .await?;

    stack.stripe.set_status(&subscription, "past_due");
    let (code, body) = stack
        .deliver(&fake_stripe::event(
            "evt_1PastDueWhileSuspended",
            "invoice.payment_failed",
            fake_stripe::invoice_object(&subscription, &customer),
        ))
        .await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(stack.status(tenant).await?, pb::TenantStatus::Suspended);

    stack.stripe.set_status(&subscription, "canceled");
    let (code, body) = stack
        .deliver(&fake_stripe::event(
            "evt_1Deleted",
            "customer.subscription.deleted",
            fake_stripe::subscription_object(&subscription, &customer),
        ))
        .await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(stack.status(tenant).await?, pb::TenantStatus::Cancelled);
    // Cancelled is read-only.
    let refused = stack.update_seats(tenant, 4).await.expect_err("read-only");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    Ok(())
}

#[tokio::test]
async fn billing_tables_are_tenant_isolated_and_bodies_are_capped() -> anyhow::Result<()> {
    let stack = stack().await?;
    let (tenant, _, _) = stack.tenant(3).await?;
    let admin = TestDatabase::pool(&stack.app.db.admin_url).await?;
    for table in ["billing_accounts", "billing_events"] {
        let (enabled, forced): (bool, bool) = sqlx::query_as(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class
              WHERE oid = ('gateway.' || $1)::regclass",
        )
        .bind(table)
        .fetch_one(&admin)
        .await?;
        assert!(enabled && forced, "{table}");
    }
    admin.close().await;
    // The application role sees the account only as its tenant.
    let app = tp_store::Pool::new(&stack.app.db.app_url, 2, tp_store::ACQUIRE_TIMEOUT)?;
    let unscoped: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway.billing_accounts")
        .fetch_one(&mut *app.acquire().await?)
        .await?;
    assert_eq!(unscoped, 0);
    let mut tx = tp_store::begin_tenant_tx(&app, tenant).await?;
    let scoped: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway.billing_accounts")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(scoped, 1);
    let other = tp_store::begin_tenant_tx(&app, TenantId::new_random()).await;
    drop(tx);
    let mut other = other?;
    let foreign: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway.billing_accounts")
        .fetch_one(&mut *other)
        .await?;
    assert_eq!(foreign, 0);
    drop(other);
    app.close();

    let huge = vec![b' '; (1 << 20) + 1];
    let signature = sign(&huge, WEBHOOK_SECRET, unix_now());
    let (status, _) = fake_stripe::post_webhook(stack.http, &huge, Some(&signature)).await?;
    assert_eq!(status, 413);
    Ok(())
}
