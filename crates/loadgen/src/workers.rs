//! The calls each scenario makes, one worker per concurrent stream.

use std::time::Instant;

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tp_proto::v1 as pb;

use crate::api::Member;
use crate::driver::{Outcome, Worker};
use crate::echo::pb as echo;

type Conversations = pb::conversation_service_client::ConversationServiceClient<Channel>;
type Knowledge = pb::knowledge_service_client::KnowledgeServiceClient<Channel>;

/// Operation names in reports.
pub mod op {
    pub const SEND_MESSAGE: &str = "SendMessage";
    pub const LIST_MESSAGES: &str = "ListMessages";
    pub const SEARCH: &str = "Search";
    pub const ECHO: &str = "Echo";
    pub const ECHO_STREAM: &str = "EchoStream";
    pub const GET_CONVERSATION_VIA_GATEWAY: &str = "GetConversation via gateway";
    pub const GET_CONVERSATION_DIRECT: &str = "GetConversation direct";
    pub const SEND_MESSAGE_VIA_GATEWAY: &str = "SendMessage via gateway";
    pub const SEND_MESSAGE_DIRECT: &str = "SendMessage direct";
    pub const GET_CONVERSATION_VIA_PROXY: &str = "GetConversation via bare proxy";
    pub const SEND_MESSAGE_VIA_PROXY: &str = "SendMessage via bare proxy";
}

/// What leaders send: varied, so the coach takes its different paths.
const MESSAGES: &[&str] = &[
    "We need to hire more engineers. We're 40 engineers at series B.",
    "My staff engineers feel like glorified project managers. What should I do?",
    "Our on-call is burning people out and incidents keep repeating.",
    "Should I go back to being an engineer? I miss building things.",
    "The CEO wants a technical strategy by next month and I don't know where to start.",
    "Two teams own overlapping services and keep stepping on each other.",
    "How do I know if our observability is good enough before we launch?",
    "I'm a new director with five managers reporting to me and everything is urgent.",
];

const SEARCHES: &[&str] = &[
    "how do I protect the platform team roadmap from feature work",
    "staff engineer role is unclear tech lead or architect",
    "on-call burnout alert fatigue noisy pages",
    "should I go back to IC work after managing",
    "write an engineering strategy for the next year",
    "error budgets and SLOs for tier one services",
    "reorg reporting lines director span of control",
    "technical debt in the billing domain migration",
];

/// SplitMix64: a fast deterministic choice per worker.
pub struct Choice(u64);

impl Choice {
    pub fn seeded(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn code(status: &tonic::Status) -> tonic::Code {
    status.code()
}

/// A member and the conversation they send to.
#[derive(Clone, Debug)]
pub struct Sender {
    pub member: Member,
    pub conversation_id: String,
}

/// A member and a long conversation they page through.
#[derive(Clone, Debug)]
pub struct Reader {
    pub member: Member,
    pub conversation_id: String,
}

/// Shares of each operation, in percent.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    pub send: u8,
    pub list: u8,
    pub search: u8,
}

impl Mix {
    pub const SEND: Mix = Mix {
        send: 100,
        list: 0,
        search: 0,
    };
    pub const LIST: Mix = Mix {
        send: 0,
        list: 100,
        search: 0,
    };
    pub const SEARCH: Mix = Mix {
        send: 0,
        list: 0,
        search: 100,
    };
    /// The mixed profile: 70 % sends, 20 % transcript pages, 10 % searches.
    pub const MIXED: Mix = Mix {
        send: 70,
        list: 20,
        search: 10,
    };
}

/// Drives the public API through the gateway.
pub struct ApiWorker {
    conversations: Conversations,
    knowledge: Knowledge,
    mix: Mix,
    choice: Choice,
    /// Cycled through call by call: several senders spread one worker's
    /// load over many tenants (the tenant-scaling comparison).
    senders: Vec<Sender>,
    next_sender: usize,
    reader: Option<Reader>,
    page_token: String,
    searcher: Option<Member>,
}

impl ApiWorker {
    pub fn new(channel: Channel, mix: Mix, seed: u64) -> Self {
        Self {
            conversations: Conversations::new(channel.clone()),
            knowledge: Knowledge::new(channel),
            mix,
            choice: Choice::seeded(seed),
            senders: Vec::new(),
            next_sender: 0,
            reader: None,
            page_token: String::new(),
            searcher: None,
        }
    }

