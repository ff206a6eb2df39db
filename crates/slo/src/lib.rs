//! SLOs as code.
//!
//! `slo/*.yaml` holds OpenSLO v1 specs ([`openslo`]); [`catalog`] resolves
//! them; [`generate`] turns them into Prometheus recording and alerting
//! rules, promtool unit tests for those rules, Grafana dashboards and the
//! table in `slo/public-api.md`. [`maths`] is the error-budget arithmetic,
//! the same the rules compute, for callers holding the numbers themselves.
//!
//! Everything here is pure: strings and structs in, strings out. Reading
//! and writing files is the `tp slo` command's job.

pub mod catalog;
pub mod dashboards;
pub mod duration;
pub mod generate;
pub mod live;
pub mod maths;
pub mod openslo;
pub mod promtests;
pub mod rules;
pub mod selector;

pub use catalog::{Catalog, RpcPromise, SloDefinition, SpecFile};
pub use duration::Duration;
pub use generate::{GeneratedFile, generate};
pub use maths::{
    AlertDecision, BurnWindow, CalendarMonth, Exhaustion, Objective, Severity, budget_remaining,
    burn_rate, calendar_month, decide_alerts, error_ratio, project_exhaustion,
    workbook_burn_windows,
};

#[derive(Debug, thiserror::Error)]
pub enum SloError {
    #[error("invalid duration {0:?} (expected a whole number and s, m, h, d or w)")]
    InvalidDuration(String),
    #[error("invalid objective target {0} (expected strictly between 0 and 1)")]
    InvalidTarget(f64),
    #[error("invalid series selector {selector:?}: {why}")]
    InvalidSelector { selector: String, why: String },
    #[error("YAML document {document}: {source}")]
    Yaml {
        document: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{name}: {why}")]
    Invalid { name: String, why: String },
}

impl SloError {
    pub(crate) fn invalid(name: &str, why: &str) -> Self {
        SloError::Invalid {
            name: name.to_owned(),
            why: why.to_owned(),
        }
    }
}
