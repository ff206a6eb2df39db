//! The Kubernetes manifests (`deploy/k8s/`) name only settings the services
//! read: a misspelt variable would be ignored in production without a
//! word. (Their schema is checked by `kubernetes-validate` in the test
//! command.)

use std::collections::BTreeSet;
use std::path::PathBuf;

/// This package's directory, read when the test runs (cargo sets it for
/// the test process): a test binary built in another checkout that shares
/// the target directory is reused as fresh, and the compile-time value
/// would point it at that checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

fn root() -> PathBuf {
    manifest_dir()
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// Every `TP_*` variable a manifest sets: env entries, ConfigMap data and
/// Secret stringData keys.
fn manifest_variables() -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("deploy/k8s"))? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            let line = line.trim_start().trim_start_matches("- ");
            let name = line
                .strip_prefix("name: ")
                .or_else(|| line.split_once(':').map(|(key, _)| key))
                .unwrap_or_default()
                .trim();
            if name.starts_with("TP_") && name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                names.insert(name.to_owned());
            }
        }
    }
    Ok(names)
}

/// Every variable the services' configuration reads (`env = "TP_..."`).
fn read_variables() -> anyhow::Result<String> {
    let mut sources = String::new();
    let mut stack = vec![root().join("services"), root().join("crates/server/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(&path)?);
            }
        }
    }
    Ok(sources)
}

#[test]
fn every_variable_the_manifests_set_is_one_a_service_reads() -> anyhow::Result<()> {
    let set = manifest_variables()?;
    assert!(set.len() >= 10, "the manifests were read: {set:?}");
    let sources = read_variables()?;
    // The migration jobs' owner URL comes from the Secret under its own
    // key and is passed on as TP_DATABASE_MIGRATE_URL.
    let unread: Vec<&String> = set
        .iter()
        .filter(|name| *name != "TP_OWNER_DATABASE_URL")
        .filter(|name| !sources.contains(&format!("env = \"{name}\"")))
        .collect();
    assert!(
        unread.is_empty(),
        "set in deploy/k8s but read by no service: {unread:?}"
    );
    Ok(())
}
