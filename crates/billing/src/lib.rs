//! What seats cost. Pure logic, no I/O: the monthly billing period a moment
//! falls in ([`period`]) and the period's invoice lines, prorated by the
//! day for seat changes within it ([`invoice`]). The gateway keeps the seat
//! ledger these are computed from; a billing provider (local or Stripe)
//! decides who actually charges.

pub mod invoice;
pub mod period;

pub use invoice::{InvoiceLine, SeatChange, invoice_lines};
pub use period::{Period, period_containing};

mod provider;

pub use provider::{BillingError, BillingProvider, LocalBilling, SeatUpdate};
