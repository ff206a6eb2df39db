//! `schema.toml` is the contract for telemetry names: the metrics this
//! crate registers must be exactly the ones it declares, and its names must
//! not clash.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::metrics::{ALL, Kind, status_code_name};

#[derive(Deserialize)]
struct Schema {
    metric: Vec<MetricDecl>,
    attribute: Vec<AttributeDecl>,
}

#[derive(Deserialize)]
struct MetricDecl {
    name: String,
    kind: String,
    unit: String,
    #[serde(default)]
    buckets: Vec<f64>,
    labels: Vec<String>,
    help: String,
}

#[derive(Deserialize)]
struct AttributeDecl {
    name: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    span_only: bool,
}

fn schema() -> Schema {
    toml::from_str(include_str!("../schema.toml")).expect("schema.toml parses")
}

#[test]
fn registered_metrics_are_exactly_the_schemas() {
    let schema = schema();
    let declared: BTreeMap<&str, &MetricDecl> =
        schema.metric.iter().map(|m| (m.name.as_str(), m)).collect();
    assert_eq!(
        declared.len(),
        schema.metric.len(),
        "a metric is declared twice"
    );
    let ours: BTreeSet<&str> = ALL.iter().map(|d| d.name).collect();
    assert_eq!(ours, declared.keys().copied().collect::<BTreeSet<_>>());
    for def in ALL {
        let decl = declared[def.name];
        let kind = match def.kind {
            Kind::Histogram => "histogram",
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        assert_eq!(kind, decl.kind, "{}", def.name);
        assert_eq!(def.unit, decl.unit, "{}", def.name);
        assert_eq!(def.buckets, decl.buckets.as_slice(), "{}", def.name);
        assert_eq!(def.labels, decl.labels.as_slice(), "{}", def.name);
        assert_eq!(def.help, decl.help, "{}", def.name);
    }
}

fn folded(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '.' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

#[test]
fn the_call_spans_attributes_are_declared() {
    let schema = schema();
    let declared: BTreeSet<&str> = schema.attribute.iter().map(|a| a.name.as_str()).collect();
    for name in crate::call_span::SPAN_ATTRIBUTES {
        assert!(declared.contains(name), "`{name}` is not in schema.toml");
    }
}

#[test]
fn no_two_names_clash() {
    let schema = schema();
    // Our names: no two may fold to the same string.
    let mut ours: BTreeMap<String, &str> = BTreeMap::new();
    for name in schema
        .metric
        .iter()
        .map(|m| m.name.as_str())
        .chain(schema.attribute.iter().map(|a| a.name.as_str()))
    {
        if let Some(earlier) = ours.insert(folded(name), name) {
            panic!("`{name}` clashes with `{earlier}`");
        }
    }
    // And the folding does catch what it is for.
    assert_eq!(folded("rpc.status_code"), folded("rpc_status.code"));
}

#[test]
fn metric_labels_are_declared_bounded_attributes() {
    let schema = schema();
    let attributes: BTreeMap<&str, &AttributeDecl> = schema
        .attribute
        .iter()
        .map(|a| (a.name.as_str(), a))
        .collect();
    for metric in &schema.metric {
        for label in &metric.labels {
            let attribute = attributes
                .get(label.as_str())
                .unwrap_or_else(|| panic!("{}: label `{label}` is not declared", metric.name));
            assert!(
                !attribute.span_only,
                "{}: `{label}` is span_only, never a metric label",
                metric.name
            );
        }
    }
    // The status names we write are the ones declared.
    let codes: BTreeSet<&str> = (0..=16).map(status_code_name).collect();
    let declared: BTreeSet<&str> = attributes["rpc.status_code"]
        .values
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(codes, declared);
}
