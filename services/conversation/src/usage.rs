//! Usage and monthly quotas. Every stored user turn and every model reply's
//! token counts are added to per-day aggregates (per member, and per
//! tenant) in the transaction that stores the turn, so the numbers are exact
//! and survive restarts; a quota check reads at most a month of daily rows.
//! Months are calendar months in UTC.

use sqlx::PgConnection;
use time::{Date, OffsetDateTime, Time};
use tonic::{Request, Response, Status};
use tp_context::RequestContext;
use tp_proto::internal::conversation::v1 as pb;
use tp_store::Pool;
use tp_store::TxTimer;

use crate::store::op;

use crate::error::ConversationError;

/// Monthly limits; 0 is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub messages: i64,
    pub tokens: i64,
}

/// What a month has used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Used {
    pub messages: i64,
    pub tokens: i64,
}

/// A quota that refuses the next message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// `None` for the organisation's quota, else the member's.
    pub user_id: Option<String>,
    pub what: &'static str,
    pub limit: i64,
    pub resets_at: OffsetDateTime,
}

impl std::fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whose = match &self.user_id {
            None => "the organisation's".to_owned(),
            Some(user) => format!("member `{user}`'s"),
        };
        let resets = self
            .resets_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| self.resets_at.to_string());
        write!(
            f,
            "{whose} monthly {} quota ({}) is used up; it resets at {resets}",
            self.what, self.limit
        )
    }
}

/// The first instant of `now`'s calendar month, UTC.
pub fn month_start(now: OffsetDateTime) -> OffsetDateTime {
    let now = now.to_offset(time::UtcOffset::UTC);
    let first = now.replace_day(1).unwrap_or(now);
    first.replace_time(Time::MIDNIGHT)
}

/// The first instant of the next calendar month, UTC: when quotas reset.
pub fn next_month_start(now: OffsetDateTime) -> OffsetDateTime {
    let start = month_start(now);
    let (year, month) = match start.month() {
        time::Month::December => (start.year() + 1, time::Month::January),
        month => (start.year(), month.next()),
    };
    Date::from_calendar_date(year, month, 1)
        .map(|date| date.midnight().assume_utc())
        .unwrap_or(start)
}

/// Would one more message go over `limits`, given `used`? Pure.
pub fn refuses(
    user_id: Option<&str>,
    limits: Limits,
    used: Used,
    now: OffsetDateTime,
) -> Option<QuotaExceeded> {
    let exceeded = |what, limit| QuotaExceeded {
        user_id: user_id.map(str::to_owned),
        what,
        limit,
        resets_at: next_month_start(now),
    };
    if limits.messages > 0 && used.messages >= limits.messages {
        return Some(exceeded("message", limits.messages));
    }
    if limits.tokens > 0 && used.tokens >= limits.tokens {
        return Some(exceeded("token", limits.tokens));
    }
    None
}

/// The organisation's (`''`) and `user_id`'s quotas, with this month's use.
/// Without quotas (the usual case) this is one indexed read.
async fn quota_statuses(
    tx: &mut PgConnection,
    user_id: &str,
) -> Result<Vec<(String, Limits, Used)>, sqlx::Error> {
    let quotas: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT user_id, monthly_messages, monthly_tokens FROM conversation.quotas
          WHERE user_id IN ('', $1) ORDER BY user_id",
    )
    .bind(user_id)
    .fetch_all(&mut *tx)
    .await?;
    with_use(tx, quotas).await
}