    pub fn sending(mut self, senders: Vec<Sender>) -> Self {
        self.senders = senders;
        self
    }

    pub fn reading(mut self, reader: Reader) -> Self {
        self.reader = Some(reader);
        self
    }

    pub fn searching(mut self, member: Member) -> Self {
        self.searcher = Some(member);
        self
    }

    async fn send(&mut self) -> Outcome {
        let Some(sender) = self
            .senders
            .get(self.next_sender % self.senders.len().max(1))
            .cloned()
        else {
            return Outcome {
                op: op::SEND_MESSAGE,
                first_event: None,
                result: Err(tonic::Code::FailedPrecondition),
            };
        };
        self.next_sender += 1;
        let content = MESSAGES[self.choice.below(MESSAGES.len())];
        let request = sender.member.via_gateway(pb::SendMessageRequest {
            conversation_id: sender.conversation_id.clone(),
            content: content.to_owned(),
            idempotency_key: String::new(),
            ..Default::default()
        });
        send_message(&mut self.conversations, request, op::SEND_MESSAGE).await
    }

    async fn list(&mut self) -> Outcome {
        let Some(reader) = &self.reader else {
            return Outcome {
                op: op::LIST_MESSAGES,
                first_event: None,
                result: Err(tonic::Code::FailedPrecondition),
            };
        };
        let request = reader.member.via_gateway(pb::ListMessagesRequest {
            conversation_id: reader.conversation_id.clone(),
            page_size: 50,
            page_token: std::mem::take(&mut self.page_token),
            ..Default::default()
        });
        let result = match self.conversations.list_messages(request).await {
            Ok(response) => {
                let response = response.into_inner();
                if response.messages.is_empty() {
                    Err(tonic::Code::DataLoss)
                } else {
                    // Walk the whole transcript, then start again: every
                    // depth is read, the last pages as often as the first.
                    self.page_token = response.next_page_token;
                    Ok(())
                }
            }
            Err(status) => Err(code(&status)),
        };
        Outcome {
            op: op::LIST_MESSAGES,
            first_event: None,
            result,
        }
    }

    async fn search(&mut self) -> Outcome {
        let Some(member) = &self.searcher else {
            return Outcome {
                op: op::SEARCH,
                first_event: None,
                result: Err(tonic::Code::FailedPrecondition),
            };
        };
        let query = SEARCHES[self.choice.below(SEARCHES.len())];
        let request = member.via_gateway(pb::SearchRequest {
            query: query.to_owned(),
            limit: 10,
            ..Default::default()
        });
        let result = match self.knowledge.search(request).await {
            Ok(response) if !response.get_ref().results.is_empty() => Ok(()),
            Ok(_) => Err(tonic::Code::NotFound),
            Err(status) => Err(code(&status)),
        };
        Outcome {
            op: op::SEARCH,
            first_event: None,
            result,
        }
    }
}

impl Worker for ApiWorker {
    async fn call(&mut self) -> Outcome {
        let roll = self.choice.below(100) as u8;
        if roll < self.mix.send {
            self.send().await
        } else if roll < self.mix.send + self.mix.list {
            self.list().await
        } else if roll < self.mix.send + self.mix.list + self.mix.search {
            self.search().await
        } else {
            self.send().await
        }
    }
}

/// One SendMessage, streamed to its end: ok only when the `completed`
/// event (both turns persisted) arrived.
async fn send_message(
    client: &mut Conversations,
    request: tonic::Request<pb::SendMessageRequest>,
    name: &'static str,
) -> Outcome {
    let started = Instant::now();
    let mut first_event = None;
    let result = match client.send_message(request).await {
        Ok(response) => {
            let mut stream = response.into_inner();
            let mut completed = false;
            let mut failure = None;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        first_event.get_or_insert_with(|| started.elapsed());
                        if matches!(
                            event.event,
                            Some(pb::send_message_response::Event::Completed(_))
                        ) {
                            completed = true;
                        }
                    }
                    Err(status) => {
                        failure = Some(code(&status));
                        break;
                    }
                }
            }
            match (failure, completed) {
                (Some(code), _) => Err(code),
                (None, true) => Ok(()),
                (None, false) => Err(tonic::Code::DataLoss),
            }
        }
        Err(status) => Err(code(&status)),
    };
    Outcome {
        op: name,
        first_event,
        result,
    }
}

