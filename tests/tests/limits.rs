//! Per-user and per-tenant request rates through the gateway: a caller over
//! their limit gets RESOURCE_EXHAUSTED with a RetryInfo saying when to come
//! back, and another tenant is not slowed by it.

use tonic::Code;
use tonic_types::StatusExt;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, conversations_via};

#[tokio::test]
async fn a_user_over_their_rate_is_told_when_to_retry() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_a, noisy) = app.tenant_with_member("Noisy", "nina").await?;
    let (_b, quiet) = app.tenant_with_member("Quiet", "quinn").await?;
    // A gateway with the production defaults' shape: a user may burst 20
    // calls and make 10 a second after that.
    let gateway = app
        .spawn_gateway_with(|config| {
            config.rate_user_per_second = 10.0;
            config.rate_user_burst = 20;
            config.rate_tenant_per_second = 50.0;
            config.rate_tenant_burst = 100;
            // Answer rejections at once: a held rejection lets the bucket
            // refill meanwhile, which this count does not model.
            config.rate_hold_ms = 0;
        })
        .await?;
    let mut noisy = conversations_via(gateway, &noisy).await?;
    let mut quiet = conversations_via(gateway, &quiet).await?;

    // 40 calls in quick succession cannot all pass.
    let mut refused = Vec::new();
    for _ in 0..40 {
        if let Err(status) = noisy
            .list_conversations(pb::ListConversationsRequest::default())
            .await
        {
            refused.push(status);
        }
    }
    assert!(refused.len() >= 10, "only {} calls refused", refused.len());
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("per-user"),
            "{}",
            status.message()
        );
        let retry = status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
            .expect("a RetryInfo with a delay");
        assert!(retry > std::time::Duration::ZERO && retry <= std::time::Duration::from_secs(1));
    }

    // Another tenant's user is not affected.
    quiet
        .list_conversations(pb::ListConversationsRequest::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_rejection_is_held_before_it_is_answered() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_a, token) = app.tenant_with_member("Loop", "lou").await?;
    let gateway = app
        .spawn_gateway_with(|config| {
            config.rate_user_per_second = 0.5;
            config.rate_user_burst = 1;
            config.rate_hold_ms = 300;
        })
        .await?;
    let mut client = conversations_via(gateway, &token).await?;
    client
        .list_conversations(pb::ListConversationsRequest::default())
        .await?;
    let started = std::time::Instant::now();
    let refused = client
        .list_conversations(pb::ListConversationsRequest::default())
        .await
        .expect_err("over the rate");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    Ok(())
}
