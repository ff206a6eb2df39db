//! Producing the assistant's turn: grounding from the knowledge service,
//! then the offline coach. Only this step will differ between responders.

use std::time::Duration;

use tonic::transport::Channel;
use tp_coach::{CoachInput, CoachReply, ContextProfile, FrameworkRef};
use tp_context::RequestContext;
use tp_proto::internal::knowledge::v1::retrieval_service_client::RetrievalServiceClient;
use tp_proto::internal::knowledge::v1::{KnownContext, RetrieveRequest};
use tp_telemetry::TraceClient;

pub type KnowledgeClient = RetrievalServiceClient<TraceClient<Channel>>;

/// The responder name stored with every reply the offline coach writes.
pub const OFFLINE_RESPONDER: &str = "offline";

/// A lookup that takes longer than this is skipped: a reply without
/// grounding beats no reply.
const KNOWLEDGE_TIMEOUT: Duration = Duration::from_secs(2);
const FRAMEWORKS_PER_TURN: i32 = 2;

#[derive(Clone)]
pub struct ReplyPipeline {
    knowledge: KnowledgeClient,
}

impl ReplyPipeline {
    pub fn new(knowledge: KnowledgeClient) -> Self {
        Self { knowledge }
    }

    /// Frameworks that fit the user's turn, given what we know of their
    /// situation. Failures are logged and yield no grounding rather than
    /// failing the turn the user already sent.
    pub async fn ground(
        &self,
        ctx: &RequestContext,
        message: &str,
        profile: &ContextProfile,
    ) -> Vec<FrameworkRef> {
        let mut request = tonic::Request::new(RetrieveRequest {
            message: message.to_owned(),
            context: Some(KnownContext {
                role: profile.role.unwrap_or_default().to_owned(),
                team_size: profile
                    .team_size
                    .and_then(|n| i32::try_from(n).ok())
                    .unwrap_or(0),
                stage: profile
                    .stage
                    .map(|s| s.label().to_owned())
                    .unwrap_or_default(),
            }),
            max_frameworks: FRAMEWORKS_PER_TURN,
            max_passages: 0,
        });
        request.set_timeout(KNOWLEDGE_TIMEOUT);
        if let Err(e) = ctx.write_to(request.metadata_mut()) {
            tracing::warn!(error = %e, "cannot forward request context to knowledge");
            return Vec::new();
        }
        match self.knowledge.clone().retrieve(request).await {
            Ok(response) => response
                .into_inner()
                .frameworks
                .into_iter()
                .map(|f| FrameworkRef {
                    name: f.name,
                    author: f.author,
                    application: f.summary,
                    diagnostic_question: f.diagnostic_question,
                })
                .collect(),
            Err(status) => {
                tracing::warn!(code = ?status.code(), "knowledge lookup failed; replying without grounding");
                Vec::new()
            }
        }
    }

    pub fn compose(
        &self,
        message: &str,
        earlier_user_turns: &[String],
        frameworks: &[FrameworkRef],
    ) -> CoachReply {
        tp_coach::reply(&CoachInput {
            message,
            earlier_user_turns,
            frameworks,
        })
    }
}

/// Splits text into stream deltas of a few words each, keeping every byte
/// (whitespace included) so the deltas concatenate to the original.
pub fn deltas(text: &str, words_per_delta: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut words = 0;
    let mut in_word = false;
    for (index, ch) in text.char_indices() {
        if ch.is_whitespace() {
            if in_word {
                words += 1;
                in_word = false;
                if words == words_per_delta.max(1) {
                    pieces.push(&text[start..index]);
                    start = index;
                    words = 0;
                }
            }
        } else {
            in_word = true;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::deltas;

    #[test]
    fn deltas_concatenate_to_the_text() {
        let text = "One lens  that may help is Systems Dynamics.\n\nWhat accumulates here?";
        let pieces = deltas(text, 3);
        assert!(pieces.len() > 2);
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn short_and_empty_texts() {
        assert_eq!(deltas("hi", 3), vec!["hi"]);
        assert!(deltas("", 3).is_empty());
    }
}
