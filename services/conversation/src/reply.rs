//! Producing the assistant's turn: the context profile, grounding from the
//! knowledge service, then a responder — the offline coach or a model —
//! whose reply is streamed, checked against the persona's rules and handed
//! back for storage. Only the "produce the reply" step differs between
//! responders.

use std::time::{Duration, Instant};

use tp_coach::rules;
use tp_coach::{ContextProfile, FrameworkRef};
use tp_context::RequestContext;
use tp_proto::internal::knowledge::v1::retrieval_service_client::RetrievalServiceClient;
use tp_proto::internal::knowledge::v1::{KnownContext, RetrieveRequest};
use tp_telemetry::{GenAiProvider, Metrics, TokenType};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tonic::Status;
use tp_llm::{LlmClient, LlmError, StreamEvent, Usage};
use tp_proto::v1 as pb;

use crate::prompt;
use crate::store::{Exchange, KeptProfile, TranscriptSides};
use crate::turn_facts;

/// Where a reply's deltas go: the client's event stream.
pub type Events = mpsc::Sender<Result<pb::SendMessageResponse, Status>>;

/// Words per streamed delta of the offline coach (and of replays): a
/// sentence or two. Such a text is whole before its first delta leaves, and
/// its deltas reach the client together (see [`EVENTS_IN_FLIGHT`]), so
/// their size changes only how many events every hop encodes and decodes.
/// At 6 words a 180-word reply was 30 events; at 30, six: `conversation`
/// 453k -> 423k instructions per SendMessage (callgrind, session 31).
pub const WORDS_PER_DELTA: usize = 30;

/// Events a reply may have in flight to its client. A whole offline reply
/// at the default word cap (6 deltas) and its completion fit, so the
/// reply task puts them all in at once and the stream's reader finds them
/// together: they leave in one HTTP/2 write, not in one write (and one
/// wake-up of every hop downstream) per batch the reader happened to catch.
/// With 16, a reply went out in two writes.
pub const EVENTS_IN_FLIGHT: usize = 64;

pub fn delta_event(text: &str) -> pb::SendMessageResponse {
    pb::SendMessageResponse {
        event: Some(pb::send_message_response::Event::TextDelta(pb::TextDelta {
            text: text.to_owned(),
        })),
    }
}

/// Who writes the reply.
#[derive(Clone)]
pub enum Responder {
    Offline,
    Model {
        client: LlmClient,
        max_tokens: u32,
        context_tokens: usize,
    },
}

impl Responder {
    /// `gen_ai.provider.name` and `gen_ai.request.model` of its replies.
    fn gen_ai(&self) -> (GenAiProvider, &str) {
        match self {
            Responder::Offline => (GenAiProvider::Offline, OFFLINE_MODEL),
            Responder::Model { client, .. } => (
                match client.config().kind {
                    tp_llm::ProviderKind::OpenAiCompatible => GenAiProvider::OpenAi,
                    tp_llm::ProviderKind::Anthropic => GenAiProvider::Anthropic,
                },
                client.config().model.as_str(),
            ),
        }
    }

    /// The earlier turns it reads: the offline coach reads only the
    /// user's; a model's prompt holds both sides.
    fn reads(&self) -> TranscriptSides {
        match self {
            Responder::Offline => TranscriptSides::User,
            Responder::Model { .. } => TranscriptSides::Both,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Responder::Offline => OFFLINE_RESPONDER,
            Responder::Model { client, .. } => match client.config().kind {
                tp_llm::ProviderKind::OpenAiCompatible => "openai",
                tp_llm::ProviderKind::Anthropic => "anthropic",
            },
        }
    }
}

/// Why no reply could be stored.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// The client hung up while a model was writing: the upstream request
    /// is cancelled and nothing partial is stored.
    #[error("the client went away")]
    ClientGone,
    #[error("the model provider failed: {0}")]
    Provider(#[from] LlmError),
}

pub type KnowledgeClient = RetrievalServiceClient<tp_server::InternalChannel>;

