//! Producing the assistant's turn: grounding from the knowledge service,
//! then the offline coach. Only this step will differ between responders.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use tonic::transport::Channel;
use tp_coach::rules::{self, DEFAULT_WORD_CAP};
use tp_coach::{CoachInput, ContextProfile, FrameworkRef};
use tp_context::RequestContext;
use tp_proto::internal::knowledge::v1::retrieval_service_client::RetrievalServiceClient;
use tp_proto::internal::knowledge::v1::{KnownContext, RetrieveRequest};
use tp_telemetry::TraceClient;

use crate::store::KeptProfile;

pub type KnowledgeClient = RetrievalServiceClient<TraceClient<Channel>>;

/// The responder name stored with every reply the offline coach writes.
pub const OFFLINE_RESPONDER: &str = "offline";

/// A lookup that takes longer than this is skipped: a reply without
/// grounding beats no reply.
const KNOWLEDGE_TIMEOUT: Duration = Duration::from_secs(2);
const FRAMEWORKS_PER_TURN: i32 = 2;

/// An assistant turn, ready to stream and store.
pub struct ProducedReply {
    pub text: String,
    /// Ids of the frameworks it cites.
    pub cited_frameworks: Vec<String>,
    /// Persona rules it breaks (see `tp_coach::rules`).
    pub violations: Vec<&'static str>,
    /// Whether the knowledge service was reached for grounding.
    pub grounded: bool,
    pub responder: &'static str,
    /// The member's durable context (role, team size, stage) when this turn
    /// changed it, to keep for their next conversation.
    pub profile_to_keep: Option<ContextProfile>,
}

#[derive(Clone)]
pub struct ReplyPipeline {
    knowledge: KnowledgeClient,
    violations: Counter<u64>,
}

impl ReplyPipeline {
    pub fn new(knowledge: KnowledgeClient) -> Self {
        let violations = opentelemetry::global::meter("thoughtpartner")
            .u64_counter("coach_policy_violations")
            .with_description("Replies breaking a persona rule, by rule and responder")
            .build();
        Self {
            knowledge,
            violations,
        }
    }

    /// The whole turn: read the context profile, ground it, compose the
    /// reply, check it against the persona's rules and count what it breaks.
    pub async fn respond(
        &self,
        ctx: &RequestContext,
        message: &str,
        earlier_user_turns: &[String],
        kept: Option<&KeptProfile>,
    ) -> ProducedReply {
        // What was kept from earlier conversations, then what this one says.
        let kept = kept.map(KeptProfile::to_coach).unwrap_or_default();
        let mut profile = kept.clone();
        profile.absorb_all(
            earlier_user_turns
                .iter()
                .map(String::as_str)
                .chain(std::iter::once(message)),
        );
        let durable = profile.durable();
        let profile_to_keep = (durable != kept).then_some(durable);
        let grounding = self.ground(ctx, message, &profile).await;
        let reply = tp_coach::reply(&CoachInput {
            message,
            profile: &profile,
            frameworks: grounding.as_deref().unwrap_or_default(),
        });
        let violations: Vec<&'static str> = rules::check(&reply.text, &profile, DEFAULT_WORD_CAP)
            .iter()
            .map(rules::Rule::as_str)
            .collect();
        for rule in &violations {
            self.violations.add(
                1,
                &[
                    KeyValue::new("rule", *rule),
                    KeyValue::new("responder", OFFLINE_RESPONDER),
                ],
            );
        }
        tracing::info!(
            cited = reply.cited_frameworks.len(),
            questions = reply.questions_asked,
            violations = violations.len(),
            grounded = grounding.is_some(),
            "reply composed"
        );
        ProducedReply {
            text: reply.text,
            cited_frameworks: reply.cited_frameworks,
            violations,
            grounded: grounding.is_some(),
            responder: OFFLINE_RESPONDER,
            profile_to_keep,
        }
    }

    /// Frameworks that fit the user's turn, given what we know of their
    /// situation; `None` when the knowledge service could not be asked. A
    /// failure is logged and the reply goes ahead ungrounded rather than
    /// failing the turn the user already sent.
    async fn ground(
        &self,
        ctx: &RequestContext,
        message: &str,
        profile: &ContextProfile,
    ) -> Option<Vec<FrameworkRef>> {
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
            return None;
        }
        match self.knowledge.clone().retrieve(request).await {
            Ok(response) => Some(
                response
                    .into_inner()
                    .frameworks
                    .into_iter()
                    .map(|f| FrameworkRef {
                        framework_id: f.framework_id,
                        name: f.name,
                        author: f.author,
                        application: f.summary,
                        diagnostic_question: f.diagnostic_question,
                        source_url: f.source_url,
                    })
                    .collect(),
            ),
            Err(status) => {
                tracing::warn!(code = ?status.code(), "knowledge lookup failed; replying without grounding");
                None
            }
        }
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
