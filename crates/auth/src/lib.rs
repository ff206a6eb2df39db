//! Bearer-token verification for the public API.
//!
//! [`TokenVerifier`] is async because production verifiers fetch keys:
//! [`JwksVerifier`] checks RS256/ES256 tokens against the identity provider's
//! JWKS; [`Hs256Verifier`] is the local/dev one. [`AuthLayer`] runs the verifier
//! for every call and hands the [`Principal`] to handlers through request
//! extensions. Only this crate decodes tokens.

use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tp_context::{RequestContext, Role, TenantId};

mod cache;
mod jwks;
mod layer;
#[cfg(feature = "testing")]
pub mod testing;

pub use cache::CachingVerifier;

pub use jwks::{JwksError, JwksSettings, JwksVerifier};
pub use layer::{AuthAttempt, AuthLayer, AuthOutcome, Authenticate};

/// Who a verified token says the caller is. Operators have no tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub role: Role,
    pub tenant_id: Option<TenantId>,
    /// The token's `exp` (Unix seconds): how long this principal may be
    /// trusted without checking the token again ([`CachingVerifier`]).
    pub expires_at: u64,
}

impl Principal {
    /// The tenant-scoped context of a member or admin token.
    pub fn tenant_context(&self) -> Option<RequestContext> {
        self.tenant_id.map(|tenant_id| RequestContext {
            tenant_id,
            user_id: self.user_id.clone(),
            role: self.role,
        })
    }
}

/// The JWT claims the product reads.
///
/// `iss`, `aud` and `nbf` are optional so HS256 development tokens can leave
/// them out; [`JwksVerifier`] requires `iss` and `aud` and checks `nbf` when
/// present.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub role: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// The `aud` claim: one audience or several (RFC 7519 §4.1.3).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(one) => one == audience,
            Audience::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

impl Claims {
    /// Claims that expire `ttl_secs` from now.
    pub fn expiring_in(sub: &str, tenant_id: Option<TenantId>, role: Role, ttl_secs: u64) -> Self {
        Self {
            sub: sub.to_owned(),
            tenant_id: tenant_id.map(|t| t.to_string()),
            role: role.as_str().to_owned(),
            exp: now_secs().saturating_add(ttl_secs),
            iss: None,
            aud: None,
            nbf: None,
        }
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why a call was not authenticated. Every message tells a client developer
/// what to fix, without echoing the token.
/// The longest bearer token read. Real JWTs are well under 2 KiB; a
/// longer one is refused before any decoding, so a client cannot make the
/// gateway base64-decode and parse megabytes per call.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing `authorization` metadata: send `authorization: Bearer <jwt>`")]
    MissingToken,
    #[error("`authorization` metadata must be `Bearer <jwt>`")]
    NotBearer,
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes: send a compact JWT, not a document")]
    TooLong,
    #[error(
        "token is malformed or uses an unsupported algorithm: send a compact JWT signed with \
         HS256 (development) or RS256/ES256 (identity provider)"
    )]
    Malformed,
    #[error("token signature does not verify: it was not signed by a key this server trusts")]
    BadSignature,
    #[error("token has expired: mint a new one")]
    Expired,
    #[error("token is not valid yet (its `nbf` is in the future): check the client's clock")]
    NotYetValid,
    #[error("token claim `{0}` is missing or invalid")]
    InvalidClaim(&'static str),
    #[error("token has no `tenant_id` claim; only operator tokens may omit it")]
    MissingTenant,
    #[error(
        "token `iss` claim is not the issuer this server trusts: request the token from the \
         configured identity provider"
    )]
    WrongIssuer,
    #[error("token `aud` claim does not name this API: request a token for this API's audience")]
    WrongAudience,
    #[error("token header has no `kid`: send a token minted by the identity provider")]
    MissingKeyId,
    #[error(
        "token `kid` names no current signing key of the identity provider: mint a fresh \
         token (its key may have been rotated out)"
    )]
    UnknownKeyId,
    #[error(
        "token `alg` does not match the key its `kid` names: RSA keys sign RS256, P-256 keys \
         sign ES256"
    )]
    KeyAlgorithmMismatch,
    #[error(
        "the identity provider's signing keys could not be fetched, so the token cannot be \
         verified now: retry shortly"
    )]
    KeysUnavailable,
}

impl AuthError {
    /// Whether the failure is ours rather than the caller's: the token may
    /// be fine, but the identity provider's keys could not be had.
    pub fn is_ours(&self) -> bool {
        matches!(self, AuthError::KeysUnavailable)
    }

