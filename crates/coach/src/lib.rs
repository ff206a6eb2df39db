//! The thought partner's behaviour as pure logic: no I/O, no clock, no
//! randomness, so every reply is reproducible and unit-tested directly.
//!
//! This is the walking-skeleton responder: it reads what context the user
//! has given, challenges the commonest faulty premises, grounds itself in a
//! framework the knowledge service matched, and asks at most two questions.
//! The coach issue grows it into the full persona.

mod profile;
pub mod rules;

pub use profile::{ContextProfile, Stage};

/// A framework the knowledge service matched to the user's turn.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameworkRef {
    /// The corpus id, stored as the reply's citation.
    pub framework_id: String,
    pub name: String,
    pub author: String,
    pub application: String,
    pub diagnostic_question: String,
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

/// Composes the reply to one user turn.
pub fn reply(input: &CoachInput<'_>) -> CoachReply {
    let profile = input.profile;
    let lower = input.message.to_lowercase();
    let mut paragraphs: Vec<String> = Vec::new();
    let mut questions: Vec<String> = Vec::new();

    if asks_for_code(&lower) {
        paragraphs.push(
            "I won't write code or review pull requests; that's not where I'm useful. \
             I can help you think through the decision behind it: the trade-offs, who it \
             affects, and how you'll know it worked."
                .to_owned(),
        );
    }

    if let Some(summary) = profile.summary() {
        paragraphs.push(format!("Here's what I understand so far: {summary}."));
    }

    if let Some((challenge, question)) = challenge(&lower) {
        paragraphs.push(challenge.to_owned());
        questions.push(question.to_owned());
    }

    let mut cited = Vec::new();
    if let Some(framework) = input.frameworks.first() {
        paragraphs.push(format!(
            "One lens that may help is {}, from {}. {}",
            framework.name, framework.author, framework.application
        ));
        cited.push(framework.framework_id.clone());
        if profile.is_sufficient() {
            questions.push(framework.diagnostic_question.clone());
        }
    }

    // Context before advice: ask for what is still missing.
    questions.extend(profile.missing_context_questions());
    questions.truncate(MAX_QUESTIONS);

    if questions.is_empty() {
        questions
            .push("What would a good outcome look like for you three months from now?".to_owned());
    } else if !profile.is_sufficient() {
        paragraphs.push(
            "Before I suggest anything, I'd like to understand your situation better.".to_owned(),
        );
    }
    let questions_asked = questions.len();
    paragraphs.extend(questions);
    let paragraphs = fit_to_cap(
        paragraphs,
        input.frameworks.first(),
        rules::DEFAULT_WORD_CAP,
    );

    CoachReply {
        text: paragraphs.join("\n\n"),
        cited_frameworks: cited,
        questions_asked,
    }
}

/// Keeps a reply within the word cap: first the framework paragraph keeps
/// only its first sentence, then explanations go, most general first; the
/// summary and the questions always stay.
fn fit_to_cap(
    mut paragraphs: Vec<String>,
    framework: Option<&FrameworkRef>,
    cap: usize,
) -> Vec<String> {
    let words = |ps: &[String]| ps.iter().map(|p| rules::word_count(p)).sum::<usize>();
    if words(&paragraphs) <= cap {
        return paragraphs;
    }
    if let Some(framework) = framework {
        let first_sentence = framework
            .application
            .split_inclusive(". ")
            .next()
            .unwrap_or_default()
            .trim();
        let prefix = format!("One lens that may help is {}", framework.name);
        for paragraph in paragraphs.iter_mut().filter(|p| p.starts_with(&prefix)) {
            *paragraph = format!("{prefix}, from {}. {first_sentence}", framework.author);
        }
    }
    // Paragraphs without a question and that are not the summary may go.
    while words(&paragraphs) > cap {
        let Some(index) = paragraphs
            .iter()
            .rposition(|p| !p.contains('?') && !p.starts_with("Here's what I understand"))
        else {
            break;
        };
        paragraphs.remove(index);
    }
    paragraphs
}

fn asks_for_code(lower: &str) -> bool {
    [
        "write code",
        "write the code",
        "write me a",
        "review my pr",
        "review this pr",
        "review my pull request",
        "code review",
        "fix this code",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

/// Premises the persona always questions, with the question to ask.
fn challenge(lower: &str) -> Option<(&'static str, &'static str)> {
    if [
        "hire more",
        "more engineers",
        "more headcount",
        "need more people",
    ]
    .iter()
    .any(|p| lower.contains(p))
    {
        return Some((
            "Hiring is one answer, but adding people is slow and adds coordination cost; \
             it often makes a delivery problem worse for months before it helps.",
            "What problem would the new engineers solve that the current team can't?",
        ));
    }
    if ["velocity", "too slow", "moving slowly", "ship faster"]
        .iter()
        .any(|p| lower.contains(p))
    {
        return Some((
            "\"Slow\" can mean many things: long cycle time, too much unplanned work, \
             or simply a mismatch between expectations and capacity.",
            "How are you measuring velocity today, and who is saying it's slow?",
        ));
    }
    None
}

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
        }
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
        });
        assert!(reply.text.contains("What accumulates here?"));
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
    fn same_input_same_reply() {
        let known = profile(&[], "Velocity is slow.");
        let input = CoachInput {
            message: "Velocity is slow.",
            profile: &known,
            frameworks: &[framework()],
        };
        assert_eq!(reply(&input), reply(&input));
    }
}
