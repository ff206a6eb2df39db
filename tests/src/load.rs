//! Steady `SendMessage` load for the fault tests: workers each send turns
//! to a conversation of their own, one after another, with a fresh
//! idempotency key per turn, and record what every call came to. The
//! tests then inject a fault, retry what failed, and check the database
//! holds exactly what was acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Code;
use tp_context::Role;
use tp_proto::v1 as pb;

use crate::{GatewayApi, TestDatabase, conversations_via, new_conversation, send};

/// One exchange a client saw completed.
#[derive(Clone, Debug)]
pub struct Acknowledged {
    pub user_message_id: String,
    pub assistant_message_id: String,
    pub started: Instant,
    pub finished: Instant,
}

/// One call that failed, to be retried with its key.
#[derive(Clone, Debug)]
pub struct Failed {
    pub key: String,
    pub content: String,
    pub worker: usize,
    pub code: Code,
    pub message: String,
    pub started: Instant,
    pub took: Duration,
}

#[derive(Default)]
pub struct Outcomes {
    /// Idempotency key → the exchange, for every call that completed.
    pub acknowledged: BTreeMap<String, Acknowledged>,
    pub failed: Vec<Failed>,
    /// The longest any call took, failed or not.
    pub slowest_call: Duration,
}

impl Outcomes {
    /// How many failures had each status code, for messages.
    pub fn codes(&self) -> BTreeMap<String, usize> {
        let mut codes = BTreeMap::new();
        for failure in &self.failed {
            *codes.entry(format!("{:?}", failure.code)).or_insert(0) += 1;
        }
        codes
    }

    pub fn slowest_failure(&self) -> Duration {
        self.failed.iter().map(|f| f.took).max().unwrap_or_default()
    }
}

/// The senders: one conversation per worker, spread over a tenant's
/// members (the admin plus `members - 1` more).
pub struct Senders {
    /// (member's token, conversation id) per worker.
    pub conversations: Vec<(String, String)>,
}

impl Senders {
    pub async fn create(api: &GatewayApi, workers: usize, members: usize) -> anyhow::Result<Self> {
        let (tenant, first_token) = api.tenant_with_member("Acme", "member-0").await?;
        let mut tokens = vec![first_token];
        let admin = api.token("member-0-admin", Some(tenant), Role::Admin);
        let mut admin_client = api.members(&admin).await?;
        for i in 1..members.max(1) {
            let member = format!("member-{i}");
            admin_client
                .add_member(pb::AddMemberRequest {
                    user_id: member.clone(),
                    role: pb::MemberRole::Member.into(),
                })
                .await?;
            tokens.push(api.token(&member, Some(tenant), Role::Member));
        }
        let mut conversations = Vec::new();
        for worker in 0..workers {
            let token = tokens[worker % tokens.len()].clone();
            let mut client = api.conversations(&token).await?;
            let id = new_conversation(&mut client, &format!("worker {worker}"))
                .await?
                .conversation_id;
            conversations.push((token, id));
        }
        Ok(Self { conversations })
    }

    /// The turn each call sends: a question the corpus can ground.
    fn content(turn: usize) -> String {
        format!("Turn {turn}: how do I grow my staff engineers? We're 80 engineers.")
    }

