//! `tp slo`: generate the Prometheus rules, promtool tests, Grafana
//! dashboards and the public-API table from the OpenSLO specs in `slo/`,
//! or check that the committed ones are what would be generated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use tp_slo::generate::{self, Drift, GENERATED_DIRS, GeneratedFile, PUBLIC_API_DOC};

#[derive(Subcommand)]
pub enum SloCommand {
    /// Write deploy/prometheus/rules, deploy/prometheus/tests,
    /// deploy/grafana/dashboards and the table in slo/public-api.md.
    Generate {
        /// The repository root.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// Write nothing; exit non-zero if any file would change.
        #[arg(long)]
        check: bool,
    },
    /// Every SLO's SLI, budget left (as a bar), burn and firing alerts,
    /// from the running services (operators).
    Status {
        /// One tenant's view (its tenant id).
        #[arg(long)]
        tenant: Option<String>,
        /// Bearer token of an operator.
        #[arg(long, env = "TP_OPERATOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Exit non-zero if the committed generated files are stale.
    Check {
        /// The repository root.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
}

pub fn run(command: SloCommand) -> anyhow::Result<()> {
    match command {
        SloCommand::Generate { root, check: false } => {
            let files = generated(&root)?;
            let drifts = generate::drift(&files, &existing(&root, &files)?);
            write(&root, &files, &drifts)?;
            println!("{} files generated, {} changed", files.len(), drifts.len());
            Ok(())
        }
        SloCommand::Generate { root, check: true } | SloCommand::Check { root } => check(&root),
        SloCommand::Status { .. } => {
            anyhow::bail!("`tp slo status` asks the gateway; the async caller runs it")
        }
    }
}

fn check(root: &Path) -> anyhow::Result<()> {
    let files = generated(root)?;
    let drifts = generate::drift(&files, &existing(root, &files)?);
    for drift in &drifts {
        match drift {
            Drift::Missing(path) => eprintln!("missing: {path}"),
            Drift::Changed(path) => eprintln!("stale: {path}"),
            Drift::Unexpected(path) => eprintln!("no longer generated: {path}"),
        }
    }
    anyhow::ensure!(
        drifts.is_empty(),
        "{} generated files are out of date: run `tp slo generate`",
        drifts.len()
    );
    println!("{} generated files are up to date", files.len());
    Ok(())
}

/// The spec files `slo/*.yaml` as (stem, text), in name order.
pub fn read_specs(root: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let dir = root.join("slo");
    let mut specs = Vec::new();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .with_context(|| format!("{} is not a UTF-8 name", path.display()))?
                .to_owned();
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            specs.push((stem, text));
        }
    }
    specs.sort();
    Ok(specs)
}

fn generated(root: &Path) -> anyhow::Result<Vec<GeneratedFile>> {
    let doc_path = root.join(PUBLIC_API_DOC);
    let doc = std::fs::read_to_string(&doc_path)
        .with_context(|| format!("cannot read {}", doc_path.display()))?;
    Ok(generate::generate(&read_specs(root)?, &doc)?)
}

/// What is on disk now: each generated path that exists, and every file
/// in the generated directories.
fn existing(root: &Path, files: &[GeneratedFile]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut on_disk = BTreeMap::new();
    for dir in GENERATED_DIRS {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let name = entry.file_name();
                let name = name
                    .to_str()
                    .with_context(|| format!("{} is not a UTF-8 name", entry.path().display()))?;
                let relative = format!("{dir}/{name}");
                on_disk.insert(relative, std::fs::read_to_string(entry.path())?);
            }
        }
    }
    for file in files {
        if !on_disk.contains_key(&file.path)
            && let Ok(contents) = std::fs::read_to_string(root.join(&file.path))
        {
            on_disk.insert(file.path.clone(), contents);
        }
    }
    Ok(on_disk)
}

fn write(root: &Path, files: &[GeneratedFile], drifts: &[Drift]) -> anyhow::Result<()> {
    for drift in drifts {
        match drift {
            Drift::Missing(path) | Drift::Changed(path) => {
                let contents = files
                    .iter()
                    .find(|f| &f.path == path)
                    .map(|f| f.contents.as_str())
                    .unwrap_or_default();
                let target = root.join(path);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                std::fs::write(&target, contents)
                    .with_context(|| format!("cannot write {}", target.display()))?;
            }
            Drift::Unexpected(path) => {
                let target = root.join(path);
                std::fs::remove_file(&target)
                    .with_context(|| format!("cannot remove {}", target.display()))?;
            }
        }
    }
    Ok(())
}
