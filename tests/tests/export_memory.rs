//! An organisation's export keeps memory flat however large the
//! organisation: ~50 MiB of transcripts exported through the real gateway
//! and conversation processes by a client that reads slowly, while their
//! resident memory is sampled. Neither grows by more than a small fraction
//! of what passes through it: rows are read a page at a time and chunks wait
//! for the client, so nothing accumulates.

use std::time::Duration;

use tp_context::Role;
use tp_e2e::processes::ProcessStack;
use tp_e2e::tp_proto::v1 as pb;
use tp_loadgen::procstat::rss_kib;

const SERVICE_BINARY: &str = env!("CARGO_BIN_EXE_tp-e2e-service");

const CONVERSATIONS: usize = 50;
const MESSAGES_PER_CONVERSATION: usize = 1_000;
/// About 1 KiB per message.
const PARAGRAPH: &str = "We keep debating whether the platform team should own the deploy \
    pipeline or hand it to the product teams with a paved road. ";
/// Allowed growth of each process's resident memory over the export.
const GROWTH_BOUND_MIB: u64 = 16;

#[tokio::test]
async fn exporting_a_large_organisation_keeps_memory_flat() -> anyhow::Result<()> {
    let app = ProcessStack::start(SERVICE_BINARY, Vec::new()).await?;
    let tenant = app
        .create_tenant("Large organisation", 5, "big-admin")
        .await?;
    let admin = app.token("big-admin", Some(tenant), Role::Admin);
    let mut client = app.conversations(&admin).await?;

    // The transcripts, in bulk, as the schema owner.
    let turns = vec![PARAGRAPH.repeat(1024 / PARAGRAPH.len() + 1); MESSAGES_PER_CONVERSATION];
    for c in 0..CONVERSATIONS {
        let conversation = tp_e2e::new_conversation(&mut client, &format!("Topic {c}"))
            .await?
            .conversation_id;
        app.db
            .insert_user_turns(tenant, &conversation, &turns)
            .await?;
    }

    let pids: Vec<(String, u32)> = app
        .stack
        .processes()
        .into_iter()
        .filter(|(name, _)| name == "gateway" || name == "conversation")
        .collect();
    anyhow::ensure!(pids.len() == 2, "both processes: {pids:?}");
    // A first, small read warms both processes up (connections, pools).
    let mut warm = client
        .export_tenant(pb::ExportTenantRequest::default())
        .await?
        .into_inner();
    warm.message().await?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before: Vec<u64> = pids
        .iter()
        .map(|(_, pid)| rss_kib(*pid).unwrap_or(0))
        .collect();

    let mut stream = client
        .export_tenant(pb::ExportTenantRequest::default())
        .await?
        .into_inner();
    let (mut bytes, mut chunks) = (0_usize, 0_usize);
    let mut peak = before.clone();
    while let Some(chunk) = stream.message().await? {
        bytes += chunk.data.len();
        chunks += 1;
        if chunks % 8 == 0 {
            for (i, (_, pid)) in pids.iter().enumerate() {
                peak[i] = peak[i].max(rss_kib(*pid).unwrap_or(0));
            }
            // A slow reader: the services must wait for it, not buffer.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let expected = CONVERSATIONS * MESSAGES_PER_CONVERSATION * turns[0].len();
    assert!(
        bytes >= expected,
        "exported {bytes} bytes, the messages alone are {expected}"
    );
    for (i, (name, _)) in pids.iter().enumerate() {
        let grown_mib = peak[i].saturating_sub(before[i]) / 1024;
        eprintln!(
            "{name}: {} MiB before, peak {} MiB, while {} MiB passed through",
            before[i] / 1024,
            peak[i] / 1024,
            bytes / (1024 * 1024)
        );
        assert!(
            grown_mib <= GROWTH_BOUND_MIB,
            "{name} grew by {grown_mib} MiB exporting {} MiB",
            bytes / (1024 * 1024)
        );
    }
    Ok(())
}