    /// Every worker sends until `duration` has passed, each call with
    /// `deadline` as its `grpc-timeout`.
    pub fn run(&self, api: &GatewayApi, duration: Duration, deadline: Duration) -> Load {
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let started = Instant::now();
        let workers = self
            .conversations
            .iter()
            .cloned()
            .enumerate()
            .map(|(worker, (token, id))| {
                let outcomes = outcomes.clone();
                let gateway = api.addr;
                tokio::spawn(async move {
                    let mut client = conversations_via(gateway, &token).await?;
                    let mut turn = 0;
                    while started.elapsed() < duration {
                        let key = format!("w{worker}-t{turn}");
                        let content = Self::content(turn);
                        let call = Instant::now();
                        let result = tokio::time::timeout(
                            // A call that outlives its deadline by far is a
                            // hang: record it as such, not wait forever.
                            deadline * 3,
                            send_with_deadline(&mut client, &id, &content, &key, deadline),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(tonic::Status::deadline_exceeded(
                                "the call outlived three times its deadline",
                            ))
                        });
                        let took = call.elapsed();
                        record(&outcomes, key, content, worker, call, took, result);
                        turn += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        Load { outcomes, workers }
    }

    /// Retries every failed turn with its key until it completes, giving up
    /// after `within`; the retried exchanges join the acknowledged ones.
    /// Returns how long it took.
    pub async fn retry_failed(
        &self,
        api: &GatewayApi,
        outcomes: &mut Outcomes,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        let began = Instant::now();
        let deadline = began + within;
        for failure in outcomes.failed.clone() {
            let (token, id) = &self.conversations[failure.worker];
            let mut client = api.conversations(token).await?;
            let exchange = loop {
                let call = Instant::now();
                match send(&mut client, id, &failure.content, &failure.key).await {
                    Ok(exchange) => break (call, exchange),
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(status) => anyhow::bail!(
                        "{}: not completed within {within:?} of the recovery: {status:?}",
                        failure.key
                    ),
                }
            };
            let (call, exchange) = exchange;
            outcomes.acknowledged.insert(
                failure.key.clone(),
                Acknowledged {
                    user_message_id: exchange.user().message_id.clone(),
                    assistant_message_id: exchange.assistant().message_id.clone(),
                    started: call,
                    finished: Instant::now(),
                },
            );
        }
        Ok(began.elapsed())
    }
}

/// Records what one call came to.
fn record(
    outcomes: &Mutex<Outcomes>,
    key: String,
    content: String,
    worker: usize,
    call: Instant,
    took: Duration,
    result: Result<crate::Exchange, tonic::Status>,
) {
    let mut outcomes = outcomes.lock().expect("outcomes lock");
    outcomes.slowest_call = outcomes.slowest_call.max(took);
    match result {
        Ok(exchange) => {
            outcomes.acknowledged.insert(
                key,
                Acknowledged {
                    user_message_id: exchange.user().message_id.clone(),
                    assistant_message_id: exchange.assistant().message_id.clone(),
                    started: call,
                    finished: Instant::now(),
                },
            );
        }
        Err(status) => outcomes.failed.push(Failed {
            key,
            content,
            worker,
            code: status.code(),
            message: status.message().to_owned(),
            started: call,
            took,
        }),
    }
}

/// `send` with the call's `grpc-timeout` set.
async fn send_with_deadline(
    client: &mut crate::ConversationClient,
    conversation_id: &str,
    content: &str,
    key: &str,
    deadline: Duration,
) -> Result<crate::Exchange, tonic::Status> {
    crate::send_request(client, {
        let mut request = tonic::Request::new(pb::SendMessageRequest {
            conversation_id: conversation_id.to_owned(),
            content: content.to_owned(),
            idempotency_key: key.to_owned(),
            ..Default::default()
        });
        request.set_timeout(deadline);
        request
    })
    .await
}

/// Load running in the background.
pub struct Load {
    outcomes: Arc<Mutex<Outcomes>>,
    workers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Load {
    /// Waits for every worker to finish and returns what the calls came to.
    pub async fn finish(self) -> anyhow::Result<Outcomes> {
        for worker in self.workers {
            worker.await??;
        }
        Ok(std::mem::take(
            &mut *self.outcomes.lock().expect("outcomes lock"),
        ))
    }
}

/// A stored reply: whether it was grounded in the knowledge service.
pub struct StoredReply {
    pub grounded: Option<bool>,
}

/// Asserts the database holds exactly one user turn and one reply per
/// acknowledged key, and each acknowledged message; returns the stored
/// replies by message id.
pub async fn assert_exactly_acknowledged_stored(
    db: &TestDatabase,
    outcomes: &Outcomes,
) -> anyhow::Result<HashMap<String, StoredReply>> {
    let pool = TestDatabase::pool(&db.admin_url).await?;
    let rows: Vec<(String, String, Option<bool>)> =
        sqlx::query_as("SELECT message_id::text, role, grounded FROM conversation.messages")
            .fetch_all(&pool)
            .await?;
    pool.close().await;
    let users = rows.iter().filter(|(_, role, _)| role == "user").count();
    let replies: HashMap<String, StoredReply> = rows
        .iter()
        .filter(|(_, role, _)| role == "assistant")
        .map(|(id, _, grounded)| {
            (
                id.clone(),
                StoredReply {
                    grounded: *grounded,
                },
            )
        })
        .collect();
    anyhow::ensure!(
        users == outcomes.acknowledged.len(),
        "{users} user turns stored for {} acknowledged keys",
        outcomes.acknowledged.len()
    );
    anyhow::ensure!(
        replies.len() == outcomes.acknowledged.len(),
        "{} replies stored for {} acknowledged keys",
        replies.len(),
        outcomes.acknowledged.len()
    );
    let stored: std::collections::HashSet<&str> =
        rows.iter().map(|(id, _, _)| id.as_str()).collect();
    for (key, exchange) in &outcomes.acknowledged {
        anyhow::ensure!(
            stored.contains(exchange.user_message_id.as_str()),
            "{key}: the acknowledged user turn is not stored"
        );
        anyhow::ensure!(
            replies.contains_key(&exchange.assistant_message_id),
            "{key}: the acknowledged reply is not stored"
        );
    }
    Ok(replies)
}
