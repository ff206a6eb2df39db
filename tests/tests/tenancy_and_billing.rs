//! Tenant standing (suspension, past due), member roles, seats, the local
//! billing ledger's invoice preview, and the audit log, through the API.

use tonic::Code;
use tp_context::{Role, TenantId};
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, TestDatabase, authed, new_conversation, send};

type SubscriptionClient =
    pb::subscription_service_client::SubscriptionServiceClient<tonic::transport::Channel>;

async fn subscriptions(app: &TestApp) -> anyhow::Result<SubscriptionClient> {
    Ok(SubscriptionClient::new(app.channel().await?))
}

async fn audit_actions(app: &TestApp, admin: &str) -> anyhow::Result<Vec<pb::AuditEvent>> {
    let mut client = pb::audit_service_client::AuditServiceClient::new(app.channel().await?);
    Ok(client
        .list_audit_events(authed(pb::ListAuditEventsRequest::default(), admin))
        .await?
        .into_inner()
        .events)
}

#[tokio::test]
async fn a_suspended_tenant_reads_but_cannot_write() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, member) = app.tenant_with_member("Acme", "mia").await?;
    let mut conversations = app.conversations(&member).await?;
    let id = new_conversation(&mut conversations, "Staff")
        .await?
        .conversation_id;
    send(
        &mut conversations,
        &id,
        "My staff engineers feel stuck.",
        "k1",
    )
    .await?;

    let operator = app.token("ops", None, Role::Operator);
    let mut tenants = app.tenants(&operator).await?;
    let suspended = tenants
        .suspend_tenant(pb::SuspendTenantRequest {
            tenant_id: tenant.to_string(),
            reason: "invoice 2026-11 unpaid".into(),
        })
        .await?
        .into_inner()
        .tenant
        .expect("tenant");
    assert_eq!(suspended.status(), pb::TenantStatus::Suspended);

    // Reads (and so exports) still work...
    let messages = tp_e2e::transcript(&mut conversations, &id).await?;
    assert_eq!(messages.len(), 2);
    // ...new messages do not, and say why.
    let Err(status) = send(&mut conversations, &id, "Still there?", "k2").await else {
        panic!("a suspended tenant cannot send");
    };
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("invoice 2026-11 unpaid"),
        "{status:?}"
    );
    // Nothing was stored by the refused send.
    let after = tp_e2e::transcript(&mut conversations, &id).await?;
    assert_eq!(after.len(), 2);

    let reactivated = tenants
        .reactivate_tenant(pb::ReactivateTenantRequest {
            tenant_id: tenant.to_string(),
        })
        .await?
        .into_inner()
        .tenant
        .expect("tenant");
    assert_eq!(reactivated.status(), pb::TenantStatus::Active);
    send(&mut conversations, &id, "Back again.", "k3").await?;

    let admin = app.token("mia-admin", Some(tenant), Role::Admin);
    let actions: Vec<String> = audit_actions(&app, &admin)
        .await?
        .into_iter()
        .map(|e| format!("{} {}", e.actor, e.action))
        .collect();
    assert_eq!(
        &actions[..2],
        [
            "operator:ops tenant.reactivated",
            "operator:ops tenant.suspended"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_past_due_tenant_works_with_a_warning_trailer() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, member) = app.tenant_with_member("Acme", "mia").await?;
    // Until the Stripe webhooks land, a failed payment is set as they will.
    let mut conn = TestDatabase::tenant_session(&app.db.owner_url, tenant).await?;
    sqlx::query("UPDATE gateway.tenants SET status = 'past_due'")
        .execute(&mut *conn)
        .await?;
    drop(conn);

    let mut conversations = app.conversations(&member).await?;
    // The gateway's cached standing is forgotten on the tenant's
    // notification; poll briefly for it.
    let started = std::time::Instant::now();
    loop {
        let response = conversations
            .list_conversations(pb::ListConversationsRequest::default())
            .await?;
        // Unary responses carry trailers merged into the metadata.
        if response.metadata().get("tp-billing-warning").is_some() {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no billing warning on a past-due tenant's response"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Streams carry it in their trailers, after the last event.
    let id = new_conversation(&mut conversations, "Re-org")
        .await?
        .conversation_id;
    let mut stream = conversations
        .send_message(pb::SendMessageRequest {
            conversation_id: id,
            content: "How do I prepare for a re-org?".into(),
            idempotency_key: "k1".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    while stream.message().await?.is_some() {}
    let trailers = stream.trailers().await?.expect("trailers");
    assert!(trailers.get("tp-billing-warning").is_some());
    Ok(())
}

#[tokio::test]
async fn roles_change_and_the_last_admin_stays() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, member) = app.tenant_with_member("Acme", "mia").await?;
    let admin = app.token("mia-admin", Some(tenant), Role::Admin);
    let mut members = app.members(&admin).await?;

    let last = members
        .update_member_role(pb::UpdateMemberRoleRequest {
            user_id: "mia-admin".into(),
            role: pb::MemberRole::Member.into(),
        })
        .await
        .expect_err("the last admin cannot step down");
    assert_eq!(last.code(), Code::FailedPrecondition);

    let promoted = members
        .update_member_role(pb::UpdateMemberRoleRequest {
            user_id: "mia".into(),
            role: pb::MemberRole::Admin.into(),
        })
        .await?
        .into_inner()
        .member
        .expect("member");
    assert_eq!(promoted.role(), pb::MemberRole::Admin);
    // Mia's member token still works for member methods; admin methods
    // need an admin token, which she may now hold.
    let mia_admin = app.token("mia", Some(tenant), Role::Admin);
    app.members(&mia_admin)
        .await?
        .list_members(pb::ListMembersRequest::default())
        .await?;
    let _ = member;

    // Now the first admin may step down, and is refused admin calls at once.
    members
        .update_member_role(pb::UpdateMemberRoleRequest {
            user_id: "mia-admin".into(),
            role: pb::MemberRole::Member.into(),
        })
        .await?;
    let refused = members
        .list_members(pb::ListMembersRequest::default())
        .await
        .expect_err("no longer an admin");
    assert_eq!(refused.code(), Code::PermissionDenied);

    for (user_id, role, code) in [
        ("nobody", pb::MemberRole::Admin, Code::NotFound),
        ("mia", pb::MemberRole::Unspecified, Code::InvalidArgument),
        ("", pb::MemberRole::Admin, Code::InvalidArgument),
    ] {
        let status = app
            .members(&mia_admin)
            .await?
            .update_member_role(pb::UpdateMemberRoleRequest {
                user_id: user_id.into(),
                role: role.into(),
            })
            .await
            .expect_err("bad input");
        assert_eq!(status.code(), code, "{user_id} {role:?}");
    }

    let events = audit_actions(&app, &mia_admin).await?;
    let change = events
        .iter()
        .find(|e| e.action == "member.role_changed" && e.target == "mia")
        .expect("the promotion is audited");
    assert_eq!(change.actor, "mia-admin");
    let role_of = |s: &Option<prost_types::Struct>| {
        s.as_ref()
            .and_then(|s| s.fields.get("role"))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(r)) => Some(r.clone()),
                _ => None,
            })
    };
    assert_eq!(role_of(&change.before).as_deref(), Some("member"));
    assert_eq!(role_of(&change.after).as_deref(), Some("admin"));
    Ok(())
}