/// The responder name stored with every reply the offline coach writes.
pub const OFFLINE_RESPONDER: &str = "offline";

/// The offline coach's `gen_ai.request.model`.
pub const OFFLINE_MODEL: &str = "coach";

/// `error.type` of a generation abandoned because the client hung up (the
/// provider's failures are named by [`LlmError::kind`]).
const CLIENT_GONE: &str = "cancelled";

/// A lookup that takes longer than this is skipped: a reply without
/// grounding beats no reply.
const KNOWLEDGE_TIMEOUT: Duration = Duration::from_secs(2);
const FRAMEWORKS_PER_TURN: i32 = 2;
const PASSAGES_PER_TURN: i32 = 3;

/// What the knowledge service found for one turn.
struct Grounding {
    frameworks: Vec<FrameworkRef>,
    passages: Vec<prompt::DocumentPassage>,
}

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
    /// Tokens the provider reported (`None` for the offline coach).
    pub usage: Option<Usage>,
}

#[derive(Clone)]
pub struct ReplyPipeline {
    knowledge: KnowledgeClient,
    responder: Responder,
    word_cap: usize,
    metrics: Metrics,
}

impl ReplyPipeline {
    pub fn new(
        knowledge: KnowledgeClient,
        responder: Responder,
        word_cap: usize,
        metrics: Metrics,
    ) -> Self {
        Self {
            knowledge,
            responder,
            word_cap,
            metrics,
        }
    }

    /// Which earlier turns an exchange must read for this pipeline's
    /// responder.
    pub fn transcript_sides(&self) -> TranscriptSides {
        self.responder.reads()
    }

