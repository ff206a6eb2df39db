//! The behaviour suite's scenarios and the judge of one reply against them.
//! Pure: the test suite (offline coach) and `tp eval` (any configured
//! model) share it, so both hold replies to the same bar.

use serde::Deserialize;

use crate::rules::{DEFAULT_WORD_CAP, FRAMEWORK_NAMES, word_count};

#[derive(Clone, Debug, Deserialize)]
pub struct Suite {
    pub scenario: Vec<Scenario>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Scenario {
    pub name: String,
    /// The persona rule it exercises.
    pub rule: String,
    pub turn: Vec<Turn>,
}

/// One user turn and what the reply to it must do.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Turn {
    pub user: String,
    #[serde(default)]
    pub mentions_any: Vec<String>,
    #[serde(default)]
    pub mentions_all: Vec<String>,
    #[serde(default)]
    pub never_mentions: Vec<String>,
    #[serde(default)]
    pub names_framework: bool,
    #[serde(default)]
    pub summarises: bool,
}

impl Suite {
    pub fn parse(toml_text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(toml_text)
    }
}

/// What is wrong with one reply, if anything: the turn's expectations, then
/// the standing rules every reply keeps, then the persona-rule violations
/// the service stored with it.
pub fn judge(turn: &Turn, reply: &str, violations: &[String]) -> Vec<String> {
    let lower = reply.to_lowercase();
    let mut problems = Vec::new();
    if !turn.mentions_any.is_empty()
        && !turn
            .mentions_any
            .iter()
            .any(|m| lower.contains(&m.to_lowercase()))
    {
        problems.push(format!("mentions none of {:?}", turn.mentions_any));
    }
    for m in &turn.mentions_all {
        if !lower.contains(&m.to_lowercase()) {
            problems.push(format!("does not mention {m:?}"));
        }
    }
    for m in &turn.never_mentions {
        if lower.contains(&m.to_lowercase()) {
            problems.push(format!("mentions {m:?}"));
        }
    }
    if turn.names_framework && !FRAMEWORK_NAMES.iter().any(|name| reply.contains(name)) {
        problems.push("names no framework".into());
    }
    if turn.summarises && !lower.contains("here's what i understand so far") {
        problems.push("does not summarise".into());
    }
    if reply.matches('?').count() > crate::MAX_QUESTIONS {
        problems.push("asks more than two questions".into());
    }
    if word_count(reply) > DEFAULT_WORD_CAP {
        problems.push(format!(
            "{} words, over the cap of {DEFAULT_WORD_CAP}",
            word_count(reply)
        ));
    }
    if turn.user.len() > 20 && reply.contains(turn.user.trim()) {
        problems.push("echoes the user's message".into());
    }
    if !violations.is_empty() {
        problems.push(format!("stored persona-rule violations {violations:?}"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_judge_catches_what_it_should() {
        let turn = Turn {
            user: "We need to hire more engineers right now.".into(),
            mentions_any: vec!["what problem".into()],
            never_mentions: vec!["```".into()],
            names_framework: true,
            ..Turn::default()
        };
        assert!(judge(&turn, "What problem? Systems Dynamics says so.", &[]).is_empty());
        assert_eq!(judge(&turn, "Sure. One? Two? Three?", &[]).len(), 3);
        assert!(
            !judge(
                &turn,
                "What problem would it solve? Staff Archetypes. ```x```",
                &[]
            )
            .is_empty()
        );
        assert!(
            !judge(
                &turn,
                "What problem, per Systems Dynamics",
                &["too_long".into()]
            )
            .is_empty()
        );
        assert!(
            !judge(
                &turn,
                "We need to hire more engineers right now. Systems Dynamics: what problem?",
                &[]
            )
            .is_empty()
        );
    }

    #[test]
    fn the_shipped_suite_parses() {
        let text = include_str!("../../../tests/persona/scenarios.toml");
        let suite = Suite::parse(text).expect("valid scenarios");
        assert!(suite.scenario.len() >= 30);
    }
}
