//! What the load generator shares with the benchmarks in `tests/benches`
//! and the fault tests in `tests/tests/process_faults.rs`.

pub mod handbook;
pub mod stack;
