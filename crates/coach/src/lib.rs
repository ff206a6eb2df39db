//! The thought partner's behaviour as pure logic: no I/O, no clock, no
//! randomness, so every reply is reproducible and unit-tested directly.
//!
//! The offline responder follows `persona.md`: it asks before advising,
//! challenges common assumptions (with the second-order effect that makes
//! them risky), is direct about known anti-patterns, grounds itself in at
//! most two frameworks the knowledge service matched, summarises what it
//! knows, never asks more than two questions, stays under the word cap,
//! declines code and code review, leaves decisions to the user and says so
//! when a question is outside its topics.

pub mod conformance;
mod patterns;
mod profile;
pub mod rules;

use std::sync::LazyLock;

use patterns::PatternLists;
pub use profile::{ContextProfile, MissingContext, Stage, TurnFacts, words};

/// A framework the knowledge service matched to the user's turn.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameworkRef {
    /// The corpus id, stored as the reply's citation.
    pub framework_id: String,
    pub name: String,
    pub author: String,
    pub application: String,
    pub diagnostic_question: String,
    /// Where to read more (may be empty).
    pub source_url: String,
}

/// Everything the coach may look at for one reply.
#[derive(Clone, Debug)]
pub struct CoachInput<'a> {
    /// The user's new turn.
    pub message: &'a str,
    /// What the user has told us so far, this turn included.
    pub profile: &'a ContextProfile,
    /// Matched frameworks, best first.
    pub frameworks: &'a [FrameworkRef],
    /// The most words a reply may have (see [`rules::DEFAULT_WORD_CAP`]).
    pub word_cap: usize,
    /// Which reply to this turn this is: 0 for the first, 1, 2, … when the
    /// member asks again (RegenerateReply). Asked again, the coach says it
    /// is taking another angle and leads with the next matched framework,
    /// so the same question never gets the same answer twice in a row.
    pub attempt: u32,
    /// The frameworks the reply before this turn cited, the one it led
    /// with first; empty on a first turn. The member has had those lenses
    /// and their questions, and this turn is likely the answer: the coach
    /// leads with another, or builds on them rather than asking again.
    pub previous_citations: &'a [String],
    /// How many turns the member made before this one in the conversation.
    pub earlier_turns: usize,
    /// The member's turn before this one, if any: a challenge or an
    /// anti-pattern it raised was answered in the reply to it, and is not
    /// raised again because this turn mentions the same thing.
    pub previous_turn: Option<&'a str>,
    /// The reply before this turn, if any: a context question it asked
    /// that this turn left unanswered is not asked again straight away.
    pub previous_reply: Option<&'a str>,
}

/// The reply and what it drew on.
#[derive(Clone, Debug, PartialEq)]
pub struct CoachReply {
    pub text: String,
    /// Ids of the frameworks the reply cites.
    pub cited_frameworks: Vec<String>,
    /// How many questions the reply asks (never more than two).
    pub questions_asked: usize,
}

/// The persona never asks more than this many questions in one turn.
pub const MAX_QUESTIONS: usize = 2;

/// How much a part of a reply matters when the word cap forces a cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Weight {
    /// Dropped first.
    Optional,
    /// Kept unless nothing else fits.
    Useful,
    /// Never dropped: the summary, what the persona must say, the questions.
    Essential,
}

struct Part {
    text: String,
    weight: Weight,
    /// `rules::word_count(&text)`, counted once: fitting a reply to the cap
    /// sums the parts after every cut.
    words: usize,
}

fn part(text: impl Into<String>, weight: Weight) -> Part {
    let text = text.into();
    Part {
        words: rules::word_count(&text),
        text,
        weight,
    }
}

