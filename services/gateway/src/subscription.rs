//! Public `SubscriptionService` (tenant admins): seats, their price, the
//! billing period, and what the period will cost. Every seat count a tenant
//! has had is kept in `gateway.seat_changes`; invoices are prorated from it
//! by `tp_billing`.

use std::sync::Arc;

use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use tp_billing::{BillingError, BillingProvider, Period, SeatChange, SeatUpdate};
use tp_context::TenantId;
use tp_proto::internal::conversation::v1 as internal_pb;
use tp_proto::v1 as pb;
use tp_store::Pool;
use tp_store::TxTimer;

use crate::access::{caller, storage_status};
use crate::audit::{self, Event};
use crate::tenants::status_pb;

/// The most seats a tenant may buy.
pub const MAX_SEATS: i32 = 100_000;

/// What a seat costs.
#[derive(Clone, Debug)]
pub struct Pricing {
    /// One seat for one period, in the currency's smallest unit.
    pub seat_price_minor: i64,
    /// ISO 4217, lower case.
    pub currency: String,
}

pub struct Subscriptions {
    pool: Pool,
    timer: TxTimer,
    pricing: Pricing,
    billing: Arc<dyn BillingProvider>,
    usage: UsageClient,
}

impl Subscriptions {
    pub fn new(
        pool: Pool,
        pricing: Pricing,
        billing: Arc<dyn BillingProvider>,
        usage: UsageClient,
    ) -> Self {
        Self {
            pool,
            timer: TxTimer::disabled(),
            pricing,
            billing,
            usage,
        }
    }

    /// Reports how long each transaction took (the gateway's metrics).
    pub fn with_timer(mut self, timer: TxTimer) -> Self {
        self.timer = timer;
        self
    }
}

/// The conversation service's internal usage API.
pub type UsageClient =
    tp_proto::internal::conversation::v1::usage_service_client::UsageServiceClient<
        tp_server::InternalChannel,
    >;

/// The longest period `GetUsage` reports at once.
const MAX_USAGE_DAYS: i64 = 366;

/// The period a usage request names: both bounds, or neither (this
/// calendar month so far, UTC).
fn usage_period(
    request: &pb::GetUsageRequest,
    now: OffsetDateTime,
) -> Result<(OffsetDateTime, OffsetDateTime), Status> {
    let at = |ts: &prost_types::Timestamp, name: &str| {
        OffsetDateTime::from_unix_timestamp(ts.seconds)
            .map_err(|_| Status::invalid_argument(format!("{name} is out of range")))
    };
    let (start, end) = match (&request.start_time, &request.end_time) {
        (None, None) => {
            let today = now.to_offset(time::UtcOffset::UTC);
            let start = today
                .replace_day(1)
                .unwrap_or(today)
                .replace_time(time::Time::MIDNIGHT);
            (start, now)
        }
        (Some(start), Some(end)) => (at(start, "start_time")?, at(end, "end_time")?),
        _ => {
            return Err(Status::invalid_argument(
                "give both start_time and end_time, or neither for this month so far",
            ));
        }
    };
    if end <= start {
        return Err(Status::invalid_argument(
            "end_time must be after start_time",
        ));
    }
    if (end - start).whole_days() > MAX_USAGE_DAYS {
        return Err(Status::invalid_argument(format!(
            "a usage period may span at most {MAX_USAGE_DAYS} days"
        )));
    }
    Ok((start, end))
}

#[derive(sqlx::FromRow)]
struct SubscriptionRow {
    seats: i32,
    status: String,
    status_reason: String,
    plan: String,
    billing_anchor: OffsetDateTime,
    seats_used: i64,
    last_change: Option<i64>,
}

async fn load(
    tx: &mut PgConnection,
    tenant: TenantId,
    lock: bool,
) -> Result<SubscriptionRow, Status> {
    // Locking the tenant row serialises seat changes with each other and
    // with AddMember, which takes the same lock.
    let sql = if lock {
        "SELECT t.seats, t.status, t.status_reason, t.plan, t.billing_anchor,
                (SELECT count(*) FROM gateway.members) AS seats_used,
                (SELECT max(change_seq) FROM gateway.seat_changes) AS last_change
           FROM gateway.tenants t WHERE t.tenant_id = $1 FOR UPDATE OF t"
    } else {
        "SELECT t.seats, t.status, t.status_reason, t.plan, t.billing_anchor,
                (SELECT count(*) FROM gateway.members) AS seats_used,
                (SELECT max(change_seq) FROM gateway.seat_changes) AS last_change
           FROM gateway.tenants t WHERE t.tenant_id = $1"
    };
    sqlx::query_as(sql)
        .bind(tenant.as_uuid())
        .fetch_optional(tx)
        .await
        .map_err(storage_status)?
        .ok_or_else(|| Status::not_found("the token's tenant does not exist"))
}

