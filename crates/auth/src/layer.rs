//! The tower layer that authenticates every public call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tower_layer::Layer;
use tower_service::Service;
use tp_context::is_unauthenticated_path;

use crate::{AuthError, TokenVerifier, VerifierKind};

/// How one authentication ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    Accepted,
    /// The caller's fault: no token, a bad one, an expired one.
    Rejected,
    /// Ours: the token could not be checked (the identity provider's keys
    /// were unavailable).
    Error,
}

/// One authenticated (or refused) call, for whoever observes the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthAttempt {
    pub kind: VerifierKind,
    pub outcome: AuthOutcome,
    /// From reading the header to the verifier's answer.
    pub duration: Duration,
}

type AuthObserver = Arc<dyn Fn(AuthAttempt) + Send + Sync>;

/// Verifies the bearer token of every call except health and reflection and
/// inserts the [`crate::Principal`] into the request extensions. Failures are
/// answered with `UNAUTHENTICATED` before any handler runs.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<dyn TokenVerifier>,
    observer: Option<AuthObserver>,
}

impl AuthLayer {
    pub fn new(verifier: Arc<dyn TokenVerifier>) -> Self {
        Self {
            verifier,
            observer: None,
        }
    }

    /// Calls `observer` after every authentication (health and reflection
    /// calls are not authenticated, so not observed). The gateway records
    /// its metrics this way; this crate knows none.
    pub fn on_attempt(mut self, observer: impl Fn(AuthAttempt) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            verifier: self.verifier.clone(),
            observer: self.observer.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    verifier: Arc<dyn TokenVerifier>,
    observer: Option<AuthObserver>,
}

fn bearer_token(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::MissingToken)?
        .to_str()
        .map_err(|_| AuthError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::NotBearer);
    }
    let token = token.trim();
    if token.len() > crate::MAX_TOKEN_BYTES {
        return Err(AuthError::TooLong);
    }
    Ok(token)
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Authenticate<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The clone is not ready yet; keep the one that poll_ready prepared.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        let observer = self.observer.clone();
        Box::pin(async move {
            if is_unauthenticated_path(request.uri().path()) {
                return inner.call(request).await;
            }
            let started = Instant::now();
            let token = bearer_token(request.headers());
            // Which verifier, only when someone asks: it may read the
            // token's header.
            let (kind, verified) = match (token, &observer) {
                (Ok(token), Some(_)) => {
                    let (kind, verified) = verifier.verify_with_kind(token).await;
                    (Some(kind), verified)
                }
                (Ok(token), None) => (None, verifier.verify(token).await),
                (Err(e), Some(_)) => (Some(verifier.kind(None)), Err(e)),
                (Err(e), None) => (None, Err(e)),
            };
            if let (Some(observer), Some(kind)) = (observer, kind) {
                observer(AuthAttempt {
                    kind,
                    outcome: match &verified {
                        Ok(_) => AuthOutcome::Accepted,
                        Err(e) if e.is_ours() => AuthOutcome::Error,
                        Err(_) => AuthOutcome::Rejected,
                    },
                    duration: started.elapsed(),
                });
            }
            match verified {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(error) => {
                    tracing::info!(reason = %error, "call rejected: not authenticated");
                    Ok(tonic::Status::unauthenticated(error.to_string()).into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Claims, Hs256Verifier, Principal, mint_hs256};
    use std::sync::Mutex;
    use tower::ServiceExt;

    /// A verifier whose identity provider is down.
    struct Unreachable;

    impl TokenVerifier for Unreachable {
        fn verify<'a>(
            &'a self,
            _token: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send + 'a>> {
            Box::pin(std::future::ready(Err(AuthError::KeysUnavailable)))
        }

        fn kind(&self, _token: Option<&str>) -> VerifierKind {
            VerifierKind::Jwks
        }
    }

    async fn attempt(
        verifier: Arc<dyn TokenVerifier>,
        path: &str,
        authorization: Option<&str>,
    ) -> Vec<AuthAttempt> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let layer = AuthLayer::new(verifier).on_attempt(move |a| {
            sink.lock().unwrap().push(a);
        });
        let service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        }));
        let mut request = http::Request::new(());
        *request.uri_mut() = path.parse().unwrap();
        if let Some(value) = authorization {
            request
                .headers_mut()
                .insert("authorization", value.parse().unwrap());
        }
        service.oneshot(request).await.unwrap();
        seen.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn each_attempt_is_observed_with_its_outcome() {
        const SECRET: &[u8] = b"a-secret-for-the-layer-test";
        const PATH: &str = "/thoughtpartner.v1.ConversationService/ListConversations";
        let hs256: Arc<dyn TokenVerifier> = Arc::new(Hs256Verifier::new(SECRET));
        let good = mint_hs256(
            SECRET,
            &Claims::expiring_in(
                "u1",
                Some(tp_context::TenantId::new_random()),
                tp_context::Role::Member,
                60,
            ),
        )
        .unwrap();
        let outcomes = |attempts: Vec<AuthAttempt>| {
            attempts
                .iter()
                .map(|a| (a.kind, a.outcome))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            outcomes(attempt(hs256.clone(), PATH, Some(&format!("Bearer {good}"))).await),
            vec![(VerifierKind::Hs256, AuthOutcome::Accepted)]
        );
        assert_eq!(
            outcomes(attempt(hs256.clone(), PATH, Some("Bearer not.a.jwt")).await),
            vec![(VerifierKind::Hs256, AuthOutcome::Rejected)]
        );
        assert_eq!(
            outcomes(attempt(hs256.clone(), PATH, None).await),
            vec![(VerifierKind::Hs256, AuthOutcome::Rejected)]
        );
        // The identity provider being down is our error, not the caller's.
        assert_eq!(
            outcomes(attempt(Arc::new(Unreachable), PATH, Some("Bearer a.b.c")).await),
            vec![(VerifierKind::Jwks, AuthOutcome::Error)]
        );
        // Health checks are not authenticated, so not observed.
        assert!(
            attempt(hs256, "/grpc.health.v1.Health/Check", None)
                .await
                .is_empty()
        );
    }

    #[test]
    fn bearer_scheme_is_required() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer_token(&headers), Err(AuthError::MissingToken));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Err(AuthError::NotBearer));
        headers.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&headers), Err(AuthError::NotBearer));
        headers.insert("authorization", "bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer_token(&headers), Ok("abc.def.ghi"));
        let huge = format!("Bearer {}", "a".repeat(crate::MAX_TOKEN_BYTES + 1));
        headers.insert("authorization", huge.parse().unwrap());
        assert_eq!(bearer_token(&headers), Err(AuthError::TooLong));
        let largest = format!("Bearer {}", "a".repeat(crate::MAX_TOKEN_BYTES));
        headers.insert("authorization", largest.parse().unwrap());
        assert_eq!(
            bearer_token(&headers).map(str::len),
            Ok(crate::MAX_TOKEN_BYTES)
        );
    }
}
