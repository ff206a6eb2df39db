//! The knowledge service: owns the framework corpus and answers lookups from
//! the conversation service. It is internal; the gateway never exposes it.

pub mod config;
mod frameworks;
mod ranking;
mod startup;

pub use config::{KnowledgeConfig, SCHEMA};
pub use startup::{Application, KnowledgeService, migrate};
