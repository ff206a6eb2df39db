//! The thought partner's behaviour as pure logic: no I/O, no clock, no
//! randomness, so every reply is reproducible and unit-tested directly.
//!
//! This is the walking-skeleton responder: it reads what context the user
//! has given, challenges the commonest faulty premises, grounds itself in a
//! framework the knowledge service matched, and asks at most two questions.
//! The coach issue grows it into the full persona.

mod profile;

pub use profile::{ContextProfile, Stage};

/// A framework the knowledge service matched to the user's turn.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameworkRef {
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
    /// The user's earlier turns in this conversation, oldest first.
    pub earlier_user_turns: &'a [String],
    /// Matched frameworks, best first.
    pub frameworks: &'a [FrameworkRef],
}

/// The reply and what it drew on.
#[derive(Clone, Debug, PartialEq)]
pub struct CoachReply {
    pub text: String,
    /// Names of the frameworks the reply cites.
    pub cited_frameworks: Vec<String>,
    /// How many questions the reply asks (never more than two).
    pub questions_asked: usize,
}

/// The persona never asks more than this many questions in one turn.
pub const MAX_QUESTIONS: usize = 2;

/// Composes the reply to one user turn.
pub fn reply(input: &CoachInput<'_>) -> CoachReply {
    let profile = ContextProfile::from_turns(
        input
            .earlier_user_turns
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(input.message)),
    );
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
        cited.push(framework.name.clone());
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

    CoachReply {
        text: paragraphs.join("\n\n"),
        cited_frameworks: cited,
        questions_asked,
    }
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
            name: "Systems Dynamics".into(),
            author: "Donella Meadows".into(),
            application: "Draw the stocks and flows.".into(),
            diagnostic_question: "What accumulates here?".into(),
        }
    }

    fn count_questions(text: &str) -> usize {
        text.matches('?').count()
    }

    #[test]
    fn asks_for_context_before_advising() {
        let reply = reply(&CoachInput {
            message: "My team is struggling.",
            earlier_user_turns: &[],
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
            earlier_user_turns: &[],
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
            earlier_user_turns: &[],
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
        let earlier = vec!["I'm a director of 60 engineers at a series C company.".to_owned()];
        let reply = reply(&CoachInput {
            message: "Our backlog keeps growing. We tried adding a triage rotation already.",
            earlier_user_turns: &earlier,
            frameworks: &[framework()],
        });
        assert!(reply.text.contains("What accumulates here?"));
        assert_eq!(reply.cited_frameworks, vec!["Systems Dynamics".to_owned()]);
        assert!(!reply.text.contains("Before I suggest anything"));
    }

    #[test]
    fn same_input_same_reply() {
        let input = CoachInput {
            message: "Velocity is slow.",
            earlier_user_turns: &[],
            frameworks: &[framework()],
        };
        assert_eq!(reply(&input), reply(&input));
    }
}