/// Each quota (whose, monthly messages, monthly tokens) with this month's
/// use: no read at all without quotas.
async fn with_use(
    tx: &mut PgConnection,
    quotas: Vec<(String, i64, i64)>,
) -> Result<Vec<(String, Limits, Used)>, sqlx::Error> {
    let mut statuses = Vec::with_capacity(quotas.len());
    for (user, messages, tokens) in quotas {
        let (used_messages, used_tokens): (i64, i64) = if user.is_empty() {
            sqlx::query_as(
                "SELECT coalesce(sum(messages), 0)::bigint,
                        coalesce(sum(input_tokens + output_tokens), 0)::bigint
                   FROM conversation.tenant_token_usage
                  WHERE day >= date_trunc('month', now() AT TIME ZONE 'UTC')::date",
            )
            .fetch_one(&mut *tx)
            .await?
        } else {
            sqlx::query_as(
                "SELECT coalesce(sum(messages), 0)::bigint,
                        coalesce(sum(input_tokens + output_tokens), 0)::bigint
                   FROM conversation.member_usage
                  WHERE user_id = $1
                    AND day >= date_trunc('month', now() AT TIME ZONE 'UTC')::date",
            )
            .bind(&user)
            .fetch_one(&mut *tx)
            .await?
        };
        statuses.push((
            user,
            Limits { messages, tokens },
            Used {
                messages: used_messages,
                tokens: used_tokens,
            },
        ));
    }
    Ok(statuses)
}

/// Refuses a new message when a quota of the tenant or the member is used
/// up. Runs in the transaction that would store the message.
pub async fn check_quotas(
    tx: &mut PgConnection,
    ctx: &RequestContext,
) -> Result<(), ConversationError> {
    let statuses = quota_statuses(tx, &ctx.user_id).await?;
    refuse_past_quota(statuses)
}

/// [`check_quotas`] for quotas already read (by the statement that stored
/// the turn, which the refusal then rolls back): what [`quotas_of_member!`]
/// returned.
pub async fn check_quotas_read(
    tx: &mut PgConnection,
    quotas: Vec<(String, i64, i64)>,
) -> Result<(), ConversationError> {
    let statuses = with_use(tx, quotas).await?;
    refuse_past_quota(statuses)
}

fn refuse_past_quota(statuses: Vec<(String, Limits, Used)>) -> Result<(), ConversationError> {
    let now = OffsetDateTime::now_utc();
    for (user, limits, used) in statuses {
        let whose = (!user.is_empty()).then_some(user.as_str());
        if let Some(exceeded) = refuses(whose, limits, used, now) {
            return Err(ConversationError::QuotaExceeded(exceeded));
        }
    }
    Ok(())
}

/// The organisation's (`''`) and the member's (`$9`) quotas as a FROM
/// item `quotas` of three arrays in one order (`quota_users`,
/// `quota_messages`, `quota_tokens`; empty without quotas), read in one
/// scan by a statement that reads them beside its own work.
macro_rules! quotas_of_member {
    () => {
        "LATERAL (
             SELECT coalesce(array_agg(user_id ORDER BY user_id), '{}') AS quota_users,
                    coalesce(array_agg(monthly_messages ORDER BY user_id), '{}') AS quota_messages,
                    coalesce(array_agg(monthly_tokens ORDER BY user_id), '{}') AS quota_tokens
               FROM conversation.quotas WHERE user_id IN ('', $9)) AS quotas"
    };
}
pub(crate) use quotas_of_member;

/// Counts one stored user turn, as two CTEs (`counted_member`,
/// `counted_tenant`) of a statement whose `$3` is the tenant, `$4` the
/// member and `$5` whether to count at all: the store runs them in the
/// statement that also reads the turn's context, the last before the
/// commit (see [`crate::store`]'s `context_and_count`). The tenant's count
/// for the day is spread over 8 rows by member (`shard`), so a tenant's
/// members do not all wait on one row's lock.
macro_rules! counted_message {
    () => {
        "counted_member AS (
             INSERT INTO conversation.member_usage AS u (tenant_id, user_id, day, messages)
             SELECT $3, $4, (now() AT TIME ZONE 'UTC')::date, 1 WHERE $5
             ON CONFLICT (tenant_id, user_id, day) DO UPDATE SET messages = u.messages + 1
         ), counted_tenant AS (
             INSERT INTO conversation.tenant_token_usage AS t (tenant_id, day, shard, messages)
             SELECT $3, (now() AT TIME ZONE 'UTC')::date, conversation.usage_shard($4), 1 WHERE $5
             ON CONFLICT (tenant_id, day, shard) DO UPDATE SET messages = t.messages + 1
         )"
    };
}
pub(crate) use counted_message;

