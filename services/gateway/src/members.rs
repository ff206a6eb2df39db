//! Public `MemberService` (tenant admins).

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use tp_proto::v1 as pb;
use tp_store::Pool;
use tp_store::TxTimer;
use tp_store::paging::Page;

use crate::access::{caller, storage_status};
use crate::audit::{self, Event};
use crate::membership::Membership;
use crate::seats::check_seat_free;

pub struct MemberAdmin {
    pool: Pool,
    timer: TxTimer,
    membership: Membership,
}

impl MemberAdmin {
    pub fn new(pool: Pool, membership: Membership) -> Self {
        Self {
            pool,
            timer: TxTimer::disabled(),
            membership,
        }
    }

    /// Reports how long each transaction took (the gateway's metrics).
    pub fn with_timer(mut self, timer: TxTimer) -> Self {
        self.timer = timer;
        self
    }
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    user_id: String,
    role: String,
    create_time: OffsetDateTime,
    join_seq: i64,
}

fn member_pb(row: MemberRow) -> pb::Member {
    let role = match row.role.as_str() {
        "admin" => pb::MemberRole::Admin,
        "member" => pb::MemberRole::Member,
        _ => pb::MemberRole::Unspecified,
    };
    pb::Member {
        user_id: row.user_id,
        role: role.into(),
        create_time: Some(tp_proto::timestamp(row.create_time)),
    }
}

