//! The persona's rules, checked on every reply whoever wrote it (the offline
//! coach or a model). Pure: the conversation service stores what this finds
//! with the message and counts it in `tp.coach.policy_violations`.

use crate::ContextProfile;

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

/// Whether the reply gives substantial advice (as opposed to asking,
/// summarising or naming a lens to explore).
pub fn gives_advice(lower: &str) -> bool {
    ADVICE_MARKERS.iter().any(|m| lower.contains(m))
}

/// The rules `reply` breaks, given what is known of the user's situation.
pub fn check(reply: &str, profile: &ContextProfile, word_cap: usize) -> Vec<Rule> {
    let lower = reply.to_lowercase();
    let mut broken = Vec::new();
    if reply.matches('?').count() > crate::MAX_QUESTIONS {
        broken.push(Rule::TooManyQuestions);
    }
    if reply.contains("```") || CODE_REVIEW_MARKERS.iter().any(|m| lower.contains(m)) {
        broken.push(Rule::WroteCode);
    }
    if DECISION_MARKERS.iter().any(|m| lower.contains(m)) {
        broken.push(Rule::DecidedForUser);
    }
    if gives_advice(&lower) {
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

pub fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
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

    #[test]
    fn rule_names_are_stable() {
        assert_eq!(
            Rule::AdviceWithoutFramework.as_str(),
            "advice_without_framework"
        );
    }
}