/// Counts a stored reply's tokens against the member who asked.
pub async fn count_tokens(
    tx: &mut PgConnection,
    ctx: &RequestContext,
    input_tokens: u32,
    output_tokens: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO conversation.member_usage AS u
            (tenant_id, user_id, day, input_tokens, output_tokens)
         VALUES ($1, $2, (now() AT TIME ZONE 'UTC')::date, $3, $4)
         ON CONFLICT (tenant_id, user_id, day) DO UPDATE SET
            input_tokens = u.input_tokens + EXCLUDED.input_tokens,
            output_tokens = u.output_tokens + EXCLUDED.output_tokens",
    )
    .bind(ctx.tenant_id.as_uuid())
    .bind(&ctx.user_id)
    .bind(i64::from(input_tokens))
    .bind(i64::from(output_tokens))
    .execute(tx)
    .await?;
    Ok(())
}

/// Internal `UsageService`, for the gateway.
pub struct UsageHandler {
    pool: Pool,
    timer: TxTimer,
}

impl UsageHandler {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            timer: TxTimer::disabled(),
        }
    }

    /// Reports how long each transaction took (the service's metrics).
    pub fn with_timer(mut self, timer: TxTimer) -> Self {
        self.timer = timer;
        self
    }
}

fn storage(e: impl Into<ConversationError>) -> Status {
    e.into().into()
}

fn time_of(ts: Option<&prost_types::Timestamp>, name: &str) -> Result<OffsetDateTime, Status> {
    let ts = ts.ok_or_else(|| Status::invalid_argument(format!("{name} is required")))?;
    OffsetDateTime::from_unix_timestamp(ts.seconds)
        .map_err(|_| Status::invalid_argument(format!("{name} is out of range")))
}

fn status_pb(user_id: String, limits: Limits, used: Used) -> pb::QuotaStatus {
    pb::QuotaStatus {
        user_id,
        limits: Some(pb::Limits {
            monthly_messages: limits.messages,
            monthly_tokens: limits.tokens,
        }),
        messages_used: used.messages,
        tokens_used: used.tokens,
    }
}

