//! The conversation service: conversations, transcripts and the reply
//! pipeline. It trusts the tenant and user the gateway put in metadata
//! (checked by [`tp_context::RequireContextLayer`]) and lets row-level
//! security enforce the tenant in every query.

pub mod config;
mod error;
pub mod export;
mod handler;
mod prompt;
mod reply;
mod retention;
pub mod search;
mod startup;
mod store;
mod turn_facts;
mod usage;
mod validate;

pub use config::{ConversationConfig, LlmProvider, SCHEMA};
pub use startup::{Application, ConversationService, migrate, migrate_to};
pub use store::{MAX_TRANSCRIPT_MESSAGES, REPLY_LEASE};
