//! Stripe as the billing provider, on the gateway's side: where each
//! tenant's account is kept (`gateway.billing_accounts`, under the tenant's
//! row-level security), opening one with a new tenant, and the statuses a
//! Stripe subscription maps to. Only `tp-stripe` talks to Stripe.

use std::sync::Arc;

use sqlx::PgConnection;
use tonic::Status;
use tp_billing::{BillingError, BillingProvider, LocalBilling};
use tp_context::TenantId;
use tp_store::Pool;
use tp_store::TxTimer;
use tp_stripe::{
    AccountDirectory, BoxFuture, StripeAccount, StripeBilling, StripeSettings, SubscriptionStatus,
};

use crate::policy::TenantStatus;

/// The billing provider the gateway runs with.
#[derive(Clone)]
pub struct Billing {
    /// What `UpdateSeats` tells of seat changes.
    pub provider: Arc<dyn BillingProvider>,
    /// Set with `stripe`: accounts, subscriptions and webhooks.
    pub stripe: Option<Arc<StripeBilling>>,
}

impl Billing {
    pub fn local() -> Self {
        Self {
            provider: Arc::new(LocalBilling),
            stripe: None,
        }
    }

    /// Stripe, its accounts kept in `pool` (each read timed by `timer`).
    /// No request is made yet.
    pub fn stripe(settings: &StripeSettings, pool: Pool, timer: TxTimer) -> anyhow::Result<Self> {
        let stripe = Arc::new(StripeBilling::new(
            settings,
            Arc::new(PgAccountDirectory { pool, timer }),
        )?);
        Ok(Self {
            provider: stripe.clone(),
            stripe: Some(stripe),
        })
    }
}

/// Tenants' Stripe accounts, read in the tenant's own transaction.
pub struct PgAccountDirectory {
    pool: Pool,
    timer: TxTimer,
}

impl PgAccountDirectory {
    async fn find(&self, tenant_id: &str) -> Result<Option<StripeAccount>, BillingError> {
        let Ok(tenant) = tenant_id.parse::<TenantId>() else {
            return Ok(None);
        };
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "storage failure reading the billing account");
            BillingError::Unavailable("the billing account could not be read".into())
        };
        let mut tx = self
            .timer
            .begin(&self.pool, tenant, "find_billing_account")
            .await
            .map_err(|e| unavailable(&e))?;
        let account = account_of(&mut tx, tenant, false)
            .await
            .map_err(|e| unavailable(&e))?;
        tx.commit().await.map_err(|e| unavailable(&e))?;
        Ok(account)
    }
}

impl AccountDirectory for PgAccountDirectory {
    fn account<'a>(
        &'a self,
        tenant_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StripeAccount>, BillingError>> {
        Box::pin(self.find(tenant_id))
    }
}

/// The tenant's Stripe account, within a transaction scoped to it;
/// `lock` holds the row until the transaction ends.
pub async fn account_of(
    tx: &mut PgConnection,
    tenant: TenantId,
    lock: bool,
) -> Result<Option<StripeAccount>, sqlx::Error> {
    let sql = if lock {
        "SELECT customer_id, subscription_id, item_id FROM gateway.billing_accounts
          WHERE tenant_id = $1 AND provider = 'stripe' FOR UPDATE"
    } else {
        "SELECT customer_id, subscription_id, item_id FROM gateway.billing_accounts
          WHERE tenant_id = $1 AND provider = 'stripe'"
    };
    let row: Option<(String, String, String)> = sqlx::query_as(sql)
        .bind(tenant.as_uuid())
        .fetch_optional(tx)
        .await?;
    Ok(
        row.map(|(customer_id, subscription_id, item_id)| StripeAccount {
            customer_id,
            subscription_id,
            item_id,
        }),
    )
}