#[tokio::test]
async fn seats_change_within_limits_and_invoices_are_prorated() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, _member) = app.tenant_with_member("Acme", "mia").await?;
    let admin = app.token("mia-admin", Some(tenant), Role::Admin);
    let mut subs = subscriptions(&app).await?;

    let sub = subs
        .get_subscription(authed(pb::GetSubscriptionRequest {}, &admin))
        .await?
        .into_inner()
        .subscription
        .expect("subscription");
    assert_eq!((sub.seats, sub.seats_used), (5, 2));
    assert_eq!(sub.billing_provider, "local");
    assert_eq!(sub.status(), pb::TenantStatus::Active);
    assert!(sub.period_start.is_some() && sub.period_end.is_some());

    for (seats, code) in [
        (0, Code::InvalidArgument),
        (-3, Code::InvalidArgument),
        (100_001, Code::InvalidArgument),
        (1, Code::FailedPrecondition),
    ] {
        let status = subs
            .update_seats(authed(pb::UpdateSeatsRequest { seats }, &admin))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{seats} seats");
    }
    let updated = subs
        .update_seats(authed(pb::UpdateSeatsRequest { seats: 12 }, &admin))
        .await?
        .into_inner()
        .subscription
        .expect("subscription");
    assert_eq!(updated.seats, 12);

    // The tenant was created and grew today: one line at 12 seats from
    // today (the day's last count), costing 12 seats for the days left.
    let invoice = subs
        .preview_invoice(authed(pb::PreviewInvoiceRequest {}, &admin))
        .await?
        .into_inner();
    assert_eq!(invoice.currency, "eur");
    assert_eq!(invoice.lines.len(), 1, "{:?}", invoice.lines);
    assert_eq!(invoice.lines[0].seats, 12);
    assert_eq!(
        invoice.total_minor,
        invoice.lines.iter().map(|l| l.amount_minor).sum::<i64>()
    );
    // A whole period at 12 seats and 3000 a seat would be 36000; the
    // preview charges the full period when created on its first day.
    assert!(invoice.total_minor > 0 && invoice.total_minor <= 36_000);

    let seats_events: Vec<pb::AuditEvent> = audit_actions(&app, &admin)
        .await?
        .into_iter()
        .filter(|e| e.action == "seats.updated")
        .collect();
    assert_eq!(
        seats_events.len(),
        1,
        "only the change that happened is audited"
    );
    Ok(())
}

