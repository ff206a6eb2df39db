//! The specs resolved into what the generator needs: each SLO with its
//! indicator, objective, window and burn-rate conditions, checked for
//! dangling references and for features we do not generate.

use std::collections::{BTreeMap, BTreeSet};

use crate::SloError;
use crate::duration::Duration;
use crate::maths::{BurnWindow, Objective, Severity};
use crate::openslo::{BudgetingMethod, ComparisonOp, Document};
use crate::selector::{MatchOp, Selector};

/// The one label an SLO may be broken down by (see schema.toml: the only
/// identifier allowed on a metric).
pub const TENANT_LABEL: &str = "tp_tenant_id";

/// Annotation on an SLO asking for a per-tenant breakdown.
pub const BREAKDOWN_ANNOTATION: &str = "thoughtpartner.io/breakdown-by";

/// The RED histogram our gateway exports, whose series name an RPC.
const RPC_DURATION_COUNT: &str = "rpc_server_call_duration_seconds_count";
const RPC_DURATION_BUCKET: &str = "rpc_server_call_duration_seconds_bucket";

/// A spec file: its stem (`conversation` for `slo/conversation.yaml`) and
/// its documents.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecFile {
    pub stem: String,
    pub documents: Vec<Document>,
}

/// How an SLI counts: bad or good events over all events, each a selector
/// over counters.
#[derive(Debug, Clone, PartialEq)]
pub enum Ratio {
    BadOverTotal { bad: Selector, total: Selector },
    GoodOverTotal { good: Selector, total: Selector },
}

impl Ratio {
    pub fn total(&self) -> &Selector {
        match self {
            Ratio::BadOverTotal { total, .. } | Ratio::GoodOverTotal { total, .. } => total,
        }
    }
}

/// What an SLO promises about a public RPC, read from its query (not from
/// a label someone could forget to update).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RpcPromise {
    Availability,
    Latency,
}

/// One multi-window burn-rate alert of an SLO.
#[derive(Debug, Clone, PartialEq)]
pub struct BurnAlert {
    /// The alert condition's name, e.g. `page-1h`.
    pub name: String,
    pub window: BurnWindow,
    pub op: ComparisonOp,
    pub alert_after: Duration,
    pub description: String,
}

