//! `JwksVerifier` against a real (local) identity provider: a tiny HTTP
//! server that serves a swappable JWKS and counts its requests.
//!
//! The keys in `tests/keys` were generated once with the `openssl` CLI and
//! are for these tests only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, get_current_timestamp};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tp_auth::{
    Audience, AuthError, Claims, JwksError, JwksSettings, JwksVerifier, TokenVerifier, mint_hs256,
};
use tp_context::{Role, TenantId};

const ISSUER: &str = "https://idp.test/";
const AUDIENCE: &str = "thoughtpartner-api";

const RSA_A_PEM: &[u8] = include_bytes!("keys/rsa-a.pem");
const RSA_B_PEM: &[u8] = include_bytes!("keys/rsa-b.pem");
const EC_PEM: &[u8] = include_bytes!("keys/ec-p256.pem");
const RSA_A_JWK: &str = include_str!("keys/rsa-a.jwk.json");
const RSA_B_JWK: &str = include_str!("keys/rsa-b.jwk.json");
const EC_JWK: &str = include_str!("keys/ec-p256.jwk.json");

fn jwks(keys: &[&str]) -> String {
    format!(r#"{{"keys":[{}]}}"#, keys.join(","))
}

enum Reply {
    Json(String),
    Status(u16),
}

/// A minimal HTTP/1.1 identity provider: every request gets the current reply.
struct Idp {
    addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    hits: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Idp {
    async fn start(jwks: String) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let reply = Arc::new(Mutex::new(Reply::Json(jwks)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (reply2, hits2) = (reply.clone(), hits.clone());
        let server = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (reply, hits) = (reply2.clone(), hits2.clone());
                tokio::spawn(async move {
                    if !tp_auth::testing::read_request_head(&mut socket).await {
                        return;
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = match &*reply.lock().unwrap() {
                        Reply::Json(body) => (200, body.clone()),
                        Reply::Status(status) => (*status, String::new()),
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Idp {
            addr,
            reply,
            hits,
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn serve(&self, jwks: String) {
        *self.reply.lock().unwrap() = Reply::Json(jwks);
    }

    fn fail(&self, status: u16) {
        *self.reply.lock().unwrap() = Reply::Status(status);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn settings(url: String) -> JwksSettings {
    JwksSettings::new(url, ISSUER, AUDIENCE)
}

/// Settings that refresh on every unknown `kid` (no rate limit).
fn eager(url: String) -> JwksSettings {
    JwksSettings {
        min_refresh_interval: Duration::ZERO,
        ..settings(url)
    }
}

fn claims() -> Claims {
    let mut claims = Claims::expiring_in("alice", Some(TenantId::new_random()), Role::Member, 300);
    claims.iss = Some(ISSUER.into());
    claims.aud = Some(Audience::One(AUDIENCE.into()));
    claims
}

fn sign(alg: Algorithm, pem: &[u8], kid: &str, claims: &Claims) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
        other => panic!("no test key for {other:?}"),
    }
    .expect("test key");
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

fn rsa_a(claims: &Claims) -> String {
    sign(Algorithm::RS256, RSA_A_PEM, "rsa-a", claims)
}

async fn verify(verifier: &JwksVerifier, token: &str) -> Result<tp_auth::Principal, AuthError> {
    verifier.verify(token).await
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify() {
    let idp = Idp::start(jwks(&[RSA_A_JWK, EC_JWK])).await;
    let verifier = JwksVerifier::connect(settings(idp.url())).await.unwrap();
    assert_eq!(idp.hits(), 1, "connect fetches once");

    let claims = claims();
    let principal = verify(&verifier, &rsa_a(&claims)).await.unwrap();
    assert_eq!(principal.user_id, "alice");
    assert_eq!(principal.role, Role::Member);
    assert_eq!(
        principal.tenant_id.map(|t| t.to_string()),
        claims.tenant_id.clone()
    );

    let es = sign(Algorithm::ES256, EC_PEM, "ec-p256", &claims);
    assert_eq!(verify(&verifier, &es).await.unwrap().user_id, "alice");

    // `aud` may be an array that includes this API.
    let mut many = claims.clone();
    many.aud = Some(Audience::Many(vec!["other".into(), AUDIENCE.into()]));
    assert!(verify(&verifier, &rsa_a(&many)).await.is_ok());

    // The product's own claims are still checked.
    let mut no_tenant = claims.clone();
    no_tenant.tenant_id = None;
    assert_eq!(
        verify(&verifier, &rsa_a(&no_tenant)).await,
        Err(AuthError::MissingTenant)
    );
    assert_eq!(idp.hits(), 1, "known keys need no fetch");
}

#[tokio::test]
async fn rotation_needs_no_restart() {
    let idp = Idp::start(jwks(&[RSA_A_JWK])).await;
    let verifier = JwksVerifier::connect(eager(idp.url())).await.unwrap();
    let claims = claims();
    let token_a = rsa_a(&claims);
    let token_b = sign(Algorithm::RS256, RSA_B_PEM, "rsa-b", &claims);
    assert!(verify(&verifier, &token_a).await.is_ok());

    idp.serve(jwks(&[RSA_B_JWK]));
    assert!(
        verify(&verifier, &token_b).await.is_ok(),
        "new key after refresh"
    );
    assert_eq!(idp.hits(), 2);
    assert_eq!(
        verify(&verifier, &token_a).await,
        Err(AuthError::UnknownKeyId),
        "the withdrawn key no longer verifies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_flood_does_not_hammer_the_idp() {
    let idp = Idp::start(jwks(&[RSA_A_JWK])).await;
    let settings = JwksSettings {
        min_refresh_interval: Duration::from_secs(2),
        ..settings(idp.url())
    };
    // Lazy: the flood itself causes the first fetch.
    let verifier = JwksVerifier::new(settings).unwrap();
    assert_eq!(idp.hits(), 0, "new does not fetch");
    let claims = claims();
    let flood = |n: usize| {
        // Sign first, so the requests arrive together.
        let tokens: Vec<String> = (0..n)
            .map(|_| {
                let kid = format!("random-{}", uuid::Uuid::new_v4());
                sign(Algorithm::RS256, RSA_A_PEM, &kid, &claims)
            })
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, token) in tokens.into_iter().enumerate() {
            let verifier = verifier.clone();
            tasks.spawn(async move { (i, verifier.verify(&token).await) });
        }
        tasks
    };
    let results = flood(50).join_all().await;
    assert_eq!(results.len(), 50);
    for (i, result) in results {
        assert_eq!(result, Err(AuthError::UnknownKeyId), "token {i}");
    }
    assert_eq!(idp.hits(), 1, "50 unknown kids, one fetch");
    assert!(verify(&verifier, &rsa_a(&claims)).await.is_ok());

    // Once the interval has passed, an unknown kid may refresh again, once.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    flood(20).join_all().await;
    assert_eq!(idp.hits(), 2);
}

#[tokio::test]
async fn issuer_audience_and_missing_claims_are_checked() {
    let idp = Idp::start(jwks(&[RSA_A_JWK])).await;
    let verifier = JwksVerifier::connect(settings(idp.url())).await.unwrap();

    let mut wrong_iss = claims();
    wrong_iss.iss = Some("https://evil.test/".into());
    assert_eq!(
        verify(&verifier, &rsa_a(&wrong_iss)).await,
        Err(AuthError::WrongIssuer)
    );
    let mut wrong_aud = claims();
    wrong_aud.aud = Some(Audience::Many(vec!["another-api".into()]));
    assert_eq!(
        verify(&verifier, &rsa_a(&wrong_aud)).await,
        Err(AuthError::WrongAudience)
    );
    let mut no_iss = claims();
    no_iss.iss = None;
    assert_eq!(
        verify(&verifier, &rsa_a(&no_iss)).await,
        Err(AuthError::InvalidClaim("iss"))
    );
    let mut no_aud = claims();
    no_aud.aud = None;
    assert_eq!(
        verify(&verifier, &rsa_a(&no_aud)).await,
        Err(AuthError::InvalidClaim("aud"))
    );
}

#[tokio::test]
async fn expiry_not_before_and_leeway() {
    let idp = Idp::start(jwks(&[RSA_A_JWK])).await;
    let verifier = JwksVerifier::connect(settings(idp.url())).await.unwrap();
    let strict = JwksVerifier::connect(JwksSettings {
        leeway_secs: 0,
        ..settings(idp.url())
    })
    .await
    .unwrap();
    let now = get_current_timestamp();

    let mut expired = claims();
    expired.exp = now - 3600;
    assert_eq!(
        verify(&verifier, &rsa_a(&expired)).await,
        Err(AuthError::Expired)
    );
    let mut future = claims();
    future.nbf = Some(now + 3600);
    assert_eq!(
        verify(&verifier, &rsa_a(&future)).await,
        Err(AuthError::NotYetValid)
    );

    // Within the 30 s default leeway: accepted; without leeway: rejected.
    let mut just_expired = claims();
    just_expired.exp = now - 10;
    let just_expired = rsa_a(&just_expired);
    assert!(verify(&verifier, &just_expired).await.is_ok());
    assert_eq!(
        verify(&strict, &just_expired).await,
        Err(AuthError::Expired)
    );
    let mut almost_valid = claims();
    almost_valid.nbf = Some(now + 10);
    let almost_valid = rsa_a(&almost_valid);
    assert!(verify(&verifier, &almost_valid).await.is_ok());
    assert_eq!(
        verify(&strict, &almost_valid).await,
        Err(AuthError::NotYetValid)
    );
    let mut past_nbf = claims();
    past_nbf.nbf = Some(now - 60);
    assert!(verify(&strict, &rsa_a(&past_nbf)).await.is_ok());
}

#[tokio::test]
async fn symmetric_and_confused_algorithms_are_rejected() {
    let idp = Idp::start(jwks(&[RSA_A_JWK, EC_JWK])).await;
    let verifier = JwksVerifier::connect(eager(idp.url())).await.unwrap();
    let claims = claims();

    // HS256, plain and "signed" with the RSA key's public modulus.
    assert_eq!(
        verify(&verifier, &mint_hs256(b"dev-secret", &claims).unwrap()).await,
        Err(AuthError::Malformed)
    );
    let modulus: serde_json::Value = serde_json::from_str(RSA_A_JWK).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-a".into());
    let hs_with_public_key = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(modulus["n"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        verify(&verifier, &hs_with_public_key).await,
        Err(AuthError::Malformed)
    );

    // A genuine ES256 signature under an RSA kid, and the reverse.
    let es_under_rsa_kid = sign(Algorithm::ES256, EC_PEM, "rsa-a", &claims);
    assert_eq!(
        verify(&verifier, &es_under_rsa_kid).await,
        Err(AuthError::KeyAlgorithmMismatch)
    );
    assert_eq!(
        verify(
            &verifier,
            &sign(Algorithm::RS256, RSA_A_PEM, "ec-p256", &claims)
        )
        .await,
        Err(AuthError::KeyAlgorithmMismatch)
    );

    // An RS256 token whose header was rewritten to claim ES256 (RSA kid).
    let rs = rsa_a(&claims);
    let es_header = es_under_rsa_kid.split('.').next().unwrap();
    let rs_body = rs.split_once('.').unwrap().1;
    let relabelled = format!("{es_header}.{rs_body}");
    assert_eq!(
        verify(&verifier, &relabelled).await,
        Err(AuthError::KeyAlgorithmMismatch)
    );

    // Right kid, wrong key; no kid; garbage.
    assert_eq!(
        verify(
            &verifier,
            &sign(Algorithm::RS256, RSA_B_PEM, "rsa-a", &claims)
        )
        .await,
        Err(AuthError::BadSignature)
    );
    let no_kid = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(RSA_A_PEM).unwrap(),
    )
    .unwrap();
    assert_eq!(
        verify(&verifier, &no_kid).await,
        Err(AuthError::MissingKeyId)
    );
    assert_eq!(
        verify(&verifier, "not.a.jwt").await,
        Err(AuthError::Malformed)
    );
    // None of these was a reason to fetch the keys again.
    assert_eq!(idp.hits(), 1);
}

#[tokio::test]
async fn idp_down_at_start_is_keys_unavailable() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{closed}/jwks.json");

    let error = JwksVerifier::connect(settings(url.clone()))
        .await
        .err()
        .expect("connect fails");
    assert!(matches!(error, JwksError::Fetch { .. }), "{error}");

    let verifier = JwksVerifier::new(eager(url)).unwrap();
    let error = verify(&verifier, &rsa_a(&claims())).await.unwrap_err();
    assert_eq!(error, AuthError::KeysUnavailable);
    assert!(
        error.to_string().contains("keys could not be fetched"),
        "{error}"
    );

    // An IdP that answers, but with an error status, is no better.
    let idp = Idp::start(String::new()).await;
    idp.fail(503);
    assert_eq!(
        JwksVerifier::connect(settings(idp.url())).await.err(),
        Some(JwksError::Status {
            url: idp.url(),
            status: 503
        })
    );
}

#[tokio::test]
async fn cached_keys_survive_a_failing_idp() {
    let idp = Idp::start(jwks(&[RSA_A_JWK])).await;
    let verifier = JwksVerifier::connect(eager(idp.url())).await.unwrap();
    let token = rsa_a(&claims());
    let unknown = sign(Algorithm::RS256, RSA_B_PEM, "rsa-b", &claims());

    for broken in [
        Reply::Status(500),
        Reply::Json("<html>not json</html>".into()),
        Reply::Json(r#"{"keys":[]}"#.into()),
    ] {
        let before = idp.hits();
        *idp.reply.lock().unwrap() = broken;
        // An unknown kid forces a refresh, which fails...
        assert_eq!(
            verify(&verifier, &unknown).await,
            Err(AuthError::KeysUnavailable)
        );
        assert_eq!(idp.hits(), before + 1);
        // ...and the cached key still verifies.
        assert!(verify(&verifier, &token).await.is_ok());
    }

    // Fully down (no listener at all): still served from the cache.
    let server_gone = idp.addr;
    drop(idp);
    assert!(verify(&verifier, &token).await.is_ok(), "{server_gone}");
}

#[tokio::test]
async fn a_stale_set_is_refreshed_in_the_background() {
    let idp = Idp::start(jwks(&[RSA_A_JWK])).await;
    let settings = JwksSettings {
        max_cache_age: Duration::from_secs(2),
        ..eager(idp.url())
    };
    let verifier = JwksVerifier::connect(settings).await.unwrap();
    let token_a = rsa_a(&claims());
    idp.serve(jwks(&[RSA_B_JWK]));
    assert!(verify(&verifier, &token_a).await.is_ok());
    assert_eq!(idp.hits(), 1, "fresh set: no refresh");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Served from the stale cache while the refresh runs in the background.
    assert!(verify(&verifier, &token_a).await.is_ok());
    for _ in 0..100 {
        if idp.hits() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(idp.hits(), 2, "one background refresh");
    // The refresh replaced the set: key A was withdrawn.
    let mut withdrawn = Err(AuthError::Malformed);
    for _ in 0..100 {
        withdrawn = verify(&verifier, &token_a).await;
        if withdrawn.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(withdrawn, Err(AuthError::UnknownKeyId));
}

#[tokio::test]
async fn each_token_goes_to_the_verifier_of_its_algorithm() {
    let idp = Idp::start(jwks(&[RSA_A_JWK])).await;
    let secret = b"dev-secret-of-at-least-16-bytes";
    let hs256_token = mint_hs256(
        secret,
        &Claims::expiring_in("dev", None, Role::Operator, 60),
    )
    .unwrap();
    let rs256_token = rsa_a(&claims());

    let both = tp_auth::ByAlgorithm {
        hs256: Some(tp_auth::Hs256Verifier::new(secret)),
        jwks: Some(JwksVerifier::connect(settings(idp.url())).await.unwrap()),
    };
    assert_eq!(both.verify(&hs256_token).await.unwrap().user_id, "dev");
    assert_eq!(both.verify(&rs256_token).await.unwrap().user_id, "alice");

    // Production without the dev secret: HS256 tokens are refused outright.
    let jwks_only = tp_auth::ByAlgorithm {
        hs256: None,
        jwks: Some(JwksVerifier::connect(settings(idp.url())).await.unwrap()),
    };
    assert_eq!(
        jwks_only.verify(&hs256_token).await,
        Err(AuthError::Malformed)
    );
    assert!(jwks_only.verify(&rs256_token).await.is_ok());

    let dev_only = tp_auth::ByAlgorithm {
        hs256: Some(tp_auth::Hs256Verifier::new(secret)),
        jwks: None,
    };
    assert_eq!(
        dev_only.verify(&rs256_token).await,
        Err(AuthError::Malformed)
    );

    // The mode each attempt is counted under: the token's verifier, else
    // the production one when there is one.
    use tp_auth::VerifierKind::{Hs256, Jwks};
    assert_eq!(both.kind(Some(&hs256_token)), Hs256);
    assert_eq!(both.kind(Some(&rs256_token)), Jwks);
    assert_eq!(both.kind(None), Jwks);
    assert_eq!(both.kind(Some("garbage")), Jwks);
    assert_eq!(jwks_only.kind(Some(&hs256_token)), Jwks);
    assert_eq!(dev_only.kind(Some(&rs256_token)), Hs256);
    assert_eq!(dev_only.kind(None), Hs256);
}
