//! The committed specs in slo/ and what is generated from them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tp_slo::generate::{self, GENERATED_DIRS, PUBLIC_API_DOC};
use tp_slo::openslo::{Document, parse_documents, to_yaml};
use tp_slo::{Catalog, RpcPromise};

/// This package's directory, read when the test runs (cargo sets it for
/// the test process): a test binary built in another checkout that shares
/// the target directory is reused as fresh, and the compile-time value
/// would point it at that checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

fn repo_root() -> PathBuf {
    manifest_dir().join("../..")
}

fn spec_sources() -> Vec<(String, String)> {
    let mut sources: Vec<(String, String)> = std::fs::read_dir(repo_root().join("slo"))
        .expect("slo/ exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .map(|path| {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            (stem, std::fs::read_to_string(&path).expect("readable spec"))
        })
        .collect();
    sources.sort();
    assert!(
        sources.len() >= 6,
        "found only {} spec files",
        sources.len()
    );
    sources
}

fn catalog() -> Catalog {
    Catalog::resolve(&generate::parse_spec_files(&spec_sources()).expect("specs parse"))
        .expect("specs resolve")
}

#[test]
fn specs_round_trip_through_yaml() {
    for (stem, yaml) in spec_sources() {
        let documents = parse_documents(&yaml).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert!(!documents.is_empty(), "{stem} is empty");
        let serialised = to_yaml(&documents).expect("serialises");
        let reparsed = parse_documents(&serialised).expect("reparses");
        assert_eq!(documents, reparsed, "{stem} does not round-trip");
    }
}

#[test]
fn unknown_fields_and_kinds_are_refused() {
    let misspelt =
        "apiVersion: openslo/v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  descripton: typo\n";
    assert!(parse_documents(misspelt).is_err());
    let unknown_kind = "apiVersion: openslo/v1\nkind: DataSource\nmetadata:\n  name: x\nspec: {}\n";
    assert!(parse_documents(unknown_kind).is_err());
    let wrong_version = "apiVersion: openslo/v2\nkind: Service\nmetadata:\n  name: x\nspec: {}\n";
    assert!(parse_documents(wrong_version).is_err());
}

#[test]
fn every_kind_is_used() {
    let mut kinds = BTreeMap::new();
    for (_, yaml) in spec_sources() {
        for document in parse_documents(&yaml).unwrap() {
            let kind = match document {
                Document::Service(_) => "Service",
                Document::Sli(_) => "SLI",
                Document::Slo(_) => "SLO",
                Document::AlertPolicy(_) => "AlertPolicy",
            };
            *kinds.entry(kind).or_insert(0) += 1;
        }
    }
    assert_eq!(kinds.len(), 4, "{kinds:?}");
}

#[test]
fn the_user_facing_objectives_are_all_there() {
    let catalog = catalog();
    let slo = |name: &str| {
        catalog
            .slos
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no SLO {name}"))
    };
    for name in [
        "send-message-availability",
        "send-message-latency",
        "send-message-first-event-latency",
        "list-messages-availability",
        "list-messages-latency",
        "search-availability",
        "search-latency",
        "authentication-availability",
        "authentication-latency",
        "coach-reply-compliance",
    ] {
        let slo = slo(name);
        assert!(
            !slo.description.is_empty(),
            "{name} does not explain itself"
        );
        assert_eq!(
            slo.alerts.len(),
            4,
            "{name} lacks the four burn-rate alerts"
        );
    }
    assert_eq!(slo("send-message-availability").objective.target(), 0.999);
    // Per-tenant breakdowns only where the metric has the tenant label.
    assert!(slo("send-message-latency").breakdown.is_some());
    assert!(slo("coach-reply-compliance").breakdown.is_none());
    assert!(slo("authentication-availability").breakdown.is_none());
}

#[test]
fn rpc_promises_are_read_from_the_queries() {
    let promises = catalog().rpc_promises();
    assert_eq!(
        promises.get("ConversationService/SendMessage"),
        Some(&[RpcPromise::Availability, RpcPromise::Latency].into())
    );
    // The time-to-first-event SLO is not SendMessage's latency promise,
    // and authentication and coaching promise no RPC.
    assert_eq!(promises.len(), 38, "{:?}", promises.keys());
}

#[test]
fn a_dangling_reference_is_an_error() {
    let mut sources = spec_sources();
    let (_, conversation) = sources
        .iter_mut()
        .find(|(stem, _)| stem == "conversation")
        .expect("conversation.yaml");
    *conversation = conversation.replace(
        "alertPolicyRef: burn-rate",
        "alertPolicyRef: no-such-policy",
    );
    let specs = generate::parse_spec_files(&sources).unwrap();
    let error = Catalog::resolve(&specs).expect_err("must fail").to_string();
    assert!(error.contains("no-such-policy"), "{error}");
}

/// The committed rules, tests, dashboards and table are exactly what the
/// specs generate: run `tp slo generate` after changing slo/*.yaml.
#[test]
fn generated_files_are_up_to_date() {
    let root = repo_root();
    let doc = std::fs::read_to_string(root.join(PUBLIC_API_DOC)).expect("public-api.md");
    let files = generate::generate(&spec_sources(), &doc).expect("generates");
    let mut on_disk = BTreeMap::new();
    for dir in GENERATED_DIRS {
        for entry in std::fs::read_dir(root.join(dir)).expect("generated dir exists") {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            on_disk.insert(
                format!("{dir}/{name}"),
                std::fs::read_to_string(&path).unwrap(),
            );
        }
    }
    on_disk.insert(PUBLIC_API_DOC.to_owned(), doc);
    let drift = generate::drift(&files, &on_disk);
    assert!(
        drift.is_empty(),
        "stale generated files (run `tp slo generate`): {drift:?}"
    );
    // And the comparison itself notices a change.
    on_disk.insert(files[0].path.clone(), String::from("edited by hand"));
    assert_eq!(generate::drift(&files, &on_disk).len(), 1);
}