impl BurnAlert {
    /// The Prometheus alert name: `SloErrorBudgetBurn` and the condition's
    /// name in Pascal case (`page-1h` → `SloErrorBudgetBurnPage1h`).
    pub fn alert_name(&self) -> String {
        let mut name = String::from("SloErrorBudgetBurn");
        for part in self.name.split(['-', '_']) {
            let mut chars = part.chars();
            if let Some(first) = chars.next() {
                name.extend(first.to_uppercase());
                name.push_str(chars.as_str());
            }
        }
        name
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDefinition {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub spec_file: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SloDefinition {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub service: String,
    pub spec_file: String,
    pub objective: Objective,
    pub window: Duration,
    pub ratio: Ratio,
    pub breakdown: Option<String>,
    pub alerts: Vec<BurnAlert>,
}

impl SloDefinition {
    /// The public RPC (`ConversationService/SendMessage`) and what this
    /// SLO promises about it, when its query is the gateway's RED
    /// histogram for one method: availability when bad events are the
    /// server errors (`error_type` set), latency when good events are a
    /// bucket of the same calls.
    pub fn rpc_promise(&self) -> Option<(String, RpcPromise)> {
        let total = self.ratio.total();
        if total.metric != RPC_DURATION_COUNT || total.equal("tp_component") != Some("gateway") {
            return None;
        }
        let method = total.equal("rpc_method")?;
        let rpc = method.strip_prefix("thoughtpartner.v1.")?.to_owned();
        match &self.ratio {
            Ratio::BadOverTotal { bad, .. } => {
                let counts_server_errors = bad.metric == RPC_DURATION_COUNT
                    && bad
                        .matcher("error_type")
                        .is_some_and(|m| m.op == MatchOp::NotEqual && m.value.is_empty())
                    && total.matchers.iter().all(|m| bad.matchers.contains(m));
                counts_server_errors.then_some((rpc, RpcPromise::Availability))
            }
            Ratio::GoodOverTotal { good, .. } => {
                let same_calls = total.matchers.iter().all(|m| good.matchers.contains(m));
                (good.metric == RPC_DURATION_BUCKET && good.matcher("le").is_some() && same_calls)
                    .then_some((rpc, RpcPromise::Latency))
            }
        }
    }
}

/// Every service and SLO of the spec files, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    pub services: Vec<ServiceDefinition>,
    pub slos: Vec<SloDefinition>,
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl Catalog {
    pub fn resolve(files: &[SpecFile]) -> Result<Self, SloError> {
        let mut services = Vec::new();
        let mut slis = BTreeMap::new();
        let mut policies = BTreeMap::new();
        let mut slo_documents = Vec::new();
        let mut seen = BTreeSet::new();
        for file in files {
            for document in &file.documents {
                let kind = match document {
                    Document::Service(_) => "Service",
                    Document::Sli(_) => "SLI",
                    Document::Slo(_) => "SLO",
                    Document::AlertPolicy(_) => "AlertPolicy",
                };
                let name = document.name();
                if !is_valid_name(name) {
                    return Err(SloError::invalid(
                        name,
                        "names are lowercase, digits and dashes",
                    ));
                }
                if !seen.insert((kind, name.to_owned())) {
                    return Err(SloError::invalid(
                        name,
                        &format!("a second {kind} of this name"),
                    ));
                }
                match document {
                    Document::Service(service) => services.push(ServiceDefinition {
                        name: service.metadata.name.clone(),
                        display_name: service
                            .metadata
                            .display_name
                            .clone()
                            .unwrap_or_else(|| service.metadata.name.clone()),
                        description: service.spec.description.clone().unwrap_or_default(),
                        spec_file: file.stem.clone(),
                    }),
                    Document::Sli(sli) => {
                        slis.insert(sli.metadata.name.clone(), sli);
                    }
                    Document::AlertPolicy(policy) => {
                        policies.insert(policy.metadata.name.clone(), policy);
                    }
                    Document::Slo(slo) => slo_documents.push((file.stem.clone(), slo)),
                }
            }
        }

        let mut slos = Vec::new();
        for (spec_file, slo) in slo_documents {
            let name = &slo.metadata.name;
            let spec = &slo.spec;
            if !services.iter().any(|s| s.name == spec.service) {
                return Err(SloError::invalid(
                    name,
                    &format!("no Service {}", spec.service),
                ));
            }
            let sli = slis.get(&spec.indicator_ref).ok_or_else(|| {
                SloError::invalid(name, &format!("no SLI {}", spec.indicator_ref))
            })?;
            let [window] = spec.time_window.as_slice() else {
                return Err(SloError::invalid(name, "exactly one timeWindow"));
            };
            if window.duration.seconds() == 0 {
                return Err(SloError::invalid(name, "an empty timeWindow"));
            }
            if !window.is_rolling || window.calendar.is_some() {
                return Err(SloError::invalid(
                    name,
                    "the timeWindow must be rolling (calendar months are reported for every SLO)",
                ));
            }
            if spec.budgeting_method != BudgetingMethod::Occurrences {
                return Err(SloError::invalid(
                    name,
                    "only Occurrences budgeting is generated",
                ));
            }
            let [objective] = spec.objectives.as_slice() else {
                return Err(SloError::invalid(name, "exactly one objective"));
            };
            let objective = Objective::new(objective.target)?;
            let ratio = resolve_ratio(&sli.metadata.name, &sli.spec.ratio_metric)?;
            let breakdown = slo.metadata.annotations.get(BREAKDOWN_ANNOTATION).cloned();
            if let Some(label) = &breakdown
                && label != TENANT_LABEL
            {
                return Err(SloError::invalid(
                    name,
                    &format!("only a breakdown by {TENANT_LABEL} is supported"),
                ));
            }
            let mut alerts = Vec::new();
            for reference in &spec.alert_policies {
                let policy = policies.get(&reference.alert_policy_ref).ok_or_else(|| {
                    SloError::invalid(
                        name,
                        &format!("no AlertPolicy {}", reference.alert_policy_ref),
                    )
                })?;
                if policy.spec.alert_when_no_data || !policy.spec.alert_when_breaching {
                    return Err(SloError::invalid(
                        &policy.metadata.name,
                        "only alertWhenBreaching policies without alertWhenNoData are generated",
                    ));
                }
                for condition in &policy.spec.conditions {
                    let severity = Severity::parse(&condition.spec.severity).ok_or_else(|| {
                        SloError::invalid(&condition.metadata.name, "severity is page or ticket")
                    })?;
                    let burn = &condition.spec.condition;
                    if !matches!(burn.op, ComparisonOp::Gt | ComparisonOp::Gte)
                        || !burn.threshold.is_finite()
                        || burn.threshold <= 0.0
                    {
                        return Err(SloError::invalid(
                            &condition.metadata.name,
                            "a burn-rate condition is gt or gte a positive threshold",
                        ));
                    }
                    if burn.lookback_window.seconds() == 0
                        || !burn.lookback_window.seconds().is_multiple_of(12)
                    {
                        return Err(SloError::invalid(
                            &condition.metadata.name,
                            "the lookback window must divide by 12 (the short window)",
                        ));
                    }
                    alerts.push(BurnAlert {
                        name: condition.metadata.name.clone(),
                        window: BurnWindow::with_workbook_short_window(
                            severity,
                            burn.threshold,
                            burn.lookback_window,
                        ),
                        op: burn.op,
                        alert_after: burn.alert_after,
                        description: condition.spec.description.clone().unwrap_or_default(),
                    });
                }
            }
            slos.push(SloDefinition {
                name: name.clone(),
                display_name: slo
                    .metadata
                    .display_name
                    .clone()
                    .unwrap_or_else(|| name.clone()),
                description: spec.description.clone().unwrap_or_default(),
                service: spec.service.clone(),
                spec_file,
                objective,
                window: window.duration,
                ratio,
                breakdown,
                alerts,
            });
        }
        Ok(Catalog { services, slos })
    }

    /// What each public RPC is promised, by `Service/Method`.
    pub fn rpc_promises(&self) -> BTreeMap<String, BTreeSet<RpcPromise>> {
        let mut promises: BTreeMap<String, BTreeSet<RpcPromise>> = BTreeMap::new();
        for slo in &self.slos {
            if let Some((rpc, promise)) = slo.rpc_promise() {
                promises.entry(rpc).or_default().insert(promise);
            }
        }
        promises
    }
}

fn resolve_ratio(name: &str, metric: &crate::openslo::RatioMetric) -> Result<Ratio, SloError> {
    if !metric.counter {
        return Err(SloError::invalid(name, "ratioMetric.counter must be true"));
    }
    let selector = |spec: &crate::openslo::MetricSpec| -> Result<Selector, SloError> {
        if spec.metric_source.source_type != "Prometheus" {
            return Err(SloError::invalid(
                name,
                "metricSource.type must be Prometheus",
            ));
        }
        spec.metric_source.spec.query.parse()
    };
    let total = selector(&metric.total)?;
    match (&metric.good, &metric.bad) {
        (Some(good), None) => Ok(Ratio::GoodOverTotal {
            good: selector(good)?,
            total,
        }),
        (None, Some(bad)) => Ok(Ratio::BadOverTotal {
            bad: selector(bad)?,
            total,
        }),
        _ => Err(SloError::invalid(name, "exactly one of good and bad")),
    }
}
