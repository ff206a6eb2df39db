//! The persona's rules, checked on every reply whoever wrote it (the offline
//! coach or a model). Pure: the conversation service stores what this finds
//! with the message and counts it in `tp.coach.policy_violations`.

use std::sync::LazyLock;

use crate::ContextProfile;
use crate::patterns::PatternLists;

/// Replies longer than this many words break the "concise" rule.
pub const DEFAULT_WORD_CAP: usize = 180;

/// A persona rule a reply can break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// More than two questions in one reply.
    TooManyQuestions,
    /// Code, or a code review, in the reply.
    WroteCode,
    /// The reply made the user's decision for them.
    DecidedForUser,
    /// Substantial advice while the context it needs is missing.
    AdviceWithoutContext,
    /// Substantial advice that names no framework.
    AdviceWithoutFramework,
    /// Over the word cap.
    TooLong,
}

impl Rule {
    /// The stable name stored with messages and used as the metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Rule::TooManyQuestions => "too_many_questions",
            Rule::WroteCode => "wrote_code",
            Rule::DecidedForUser => "decided_for_user",
            Rule::AdviceWithoutContext => "advice_without_context",
            Rule::AdviceWithoutFramework => "advice_without_framework",
            Rule::TooLong => "too_long",
        }
    }
}

/// The frameworks the persona grounds advice in, as they are named.
pub const FRAMEWORK_NAMES: &[&str] = &[
    "Technical Coherence",
    "Staff Archetypes",
    "Trunk and Branches",
    "Engineer/Manager Pendulum",
    "Observability-Driven Development",
    "Engineering Strategy",
    "Systems Dynamics",
];

const ADVICE_MARKERS: &[&str] = &[
    "i recommend",
    "i'd recommend",
    "i would recommend",
    "my advice",
    "you should",
    "the best approach",
    "here's what i'd do",
    "here is what i would do",
    "start by",
];

const DECISION_MARKERS: &[&str] = &[
    "my decision is",
    "i've decided",
    "i have decided",
    "the right decision is",
    "you must",
    "definitely go with",
    "the answer is to",
];

const CODE_REVIEW_MARKERS: &[&str] = &[
    "lgtm",
    "approve this pr",
    "approved the pr",
    "this diff looks",
];

/// A reply read for code, a decision made and advice, in one pass of one
/// automaton: a `str::contains` per marker over a whole reply was ~22k
/// instructions of `conversation`'s per SendMessage (callgrind, session 31).
static REPLY_MARKERS: LazyLock<PatternLists<3>> = LazyLock::new(|| {
    let code = CODE_REVIEW_MARKERS.iter().chain(["```"].iter());
    PatternLists::new([
        code.copied().collect(),
        DECISION_MARKERS.to_vec(),
        ADVICE_MARKERS.to_vec(),
    ])
});

/// Which of the reply's markers `text` holds: [code, decision, advice].
fn markers_in(text: &str) -> [bool; 3] {
    REPLY_MARKERS
        .first_listed_in_lowered(text)
        .map(|first| first.is_some())
}

/// Whether the reply gives substantial advice (as opposed to asking,
/// summarising or naming a lens to explore).
pub fn gives_advice(reply: &str) -> bool {
    markers_in(reply)[2]
}

/// The rules `reply` breaks, given what is known of the user's situation.
pub fn check(reply: &str, profile: &ContextProfile, word_cap: usize) -> Vec<Rule> {
    let [code, decision, advice] = markers_in(reply);
    let mut broken = Vec::new();
    if reply.matches('?').count() > crate::MAX_QUESTIONS {
        broken.push(Rule::TooManyQuestions);
    }
    if code {
        broken.push(Rule::WroteCode);
    }
    if decision {
        broken.push(Rule::DecidedForUser);
    }
    if advice {
        if !profile.is_sufficient() {
            broken.push(Rule::AdviceWithoutContext);
        }
        if !FRAMEWORK_NAMES.iter().any(|name| reply.contains(name)) {
            broken.push(Rule::AdviceWithoutFramework);
        }
    }
    if word_count(reply) > word_cap {
        broken.push(Rule::TooLong);
    }
    broken
}

/// The words in `text`, as `text.split_whitespace().count()` counts them.
pub fn word_count(text: &str) -> usize {
    if !text.is_ascii() {
        return text.split_whitespace().count();
    }
    // ASCII a byte at a time: every reply's parts are counted, and the
    // whole reply again. A word starts at a byte that is not a space after
    // one that is; counted into a byte per 128-byte block, the compiler
    // tests 16 bytes an instruction (~20 times faster than
    // `split_whitespace` on a reply).
    let bytes = text.as_bytes();
    let Some(&first) = bytes.first() else {
        return 0;
    };
    let mut words = usize::from(!is_ascii_space(first));
    for (before, at) in bytes.chunks(128).zip(bytes[1..].chunks(128)) {
        let mut starts: u8 = 0;
        for (&before, &at) in before.iter().zip(at) {
            starts += u8::from(is_ascii_space(before) & !is_ascii_space(at));
        }
        words += usize::from(starts);
    }
    words
}

