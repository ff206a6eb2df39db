//! The three services in one binary, the one `TP_SERVICE` names: the
//! fault tests run it as real processes they can kill and signal. It is
//! each service's own `main` (cargo builds a package's binaries for its
//! integration tests, but not another package's).

fn main() -> anyhow::Result<()> {
    match std::env::var("TP_SERVICE").as_deref() {
        Ok("gateway") => tp_server::cli::main::<tp_gateway::GatewayService>(),
        Ok("conversation") => tp_server::cli::main::<tp_conversation::ConversationService>(),
        Ok("knowledge") => tp_server::cli::main::<tp_knowledge::KnowledgeService>(),
        other => {
            anyhow::bail!("TP_SERVICE must be gateway, conversation or knowledge, not {other:?}")
        }
    }
}