#[tonic::async_trait]
impl pb::usage_service_server::UsageService for UsageHandler {
    async fn get_member_usage(
        &self,
        request: Request<pb::GetMemberUsageRequest>,
    ) -> Result<Response<pb::GetMemberUsageResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let start = time_of(request.get_ref().start_time.as_ref(), "start_time")?;
        let end = time_of(request.get_ref().end_time.as_ref(), "end_time")?;
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::GET_MEMBER_USAGE)
            .await
            .map_err(storage)?;
        // Whole UTC days: the aggregates are daily.
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT user_id, sum(messages)::bigint, sum(input_tokens)::bigint,
                    sum(output_tokens)::bigint, count(*) FILTER (WHERE messages > 0)
               FROM conversation.member_usage
              WHERE day >= ($1 AT TIME ZONE 'UTC')::date AND day < ($2 AT TIME ZONE 'UTC')::date
              GROUP BY user_id ORDER BY user_id",
        )
        .bind(start)
        .bind(end)
        .fetch_all(&mut *tx)
        .await
        .map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        Ok(Response::new(pb::GetMemberUsageResponse {
            members: rows
                .into_iter()
                .map(|(user_id, messages, input, output, days)| pb::MemberUsage {
                    user_id,
                    messages,
                    input_tokens: input,
                    output_tokens: output,
                    active_days: i32::try_from(days).unwrap_or(i32::MAX),
                })
                .collect(),
        }))
    }

    async fn get_quota_status(
        &self,
        request: Request<pb::GetQuotaStatusRequest>,
    ) -> Result<Response<pb::GetQuotaStatusResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let user = match request.get_ref().user_id.as_str() {
            "" => ctx.user_id.clone(),
            other => other.to_owned(),
        };
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::GET_QUOTA_STATUS)
            .await
            .map_err(storage)?;
        let statuses = quota_statuses(&mut tx, &user).await.map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        Ok(Response::new(pb::GetQuotaStatusResponse {
            quotas: statuses
                .into_iter()
                .map(|(user, limits, used)| status_pb(user, limits, used))
                .collect(),
            resets_at: Some(tp_proto::timestamp(next_month_start(
                OffsetDateTime::now_utc(),
            ))),
        }))
    }

    async fn set_quota(
        &self,
        request: Request<pb::SetQuotaRequest>,
    ) -> Result<Response<pb::SetQuotaResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let request = request.into_inner();
        let limits = request.limits.unwrap_or_default();
        if limits.monthly_messages < 0 || limits.monthly_tokens < 0 {
            return Err(Status::invalid_argument(
                "quota limits must be 0 (unlimited) or positive",
            ));
        }
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::SET_QUOTA)
            .await
            .map_err(storage)?;
        if limits.monthly_messages == 0 && limits.monthly_tokens == 0 {
            sqlx::query("DELETE FROM conversation.quotas WHERE user_id = $1")
                .bind(&request.user_id)
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
        } else {
            sqlx::query(
                "INSERT INTO conversation.quotas (tenant_id, user_id, monthly_messages, monthly_tokens)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant_id, user_id) DO UPDATE SET
                    monthly_messages = EXCLUDED.monthly_messages,
                    monthly_tokens = EXCLUDED.monthly_tokens,
                    update_time = now()",
            )
            .bind(ctx.tenant_id.as_uuid())
            .bind(&request.user_id)
            .bind(limits.monthly_messages)
            .bind(limits.monthly_tokens)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        }
        let statuses = quota_statuses(&mut tx, &request.user_id)
            .await
            .map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        let quota = statuses
            .into_iter()
            .find(|(user, _, _)| *user == request.user_id)
            .map(|(user, limits, used)| status_pb(user, limits, used))
            .unwrap_or_else(|| status_pb(request.user_id, Limits::default(), Used::default()));
        Ok(Response::new(pb::SetQuotaResponse { quota: Some(quota) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn months_start_and_reset_in_utc() {
        assert_eq!(
            month_start(datetime!(2026-11-26 03:27 +05:00)),
            datetime!(2026-11-01 00:00 UTC)
        );
        assert_eq!(
            next_month_start(datetime!(2026-12-31 23:59 UTC)),
            datetime!(2027-01-01 00:00 UTC)
        );
    }

    #[test]
    fn the_first_quota_reached_refuses_and_zero_is_unlimited() {
        let now = datetime!(2026-11-26 10:00 UTC);
        let limits = Limits {
            messages: 100,
            tokens: 0,
        };
        assert_eq!(
            refuses(
                None,
                limits,
                Used {
                    messages: 99,
                    tokens: 1 << 40
                },
                now
            ),
            None
        );
        let refused = refuses(
            Some("ann"),
            limits,
            Used {
                messages: 100,
                tokens: 0,
            },
            now,
        )
        .expect("refused");
        assert_eq!(refused.what, "message");
        assert_eq!(refused.resets_at, datetime!(2026-12-01 00:00 UTC));
        assert_eq!(
            refused.to_string(),
            "member `ann`'s monthly message quota (100) is used up; it resets at 2026-12-01T00:00:00Z"
        );
        let tokens = Limits {
            messages: 0,
            tokens: 5000,
        };
        assert_eq!(
            refuses(
                None,
                tokens,
                Used {
                    messages: 1,
                    tokens: 5000
                },
                now
            )
            .map(|r| r.what),
            Some("token")
        );
    }
}
