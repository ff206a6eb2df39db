//! Public `TenantAdminService` (operators only).

use sqlx::PgPool;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use tp_context::TenantId;
use tp_proto::v1 as pb;
use tp_store::begin_tenant_tx;

use crate::access::{principal, require_operator, storage_status};

const MAX_SEATS: i32 = 100_000;
const MAX_DISPLAY_NAME_CHARS: usize = 200;

pub struct TenantAdmin {
    pool: PgPool,
}

impl TenantAdmin {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
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
        require_operator(&principal(&request)?, "CreateTenant")?;
        let request = request.into_inner();
        validate(&request)?;
        let tenant_id = TenantId::new_random();
        let display_name = request.display_name.trim();

        // The new tenant's own id scopes the transaction, so row-level
        // security admits exactly its rows.
        let mut tx = begin_tenant_tx(&self.pool, tenant_id)
            .await
            .map_err(storage_status)?;
        let create_time: OffsetDateTime = sqlx::query_scalar(
            "INSERT INTO gateway.tenants (tenant_id, display_name, seats)
             VALUES ($1, $2, $3) RETURNING create_time",
        )
        .bind(tenant_id.as_uuid())
        .bind(display_name)
        .bind(request.seats)
        .fetch_one(&mut *tx)
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
        tx.commit().await.map_err(storage_status)?;
        tracing::info!(%tenant_id, seats = request.seats, "tenant created");

        Ok(Response::new(pb::CreateTenantResponse {
            tenant: Some(pb::Tenant {
                tenant_id: tenant_id.to_string(),
                display_name: display_name.to_owned(),
                seats: request.seats,
                create_time: Some(tp_proto::timestamp(create_time)),
            }),
        }))
    }
}
