//! The words leaders actually use, mapped to the words the corpus uses.
//! Pure: applied to a query before it reaches full-text search.

/// (what people type, what it means). Keys match whole words or phrases,
/// case-insensitively; the meaning is appended to the query.
const SYNONYMS: &[(&str, &str)] = &[
    ("ic", "individual contributor engineer"),
    ("ics", "individual contributor engineers"),
    ("em", "engineering manager"),
    ("ems", "engineering managers"),
    ("vp", "vice president executive"),
    ("vpe", "vice president engineering executive"),
    ("cto", "chief technology officer executive"),
    ("slo", "service level objective observability"),
    ("slos", "service level objectives observability"),
    ("sli", "service level indicator observability"),
    ("sla", "service level agreement reliability"),
    ("mttr", "incident recovery observability"),
    ("paged", "on-call incident alert observability"),
    ("pager", "on-call incident alert observability"),
    ("pages", "on-call incident alert"),
    ("oncall", "on-call incident"),
    ("on-call", "incident alert"),
    ("promo", "promotion"),
    ("promos", "promotions"),
    ("re-org", "reorganization org design"),
    ("reorg", "reorganization org design"),
    ("reorgs", "reorganizations org design"),
    ("platform team", "infrastructure platform"),
    ("tech debt", "technical debt quality"),
    ("okr", "goals strategy"),
    ("okrs", "goals strategy"),
    ("devex", "developer productivity"),
    ("dx", "developer productivity"),
    ("sre", "site reliability infrastructure"),
    ("1:1", "one-on-one"),
    ("1:1s", "one-on-ones"),
    ("staff+", "staff engineer principal"),
    ("headcount", "hiring"),
    ("recruiting", "hiring"),
];

/// Lower-case words of the query, keeping in-word punctuation that the
/// synonym keys use (`re-org`, `1:1`, `staff+`).
fn words(query: &str) -> Vec<String> {
    query
        .split(|c: char| {
            c.is_whitespace() || matches!(c, ',' | '.' | '?' | '!' | ';' | '(' | ')' | '"')
        })
        .filter(|w| !w.is_empty())
        .map(|w| w.trim_matches('\'').to_lowercase())
        .collect()
}

/// The query with the meaning of every recognised term appended.
pub fn expand(query: &str) -> String {
    let words = words(query);
    let mut expanded = query.to_owned();
    for (key, meaning) in SYNONYMS {
        let key_words: Vec<&str> = key.split(' ').collect();
        let found = words.windows(key_words.len()).any(|window| {
            window
                .iter()
                .map(String::as_str)
                .eq(key_words.iter().copied())
        });
        if found {
            expanded.push(' ');
            expanded.push_str(meaning);
        }
    }
    expanded
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn abbreviations_gain_their_meaning() {
        let q = expand("Should I go back to being an IC?");
        assert!(q.ends_with("individual contributor engineer"), "{q}");
        assert!(expand("our SLOs are ignored").contains("service level objectives"));
        assert!(expand("we get paged every night").contains("on-call"));
        assert!(expand("third re-org this year").contains("org design"));
    }

    #[test]
    fn phrases_and_whole_words_only() {
        assert!(expand("the platform team is slow").contains("infrastructure"));
        // "em" inside another word is not "engineering manager".
        assert_eq!(expand("emergency"), "emergency");
        assert_eq!(expand("a quiet question"), "a quiet question");
    }
}
