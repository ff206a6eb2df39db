//! Public `QuotaService`: members see their quotas, admins set them. The
//! conversation service keeps quotas and usage (it stores the turns they
//! count and enforces them on every send); the gateway checks who may ask,
//! that a per-member quota names a member, and audits changes.

use tonic::{Request, Response, Status};
use tp_proto::internal::conversation::v1 as internal_pb;
use tp_proto::v1 as pb;
use tp_store::Pool;
use tp_store::TxTimer;

use crate::access::{caller, internal_request, storage_status};
use crate::audit::{self, Event};
use crate::subscription::UsageClient;

pub struct Quotas {
    pool: Pool,
    timer: TxTimer,
    usage: UsageClient,
}

impl Quotas {
    pub fn new(pool: Pool, usage: UsageClient) -> Self {
        Self {
            pool,
            timer: TxTimer::disabled(),
            usage,
        }
    }

    /// Reports how long each transaction took (the gateway's metrics).
    pub fn with_timer(mut self, timer: TxTimer) -> Self {
        self.timer = timer;
        self
    }
}

/// Remaining this month; -1 when unlimited.
fn remaining(limit: i64, used: i64) -> i64 {
    if limit == 0 {
        -1
    } else {
        (limit - used).max(0)
    }
}

fn status_pb(status: internal_pb::QuotaStatus) -> pb::QuotaStatus {
    let limits = status.limits.unwrap_or_default();
    pb::QuotaStatus {
        user_id: status.user_id,
        limits: Some(pb::QuotaLimits {
            monthly_messages: limits.monthly_messages,
            monthly_tokens: limits.monthly_tokens,
        }),
        messages_used: status.messages_used,
        tokens_used: status.tokens_used,
        messages_remaining: remaining(limits.monthly_messages, status.messages_used),
        tokens_remaining: remaining(limits.monthly_tokens, status.tokens_used),
    }
}

#[tonic::async_trait]
impl pb::quota_service_server::QuotaService for Quotas {
    async fn get_my_quota(
        &self,
        request: Request<pb::GetMyQuotaRequest>,
    ) -> Result<Response<pb::GetMyQuotaResponse>, Status> {
        let ctx = caller(&request)?;
        let internal = internal_request(
            &ctx,
            Request::new(internal_pb::GetQuotaStatusRequest {
                user_id: String::new(),
            }),
        )?;
        let status = self
            .usage
            .clone()
            .get_quota_status(internal)
            .await?
            .into_inner();
        Ok(Response::new(pb::GetMyQuotaResponse {
            quotas: status.quotas.into_iter().map(status_pb).collect(),
            resets_at: status.resets_at,
        }))
    }

    async fn set_quota(
        &self,
        request: Request<pb::SetQuotaRequest>,
    ) -> Result<Response<pb::SetQuotaResponse>, Status> {
        let ctx = caller(&request)?;
        let request = request.into_inner();
        let limits = request.limits.unwrap_or_default();
        if limits.monthly_messages < 0 || limits.monthly_tokens < 0 {
            return Err(Status::invalid_argument(
                "monthly_messages and monthly_tokens must be 0 (unlimited) or positive",
            ));
        }
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, "set_quota")
            .await
            .map_err(storage_status)?;
        if !request.user_id.is_empty() {
            let member: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM gateway.members WHERE user_id = $1)",
            )
            .bind(&request.user_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(storage_status)?;
            if !member {
                return Err(Status::not_found(format!(
                    "user `{}` is not a member of this tenant; leave user_id empty to set the \
                     organisation's quota",
                    request.user_id
                )));
            }
        }
        let internal = internal_request(
            &ctx,
            Request::new(internal_pb::SetQuotaRequest {
                user_id: request.user_id.clone(),
                limits: Some(internal_pb::Limits {
                    monthly_messages: limits.monthly_messages,
                    monthly_tokens: limits.monthly_tokens,
                }),
            }),
        )?;
        let quota = self
            .usage
            .clone()
            .set_quota(internal)
            .await?
            .into_inner()
            .quota
            .map(status_pb);
        // Recorded after the conversation service applied it: a failure
        // there leaves neither the quota nor an event.
        audit::record(
            &mut tx,
            ctx.tenant_id,
            Event {
                actor: &ctx.user_id,
                action: "quota.updated",
                target: if request.user_id.is_empty() {
                    "organisation"
                } else {
                    &request.user_id
                },
                before: None,
                after: Some(serde_json::json!({
                    "monthly_messages": limits.monthly_messages,
                    "monthly_tokens": limits.monthly_tokens,
                })),
            },
        )
        .await
        .map_err(storage_status)?;
        tx.commit().await.map_err(storage_status)?;
        Ok(Response::new(pb::SetQuotaResponse { quota }))
    }
}
