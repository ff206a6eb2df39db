//! Search relevance on a labelled set of real leadership questions
//! (tests/relevance/questions.toml): recall@3 must stay at or above 0.9.
//! MRR is reported alongside, and every miss is printed, to guide tuning.

use tp_context::Role;
use tp_e2e::TestApp;
use tp_e2e::tp_proto::v1 as pb;

const RECALL_AT_3_FLOOR: f64 = 0.9;

#[tokio::test]
async fn recall_at_3_on_labelled_leadership_questions() -> anyhow::Result<()> {
    let set = tp_e2e::relevance::load()?;
    assert!(
        set.question.len() >= 40,
        "the labelled set must hold at least 40 questions"
    );

    let app = TestApp::spawn().await?;
    let tenant = app.create_tenant("Acme", 2, "reader").await?;
    let mut knowledge = app
        .knowledge(&app.token("reader", Some(tenant), Role::Admin))
        .await?;

    let mut recall_sum = 0.0;
    let mut reciprocal_rank_sum = 0.0;
    let mut misses = Vec::new();
    for question in &set.question {
        let results = knowledge
            .search(pb::SearchRequest {
                query: question.text.clone(),
                limit: 10,
                kinds: vec![pb::EntryKind::Framework.into(), pb::EntryKind::Topic.into()],
            })
            .await?
            .into_inner()
            .results;
        let ranked: Vec<&str> = results.iter().map(|r| r.entry_id.as_str()).collect();
        let top3 = &ranked[..ranked.len().min(3)];
        let found = question
            .expect
            .iter()
            .filter(|id| top3.contains(&id.as_str()))
            .count();
        recall_sum += found as f64 / question.expect.len() as f64;
        let first_rank = ranked
            .iter()
            .position(|id| question.expect.iter().any(|e| e == id))
            .map_or(0.0, |p| 1.0 / (p as f64 + 1.0));
        reciprocal_rank_sum += first_rank;
        if found < question.expect.len() {
            misses.push(format!(
                "  {:?}\n    expected {:?}, got {:?}",
                question.text, question.expect, top3
            ));
        }
    }
    let n = set.question.len() as f64;
    let recall = recall_sum / n;
    let mrr = reciprocal_rank_sum / n;
    eprintln!(
        "relevance: {} questions, recall@3 = {recall:.3}, MRR@10 = {mrr:.3}\nmisses:\n{}",
        set.question.len(),
        misses.join("\n")
    );
    assert!(
        recall >= RECALL_AT_3_FLOOR,
        "recall@3 {recall:.3} is below {RECALL_AT_3_FLOOR}"
    );
    Ok(())
}