/// Composes the reply to one user turn.
pub fn reply(input: &CoachInput<'_>) -> CoachReply {
    let profile = input.profile;
    let read = TurnRead::of(input.message);
    if read.out_of_scope(profile) {
        return CoachReply {
            text: "That's outside what I can help with: I'm a thought partner for engineering \
                   leadership (org design, hiring, strategy, technical quality, careers, \
                   infrastructure and observability). What leadership question is on your mind?"
                .to_owned(),
            cited_frameworks: Vec::new(),
            questions_asked: 1,
        };
    }

    let mut parts: Vec<Part> = Vec::new();
    let mut questions: Vec<String> = Vec::new();

    if read.wants_code {
        parts.push(part(
            "I won't write code or review pull requests; that's not where I'm useful. \
             I can help with the decision behind it: the trade-offs, who it affects, and how \
             you'll know it worked.",
            Weight::Essential,
        ));
    }
    if input.attempt > 0 {
        parts.push(part(
            "You asked again, so let me come at this from another angle.",
            Weight::Essential,
        ));
    }
    if let Some(summary) = profile.summary() {
        parts.push(part(
            format!("Here's what I understand so far: {summary}."),
            Weight::Essential,
        ));
    }
    // What the member's previous turn raised was answered in the reply to it.
    let (anti_pattern_then, challenge_then) = input
        .previous_turn
        .map(TurnRead::of)
        .map_or((None, None), |then| (then.anti_pattern, then.challenge));
    let anti_pattern = read
        .anti_pattern
        .filter(|&now| !same_entry(now, anti_pattern_then));
    let challenge = read
        .challenge
        .filter(|&now| !same_entry(now, challenge_then));
    if let Some(anti_pattern) = anti_pattern {
        parts.push(part(
            format!("That's a known anti-pattern: {}", anti_pattern.why),
            Weight::Essential,
        ));
    }
    if let Some(challenge) = challenge {
        parts.push(part(
            format!(
                "{} Second-order effect: {}",
                challenge.why, challenge.second_order
            ),
            Weight::Essential,
        ));
        questions.push(challenge.question.to_owned());
    }
    if read.asks_to_decide {
        parts.push(part(
            "It's your call, and it should be: you know the people and constraints. Here are \
             the options as I see them: act now, run a small time-boxed experiment first, or \
             wait until you know more. Each trades speed against the cost of being wrong.",
            Weight::Essential,
        ));
        questions
            .push("Which constraint matters most to you here: time, risk or people?".to_owned());
    }

    // Lenses the member has not had yet lead, in the order they matched:
    // the previous reply's were offered with their questions, and leading
    // with them again would ask the member what they just answered.
    let mut lenses: Vec<&FrameworkRef> = input.frameworks.iter().collect();
    let offered = |f: &FrameworkRef| input.previous_citations.contains(&f.framework_id);
    lenses.sort_by_key(|f| offered(f));
    // Asked again, the next matched framework leads.
    if !lenses.is_empty() {
        let turn = usize::try_from(input.attempt).unwrap_or(0) % lenses.len();
        lenses.rotate_left(turn);
    }
    let mut cited = Vec::new();
    match lenses.first().copied() {
        // Offered last turn while the coach was still asking for context:
        // saying it again adds nothing until the context is there.
        Some(first) if offered(first) && !profile.is_sufficient() => {}
        // Every matched lens was offered last turn: build on the lead with
        // what the member has said since, and move towards a next step.
        Some(first) if offered(first) => {
            parts.push(part(
                format!(
                    "Building on {}, with what you've told me since: {}",
                    first.name,
                    first_sentence(&first.application)
                ),
                Weight::Useful,
            ));
            parts.push(part(
                "A practical next step: the smallest change that would test this, how you'll \
                 know it worked agreed up front, and a date to look again. Which step comes \
                 first is your call.",
                Weight::Optional,
            ));
            cited.push(first.framework_id.clone());
            questions.push(follow_through(input.earlier_turns));
        }
        Some(first) => {
            let mut text = format!(
                "One lens that may help is {}, from {}. {}",
                first.name, first.author, first.application
            );
            match (profile.situation(), &profile.problem) {
                (Some(situation), Some(problem)) => text.push_str(&format!(
                    " Applied to {situation}, where {problem}, it is where I would start looking."
                )),
                (Some(situation), None) => text.push_str(&format!(
                    " Applied to {situation}, it is where I would start looking."
                )),
                (None, _) => {}
            }
            if !first.source_url.is_empty() {
                text.push_str(&format!(" (Source: {}.)", first.source_url));
            }
            parts.push(part(text, Weight::Useful));
            cited.push(first.framework_id.clone());
            if let Some(second) = lenses.get(1) {
                parts.push(part(
                    format!(
                        "Another is {}, from {}, which looks at the same situation from a \
                         different angle: {}",
                        second.name,
                        second.author,
                        first_sentence(&second.application)
                    ),
                    Weight::Optional,
                ));
                cited.push(second.framework_id.clone());
            }
            if profile.is_sufficient() {
                questions.push(first.diagnostic_question.clone());
            }
        }
        None => {}
    }

    // Context before advice: ask for what is still missing, but not twice
    // running. A question the previous reply asked and this turn left
    // unanswered is the member's choice: say once what the coach goes on
    // instead, and ask again only after a reply that neither asked nor
    // assumed it.
    let mut assumed = false;
    for gap in profile.missing_context() {
        match input.previous_reply {
            Some(then) if then.contains(gap.question) => {
                parts.push(part(gap.assumption, Weight::Useful));
                assumed = true;
            }
            Some(then) if then.contains(gap.assumption) => {}
            _ => questions.push(gap.question.to_owned()),
        }
    }
    questions.dedup();
    questions.truncate(MAX_QUESTIONS);
    if questions.is_empty() {
        questions.push(follow_through(input.earlier_turns));
    } else if !profile.is_sufficient() && !assumed {
        parts.push(part(
            "Before I suggest anything, I'd like to understand your situation better.",
            Weight::Essential,
        ));
    }
    let questions_asked = questions.len();
    parts.extend(questions.into_iter().map(|q| part(q, Weight::Essential)));

    let parts = fit_to_cap(parts, lenses.first().copied(), input.word_cap);
    CoachReply {
        text: parts
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join("\n\n"),
        cited_frameworks: cited,
        questions_asked,
    }
}

/// What the coach asks once the member has had the matched lenses and their
/// questions: one per turn, a different one on consecutive turns.
fn follow_through(earlier_turns: usize) -> String {
    const QUESTIONS: [&str; 3] = [
        "What would a good outcome look like for you three months from now?",
        "Who else needs to be part of this, and what will they worry about?",
        "What would tell you early that this isn't working?",
    ];
    QUESTIONS[earlier_turns % QUESTIONS.len()].to_owned()
}

/// Whether a turn found the entry of a static list another turn found.
fn same_entry<T>(now: &'static T, then: Option<&'static T>) -> bool {
    then.is_some_and(|then| std::ptr::eq(now, then))
}

