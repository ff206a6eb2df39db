//! The retention job: every `TP_RETENTION_INTERVAL_SECS`, each organisation
//! that set a retention (`SettingsService`, `retention_days`) has its
//! conversations older than that, by their last turn, deleted by the
//! conversation service (`RetentionService.PurgeExpired`, a batch per call
//! until none are left), and an audit entry says how many went and why.
//!
//! The organisations are listed in the product's one cross-tenant read
//! (`tp_store::begin_retention_sweep_tx`: a policy admits SELECT of
//! `gateway.tenants` rows that have a retention, in that transaction only);
//! everything after it is done tenant by tenant.

use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tp_context::{RequestContext, Role, TenantId};
use tp_proto::internal::conversation::v1 as internal;
use tp_proto::internal::conversation::v1::retention_service_client::RetentionServiceClient;
use tp_store::Pool;
use tp_store::TxTimer;
use tp_telemetry::Metrics;
use uuid::Uuid;

use crate::audit::{self, Event};

/// Who the audit log names for the job's deletions.
pub const ACTOR: &str = "system:retention";

pub type RetentionClient = RetentionServiceClient<tp_server::InternalChannel>;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("listing the organisations with a retention: {0}")]
    List(#[source] tp_store::StoreError),
    #[error("recording the audit entry: {0}")]
    Audit(#[source] tp_store::StoreError),
    #[error("the conversation service refused or failed: {0}")]
    Purge(#[source] tonic::Status),
}

/// What one pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub organisations: u64,
    pub conversations: u64,
    pub messages: u64,
}

#[derive(Clone)]
pub struct RetentionSweep {
    pool: Pool,
    timer: TxTimer,
    client: RetentionClient,
    metrics: Metrics,
    batch: i32,
}

impl RetentionSweep {
    pub fn new(
        pool: Pool,
        timer: TxTimer,
        client: RetentionClient,
        metrics: Metrics,
        batch: i32,
    ) -> Self {
        Self {
            pool,
            timer,
            client,
            metrics,
            batch,
        }
    }

    /// One pass over every organisation with a retention.
    pub async fn run_once(&self) -> Result<Swept, SweepError> {
        let started = Instant::now();
        let result = self.sweep().await;
        self.metrics
            .retention_run(result.is_ok(), started.elapsed());
        match &result {
            Ok(swept) if swept.conversations == 0 => tracing::debug!(
                organisations = swept.organisations,
                "retention pass done: nothing expired"
            ),
            Ok(swept) => tracing::info!(
                organisations = swept.organisations,
                conversations = swept.conversations,
                messages = swept.messages,
                "retention pass done"
            ),
            Err(e) => tracing::warn!(error = %e, "retention pass failed; the next one retries"),
        }
        result
    }

    async fn sweep(&self) -> Result<Swept, SweepError> {
        let mut tx = tp_store::begin_retention_sweep_tx(&self.pool)
            .await
            .map_err(SweepError::List)?;
        let organisations: Vec<(Uuid, i32)> = sqlx::query_as(
            "SELECT tenant_id, retention_days FROM gateway.tenants
              WHERE retention_days IS NOT NULL ORDER BY tenant_id",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| SweepError::List(e.into()))?;
        tx.commit().await.map_err(|e| SweepError::List(e.into()))?;

        let mut swept = Swept::default();
        for (tenant, days) in organisations {
            let tenant = TenantId::from(tenant);
            let cutoff = OffsetDateTime::now_utc() - time::Duration::days(i64::from(days));
            let (conversations, messages) = self.purge(tenant, cutoff).await?;
            swept.organisations += 1;
            swept.conversations += conversations;
            swept.messages += messages;
            self.metrics.retention_deleted(conversations, messages);
            if conversations > 0 {
                self.audit(tenant, days, cutoff, conversations, messages)
                    .await?;
            }
        }
        Ok(swept)
    }

    /// Deletes the tenant's conversations older than `cutoff`, a batch at a
    /// time; returns how many conversations and messages went.
    async fn purge(
        &self,
        tenant: TenantId,
        cutoff: OffsetDateTime,
    ) -> Result<(u64, u64), SweepError> {
        let ctx = RequestContext {
            tenant_id: tenant,
            user_id: ACTOR.to_owned(),
            role: Role::Admin,
        };
        let (mut conversations, mut messages) = (0_u64, 0_u64);
        loop {
            let mut request = tonic::Request::new(internal::PurgeExpiredRequest {
                cutoff: Some(tp_proto::timestamp(cutoff)),
                batch_size: self.batch,
            });
            ctx.write_to(request.metadata_mut())
                .map_err(|e| SweepError::Purge(tonic::Status::internal(e.to_string())))?;
            let done = self
                .client
                .clone()
                .purge_expired(request)
                .await
                .map_err(SweepError::Purge)?
                .into_inner();
            conversations += u64::try_from(done.conversations_deleted).unwrap_or(0);
            messages += u64::try_from(done.messages_deleted).unwrap_or(0);
            if done.conversations_deleted < self.batch {
                return Ok((conversations, messages));
            }
        }
    }

    async fn audit(
        &self,
        tenant: TenantId,
        days: i32,
        cutoff: OffsetDateTime,
        conversations: u64,
        messages: u64,
    ) -> Result<(), SweepError> {
        audit::record_alone(
            &self.pool,
            &self.timer,
            "audit_retention",
            tenant,
            Event {
                actor: ACTOR,
                action: "retention.purged",
                target: &tenant.to_string(),
                before: None,
                after: Some(serde_json::json!({
                    "retention_days": days,
                    "cutoff": cutoff.unix_timestamp(),
                    "conversations_deleted": conversations,
                    "messages_deleted": messages,
                })),
            },
        )
        .await
        .map_err(SweepError::Audit)
    }

    /// Runs a pass every `interval`, the first one `interval` after start.
    pub fn spawn(self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let _ = self.run_once().await;
            }
        })
    }
}
