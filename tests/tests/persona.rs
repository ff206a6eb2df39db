//! The behaviour suite: scripted multi-turn scenarios (tests/persona/
//! scenarios.toml) run through the real API against the offline coach.
//! Every reply must meet its scenario's expectations and the persona's
//! standing rules; offline conformance must be 100 %.

use serde::Deserialize;
use tp_coach::rules::{DEFAULT_WORD_CAP, FRAMEWORK_NAMES, word_count};
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, TestDatabase, new_conversation, send};

#[derive(Deserialize)]
struct Suite {
    scenario: Vec<Scenario>,
}

#[derive(Deserialize)]
struct Scenario {
    name: String,
    rule: String,
    turn: Vec<Turn>,
}

#[derive(Deserialize)]
struct Turn {
    user: String,
    #[serde(default)]
    mentions_any: Vec<String>,
    #[serde(default)]
    mentions_all: Vec<String>,
    #[serde(default)]
    never_mentions: Vec<String>,
    #[serde(default)]
    names_framework: bool,
    #[serde(default)]
    summarises: bool,
}

/// What is wrong with one reply, if anything.
fn judge(turn: &Turn, reply: &str, violations: &[String]) -> Vec<String> {
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
    // Standing rules, for every reply.
    if reply.matches('?').count() > 2 {
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

#[tokio::test]
async fn offline_coach_conforms_to_every_scenario() -> anyhow::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/persona/scenarios.toml");
    let suite: Suite = toml::from_str(&std::fs::read_to_string(path)?)?;
    assert!(
        suite.scenario.len() >= 30,
        "the suite needs at least 30 scenarios"
    );

    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Persona suite", "leader").await?;
    let mut client = app.conversations(&token).await?;
    let admin = TestDatabase::pool(&app.db.admin_url).await?;

    let mut failures = Vec::new();
    let mut turns = 0;
    for scenario in &suite.scenario {
        // Each scenario starts from a member the coach knows nothing about.
        client
            .clear_context_profile(pb::ClearContextProfileRequest {})
            .await?;
        let conversation = new_conversation(&mut client, &scenario.name)
            .await?
            .conversation_id;
        for (index, turn) in scenario.turn.iter().enumerate() {
            turns += 1;
            let exchange = send(&mut client, &conversation, &turn.user, "").await?;
            let reply = &exchange.assistant().content;
            let violations: Vec<String> = sqlx::query_scalar(
                "SELECT policy_violations FROM conversation.messages WHERE message_id = $1::uuid",
            )
            .bind(&exchange.assistant().message_id)
            .fetch_one(&admin)
            .await?;
            let problems = judge(turn, reply, &violations);
            if !problems.is_empty() {
                failures.push(format!(
                    "[{}] {} — turn {}: {}\n    user: {}\n    reply: {}",
                    scenario.rule,
                    scenario.name,
                    index + 1,
                    problems.join("; "),
                    turn.user,
                    reply.replace('\n', " ")
                ));
            }
        }
    }
    let conformance = 100.0 * (turns - failures.len()) as f64 / turns as f64;
    eprintln!(
        "persona conformance (offline): {conformance:.1}% of {turns} turns in {} scenarios\n{}",
        suite.scenario.len(),
        failures.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} of {turns} turns fail their expectations",
        failures.len()
    );
    Ok(())
}

#[test]
fn the_judge_catches_what_it_should() {
    let turn = Turn {
        user: "We need to hire more engineers right now.".into(),
        mentions_any: vec!["what problem".into()],
        mentions_all: vec![],
        never_mentions: vec!["```".into()],
        names_framework: true,
        summarises: false,
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
}