fn period_of(row: &SubscriptionRow) -> Result<Period, Status> {
    tp_billing::period_containing(row.billing_anchor, OffsetDateTime::now_utc())
        .ok_or_else(|| Status::internal("billing period out of range"))
}

impl Subscriptions {
    fn subscription_pb(&self, row: &SubscriptionRow) -> Result<pb::Subscription, Status> {
        let period = period_of(row)?;
        Ok(pb::Subscription {
            plan: row.plan.clone(),
            seats: row.seats,
            seats_used: i32::try_from(row.seats_used).unwrap_or(i32::MAX),
            status: status_pb(&row.status).into(),
            status_reason: row.status_reason.clone(),
            period_start: Some(tp_proto::timestamp(period.start)),
            period_end: Some(tp_proto::timestamp(period.end)),
            billing_provider: self.billing.name().to_owned(),
            seat_price_minor: self.pricing.seat_price_minor,
            currency: self.pricing.currency.clone(),
        })
    }
}

fn billing_status(e: BillingError) -> Status {
    match e {
        BillingError::Unavailable(reason) => {
            tracing::warn!(%reason, "billing provider unavailable");
            Status::unavailable(
                "the billing provider is unavailable; seats are unchanged, retry shortly",
            )
        }
        BillingError::Refused(reason) => Status::failed_precondition(format!(
            "the billing provider refused the change, so seats are unchanged: {reason}"
        )),
    }
}

