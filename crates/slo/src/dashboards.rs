//! Grafana dashboards, one per service: a row per SLO with its SLI over
//! several windows, budget remaining (rolling and calendar month), the
//! exhaustion projection, burn rate per window, the per-tenant breakdown,
//! and for latency SLOs the quantiles with exemplars linking to traces.

use serde_json::{Value, json};

use crate::SloError;
use crate::catalog::{Catalog, Ratio, ServiceDefinition, SloDefinition, TENANT_LABEL};
use crate::duration::Duration;
use crate::rules::{SLI_WINDOWS, names, number};
use crate::selector::Selector;

/// The datasource uids the provisioning in deploy/grafana declares.
pub const PROMETHEUS_UID: &str = "prometheus";
pub const TEMPO_UID: &str = "tempo";

fn prometheus() -> Value {
    json!({ "type": "prometheus", "uid": PROMETHEUS_UID })
}

fn target(expr: String, legend: &str, ref_id: &str) -> Value {
    json!({
        "datasource": prometheus(),
        "expr": expr,
        "legendFormat": legend,
        "refId": ref_id,
    })
}

fn ref_id(index: usize) -> String {
    char::from(b'A' + (index % 26) as u8).to_string()
}

fn panel(
    id: &mut u32,
    kind: &str,
    title: &str,
    grid: (u32, u32, u32, u32),
    targets: Vec<Value>,
    field_config: Value,
) -> Value {
    *id += 1;
    let (x, y, w, h) = grid;
    json!({
        "id": *id,
        "type": kind,
        "title": title,
        "datasource": prometheus(),
        "gridPos": { "x": x, "y": y, "w": w, "h": h },
        "targets": targets,
        "fieldConfig": field_config,
        "options": {},
    })
}

fn unit(unit: &str) -> Value {
    json!({ "defaults": { "unit": unit }, "overrides": [] })
}

/// The bucket series of a latency SLI with its `le` matcher dropped, for
/// quantiles (`None` for SLIs not over a histogram).
fn latency_buckets(slo: &SloDefinition) -> Option<Selector> {
    match &slo.ratio {
        Ratio::GoodOverTotal { good, .. } if good.metric.ends_with("_bucket") => {
            let mut buckets = good.clone();
            buckets.matchers.retain(|m| m.label != "le");
            Some(buckets)
        }
        _ => None,
    }
}