/// The first sentence of a text (all of it when it has one).
fn first_sentence(text: &str) -> &str {
    // A full stop found by `memchr` then checked for the space after it:
    // `split_inclusive(". ")` ran a two-way string search over the text.
    let end = text
        .match_indices('.')
        .map(|(stop, _)| stop + 1)
        .find(|&after| text.as_bytes().get(after) == Some(&b' '))
        .map_or(text.len(), |after| after + 1);
    text[..end].trim()
}

/// Keeps a reply within the word cap: first the framework paragraph keeps
/// only its first sentence, then parts go, least weighty and latest first.
fn fit_to_cap(mut parts: Vec<Part>, framework: Option<&FrameworkRef>, cap: usize) -> Vec<Part> {
    let words = |parts: &[Part]| parts.iter().map(|p| p.words).sum::<usize>();
    if words(&parts) <= cap {
        return parts;
    }
    if let Some(framework) = framework {
        let first_sentence = first_sentence(&framework.application);
        let prefix = format!("One lens that may help is {}", framework.name);
        for p in parts.iter_mut().filter(|p| p.text.starts_with(&prefix)) {
            p.text = format!("{prefix}, from {}. {first_sentence}", framework.author);
            if !framework.source_url.is_empty() {
                p.text
                    .push_str(&format!(" (Source: {}.)", framework.source_url));
            }
            p.words = rules::word_count(&p.text);
        }
    }
    let mut total = words(&parts);
    for weight in [Weight::Optional, Weight::Useful] {
        while total > cap {
            let Some(index) = parts.iter().rposition(|p| p.weight == weight) else {
                break;
            };
            total -= parts.remove(index).words;
        }
    }
    parts
}

/// Asks for code or a code review, which the persona declines.
const CODE_ASKS: &[&str] = &[
    "write code",
    "write the code",
    "write me a",
    "review my pr",
    "review this pr",
    "review my pull request",
    "code review",
    "fix this code",
];

/// Asks to have the user's decision made for them, as they appear in the
/// padded words of a turn ([`words`]).
const DECISION_ASKS: &[&str] = &[
    " should i ",
    " decide for me ",
    " tell me what to do ",
    " which should i pick ",
    " just tell me ",
];

/// Asks that are personal or unrelated whatever else they mention (in a
/// turn's padded words).
const UNRELATED: &[&str] = &[
    " stock pick",
    " which stocks ",
    " buy stocks ",
    " crypto",
    " legal advice ",
    " my lawyer ",
    " my taxes ",
    " tax return ",
    " tax treatment ",
    " medical advice ",
    " medication ",
    " my doctor ",
    " champions league ",
    " football ",
    " soccer ",
    " basketball ",
];

/// The vocabulary of engineering leadership (in a turn's padded words).
const LEADERSHIP: &[&str] = &[
    "engineer",
    "team",
    "manag",
    "lead",
    "hire",
    "hiring",
    "recruit",
    "interview",
    "org",
    "report",
    "staff",
    "principal",
    "promot",
    "promo",
    "career",
    "ladder",
    "level",
    "strategy",
    "roadmap",
    "priorit",
    "tech",
    "debt",
    "code",
    "deploy",
    "release",
    "incident",
    "on-call",
    "oncall",
    "paged",
    "outage",
    "product",
    "architecture",
    "platform",
    "infra",
    "observab",
    "slo",
    "process",
    "velocity",
    "meeting",
    "1:1",
    "one-on-one",
    "feedback",
    "performance",
    "company",
    "startup",
    "cto",
    "vp",
    "director",
    "ic ",
    " em ",
    "budget",
    "headcount",
    "culture",
    "boss",
    "peer",
    "stakeholder",
    "burnout",
    "people",
    "coach",
    "mentor",
    "sponsor",
    "quality",
    "migration",
    "rewrite",
    "service",
    "system",
    "goal",
    "okr",
    "metric",
    "measure",
    "ship",
    "work",
    "database",
    "queue",
    "cloud",
    "vendor",
    "tool",
    "stack",
    "backlog",
    "deadline",
    "sprint",
];

/// What the coach reads in the user's new turn.
#[derive(Debug, PartialEq)]
struct TurnRead {
    wants_code: bool,
    /// The first anti-pattern, in [`ANTI_PATTERNS`]' order, a trigger of
    /// which the turn holds.
    anti_pattern: Option<&'static AntiPattern>,
    /// The same, of [`CHALLENGES`].
    challenge: Option<&'static Challenge>,
    asks_to_decide: bool,
    unrelated: bool,
    leadership: bool,
}

/// The turn's lowered text read for an ask for code, and for the triggers
/// of every anti-pattern, then of every challenge, in their order.
static MESSAGE_PATTERNS: LazyLock<PatternLists<3>> = LazyLock::new(|| {
    PatternLists::new([
        CODE_ASKS.to_vec(),
        ANTI_PATTERNS
            .iter()
            .flat_map(|a| a.triggers)
            .copied()
            .collect(),
        CHALLENGES
            .iter()
            .flat_map(|c| c.triggers)
            .copied()
            .collect(),
    ])
});

/// The turn's padded words read for an ask to decide, an unrelated topic
/// and the vocabulary of leadership.
static WORD_PATTERNS: LazyLock<PatternLists<3>> = LazyLock::new(|| {
    PatternLists::new([
        DECISION_ASKS.to_vec(),
        UNRELATED.to_vec(),
        LEADERSHIP.to_vec(),
    ])
});

