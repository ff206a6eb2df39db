//! Prometheus recording and alerting rules for one SLO.
//!
//! Every recorded series carries `tp_slo` and `tp_service` and nothing else,
//! so rules and dashboards can divide and compare them without `on()`.
//!
//! Guards against empty and NaN results:
//! - An error ratio divides by the request rate filtered with `> 0`, so a
//!   window without calls yields no sample instead of 0/0 = NaN, and the
//!   `or` fallback then reports an error ratio of 0 (nothing burnt).
//!   Per tenant the fallback is `0 * requests`, which keeps every tenant
//!   that still has series, each at 0 when idle.
//! - Bad events default to 0 (`or vector(0)`): the series of server errors
//!   appears only with the first error.
//! - Good events never default to the total: if the good series are missing
//!   (a histogram bucket renamed), every call counts as bad and the SLO
//!   turns red instead of silently green.

use serde::Serialize;

use crate::SloError;
use crate::catalog::{BurnAlert, Ratio, SloDefinition, TENANT_LABEL};
use crate::duration::Duration;

/// Windows every SLI ratio is recorded over: the short and long windows of
/// the workbook's four burn-rate conditions.
pub const SLI_WINDOWS: [Duration; 7] = [
    Duration::minutes(5),
    Duration::minutes(30),
    Duration::hours(1),
    Duration::hours(2),
    Duration::hours(6),
    Duration::days(1),
    Duration::days(3),
];

/// Windows of the per-tenant breakdown (dashboards only: what a tenant
/// feels now, over the last hour, over the last day).
pub const TENANT_WINDOWS: [Duration; 3] =
    [Duration::minutes(5), Duration::hours(1), Duration::days(1)];

/// Budgets add up hourly rates, sampled once an hour: cheap over 28 days,
/// and an hour boundary is also a month boundary.
pub const BUDGET_STEP: Duration = Duration::hours(1);

/// The longest calendar month: the range a month-to-date sum looks back over.
const LONGEST_MONTH: Duration = Duration::days(31);