#[tokio::test]
async fn a_backdated_ledger_prorates_by_the_day() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, _member) = app.tenant_with_member("Acme", "mia").await?;
    let admin = app.token("mia-admin", Some(tenant), Role::Admin);
    // Move the tenant's history back: created 40 days ago with 5 seats (so
    // the current period began before today), 10 seats from 3 days ago.
    // History cannot be rewritten through the API, nor by the schema owner
    // (the ledger has no UPDATE policy): the superuser does it here.
    let superuser = TestDatabase::pool(&app.db.admin_url).await?;
    let mut conn = superuser.acquire().await?;
    sqlx::query(
        "UPDATE gateway.tenants SET billing_anchor = now() - interval '40 days', seats = 10
          WHERE tenant_id = $1",
    )
    .bind(tenant.as_uuid())
    .execute(&mut *conn)
    .await?;
    let moved = sqlx::query(
        "UPDATE gateway.seat_changes SET effective_at = now() - interval '40 days'
          WHERE tenant_id = $1",
    )
    .bind(tenant.as_uuid())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    assert_eq!(moved, 1);
    sqlx::query(
        "INSERT INTO gateway.seat_changes (tenant_id, effective_at, seats)
         VALUES ($1, now() - interval '3 days', 10)",
    )
    .bind(tenant.as_uuid())
    .execute(&mut *conn)
    .await?;
    drop(conn);

    let invoice = subscriptions(&app)
        .await?
        .preview_invoice(authed(pb::PreviewInvoiceRequest {}, &admin))
        .await?
        .into_inner();
    let seats: Vec<i32> = invoice.lines.iter().map(|l| l.seats).collect();
    assert_eq!(seats, vec![5, 10], "{:?}", invoice.lines);
    let days = |l: &pb::InvoiceLine| {
        (l.end.as_ref().map_or(0, |t| t.seconds) - l.start.as_ref().map_or(0, |t| t.seconds))
            / 86_400
    };
    let period_days = (invoice.period_end.as_ref().map_or(0, |t| t.seconds)
        - invoice.period_start.as_ref().map_or(0, |t| t.seconds))
        / 86_400;
    assert_eq!(
        days(&invoice.lines[0]) + days(&invoice.lines[1]),
        period_days
    );
    // 5 seats for d0 days and 10 for d1 days of the period, at 3000 a seat.
    let expected = |seats: i64, d: i64| (seats * 3000 * d * 2 + period_days) / (2 * period_days);
    assert_eq!(
        invoice.lines[0].amount_minor,
        expected(5, days(&invoice.lines[0]))
    );
    assert_eq!(
        invoice.lines[1].amount_minor,
        expected(10, days(&invoice.lines[1]))
    );
    Ok(())
}

