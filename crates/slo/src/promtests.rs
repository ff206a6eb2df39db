//! promtool unit tests for an SLO's rules, fed with synthetic series that
//! match its SLI's selectors.
//!
//! For each burn-rate alert (threshold T, long window W, short S = W/12):
//! calls fail at 0.9·T for W + S, and the alert must stay silent; then at
//! 1.2·T, and it must fire when the long window's burn crosses T, a third
//! of W later (see [`burn_alert_group`]).
//! Separate scenarios check the budgets (rolling and calendar month) and
//! the exhaustion projection against [`crate::maths`], and that a tenant
//! without calls in a window gets an error ratio of 0, never NaN.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::SloError;
use crate::catalog::{BurnAlert, Ratio, SloDefinition, TENANT_LABEL};
use crate::duration::Duration;
use crate::maths::{self, Exhaustion};
use crate::rules::{self, alert_annotations, alert_labels, names, number};
use crate::selector::{MatchOp, Selector};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestFile {
    pub rule_files: Vec<String>,
    pub evaluation_interval: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub group_eval_order: Vec<String>,
    pub tests: Vec<TestGroup>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestGroup {
    pub name: String,
    pub interval: String,
    pub input_series: Vec<InputSeries>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alert_rule_test: Vec<AlertTest>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub promql_expr_test: Vec<ExprTest>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputSeries {
    pub series: String,
    pub values: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertTest {
    pub eval_time: String,
    pub alertname: String,
    pub exp_alerts: Vec<ExpectedAlert>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExpectedAlert {
    pub exp_labels: BTreeMap<String, String>,
    pub exp_annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExprTest {
    pub expr: String,
    pub eval_time: String,
    pub exp_samples: Vec<ExpectedSample>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExpectedSample {
    pub labels: String,
    pub value: f64,
}

/// Which share of the calls a synthetic series counts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Share {
    Good,
    Bad,
    All,
}

/// A stretch of steps with a constant number of calls per step, of which
/// `error_share` fail.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Phase {
    steps: u64,
    calls: f64,
    error_share: f64,
}

impl Share {
    fn increment(self, phase: &Phase) -> f64 {
        match self {
            Share::Good => phase.calls * (1.0 - phase.error_share),
            Share::Bad => phase.calls * phase.error_share,
            Share::All => phase.calls,
        }
    }
}

/// A counter in promtool's expanding notation: 0 at the start, then each
/// phase's increment per step.
fn counter_values(share: Share, phases: &[Phase]) -> String {
    let mut parts = vec!["0".to_owned()];
    let mut value = 0.0;
    for phase in phases.iter().filter(|p| p.steps > 0) {
        let increment = share.increment(phase);
        parts.push(format!(
            "{}+{}x{}",
            number(value + increment),
            number(increment),
            phase.steps - 1
        ));
        value += increment * phase.steps as f64;
    }
    parts.join(" ")
}

/// A label value that satisfies `matcher`.
fn satisfying_value(matcher: &crate::selector::Matcher) -> String {
    match matcher.op {
        MatchOp::Equal => matcher.value.clone(),
        // The first alternative, unescaped: `1|1\.0` → `1`.
        MatchOp::Regex => matcher
            .value
            .split('|')
            .next()
            .unwrap_or_default()
            .replace('\\', ""),
        MatchOp::NotEqual | MatchOp::NotRegex => "synthetic".to_owned(),
    }
}

fn series_text(metric: &str, labels: &BTreeMap<String, String>) -> String {
    let body: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{metric}{{{}}}", body.join(","))
}

fn labels_of(selector: &Selector) -> BTreeMap<String, String> {
    selector
        .matchers
        .iter()
        .map(|m| (m.label.clone(), satisfying_value(m)))
        .collect()
}

/// Series whose sums make the SLI see `Good`/`Bad`/`All` calls: a bad
/// series and a good one for bad/total; a good series and the total (or,
/// over one counter, a series of the other value) for good/total.
fn synthetic_series(slo: &SloDefinition, tenant: Option<&str>) -> Vec<(String, Share)> {
    let with_tenant = |mut labels: BTreeMap<String, String>| {
        if let Some(tenant) = tenant {
            labels.insert(TENANT_LABEL.to_owned(), tenant.to_owned());
        }
        labels
    };
    match &slo.ratio {
        Ratio::BadOverTotal { bad, total } => {
            let mut good = labels_of(total);
            // A good call lacks what marks a bad one (`error_type`).
            for matcher in &bad.matchers {
                if !total.matchers.contains(matcher) {
                    good.remove(&matcher.label);
                }
            }
            vec![
                (
                    series_text(&bad.metric, &with_tenant(labels_of(bad))),
                    Share::Bad,
                ),
                (series_text(&total.metric, &with_tenant(good)), Share::Good),
            ]
        }
        Ratio::GoodOverTotal { good, total } if good.metric == total.metric => {
            let mut bad = labels_of(total);
            for matcher in &good.matchers {
                if !total.matchers.contains(matcher) {
                    let other = if matcher.value == "true" {
                        "false"
                    } else {
                        "synthetic"
                    };
                    bad.insert(matcher.label.clone(), other.to_owned());
                }
            }
            vec![
                (
                    series_text(&good.metric, &with_tenant(labels_of(good))),
                    Share::Good,
                ),
                (series_text(&total.metric, &with_tenant(bad)), Share::Bad),
            ]
        }
        Ratio::GoodOverTotal { good, total } => vec![
            (
                series_text(&good.metric, &with_tenant(labels_of(good))),
                Share::Good,
            ),
            (
                series_text(&total.metric, &with_tenant(labels_of(total))),
                Share::All,
            ),
        ],
    }
}

fn input_series(slo: &SloDefinition, tenant: Option<&str>, phases: &[Phase]) -> Vec<InputSeries> {
    synthetic_series(slo, tenant)
        .into_iter()
        .map(|(series, share)| InputSeries {
            series,
            values: counter_values(share, phases),
        })
        .collect()
}

const CALLS_PER_STEP: f64 = 1000.0;

/// One scenario for one alert, sampled every `step`: calls fail at 0.9
/// times its threshold for a whole long window and then a short one (the
/// alert must stay silent), then at 1.2 times. The long window's burn
/// rate then climbs from 0.9·T by 0.3·T·x/W, x the time since the rise,
/// and crosses T at x = W/3 (the short window is at 1.2·T by then, as
/// S = W/12): the alert must be silent at x = 0.18·W and firing at 0.48·W.
fn burn_alert_group(slo: &SloDefinition, alert: &BurnAlert, step: Duration) -> TestGroup {
    let window = alert.window;
    let long = window.long.seconds();
    let step_seconds = step.seconds();
    let threshold = window.burn_rate;
    let budget = slo.objective.error_budget();
    let below_steps = (long + window.short.seconds()) / step_seconds;
    let rise = below_steps * step_seconds;
    let crossing = long as f64 / 3.0;
    let margin = 0.15 * long as f64;
    let for_seconds = alert.alert_after.seconds() as f64;
    let above_steps = ((crossing + margin + for_seconds) / step_seconds as f64).ceil() as u64 + 2;
    let phases = [
        Phase {
            steps: below_steps,
            calls: CALLS_PER_STEP,
            error_share: 0.9 * threshold * budget,
        },
        Phase {
            steps: above_steps,
            calls: CALLS_PER_STEP,
            error_share: 1.2 * threshold * budget,
        },
    ];
    // An evaluation time on the sample grid, `seconds` after `from`.
    let at = |from: u64, seconds: f64, round_up: bool| {
        let steps = seconds / step_seconds as f64;
        let steps = if round_up {
            steps.ceil()
        } else {
            steps.floor()
        };
        Duration::from_seconds(from + steps as u64 * step_seconds).to_string()
    };
    let mut expected_labels = alert_labels(alert);
    expected_labels.insert("tp_slo".to_owned(), slo.name.clone());
    expected_labels.insert("tp_service".to_owned(), slo.service.clone());
    let alert_name = alert.alert_name();
    let silent_at = |eval_time: String| AlertTest {
        eval_time,
        alertname: alert_name.clone(),
        exp_alerts: vec![],
    };
    let tenant = slo.breakdown.as_ref().map(|_| "tenant-a");
    TestGroup {
        name: format!(
            "{}: {alert_name} is silent at {}x budget and fires about {} after it rises to {}x",
            slo.name,
            number(0.9 * threshold),
            Duration::from_seconds(crossing as u64),
            number(1.2 * threshold)
        ),
        interval: step.to_string(),
        input_series: input_series(slo, tenant, &phases),
        alert_rule_test: vec![
            silent_at(at(0, long as f64 / 2.0, true)),
            silent_at(Duration::from_seconds(rise).to_string()),
            silent_at(at(rise, crossing - margin + for_seconds, false)),
            AlertTest {
                eval_time: at(rise, crossing + margin + for_seconds, true),
                alertname: alert_name.clone(),
                exp_alerts: vec![ExpectedAlert {
                    exp_labels: expected_labels,
                    exp_annotations: alert_annotations(slo, alert),
                }],
            },
        ],
        promql_expr_test: vec![],
    }
}

/// The sample and evaluation interval for an alert's scenarios: a fifth of
/// its short window, so every window holds several samples and the long
/// ones no more than needed (a 3-day window at 1-minute samples is slow).
fn step_for(alert: &BurnAlert) -> Duration {
    Duration::from_seconds((alert.window.short.seconds() / 5).max(60) / 60 * 60)
}

/// An expression that is 1 when `series` is within `tolerance` of `value`.
fn within(series: &str, value: f64, tolerance: f64) -> String {
    format!(
        "abs({series} - {}) < bool {}",
        number(value),
        number(tolerance)
    )
}

/// The one sample of one of the SLO's recorded series (`metric`), or of
/// an expression over them (no metric name).
fn sample(slo: &SloDefinition, metric: Option<&str>, value: f64) -> Vec<ExpectedSample> {
    let name = metric
        .map(|m| format!("__name__=\"{m}\","))
        .unwrap_or_default();
    vec![ExpectedSample {
        labels: format!(
            "{{{name}tp_service=\"{}\",tp_slo=\"{}\"}}",
            slo.service, slo.name
        ),
        value,
    }]
}

/// A per-tenant scenario: tenant-a keeps calling with a quarter failing,
/// tenant-b stops after ten minutes but its series remain. Once a window
/// holds none of its calls, tenant-b's error ratio must be 0, not NaN (as
/// 0/0 would be), and tenant-a's still a quarter.
fn tenant_group(slo: &SloDefinition, step: Duration) -> TestGroup {
    let steps_per_hour = 3_600 / step.seconds();
    let total_steps = steps_per_hour * 3 / 2;
    let busy = [Phase {
        steps: total_steps,
        calls: 4.0,
        error_share: 0.25,
    }];
    let ten_minutes = 600 / step.seconds();
    let idle_after_ten_minutes = [
        Phase {
            steps: ten_minutes,
            calls: 4.0,
            error_share: 0.0,
        },
        Phase {
            steps: total_steps - ten_minutes,
            calls: 0.0,
            error_share: 0.0,
        },
    ];
    let mut series = input_series(slo, Some("tenant-a"), &busy);
    series.extend(input_series(slo, Some("tenant-b"), &idle_after_ten_minutes));
    let tenant_series = |window: Duration| {
        format!(
            "{}{{tp_slo=\"{}\"}}",
            names::tenant_error_ratio(window),
            slo.name
        )
    };
    let five_minutes = tenant_series(Duration::minutes(5));
    let tenant_sample = |tenant: &str, value: f64| ExpectedSample {
        labels: format!(
            "{{{TENANT_LABEL}=\"{tenant}\",tp_service=\"{}\",tp_slo=\"{}\"}}",
            slo.service, slo.name
        ),
        value,
    };
    TestGroup {
        name: format!("{}: an idle tenant's error ratio is 0, not NaN", slo.name),
        interval: step.to_string(),
        input_series: series,
        alert_rule_test: vec![],
        promql_expr_test: vec![
            ExprTest {
                expr: format!("round({five_minutes} * 1000) / 1000"),
                eval_time: "20m".to_owned(),
                exp_samples: vec![
                    tenant_sample("tenant-a", 0.25),
                    tenant_sample("tenant-b", 0.0),
                ],
            },
            // NaN is the only value not equal to itself.
            ExprTest {
                expr: format!("{five_minutes} != {five_minutes}"),
                eval_time: "20m".to_owned(),
                exp_samples: vec![],
            },
            ExprTest {
                expr: format!(
                    "{} != {}",
                    tenant_series(Duration::hours(1)),
                    tenant_series(Duration::hours(1))
                ),
                eval_time: "80m".to_owned(),
                exp_samples: vec![],
            },
            ExprTest {
                expr: format!("round({} * 1000) / 1000", tenant_series(Duration::hours(1))),
                eval_time: "80m".to_owned(),
                exp_samples: vec![
                    tenant_sample("tenant-a", 0.25),
                    tenant_sample("tenant-b", 0.0),
                ],
            },
        ],
    }
}

/// Budget scenario over the first 31 days of 1970 and into February:
/// calls at a steady rate, failing at 7x the budget for days 10 and 11
/// only. Checks the rolling and month-to-date budgets and the exhaustion
/// projection against the pure maths.
fn budget_group(slo: &SloDefinition) -> TestGroup {
    let step = Duration::minutes(15);
    let steps_per_day = 86_400 / step.seconds();
    let budget = slo.objective.error_budget();
    let error_share = 7.0 * budget;
    let phases = [
        Phase {
            steps: 10 * steps_per_day,
            calls: 900.0,
            error_share: 0.0,
        },
        Phase {
            steps: 2 * steps_per_day,
            calls: 900.0,
            error_share,
        },
        Phase {
            steps: 20 * steps_per_day,
            calls: 900.0,
            error_share: 0.0,
        },
    ];
    let tenant = slo.breakdown.as_ref().map(|_| "tenant-a");
    let series = |name: &str| format!("{name}{{tp_slo=\"{}\"}}", slo.name);
    let rolling = names::BUDGET_REMAINING_ROLLING;
    let month = names::BUDGET_REMAINING_MONTH;
    let calls_per_hour = 3_600.0;
    // Hourly samples start at 1h: the first hour's rate needs its samples.
    let remaining = |error_hours: f64, call_hours: f64| {
        let ratio = error_hours * error_share * calls_per_hour / (call_hours * calls_per_hour);
        maths::budget_remaining_from_ratio(Some(ratio), slo.objective)
    };
    // Day 11, 00:00: 24 hours of errors in 264 hours of calls.
    let remaining_day_11 = remaining(24.0, 264.0);
    let burn = maths::burn_rate(error_share, slo.objective);
    let exhaustion = match maths::project_exhaustion(remaining_day_11, burn, slo.window) {
        Exhaustion::InSeconds(seconds) => seconds,
        Exhaustion::Never | Exhaustion::Exhausted => 0.0,
    };
    // February 1st, 02:00: the rolling window still holds the January
    // errors (48 hours' worth in its 672 hourly samples) but the month
    // holds only February's two hours.
    let window_hours = (slo.window.seconds() / 3_600) as f64;
    let rolling_in_february = remaining(48.0, window_hours);
    let exact = |metric: &str, at: &str, value: f64| ExprTest {
        expr: series(metric),
        eval_time: at.to_owned(),
        exp_samples: sample(slo, Some(metric), value),
    };
    let close = |metric: &str, at: &str, value: f64, tolerance: f64| ExprTest {
        expr: within(&series(metric), value, tolerance),
        eval_time: at.to_owned(),
        exp_samples: sample(slo, None, 1.0),
    };
    TestGroup {
        name: format!(
            "{}: budgets start full, the month forgets January, exhaustion is projected",
            slo.name
        ),
        interval: step.to_string(),
        input_series: input_series(slo, tenant, &phases),
        alert_rule_test: vec![],
        promql_expr_test: vec![
            exact(rolling, "9d", 1.0),
            exact(month, "9d", 1.0),
            close(rolling, "11d", remaining_day_11, 1e-6),
            close(month, "11d", remaining_day_11, 1e-6),
            close(
                names::EXHAUSTION_SECONDS,
                "11d",
                exhaustion,
                exhaustion * 1e-6,
            ),
            // Not burning: no projection at all.
            ExprTest {
                expr: series(names::EXHAUSTION_SECONDS),
                eval_time: "20d".to_owned(),
                exp_samples: vec![],
            },
            // The first instant of February: no hour of it has ended yet,
            // so a full budget and nothing of January.
            exact(month, "31d", 1.0),
            exact(names::ERRORS_MONTH, "31d", 0.0),
            exact(names::REQUESTS_MONTH, "31d", 0.0),
            exact(month, "31d2h", 1.0),
            close(rolling, "31d2h", rolling_in_february, 1e-6),
            close(names::REQUESTS_MONTH, "31d2h", 2.0 * calls_per_hour, 1e-6),
        ],
    }
}

/// The test files of one SLO, by file name suffix: one per alert (named
/// after its condition, each sampled as finely as its windows need; the
/// per-tenant scenario goes with the first), and `budget` when
/// `with_budget` (the budget rules are the same template for every SLO and
/// slow to test: 31 days of hourly evaluations).
pub fn test_files(
    slo: &SloDefinition,
    rule_files: &[String],
    with_budget: bool,
) -> Vec<(String, TestFile)> {
    let mut files = Vec::new();
    for (index, alert) in slo.alerts.iter().enumerate() {
        let step = step_for(alert);
        let mut groups = vec![burn_alert_group(slo, alert, step)];
        if index == 0 && slo.breakdown.is_some() {
            groups.push(tenant_group(slo, step));
        }
        files.push((
            alert.name.clone(),
            TestFile {
                rule_files: rule_files[..1].to_vec(),
                evaluation_interval: step.to_string(),
                group_eval_order: vec![],
                tests: groups,
            },
        ));
    }
    if with_budget {
        files.push((
            "budget".to_owned(),
            TestFile {
                rule_files: rule_files.to_vec(),
                evaluation_interval: rules::BUDGET_STEP.to_string(),
                group_eval_order: vec![
                    format!("slo-{}", slo.name),
                    format!("slo-{}-budget", slo.name),
                ],
                tests: vec![budget_group(slo)],
            },
        ));
    }
    files
}

pub fn render_test_file(slo: &SloDefinition, file: &TestFile) -> Result<String, SloError> {
    let body = serde_yaml_ng::to_string(file).map_err(|source| SloError::Yaml {
        document: 0,
        source,
    })?;
    Ok(format!(
        "# Generated by `tp slo generate` from slo/{}.yaml (SLO {}). Do not edit.\n{body}",
        slo.spec_file, slo.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_accumulate_phase_by_phase() {
        let phases = [
            Phase {
                steps: 3,
                calls: 10.0,
                error_share: 0.0,
            },
            Phase {
                steps: 2,
                calls: 10.0,
                error_share: 0.5,
            },
        ];
        // 0, 10, 20, 30, then +10 twice.
        assert_eq!(counter_values(Share::All, &phases), "0 10+10x2 40+10x1");
        // 0, 0, 0, 0, then +5 twice.
        assert_eq!(counter_values(Share::Bad, &phases), "0 0+0x2 5+5x1");
        assert_eq!(counter_values(Share::Good, &phases), "0 10+10x2 35+5x1");
    }
}
