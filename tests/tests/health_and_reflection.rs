//! Probes and tooling need no token: every service answers
//! `grpc.health.v1.Health`, and the gateway's reflection lists exactly the
//! public API.

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tp_e2e::TestApp;

async fn status(addr: std::net::SocketAddr, service: &str) -> anyhow::Result<i32> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?
        .into_inner()
        .status)
}

#[tokio::test]
async fn every_service_reports_serving_without_a_token() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let serving = ServingStatus::Serving as i32;
    assert_eq!(status(app.gateway_addr, "").await?, serving);
    for service in [
        "thoughtpartner.v1.ConversationService",
        "thoughtpartner.v1.KnowledgeService",
        "thoughtpartner.v1.MemberService",
        "thoughtpartner.v1.TenantAdminService",
    ] {
        assert_eq!(
            status(app.gateway_addr, service).await?,
            serving,
            "{service}"
        );
    }
    assert_eq!(
        status(app.knowledge_addr, "thoughtpartner.v1.KnowledgeService").await?,
        serving
    );
    assert_eq!(
        status(
            app.conversation_addr,
            "thoughtpartner.v1.ConversationService"
        )
        .await?,
        serving
    );
    assert_eq!(
        status(
            app.knowledge_addr,
            "thoughtpartner.internal.knowledge.v1.RetrievalService"
        )
        .await?,
        serving
    );
    let unknown = status(app.gateway_addr, "no.such.Service").await;
    assert!(
        unknown.is_err(),
        "unknown services are NOT_FOUND: {unknown:?}"
    );
    Ok(())
}

#[tokio::test]
async fn gateway_reflection_lists_only_the_public_api() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let channel = Channel::from_shared(format!("http://{}", app.gateway_addr))?
        .connect()
        .await?;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await?
        .into_inner();
    let response = responses.message().await?.expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "grpc.reflection.v1.ServerReflection",
            "thoughtpartner.v1.AuditService",
            "thoughtpartner.v1.ConversationService",
            "thoughtpartner.v1.KnowledgeService",
            "thoughtpartner.v1.MemberService",
            "thoughtpartner.v1.OperationsService",
            "thoughtpartner.v1.QuotaService",
            "thoughtpartner.v1.SettingsService",
            "thoughtpartner.v1.SubscriptionService",
            "thoughtpartner.v1.TenantAdminService",
        ]
    );
    Ok(())
}
