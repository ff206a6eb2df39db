//! Production verification: RS256 and ES256 tokens checked against the
//! identity provider's JSON Web Key Set.
//!
//! Keys are cached by `kid`. A token naming an unknown `kid` triggers a
//! refresh, at most one per [`JwksSettings::min_refresh_interval`], and
//! concurrent refreshes share one fetch, so a flood of made-up `kid`s cannot
//! hammer the identity provider. A set older than
//! [`JwksSettings::max_cache_age`] is refreshed in the background while the
//! cached keys keep serving. A refreshed set replaces the old one (rotation
//! needs no restart); a failed refresh keeps the cached keys.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::{AuthError, Claims, Principal, TokenVerifier, principal_from_claims};

/// The largest JWKS response accepted. Real sets are a few kilobytes.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Where the identity provider publishes its keys and what its tokens must say.
#[derive(Clone, Debug)]
pub struct JwksSettings {
    /// The JWKS URL, e.g. `https://idp.example.com/.well-known/jwks.json`.
    pub url: String,
    /// The exact `iss` tokens must carry.
    pub issuer: String,
    /// The `aud` tokens must carry (or include, if `aud` is an array).
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`. Default 30 s.
    pub leeway_secs: u64,
    /// The shortest time between two fetches, however many unknown `kid`s
    /// arrive. Default 30 s.
    pub min_refresh_interval: Duration,
    /// A key set older than this is refreshed in the background, so a key the
    /// identity provider withdrew stops verifying. Default 10 min.
    pub max_cache_age: Duration,
    /// Timeout of one JWKS request, connect to last byte. Default 5 s.
    pub http_timeout: Duration,
}

impl JwksSettings {
    /// Settings with the default leeway, intervals and timeout.
    pub fn new(
        url: impl Into<String>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_secs: 30,
            min_refresh_interval: Duration::from_secs(30),
            max_cache_age: Duration::from_secs(600),
            http_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a [`JwksVerifier`] could not be built or its keys fetched. These are
/// for operators (logs, startup errors); clients see [`AuthError`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("invalid JWKS settings: {0}")]
    Settings(String),
    #[error("could not build the HTTP client for the JWKS: {0}")]
    Client(String),
    #[error("could not fetch the JWKS from {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("the JWKS URL {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("the JWKS at {url} is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge { url: String },
    #[error("the JWKS at {url} is not a JSON Web Key Set: {reason}")]
    Invalid { url: String, reason: String },
    #[error(
        "the JWKS at {url} has no usable signing key (RSA for RS256 or P-256 for ES256, with a `kid`)"
    )]
    NoUsableKeys { url: String },
}

/// A key from the set, bound to the one algorithm its key type allows.
struct VerifyingKey {
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<VerifyingKey>>,
    /// When the set was fetched; `None` until the first successful fetch.
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    last_failed: bool,
}

struct Inner {
    settings: JwksSettings,
    http: reqwest::Client,
    rs256: Validation,
    es256: Validation,
    keys: RwLock<Arc<KeySet>>,
    /// Held for the whole of a fetch: one fetch at a time.
    refresh: tokio::sync::Mutex<RefreshState>,
    background_refresh: AtomicBool,
}

/// Verifies RS256 and ES256 tokens against the identity provider's JWKS.
///
/// [`JwksVerifier::connect`] fetches the keys before returning, so a gateway
/// fails at startup when the identity provider is unreachable;
/// [`JwksVerifier::new`] fetches lazily, on the first token. Cloning shares
/// the cache.
#[derive(Clone)]
pub struct JwksVerifier {
    inner: Arc<Inner>,
}

static CRYPTO: Once = Once::new();

impl JwksVerifier {
    /// Builds the verifier and fetches the key set once; fails if it cannot.
    pub async fn connect(settings: JwksSettings) -> Result<Self, JwksError> {
        let verifier = Self::new(settings)?;
        let mut state = verifier.inner.refresh.lock().await;
        verifier.inner.refresh_locked(&mut state, "startup").await?;
        drop(state);
        Ok(verifier)
    }

    /// Builds the verifier without network access; the first token fetches
    /// the key set (and gets [`AuthError::KeysUnavailable`] if that fails).
    pub fn new(settings: JwksSettings) -> Result<Self, JwksError> {
        let url = reqwest::Url::parse(&settings.url)
            .map_err(|e| JwksError::Settings(format!("url `{}`: {e}", settings.url)))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(JwksError::Settings(format!(
                "url `{}` must start with https:// (or http:// for a local identity provider)",
                settings.url
            )));
        }
        if settings.issuer.trim().is_empty() || settings.audience.trim().is_empty() {
            return Err(JwksError::Settings(
                "issuer and audience must not be empty".into(),
            ));
        }
        if settings.http_timeout.is_zero() {
            return Err(JwksError::Settings("http_timeout must be positive".into()));
        }
        if url.scheme() == "http" {
            tracing::warn!(url = %settings.url, "JWKS fetched over plain HTTP; use https in production");
        }
        // One rustls crypto provider for the process; a second install is a no-op.
        CRYPTO.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let http = reqwest::Client::builder()
            .connect_timeout(settings.http_timeout)
            .timeout(settings.http_timeout)
            .build()
            .map_err(|e| JwksError::Client(error_chain(&e)))?;
        let rs256 = validation(Algorithm::RS256, &settings);
        let es256 = validation(Algorithm::ES256, &settings);
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                http,
                rs256,
                es256,
                keys: RwLock::new(Arc::new(KeySet::default())),
                refresh: tokio::sync::Mutex::new(RefreshState::default()),
                background_refresh: AtomicBool::new(false),
            }),
        })
    }

    /// The settings this verifier was built with.
    pub fn settings(&self) -> &JwksSettings {
        &self.inner.settings
    }

    async fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        // Only asymmetric algorithms: an HS256 token "signed" with a public
        // key must never verify.
        let validation = match header.alg {
            Algorithm::RS256 => &self.inner.rs256,
            Algorithm::ES256 => &self.inner.es256,
            _ => return Err(AuthError::Malformed),
        };
        let kid = header
            .kid
            .as_deref()
            .filter(|kid| !kid.is_empty())
            .ok_or(AuthError::MissingKeyId)?;
        let keys = self.inner.current();
        self.refresh_in_background_if_stale(&keys);
        let key = match keys.keys.get(kid) {
            Some(key) => key.clone(),
            None => self.inner.refresh_for_unknown_kid(kid).await?,
        };
        // The key type decides the algorithm, never the token.
        if key.alg != header.alg {
            return Err(AuthError::KeyAlgorithmMismatch);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, validation)
            .map_err(|e| AuthError::from_jwt(&e))?;
        principal_from_claims(data.claims)
    }

    fn refresh_in_background_if_stale(&self, keys: &KeySet) {
        let stale = keys
            .fetched_at
            .is_some_and(|at| at.elapsed() >= self.inner.settings.max_cache_age);
        if !stale {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Cheap checks first: a refresh in flight, or one attempted recently
        // (an identity provider that is down), needs no task.
        match self.inner.refresh.try_lock() {
            Ok(state) if !self.inner.throttled(&state) => {}
            _ => return,
        }
        // One background refresh in flight at a time.
        if self
            .inner
            .background_refresh
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let inner = self.inner.clone();
        runtime.spawn(async move {
            inner.refresh_if_stale().await;
            inner.background_refresh.store(false, Ordering::Release);
        });
    }
}

impl TokenVerifier for JwksVerifier {
    fn verify<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send + 'a>> {
        Box::pin(self.verify_token(token))
    }

    fn kind(&self, _token: Option<&str>) -> crate::VerifierKind {
        crate::VerifierKind::Jwks
    }
}

fn validation(alg: Algorithm, settings: &JwksSettings) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
    validation.set_issuer(&[&settings.issuer]);
    validation.set_audience(&[&settings.audience]);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.leeway = settings.leeway_secs;
    validation
}

impl Inner {
    fn current(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn throttled(&self, state: &RefreshState) -> bool {
        state
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.settings.min_refresh_interval)
    }

    /// Looks `kid` up again after at most one (shared, rate-limited) refresh.
    async fn refresh_for_unknown_kid(&self, kid: &str) -> Result<Arc<VerifyingKey>, AuthError> {
        let mut state = self.refresh.lock().await;
        // Another caller may have refreshed while this one waited.
        if let Some(key) = self.current().keys.get(kid) {
            return Ok(key.clone());
        }
        if self.throttled(&state) {
            tracing::debug!("unknown JWKS key id; refresh skipped (refreshed recently)");
        } else {
            // Failures are logged by refresh_locked and reflected in `state`.
            let _ = self.refresh_locked(&mut state, "unknown key id").await;
        }
        let keys = self.current();
        match keys.keys.get(kid) {
            Some(key) => Ok(key.clone()),
            None if keys.fetched_at.is_none() || state.last_failed => {
                Err(AuthError::KeysUnavailable)
            }
            None => Err(AuthError::UnknownKeyId),
        }
    }

    async fn refresh_if_stale(&self) {
        let mut state = self.refresh.lock().await;
        let fresh = self
            .current()
            .fetched_at
            .is_some_and(|at| at.elapsed() < self.settings.max_cache_age);
        if fresh || self.throttled(&state) {
            return;
        }
        let _ = self.refresh_locked(&mut state, "cache expired").await;
    }

    /// Fetches the set and replaces the cache. Callers hold the refresh lock.
    async fn refresh_locked(
        &self,
        state: &mut RefreshState,
        reason: &'static str,
    ) -> Result<(), JwksError> {
        state.last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                state.last_failed = false;
                tracing::info!(
                    url = %self.settings.url,
                    reason,
                    keys = keys.len(),
                    "JWKS refreshed"
                );
                let set = Arc::new(KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                });
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = set;
                Ok(())
            }
            Err(error) => {
                state.last_failed = true;
                tracing::warn!(
                    reason,
                    %error,
                    cached_keys = self.current().keys.len(),
                    "JWKS refresh failed; keeping the cached keys"
                );
                Err(error)
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<VerifyingKey>>, JwksError> {
        let url = &self.settings.url;
        let fetch_error = |e: reqwest::Error| JwksError::Fetch {
            url: url.clone(),
            reason: error_chain(&e),
        };
        let mut response = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(fetch_error)?;
        if !response.status().is_success() {
            return Err(JwksError::Status {
                url: url.clone(),
                status: response.status().as_u16(),
            });
        }
        let too_large = || JwksError::TooLarge { url: url.clone() };
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fetch_error)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| JwksError::Invalid {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let keys = usable_keys(&set);
        if keys.is_empty() {
            // Most likely a broken response; do not drop working keys for it.
            return Err(JwksError::NoUsableKeys { url: url.clone() });
        }
        Ok(keys)
    }
}

/// The signing keys of a set, each bound to its algorithm. Keys for other
/// uses, algorithms or curves, and keys without a `kid`, are skipped.
fn usable_keys(set: &JwkSet) -> HashMap<String, Arc<VerifyingKey>> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.as_deref().filter(|kid| !kid.is_empty()) else {
            tracing::debug!("JWKS key without `kid` skipped");
            continue;
        };
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            continue;
        }
        if jwk
            .common
            .key_operations
            .as_ref()
            .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
        {
            continue;
        }
        let (alg, declared) = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                (Algorithm::ES256, KeyAlgorithm::ES256)
            }
            _ => {
                tracing::debug!(kid, "JWKS key of an unsupported type skipped");
                continue;
            }
        };
        if jwk.common.key_algorithm.is_some_and(|a| a != declared) {
            tracing::debug!(kid, "JWKS key for another algorithm skipped");
            continue;
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                if keys
                    .insert(kid.to_owned(), Arc::new(VerifyingKey { alg, key }))
                    .is_some()
                {
                    tracing::warn!(kid, "JWKS has two keys with one `kid`; the last wins");
                }
            }
            Err(error) => tracing::warn!(kid, %error, "JWKS key could not be parsed; skipped"),
        }
    }
    keys
}

/// An error and its sources, e.g. "error sending request: connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(json: &str) -> JwkSet {
        serde_json::from_str(json).expect("test JWKS parses")
    }

    #[test]
    fn keys_are_bound_to_the_algorithm_of_their_type() {
        let rsa = include_str!("../tests/keys/rsa-a.jwk.json");
        let ec = include_str!("../tests/keys/ec-p256.jwk.json");
        let keys = usable_keys(&set(&format!(r#"{{"keys":[{rsa},{ec}]}}"#)));
        assert_eq!(keys.len(), 2);
        assert_eq!(keys["rsa-a"].alg, Algorithm::RS256);
        assert_eq!(keys["ec-p256"].alg, Algorithm::ES256);
    }

    #[test]
    fn symmetric_encryption_and_kidless_keys_are_skipped() {
        let rsa: serde_json::Value =
            serde_json::from_str(include_str!("../tests/keys/rsa-a.jwk.json")).unwrap();
        let with = |patch: serde_json::Value| {
            let mut key = rsa.clone();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    key.as_object_mut().unwrap().remove(k);
                } else {
                    key[k] = v.clone();
                }
            }
            key
        };
        let jwks = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
            with(serde_json::json!({"kid": "enc", "use": "enc"})),
            with(serde_json::json!({"kid": "pss", "alg": "PS256"})),
            with(serde_json::json!({"kid": "wrap", "key_ops": ["wrapKey"]})),
            with(serde_json::json!({"kid": null})),
            with(serde_json::json!({"kid": "ok", "alg": null, "use": null})),
        ]});
        let keys = usable_keys(&serde_json::from_value(jwks).unwrap());
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ok"]);
    }

    #[test]
    fn settings_are_checked() {
        let ok = JwksSettings::new("https://idp.example/jwks.json", "iss", "aud");
        assert!(JwksVerifier::new(ok.clone()).is_ok());
        let mut bad = ok.clone();
        bad.url = "ftp://idp.example/jwks.json".into();
        assert!(matches!(
            JwksVerifier::new(bad),
            Err(JwksError::Settings(_))
        ));
        let mut bad = ok.clone();
        bad.audience = " ".into();
        assert!(matches!(
            JwksVerifier::new(bad),
            Err(JwksError::Settings(_))
        ));
        let mut bad = ok;
        bad.url = "not a url".into();
        assert!(matches!(
            JwksVerifier::new(bad),
            Err(JwksError::Settings(_))
        ));
    }
}
