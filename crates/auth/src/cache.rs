//! Verified tokens, remembered: a client sends the same access token on
//! every call until it expires, and checking an identity provider's
//! signature again each time costs more than the rest of the gateway's
//! work on the call (RS256 ~0.15 ms, ES256 ~0.2 ms of CPU here with the
//! pure-Rust backend; see the `token_cache` benchmark).
//!
//! An entry is keyed by the SHA-256 of the whole token, so only the exact
//! token that verified can hit it, and the gateway keeps no token text.
//! It remembers which verifier took the token too, so a remembered call
//! does not decode the token's header (base64 and JSON, ~2 % of the
//! gateway's CPU at one stream in a `perf` profile) to label its metrics. It
//! is served until the token's `exp` or [`MAX_AGE`] after it was verified,
//! whichever comes first; past either, the token is verified again. Only
//! successes are kept: a rejected token is checked in full every time.
//!
//! What the age bound is for: a signing key the identity provider removes
//! from its JWKS stops being accepted for tokens already seen within
//! [`MAX_AGE`] (plus the JWKS refresh interval, as without the cache).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{AuthError, KindAndVerification, Principal, TokenVerifier, VerifierKind, now_secs};

/// The longest a verified token is served without being checked again.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// Distinct tokens remembered (~200 bytes each).
pub const CAPACITY: u64 = 10_000;

/// A [`TokenVerifier`] that remembers the tokens `inner` accepted.
pub struct CachingVerifier<V> {
    inner: V,
    /// Keyed by digests of tokens that verified: foldhash, not SipHash, as
    /// no caller chooses what is inserted.
    verified: moka::sync::Cache<[u8; 32], (Principal, VerifierKind), foldhash::fast::RandomState>,
}

impl<V: TokenVerifier> CachingVerifier<V> {
    pub fn new(inner: V) -> Self {
        Self::with_capacity(inner, CAPACITY)
    }