/// `char::is_whitespace` of an ASCII byte (unlike `u8::is_ascii_whitespace`,
/// it counts the vertical tab).
pub fn is_ascii_space(byte: u8) -> bool {
    (byte == b' ') | (byte.wrapping_sub(b'\t') <= b'\r' - b'\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> ContextProfile {
        ContextProfile::from_turns(["I'm a director of 60 engineers at a series C company."])
    }

    #[test]
    fn a_good_reply_breaks_nothing() {
        let reply = "Here's what I understand: 60 engineers, series C. \
                     I recommend starting from Staff Archetypes: which shape do you need?";
        assert!(check(reply, &known(), DEFAULT_WORD_CAP).is_empty());
    }

    #[test]
    fn each_rule_is_caught() {
        let unknown = ContextProfile::default();
        assert_eq!(
            check("One? Two? Three?", &known(), 180),
            vec![Rule::TooManyQuestions]
        );
        assert_eq!(
            check("```rust\nfn main() {}\n```", &known(), 180),
            vec![Rule::WroteCode]
        );
        assert_eq!(
            check("LGTM, ship it.", &known(), 180),
            vec![Rule::WroteCode]
        );
        assert_eq!(
            check(
                "You must reorganise. Technical Coherence says so.",
                &known(),
                180
            ),
            vec![Rule::DecidedForUser]
        );
        assert_eq!(
            check(
                "I recommend a platform team, per Trunk and Branches.",
                &unknown,
                180
            ),
            vec![Rule::AdviceWithoutContext]
        );
        assert_eq!(
            check("I recommend a platform team.", &known(), 180),
            vec![Rule::AdviceWithoutFramework]
        );
        assert_eq!(
            check(&"word ".repeat(181), &known(), 180),
            vec![Rule::TooLong]
        );
    }

    #[test]
    fn questions_and_lenses_are_not_advice() {
        let reply = "One lens that may help is Systems Dynamics. What accumulates here?";
        assert!(check(reply, &ContextProfile::default(), 180).is_empty());
    }

    /// The rules as first written: `str::contains` over the lowered reply.
    fn markers_as_first_written(reply: &str) -> [bool; 3] {
        let lower = reply.to_lowercase();
        let any = |list: &[&str]| list.iter().any(|m| lower.contains(m));
        [
            reply.contains("```") || any(CODE_REVIEW_MARKERS),
            any(DECISION_MARKERS),
            any(ADVICE_MARKERS),
        ]
    }

    #[test]
    fn a_reply_is_read_as_a_search_for_each_marker_read_it() {
        let markers = CODE_REVIEW_MARKERS
            .iter()
            .chain(DECISION_MARKERS)
            .chain(ADVICE_MARKERS)
            .chain(["```"].iter());
        let mut replies = vec![String::new(), "What accumulates here?".to_owned()];
        for marker in markers {
            let shouted = marker.to_uppercase();
            replies.extend([
                format!("Here's a thought: {marker} the platform team."),
                format!("{shouted}!"),
                format!("Ünsere İdee: {marker}"),
                // The Kelvin sign lowers to an ASCII k.
                shouted.replace('K', "\u{212A}"),
                format!("You say {} here", &marker[..marker.len() - 1]),
            ]);
        }
        for reply in &replies {
            assert_eq!(
                markers_in(reply),
                markers_as_first_written(reply),
                "{reply:?}"
            );
        }
    }

    #[test]
    fn words_are_counted_as_split_whitespace_counts_them() {
        for text in [
            "",
            " ",
            "one",
            "  two words ",
            "tab\tnew\nline\rcarriage\x0bvertical\x0cfeed",
            "Ünsere\u{a0}Idee\u{2003}hier und\u{85}da",
            "end.\n\nNext paragraph, with punctuation; and more.",
            // Across the 128-byte blocks the count is kept in.
            &"a b  ".repeat(200),
            &"word ".repeat(300),
            &"x".repeat(129),
        ] {
            assert_eq!(
                word_count(text),
                text.split_whitespace().count(),
                "{text:?}"
            );
        }
        for byte in 0..=127u8 {
            assert_eq!(
                is_ascii_space(byte),
                char::from(byte).is_whitespace(),
                "{byte}"
            );
        }
    }

    #[test]
    fn rule_names_are_stable() {
        assert_eq!(
            Rule::AdviceWithoutFramework.as_str(),
            "advice_without_framework"
        );
    }
}