    /// Maps a signature or validation failure from `jsonwebtoken`.
    fn from_jwt(error: &jsonwebtoken::errors::Error) -> Self {
        match error.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
                AuthError::InvalidClaim(match claim.as_str() {
                    "sub" => "sub",
                    "iss" => "iss",
                    "aud" => "aud",
                    "nbf" => "nbf",
                    _ => "exp",
                })
            }
            _ => AuthError::Malformed,
        }
    }
}

/// Which kind of verifier handles a token: the shared HS256 secret or the
/// identity provider's JWKS (what the gateway's metrics call `tp.auth.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifierKind {
    Hs256,
    Jwks,
}

/// What [`TokenVerifier::verify_with_kind`] answers: the verifier a token
/// went to, and its verdict.
pub type KindAndVerification<'a> =
    Pin<Box<dyn Future<Output = (VerifierKind, Result<Principal, AuthError>)> + Send + 'a>>;

/// Turns a bearer token into a [`Principal`].
pub trait TokenVerifier: Send + Sync + 'static {
    fn verify<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send + 'a>>;

    /// The verifier `token` goes to; with no token (or one no verifier
    /// takes), the one this verifier relies on first, so every attempt
    /// counts under a configured mode.
    fn kind(&self, token: Option<&str>) -> VerifierKind;

    /// [`TokenVerifier::verify`], and the verifier `token` went to (what
    /// the authentication metrics are labelled with). By default `kind`
    /// then `verify`; [`CachingVerifier`] answers a remembered token
    /// without reading its header again.
    fn verify_with_kind<'a>(&'a self, token: &'a str) -> KindAndVerification<'a> {
        let kind = self.kind(Some(token));
        let verified = self.verify(token);
        Box::pin(async move { (kind, verified.await) })
    }
}

/// Verifies HS256 tokens signed with a shared secret (local and dev).
pub struct Hs256Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Hs256Verifier {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Clocks on one machine agree; a small leeway still tolerates skew
        // between a client minting tokens and the gateway.
        validation.leeway = 5;
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    fn verify_now(&self, token: &str) -> Result<Principal, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::from_jwt(&e))?;
        principal_from_claims(data.claims)
    }
}

impl TokenVerifier for Hs256Verifier {
    fn verify<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send + 'a>> {
        Box::pin(std::future::ready(self.verify_now(token)))
    }

    fn kind(&self, _token: Option<&str>) -> VerifierKind {
        VerifierKind::Hs256
    }
}

/// The verifiers a gateway trusts, chosen per token by its `alg` header:
/// HS256 tokens go to the shared-secret verifier (local and development),
/// RS256 and ES256 to the identity provider's JWKS. A token whose algorithm
/// has no configured verifier is malformed; nothing falls through from one
/// to the other.
pub struct ByAlgorithm {
    pub hs256: Option<Hs256Verifier>,
    pub jwks: Option<JwksVerifier>,
}

impl TokenVerifier for ByAlgorithm {
    fn verify<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send + 'a>> {
        let algorithm = jsonwebtoken::decode_header(token).map(|header| header.alg);
        match (algorithm, &self.hs256, &self.jwks) {
            (Ok(Algorithm::HS256), Some(hs256), _) => hs256.verify(token),
            (Ok(Algorithm::RS256 | Algorithm::ES256), _, Some(jwks)) => jwks.verify(token),
            _ => Box::pin(std::future::ready(Err(AuthError::Malformed))),
        }
    }

    fn kind(&self, token: Option<&str>) -> VerifierKind {
        // Reading the header costs a base64 decode of a few dozen bytes.
        let algorithm = token.and_then(|t| jsonwebtoken::decode_header(t).ok().map(|h| h.alg));
        match algorithm {
            Some(Algorithm::HS256) if self.hs256.is_some() => VerifierKind::Hs256,
            Some(Algorithm::RS256 | Algorithm::ES256) if self.jwks.is_some() => VerifierKind::Jwks,
            // No usable token: count it under the production verifier when
            // there is one.
            _ if self.jwks.is_some() => VerifierKind::Jwks,
            _ => VerifierKind::Hs256,
        }
    }
}

