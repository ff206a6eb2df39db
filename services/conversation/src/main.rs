//! `conversation`: thin entry point. Configuration, telemetry and the `serve` /
//! `migrate` commands come from [`tp_server::cli`].

/// mimalloc: see ARCHITECTURE.md ("Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tp_server::cli::main::<tp_conversation::ConversationService>()
}