    /// The service's metrics (the handler counts stored replies).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The whole turn: read the context profile, ground it, produce the
    /// reply while streaming its deltas to `events`, check it against the
    /// persona's rules and count what it breaks.
    pub async fn respond(
        &self,
        ctx: &RequestContext,
        exchange: &Exchange,
        events: &Events,
    ) -> Result<ProducedReply, ReplyError> {
        let message = exchange.user_message.content.as_str();
        // What was kept from earlier conversations, then what this one says.
        let kept = exchange
            .kept_profile
            .as_ref()
            .map(KeptProfile::to_coach)
            .unwrap_or_default();
        let mut profile = kept.clone();
        turn_facts::absorb(
            &mut profile,
            exchange
                .earlier_user_turns
                .iter()
                .map(|turn| (turn.message_id, turn.content.as_str()))
                .chain(std::iter::once((exchange.user_message.message_id, message))),
        );
        let durable = profile.durable();
        let profile_to_keep = (durable != kept).then_some(durable);
        // Asked again, the coach leads with another framework: ask for one
        // more per attempt (up to two more), so there is another to lead.
        let attempt = u32::try_from(exchange.target.generation).unwrap_or(0);
        let frameworks_wanted = FRAMEWORKS_PER_TURN + i32::try_from(attempt.min(2)).unwrap_or(0);
        let grounding = self.ground(ctx, message, &profile, frameworks_wanted).await;
        let frameworks = grounding
            .as_ref()
            .map_or(&[][..], |g| g.frameworks.as_slice());
        let passages = grounding
            .as_ref()
            .map_or(&[][..], |g| g.passages.as_slice());

        let (provider, model) = self.responder.gen_ai();
        let mut generation = Generation::start(&self.metrics, provider, model);
        let (text, cited_frameworks, usage) = match &self.responder {
            Responder::Offline => {
                let reply = tp_coach::reply(&tp_coach::CoachInput {
                    message,
                    profile: &profile,
                    frameworks,
                    word_cap: self.word_cap,
                    attempt,
                    previous_citations: &exchange.previous_citations,
                    earlier_turns: exchange.earlier_user_turns.len(),
                    previous_turn: exchange
                        .earlier_user_turns
                        .last()
                        .map(|turn| turn.content.as_str()),
                    previous_reply: exchange.previous_reply.as_deref(),
                });
                // Keep going even if the client has gone: the turn was
                // acknowledged, and the offline reply costs nothing to store.
                let _ = send_text(events, &reply.text, || generation.chunk()).await;
                // The coach counts no tokens; estimate them as the prompt
                // budget does, so its replies and a model's share a scale.
                generation.succeeded(Some(Usage {
                    input_tokens: estimated_tokens(message),
                    output_tokens: estimated_tokens(&reply.text),
                }));
                (reply.text, reply.cited_frameworks, None)
            }
            Responder::Model {
                client,
                max_tokens,
                context_tokens,
            } => {
                let request = prompt::build(
                    frameworks,
                    passages,
                    &profile,
                    &exchange.transcript,
                    message,
                    *context_tokens,
                    *max_tokens,
                );
                let (text, usage) =
                    match stream_model(client, &request, events, &mut generation).await {
                        Ok(reply) => reply,
                        Err(e) => {
                            generation.failed(match &e {
                                ReplyError::ClientGone => CLIENT_GONE,
                                ReplyError::Provider(e) => e.kind(),
                            });
                            return Err(e);
                        }
                    };
                generation.succeeded(Some(usage));
                let cited = frameworks
                    .iter()
                    .filter(|f| text.contains(&f.name))
                    .map(|f| f.framework_id.clone())
                    .collect();
                (text, cited, Some(usage))
            }
        };

        let responder = self.responder.name();
        let violations: Vec<&'static str> = rules::check(&text, &profile, self.word_cap)
            .iter()
            .map(rules::Rule::as_str)
            .collect();
        for rule in &violations {
            self.metrics.coach_policy_violation(responder, rule);
        }
        // Debug only: the canonical event carries grounded and violations
        // too, and at info this line doubled the service's log volume.
        tracing::debug!(
            responder,
            cited = cited_frameworks.len(),
            violations = violations.len(),
            grounded = grounding.is_some(),
            "reply produced"
        );
        Ok(ProducedReply {
            text,
            cited_frameworks,
            violations,
            grounded: grounding.is_some(),
            responder,
            profile_to_keep,
            usage,
        })
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
        max_frameworks: i32,
    ) -> Option<Grounding> {
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
            max_frameworks,
            // The offline coach does not quote documents; a model can.
            max_passages: if matches!(self.responder, Responder::Offline) {
                0
            } else {
                PASSAGES_PER_TURN
            },
        });
        request.set_timeout(KNOWLEDGE_TIMEOUT);
        if let Err(e) = ctx.write_to(request.metadata_mut()) {
            tracing::warn!(error = %e, "cannot forward request context to knowledge");
            return None;
        }
        match self.knowledge.clone().retrieve(request).await {
            Ok(response) => {
                let response = response.into_inner();
                Some(Grounding {
                    frameworks: response
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
                    passages: response
                        .passages
                        .into_iter()
                        .map(|p| prompt::DocumentPassage {
                            document_title: p.document_title,
                            heading: p.heading,
                            snippet: p.snippet,
                        })
                        .collect(),
                })
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), "knowledge lookup failed; replying without grounding");
                None
            }
        }
    }
}

/// Streams a model's reply to the client as it arrives. If the client hangs
/// up, the model stream is dropped, which cancels the upstream request.
async fn stream_model(
    client: &LlmClient,
    request: &tp_llm::ChatRequest,
    events: &Events,
    generation: &mut Generation<'_>,
) -> Result<(String, Usage), ReplyError> {
    let mut stream = client.stream(request).await?;
    let mut text = String::new();
    loop {
        // Notice a client that hung up even while the model is silent.
        let next = tokio::select! {
            () = events.closed() => return Err(ReplyError::ClientGone),
            next = stream.next() => next,
        };
        let Some(event) = next else { break };
        match event? {
            StreamEvent::Delta(delta) => {
                generation.chunk();
                if events.send(Ok(delta_event(&delta))).await.is_err() {
                    return Err(ReplyError::ClientGone);
                }
                text.push_str(&delta);
            }
            StreamEvent::Done(usage) => return Ok((text, usage)),
        }
    }
    Err(ReplyError::Provider(LlmError::Truncated))
}

