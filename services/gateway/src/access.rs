//! Who may do what, enforced once for every public call. [`AccessLayer`]
//! runs after [`tp_auth::AuthLayer`]: it finds the method's rule in
//! [`crate::policy::POLICY`], looks up the caller's stored membership and
//! the tenant's standing, lets [`crate::policy::decide`] rule, and hands
//! handlers the verified [`RequestContext`] and [`Standing`] in the request
//! extensions. Handlers read them with [`caller`]; none checks roles.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};
use tower::{Layer, Service};
use tp_auth::Principal;
use tp_context::{RequestContext, is_unauthenticated_path};

use crate::membership::Membership;
use crate::policy::{Audience, Caller, Standing, TenantStatus, decide, rule_for};

/// The trailer (and, for errors, header) a past-due tenant's responses carry.
pub const BILLING_WARNING: &str = "tp-billing-warning";

const PAST_DUE_WARNING: &str = "a payment for this organisation failed; an admin should update its billing details \
     before the tenant is suspended";

/// The principal [`tp_auth::AuthLayer`] put in the extensions.
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::internal("principal missing: AuthLayer is not installed"))
}

/// The tenant context [`AccessLayer`] verified for a tenant-scoped call.
pub fn caller<T>(request: &Request<T>) -> Result<RequestContext, Status> {
    verified(request.extensions().get::<RequestContext>())
}

/// The context [`AccessLayer`] put in a call's extensions, wherever they
/// are read from (a typed handler's request, or the HTTP request of a call
/// passed on undecoded).
pub fn verified(context: Option<&RequestContext>) -> Result<RequestContext, Status> {
    context
        .cloned()
        .ok_or_else(|| Status::internal("tenant context missing: AccessLayer is not installed"))
}

pub fn storage_status(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "storage failure");
    Status::unavailable("storage is unavailable; retry shortly")
}

/// Builds the internal request for a forwarded call: a fresh one, so
/// nothing the client sent in metadata (least of all `x-tp-*`) reaches the
/// service, carrying the verified context and the client's deadline.
pub fn internal_request<T>(
    ctx: &RequestContext,
    request: Request<T>,
) -> Result<Request<T>, Status> {
    let metadata = internal_metadata(ctx, request.metadata().get("grpc-timeout"))?;
    let mut outbound = Request::new(request.into_inner());
    *outbound.metadata_mut() = metadata;
    Ok(outbound)
}

/// The metadata of every call the gateway makes on a client's behalf: the
/// verified context, and the client's deadline if it set one. Nothing else
/// the client sent.
pub fn internal_metadata(
    ctx: &RequestContext,
    deadline: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> Result<MetadataMap, Status> {
    let mut metadata = MetadataMap::new();
    ctx.write_to(&mut metadata)
        .map_err(|e| Status::internal(e.to_string()))?;
    if let Some(deadline) = deadline {
        metadata.insert("grpc-timeout", deadline.clone());
    }
    Ok(metadata)
}

/// Applies the access policy to every public call.
#[derive(Clone)]
pub struct AccessLayer {
    membership: Membership,
}

impl AccessLayer {
    pub fn new(membership: Membership) -> Self {
        Self { membership }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Enforce<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Enforce {
            inner,
            membership: self.membership.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Enforce<S> {
    inner: S,
    membership: Membership,
}

/// Decides one call: `Ok(None)` for calls outside the policy (health,
/// reflection, unknown services, which tonic answers itself).
async fn admit(
    membership: &Membership,
    request: &mut http::Request<Body>,
) -> Result<Option<Standing>, Status> {
    let path = request.uri().path();
    if is_unauthenticated_path(path) {
        return Ok(None);
    }
    let Some(rule) = rule_for(path) else {
        if path.starts_with("/thoughtpartner.") {
            // A public RPC without a rule is a bug; refuse rather than guess.
            return Err(Status::permission_denied(format!(
                "no access rule for {path}"
            )));
        }
        return Ok(None);
    };
    let principal = request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::internal("principal missing: AuthLayer is not installed"))?;
    let found = match (rule.audience, principal.tenant_id) {
        (Audience::Member | Audience::Admin, Some(tenant)) => Some(
            membership
                .lookup(tenant, &principal.user_id)
                .await
                .map_err(storage_status)?,
        ),
        _ => None,
    };
    let standing = found.as_ref().and_then(|f| f.standing.clone());
    let stored_role = found.as_ref().and_then(|f| f.role);
    decide(
        rule,
        &Caller {
            user_id: &principal.user_id,
            token_role: principal.role,
            has_tenant: principal.tenant_id.is_some(),
            stored_role,
            standing: standing.as_ref(),
        },
    )?;
    if let (Some(tenant_id), Some(role)) = (principal.tenant_id, stored_role)
        && rule.audience != Audience::Operator
    {
        if let Some(record) = tp_telemetry::CallRecord::current() {
            record.set_caller(tenant_id, &principal.user_id);
        }
        request.extensions_mut().insert(RequestContext {
            tenant_id,
            user_id: principal.user_id.clone(),
            role,
        });
    }
    if let Some(standing) = &standing {
        request.extensions_mut().insert(standing.clone());
    }
    Ok(standing)
}

impl<S> Service<http::Request<Body>> for Enforce<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone is not ready yet; keep the one that poll_ready prepared.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let membership = self.membership.clone();
        Box::pin(async move {
            match admit(&membership, &mut request).await {
                Ok(standing) => {
                    let response = inner.call(request).await?;
                    match standing {
                        Some(s) if s.status == TenantStatus::PastDue => Ok(warn(response)),
                        _ => Ok(response),
                    }
                }
                Err(status) => {
                    tracing::info!(
                        code = ?status.code(),
                        "call refused by the access policy"
                    );
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// Adds the billing warning: to the trailers when the response has a body
/// that ends with them, to the headers when it is trailers-only.
fn warn(response: http::Response<Body>) -> http::Response<Body> {
    let value = HeaderValue::from_static(PAST_DUE_WARNING);
    let (mut parts, body) = response.into_parts();
    if parts.headers.contains_key("grpc-status") {
        parts.headers.insert(BILLING_WARNING, value);
        return http::Response::from_parts(parts, body);
    }
    http::Response::from_parts(parts, Body::new(WithTrailer { inner: body, value }))
}

/// A body whose trailers gain one entry.
struct WithTrailer {
    inner: Body,
    value: HeaderValue,
}

impl http_body::Body for WithTrailer {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let value = self.value.clone();
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(match frame.into_trailers() {
                Ok(mut trailers) => {
                    trailers.insert(BILLING_WARNING, value);
                    http_body::Frame::trailers(trailers)
                }
                Err(frame) => frame,
            }))),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
