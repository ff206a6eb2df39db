//! Transcript search latency (SearchMessages): through the public gRPC API
//! (gateway → auth → membership → conversation → Postgres) next to the
//! conversation service's own search run in-process against the same
//! database (the same SQL, no gRPC), in the same run, interleaved so both
//! see the same machine. 100,000 messages across 10 tenants; each tenant's
//! 10,000 belong to the one member who searches them (the worst case for
//! a member's own scope). Target: API p99 ≤ 20 ms.
//!
//! Run with `deploy/local/bench` (it starts PostgreSQL).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tp_context::{RequestContext, Role, TenantId};
use tp_conversation::search::{MessageSearch, Query, Scope};
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{ConversationClient, TestApp, TestDatabase, new_conversation};
use tp_loadgen::handbook::{XorShift, message};
use uuid::Uuid;

const TENANTS: usize = 10;
const MESSAGES_PER_TENANT: usize = 10_000;
const CONVERSATIONS_PER_TENANT: usize = 20;
const ROUNDS: usize = 10;
const SEARCHES_PER_ROUND: usize = 200;
const PAGE_SIZE: usize = 20;
const TARGET_P99: Duration = Duration::from_millis(20);

/// What leaders look for in their past conversations: one, two and three
/// words, common and rare, and a phrase.
const QUERIES: &[&str] = &[
    "error budgets",
    "career ladder",
    "alert fatigue",
    "interview loops",
    "headcount",
    "billing debt",
    "postmortems",
    "deployment pipelines productivity",
    "reporting lines",
    "\"data platform\"",
    "staff engineer",
    "incident review",
    "promotion process",
    "strategy",
];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Searcher {
    ctx: RequestContext,
    client: ConversationClient,
    conversations: HashSet<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let owner = TestDatabase::pool(&app.db.owner_url).await?;
    let mut rng = XorShift(0x5eed_0f5e_a4c4);
    let mut searchers = Vec::new();
    let load_started = Instant::now();
    for t in 0..TENANTS {
        let (tenant, token) = app
            .tenant_with_member(&format!("Search bench {t}"), "lead")
            .await?;
        let mut client = app.conversations(&token).await?;
        let mut conversations = Vec::new();
        for c in 0..CONVERSATIONS_PER_TENANT {
            conversations.push(
                new_conversation(&mut client, &format!("Topic {c}"))
                    .await?
                    .conversation_id,
            );
        }
        load_messages(&owner, tenant, &conversations, &mut rng).await?;
        searchers.push(Searcher {
            ctx: RequestContext {
                tenant_id: tenant,
                user_id: "lead".into(),
                role: Role::Member,
            },
            client,
            conversations: conversations.into_iter().collect(),
        });
    }
    let messages = app.count_rows("conversation.messages").await?;
    anyhow::ensure!(messages == (TENANTS * MESSAGES_PER_TENANT) as i64);
    sqlx::query("ANALYZE").execute(&owner).await?;
    eprintln!(
        "loaded {messages} messages across {TENANTS} tenants in {:.1?}",
        load_started.elapsed()
    );

    // The baseline: the conversation service's own search, in this process,
    // on the same database, as the same role.
    let app_pool = tp_store::Pool::new(&app.db.app_url, 2, tp_store::ACQUIRE_TIMEOUT)?;
    let direct_search = MessageSearch::new(app_pool, tp_store::TxTimer::disabled());

    let (mut api, mut direct, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    let (mut hits_api, mut hits_direct) = (0usize, 0usize);
    for round in 0..=ROUNDS {
        let warm_up = round == 0;
        for i in 0..SEARCHES_PER_ROUND {
            let searcher = &mut searchers[(round * 7 + i) % TENANTS];
            let text = QUERIES[(round * 13 + i) % QUERIES.len()];
            // The API's floor: a one-row read through the same path.
            let any = searcher
                .conversations
                .iter()
                .next()
                .cloned()
                .unwrap_or_default();
            let started = Instant::now();
            searcher
                .client
                .get_conversation(pb::GetConversationRequest {
                    conversation_id: any,
                })
                .await?;
            let floor_took = started.elapsed();

            let started = Instant::now();
            let found = searcher
                .client
                .search_messages(pb::SearchMessagesRequest {
                    query: text.into(),
                    page_size: PAGE_SIZE as i32,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let api_took = started.elapsed();
            // Only the caller's own tenant's (and own) conversations.
            anyhow::ensure!(
                found
                    .hits
                    .iter()
                    .all(|h| searcher.conversations.contains(&h.conversation_id)),
                "a hit from outside the caller's conversations"
            );

            let query = Query {
                text: text.into(),
                scope: Scope::Own,
                page_size: PAGE_SIZE,
                after: None,
            };
            let started = Instant::now();
            let rows = direct_search
                .search(&searcher.ctx, &query)
                .await?
                .unwrap_or_default();
            let direct_took = started.elapsed();
            if !warm_up {
                floor.push(floor_took);
                api.push(api_took);
                direct.push(direct_took);
                hits_api += found.hits.len();
                // The service fetches one row more, to know of a next page.
                hits_direct += rows.len().min(PAGE_SIZE);
            }
        }
    }
    anyhow::ensure!(
        hits_api == hits_direct,
        "both paths must return the same hits ({hits_api} against {hits_direct})"
    );
    anyhow::ensure!(hits_api > 0, "the queries must find something");
    api.sort();
    direct.sort();
    floor.sort();
    let report = |name: &str, samples: &[Duration]| {
        println!(
            "{name:<34} n={:<5} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
            samples.len(),
            millis(percentile(samples, 0.5)),
            millis(percentile(samples, 0.99)),
            millis(samples[samples.len() - 1]),
        );
    };
    println!(
        "SearchMessages, {messages} messages / {TENANTS} tenants ({MESSAGES_PER_TENANT} per searcher), \
         page of {PAGE_SIZE}, {} hits returned",
        hits_api
    );
    report("API (gRPC via gateway)", &api);
    report("baseline (same search, no gRPC)", &direct);
    report("API floor (GetConversation)", &floor);
    let p99 = percentile(&api, 0.99);
    println!(
        "ratio API / baseline: p50 {:.2}x, p99 {:.2}x; API p99 {:.2} ms against the target of {} ms: {}",
        percentile(&api, 0.5).as_secs_f64() / percentile(&direct, 0.5).as_secs_f64(),
        p99.as_secs_f64() / percentile(&direct, 0.99).as_secs_f64(),
        millis(p99),
        TARGET_P99.as_millis(),
        if p99 <= TARGET_P99 { "met" } else { "NOT met" },
    );
    Ok(())
}

/// Adds the tenant's messages, spread over its conversations, as the schema
/// owner in statements of 1,000 rows (through SendMessage, 100,000 turns
/// would take many minutes and measure nothing new).
async fn load_messages(
    owner: &sqlx::PgPool,
    tenant: TenantId,
    conversations: &[String],
    rng: &mut XorShift,
) -> anyhow::Result<()> {
    let conversations: Vec<Uuid> = conversations
        .iter()
        .map(|c| c.parse())
        .collect::<Result<_, _>>()?;
    let mut tx = owner.begin().await?;
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await?;
    for start in (0..MESSAGES_PER_TENANT).step_by(1_000) {
        let batch = (MESSAGES_PER_TENANT - start).min(1_000);
        let ids: Vec<Uuid> = (0..batch).map(|_| Uuid::new_v4()).collect();
        let in_conversation: Vec<Uuid> = (0..batch)
            .map(|n| conversations[(start + n) % conversations.len()])
            .collect();
        let contents: Vec<String> = (0..batch).map(|_| message(rng)).collect();
        sqlx::query(
            // Each one a first turn of its own (its own branch): search
            // reads every branch alike, so the shape of the tree is moot.
            "INSERT INTO conversation.messages
                 (message_id, tenant_id, conversation_id, role, content, branch_id, depth)
             SELECT id, $4, conversation_id, 'user', content, id, 1
               FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS t (id, conversation_id, content)",
        )
        .bind(&ids)
        .bind(&in_conversation)
        .bind(&contents)
        .bind(tenant.as_uuid())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
