//! Noisy neighbour: tenant A floods `SendMessage` from 32 concurrent
//! streams while tenant B's member sends at a human pace. B's latency is
//! measured alone and then under A's flood, in three alternating rounds of
//! the same run (p99 over all rounds' samples), through a
//! gateway with the production default limits (a tenant: 50 calls/s, burst
//! 100; a user: 10/s, burst 20; 16 concurrent streams). Target: every B
//! call succeeds and B's p99 under load is within 2x its unloaded p99.
//!
//! Run with `deploy/local/bench` (it starts PostgreSQL).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tp_context::Role;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{ConversationClient, TestApp, conversations_via, new_conversation, send};

const FLOOD_STREAMS: usize = 32;
const FLOOD_MEMBERS: usize = 8;
const B_CALLS_PER_PHASE: usize = 120;
/// Rounds of (B alone, B under the flood); p99 is taken over all rounds.
const ROUNDS: usize = 3;
/// B's pace: under its own per-user limit of 10 a second.
const B_INTERVAL: Duration = Duration::from_millis(125);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// B's paced sends; latencies of the ones that succeeded, and failures.
async fn measure_b(
    client: &mut ConversationClient,
    conversation: &str,
    phase: &str,
) -> (Vec<Duration>, usize) {
    let mut latencies = Vec::new();
    let mut failures = 0;
    let mut tick = tokio::time::interval(B_INTERVAL);
    for i in 0..B_CALLS_PER_PHASE {
        tick.tick().await;
        let started = Instant::now();
        match send(
            client,
            conversation,
            "How should I split the platform team as we grow?",
            &format!("{phase}-{i}"),
        )
        .await
        {
            Ok(_) => latencies.push(started.elapsed()),
            Err(status) => {
                failures += 1;
                eprintln!("B call failed: {:?} {}", status.code(), status.message());
            }
        }
    }
    latencies.sort();
    (latencies, failures)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The gateway's default is no lanes (every open stream runs);
    // TP_BENCH_STREAM_LANES=N runs the flood with N lanes per tenant.
    let lanes: Option<usize> = match std::env::var("TP_BENCH_STREAM_LANES") {
        Ok(value) => Some(value.parse()?),
        Err(_) => None,
    };
    let app = TestApp::spawn().await?;
    let gateway = app
        .spawn_gateway_with(|config| {
            config.rate_tenant_per_second = 50.0;
            config.rate_tenant_burst = 100;
            config.rate_user_per_second = 10.0;
            config.rate_user_burst = 20;
            config.max_streams_per_tenant = 16;
            config.stream_lanes_per_tenant = lanes;
        })
        .await?;

    let noisy = app.create_tenant("Noisy", 20, "noisy-admin").await?;
    let admin = app.token("noisy-admin", Some(noisy), Role::Admin);
    let mut members = app.members(&admin).await?;
    let mut flooders = Vec::new();
    for m in 0..FLOOD_MEMBERS {
        let user = format!("noisy-{m}");
        members
            .add_member(pb::AddMemberRequest {
                user_id: user.clone(),
                role: pb::MemberRole::Member.into(),
            })
            .await?;
        flooders.push(app.token(&user, Some(noisy), Role::Member));
    }
    let (_quiet, quiet_token) = app.tenant_with_member("Quiet", "quinn").await?;
    let mut quiet = conversations_via(gateway, &quiet_token).await?;
    let quiet_conversation = new_conversation(&mut quiet, "bench").await?.conversation_id;

    // A's flooders connect and open their conversations before any
    // measurement, so a round measures only A's `SendMessage` flood.
    let mut flood_clients = Vec::new();
    for s in 0..FLOOD_STREAMS {
        let mut client = conversations_via(gateway, &flooders[s % FLOOD_MEMBERS]).await?;
        let conversation = new_conversation(&mut client, "flood")
            .await?
            .conversation_id;
        flood_clients.push((client, conversation));
    }

    // Warm up B's path.
    measure_b(&mut quiet, &quiet_conversation, "warm").await;
    // Rounds alternate B alone and B under A's flood, so drift in the
    // machine (autovacuum, checkpoints) falls on both sides alike.
    let outcomes: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let (mut unloaded, mut loaded) = (Vec::new(), Vec::new());
    let (mut unloaded_failures, mut loaded_failures) = (0, 0);
    let mut flood_secs = 0.0;
    for round in 0..ROUNDS {
        let (samples, failures) = measure_b(
            &mut quiet,
            &quiet_conversation,
            &format!("unloaded-{round}"),
        )
        .await;
        let round_unloaded_p99 = percentile(&samples, 0.99);
        unloaded.extend(samples);
        unloaded_failures += failures;

        // A floods from 32 streams until B is done, retrying at once and
        // ignoring RetryInfo.
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (s, (mut client, conversation)) in flood_clients.drain(..).enumerate() {
            let (stop, outcomes) = (stop.clone(), outcomes.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("{round}-{s}-{n}");
                    let code = match send(&mut client, &conversation, "Flood.", &key).await {
                        Ok(_) => "OK".to_owned(),
                        Err(status) => format!("{:?}", status.code()),
                    };
                    *outcomes.lock().await.entry(code).or_default() += 1;
                }
                (client, conversation)
            }));
        }
        let flood_started = Instant::now();
        let (samples, failures) =
            measure_b(&mut quiet, &quiet_conversation, &format!("loaded-{round}")).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            flood_clients.push(task.await?);
        }
        flood_secs += flood_started.elapsed().as_secs_f64();
        println!(
            "round {round}: B p99 {:>6.2} ms alone, {:>6.2} ms under the flood",
            millis(round_unloaded_p99),
            millis(percentile(&samples, 0.99)),
        );
        loaded.extend(samples);
        loaded_failures += failures;
        // Let A's rejected calls drain and its bucket refill, as between
        // two floods in life.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    unloaded.sort();
    loaded.sort();

    let report = |name: &str, samples: &[Duration], failures: usize| {
        println!(
            "{name:<22} n={:<4} failures={failures}  p50 {:>7.2} ms   p99 {:>7.2} ms",
            samples.len(),
            millis(percentile(samples, 0.5)),
            millis(percentile(samples, 0.99)),
        );
    };
    println!(
        "noisy neighbour: tenant A floods SendMessage from {FLOOD_STREAMS} streams; tenant B sends every {} ms; stream lanes per tenant: {}",
        B_INTERVAL.as_millis(),
        lanes.map_or("as many as open streams".to_owned(), |n| n.to_string())
    );
    report("B unloaded", &unloaded, unloaded_failures);
    report("B under A's flood", &loaded, loaded_failures);
    let outcomes = outcomes.lock().await;
    let total: usize = outcomes.values().sum();
    println!(
        "A: {total} calls in {flood_secs:.1} s ({:.0}/s): {}",
        total as f64 / flood_secs,
        outcomes
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ratio = percentile(&loaded, 0.99).as_secs_f64() / percentile(&unloaded, 0.99).as_secs_f64();
    println!(
        "ratio B p99 loaded / unloaded: {ratio:.2}x (target <= 2.0x: {}); B failures: {} (target 0)",
        if ratio <= 2.0 { "met" } else { "NOT met" },
        unloaded_failures + loaded_failures
    );
    Ok(())
}
