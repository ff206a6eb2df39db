//! The access policy through the real gateway: every public RPC, called as a
//! member, an admin and an operator, is refused with PERMISSION_DENIED
//! exactly when `tp_gateway::policy::POLICY` says so. Calls carry empty
//! requests (raw bytes, so one loop covers every method): an admitted call
//! then fails validation or succeeds harmlessly, never with
//! PERMISSION_DENIED.

use tonic::Code;
use tp_context::Role;
use tp_e2e::TestApp;
use tp_e2e::raw::{call_raw, streaming_methods};
use tp_gateway::policy::{Audience, POLICY};

/// Calls `path` with an empty request as `token`; the resulting code.
async fn call(app: &TestApp, path: &str, token: &str, streaming: bool) -> anyhow::Result<Code> {
    Ok(
        match call_raw(app.channel().await?, path, token, Vec::new(), streaming).await? {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        },
    )
}

#[tokio::test]
async fn every_public_rpc_admits_exactly_the_roles_its_rule_names() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, member) = app.tenant_with_member("Acme", "mia").await?;
    let admin = app.token("mia-admin", Some(tenant), Role::Admin);
    let operator = app.token("ops", None, Role::Operator);
    let streaming = streaming_methods();

    let mut checked = 0;
    for rule in POLICY {
        let is_streaming = streaming.iter().any(|m| m == rule.method);
        for (role, token) in [
            (Role::Member, &member),
            (Role::Admin, &admin),
            (Role::Operator, &operator),
        ] {
            let admitted = match rule.audience {
                Audience::Operator => role == Role::Operator,
                Audience::Member => role != Role::Operator,
                Audience::Admin => role == Role::Admin,
            };
            let code = call(&app, rule.method, token, is_streaming).await?;
            if admitted {
                assert!(
                    !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                    "{} as {role}: admitted by the table, but got {code:?}",
                    rule.method
                );
            } else {
                assert_eq!(
                    code,
                    Code::PermissionDenied,
                    "{} as {role}: refused by the table",
                    rule.method
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, POLICY.len() * 3);

    // No RPC without observability: every public method just called shows
    // in the gateway's RPC metrics (the SLO side is checked against the
    // descriptors in crates/proto).
    let metrics = tp_e2e::http_get(app.gateway_http_addr, "/metrics").await?;
    assert_eq!(metrics.status, 200);
    for rule in POLICY {
        let series = format!("rpc_method=\"{}\"", rule.method.trim_start_matches('/'));
        assert!(
            metrics.body.lines().any(|line| {
                line.starts_with("rpc_server_call_duration_seconds_count{")
                    && line.contains(&series)
            }),
            "{} emitted no rpc.server.call.duration",
            rule.method
        );
    }
    Ok(())
}
