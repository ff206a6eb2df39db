//! Public `TenantAdminService` (operators only, by the access policy).

use std::sync::Arc;

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use tp_context::TenantId;
use tp_proto::v1 as pb;
use tp_store::Pool;
use tp_store::TxTimer;
use tp_stripe::StripeBilling;

use crate::access::{principal, storage_status};
use crate::audit::{self, Event, operator_actor};
use crate::membership::Membership;
use crate::policy::TenantStatus;

const MAX_SEATS: i32 = 100_000;
const MAX_DISPLAY_NAME_CHARS: usize = 200;
const MAX_REASON_CHARS: usize = 500;

pub struct TenantAdmin {
    pool: Pool,
    timer: TxTimer,
    membership: Membership,
    /// With the `stripe` provider, every new tenant gets a Stripe account.
    stripe: Option<Arc<StripeBilling>>,
}

impl TenantAdmin {
    pub fn new(pool: Pool, membership: Membership) -> Self {
        Self {
            pool,
            timer: TxTimer::disabled(),
            membership,
            stripe: None,
        }
    }

    /// Reports how long each transaction took (the gateway's metrics).
    pub fn with_timer(mut self, timer: TxTimer) -> Self {
        self.timer = timer;
        self
    }

    pub fn with_stripe(mut self, stripe: Option<Arc<StripeBilling>>) -> Self {
        self.stripe = stripe;
        self
    }
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    tenant_id: uuid::Uuid,
    display_name: String,
    seats: i32,
    create_time: OffsetDateTime,
    status: String,
    status_reason: String,
    plan: String,
}

const TENANT_COLUMNS: &str =
    "tenant_id, display_name, seats, create_time, status, status_reason, plan";

pub fn status_pb(status: &str) -> pb::TenantStatus {
    match status.parse::<TenantStatus>() {
        Ok(TenantStatus::Active) => pb::TenantStatus::Active,
        Ok(TenantStatus::PastDue) => pb::TenantStatus::PastDue,
        Ok(TenantStatus::Suspended) => pb::TenantStatus::Suspended,
        Ok(TenantStatus::Cancelled) => pb::TenantStatus::Cancelled,
        Err(_) => pb::TenantStatus::Unspecified,
    }
}

fn tenant_pb(row: TenantRow) -> pb::Tenant {
    pb::Tenant {
        tenant_id: row.tenant_id.to_string(),
        display_name: row.display_name,
        seats: row.seats,
        create_time: Some(tp_proto::timestamp(row.create_time)),
        status: status_pb(&row.status).into(),
        status_reason: row.status_reason,
        plan: row.plan,
    }
}

fn tenant_argument(tenant_id: &str) -> Result<TenantId, Status> {
    tenant_id.parse::<TenantId>().map_err(|_| {
        Status::invalid_argument(format!(
            "tenant_id must be a tenant's UUID (from CreateTenant), got `{tenant_id}`"
        ))
    })
}

fn tenant_not_found(tenant: TenantId) -> Status {
    Status::not_found(format!("no tenant {tenant}"))
}

impl TenantAdmin {
    /// Moves a tenant to `status`, recording who did it and why; a tenant
    /// already there with the same reason is left as it is.
    async fn set_status(
        &self,
        operator: &str,
        tenant: TenantId,
        status: TenantStatus,
        reason: &str,
    ) -> Result<pb::Tenant, Status> {
        let mut tx = self
            .timer
            .begin(&self.pool, tenant, "set_tenant_status")
            .await
            .map_err(storage_status)?;
        let before: Option<TenantRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TENANT_COLUMNS} FROM gateway.tenants WHERE tenant_id = $1 FOR UPDATE"
        )))
        .bind(tenant.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(storage_status)?;
        let before = before.ok_or_else(|| tenant_not_found(tenant))?;
        if before.status == status.as_str() && before.status_reason == reason {
            tx.commit().await.map_err(storage_status)?;
            return Ok(tenant_pb(before));
        }
        let after: TenantRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE gateway.tenants SET status = $2, status_reason = $3 WHERE tenant_id = $1
             RETURNING {TENANT_COLUMNS}"
        )))
        .bind(tenant.as_uuid())
        .bind(status.as_str())
        .bind(reason)
        .fetch_one(&mut *tx)
        .await
        .map_err(storage_status)?;
        let action = match status {
            TenantStatus::Suspended => "tenant.suspended",
            _ => "tenant.reactivated",
        };
        audit::record(
            &mut tx,
            tenant,
            Event {
                actor: &operator_actor(operator),
                action,
                target: &tenant.to_string(),
                before: Some(serde_json::json!({
                    "status": before.status, "reason": before.status_reason
                })),
                after: Some(serde_json::json!({ "status": after.status, "reason": reason })),
            },
        )
        .await
        .map_err(storage_status)?;
        tx.commit().await.map_err(storage_status)?;
        self.membership.forget_tenant(tenant);
        tracing::info!(%tenant, status = %status, "tenant status changed");
        Ok(tenant_pb(after))
    }
}

