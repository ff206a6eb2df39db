//! The knowledge service: owns the built-in corpus (frameworks, topics,
//! sources) and the tenants' own documents, and ranks them with Postgres
//! full-text search. It serves the public `KnowledgeService` (through the
//! gateway) and the internal `RetrievalService` (to conversation).

pub mod config;
pub mod corpus;
mod handlers;
pub mod passages;
mod retrieval;
pub mod search;
mod startup;
pub mod store;
mod synonyms;

pub use config::{KnowledgeConfig, SCHEMA};
pub use startup::{Application, KnowledgeService, migrate};