impl TurnRead {
    /// Outside the persona's topics: clearly personal or unrelated asks, or
    /// an opening question with none of the vocabulary of engineering
    /// leadership (once a leader has described their situation, a terse
    /// follow-up such as "just tell me" is still part of that
    /// conversation). A recognised leadership premise is on topic,
    /// whatever the wording.
    fn out_of_scope(&self, profile: &ContextProfile) -> bool {
        let recognised = self.wants_code || self.anti_pattern.is_some() || self.challenge.is_some();
        if recognised {
            return false;
        }
        if self.unrelated {
            return true;
        }
        let opening = *profile == ContextProfile::default();
        opening && !self.asks_to_decide && !self.leadership
    }

    /// Two passes over the turn, one automaton each: ~50 `str::contains`
    /// over it, each setting up its own searcher, were a tenth of
    /// `conversation`'s instructions per SendMessage (callgrind, session 31).
    fn of(message: &str) -> Self {
        let [code_ask, anti_pattern, challenge] = MESSAGE_PATTERNS.first_listed_in_lowered(message);
        let [decision_ask, unrelated, leadership] = WORD_PATTERNS.first_listed_in(&words(message));
        TurnRead {
            wants_code: code_ask.is_some(),
            anti_pattern: anti_pattern.and_then(|i| owner(ANTI_PATTERNS, |a| a.triggers, i)),
            challenge: challenge.and_then(|i| owner(CHALLENGES, |c| c.triggers, i)),
            asks_to_decide: decision_ask.is_some(),
            unrelated: unrelated.is_some(),
            leadership: leadership.is_some(),
        }
    }
}

/// The item holding the `index`th of all the items' triggers, counted in
/// order.
fn owner<T>(
    items: &'static [T],
    triggers: fn(&T) -> &'static [&'static str],
    index: usize,
) -> Option<&'static T> {
    let mut end = 0;
    items.iter().find(|item| {
        end += triggers(item).len();
        index < end
    })
}

/// A premise the persona always questions.
#[derive(Debug, PartialEq)]
struct Challenge {
    triggers: &'static [&'static str],
    why: &'static str,
    second_order: &'static str,
    question: &'static str,
}

const CHALLENGES: &[Challenge] = &[
    Challenge {
        triggers: &[
            "hire more",
            "more engineers",
            "more headcount",
            "need more people",
        ],
        why: "Hiring is one answer, but new people take months to become productive.",
        second_order: "onboarding pulls your seniors off the work, so delivery often slows before it speeds up.",
        question: "What problem would the new engineers solve that the current team can't?",
    },
    Challenge {
        triggers: &["velocity", "too slow", "moving slowly", "ship faster"],
        why: "\"Slow\" can mean long cycle times, too much unplanned work, or expectations that outgrew capacity.",
        second_order: "pushing on the wrong one adds pressure and rework that make the real bottleneck worse.",
        question: "How are you measuring velocity today, and who is saying it's slow?",
    },
    Challenge {
        triggers: &["rewrite", "rewriting", "start from scratch"],
        why: "Rewrites promise a clean slate but must rebuild years of hidden behaviour.",
        second_order: "the old system still needs care meanwhile, so you run two systems for longer than planned.",
        question: "What would the rewrite fix that incremental change can't?",
    },
    Challenge {
        triggers: &["microservices", "micro-services", "split the monolith"],
        why: "Microservices trade code coupling for operational and coordination cost.",
        second_order: "every new service adds on-call, deployment and debugging load that small teams feel first.",
        question: "What problem do you expect microservices to solve?",
    },
    Challenge {
        triggers: &["platform team"],
        why: "A platform team helps only if it owns problems several teams share.",
        second_order: "a platform without clear customers becomes a queue that every team waits on.",
        question: "Which shared problems would a platform team own?",
    },
    Challenge {
        triggers: &["more process", "add process", "stricter process"],
        why: "Process encodes a lesson, but each step taxes every change.",
        second_order: "people route around heavy process, and the failures it should catch move out of sight.",
        question: "Which failure is the new process meant to prevent?",
    },
    Challenge {
        triggers: &["story points", "lines of code", "number of commits"],
        why: "Story points and lines of code measure activity, not outcomes.",
        second_order: "once a number becomes a target, people optimise the number instead of the result.",
        question: "What outcome do you actually want to see change?",
    },
];

/// Plans the persona calls out plainly.
#[derive(Debug, PartialEq)]
struct AntiPattern {
    triggers: &'static [&'static str],
    why: &'static str,
}

