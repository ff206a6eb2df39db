//! What the load generator shares with the benchmarks in `tests/benches`
//! and the process tests in `tests/tests` (`process_faults.rs`,
//! `export_memory.rs`, `span_export.rs`).

pub mod callgrind;
pub mod handbook;
pub mod otlp;
pub mod procstat;
pub mod stack;
pub mod transcript;
