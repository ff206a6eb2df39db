//! The built-in corpus: Markdown files with TOML front matter, embedded in
//! the binary at build time (see `build.rs` and `corpus/README.md`).
//! Parsing and validation are pure; `load` writes them to Postgres.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

include!(concat!(env!("OUT_DIR"), "/corpus_files.rs"));

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Framework,
    Topic,
    Source,
}

impl EntryKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EntryKind::Framework => "framework",
            EntryKind::Topic => "topic",
            EntryKind::Source => "source",
        }
    }

    /// The folder entries of this kind live in.
    fn folder(&self) -> &'static str {
        match self {
            EntryKind::Framework => "frameworks",
            EntryKind::Topic => "topics",
            EntryKind::Source => "sources",
        }
    }

    /// The `##` sections every entry of this kind has, in order.
    fn sections(&self) -> &'static [&'static str] {
        match self {
            EntryKind::Framework => &[
                "The model",
                "Symptoms",
                "Diagnostic questions",
                "How to apply",
                "Pitfalls and second-order effects",
                "Example",
            ],
            EntryKind::Topic => &[
                "What it covers",
                "Frameworks that serve it",
                "Questions to ask first",
                "Common traps",
            ],
            EntryKind::Source => &["What it covers"],
        }
    }
}

/// An entry's front matter.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontMatter {
    pub id: String,
    pub kind: EntryKind,
    pub title: String,
    #[serde(default)]
    pub author: String,
    pub summary: String,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub frameworks: Vec<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub diagnostic_question: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub source_type: String,
}

/// One parsed corpus entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub front: FrontMatter,
    /// The Markdown after the front matter.
    pub body: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CorpusError {
    #[error("{path}: front matter must open the file between `+++` lines")]
    NoFrontMatter { path: String },
    #[error("{path}: invalid front matter: {message}")]
    BadFrontMatter { path: String, message: String },
    #[error("the corpus is invalid:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// Splits and parses one file.
pub fn parse(path: &str, text: &str) -> Result<Entry, CorpusError> {
    let no_front = || CorpusError::NoFrontMatter {
        path: path.to_owned(),
    };
    let rest = text.strip_prefix("+++\n").ok_or_else(no_front)?;
    let end = rest.find("\n+++\n").ok_or_else(no_front)?;
    let front: FrontMatter =
        toml::from_str(&rest[..end]).map_err(|e| CorpusError::BadFrontMatter {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    Ok(Entry {
        front,
        body: rest[end + "\n+++\n".len()..].trim().to_owned(),
    })
}

/// `##` headings of a Markdown body, in order.
fn headings(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(str::trim)
        .collect()
}

/// The lines of one `##` section.
pub fn section<'a>(body: &'a str, heading: &str) -> Vec<&'a str> {
    let mut inside = false;
    let mut lines = Vec::new();
    for line in body.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            inside = h.trim() == heading;
        } else if inside && !line.trim().is_empty() {
            lines.push(line.trim());
        }
    }
    lines
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks every rule of `corpus/README.md` across all entries; returns every
/// problem at once so a corpus author can fix them in one go.
pub fn validate(files: &[(&str, Entry)]) -> Result<(), CorpusError> {
    let mut problems = Vec::new();
    let mut kinds: BTreeMap<&str, EntryKind> = BTreeMap::new();
    for (path, entry) in files {
        let front = &entry.front;
        if kinds.insert(front.id.as_str(), front.kind).is_some() {
            problems.push(format!("{path}: duplicate id `{}`", front.id));
        }
    }
    for (path, entry) in files {
        let front = &entry.front;
        let mut problem = |message: String| problems.push(format!("{path}: {message}"));
        let expected_path = format!("{}/{}.md", front.kind.folder(), front.id);
        if !valid_id(&front.id) {
            problem(format!(
                "id `{}` must be lowercase letters, digits and hyphens",
                front.id
            ));
        }
        if *path != expected_path {
            problem(format!(
                "a {} with id `{}` belongs in {expected_path}",
                front.kind.as_str(),
                front.id
            ));
        }
        if front.title.trim().is_empty() || front.summary.trim().is_empty() {
            problem("title and summary must not be empty".into());
        }
        if front
            .keywords
            .iter()
            .any(|k| k.trim().is_empty() || *k != k.to_lowercase())
        {
            problem("keywords must be non-empty and lower-case".into());
        }
        let found = headings(&entry.body);
        if found != front.kind.sections() {
            problem(format!(
                "sections must be {:?}, found {found:?}",
                front.kind.sections()
            ));
        }
        for source in &front.sources {
            if kinds.get(source.as_str()) != Some(&EntryKind::Source) {
                problem(format!("cites unknown source `{source}`"));
            }
        }
        for framework in &front.frameworks {
            if kinds.get(framework.as_str()) != Some(&EntryKind::Framework) {
                problem(format!("links unknown framework `{framework}`"));
            }
        }
        match front.kind {
            EntryKind::Framework => {
                if front.author.is_empty() || front.sources.is_empty() {
                    problem("a framework needs an author and at least one source".into());
                }
                if !front.diagnostic_question.trim_end().ends_with('?') {
                    problem("diagnostic_question must be a question".into());
                }
                if section(&entry.body, "Diagnostic questions")
                    .iter()
                    .any(|q| !q.ends_with('?'))
                {
                    problem("every diagnostic question must end with `?`".into());
                }
            }
            EntryKind::Topic => {
                if front.frameworks.is_empty() {
                    problem("a topic links at least one framework".into());
                }
                if section(&entry.body, "Questions to ask first")
                    .iter()
                    .any(|q| !q.ends_with('?'))
                {
                    problem("every question to ask first must end with `?`".into());
                }
            }
            EntryKind::Source => {
                if !front.url.starts_with("https://") {
                    problem("a source needs an https:// url".into());
                }
                if !matches!(front.source_type.as_str(), "book" | "site") {
                    problem("source_type must be `book` or `site`".into());
                }
            }
        }
    }
    let kinds_present: BTreeSet<EntryKind> = kinds.values().copied().collect();
    if kinds_present.len() < 3 {
        problems.push("the corpus needs frameworks, topics and sources".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CorpusError::Invalid(problems))
    }
}