/// Locks the tenant row, then reads `user_id`'s role and how many admins
/// the tenant has. The lock serialises removals and role changes, so two
/// admins demoting or removing each other cannot leave the tenant with none.
async fn lock_and_read_role(
    tx: &mut sqlx::PgConnection,
    tenant: tp_context::TenantId,
    user_id: &str,
) -> Result<(Option<String>, i64), Status> {
    sqlx::query("SELECT 1 FROM gateway.tenants WHERE tenant_id = $1 FOR UPDATE")
        .bind(tenant.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(storage_status)?;
    sqlx::query_as(
        "SELECT max(role) FILTER (WHERE user_id = $1), count(*) FILTER (WHERE role = 'admin')
           FROM gateway.members",
    )
    .bind(user_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(storage_status)
}

fn role_argument(role: i32) -> Result<&'static str, Status> {
    match pb::MemberRole::try_from(role) {
        Ok(pb::MemberRole::Member) => Ok("member"),
        Ok(pb::MemberRole::Admin) => Ok("admin"),
        _ => Err(Status::invalid_argument(
            "role must be MEMBER_ROLE_MEMBER or MEMBER_ROLE_ADMIN",
        )),
    }
}

fn user_id_argument(user_id: &str) -> Result<(), Status> {
    tp_context::validate_user_id(user_id).map_err(|_| {
        Status::invalid_argument(
            "user_id must be 1..=255 visible ASCII characters (the member's token `sub`)",
        )
    })
}

#[tonic::async_trait]
impl pb::member_service_server::MemberService for MemberAdmin {
    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        let ctx = caller(&request)?;
        let request = request.into_inner();
        user_id_argument(&request.user_id)?;
        let role = role_argument(request.role)?;

        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, "add_member")
            .await
            .map_err(storage_status)?;
        // Locking the tenant row serialises concurrent adds, so two admins
        // cannot both take the last seat.
        let seats: i32 =
            sqlx::query_scalar("SELECT seats FROM gateway.tenants WHERE tenant_id = $1 FOR UPDATE")
                .bind(ctx.tenant_id.as_uuid())
                .fetch_one(&mut *tx)
                .await
                .map_err(storage_status)?;
        let (members, already): (i64, bool) = sqlx::query_as(
            "SELECT count(*), coalesce(bool_or(user_id = $1), false) FROM gateway.members",
        )
        .bind(&request.user_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(storage_status)?;
        if already {
            return Err(Status::already_exists(format!(
                "user `{}` is already a member of this tenant",
                request.user_id
            )));
        }
        check_seat_free(seats, members).map_err(|e| Status::failed_precondition(e.to_string()))?;
        let row: MemberRow = sqlx::query_as(
            "INSERT INTO gateway.members (tenant_id, user_id, role) VALUES ($1, $2, $3)
             RETURNING user_id, role, create_time, join_seq",
        )
        .bind(ctx.tenant_id.as_uuid())
        .bind(&request.user_id)
        .bind(role)
        .fetch_one(&mut *tx)
        .await
        .map_err(storage_status)?;
        audit::record(
            &mut tx,
            ctx.tenant_id,
            Event {
                actor: &ctx.user_id,
                action: "member.added",
                target: &request.user_id,
                before: None,
                after: Some(serde_json::json!({ "role": role })),
            },
        )
        .await
        .map_err(storage_status)?;
        tx.commit().await.map_err(storage_status)?;
        tracing::info!(tenant_id = %ctx.tenant_id, role, "member added");
        Ok(Response::new(pb::AddMemberResponse {
            member: Some(member_pb(row)),
        }))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let ctx = caller(&request)?;
        let request = request.into_inner();
        user_id_argument(&request.user_id)?;

        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, "remove_member")
            .await
            .map_err(storage_status)?;
        let (role, admins) = lock_and_read_role(&mut tx, ctx.tenant_id, &request.user_id).await?;
        let removed_role = match role.as_deref() {
            None => {
                return Err(Status::not_found(format!(
                    "user `{}` is not a member of this tenant",
                    request.user_id
                )));
            }
            Some("admin") if admins <= 1 => {
                return Err(Status::failed_precondition(
                    "cannot remove the tenant's last admin; make another member admin first",
                ));
            }
            Some(role) => role.to_owned(),
        };
        sqlx::query("DELETE FROM gateway.members WHERE user_id = $1")
            .bind(&request.user_id)
            .execute(&mut *tx)
            .await
            .map_err(storage_status)?;
        audit::record(
            &mut tx,
            ctx.tenant_id,
            Event {
                actor: &ctx.user_id,
                action: "member.removed",
                target: &request.user_id,
                before: Some(serde_json::json!({ "role": removed_role })),
                after: None,
            },
        )
        .await
        .map_err(storage_status)?;
        tx.commit().await.map_err(storage_status)?;
        self.membership.forget(ctx.tenant_id, &request.user_id);
        tracing::info!(tenant_id = %ctx.tenant_id, "member removed");
        Ok(Response::new(pb::RemoveMemberResponse {}))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let ctx = caller(&request)?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, "list_members")
            .await
            .map_err(storage_status)?;
        let seats: i32 =
            sqlx::query_scalar("SELECT seats FROM gateway.tenants WHERE tenant_id = $1")
                .bind(ctx.tenant_id.as_uuid())
                .fetch_one(&mut *tx)
                .await
                .map_err(storage_status)?;
        let mut rows: Vec<MemberRow> = sqlx::query_as(
            "SELECT user_id, role, create_time, join_seq FROM gateway.members
              WHERE ($1::bigint IS NULL OR join_seq > $1) ORDER BY join_seq LIMIT $2",
        )
        .bind(page.after)
        .bind(page.fetch_limit())
        .fetch_all(&mut *tx)
        .await
        .map_err(storage_status)?;
        tx.commit().await.map_err(storage_status)?;
        let next_page_token = page.finish(&mut rows, |row| row.join_seq);
        Ok(Response::new(pb::ListMembersResponse {
            members: rows.into_iter().map(member_pb).collect(),
            next_page_token,
            seats,
        }))
    }

    async fn update_member_role(
        &self,
        request: Request<pb::UpdateMemberRoleRequest>,
    ) -> Result<Response<pb::UpdateMemberRoleResponse>, Status> {
        let ctx = caller(&request)?;
        let request = request.into_inner();
        user_id_argument(&request.user_id)?;
        let role = role_argument(request.role)?;

        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, "update_member_role")
            .await
            .map_err(storage_status)?;
        let (current, admins) =
            lock_and_read_role(&mut tx, ctx.tenant_id, &request.user_id).await?;
        let Some(current) = current else {
            return Err(Status::not_found(format!(
                "user `{}` is not a member of this tenant",
                request.user_id
            )));
        };
        if current == "admin" && role != "admin" && admins <= 1 {
            return Err(Status::failed_precondition(
                "cannot make the tenant's last admin a member; make another member admin first",
            ));
        }
        let row: MemberRow = sqlx::query_as(
            "UPDATE gateway.members SET role = $2 WHERE user_id = $1
             RETURNING user_id, role, create_time, join_seq",
        )
        .bind(&request.user_id)
        .bind(role)
        .fetch_one(&mut *tx)
        .await
        .map_err(storage_status)?;
        if current != role {
            audit::record(
                &mut tx,
                ctx.tenant_id,
                Event {
                    actor: &ctx.user_id,
                    action: "member.role_changed",
                    target: &request.user_id,
                    before: Some(serde_json::json!({ "role": current })),
                    after: Some(serde_json::json!({ "role": role })),
                },
            )
            .await
            .map_err(storage_status)?;
        }
        tx.commit().await.map_err(storage_status)?;
        self.membership.forget(ctx.tenant_id, &request.user_id);
        tracing::info!(tenant_id = %ctx.tenant_id, role, "member role updated");
        Ok(Response::new(pb::UpdateMemberRoleResponse {
            member: Some(member_pb(row)),
        }))
    }
}
