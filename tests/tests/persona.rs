//! The behaviour suite: scripted multi-turn scenarios (tests/persona/
//! scenarios.toml) run through the real API against the offline coach.
//! Every reply must meet its scenario's expectations and the persona's
//! standing rules; offline conformance must be 100 %.

use tp_coach::conformance::{Suite, judge};
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, TestDatabase, new_conversation, send};

#[tokio::test]
async fn offline_coach_conforms_to_every_scenario() -> anyhow::Result<()> {
    // Compiled in, so a test binary never reads another checkout's copy.
    let suite = Suite::parse(include_str!("../persona/scenarios.toml"))?;
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
