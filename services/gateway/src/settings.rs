//! Public `SettingsService`: the organisation's own settings, for its
//! admins. Kept on the tenant row (migration 0006), so the access layer's
//! cached standing carries them and every gateway hears of a change through
//! the `tenants_changed` notification. Each change is audited in its own
//! transaction, with before and after.

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use tp_proto::v1 as pb;
use tp_store::Pool;
use tp_store::TxTimer;

use crate::access::{caller, storage_status};
use crate::audit::{self, Event};

pub struct Settings {
    pool: Pool,
    timer: TxTimer,
}

impl Settings {
    pub fn new(pool: Pool, timer: TxTimer) -> Self {
        Self { pool, timer }
    }
}

/// The shortest retention an organisation may set, in days: long enough
/// that a mistyped setting cannot wipe last week's conversations.
pub const MIN_RETENTION_DAYS: i32 = 7;
/// The longest, ten years; past it, keep forever (0).
pub const MAX_RETENTION_DAYS: i32 = 3650;

/// `retention_days` as requested: 0 keeps forever (`None`).
pub fn retention(days: i32) -> Result<Option<i32>, Status> {
    match days {
        0 => Ok(None),
        d if (MIN_RETENTION_DAYS..=MAX_RETENTION_DAYS).contains(&d) => Ok(Some(d)),
        d => Err(Status::invalid_argument(format!(
            "retention_days must be 0 (keep forever) or between {MIN_RETENTION_DAYS} and \
             {MAX_RETENTION_DAYS} days, got {d}; nothing was changed"
        ))),
    }
}

#[derive(sqlx::FromRow)]
struct SettingsRow {
    admins_can_search_all_transcripts: bool,
    retention_days: Option<i32>,
    settings_update_time: Option<OffsetDateTime>,
}

impl SettingsRow {
    fn to_pb(&self) -> pb::OrganisationSettings {
        pb::OrganisationSettings {
            admins_can_search_all_transcripts: self.admins_can_search_all_transcripts,
            update_time: self.settings_update_time.map(tp_proto::timestamp),
            retention_days: self.retention_days.unwrap_or(0),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "admins_can_search_all_transcripts": self.admins_can_search_all_transcripts,
            "retention_days": self.retention_days,
        })
    }
}

macro_rules! settings_columns {
    () => {
        "admins_can_search_all_transcripts, retention_days, settings_update_time"
    };
}

fn tenant_missing() -> Status {
    Status::not_found("the token's tenant does not exist")
}

#[tonic::async_trait]
impl pb::settings_service_server::SettingsService for Settings {
    async fn get_settings(
        &self,
        request: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::GetSettingsResponse>, Status> {
        let ctx = caller(&request)?;
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, "get_settings")
            .await
            .map_err(storage_status)?;
        let row: Option<SettingsRow> = sqlx::query_as(concat!(
            "SELECT ",
            settings_columns!(),
            " FROM gateway.tenants WHERE tenant_id = $1"
        ))
        .bind(ctx.tenant_id.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(storage_status)?;
        tx.commit().await.map_err(storage_status)?;
        let row = row.ok_or_else(tenant_missing)?;
        Ok(Response::new(pb::GetSettingsResponse {
            settings: Some(row.to_pb()),
        }))
    }

    async fn update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::UpdateSettingsResponse>, Status> {
        let ctx = caller(&request)?;
        let change = request.into_inner();
        // Checked before anything is read or written.
        let retention_days = change.retention_days.map(retention).transpose()?;
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, "update_settings")
            .await
            .map_err(storage_status)?;
        let before: SettingsRow = sqlx::query_as(concat!(
            "SELECT ",
            settings_columns!(),
            " FROM gateway.tenants WHERE tenant_id = $1 FOR UPDATE"
        ))
        .bind(ctx.tenant_id.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(storage_status)?
        .ok_or_else(tenant_missing)?;
        let wanted = change
            .admins_can_search_all_transcripts
            .unwrap_or(before.admins_can_search_all_transcripts);
        let wanted_retention = retention_days.unwrap_or(before.retention_days);
        if wanted == before.admins_can_search_all_transcripts
            && wanted_retention == before.retention_days
        {
            // Nothing changes: nothing to audit, no notification.
            tx.commit().await.map_err(storage_status)?;
            return Ok(Response::new(pb::UpdateSettingsResponse {
                settings: Some(before.to_pb()),
            }));
        }
        let after: SettingsRow = sqlx::query_as(concat!(
            "UPDATE gateway.tenants
                SET admins_can_search_all_transcripts = $2, retention_days = $3,
                    settings_update_time = now()
              WHERE tenant_id = $1
          RETURNING ",
            settings_columns!()
        ))
        .bind(ctx.tenant_id.as_uuid())
        .bind(wanted)
        .bind(wanted_retention)
        .fetch_one(&mut *tx)
        .await
        .map_err(storage_status)?;
        audit::record(
            &mut tx,
            ctx.tenant_id,
            Event {
                actor: &ctx.user_id,
                action: "settings.updated",
                target: &ctx.tenant_id.to_string(),
                before: Some(before.to_json()),
                after: Some(after.to_json()),
            },
        )
        .await
        .map_err(storage_status)?;
        tx.commit().await.map_err(storage_status)?;
        tracing::info!(
            tenant = %ctx.tenant_id,
            admins_can_search_all_transcripts = wanted,
            retention_days = wanted_retention,
            "organisation settings updated"
        );
        Ok(Response::new(pb::UpdateSettingsResponse {
            settings: Some(after.to_pb()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_forever_or_within_bounds() {
        assert_eq!(retention(0).ok(), Some(None));
        assert_eq!(retention(7).ok(), Some(Some(7)));
        assert_eq!(retention(3650).ok(), Some(Some(3650)));
        for days in [-1, 1, 6, 3651] {
            let status = retention(days).expect_err("out of bounds");
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().contains("between 7 and 3650"),
                "{}",
                status.message()
            );
        }
    }
}
