//! Which frameworks fit a question. Pure: no I/O, unit-tested directly.
//!
//! A deliberately simple keyword ranker: each framework lists the words and
//! phrases that signal it applies. The knowledge-search issue replaces it
//! with full-text search over the whole corpus.

/// A corpus entry as the ranker sees it. (`FromRow` only maps columns; the
/// ranker itself never touches the database.)
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct FrameworkEntry {
    pub framework_id: String,
    pub name: String,
    pub author: String,
    pub summary: String,
    pub application: String,
    pub diagnostic_question: String,
    pub source_url: String,
    pub keywords: Vec<String>,
}

/// Scores every entry against the query and returns the `max` best with a
/// positive score, best first; ties keep corpus order so results are stable.
pub fn rank<'a>(
    entries: &'a [FrameworkEntry],
    query: &str,
    max: usize,
) -> Vec<(&'a FrameworkEntry, f32)> {
    let query = query.to_lowercase();
    let mut scored: Vec<(usize, &FrameworkEntry, f32)> = entries
        .iter()
        .enumerate()
        .filter_map(|(position, entry)| {
            let score = score(entry, &query);
            (score > 0.0).then_some((position, entry, score))
        })
        .collect();
    scored.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
    scored
        .into_iter()
        .take(max)
        .map(|(_, entry, score)| (entry, score))
        .collect()
}

fn score(entry: &FrameworkEntry, lowercase_query: &str) -> f32 {
    // Naming the framework outright is the strongest signal.
    let named = if lowercase_query.contains(&entry.name.to_lowercase()) {
        3.0
    } else {
        0.0
    };
    let hits = entry
        .keywords
        .iter()
        .filter(|keyword| lowercase_query.contains(keyword.as_str()))
        .count();
    named + hits as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, name: &str, keywords: &[&str]) -> FrameworkEntry {
        FrameworkEntry {
            framework_id: id.into(),
            name: name.into(),
            author: String::new(),
            summary: String::new(),
            application: String::new(),
            diagnostic_question: String::new(),
            source_url: String::new(),
            keywords: keywords.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn corpus() -> Vec<FrameworkEntry> {
        vec![
            entry("staff", "Staff Archetypes", &["staff", "promotion"]),
            entry(
                "odd",
                "Observability-Driven Development",
                &["incident", "on-call", "slo"],
            ),
            entry("sys", "Systems Dynamics", &["hire more", "backlog"]),
        ]
    }

    #[test]
    fn best_match_comes_first() {
        let corpus = corpus();
        let ranked = rank(
            &corpus,
            "Our on-call is drowning in incidents and we have no SLO",
            3,
        );
        assert_eq!(ranked[0].0.framework_id, "odd");
        assert_eq!(ranked.len(), 1);
    }

    #[test]
    fn naming_a_framework_outranks_keywords() {
        let corpus = corpus();
        let ranked = rank(
            &corpus,
            "How do systems dynamics apply to our promotion backlog?",
            3,
        );
        assert_eq!(ranked[0].0.framework_id, "sys");
        assert_eq!(ranked[1].0.framework_id, "staff");
    }

    #[test]
    fn nothing_matches_nothing_and_max_is_respected() {
        let corpus = corpus();
        assert!(rank(&corpus, "what a lovely day", 3).is_empty());
        assert_eq!(rank(&corpus, "staff incident backlog", 2).len(), 2);
    }
}
