//! Who may do what: the principal the auth layer verified, checked against
//! roles and the tenant's membership in the database.

use tonic::{Request, Status};
use tp_auth::Principal;
use tp_context::{RequestContext, Role};

use crate::membership::Membership;

/// The principal [`tp_auth::AuthLayer`] put in the extensions.
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::internal("principal missing: AuthLayer is not installed"))
}

pub fn require_operator(principal: &Principal, method: &str) -> Result<(), Status> {
    if principal.role == Role::Operator {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{method} needs an operator token (role: operator); this token has role {}",
            principal.role
        )))
    }
}

pub fn storage_status(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "storage failure");
    Status::unavailable("storage is unavailable; retry shortly")
}

/// Tenant access for public calls, decided from the stored membership.
#[derive(Clone)]
pub struct Access {
    membership: Membership,
}

impl Access {
    pub fn new(membership: Membership) -> Self {
        Self { membership }
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The caller's tenant context, if they are a member of the token's
    /// tenant (and so hold a seat). The role is the one stored for the
    /// membership, not the token's.
    pub async fn require_member(&self, principal: &Principal) -> Result<RequestContext, Status> {
        let Some(tenant_id) = principal.tenant_id else {
            return Err(Status::permission_denied(
                "operator tokens have no tenant; use a member token (with a tenant_id claim) to converse",
            ));
        };
        let role = self
            .membership
            .role(tenant_id, &principal.user_id)
            .await
            .map_err(storage_status)?;
        let Some(role) = role else {
            return Err(Status::permission_denied(format!(
                "user `{}` is not a member of tenant {tenant_id} (or the tenant does not exist); \
                 a tenant admin adds members with MemberService.AddMember",
                principal.user_id
            )));
        };
        Ok(RequestContext {
            tenant_id,
            user_id: principal.user_id.clone(),
            role,
        })
    }

    /// Like [`Access::require_member`], for tenant administration: the
    /// token must say admin and the stored membership must agree.
    pub async fn require_admin(
        &self,
        principal: &Principal,
        method: &str,
    ) -> Result<RequestContext, Status> {
        if principal.role != Role::Admin {
            return Err(Status::permission_denied(format!(
                "{method} needs a tenant admin token (role: admin); this token has role {}",
                principal.role
            )));
        }
        let ctx = self.require_member(principal).await?;
        if ctx.role != Role::Admin {
            return Err(Status::permission_denied(format!(
                "user `{}` is no longer an admin of tenant {}",
                ctx.user_id, ctx.tenant_id
            )));
        }
        Ok(ctx)
    }
}

/// Builds the internal request for a forwarded call: a fresh one, so
/// nothing the client sent in metadata (least of all `x-tp-*`) reaches the
/// service, carrying the verified context and the client's deadline.
pub fn internal_request<T>(
    ctx: &RequestContext,
    request: Request<T>,
) -> Result<Request<T>, Status> {
    let deadline = request.metadata().get("grpc-timeout").cloned();
    let mut outbound = Request::new(request.into_inner());
    ctx.write_to(outbound.metadata_mut())
        .map_err(|e| Status::internal(e.to_string()))?;
    if let Some(deadline) = deadline {
        outbound.metadata_mut().insert("grpc-timeout", deadline);
    }
    Ok(outbound)
}