fn slo_panels(slo: &SloDefinition, y: &mut u32, id: &mut u32) -> Vec<Value> {
    let series = |name: &str| format!("{name}{{tp_slo=\"{}\"}}", slo.name);
    let mut panels = Vec::new();
    *id += 1;
    panels.push(json!({
        "id": *id,
        "type": "row",
        "title": format!(
            "{} — {} % over {}",
            slo.display_name,
            number(100.0 * slo.objective.target()),
            slo.window
        ),
        "description": slo.description,
        "collapsed": false,
        "gridPos": { "x": 0, "y": *y, "w": 24, "h": 1 },
        "panels": [],
    }));
    *y += 1;

    let sli_windows = [
        Duration::minutes(5),
        Duration::hours(1),
        Duration::days(1),
        Duration::days(3),
    ];
    let mut sli_targets: Vec<Value> = sli_windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            target(
                format!("1 - {}", series(&names::error_ratio(*w))),
                &format!("SLI {w}"),
                &ref_id(i),
            )
        })
        .collect();
    sli_targets.push(target(
        series(names::OBJECTIVE),
        "objective",
        &ref_id(sli_windows.len()),
    ));
    panels.push(panel(
        id,
        "timeseries",
        "SLI by window",
        (0, *y, 8, 8),
        sli_targets,
        unit("percentunit"),
    ));
    panels.push(panel(
        id,
        "stat",
        "Error budget remaining",
        (8, *y, 5, 8),
        vec![
            target(
                series(names::BUDGET_REMAINING_ROLLING),
                &format!("rolling {}", slo.window),
                "A",
            ),
            target(
                series(names::BUDGET_REMAINING_MONTH),
                "calendar month to date",
                "B",
            ),
        ],
        json!({
            "defaults": {
                "unit": "percentunit",
                "thresholds": {
                    "mode": "absolute",
                    "steps": [
                        { "color": "red", "value": null },
                        { "color": "orange", "value": 0.25 },
                        { "color": "green", "value": 0.5 },
                    ],
                },
            },
            "overrides": [],
        }),
    ));
    panels.push(panel(
        id,
        "stat",
        "Budget exhausted in (at the last hour's burn rate)",
        (13, *y, 4, 8),
        vec![target(
            series(names::EXHAUSTION_SECONDS),
            "exhausted in",
            "A",
        )],
        json!({ "defaults": { "unit": "s", "noValue": "not burning" }, "overrides": [] }),
    ));
    let burn_targets = SLI_WINDOWS
        .iter()
        .enumerate()
        .map(|(i, w)| target(series(&names::burn_rate(*w)), &w.to_string(), &ref_id(i)))
        .collect();
    let thresholds: Vec<Value> = std::iter::once(json!({ "color": "green", "value": null }))
        .chain(slo.alerts.iter().map(|a| {
            json!({
                "color": if a.window.severity == crate::maths::Severity::Page { "red" } else { "orange" },
                "value": a.window.burn_rate,
            })
        }))
        .collect();
    panels.push(panel(
        id,
        "timeseries",
        "Burn rate by window",
        (17, *y, 7, 8),
        burn_targets,
        json!({
            "defaults": {
                "unit": "none",
                "custom": { "thresholdsStyle": { "mode": "dashed" } },
                "thresholds": { "mode": "absolute", "steps": thresholds },
            },
            "overrides": [],
        }),
    ));
    *y += 8;

    let mut width_used = 0;
    if slo.breakdown.is_some() {
        panels.push(panel(
            id,
            "timeseries",
            "Error ratio by tenant (1h; the ten worst)",
            (0, *y, 12, 8),
            vec![target(
                format!(
                    "topk(10, {})",
                    series(&names::tenant_error_ratio(Duration::hours(1)))
                ),
                &format!("{{{{{TENANT_LABEL}}}}}"),
                "A",
            )],
            unit("percentunit"),
        ));
        width_used = 12;
    }
    if let Some(buckets) = latency_buckets(slo) {
        let quantile = |q: f64, ref_id: &str| {
            let mut query = target(
                format!(
                    "histogram_quantile({}, sum by (le) (rate({buckets}[5m])))",
                    number(q)
                ),
                &format!("p{}", number(100.0 * q)),
                ref_id,
            );
            // Exemplars carry trace ids; the Prometheus datasource links
            // them to Tempo (deploy/grafana/provisioning).
            query["exemplar"] = json!(true);
            query
        };
        panels.push(panel(
            id,
            "timeseries",
            "Latency (exemplars link to traces)",
            (width_used, *y, 24 - width_used, 8),
            vec![quantile(0.5, "A"), quantile(0.99, "B")],
            unit("s"),
        ));
        width_used = 24;
    }
    if width_used > 0 {
        *y += 8;
    }
    panels
}

/// The dashboard of one service.
pub fn dashboard(service: &ServiceDefinition, catalog: &Catalog) -> Value {
    let mut y = 0;
    let mut id = 0;
    let panels: Vec<Value> = catalog
        .slos
        .iter()
        .filter(|slo| slo.service == service.name)
        .flat_map(|slo| slo_panels(slo, &mut y, &mut id))
        .collect();
    json!({
        "uid": format!("tp-slo-{}", service.name),
        "title": format!("SLOs: {}", service.display_name),
        "description": service.description,
        "tags": ["slo", "thoughtpartner"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": false,
        "refresh": "1m",
        "time": { "from": "now-7d", "to": "now" },
        "templating": { "list": [] },
        "annotations": { "list": [] },
        "links": [],
        "panels": panels,
    })
}

pub fn render_dashboard(
    service: &ServiceDefinition,
    catalog: &Catalog,
) -> Result<String, SloError> {
    let mut text = serde_json::to_string_pretty(&dashboard(service, catalog))?;
    text.push('\n');
    Ok(text)
}
