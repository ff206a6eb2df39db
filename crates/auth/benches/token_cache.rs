//! What remembering verified tokens saves (`CachingVerifier`), measured
//! against verifying every time in the same run: RS256 and ES256 tokens
//! from an identity provider (a local one serving the test keys' JWKS) and
//! the development HS256 token, each verified the way a client's calls
//! arrive, the same token again and again.
//!
//! `cargo bench -p tp-auth --bench token_cache` (or `deploy/local/bench`).
//! A benchmark, not a test: it prints per-call times and their ratio, and
//! fails only if a token does not verify.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tp_auth::{
    Audience, CachingVerifier, Claims, Hs256Verifier, JwksSettings, JwksVerifier, TokenVerifier,
    mint_hs256,
};
use tp_context::{Role, TenantId};

const ISSUER: &str = "https://idp.test/";
const AUDIENCE: &str = "thoughtpartner-api";
const RSA_PEM: &[u8] = include_bytes!("../tests/keys/rsa-a.pem");
const EC_PEM: &[u8] = include_bytes!("../tests/keys/ec-p256.pem");
const RSA_JWK: &str = include_str!("../tests/keys/rsa-a.jwk.json");
const EC_JWK: &str = include_str!("../tests/keys/ec-p256.jwk.json");
const HS256_SECRET: &[u8] = b"a development secret, 32 bytes..";

/// Verifications per round, and alternating rounds per side.
const CALLS: u32 = 2_000;
const ROUNDS: usize = 3;

fn sign(alg: Algorithm, pem: &[u8], kid: &str, claims: &Claims) -> anyhow::Result<String> {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem)?,
        _ => EncodingKey::from_ec_pem(pem)?,
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    Ok(jsonwebtoken::encode(&header, claims, &key)?)
}

/// Mean time of one verification of `token`, over `CALLS`.
async fn per_call(verifier: &dyn TokenVerifier, token: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for _ in 0..CALLS {
        verifier.verify(token).await?;
    }
    Ok(started.elapsed() / CALLS)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let idp = tp_auth::testing::serve_jwks(format!(r#"{{"keys":[{RSA_JWK},{EC_JWK}]}}"#)).await?;
    let url = format!("http://{idp}/.well-known/jwks.json");
    let dev_claims =
        Claims::expiring_in("alice", Some(TenantId::new_random()), Role::Member, 3_600);
    let mut claims = dev_claims.clone();
    claims.iss = Some(ISSUER.into());
    claims.aud = Some(Audience::One(AUDIENCE.into()));
    let rs256 = sign(Algorithm::RS256, RSA_PEM, "rsa-a", &claims)?;
    let es256 = sign(Algorithm::ES256, EC_PEM, "ec-p256", &claims)?;
    let hs256 = mint_hs256(HS256_SECRET, &dev_claims)?;

    let jwks = || JwksVerifier::connect(JwksSettings::new(url.clone(), ISSUER, AUDIENCE));
    let every_time_jwks = jwks().await?;
    let remembered_jwks = CachingVerifier::new(jwks().await?);
    let every_time_hs256 = Hs256Verifier::new(HS256_SECRET);
    let remembered_hs256 = CachingVerifier::new(Hs256Verifier::new(HS256_SECRET));

    println!(
        "token verification, {CALLS} calls per round, {ROUNDS} alternating rounds (mean per call)"
    );
    println!(
        "{:<8} {:>14} {:>14} {:>8}",
        "token", "every time", "remembered", "ratio"
    );
    let cases: [(&str, &str, &dyn TokenVerifier, &dyn TokenVerifier); 3] = [
        ("RS256", &rs256, &every_time_jwks, &remembered_jwks),
        ("ES256", &es256, &every_time_jwks, &remembered_jwks),
        ("HS256", &hs256, &every_time_hs256, &remembered_hs256),
    ];
    for (name, token, every_time, remembered) in cases {
        let (mut full, mut cached) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..ROUNDS {
            full += per_call(every_time, token).await?;
            cached += per_call(remembered, token).await?;
        }
        let (full, cached) = (full / ROUNDS as u32, cached / ROUNDS as u32);
        println!(
            "{name:<8} {:>11.2} us {:>11.2} us {:>7.1}x",
            full.as_secs_f64() * 1e6,
            cached.as_secs_f64() * 1e6,
            full.as_secs_f64() / cached.as_secs_f64()
        );
    }
    Ok(())
}