/// Checks the product's own claims once the signature and expiry hold.
fn principal_from_claims(claims: Claims) -> Result<Principal, AuthError> {
    tp_context::validate_user_id(&claims.sub).map_err(|_| AuthError::InvalidClaim("sub"))?;
    let role: Role = claims
        .role
        .parse()
        .map_err(|_| AuthError::InvalidClaim("role"))?;
    let tenant_id = match claims.tenant_id.as_deref() {
        None | Some("") if role == Role::Operator => None,
        None | Some("") => return Err(AuthError::MissingTenant),
        Some(raw) => Some(
            raw.parse::<TenantId>()
                .map_err(|_| AuthError::InvalidClaim("tenant_id"))?,
        ),
    };
    Ok(Principal {
        user_id: claims.sub,
        role,
        tenant_id,
        expires_at: claims.exp,
    })
}

/// Signs claims with HS256, for the CLI, tests and local development.
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn verify(token: &str) -> Result<Principal, AuthError> {
        Hs256Verifier::new(SECRET).verify_now(token)
    }

    #[test]
    fn valid_member_token_yields_its_tenant() {
        let tenant = TenantId::new_random();
        let token = mint_hs256(
            SECRET,
            &Claims::expiring_in("u1", Some(tenant), Role::Member, 60),
        )
        .unwrap();
        let principal = verify(&token).unwrap();
        assert_eq!(principal.tenant_id, Some(tenant));
        assert_eq!(principal.role, Role::Member);
        assert_eq!(principal.tenant_context().unwrap().user_id, "u1");
    }

    #[test]
    fn operator_needs_no_tenant_but_members_do() {
        let op = mint_hs256(
            SECRET,
            &Claims::expiring_in("ops", None, Role::Operator, 60),
        )
        .unwrap();
        assert_eq!(verify(&op).unwrap().tenant_id, None);
        let member =
            mint_hs256(SECRET, &Claims::expiring_in("u1", None, Role::Member, 60)).unwrap();
        assert_eq!(verify(&member), Err(AuthError::MissingTenant));
    }

    #[test]
    fn wrong_secret_is_a_bad_signature() {
        let token = mint_hs256(
            b"other",
            &Claims::expiring_in("u1", None, Role::Operator, 60),
        )
        .unwrap();
        assert_eq!(verify(&token), Err(AuthError::BadSignature));
    }

    #[test]
    fn expired_token_is_rejected() {
        let mut claims = Claims::expiring_in("u1", None, Role::Operator, 0);
        claims.exp = now_secs() - 3600;
        let token = mint_hs256(SECRET, &claims).unwrap();
        assert_eq!(verify(&token), Err(AuthError::Expired));
    }

    #[test]
    fn alg_none_and_garbage_are_malformed() {
        // {"alg":"none","typ":"JWT"} . {"sub":"u1","role":"operator","exp":9999999999} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSIsInJvbGUiOiJvcGVyYXRvciIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(verify(none), Err(AuthError::Malformed));
        assert_eq!(verify("not.a.jwt"), Err(AuthError::Malformed));
    }

    #[test]
    fn optional_claims_are_omitted_and_aud_takes_one_or_many() {
        let json =
            serde_json::to_value(Claims::expiring_in("u1", None, Role::Operator, 60)).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["exp", "role", "sub"]);
        let one: Claims =
            serde_json::from_str(r#"{"sub":"u1","role":"operator","exp":1,"aud":"api"}"#).unwrap();
        assert!(one.aud.as_ref().is_some_and(|aud| aud.contains("api")));
        let many: Claims = serde_json::from_str(
            r#"{"sub":"u1","role":"operator","exp":1,"aud":["web","api"],"iss":"idp","nbf":0}"#,
        )
        .unwrap();
        assert!(many.aud.as_ref().is_some_and(|aud| aud.contains("api")));
        assert!(!many.aud.as_ref().is_some_and(|aud| aud.contains("other")));
        assert_eq!((many.iss.as_deref(), many.nbf), (Some("idp"), Some(0)));
    }

    #[test]
    fn unknown_role_and_bad_tenant_are_invalid_claims() {
        let mut claims = Claims::expiring_in("u1", None, Role::Operator, 60);
        claims.role = "root".into();
        assert_eq!(
            verify(&mint_hs256(SECRET, &claims).unwrap()),
            Err(AuthError::InvalidClaim("role"))
        );
        let mut claims = Claims::expiring_in("u1", None, Role::Member, 60);
        claims.tenant_id = Some("acme".into());
        assert_eq!(
            verify(&mint_hs256(SECRET, &claims).unwrap()),
            Err(AuthError::InvalidClaim("tenant_id"))
        );
    }
}