#[tokio::test]
async fn the_audit_log_is_append_only_even_for_the_application_role() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, _member) = app.tenant_with_member("Acme", "mia").await?;
    let mut conn = TestDatabase::tenant_session(&app.db.app_url, tenant).await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway.audit_events")
        .fetch_one(&mut *conn)
        .await?;
    assert!(events >= 2, "tenant.created and member.added");
    for statement in [
        "UPDATE gateway.audit_events SET actor = 'someone-else'",
        "DELETE FROM gateway.audit_events",
    ] {
        let error = sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .expect_err("the application role may not rewrite history");
        assert!(error.to_string().contains("permission denied"), "{error}");
    }
    // Another tenant's id sees none of them.
    tp_e2e::set_session_tenant(&mut conn, TenantId::new_random()).await?;
    let foreign: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway.audit_events")
        .fetch_one(&mut *conn)
        .await?;
    assert_eq!(foreign, 0);
    Ok(())
}

#[tokio::test]
async fn operator_tenant_calls_reject_bad_input() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let operator = app.token("ops", None, Role::Operator);
    let mut tenants = app.tenants(&operator).await?;
    let missing = tenants
        .get_tenant(pb::GetTenantRequest {
            tenant_id: TenantId::new_random().to_string(),
        })
        .await
        .expect_err("no such tenant");
    assert_eq!(missing.code(), Code::NotFound);
    let garbage = tenants
        .suspend_tenant(pb::SuspendTenantRequest {
            tenant_id: "acme".into(),
            reason: "x".into(),
        })
        .await
        .expect_err("not a uuid");
    assert_eq!(garbage.code(), Code::InvalidArgument);
    let tenant = app.create_tenant("Acme", 3, "ann").await?;
    let no_reason = tenants
        .suspend_tenant(pb::SuspendTenantRequest {
            tenant_id: tenant.to_string(),
            reason: "   ".into(),
        })
        .await
        .expect_err("a reason is required");
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    let got = tenants
        .get_tenant(pb::GetTenantRequest {
            tenant_id: tenant.to_string(),
        })
        .await?
        .into_inner()
        .tenant
        .expect("tenant");
    assert_eq!(got.status(), pb::TenantStatus::Active);
    assert_eq!(got.plan, "standard");
    Ok(())
}

#[tokio::test]
async fn concurrent_adds_and_seat_cuts_never_seat_more_members_than_seats() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let tenant = app.create_tenant("Race Co", 5, "root").await?;
    let admin = app.token("root", Some(tenant), Role::Admin);

    // 20 admins' clicks at once for 4 free seats, while another admin
    // cuts the seats to 3.
    let mut adds = Vec::new();
    for n in 0..20 {
        let mut members = app.members(&admin).await?;
        adds.push(tokio::spawn(async move {
            members
                .add_member(pb::AddMemberRequest {
                    user_id: format!("user-{n}"),
                    role: pb::MemberRole::Member.into(),
                })
                .await
                .map(|_| ())
        }));
    }
    let mut subs = subscriptions(&app).await?;
    let cut = subs
        .update_seats(authed(pb::UpdateSeatsRequest { seats: 3 }, &admin))
        .await;
    let mut added = 0;
    for add in adds {
        match add.await? {
            Ok(()) => added += 1,
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        }
    }
    let sub = subs
        .get_subscription(authed(pb::GetSubscriptionRequest {}, &admin))
        .await?
        .into_inner()
        .subscription
        .expect("subscription");
    assert!(
        sub.seats_used <= sub.seats,
        "{} members hold {} seats",
        sub.seats_used,
        sub.seats
    );
    assert_eq!(sub.seats_used, 1 + added);
    match cut {
        // The cut won the race: at most 2 more members joined.
        Ok(_) => assert_eq!(sub.seats, 3),
        // Members filled more than 3 seats first: the cut was refused.
        Err(status) => {
            assert_eq!(status.code(), Code::FailedPrecondition);
            assert_eq!((sub.seats, sub.seats_used), (5, 5));
        }
    }
    Ok(())
}
