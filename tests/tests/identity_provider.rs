//! A gateway configured for production identity: tokens from an identity
//! provider (RS256 and ES256, keys from its JWKS over HTTP), no HS256
//! secret. Rotation and refresh limits are tested in `crates/auth`; this
//! checks the gateway's wiring end to end.

use std::net::SocketAddr;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tonic::Code;
use tp_auth::{Audience, Claims};
use tp_context::Role;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, conversations_via};

const ISSUER: &str = "https://idp.test/";
const AUDIENCE: &str = "thoughtpartner-api";
const RSA_PEM: &[u8] = include_bytes!("../../crates/auth/tests/keys/rsa-a.pem");
const RSA_JWK: &str = include_str!("../../crates/auth/tests/keys/rsa-a.jwk.json");
const EC_PEM: &[u8] = include_bytes!("../../crates/auth/tests/keys/ec-p256.pem");
const EC_JWK: &str = include_str!("../../crates/auth/tests/keys/ec-p256.jwk.json");

fn sign(algorithm: Algorithm, pem: &[u8], kid: &str, claims: &Claims) -> anyhow::Result<String> {
    let key = match algorithm {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem)?,
        _ => EncodingKey::from_rsa_pem(pem)?,
    };
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    Ok(jsonwebtoken::encode(&header, claims, &key)?)
}

/// A gateway configured as in production: the identity provider's JWKS
/// at `idp`, its issuer and this API's audience, no HS256 secret.
async fn production_gateway(app: &TestApp, idp: SocketAddr) -> anyhow::Result<SocketAddr> {
    app.spawn_gateway_with(|config| {
        config.jwt_hs256_secret = None;
        config.jwt_jwks_url = Some(format!("http://{idp}/.well-known/jwks.json"));
        config.jwt_issuer = Some(ISSUER.to_owned());
        config.jwt_audience = Some(AUDIENCE.to_owned());
    })
    .await
}

/// A member's claims as the identity provider issues them.
fn provider_claims(tenant: tp_context::TenantId) -> Claims {
    let mut claims = Claims::expiring_in("alice", Some(tenant), Role::Member, 300);
    claims.iss = Some(ISSUER.to_owned());
    claims.aud = Some(Audience::One(AUDIENCE.to_owned()));
    claims
}

#[tokio::test]
async fn a_production_gateway_trusts_its_identity_provider_only() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, hs256_token) = app.tenant_with_member("Acme", "alice").await?;
    let idp = tp_auth::testing::serve_jwks(format!(r#"{{"keys":[{RSA_JWK},{EC_JWK}]}}"#)).await?;
    let gateway = production_gateway(&app, idp).await?;

    let claims = provider_claims(tenant);
    for token in [
        sign(Algorithm::RS256, RSA_PEM, "rsa-a", &claims)?,
        sign(Algorithm::ES256, EC_PEM, "ec-p256", &claims)?,
    ] {
        conversations_via(gateway, &token)
            .await?
            .list_conversations(pb::ListConversationsRequest::default())
            .await?;
    }

    let refused = |token: String| async move {
        conversations_via(gateway, &token)
            .await?
            .list_conversations(pb::ListConversationsRequest::default())
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from)
            .err()
            .and_then(|e| e.downcast::<tonic::Status>().ok())
            .ok_or_else(|| anyhow::anyhow!("the token was accepted"))
    };
    // The development secret is not trusted here at all.
    let status = refused(hs256_token).await?;
    assert_eq!(status.code(), Code::Unauthenticated);
    // A token for another API.
    let mut other_api = claims.clone();
    other_api.aud = Some(Audience::One("another-api".to_owned()));
    let status = refused(sign(Algorithm::RS256, RSA_PEM, "rsa-a", &other_api)?).await?;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("aud"), "{}", status.message());
    // A key the provider never published.
    let status = refused(sign(Algorithm::RS256, RSA_PEM, "rsa-unknown", &claims)?).await?;
    assert_eq!(status.code(), Code::Unauthenticated);
    Ok(())
}

#[tokio::test]
async fn a_gateway_without_any_verifier_refuses_to_start() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let error = app
        .spawn_gateway_with(|config| {
            config.jwt_hs256_secret = None;
            config.jwt_jwks_url = None;
        })
        .await
        .expect_err("no way to verify tokens");
    assert!(error.to_string().contains("no token verifier"), "{error}");
    Ok(())
}

/// Every way a token can be forged, stale or hostile is `Unauthenticated`
/// with a reason a client developer can act on, and none of them stops the
/// gateway from serving the next good token.
#[tokio::test]
async fn token_attacks_are_unauthenticated_and_harm_nothing() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, _) = app.tenant_with_member("Acme", "alice").await?;
    let idp = tp_auth::testing::serve_jwks(format!(r#"{{"keys":[{RSA_JWK}]}}"#)).await?;
    let gateway = production_gateway(&app, idp).await?;
    let claims = provider_claims(tenant);
    let good = sign(Algorithm::RS256, RSA_PEM, "rsa-a", &claims)?;
    let now = claims.exp - 300;

    // HS256 "signed" with the provider's published key: the classic
    // algorithm-confusion forgery.
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some("rsa-a".to_owned());
    let alg_confusion = jsonwebtoken::encode(
        &confused,
        &claims,
        &EncodingKey::from_secret(RSA_JWK.as_bytes()),
    )?;
    let mut expired = claims.clone();
    expired.exp = now - 3600;
    let mut early = claims.clone();
    early.nbf = Some(now + 3600);
    let mut other_issuer = claims.clone();
    other_issuer.iss = Some("https://evil.test/".to_owned());
    // No `sub`, no `role`: signed properly, but not our claims.
    let missing_claims = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-a".to_owned());
        let payload = serde_json::json!({"exp": now + 300, "iss": ISSUER, "aud": AUDIENCE});
        jsonwebtoken::encode(&header, &payload, &EncodingKey::from_rsa_pem(RSA_PEM)?)?
    };
    let truncated = good[..good.len() - 8].to_owned();
    let oversized = format!("{good}.{}", "A".repeat(tp_auth::MAX_TOKEN_BYTES));

    let cases: Vec<(&str, String, &str)> = vec![
        ("alg confusion", alg_confusion, "malformed"),
        (
            "expired",
            sign(Algorithm::RS256, RSA_PEM, "rsa-a", &expired)?,
            "expired",
        ),
        (
            "not yet valid",
            sign(Algorithm::RS256, RSA_PEM, "rsa-a", &early)?,
            "nbf",
        ),
        (
            "wrong issuer",
            sign(Algorithm::RS256, RSA_PEM, "rsa-a", &other_issuer)?,
            "iss",
        ),
        ("missing claims", missing_claims, ""),
        ("truncated signature", truncated, ""),
        ("garbage", "!!!.@@@.###".to_owned(), "malformed"),
        ("not base64 JSON", "e30.e30.e30".to_owned(), ""),
        ("oversized", oversized, "longer than"),
    ];
    for (attack, token, reason) in cases {
        let status = conversations_via(gateway, &token)
            .await?
            .list_conversations(pb::ListConversationsRequest::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("{attack}: the token was accepted"));
        assert_eq!(status.code(), Code::Unauthenticated, "{attack}: {status:?}");
        assert!(
            status.message().contains(reason),
            "{attack}: {}",
            status.message()
        );
    }

    // Still serving.
    conversations_via(gateway, &good)
        .await?
        .list_conversations(pb::ListConversationsRequest::default())
        .await?;
    Ok(())
}