#[tonic::async_trait]
impl pb::subscription_service_server::SubscriptionService for Subscriptions {
    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::GetSubscriptionResponse>, Status> {
        let ctx = caller(&request)?;
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, "get_subscription")
            .await
            .map_err(storage_status)?;
        let row = load(&mut tx, ctx.tenant_id, false).await?;
        tx.commit().await.map_err(storage_status)?;
        Ok(Response::new(pb::GetSubscriptionResponse {
            subscription: Some(self.subscription_pb(&row)?),
        }))
    }

    async fn update_seats(
        &self,
        request: Request<pb::UpdateSeatsRequest>,
    ) -> Result<Response<pb::UpdateSeatsResponse>, Status> {
        let ctx = caller(&request)?;
        let seats = request.into_inner().seats;
        if !(1..=MAX_SEATS).contains(&seats) {
            return Err(Status::invalid_argument(format!(
                "seats must be between 1 and {MAX_SEATS}, got {seats}"
            )));
        }
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, "update_seats")
            .await
            .map_err(storage_status)?;
        let mut row = load(&mut tx, ctx.tenant_id, true).await?;
        if i64::from(seats) < row.seats_used {
            return Err(Status::failed_precondition(format!(
                "{} members hold seats, so the tenant cannot have {seats}; remove members first",
                row.seats_used
            )));
        }
        if seats == row.seats {
            tx.commit().await.map_err(storage_status)?;
            return Ok(Response::new(pb::UpdateSeatsResponse {
                subscription: Some(self.subscription_pb(&row)?),
            }));
        }
        // The provider first, under the tenant lock: if it refuses, nothing
        // here changes. A retry of the same change (same ledger position,
        // same count) reuses the idempotency key, so it is charged once.
        let tenant = ctx.tenant_id.to_string();
        let key = format!(
            "seats-{tenant}-{}-{seats}",
            row.last_change.unwrap_or_default()
        );
        self.billing
            .update_seats(SeatUpdate {
                tenant_id: &tenant,
                seats: u32::try_from(seats).unwrap_or(0),
                idempotency_key: &key,
            })
            .await
            .map_err(billing_status)?;
        sqlx::query("UPDATE gateway.tenants SET seats = $2 WHERE tenant_id = $1")
            .bind(ctx.tenant_id.as_uuid())
            .bind(seats)
            .execute(&mut *tx)
            .await
            .map_err(storage_status)?;
        sqlx::query("INSERT INTO gateway.seat_changes (tenant_id, seats) VALUES ($1, $2)")
            .bind(ctx.tenant_id.as_uuid())
            .bind(seats)
            .execute(&mut *tx)
            .await
            .map_err(storage_status)?;
        audit::record(
            &mut tx,
            ctx.tenant_id,
            Event {
                actor: &ctx.user_id,
                action: "seats.updated",
                target: &tenant,
                before: Some(serde_json::json!({ "seats": row.seats })),
                after: Some(serde_json::json!({ "seats": seats })),
            },
        )
        .await
        .map_err(storage_status)?;
        tx.commit().await.map_err(storage_status)?;
        tracing::info!(tenant_id = %ctx.tenant_id, from = row.seats, to = seats, "seats updated");
        row.seats = seats;
        Ok(Response::new(pb::UpdateSeatsResponse {
            subscription: Some(self.subscription_pb(&row)?),
        }))
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let ctx = caller(&request)?;
        let (start, end) = usage_period(request.get_ref(), OffsetDateTime::now_utc())?;
        // Days are whole UTC days: the end is rounded up to the next midnight
        // so that today counts.
        let end_day = (end - time::Duration::nanoseconds(1))
            .to_offset(time::UtcOffset::UTC)
            .replace_time(time::Time::MIDNIGHT)
            + time::Duration::days(1);
        let internal = crate::access::internal_request(
            &ctx,
            Request::new(internal_pb::GetMemberUsageRequest {
                start_time: Some(tp_proto::timestamp(start)),
                end_time: Some(tp_proto::timestamp(end_day)),
            }),
        )?;
        let used = self
            .usage
            .clone()
            .get_member_usage(internal)
            .await?
            .into_inner()
            .members;

        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, "get_usage")
            .await
            .map_err(storage_status)?;
        let seats: i32 =
            sqlx::query_scalar("SELECT seats FROM gateway.tenants WHERE tenant_id = $1")
                .bind(ctx.tenant_id.as_uuid())
                .fetch_one(&mut *tx)
                .await
                .map_err(storage_status)?;
        let members: Vec<String> =
            sqlx::query_scalar("SELECT user_id FROM gateway.members ORDER BY user_id")
                .fetch_all(&mut *tx)
                .await
                .map_err(storage_status)?;
        tx.commit().await.map_err(storage_status)?;

        let mut report: Vec<pb::MemberUsage> = members
            .iter()
            .map(|user_id| {
                used.iter()
                    .find(|u| &u.user_id == user_id)
                    .map(|u| pb::MemberUsage {
                        user_id: u.user_id.clone(),
                        messages: u.messages,
                        input_tokens: u.input_tokens,
                        output_tokens: u.output_tokens,
                        active_days: u.active_days,
                    })
                    .unwrap_or_else(|| pb::MemberUsage {
                        user_id: user_id.clone(),
                        ..Default::default()
                    })
            })
            .collect();
        let seats_active = report.iter().filter(|u| u.messages > 0).count();
        // Former members who used the service in the period count too.
        report.extend(
            used.into_iter()
                .filter(|u| !members.contains(&u.user_id))
                .map(|u| pb::MemberUsage {
                    user_id: u.user_id,
                    messages: u.messages,
                    input_tokens: u.input_tokens,
                    output_tokens: u.output_tokens,
                    active_days: u.active_days,
                }),
        );
        Ok(Response::new(pb::GetUsageResponse {
            start_time: Some(tp_proto::timestamp(start)),
            end_time: Some(tp_proto::timestamp(end)),
            members: report,
            seats_paid: seats,
            seats_active: i32::try_from(seats_active).unwrap_or(i32::MAX),
        }))
    }

    async fn preview_invoice(
        &self,
        request: Request<pb::PreviewInvoiceRequest>,
    ) -> Result<Response<pb::PreviewInvoiceResponse>, Status> {
        let ctx = caller(&request)?;
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, "preview_invoice")
            .await
            .map_err(storage_status)?;
        let row = load(&mut tx, ctx.tenant_id, false).await?;
        let period = period_of(&row)?;
        // The count in force when the period starts, and every change in it.
        let changes: Vec<(OffsetDateTime, i32)> = sqlx::query_as(
            "SELECT effective_at, seats FROM gateway.seat_changes
              WHERE effective_at < $2
                AND effective_at >= coalesce(
                    (SELECT max(effective_at) FROM gateway.seat_changes WHERE effective_at <= $1),
                    '-infinity')
              ORDER BY effective_at, change_seq",
        )
        .bind(period.start)
        .bind(period.end)
        .fetch_all(&mut *tx)
        .await
        .map_err(storage_status)?;
        tx.commit().await.map_err(storage_status)?;
        let changes: Vec<SeatChange> = changes
            .into_iter()
            .map(|(effective_at, seats)| SeatChange {
                effective_at,
                seats: u32::try_from(seats).unwrap_or(0),
            })
            .collect();
        let lines = tp_billing::invoice_lines(&period, &changes, self.pricing.seat_price_minor);
        let total_minor = lines.iter().map(|l| l.amount_minor).sum();
        Ok(Response::new(pb::PreviewInvoiceResponse {
            lines: lines
                .iter()
                .map(|line| pb::InvoiceLine {
                    description: line.description(),
                    seats: i32::try_from(line.seats).unwrap_or(i32::MAX),
                    start: Some(tp_proto::timestamp(line.start)),
                    end: Some(tp_proto::timestamp(line.end)),
                    amount_minor: line.amount_minor,
                })
                .collect(),
            total_minor,
            currency: self.pricing.currency.clone(),
            period_start: Some(tp_proto::timestamp(period.start)),
            period_end: Some(tp_proto::timestamp(period.end)),
        }))
    }
}