const ANTI_PATTERNS: &[AntiPattern] = &[
    AntiPattern {
        triggers: &["lines of code", "number of commits"],
        why: "counting output rewards volume and punishes the engineers who simplify.",
    },
    AntiPattern {
        triggers: &["stack rank", "stack ranking"],
        why: "forced ranking turns colleagues into competitors and drives out collaboration.",
    },
    AntiPattern {
        triggers: &["hire our way out", "10x engineer"],
        why: "betting on heroes or headcount hides the system that produces the problem.",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    fn framework() -> FrameworkRef {
        FrameworkRef {
            framework_id: "systems-dynamics".into(),
            name: "Systems Dynamics".into(),
            author: "Donella Meadows".into(),
            application: "Draw the stocks and flows.".into(),
            diagnostic_question: "What accumulates here?".into(),
            source_url: "https://lethain.com".into(),
        }
    }

    /// The turn as `reply` read it before session 31: a `str::contains`
    /// for each pattern, over the lowered turn or its padded words.
    fn read_as_first_written(message: &str) -> TurnRead {
        let lower = message.to_lowercase();
        let padded = words(message);
        let any = |list: &[&str], text: &str| list.iter().any(|p| text.contains(p));
        TurnRead {
            wants_code: any(CODE_ASKS, &lower),
            anti_pattern: ANTI_PATTERNS.iter().find(|a| any(a.triggers, &lower)),
            challenge: CHALLENGES.iter().find(|c| any(c.triggers, &lower)),
            asks_to_decide: any(DECISION_ASKS, &padded),
            unrelated: any(UNRELATED, &padded),
            leadership: any(LEADERSHIP, &padded),
        }
    }

    #[test]
    fn the_first_sentence_ends_at_the_first_full_stop_and_space() {
        for text in [
            "",
            "No full stop",
            "One. Two. Three.",
            "Version 2.0 ships. Then more.",
            "Ends with a stop.",
            "Stop.\nNo space. After",
            " Padded.  Twice ",
            "Ünsere. Idee.",
            "...",
        ] {
            let as_first_written = text.split_inclusive(". ").next().unwrap_or_default().trim();
            assert_eq!(first_sentence(text), as_first_written, "{text:?}");
        }
    }

    #[test]
    fn a_turn_is_read_as_a_search_for_each_pattern_read_it() {
        let triggers = || {
            ANTI_PATTERNS
                .iter()
                .flat_map(|a| a.triggers)
                .chain(CHALLENGES.iter().flat_map(|c| c.triggers))
                .chain(CODE_ASKS)
                .chain(DECISION_ASKS)
                .chain(UNRELATED)
                .map(|p| p.trim())
        };
        let mut turns = vec![
            String::new(),
            "How do I grow my staff engineers?".to_owned(),
            "What's the weather like?".to_owned(),
        ];
        for pattern in triggers().chain(LEADERSHIP.iter().map(|p| p.trim())) {
            let shouted = pattern.to_uppercase();
            turns.extend([
                pattern.to_owned(),
                format!("We keep coming back to {pattern} this quarter."),
                format!("{shouted}!"),
                format!("Ünsere Frage, İ think: {pattern}?"),
                format!("ΣΟΦΙΑ says {shouted}"),
                // The Kelvin sign lowers to an ASCII k.
                shouted.replace('K', "\u{212A}"),
            ]);
        }
        // Two triggers in either order: the first listed item is read,
        // wherever its trigger stands in the turn.
        for first in triggers() {
            for second in triggers() {
                turns.push(format!("{first}, then {second}."));
            }
        }
        for turn in &turns {
            assert_eq!(TurnRead::of(turn), read_as_first_written(turn), "{turn:?}");
        }
        let read = TurnRead::of("Stack ranking and story points, or should I hire more?");
        assert_eq!(read.anti_pattern, Some(&ANTI_PATTERNS[1]));
        assert_eq!(read.challenge, Some(&CHALLENGES[0]));
        assert!(read.asks_to_decide && !read.wants_code && !read.unrelated);
    }

    fn profile(earlier: &[&str], message: &str) -> ContextProfile {
        ContextProfile::from_turns(earlier.iter().copied().chain([message]))
    }

    fn count_questions(text: &str) -> usize {
        text.matches('?').count()
    }

    #[test]
    fn asks_for_context_before_advising() {
        let reply = reply(&CoachInput {
            message: "My team is struggling.",
            profile: &profile(&[], "My team is struggling."),
            frameworks: &[],
            word_cap: rules::DEFAULT_WORD_CAP,
            attempt: 0,
            previous_citations: &[],
            previous_reply: None,
            earlier_turns: 0,
            previous_turn: None,
        });
        assert!(reply.text.contains("Before I suggest anything"));
        assert!(reply.text.contains("How many engineers"));
        assert!(count_questions(&reply.text) <= MAX_QUESTIONS);
        assert!(
            !reply.text.contains("My team is struggling"),
            "must not echo"
        );
    }

    #[test]
    fn challenges_hiring_as_the_answer() {
        let reply = reply(&CoachInput {
            message: "We need to hire more engineers, we're 40 engineers at series B.",
            profile: &profile(
                &[],
                "We need to hire more engineers, we're 40 engineers at series B.",
            ),
            frameworks: &[framework()],
            word_cap: rules::DEFAULT_WORD_CAP,
            attempt: 0,
            previous_citations: &[],
            previous_reply: None,
            earlier_turns: 0,
            previous_turn: None,
        });
        assert!(
            reply
                .text
                .contains("What problem would the new engineers solve")
        );
        assert!(reply.text.contains("Systems Dynamics"));
        assert!(reply.text.contains("40 engineers"));
        assert!(reply.questions_asked <= MAX_QUESTIONS);
        assert!(count_questions(&reply.text) <= MAX_QUESTIONS);
    }

    #[test]
    fn declines_to_write_code() {
        let reply = reply(&CoachInput {
            message: "Can you review my PR for the billing service?",
            profile: &ContextProfile::default(),
            frameworks: &[],
            word_cap: rules::DEFAULT_WORD_CAP,
            attempt: 0,
            previous_citations: &[],
            previous_reply: None,
            earlier_turns: 0,
            previous_turn: None,
        });
        assert!(
            reply
                .text
                .starts_with("I won't write code or review pull requests")
        );
    }

    #[test]
    fn with_enough_context_it_grounds_in_the_framework_question() {
        let message = "Our backlog keeps growing. We tried adding a triage rotation already.";
        let reply = reply(&CoachInput {
            message,
            profile: &profile(
                &["I'm a director of 60 engineers at a series C company."],
                message,
            ),
            frameworks: &[framework()],
            word_cap: rules::DEFAULT_WORD_CAP,
            attempt: 0,
            previous_citations: &[],
            previous_reply: None,
            earlier_turns: 0,
            previous_turn: None,
        });
        assert!(
            reply.text.contains("What accumulates here?"),
            "{}",
            reply.text
        );
        assert_eq!(reply.cited_frameworks, vec!["systems-dynamics".to_owned()]);
        assert!(!reply.text.contains("Before I suggest anything"));
    }

    #[test]
    fn replies_stay_within_the_word_cap_and_break_no_rule() {
        let long = FrameworkRef {
            framework_id: "engineering-strategy".into(),
            name: "Engineering Strategy".into(),
            author: "Will Larson".into(),
            application: format!(
                "A strategy has three parts. {}",
                "It matters a lot. ".repeat(60)
            ),
            diagnostic_question: "What is your diagnosis?".into(),
            source_url: String::new(),
        };
        let earlier = "I'm a VP of 80 engineers at a series C company.";
        for message in [
            "We need to hire more engineers because velocity is slow.",
            "Can you review my PR?",
            "Our roadmap keeps changing.",
        ] {
            let profile = profile(&[earlier], message);
            let input = CoachInput {
                message,
                profile: &profile,
                frameworks: std::slice::from_ref(&long),
                word_cap: rules::DEFAULT_WORD_CAP,
                attempt: 0,
                previous_citations: &[],
                previous_reply: None,
                earlier_turns: 0,
                previous_turn: None,
            };
            let reply = reply(&input);
            assert!(
                rules::word_count(&reply.text) <= rules::DEFAULT_WORD_CAP,
                "{}",
                reply.text
            );
            assert_eq!(
                rules::check(&reply.text, &profile, rules::DEFAULT_WORD_CAP),
                vec![],
                "{}",
                reply.text
            );
        }
    }

    #[test]
    fn off_topic_asks_are_declined_briefly_and_leadership_ones_are_not() {
        let ask = |message: &str| {
            reply(&CoachInput {
                message,
                profile: &ContextProfile::default(),
                frameworks: &[framework()],
                word_cap: rules::DEFAULT_WORD_CAP,
                attempt: 0,
                previous_citations: &[],
                previous_reply: None,
                earlier_turns: 0,
                previous_turn: None,
            })
        };
        for off_topic in [
            "What's a good lasagne recipe?",
            "Who will win the Champions League?",
        ] {
            let r = ask(off_topic);
            assert!(
                r.text.starts_with("That's outside what I can help with"),
                "{}",
                r.text
            );
            assert!(r.cited_frameworks.is_empty());
        }
        for on_topic in [
            "My team keeps missing deadlines.",
            "How do I give my boss hard feedback?",
        ] {
            assert!(
                !ask(on_topic).text.contains("outside what I can help with"),
                "{on_topic}"
            );
        }
    }

    /// A second framework, without a source.
    fn strategy_framework() -> FrameworkRef {
        FrameworkRef {
            framework_id: "engineering-strategy".into(),
            name: "Engineering Strategy".into(),
            author: "Will Larson".into(),
            application: "Diagnose first. Then set policies.".into(),
            diagnostic_question: "What is the diagnosis?".into(),
            source_url: String::new(),
        }
    }

    #[test]
    fn asked_again_the_coach_takes_another_angle_and_stays_in_persona() {
        let message = "Our backlog keeps growing.";
        let profile = profile(
            &["I'm a director of 60 engineers at a series C company."],
            message,
        );
        let second = strategy_framework();
        let frameworks = [framework(), second];
        let attempt = |attempt| {
            reply(&CoachInput {
                message,
                profile: &profile,
                frameworks: &frameworks,
                word_cap: rules::DEFAULT_WORD_CAP,
                attempt,
                previous_citations: &[],
                previous_reply: None,
                earlier_turns: 0,
                previous_turn: None,
            })
        };
        let (first, again, third) = (attempt(0), attempt(1), attempt(2));
        assert!(!first.text.contains("another angle"));
        assert!(again.text.starts_with("You asked again"), "{}", again.text);
        assert_ne!(again.text, first.text);
        assert!(
            again
                .text
                .contains("One lens that may help is Engineering Strategy"),
            "the next framework leads: {}",
            again.text
        );
        assert_eq!(
            again.cited_frameworks,
            vec!["engineering-strategy", "systems-dynamics"]
        );
        assert!(
            third
                .text
                .contains("One lens that may help is Systems Dynamics")
                || third
                    .text
                    .contains(&format!("One lens that may help is {}", framework().name)),
            "with two frameworks the third attempt comes round again: {}",
            third.text
        );
        for reply in [&again, &third] {
            assert!(reply.questions_asked <= MAX_QUESTIONS);
            assert!(
                rules::check(&reply.text, &profile, rules::DEFAULT_WORD_CAP).is_empty(),
                "{:?}",
                rules::check(&reply.text, &profile, rules::DEFAULT_WORD_CAP)
            );
        }
    }

    #[test]
    fn frameworks_are_tied_to_the_users_situation_with_a_source() {
        let message = "Our backlog keeps growing.";
        let profile = profile(
            &["I'm a director of 60 engineers at a series C company."],
            message,
        );
        let second = strategy_framework();
        let reply = reply(&CoachInput {
            message,
            profile: &profile,
            frameworks: &[framework(), second],
            word_cap: rules::DEFAULT_WORD_CAP,
            attempt: 0,
            previous_citations: &[],
            previous_reply: None,
            earlier_turns: 0,
            previous_turn: None,
        });
        assert!(reply.text.contains(
            "Applied to an organisation of about 60 engineers at a series C company, where your backlog keeps growing"
        ), "{}", reply.text);
        assert!(reply.text.contains("(Source: https://lethain.com.)"));
        assert!(reply.text.contains("Another is Engineering Strategy, from Will Larson, which looks at the same situation from a different angle: Diagnose first."));
        assert_eq!(
            reply.cited_frameworks,
            vec!["systems-dynamics", "engineering-strategy"]
        );
    }

    #[test]
    fn a_smaller_cap_is_honoured() {
        let profile = profile(
            &["I'm a VP of 80 engineers at a series C company."],
            "We need a rewrite.",
        );
        let reply = reply(&CoachInput {
            message: "We need a rewrite.",
            profile: &profile,
            frameworks: &[framework()],
            word_cap: 90,
            attempt: 0,
            previous_citations: &[],
            previous_reply: None,
            earlier_turns: 0,
            previous_turn: None,
        });
        assert!(rules::word_count(&reply.text) <= 90, "{}", reply.text);
        assert!(reply.text.contains("What would the rewrite fix"));
    }

    #[test]
    fn same_input_same_reply() {
        let known = profile(&[], "Velocity is slow.");
        let input = CoachInput {
            message: "Velocity is slow.",
            profile: &known,
            frameworks: &[framework()],
            word_cap: rules::DEFAULT_WORD_CAP,
            attempt: 0,
            previous_citations: &[],
            previous_reply: None,
            earlier_turns: 0,
            previous_turn: None,
        };
        assert_eq!(reply(&input), reply(&input));
    }

    fn lens(id: &str, name: &str, question: &str) -> FrameworkRef {
        FrameworkRef {
            framework_id: id.into(),
            name: name.into(),
            author: "Will Larson".into(),
            application: format!("Apply {name} to the org. Then more detail."),
            diagnostic_question: question.into(),
            source_url: String::new(),
        }
    }

    const SITUATION: &str = "I'm a VP of engineering with 120 engineers at a series C fintech. \
                             We tried splitting the platform team last year.";

    fn next_turn(previous_citations: &[String], earlier_turns: usize) -> CoachReply {
        let lenses = [
            lens(
                "trunk",
                "Trunk and Branches",
                "Which work is trunk and which is branch?",
            ),
            lens(
                "coherence",
                "Technical Coherence",
                "Where do teams decide things differently?",
            ),
        ];
        reply(&CoachInput {
            message: SITUATION,
            profile: &profile(&[], SITUATION),
            frameworks: &lenses,
            word_cap: rules::DEFAULT_WORD_CAP,
            attempt: 0,
            previous_citations,
            earlier_turns,
            previous_turn: None,
            previous_reply: None,
        })
    }

    #[test]
    fn a_turn_after_a_reply_leads_with_a_lens_the_member_has_not_had() {
        let first = next_turn(&[], 0);
        assert_eq!(first.cited_frameworks, ["trunk", "coherence"]);
        assert!(
            first
                .text
                .contains("Which work is trunk and which is branch?")
        );

        // The reply before led with Trunk and Branches and asked its question.
        let after = next_turn(&["trunk".to_owned()], 1);
        assert!(
            after
                .text
                .contains("One lens that may help is Technical Coherence"),
            "{}",
            after.text
        );
        assert!(
            after
                .text
                .contains("Where do teams decide things differently?")
        );
        assert!(
            !after
                .text
                .contains("Which work is trunk and which is branch?"),
            "asked again what the member just answered: {}",
            after.text
        );
        assert_eq!(after.cited_frameworks[0], "coherence");
    }

    #[test]
    fn once_every_lens_was_offered_the_coach_builds_on_it_and_moves_to_a_next_step() {
        let offered = ["trunk".to_owned(), "coherence".to_owned()];
        let second = next_turn(&offered, 1);
        let third = next_turn(&offered, 2);
        for reply in [&second, &third] {
            assert!(
                reply.text.contains("Building on Trunk and Branches"),
                "{}",
                reply.text
            );
            assert!(reply.text.contains("A practical next step"));
            assert!(
                reply.text.contains("your call"),
                "leaves the decision to the member"
            );
            assert!(
                !reply.text.contains("One lens that may help"),
                "{}",
                reply.text
            );
            for asked in ["Which work is trunk", "Where do teams decide"] {
                assert!(!reply.text.contains(asked), "asked again: {}", reply.text);
            }
            assert!(reply.text.starts_with("Here's what I understand so far"));
            assert_eq!(reply.cited_frameworks, ["trunk"]);
            assert!(reply.questions_asked >= 1 && reply.questions_asked <= MAX_QUESTIONS);
            let profile = profile(&[], SITUATION);
            assert_eq!(
                rules::check(&reply.text, &profile, rules::DEFAULT_WORD_CAP),
                []
            );
        }
        // Consecutive turns do not end on the same question.
        let last_question = |r: &CoachReply| r.text.rsplit("\n\n").next().map(str::to_owned);
        assert_ne!(last_question(&second), last_question(&third));
    }

    #[test]
    fn a_lens_offered_while_context_is_missing_is_not_repeated() {
        let message = "My team keeps missing deadlines.";
        let lenses = [lens("trunk", "Trunk and Branches", "Which work is trunk?")];
        let known = profile(&[], message);
        let input = |previous_citations| CoachInput {
            message,
            profile: &known,
            frameworks: &lenses,
            word_cap: rules::DEFAULT_WORD_CAP,
            attempt: 0,
            previous_citations,
            earlier_turns: 1,
            previous_turn: None,
            previous_reply: None,
        };
        let first = reply(&input(&[]));
        assert!(first.text.contains("Trunk and Branches"));
        let again = reply(&input(&["trunk".to_owned()]));
        assert!(!again.text.contains("Trunk and Branches"), "{}", again.text);
        assert!(again.text.contains("How many engineers"));
        assert!(again.cited_frameworks.is_empty());
    }

    #[test]
    fn a_challenge_or_anti_pattern_the_previous_turn_raised_is_not_raised_again() {
        let first = "We need to hire more engineers, we're 40 engineers at series B. \
                     And we should bring in stack ranking.";
        let again = "I still think we need more engineers, and stack ranking would help.";
        let known = profile(&[first], again);
        let input = |previous_turn| CoachInput {
            message: again,
            profile: &known,
            frameworks: &[],
            word_cap: rules::DEFAULT_WORD_CAP,
            attempt: 0,
            previous_citations: &[],
            previous_reply: None,
            earlier_turns: 1,
            previous_turn,
        };
        let challenge = "What problem would the new engineers solve";
        let anti_pattern = "That's a known anti-pattern";

        let unprompted = reply(&input(None));
        assert!(unprompted.text.contains(challenge), "{}", unprompted.text);
        assert!(
            unprompted.text.contains(anti_pattern),
            "{}",
            unprompted.text
        );

        let answered = reply(&input(Some(first)));
        assert!(!answered.text.contains(challenge), "{}", answered.text);
        assert!(!answered.text.contains(anti_pattern), "{}", answered.text);
        assert!(answered.questions_asked >= 1);

        // What the previous turn did not raise is raised as before.
        let other = reply(&input(Some(
            "Our on-call rotation keeps burning people out.",
        )));
        assert!(other.text.contains(challenge), "{}", other.text);
        assert!(other.text.contains(anti_pattern), "{}", other.text);
    }

    /// Three turns of a member who never says what they tried: the
    /// question is asked, then its assumption stated once, then neither,
    /// and asked again only after a reply that did neither.
    #[test]
    fn a_context_question_left_unanswered_is_not_asked_twice_running() {
        let first = "I'm a director of 60 engineers at a series B company. \
                     Our releases keep slipping.";
        let second = "The slips are mostly in the payments area.";
        let third = "The payments team is also the smallest.";
        let tried = "What have you already tried?";
        let assumed = "I'll take it that nothing has been tried yet";
        let turn = |message, earlier: &[&str], previous_reply| {
            let known = profile(earlier, message);
            reply(&CoachInput {
                message,
                profile: &known,
                frameworks: &[],
                word_cap: rules::DEFAULT_WORD_CAP,
                attempt: 0,
                previous_citations: &[],
                earlier_turns: earlier.len(),
                previous_turn: earlier.last().copied(),
                previous_reply,
            })
        };
        let asked = turn(first, &[], None);
        assert!(asked.text.contains(tried), "{}", asked.text);

        let left = turn(second, &[first], Some(asked.text.as_str()));
        assert!(!left.text.contains(tried), "asked again: {}", left.text);
        assert!(left.text.contains(assumed), "{}", left.text);
        assert!(
            !left.text.contains("Before I suggest anything"),
            "{}",
            left.text
        );
        assert!(left.questions_asked >= 1, "{}", left.text);

        let moved_on = turn(third, &[first, second], Some(left.text.as_str()));
        assert!(!moved_on.text.contains(tried), "{}", moved_on.text);
        assert!(!moved_on.text.contains(assumed), "{}", moved_on.text);

        let later = turn(third, &[first, second], Some(moved_on.text.as_str()));
        assert!(later.text.contains(tried), "{}", later.text);

        // Answered with "nothing yet", it is neither asked nor assumed.
        let answered = turn("Nothing yet.", &[first], Some(asked.text.as_str()));
        assert!(!answered.text.contains(tried), "{}", answered.text);
        assert!(!answered.text.contains(assumed), "{}", answered.text);
        assert!(
            answered.text.contains("nothing tried yet"),
            "{}",
            answered.text
        );
        for reply in [&asked, &left, &moved_on, &later, &answered] {
            assert!(reply.questions_asked <= MAX_QUESTIONS);
        }
    }
}
