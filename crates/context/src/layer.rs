//! The tower layer internal services put in front of every handler.

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower_layer::Layer;
use tower_service::Service;

use crate::RequestContext;

/// Calls that carry no tenant: health checks and server reflection, which
/// probes and tooling use without credentials.
pub fn is_unauthenticated_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Reads the [`RequestContext`] the gateway wrote into the metadata and puts
/// it in the request extensions; rejects the call with `UNAUTHENTICATED` when
/// it is missing or malformed, so no handler runs without a tenant.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequireContextLayer;

impl<S> Layer<S> for RequireContextLayer {
    type Service = RequireContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireContext { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RequireContext<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequireContext<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        if is_unauthenticated_path(request.uri().path()) {
            return Either::Left(self.inner.call(request));
        }
        match RequestContext::read_from(request.headers()) {
            Ok(context) => {
                request.extensions_mut().insert(context);
                Either::Left(self.inner.call(request))
            }
            Err(error) => Either::Right(ready(Ok(tonic::Status::unauthenticated(
                error.to_string(),
            )
            .into_http()))),
        }
    }
}
