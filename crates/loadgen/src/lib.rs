//! What the load generator shares with the benchmarks in `tests/benches`.

pub mod handbook;
