//! What operators see without Grafana: `GetSloStatus` and `GET /slo`,
//! computed by the gateway from the services' own counters. The stack runs
//! without knowledge, so the gateway's `KnowledgeService/Search` fails with
//! a server error (UNAVAILABLE) while `SendMessage` still succeeds
//! (ungrounded): one SLO burns, the other keeps its whole budget.

use std::time::Duration;

use tonic::Code;
use tp_context::Role;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, authed};

type Operations = pb::operations_service_client::OperationsServiceClient<tonic::transport::Channel>;

fn find<'a>(status: &'a pb::GetSloStatusResponse, name: &str) -> &'a pb::SloStatus {
    status
        .slos
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no SLO {name} in {:?}",
                status.slos.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
}

/// Polls `GetSloStatus` until `ready` holds (a sample is taken every 200 ms
/// in tests), or fails after a few seconds.
async fn status_when(
    client: &mut Operations,
    token: &str,
    tenant_id: &str,
    ready: impl Fn(&pb::GetSloStatusResponse) -> bool,
) -> anyhow::Result<pb::GetSloStatusResponse> {
    for _ in 0..50 {
        let status = client
            .get_slo_status(authed(
                pb::GetSloStatusRequest {
                    tenant_id: tenant_id.to_owned(),
                },
                token,
            ))
            .await?
            .into_inner();
        if ready(&status) {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("GetSloStatus never showed the calls made")
}

#[tokio::test]
async fn operators_see_slis_budgets_and_burn_computed_from_the_services_metrics()
-> anyhow::Result<()> {
    let app = TestApp::spawn_without_knowledge().await?;
    let (tenant, member) = app.tenant_with_member("Acme", "mia").await?;
    let admin = app.token("mia-admin", Some(tenant), Role::Admin);
    let operator = app.token("ops", None, Role::Operator);

    // Good calls: two replies, stored and streamed though knowledge is down.
    let mut conversations = app.conversations(&member).await?;
    let conversation = tp_e2e::new_conversation(&mut conversations, "SLOs").await?;
    for (i, text) in [
        "My team of six misses deadlines.",
        "What should I try first?",
    ]
    .iter()
    .enumerate()
    {
        tp_e2e::send(
            &mut conversations,
            &conversation.conversation_id,
            text,
            &format!("k{i}"),
        )
        .await?;
    }
    // Server errors: Search needs knowledge.
    let mut knowledge = app.knowledge(&member).await?;
    for _ in 0..3 {
        let failed = knowledge
            .search(pb::SearchRequest {
                query: "delegation".into(),
                limit: 3,
                kinds: vec![],
            })
            .await
            .expect_err("knowledge is down");
        assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    }

    let mut operations = Operations::new(app.channel().await?);
    // Operators only.
    for token in [&member, &admin] {
        let refused = operations
            .get_slo_status(authed(pb::GetSloStatusRequest::default(), token))
            .await
            .expect_err("operators only");
        assert_eq!(refused.code(), Code::PermissionDenied);
    }
    let bad_tenant = operations
        .get_slo_status(authed(
            pb::GetSloStatusRequest {
                tenant_id: "acme".into(),
            },
            &operator,
        ))
        .await
        .expect_err("not a tenant id");
    assert_eq!(bad_tenant.code(), Code::InvalidArgument);

    let status = status_when(&mut operations, &operator, "", |s| {
        find(s, "send-message-availability").total_events >= 2
            && find(s, "search-availability").total_events >= 3
            && find(s, "coach-reply-compliance").total_events >= 2
    })
    .await?;
    assert!(status.evaluated_at.is_some() && status.history_start.is_some());

    let send = find(&status, "send-message-availability");
    assert_eq!((send.good_events, send.total_events), (2, 2));
    assert_eq!(send.sli, Some(1.0));
    assert_eq!(send.error_budget_remaining, 1.0, "all good: whole budget");
    assert_eq!(send.target, 0.999);
    let windows: Vec<i64> = send
        .burn_rates
        .iter()
        .map(|b| b.window.as_ref().map_or(0, |w| w.seconds))
        .collect();
    assert_eq!(
        windows,
        [300, 1_800, 3_600, 7_200, 21_600, 86_400, 259_200],
        "5m, 30m, 1h, 2h, 6h, 1d, 3d"
    );
    assert!(send.burn_rates.iter().all(|b| b.burn_rate == 0.0));
    assert_eq!(send.alerts.len(), 4);
    assert!(send.alerts.iter().all(|a| !a.firing));
    assert_eq!(
        send.exhaustion.as_ref().map(|e| e.outlook()),
        Some(pb::budget_exhaustion::Outlook::Never)
    );

    // Every Search failed: the budget is overspent and the pages fire.
    let search = find(&status, "search-availability");
    assert_eq!(search.good_events, 0);
    assert!(search.total_events >= 3);
    assert!(search.error_budget_remaining < 0.0);
    assert!(
        search
            .alerts
            .iter()
            .any(|a| a.firing && a.severity() == pb::AlertSeverity::Page),
        "{:?}",
        search.alerts
    );
    assert_eq!(
        search.exhaustion.as_ref().map(|e| e.outlook()),
        Some(pb::budget_exhaustion::Outlook::Exhausted)
    );

    // Measured in conversation, read over its /metrics.
    let coach = find(&status, "coach-reply-compliance");
    assert_eq!(coach.sli, Some(1.0));

    // Per tenant: this tenant's calls; a tenant without traffic has its
    // whole budget and burns nothing (no NaN).
    let mine = status_when(&mut operations, &operator, &tenant.to_string(), |s| {
        find(s, "send-message-availability").total_events >= 2
    })
    .await?;
    assert_eq!(mine.tenant_id, tenant.to_string());
    assert_eq!(find(&mine, "send-message-availability").good_events, 2);
    assert!(
        mine.slos.iter().all(|s| s.name != "coach-reply-compliance"),
        "no tenant breakdown of the coaching SLO"
    );
    let quiet = uuid::Uuid::new_v4().to_string();
    let nobody = status_when(&mut operations, &operator, &quiet, |_| true).await?;
    for slo in &nobody.slos {
        assert_eq!(slo.total_events, 0);
        assert_eq!(slo.error_budget_remaining, 1.0, "{}", slo.name);
        assert!(slo.burn_rates.iter().all(|b| b.burn_rate == 0.0));
        assert_eq!(slo.sli, None);
    }

    // The status page on the ops port.
    let page = tp_e2e::http_get(app.gateway_http_addr, "/slo").await?;
    assert_eq!(page.status, 200);
    assert!(
        page.content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        page.content_type
    );
    for slo in &status.slos {
        assert!(
            page.body.contains(&slo.name),
            "/slo does not mention {}",
            slo.name
        );
    }
    assert!(page.body.contains("search-availability"));
    assert!(page.body.contains("firing"));
    assert!(!page.body.contains("NaN"));
    Ok(())
}