fn validate(request: &pb::CreateTenantRequest) -> Result<(), Status> {
    let name_chars = request.display_name.trim().chars().count();
    if name_chars == 0 || name_chars > MAX_DISPLAY_NAME_CHARS {
        return Err(Status::invalid_argument(format!(
            "display_name must be 1..={MAX_DISPLAY_NAME_CHARS} characters, not only whitespace"
        )));
    }
    if !(1..=MAX_SEATS).contains(&request.seats) {
        return Err(Status::invalid_argument(format!(
            "seats must be between 1 and {MAX_SEATS}, got {}",
            request.seats
        )));
    }
    tp_context::validate_user_id(&request.admin_user_id).map_err(|_| {
        Status::invalid_argument(
            "admin_user_id must be 1..=255 visible ASCII characters (the admin's token `sub`)",
        )
    })
}

#[tonic::async_trait]
impl pb::tenant_admin_service_server::TenantAdminService for TenantAdmin {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let operator = principal(&request)?.user_id;
        let request = request.into_inner();
        validate(&request)?;
        let tenant_id = TenantId::new_random();
        let display_name = request.display_name.trim();

        // The new tenant's own id scopes the transaction, so row-level
        // security admits exactly its rows.
        let mut tx = self
            .timer
            .begin(&self.pool, tenant_id, "create_tenant")
            .await
            .map_err(storage_status)?;
        let row: TenantRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO gateway.tenants (tenant_id, display_name, seats)
             VALUES ($1, $2, $3) RETURNING {TENANT_COLUMNS}"
        )))
        .bind(tenant_id.as_uuid())
        .bind(display_name)
        .bind(request.seats)
        .fetch_one(&mut *tx)
        .await
        .map_err(storage_status)?;
        sqlx::query(
            "INSERT INTO gateway.seat_changes (tenant_id, effective_at, seats) VALUES ($1, $2, $3)",
        )
        .bind(tenant_id.as_uuid())
        .bind(row.create_time)
        .bind(request.seats)
        .execute(&mut *tx)
        .await
        .map_err(storage_status)?;
        sqlx::query(
            "INSERT INTO gateway.members (tenant_id, user_id, role) VALUES ($1, $2, 'admin')",
        )
        .bind(tenant_id.as_uuid())
        .bind(&request.admin_user_id)
        .execute(&mut *tx)
        .await
        .map_err(storage_status)?;
        audit::record(
            &mut tx,
            tenant_id,
            Event {
                actor: &operator_actor(&operator),
                action: "tenant.created",
                target: &tenant_id.to_string(),
                before: None,
                after: Some(serde_json::json!({
                    "display_name": display_name,
                    "seats": request.seats,
                    "admin_user_id": request.admin_user_id,
                })),
            },
        )
        .await
        .map_err(storage_status)?;
        // Stripe last, before the commit: if it fails, no tenant exists.
        let mut opened = None;
        if let Some(stripe) = &self.stripe {
            let account = crate::billing::open_account(
                stripe,
                &mut tx,
                tenant_id,
                display_name,
                u32::try_from(request.seats).unwrap_or(1),
            )
            .await?;
            opened = Some((stripe, account));
        }
        if let Err(e) = tx.commit().await {
            // The tenant does not exist, so neither may a subscription that
            // would bill for it: cancel what Stripe opened.
            if let Some((stripe, account)) = opened {
                crate::billing::abandon_account(stripe, tenant_id, &account).await;
            }
            return Err(storage_status(e));
        }
        tracing::info!(%tenant_id, seats = request.seats, "tenant created");

        Ok(Response::new(pb::CreateTenantResponse {
            tenant: Some(tenant_pb(row)),
        }))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        let tenant = tenant_argument(&request.get_ref().tenant_id)?;
        let mut tx = self
            .timer
            .begin(&self.pool, tenant, "get_tenant")
            .await
            .map_err(storage_status)?;
        let row: Option<TenantRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {TENANT_COLUMNS} FROM gateway.tenants WHERE tenant_id = $1"
        )))
        .bind(tenant.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(storage_status)?;
        tx.commit().await.map_err(storage_status)?;
        let row = row.ok_or_else(|| tenant_not_found(tenant))?;
        Ok(Response::new(pb::GetTenantResponse {
            tenant: Some(tenant_pb(row)),
        }))
    }

    async fn suspend_tenant(
        &self,
        request: Request<pb::SuspendTenantRequest>,
    ) -> Result<Response<pb::SuspendTenantResponse>, Status> {
        let operator = principal(&request)?.user_id;
        let request = request.into_inner();
        let tenant = tenant_argument(&request.tenant_id)?;
        let reason = request.reason.trim();
        let chars = reason.chars().count();
        if chars == 0 || chars > MAX_REASON_CHARS {
            return Err(Status::invalid_argument(format!(
                "reason must be 1..={MAX_REASON_CHARS} characters: the tenant's users see it \
                 with every refused write"
            )));
        }
        let tenant = self
            .set_status(&operator, tenant, TenantStatus::Suspended, reason)
            .await?;
        Ok(Response::new(pb::SuspendTenantResponse {
            tenant: Some(tenant),
        }))
    }

    async fn reactivate_tenant(
        &self,
        request: Request<pb::ReactivateTenantRequest>,
    ) -> Result<Response<pb::ReactivateTenantResponse>, Status> {
        let operator = principal(&request)?.user_id;
        let tenant = tenant_argument(&request.get_ref().tenant_id)?;
        let tenant = self
            .set_status(&operator, tenant, TenantStatus::Active, "")
            .await?;
        Ok(Response::new(pb::ReactivateTenantResponse {
            tenant: Some(tenant),
        }))
    }
}