fn estimated_tokens(text: &str) -> u32 {
    u32::try_from(prompt::estimate_tokens(text)).unwrap_or(u32::MAX)
}

/// One reply generation as the `gen_ai.client.*` metrics see it: started
/// when the responder is asked, its first chunk when the first delta
/// arrives (from the provider, before it is forwarded), finished once.
/// Measured here rather than in `tp-llm`, so the provider clients stay free
/// of our metrics and the offline coach is measured the same way.
struct Generation<'a> {
    metrics: &'a Metrics,
    provider: GenAiProvider,
    model: &'a str,
    started: Instant,
    first_chunk_seen: bool,
}

impl<'a> Generation<'a> {
    fn start(metrics: &'a Metrics, provider: GenAiProvider, model: &'a str) -> Self {
        Self {
            metrics,
            provider,
            model,
            started: Instant::now(),
            first_chunk_seen: false,
        }
    }

    /// A chunk of the reply arrived; the first one is timed.
    fn chunk(&mut self) {
        if !self.first_chunk_seen {
            self.first_chunk_seen = true;
            self.metrics
                .gen_ai_first_chunk(self.provider, self.model, self.started.elapsed());
        }
    }

    /// The reply is complete; `usage` as reported (or estimated). A count
    /// of zero is a provider that reported nothing, not a free reply, so it
    /// is left out rather than recorded.
    fn succeeded(self, usage: Option<Usage>) {
        self.metrics
            .gen_ai_operation(self.provider, self.model, self.started.elapsed(), None);
        let Some(usage) = usage else { return };
        for (token_type, tokens) in [
            (TokenType::Input, usage.input_tokens),
            (TokenType::Output, usage.output_tokens),
        ] {
            if tokens > 0 {
                self.metrics.gen_ai_tokens(
                    self.provider,
                    self.model,
                    token_type,
                    u64::from(tokens),
                );
            }
        }
    }

    /// No reply: `error_type` is a short name from a fixed set.
    fn failed(self, error_type: &'static str) {
        self.metrics.gen_ai_operation(
            self.provider,
            self.model,
            self.started.elapsed(),
            Some(error_type),
        );
    }
}

/// The event stream is closed: its client has gone.
#[derive(Debug)]
pub struct StreamClosed;

/// Streams a text that is whole already (the offline coach's reply, a
/// stored reply replayed) as deltas of [`WORDS_PER_DELTA`] words, calling
/// `on_delta` before each.
pub async fn send_text(
    events: &Events,
    text: &str,
    mut on_delta: impl FnMut(),
) -> Result<(), StreamClosed> {
    for piece in deltas(text, WORDS_PER_DELTA) {
        on_delta();
        events
            .send(Ok(delta_event(piece)))
            .await
            .map_err(|_| StreamClosed)?;
    }
    Ok(())
}

/// Splits text into stream deltas of a few words each, keeping every byte
/// (whitespace included) so the deltas concatenate to the original.
pub fn deltas(text: &str, words_per_delta: usize) -> Vec<&str> {
    // ASCII text (most replies) a byte at a time: a char's decoding and
    // Unicode whitespace test over every byte of every reply was ~20k
    // instructions per SendMessage (callgrind, session 31).
    if text.is_ascii() {
        let spaces = text.bytes().map(tp_coach::rules::is_ascii_space);
        return pieces_of(text, spaces.enumerate(), words_per_delta);
    }
    let spaces = text
        .char_indices()
        .map(|(index, ch)| (index, ch.is_whitespace()));
    pieces_of(text, spaces, words_per_delta)
}