/// The gateway hop: the same member's calls alternately through the
/// gateway and straight to the conversation service.
pub struct HopWorker {
    via_gateway: Conversations,
    via_proxy: Conversations,
    direct: Conversations,
    sender: Sender,
    turn: u64,
}

impl HopWorker {
    /// `proxy` is the bare proxy in front of `conversation`: called with
    /// the direct path's headers, it measures a hop with nothing in it.
    pub fn new(gateway: Channel, proxy: Channel, conversation: Channel, sender: Sender) -> Self {
        Self {
            via_gateway: Conversations::new(gateway),
            via_proxy: Conversations::new(proxy),
            direct: Conversations::new(conversation),
            sender,
            turn: 0,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Gateway,
    Proxy,
    Direct,
}

/// The hop worker's `turn`th call: its path, and whether it is unary.
///
/// Rounds of three calls, one per path, alternate unary and streamed, and
/// each pair of rounds shifts the order of the paths by one. Without the
/// shift one path's unary call always came first after a streamed round,
/// right behind a SendMessage, and only that path paid what any call there
/// pays (0.11-0.17 ms on every path, cause not known: BENCHMARKS, session
/// 33): the gateway's GetConversation, which read ~110 us slower in
/// `conversation` than the same call direct (sessions 22-32).
fn hop_call(turn: u64) -> (Path, bool) {
    let round = turn / 3;
    let unary = round.is_multiple_of(2);
    let shift = (round / 2) % 3;
    let path = [Path::Gateway, Path::Proxy, Path::Direct][((turn % 3 + shift) % 3) as usize];
    (path, unary)
}

impl Worker for HopWorker {
    async fn call(&mut self) -> Outcome {
        self.turn += 1;
        // Every path sees the same mix and the same machine state.
        let (path, unary) = hop_call(self.turn);
        let name = match (unary, path) {
            (true, Path::Gateway) => op::GET_CONVERSATION_VIA_GATEWAY,
            (true, Path::Proxy) => op::GET_CONVERSATION_VIA_PROXY,
            (true, Path::Direct) => op::GET_CONVERSATION_DIRECT,
            (false, Path::Gateway) => op::SEND_MESSAGE_VIA_GATEWAY,
            (false, Path::Proxy) => op::SEND_MESSAGE_VIA_PROXY,
            (false, Path::Direct) => op::SEND_MESSAGE_DIRECT,
        };
        // The proxy forwards what it gets: it is called as conversation is.
        let direct = path != Path::Gateway;
        let member = &self.sender.member;
        let client = match path {
            Path::Gateway => &mut self.via_gateway,
            Path::Proxy => &mut self.via_proxy,
            Path::Direct => &mut self.direct,
        };
        let conversation_id = self.sender.conversation_id.clone();
        if unary {
            let message = pb::GetConversationRequest { conversation_id };
            let request = if direct {
                member.direct(message)
            } else {
                Ok(member.via_gateway(message))
            };
            let result = match request {
                Ok(request) => client
                    .get_conversation(request)
                    .await
                    .map(|_| ())
                    .map_err(|s| code(&s)),
                Err(_) => Err(tonic::Code::InvalidArgument),
            };
            Outcome {
                op: name,
                first_event: None,
                result,
            }
        } else {
            let message = pb::SendMessageRequest {
                conversation_id,
                content: MESSAGES[(self.turn / 6) as usize % MESSAGES.len()].to_owned(),
                idempotency_key: String::new(),
                ..Default::default()
            };
            let request = if direct {
                member.direct(message)
            } else {
                Ok(member.via_gateway(message))
            };
            match request {
                Ok(request) => send_message(client, request, name).await,
                Err(_) => Outcome {
                    op: name,
                    first_event: None,
                    result: Err(tonic::Code::InvalidArgument),
                },
            }
        }
    }
}

/// The bare-tonic baseline's calls: unary echoes or streamed echoes of as
/// many pieces as a coached reply has.
pub struct EchoWorker {
    client: echo::echo_service_client::EchoServiceClient<Channel>,
    chunks: Option<u32>,
}

impl EchoWorker {
    pub fn unary(channel: Channel) -> Self {
        Self {
            client: echo::echo_service_client::EchoServiceClient::new(channel),
            chunks: None,
        }
    }

    pub fn streaming(channel: Channel, chunks: u32) -> Self {
        Self {
            client: echo::echo_service_client::EchoServiceClient::new(channel),
            chunks: Some(chunks),
        }
    }
}

/// About one delta of a coached reply.
const ECHO_TEXT: &str = "Before I suggest anything, let me check I have";

impl Worker for EchoWorker {
    async fn call(&mut self) -> Outcome {
        let request = echo::EchoRequest {
            text: ECHO_TEXT.to_owned(),
            chunks: self.chunks.unwrap_or(0),
        };
        match self.chunks {
            None => Outcome {
                op: op::ECHO,
                first_event: None,
                result: self
                    .client
                    .echo(request)
                    .await
                    .map(|_| ())
                    .map_err(|s| code(&s)),
            },
            Some(chunks) => {
                let started = Instant::now();
                let mut first_event = None;
                let result = match self.client.echo_stream(request).await {
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        let mut received = 0;
                        let mut failure = None;
                        while let Some(piece) = stream.next().await {
                            match piece {
                                Ok(_) => {
                                    first_event.get_or_insert_with(|| started.elapsed());
                                    received += 1;
                                }
                                Err(status) => {
                                    failure = Some(code(&status));
                                    break;
                                }
                            }
                        }
                        match failure {
                            Some(code) => Err(code),
                            None if received == chunks => Ok(()),
                            None => Err(tonic::Code::DataLoss),
                        }
                    }
                    Err(status) => Err(code(&status)),
                };
                Outcome {
                    op: op::ECHO_STREAM,
                    first_event,
                    result,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_spread_evenly_and_repeat_per_seed() {
        let mut a = Choice::seeded(7);
        let mut b = Choice::seeded(7);
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            counts[x] += 1;
        }
        for n in counts {
            assert!((800..1200).contains(&n), "uneven: {counts:?}");
        }
        assert_ne!(Choice::seeded(1).next(), Choice::seeded(2).next());
    }

    #[test]
    fn every_hop_path_makes_each_kind_of_call_as_often_and_after_the_same_calls() {
        use std::collections::HashMap;
        // Over whole cycles (six rounds of three), each path makes as many
        // unary as streamed calls, and each (path, kind) follows every
        // (kind of the call before) as often as the other paths do.
        let calls: Vec<(Path, bool)> = (1..=18 * 20).map(hop_call).collect();
        let mut made: HashMap<(u8, bool), u32> = HashMap::new();
        let mut after_stream: HashMap<(u8, bool), u32> = HashMap::new();
        for pair in calls.windows(2) {
            let ((_, before_unary), (path, unary)) = (pair[0], pair[1]);
            *made.entry((path as u8, unary)).or_default() += 1;
            if !before_unary {
                *after_stream.entry((path as u8, unary)).or_default() += 1;
            }
        }
        for unary in [true, false] {
            let counts: Vec<u32> = (0..3).map(|p| made[&(p, unary)]).collect();
            assert!(
                counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
                "{counts:?}"
            );
            let behind: Vec<u32> = (0..3)
                .map(|p| after_stream.get(&(p, unary)).copied().unwrap_or(0))
                .collect();
            assert!(
                behind.iter().max().unwrap() - behind.iter().min().unwrap() <= 1,
                "unary {unary}: calls right after a streamed one, by path: {behind:?}"
            );
        }
    }

    #[test]
    fn the_mixed_profile_is_seventy_twenty_ten() {
        let m = Mix::MIXED;
        assert_eq!((m.send, m.list, m.search), (70, 20, 10));
        assert_eq!(
            u32::from(m.send) + u32::from(m.list) + u32::from(m.search),
            100
        );
    }
}
