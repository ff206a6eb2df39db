//! The gateway: the only public entry point. It authenticates every call
//! (bearer JWT, in [`tp_auth::AuthLayer`]), decides whether the caller may
//! do what they ask (roles, membership, seats), and forwards conversation
//! calls to the conversation service with the verified tenant and user in
//! metadata. Only the gateway sees tokens.

mod access;
mod audit;
mod billing;
pub mod config;
mod conversations;
mod forward;
mod members;
pub mod membership;
pub mod policy;
mod quota;
pub mod retention;
pub mod seats;
mod settings;
pub mod slo_status;
mod startup;
mod subscription;
mod tenants;
mod web;
mod webhook;

pub use config::{BillingProviderKind, GatewayConfig, SCHEMA};
pub use startup::{Application, GatewayService, migrate};
