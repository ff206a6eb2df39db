//! The words leaders actually use, mapped to the words the corpus uses.
//! Pure: applied to a query before it reaches full-text search.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use foldhash::fast::FixedState;

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
/// synonym keys use (`re-org`, `1:1`, `staff+`). A word already in lower
/// case is borrowed, not copied: most are.
fn words(query: &str) -> Vec<Cow<'_, str>> {
    query
        .split(|c: char| {
            c.is_whitespace() || matches!(c, ',' | '.' | '?' | '!' | ';' | '(' | ')' | '"')
        })
        .filter(|w| !w.is_empty())
        .map(|w| {
            let w = w.trim_matches('\'');
            if w.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
                Cow::Borrowed(w)
            } else {
                Cow::Owned(w.to_lowercase())
            }
        })
        .collect()
}

/// Each key's first word, with the key's place in [`SYNONYMS`] and its
/// later words (none for most keys).
type KeysByFirstWord = HashMap<&'static str, Vec<(usize, Vec<&'static str>)>, FixedState>;

/// The keys by their first word, so a query is read once, a look-up per
/// word, instead of once per key: every Retrieve (one per SendMessage)
/// expands the member's turn, and comparing it with each key in turn was
/// the knowledge service's largest function of its own under callgrind
/// (session 34): ~11 µs a turn against ~2.5 µs this way, in a loop over
/// turns like the load generator's (release build, session 35).
static BY_FIRST_WORD: LazyLock<KeysByFirstWord> = LazyLock::new(|| {
    let mut keys = KeysByFirstWord::default();
    for (index, (key, _)) in SYNONYMS.iter().enumerate() {
        let mut key_words = key.split(' ');
        if let Some(first) = key_words.next() {
            keys.entry(first)
                .or_default()
                .push((index, key_words.collect()));
        }
    }
    keys
});

/// The query with the meaning of every recognised term appended, in the
/// order of [`SYNONYMS`].
pub fn expand(query: &str) -> String {
    let words = words(query);
    let mut found = [false; SYNONYMS.len()];
    for (at, word) in words.iter().enumerate() {
        let Some(keys) = BY_FIRST_WORD.get(word.as_ref()) else {
            continue;
        };
        for (index, later) in keys {
            let follows = words
                .get(at + 1..at + 1 + later.len())
                .is_some_and(|next| next.iter().map(AsRef::as_ref).eq(later.iter().copied()));
            if follows {
                found[*index] = true;
            }
        }
    }
    let mut expanded = query.to_owned();
    for ((_, meaning), _) in SYNONYMS.iter().zip(found).filter(|(_, found)| *found) {
        expanded.push(' ');
        expanded.push_str(meaning);
    }
    expanded
}

#[cfg(test)]
mod tests {
    use super::{SYNONYMS, expand};

    /// [`expand`] as first written: every key compared with every window
    /// of the query's words.
    fn expand_as_first_written(query: &str) -> String {
        let words: Vec<String> = query
            .split(|c: char| {
                c.is_whitespace() || matches!(c, ',' | '.' | '?' | '!' | ';' | '(' | ')' | '"')
            })
            .filter(|w| !w.is_empty())
            .map(|w| w.trim_matches('\'').to_lowercase())
            .collect();
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

    /// The look-up by first word expands as the comparison with every key
    /// did, over texts built from the keys' own words, in either case,
    /// run together, quoted and apart.
    #[test]
    fn expands_as_first_written() {
        let words: Vec<&str> = SYNONYMS
            .iter()
            .flat_map(|(key, _)| key.split(' '))
            .chain([
                "",
                "team",
                "the",
                "Platform",
                "OKRs",
                "'em'",
                "\u{212a}",
                "SL\u{0130}",
            ])
            .collect();
        let separators = [" ", "  ", ", ", "'", "-", "?", " '", "\n"];
        // Seeded: the same texts every run.
        let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
        let mut next = |n: usize| rng.usize(..n);
        let mut expanded = 0;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..1 + next(10) {
                let word = words[next(words.len())];
                if next(3) == 0 {
                    text.push_str(&word.to_uppercase());
                } else {
                    text.push_str(word);
                }
                text.push_str(separators[next(separators.len())]);
            }
            let fast = expand(&text);
            assert_eq!(fast, expand_as_first_written(&text), "{text:?}");
            expanded += usize::from(fast.len() > text.len());
        }
        assert!(expanded > 5_000, "the texts exercise the keys: {expanded}");
    }

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