/// [`deltas`] of `text`, given where each character starts and whether it
/// is whitespace.
fn pieces_of(
    text: &str,
    spaces: impl Iterator<Item = (usize, bool)>,
    words_per_delta: usize,
) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut words = 0;
    let mut in_word = false;
    for (index, space) in spaces {
        if space {
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
    use super::{EVENTS_IN_FLIGHT, WORDS_PER_DELTA, deltas, send_text};
    use tokio::sync::mpsc;

    const REPLY: &str = "Here's what I understand: the team ships weekly, but every \
        release slips. One lens that may help is Technical Coherence. What does the team \
        believe the release is for? And who decides when it is ready?";

    fn texts(
        events: &mut mpsc::Receiver<Result<super::pb::SendMessageResponse, tonic::Status>>,
    ) -> Vec<String> {
        let mut texts = Vec::new();
        while let Ok(event) = events.try_recv() {
            match event.map(|e| e.event) {
                Ok(Some(super::pb::send_message_response::Event::TextDelta(delta))) => {
                    texts.push(delta.text)
                }
                other => panic!("not a delta: {other:?}"),
            }
        }
        texts
    }

    #[test]
    fn a_whole_offline_reply_and_its_completion_fit_in_the_stream() {
        let longest = "word ".repeat(tp_coach::rules::DEFAULT_WORD_CAP);
        assert!(deltas(&longest, WORDS_PER_DELTA).len() < EVENTS_IN_FLIGHT);
    }

    #[tokio::test]
    async fn a_whole_text_is_in_the_stream_before_its_reader_runs() {
        let reply = [REPLY; 4].join("\n\n");
        let pieces = deltas(&reply, WORDS_PER_DELTA).len();
        assert!(pieces > 3, "{pieces}");
        let (sender, mut receiver) = mpsc::channel(EVENTS_IN_FLIGHT);
        let mut counted = 0;
        send_text(&sender, &reply, || counted += 1)
            .await
            .expect("the reader is there");
        // Nothing read yet: the reader finds every delta at once.
        assert_eq!(receiver.len(), pieces);
        assert_eq!(counted, pieces);
        assert_eq!(texts(&mut receiver).concat(), reply);
    }

    #[tokio::test]
    async fn a_text_longer_than_the_channel_arrives_whole_and_in_order() {
        let (sender, mut receiver): (super::Events, _) = mpsc::channel(2);
        let reader = tokio::spawn(async move {
            let mut text = String::new();
            while let Some(Ok(event)) = receiver.recv().await {
                if let Some(super::pb::send_message_response::Event::TextDelta(delta)) = event.event
                {
                    text.push_str(&delta.text);
                }
            }
            text
        });
        send_text(&sender, REPLY, || ())
            .await
            .expect("the reader is there");
        drop(sender);
        assert_eq!(reader.await.expect("reader"), REPLY);
    }

    #[tokio::test]
    async fn a_gone_reader_stops_the_text() {
        let (sender, receiver) = mpsc::channel(64);
        drop(receiver);
        let mut counted = 0;
        assert!(send_text(&sender, REPLY, || counted += 1).await.is_err());
        assert_eq!(counted, 1, "it stops at the first delta");
    }

    #[test]
    fn deltas_concatenate_to_the_text() {
        let text = "One lens  that may help is Systems Dynamics.\n\nWhat accumulates here?";
        let pieces = deltas(text, 3);
        assert!(pieces.len() > 2);
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn ascii_and_other_text_split_alike() {
        let ascii = "One lens  that\tmay help\x0bis Systems Dynamics.\n\nWhat accumulates?";
        // The same text with one letter that is not ASCII.
        let other = ascii.replace("Dynamics", "Dynamiçs");
        for words in 1..6 {
            let ascii_lengths: Vec<usize> = deltas(ascii, words).iter().map(|d| d.len()).collect();
            let other_lengths: Vec<usize> = deltas(&other, words)
                .iter()
                .map(|d| d.len() - usize::from(d.contains('ç')))
                .collect();
            assert_eq!(ascii_lengths, other_lengths, "{words} words a delta");
        }
        assert_eq!(deltas("a\u{a0}b c", 1), vec!["a", "\u{a0}b", " c"]);
    }

    #[test]
    fn short_and_empty_texts() {
        assert_eq!(deltas("hi", 3), vec!["hi"]);
        assert!(deltas("", 3).is_empty());
    }
}
