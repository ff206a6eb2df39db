//! Knowledge search latency: through the public gRPC API (gateway → auth →
//! membership → knowledge → Postgres) next to the same search run in-process
//! against the same database (the knowledge service's own `Searcher`: the
//! same SQL, no gRPC), in the same run, interleaved so both see the same
//! machine. 10,000 tenant passages across 20 tenants.
//!
//! Run with `deploy/local/bench` (it starts PostgreSQL).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tp_context::{Role, TenantId};
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{KnowledgeClient, TestApp, TestDatabase};
use tp_knowledge::search::{Catalog, Searcher};
use tp_knowledge::store::KnowledgeStore;
use tp_loadgen::handbook::{PASSAGES_PER_DOCUMENT, XorShift, document};

const TENANTS: usize = 20;
const DOCUMENTS_PER_TENANT: usize = 10;
const ROUNDS: usize = 10;
const SEARCHES_PER_ROUND: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let queries: Vec<String> = tp_e2e::relevance::load()?
        .question
        .into_iter()
        .map(|q| q.text)
        .collect();

    let app = TestApp::spawn().await?;
    let mut rng = XorShift(0x5eed_1234_abcd_9876);
    let mut tenants: Vec<(TenantId, KnowledgeClient)> = Vec::new();
    let load_started = Instant::now();
    for t in 0..TENANTS {
        let tenant = app
            .create_tenant(&format!("Bench {t}"), 5, &format!("admin-{t}"))
            .await?;
        let mut admin = app
            .knowledge(&app.token(&format!("admin-{t}"), Some(tenant), Role::Admin))
            .await?;
        for d in 0..DOCUMENTS_PER_TENANT {
            admin
                .create_document(pb::CreateDocumentRequest {
                    title: format!("Handbook {d}"),
                    content: document(&mut rng, t, d).into_bytes(),
                    content_type: pb::ContentType::Markdown.into(),
                })
                .await?;
        }
        tenants.push((tenant, admin));
    }
    let passages = app.count_rows("knowledge.passages").await?;
    anyhow::ensure!(passages == (TENANTS * DOCUMENTS_PER_TENANT * PASSAGES_PER_DOCUMENT) as i64);
    let admin_pool = TestDatabase::pool(&app.db.admin_url).await?;
    sqlx::query("ANALYZE").execute(&admin_pool).await?;
    eprintln!(
        "loaded {passages} passages across {TENANTS} tenants in {:.1?}",
        load_started.elapsed()
    );

    // The baseline: the knowledge service's own search, in this process, on
    // the same database, as the same role.
    let pool = tp_store::Pool::new(&app.db.app_url, 2, tp_store::ACQUIRE_TIMEOUT)?;
    let searcher = Searcher::new(
        KnowledgeStore::new(pool.clone()),
        Arc::new(Catalog::load(&pool).await?),
    );

    let all_kinds = ["framework", "topic", "source"];
    let mut floor = Vec::new();
    let mut api = Vec::new();
    let mut direct = Vec::new();
    let mut results_api = 0usize;
    let mut results_direct = 0usize;
    for round in 0..=ROUNDS {
        let warm_up = round == 0;
        for i in 0..SEARCHES_PER_ROUND {
            let (tenant, client) = &mut tenants[(round * 7 + i) % TENANTS];
            let query = &queries[(round * 13 + i) % queries.len()];
            let started = Instant::now();
            client
                .get_framework(pb::GetFrameworkRequest {
                    framework_id: "staff-archetypes".into(),
                })
                .await?;
            if !warm_up {
                floor.push(started.elapsed());
            }
            let started = Instant::now();
            let found = client
                .search(pb::SearchRequest {
                    query: query.clone(),
                    limit: 10,
                    kinds: vec![],
                })
                .await?
                .into_inner()
                .results
                .len();
            if !warm_up {
                api.push(started.elapsed());
                results_api += found;
            }
            let started = Instant::now();
            let found = searcher
                .search(*tenant, query, &all_kinds, true, 10)
                .await?
                .len();
            if !warm_up {
                direct.push(started.elapsed());
                results_direct += found;
            }
        }
    }
    anyhow::ensure!(
        results_api == results_direct,
        "both paths must return the same results"
    );
    api.sort();
    floor.sort();
    direct.sort();
    let report = |name: &str, samples: &[Duration]| {
        println!(
            "{name:<28} n={:<5} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
            samples.len(),
            millis(percentile(samples, 0.5)),
            millis(percentile(samples, 0.99)),
            millis(samples[samples.len() - 1]),
        );
    };
    println!("knowledge Search, {passages} passages / {TENANTS} tenants, limit 10, all kinds");
    report("API (gRPC via gateway)", &api);
    report("baseline (same search, no gRPC)", &direct);
    report("API floor (GetFramework)", &floor);
    println!(
        "ratio API / baseline: p50 {:.2}x, p99 {:.2}x",
        percentile(&api, 0.5).as_secs_f64() / percentile(&direct, 0.5).as_secs_f64(),
        percentile(&api, 0.99).as_secs_f64() / percentile(&direct, 0.99).as_secs_f64(),
    );
    Ok(())
}
