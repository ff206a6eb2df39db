//! The tenant's append-only audit log: every admin, operator and billing
//! action is recorded in the same transaction as its effect, so the log
//! cannot miss an action that happened or record one that did not. The
//! application role may insert and read `gateway.audit_events`, never
//! change them (no grant, no policy).

use serde_json::Value;
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use tp_context::TenantId;
use tp_proto::v1 as pb;
use tp_store::Pool;
use tp_store::TxTimer;
use tp_store::paging::Page;

use crate::access::{caller, storage_status};

/// One action to record.
pub struct Event<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Records `event` for `tenant` inside the caller's transaction (which
/// must be scoped to that tenant).
pub async fn record(
    tx: &mut PgConnection,
    tenant: TenantId,
    event: Event<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO gateway.audit_events (tenant_id, actor, action, target, before, after)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant.as_uuid())
    .bind(event.actor)
    .bind(event.action)
    .bind(event.target)
    .bind(event.before)
    .bind(event.after)
    .execute(tx)
    .await?;
    Ok(())
}

/// Records `event` in a transaction of its own, for an action that changes
/// nothing in the gateway's tables (an export starting, the retention job
/// reporting what the conversation service deleted). `operation` names the
/// transaction in the metrics.
pub async fn record_alone(
    pool: &tp_store::Pool,
    timer: &tp_store::TxTimer,
    operation: &'static str,
    tenant: TenantId,
    event: Event<'_>,
) -> Result<(), tp_store::StoreError> {
    let mut tx = timer.begin(pool, tenant, operation).await?;
    record(&mut tx, tenant, event).await?;
    tx.commit().await?;
    Ok(())
}

/// How an operator appears as an actor.
pub fn operator_actor(user_id: &str) -> String {
    format!("operator:{user_id}")
}

#[derive(sqlx::FromRow)]
struct EventRow {
    event_seq: i64,
    event_time: OffsetDateTime,
    actor: String,
    action: String,
    target: String,
    before: Option<Value>,
    after: Option<Value>,
}

/// JSON as a protobuf `Struct` (objects only; anything else is wrapped as
/// `{"value": …}`).
fn to_struct(value: Value) -> prost_types::Struct {
    match value {
        Value::Object(map) => prost_types::Struct {
            fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
        },
        other => prost_types::Struct {
            fields: [("value".to_owned(), to_value(other))]
                .into_iter()
                .collect(),
        },
    }
}

fn to_value(value: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(_) => Kind::StructValue(to_struct(value)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Public `AuditService` (tenant admins).
pub struct AuditLog {
    pool: Pool,
    timer: TxTimer,
}

impl AuditLog {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            timer: TxTimer::disabled(),
        }
    }

    /// Reports how long each transaction took (the gateway's metrics).
    pub fn with_timer(mut self, timer: TxTimer) -> Self {
        self.timer = timer;
        self
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditLog {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let ctx = caller(&request)?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, "list_audit_events")
            .await
            .map_err(storage_status)?;
        // Newest first: the cursor is the last sequence number seen.
        let mut rows: Vec<EventRow> = sqlx::query_as(
            "SELECT event_seq, event_time, actor, action, target, before, after
               FROM gateway.audit_events
              WHERE ($1::bigint IS NULL OR event_seq < $1)
              ORDER BY event_seq DESC LIMIT $2",
        )
        .bind(page.after)
        .bind(page.fetch_limit())
        .fetch_all(&mut *tx)
        .await
        .map_err(storage_status)?;
        tx.commit().await.map_err(storage_status)?;
        let next_page_token = page.finish(&mut rows, |row| row.event_seq);
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: rows
                .into_iter()
                .map(|row| pb::AuditEvent {
                    sequence: row.event_seq,
                    time: Some(tp_proto::timestamp(row.event_time)),
                    actor: row.actor,
                    action: row.action,
                    target: row.target,
                    before: row.before.map(to_struct),
                    after: row.after.map(to_struct),
                })
                .collect(),
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::value::Kind;

    #[test]
    fn json_objects_become_structs() {
        let s = to_struct(serde_json::json!({"seats": 5, "role": "admin", "tags": [true]}));
        assert_eq!(s.fields["seats"].kind, Some(Kind::NumberValue(5.0)));
        assert_eq!(
            s.fields["role"].kind,
            Some(Kind::StringValue("admin".into()))
        );
        let Some(Kind::ListValue(list)) = &s.fields["tags"].kind else {
            panic!("a list");
        };
        assert_eq!(list.values[0].kind, Some(Kind::BoolValue(true)));
        let wrapped = to_struct(serde_json::json!(3));
        assert_eq!(wrapped.fields["value"].kind, Some(Kind::NumberValue(3.0)));
    }
}
