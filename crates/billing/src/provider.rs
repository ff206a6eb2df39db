//! The seam between the product and whoever charges for seats.

use std::future::Future;
use std::pin::Pin;

/// Why the billing provider refused or failed a change.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// The provider could not be reached or failed; retrying may work.
    #[error("the billing provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider refused the change (e.g. no payment method).
    #[error("the billing provider refused the change: {0}")]
    Refused(String),
}

/// A change of paid seats, to be charged prorated from now.
pub struct SeatUpdate<'a> {
    pub tenant_id: &'a str,
    pub seats: u32,
    /// The same for every retry of one intended change, so the provider
    /// applies it once.
    pub idempotency_key: &'a str,
}

/// Who charges a tenant for its seats. The gateway calls it before it
/// commits a seat change, so a refusal leaves the seats as they were.
pub trait BillingProvider: Send + Sync + 'static {
    /// `local` or `stripe`, as shown to admins.
    fn name(&self) -> &'static str;

    fn update_seats<'a>(
        &'a self,
        update: SeatUpdate<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), BillingError>> + Send + 'a>>;
}

/// The default: no account anywhere. The gateway's seat ledger in Postgres
/// is the record, and invoices are computed from it
/// ([`crate::invoice_lines`]); there is nobody else to tell.
pub struct LocalBilling;

impl BillingProvider for LocalBilling {
    fn name(&self) -> &'static str {
        "local"
    }

    fn update_seats<'a>(
        &'a self,
        _update: SeatUpdate<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), BillingError>> + Send + 'a>> {
        Box::pin(std::future::ready(Ok(())))
    }
}
