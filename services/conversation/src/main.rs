//! `conversation`: thin entry point. Configuration, telemetry and the `serve` /
//! `migrate` commands come from [`tp_server::cli`].

fn main() -> anyhow::Result<()> {
    tp_server::cli::main::<tp_conversation::ConversationService>()
}