/// Opens the new tenant's Stripe account (customer, then subscription) and
/// records it in `tx`, the transaction that creates the tenant: if Stripe
/// fails, the caller rolls back and no tenant exists. Retries of one
/// tenant's creation share the idempotency key derived from its id.
pub async fn open_account(
    stripe: &StripeBilling,
    tx: &mut PgConnection,
    tenant: TenantId,
    display_name: &str,
    seats: u32,
) -> Result<StripeAccount, Status> {
    let tenant_id = tenant.to_string();
    let account = stripe
        .create_account(
            &tenant_id,
            display_name,
            seats,
            &format!("tenant-{tenant_id}"),
        )
        .await
        .map_err(|e| match e {
            BillingError::Unavailable(reason) => {
                tracing::warn!(%reason, "stripe: account not created");
                Status::unavailable(
                    "Stripe is unavailable, so no tenant was created; retry shortly",
                )
            }
            BillingError::Refused(reason) => Status::failed_precondition(format!(
                "Stripe refused to open the tenant's subscription, so no tenant was created: {reason}"
            )),
        })?;
    sqlx::query(
        "INSERT INTO gateway.billing_accounts
             (tenant_id, provider, customer_id, subscription_id, item_id)
         VALUES ($1, 'stripe', $2, $3, $4)",
    )
    .bind(tenant.as_uuid())
    .bind(&account.customer_id)
    .bind(&account.subscription_id)
    .bind(&account.item_id)
    .execute(tx)
    .await
    .map_err(crate::access::storage_status)?;
    Ok(account)
}

/// Cancels the subscription of a tenant whose creation failed after Stripe
/// had opened its account. Best effort: a failure is logged with the ids an
/// operator needs to cancel it by hand (the customer stays, unbilled).
pub async fn abandon_account(stripe: &StripeBilling, tenant: TenantId, account: &StripeAccount) {
    match stripe
        .cancel(
            &account.subscription_id,
            &format!("tenant-{tenant}-abandoned"),
        )
        .await
    {
        Ok(_) => tracing::warn!(
            %tenant,
            subscription_id = %account.subscription_id,
            "tenant not created; its Stripe subscription was cancelled"
        ),
        Err(e) => tracing::error!(
            %tenant,
            customer_id = %account.customer_id,
            subscription_id = %account.subscription_id,
            error = %e,
            "tenant not created, and its Stripe subscription could not be cancelled: cancel it by hand"
        ),
    }
}

/// The status a tenant takes from its Stripe subscription's, given its
/// current one; `None` leaves it as it is. An operator's suspension stands
/// until Stripe says the subscription is over.
pub fn status_from_stripe(
    stripe: &SubscriptionStatus,
    current: TenantStatus,
) -> Option<TenantStatus> {
    let mapped = match stripe {
        SubscriptionStatus::Active | SubscriptionStatus::Trialing => TenantStatus::Active,
        SubscriptionStatus::PastDue | SubscriptionStatus::Unpaid => TenantStatus::PastDue,
        SubscriptionStatus::Canceled | SubscriptionStatus::IncompleteExpired => {
            TenantStatus::Cancelled
        }
        // Incomplete (first payment pending), paused, or unknown: no say.
        _ => return None,
    };
    if current == TenantStatus::Suspended && mapped != TenantStatus::Cancelled {
        return None;
    }
    (mapped != current).then_some(mapped)
}

/// Why a tenant has the status Stripe gave it, as its users see it.
pub fn status_reason(status: TenantStatus) -> &'static str {
    match status {
        TenantStatus::PastDue => "a payment to Stripe failed",
        TenantStatus::Cancelled => "the Stripe subscription ended",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_statuses_map_to_tenant_statuses() {
        use SubscriptionStatus as S;
        use TenantStatus as T;
        assert_eq!(status_from_stripe(&S::PastDue, T::Active), Some(T::PastDue));
        assert_eq!(status_from_stripe(&S::Unpaid, T::Active), Some(T::PastDue));
        assert_eq!(status_from_stripe(&S::Active, T::PastDue), Some(T::Active));
        assert_eq!(status_from_stripe(&S::Trialing, T::Active), None);
        assert_eq!(
            status_from_stripe(&S::IncompleteExpired, T::Active),
            Some(T::Cancelled)
        );
        assert_eq!(status_from_stripe(&S::Incomplete, T::Active), None);
        assert_eq!(status_from_stripe(&S::Other("x".into()), T::PastDue), None);
        // An operator's suspension stands, except against a cancellation.
        assert_eq!(status_from_stripe(&S::Active, T::Suspended), None);
        assert_eq!(status_from_stripe(&S::PastDue, T::Suspended), None);
        assert_eq!(
            status_from_stripe(&S::Canceled, T::Suspended),
            Some(T::Cancelled)
        );
    }
}
