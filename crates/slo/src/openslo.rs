//! The OpenSLO v1 documents we write in `slo/*.yaml`: `Service`, `SLI`,
//! `SLO` and `AlertPolicy` (with inline `AlertCondition`s).
//!
//! Only the parts of the specification we use are modelled, and unknown
//! fields are refused: a misspelt field must fail the build, not be ignored.
//! Parsing then serialising gives back equal documents.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::SloError;
use crate::duration::Duration;

/// `apiVersion: openslo/v1`, the only version we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiVersion {
    #[serde(rename = "openslo/v1")]
    V1,
}

/// One YAML document of a spec file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Document {
    Service(Service),
    #[serde(rename = "SLI")]
    Sli(Sli),
    #[serde(rename = "SLO")]
    Slo(Slo),
    AlertPolicy(AlertPolicy),
}

impl Document {
    pub fn name(&self) -> &str {
        match self {
            Document::Service(d) => &d.metadata.name,
            Document::Sli(d) => &d.metadata.name,
            Document::Slo(d) => &d.metadata.name,
            Document::AlertPolicy(d) => &d.metadata.name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub api_version: ApiVersion,
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sli {
    pub api_version: ApiVersion,
    pub metadata: Metadata,
    pub spec: SliSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SliSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub ratio_metric: RatioMetric,
}

/// good/total or bad/total, each a Prometheus series selector over counters
/// (the generator wraps them in `rate()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RatioMetric {
    pub counter: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub good: Option<MetricSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad: Option<MetricSpec>,
    pub total: MetricSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSpec {
    pub metric_source: MetricSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_source_ref: Option<String>,
    /// `Prometheus`: the only source the generator understands.
    #[serde(rename = "type")]
    pub source_type: String,
    pub spec: PrometheusQuery,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusQuery {
    /// A series selector: `metric{label="value",...}`.
    pub query: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Slo {
    pub api_version: ApiVersion,
    pub metadata: Metadata,
    pub spec: SloSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SloSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub service: String,
    pub indicator_ref: String,
    pub time_window: Vec<TimeWindow>,
    pub budgeting_method: BudgetingMethod,
    pub objectives: Vec<ObjectiveSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_policies: Vec<AlertPolicyRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeWindow {
    pub duration: Duration,
    pub is_rolling: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar: Option<Calendar>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Calendar {
    pub start_time: String,
    pub time_zone: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BudgetingMethod {
    /// Good events over all events: the only method the generator supports.
    Occurrences,
    Timeslices,
    RatioTimeslices,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectiveSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub target: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertPolicyRef {
    pub alert_policy_ref: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertPolicy {
    pub api_version: ApiVersion,
    pub metadata: Metadata,
    pub spec: AlertPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub alert_when_no_data: bool,
    pub alert_when_resolved: bool,
    pub alert_when_breaching: bool,
    pub conditions: Vec<InlineAlertCondition>,
}

/// An `AlertCondition` written inside its policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InlineAlertCondition {
    pub kind: AlertConditionKind,
    pub metadata: Metadata,
    pub spec: AlertConditionSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlertConditionKind {
    AlertCondition,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertConditionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `page` or `ticket`: becomes the alert's `severity` label.
    pub severity: String,
    pub condition: BurnRateCondition,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BurnRateCondition {
    pub kind: ConditionKind,
    pub op: ComparisonOp,
    /// The burn rate (multiple of the sustainable error rate).
    pub threshold: f64,
    /// The long window; the short window is a twelfth of it (SRE workbook).
    pub lookback_window: Duration,
    /// How long the condition must hold: the rule's `for:`.
    pub alert_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionKind {
    #[serde(rename = "burnrate")]
    BurnRate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComparisonOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl ComparisonOp {
    pub fn promql(self) -> &'static str {
        match self {
            ComparisonOp::Gt => ">",
            ComparisonOp::Gte => ">=",
            ComparisonOp::Lt => "<",
            ComparisonOp::Lte => "<=",
        }
    }
}

/// Every document of a (multi-document) YAML file.
pub fn parse_documents(yaml: &str) -> Result<Vec<Document>, SloError> {
    use serde::Deserialize as _;
    let mut documents = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let parsed = Document::deserialize(document).map_err(|source| SloError::Yaml {
            document: index + 1,
            source,
        })?;
        documents.push(parsed);
    }
    Ok(documents)
}

/// The documents as one multi-document YAML file.
pub fn to_yaml(documents: &[Document]) -> Result<String, SloError> {
    let mut yaml = String::new();
    for document in documents {
        yaml.push_str("---\n");
        yaml.push_str(
            &serde_yaml_ng::to_string(document).map_err(|source| SloError::Yaml {
                document: 0,
                source,
            })?,
        );
    }
    Ok(yaml)
}