/// Parses and validates the embedded corpus.
pub fn builtin() -> Result<Vec<Entry>, CorpusError> {
    let parsed = CORPUS_FILES
        .iter()
        .map(|(path, text)| parse(path, text).map(|entry| (*path, entry)))
        .collect::<Result<Vec<_>, _>>()?;
    validate(&parsed)?;
    Ok(parsed.into_iter().map(|(_, entry)| entry).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "+++\nid = \"site-x\"\nkind = \"source\"\ntitle = \"X\"\nsummary = \"A site.\"\nurl = \"https://x.example\"\nsource_type = \"site\"\n+++\n\n## What it covers\nThings.\n";

    #[test]
    fn the_shipped_corpus_is_valid_and_complete() {
        let entries = builtin().unwrap_or_else(|e| panic!("{e}"));
        let ids: BTreeSet<&str> = entries.iter().map(|e| e.front.id.as_str()).collect();
        for framework in [
            "technical-coherence",
            "staff-archetypes",
            "trunk-and-branches",
            "engineer-manager-pendulum",
            "observability-driven-development",
            "engineering-strategy",
            "systems-dynamics",
        ] {
            assert!(ids.contains(framework), "missing framework {framework}");
        }
        for topic in [
            "topic-staff-plus",
            "topic-org-design",
            "topic-technical-quality",
            "topic-career-development",
            "topic-hiring",
            "topic-strategy",
            "topic-infrastructure",
            "topic-observability",
            "topic-first-90-days-em",
            "topic-first-90-days-director",
            "topic-first-90-days-vp",
            "topic-first-90-days-cto",
        ] {
            assert!(ids.contains(topic), "missing topic {topic}");
        }
    }

    #[test]
    fn front_matter_and_sections_parse() {
        let entry = parse("sources/site-x.md", SOURCE).unwrap();
        assert_eq!(entry.front.kind, EntryKind::Source);
        assert_eq!(headings(&entry.body), vec!["What it covers"]);
        assert_eq!(section(&entry.body, "What it covers"), vec!["Things."]);
    }

    #[test]
    fn broken_files_are_reported_with_their_path() {
        assert!(matches!(
            parse("a.md", "no front matter"),
            Err(CorpusError::NoFrontMatter { .. })
        ));
        let bad = parse("a.md", "+++\nid = 3\n+++\nbody");
        assert!(matches!(bad, Err(CorpusError::BadFrontMatter { ref path, .. }) if path == "a.md"));
    }

    #[test]
    fn validation_catches_wrong_folders_and_dangling_links() {
        let mut entry = parse("sources/site-x.md", SOURCE).unwrap();
        entry.front.sources = vec!["nowhere".into()];
        let err = validate(&[("topics/site-x.md", entry)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("belongs in sources/site-x.md"), "{err}");
        assert!(err.contains("unknown source `nowhere`"), "{err}");
    }
}