/// How often the budget group runs: its sums look back weeks, so a few
/// minutes' staleness costs nothing.
pub const BUDGET_INTERVAL: Duration = Duration::minutes(5);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleFile {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleGroup {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    pub expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// A number as PromQL and YAML write it: no float noise (`1 - 0.999`
/// prints as 0.001), no trailing zeros.
pub fn number(value: f64) -> String {
    let rounded = format!("{value:.10}");
    let trimmed = rounded.trim_end_matches('0').trim_end_matches('.');
    if trimmed.is_empty() || trimmed == "-" {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Names of the recorded series.
pub mod names {
    use crate::duration::Duration;

    pub const OBJECTIVE: &str = "tp_slo:objective:ratio";
    pub const REQUESTS_RATE_BUDGET_STEP: &str = "tp_slo:requests:rate1h";
    pub const ERRORS_RATE_BUDGET_STEP: &str = "tp_slo:errors:rate1h";
    pub const REQUESTS_ROLLING: &str = "tp_slo:requests:rolling_window";
    pub const ERRORS_ROLLING: &str = "tp_slo:errors:rolling_window";
    pub const BUDGET_REMAINING_ROLLING: &str = "tp_slo:error_budget_remaining:rolling_window";
    pub const REQUESTS_MONTH: &str = "tp_slo:requests:month_to_date";
    pub const ERRORS_MONTH: &str = "tp_slo:errors:month_to_date";
    pub const BUDGET_REMAINING_MONTH: &str = "tp_slo:error_budget_remaining:month_to_date";
    pub const EXHAUSTION_SECONDS: &str = "tp_slo:error_budget_exhaustion_seconds:burn_rate1h";

    pub fn error_ratio(window: Duration) -> String {
        format!("tp_slo:error_ratio:rate{window}")
    }

    pub fn burn_rate(window: Duration) -> String {
        format!("tp_slo:burn_rate:rate{window}")
    }

    pub fn tenant_error_ratio(window: Duration) -> String {
        format!("tp_slo_tenant:error_ratio:rate{window}")
    }
}

/// The PromQL an SLO's rules are made of.
pub struct Expressions<'a> {
    slo: &'a SloDefinition,
}

impl<'a> Expressions<'a> {
    pub fn new(slo: &'a SloDefinition) -> Self {
        Self { slo }
    }

    /// A recorded series of this SLO.
    pub fn series(&self, name: &str) -> String {
        format!("{name}{{tp_slo=\"{}\"}}", self.slo.name)
    }

    fn aggregate(by: Option<&str>) -> String {
        match by {
            Some(label) => format!("sum by ({label}) "),
            None => "sum".to_owned(),
        }
    }

    /// Calls per second over `window`.
    pub fn requests(&self, window: Duration, by: Option<&str>) -> String {
        format!(
            "{}(rate({}[{window}]))",
            Self::aggregate(by),
            self.slo.ratio.total()
        )
    }

    /// What stands in for a missing side: 0 overall, 0 for each tenant
    /// that has calls.
    fn zero(&self, window: Duration, by: Option<&str>) -> String {
        match by {
            Some(_) => format!("0 * {}", self.requests(window, by)),
            // `on ()`: stands in only when the left side is empty.
            None => "on () vector(0)".to_owned(),
        }
    }

    /// Bad calls per second over `window`.
    pub fn errors(&self, window: Duration, by: Option<&str>) -> String {
        let aggregate = Self::aggregate(by);
        let zero = self.zero(window, by);
        match &self.slo.ratio {
            Ratio::BadOverTotal { bad, .. } => {
                format!("({aggregate}(rate({bad}[{window}])) or {zero})")
            }
            Ratio::GoodOverTotal { good, .. } => format!(
                "({} - ({aggregate}(rate({good}[{window}])) or {zero}))",
                self.requests(window, by)
            ),
        }
    }

    /// Bad calls over all calls in `window`; 0 without calls, never NaN.
    pub fn error_ratio(&self, window: Duration, by: Option<&str>) -> String {
        format!(
            "{} / ({} > 0) or {}",
            self.errors(window, by),
            self.requests(window, by),
            self.zero(window, by)
        )
    }

    /// The sum of an hourly rate's samples at each hour in `range`, in
    /// events. Only hours whose hourly rate fell within the range count,
    /// so nothing from before the range is used.
    fn hourly_events(&self, rate_series: &str, range: Duration) -> String {
        format!(
            "sum_over_time({}[{}:{BUDGET_STEP}]) * {}",
            self.series(rate_series),
            range.prometheus_range_excluding_start(),
            BUDGET_STEP.seconds()
        )
    }

    /// Events since the start of the current UTC calendar month.
    ///
    /// PromQL ranges are fixed, and a subquery cannot see the time it is
    /// evaluated for, only each inner step's own. So each inner hourly
    /// sample is kept only if the hour it covers (`time() - 3600`) falls in
    /// a month with a given residue mod 3, and the outer result is taken
    /// from the residue of the current month. A 31-day range spans at most
    /// three consecutive months, whose residues differ, so exactly the
    /// current month's hours are summed: at 00:30 on the 1st that is none
    /// (0 events, a full budget), and never an hour of the month before.
    fn month_to_date_events(&self, rate_series: &str) -> String {
        let step = BUDGET_STEP.seconds();
        let branches: Vec<String> = (0..3)
            .map(|residue| {
                format!(
                    "sum_over_time(({} and on () (month(vector(time() - {step})) % 3 == {residue}))[{LONGEST_MONTH}:{BUDGET_STEP}]) and on () (month(vector(time())) % 3 == {residue})",
                    self.series(rate_series)
                )
            })
            .collect();
        format!("({}) * {step} or on () vector(0)", branches.join(" or "))
    }

    /// `1 - errors / (budget * requests)`, 1 (the whole budget) without calls.
    fn budget_remaining(&self, errors: &str, requests: &str) -> String {
        format!(
            "1 - ({} / ({} > 0)) / {} or on () vector(1)",
            self.series(errors),
            self.series(requests),
            number(self.slo.objective.error_budget())
        )
    }
}

fn labels(slo: &SloDefinition) -> std::collections::BTreeMap<String, String> {
    [
        ("tp_slo".to_owned(), slo.name.clone()),
        ("tp_service".to_owned(), slo.service.clone()),
    ]
    .into()
}

fn record(name: impl Into<String>, expr: String, slo: &SloDefinition) -> Rule {
    Rule {
        record: Some(name.into()),
        alert: None,
        expr,
        for_: None,
        labels: labels(slo),
        annotations: Default::default(),
    }
}

/// The labels an alert adds to the SLO's own.
pub fn alert_labels(alert: &BurnAlert) -> std::collections::BTreeMap<String, String> {
    [
        (
            "severity".to_owned(),
            alert.window.severity.as_str().to_owned(),
        ),
        ("long_window".to_owned(), alert.window.long.to_string()),
        ("short_window".to_owned(), alert.window.short.to_string()),
    ]
    .into()
}

/// An alert's annotations: fixed text (no `$value`), so the promtool tests
/// can expect them exactly.
pub fn alert_annotations(
    slo: &SloDefinition,
    alert: &BurnAlert,
) -> std::collections::BTreeMap<String, String> {
    let window = alert.window;
    let spent = 100.0 * window.budget_consumed(slo.window);
    [
        (
            "summary".to_owned(),
            format!(
                "{} is spending its error budget more than {}x as fast as the objective allows",
                slo.display_name,
                number(window.burn_rate)
            ),
        ),
        (
            "description".to_owned(),
            format!(
                "Burn rate above {} over both the last {} and the last {} (objective {} over {}): \
                 {}% of the {} budget goes in {} at this rate. {}",
                number(window.burn_rate),
                window.long,
                window.short,
                number(slo.objective.target()),
                slo.window,
                number((spent * 10.0).round() / 10.0),
                slo.window,
                window.long,
                alert.description
            )
            .trim_end()
            .to_owned(),
        ),
    ]
    .into()
}

fn alert_rule(slo: &SloDefinition, alert: &BurnAlert) -> Rule {
    let expressions = Expressions::new(slo);
    let op = alert.op.promql();
    let threshold = number(alert.window.burn_rate);
    let mut rule_labels = labels(slo);
    rule_labels.extend(alert_labels(alert));
    Rule {
        record: None,
        alert: Some(alert.alert_name()),
        expr: format!(
            "{} {op} {threshold} and {} {op} {threshold}",
            expressions.series(&names::burn_rate(alert.window.long)),
            expressions.series(&names::burn_rate(alert.window.short)),
        ),
        for_: (alert.alert_after.seconds() > 0).then(|| alert.alert_after.to_string()),
        labels: rule_labels,
        annotations: alert_annotations(slo, alert),
    }
}

/// The two rule files of one SLO: its SLIs, burn rates and alerts in one
/// group (alerts after the burn rates they read, so they see the same
/// evaluation's values); its budgets in a second, slower group, in a file
/// of its own so the alert tests need not evaluate its 28-day sums.
pub fn rule_files(slo: &SloDefinition) -> (RuleFile, RuleFile) {
    let expressions = Expressions::new(slo);
    let budget = number(slo.objective.error_budget());
    let mut sli_rules = vec![
        record(
            names::OBJECTIVE,
            format!("vector({})", number(slo.objective.target())),
            slo,
        ),
        record(
            names::REQUESTS_RATE_BUDGET_STEP,
            format!(
                "{} or on () vector(0)",
                expressions.requests(BUDGET_STEP, None)
            ),
            slo,
        ),
        record(
            names::ERRORS_RATE_BUDGET_STEP,
            match slo.ratio {
                // Already 0 when there are no bad events.
                Ratio::BadOverTotal { .. } => expressions.errors(BUDGET_STEP, None),
                // Empty without calls at all.
                Ratio::GoodOverTotal { .. } => format!(
                    "{} or on () vector(0)",
                    expressions.errors(BUDGET_STEP, None)
                ),
            },
            slo,
        ),
    ];
    for window in SLI_WINDOWS {
        sli_rules.push(record(
            names::error_ratio(window),
            expressions.error_ratio(window, None),
            slo,
        ));
    }
    for window in SLI_WINDOWS {
        sli_rules.push(record(
            names::burn_rate(window),
            format!(
                "{} / {budget}",
                expressions.series(&names::error_ratio(window))
            ),
            slo,
        ));
    }
    if slo.breakdown.is_some() {
        for window in TENANT_WINDOWS {
            sli_rules.push(record(
                names::tenant_error_ratio(window),
                expressions.error_ratio(window, Some(TENANT_LABEL)),
                slo,
            ));
        }
    }
    sli_rules.extend(slo.alerts.iter().map(|alert| alert_rule(slo, alert)));

    let budget_rules = vec![
        record(
            names::REQUESTS_ROLLING,
            format!(
                "{} or on () vector(0)",
                expressions.hourly_events(names::REQUESTS_RATE_BUDGET_STEP, slo.window)
            ),
            slo,
        ),
        record(
            names::ERRORS_ROLLING,
            format!(
                "{} or on () vector(0)",
                expressions.hourly_events(names::ERRORS_RATE_BUDGET_STEP, slo.window)
            ),
            slo,
        ),
        record(
            names::BUDGET_REMAINING_ROLLING,
            expressions.budget_remaining(names::ERRORS_ROLLING, names::REQUESTS_ROLLING),
            slo,
        ),
        record(
            names::REQUESTS_MONTH,
            expressions.month_to_date_events(names::REQUESTS_RATE_BUDGET_STEP),
            slo,
        ),
        record(
            names::ERRORS_MONTH,
            expressions.month_to_date_events(names::ERRORS_RATE_BUDGET_STEP),
            slo,
        ),
        record(
            names::BUDGET_REMAINING_MONTH,
            expressions.budget_remaining(names::ERRORS_MONTH, names::REQUESTS_MONTH),
            slo,
        ),
        // At the last hour's burn rate a whole budget lasts one SLO window
        // (see tp_slo::maths::project_exhaustion); none left is 0; not
        // burning is no sample (never).
        record(
            names::EXHAUSTION_SECONDS,
            format!(
                "clamp_min({}, 0) * {} / ({} > 0)",
                expressions.series(names::BUDGET_REMAINING_ROLLING),
                slo.window.seconds(),
                expressions.series(&names::burn_rate(Duration::hours(1)))
            ),
            slo,
        ),
    ];

    (
        RuleFile {
            groups: vec![RuleGroup {
                name: format!("slo-{}", slo.name),
                interval: None,
                rules: sli_rules,
            }],
        },
        RuleFile {
            groups: vec![RuleGroup {
                name: format!("slo-{}-budget", slo.name),
                interval: Some(BUDGET_INTERVAL.to_string()),
                rules: budget_rules,
            }],
        },
    )
}

/// A rule file as YAML with a header naming its source.
pub fn render_rule_file(slo: &SloDefinition, file: &RuleFile) -> Result<String, SloError> {
    let body = serde_yaml_ng::to_string(file).map_err(|source| SloError::Yaml {
        document: 0,
        source,
    })?;
    Ok(format!(
        "# Generated by `tp slo generate` from slo/{}.yaml (SLO {}). Do not edit.\n{body}",
        slo.spec_file, slo.name
    ))
}