    pub fn with_capacity(inner: V, capacity: u64) -> Self {
        Self {
            inner,
            verified: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(MAX_AGE)
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// Tokens remembered now (after pending evictions).
    pub fn remembered(&self) -> u64 {
        self.verified.run_pending_tasks();
        self.verified.entry_count()
    }
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl<V: TokenVerifier> CachingVerifier<V> {
    /// The remembered answer for `key`, while its token has not expired.
    fn remembered_for(&self, key: &[u8; 32]) -> Option<(Principal, VerifierKind)> {
        let entry = self.verified.get(key)?;
        if now_secs() < entry.0.expires_at {
            return Some(entry);
        }
        self.verified.invalidate(key);
        None
    }

    /// Verifies `token` with `inner` and remembers a success.
    async fn verify_and_remember(
        &self,
        key: [u8; 32],
        kind: VerifierKind,
        token: &str,
    ) -> Result<Principal, AuthError> {
        let verified = self.inner.verify(token).await;
        if let Ok(principal) = &verified
            && now_secs() < principal.expires_at
        {
            self.verified.insert(key, (principal.clone(), kind));
        }
        verified
    }
}

impl<V: TokenVerifier> TokenVerifier for CachingVerifier<V> {
    fn verify<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send + 'a>> {
        let key = key(token);
        if let Some((principal, _)) = self.remembered_for(&key) {
            return Box::pin(std::future::ready(Ok(principal)));
        }
        let kind = self.inner.kind(Some(token));
        Box::pin(self.verify_and_remember(key, kind, token))
    }

    fn kind(&self, token: Option<&str>) -> VerifierKind {
        self.inner.kind(token)
    }

    fn verify_with_kind<'a>(&'a self, token: &'a str) -> KindAndVerification<'a> {
        let key = key(token);
        if let Some((principal, kind)) = self.remembered_for(&key) {
            return Box::pin(std::future::ready((kind, Ok(principal))));
        }
        let kind = self.inner.kind(Some(token));
        Box::pin(async move { (kind, self.verify_and_remember(key, kind, token).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tp_context::{Role, TenantId};

    /// Accepts tokens starting with `ok` (expiring `lifetime` seconds from
    /// now), rejects the rest, and counts how often it was asked.
    struct Counting {
        asked: AtomicUsize,
        /// How often `kind` was asked (it decodes a real token's header).
        kinds_asked: AtomicUsize,
        lifetime: i64,
    }

    impl Counting {
        fn new(lifetime: i64) -> Self {
            Self {
                asked: AtomicUsize::new(0),
                kinds_asked: AtomicUsize::new(0),
                lifetime,
            }
        }
    }

    impl TokenVerifier for Counting {
        fn verify<'a>(
            &'a self,
            token: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send + 'a>> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let result = if token.starts_with("ok") {
                Ok(Principal {
                    user_id: token.to_owned(),
                    role: Role::Member,
                    tenant_id: Some(TenantId::new_random()),
                    expires_at: now_secs().saturating_add_signed(self.lifetime),
                })
            } else {
                Err(AuthError::BadSignature)
            };
            Box::pin(std::future::ready(result))
        }

        fn kind(&self, _token: Option<&str>) -> VerifierKind {
            self.kinds_asked.fetch_add(1, Ordering::SeqCst);
            VerifierKind::Jwks
        }
    }

    #[tokio::test]
    async fn a_remembered_token_answers_its_kind_without_reading_it_again() {
        let cache = CachingVerifier::new(Counting::new(3_600));
        let (kind, first) = cache.verify_with_kind("ok-alice").await;
        assert_eq!(kind, VerifierKind::Jwks);
        assert_eq!(cache.inner.kinds_asked.load(Ordering::SeqCst), 1);
        for _ in 0..3 {
            let (kind, again) = cache.verify_with_kind("ok-alice").await;
            assert_eq!((kind, &again), (VerifierKind::Jwks, &first));
        }
        assert_eq!(cache.inner.asked.load(Ordering::SeqCst), 1);
        assert_eq!(cache.inner.kinds_asked.load(Ordering::SeqCst), 1);

        // A rejected token is never remembered: its kind is read each time.
        for expected in 2..4 {
            let (kind, rejected) = cache.verify_with_kind("forged").await;
            assert_eq!(
                (kind, rejected),
                (VerifierKind::Jwks, Err(AuthError::BadSignature))
            );
            assert_eq!(cache.inner.kinds_asked.load(Ordering::SeqCst), expected);
        }
        // `verify` and `verify_with_kind` share what is remembered.
        assert_eq!(cache.verify("ok-alice").await, first);
        assert_eq!(cache.inner.asked.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_token_verified_once_is_not_checked_again() {
        let cache = CachingVerifier::new(Counting::new(3_600));
        let first = cache.verify("ok-alice").await.expect("accepted");
        let again = cache.verify("ok-alice").await.expect("accepted");
        assert_eq!(first, again, "the same principal");
        assert_eq!(cache.inner.asked.load(Ordering::SeqCst), 1);

        // Another token, even one differing by a byte, is verified.
        let bob = cache.verify("ok-alicf").await.expect("accepted");
        assert_eq!(bob.user_id, "ok-alicf");
        assert_eq!(cache.inner.asked.load(Ordering::SeqCst), 2);
        assert_eq!(cache.remembered(), 2);
    }

    #[tokio::test]
    async fn rejections_are_never_remembered() {
        let cache = CachingVerifier::new(Counting::new(3_600));
        for _ in 0..3 {
            assert_eq!(cache.verify("forged").await, Err(AuthError::BadSignature));
        }
        assert_eq!(cache.inner.asked.load(Ordering::SeqCst), 3);
        assert_eq!(cache.remembered(), 0);
    }

    #[tokio::test]
    async fn a_token_at_its_expiry_is_verified_again() {
        // The verifier accepts it (within its leeway), but it expires now:
        // the cache must not serve it.
        let cache = CachingVerifier::new(Counting::new(0));
        cache
            .verify("ok-late")
            .await
            .expect("accepted by the verifier");
        cache
            .verify("ok-late")
            .await
            .expect("accepted by the verifier");
        assert_eq!(cache.inner.asked.load(Ordering::SeqCst), 2);
        assert_eq!(cache.remembered(), 0);
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let cache = CachingVerifier::with_capacity(Counting::new(3_600), 50);
        for i in 0..500 {
            cache.verify(&format!("ok-{i}")).await.expect("accepted");
        }
        assert!(cache.remembered() <= 50, "{}", cache.remembered());
    }

    #[test]
    fn entries_are_keyed_by_a_digest_not_the_token() {
        let token = "ok.header.payload.signature";
        assert_eq!(key(token), key(token));
        assert_ne!(key(token), key("ok.header.payload.signaturf"));
    }
}
