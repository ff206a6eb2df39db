//! Exports: one conversation as a document (`ExportConversation`), and the
//! whole organisation as JSON Lines (`ExportTenant`).
//!
//! Both stream: rows are read a page at a time, each page in its own short
//! transaction (no transaction stays open while a client reads), rendered
//! into chunks of about [`CHUNK_BYTES`], and sent through a channel of
//! [`CHUNKS_IN_FLIGHT`], so a slow client slows the reading down instead of
//! making the service buffer: memory stays constant however large the
//! export. An organisation's export is resumable: each chunk ends on a line
//! boundary and carries a sealed token of where it ended (the conversation's
//! `list_seq` and the last message's `seq`), which opens only for the same
//! tenant.

use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tonic::Status;
use tp_context::{RequestContext, TenantId};
use tp_proto::v1 as pb;
use tp_store::Pool;
use tp_store::TxTimer;
use tp_store::sealed::TokenSealer;
use uuid::Uuid;

use crate::error::ConversationError;

/// About how many bytes each chunk carries (whole lines or paragraphs; a
/// single message may make one larger, up to the 16 KiB message limit).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks rendered ahead of the client: the memory bound per export.
pub const CHUNKS_IN_FLIGHT: usize = 2;
/// Messages read per transaction.
const MESSAGE_PAGE: i64 = 500;
/// Conversations listed per transaction (organisation export).
const CONVERSATION_PAGE: i64 = 100;

pub const MARKDOWN: &str = "text/markdown; charset=utf-8";
pub const JSON: &str = "application/json";
pub const JSON_LINES: &str = "application/x-ndjson";

/// `db.operation.name`s of the export transactions.
pub mod op {
    pub const EXPORT_MESSAGES: &str = "export_messages";
    pub const EXPORT_CONVERSATIONS: &str = "export_conversations";
}

/// How one conversation is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Json,
}

pub fn format(raw: i32) -> Result<Format, Status> {
    match pb::ExportFormat::try_from(raw) {
        Ok(pb::ExportFormat::Markdown) => Ok(Format::Markdown),
        Ok(pb::ExportFormat::Json) => Ok(Format::Json),
        Ok(pb::ExportFormat::Unspecified) => Err(Status::invalid_argument(
            "format is required: EXPORT_FORMAT_MARKDOWN or EXPORT_FORMAT_JSON",
        )),
        Err(_) => Err(Status::invalid_argument(format!(
            "format {raw} is not an ExportFormat; use EXPORT_FORMAT_MARKDOWN or EXPORT_FORMAT_JSON"
        ))),
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ConversationRow {
    pub conversation_id: Uuid,
    pub user_id: String,
    pub title: String,
    pub create_time: OffsetDateTime,
    pub update_time: OffsetDateTime,
    pub list_seq: i64,
}

impl ConversationRow {
    /// The caller's own conversation, as the store read it.
    pub fn owned_by(row: crate::store::ConversationRow, user_id: &str) -> Self {
        Self {
            conversation_id: row.conversation_id,
            user_id: user_id.to_owned(),
            title: row.title,
            create_time: row.create_time,
            update_time: row.update_time,
            list_seq: row.list_seq,
        }
    }
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct MessageRow {
    pub message_id: Uuid,
    pub role: String,
    pub content: String,
    pub create_time: OffsetDateTime,
    pub seq: i64,
    /// The message this one follows: the transcript's tree, for programs.
    pub parent_id: Option<Uuid>,
    /// Whether an earlier message has the same parent: this one is an
    /// edit of a turn, or another reply to one.
    pub another_version: bool,
}

/// The Markdown document's head: the title, the id and when it started.
pub fn markdown_head(c: &ConversationRow) -> String {
    let title = if c.title.is_empty() {
        "Conversation"
    } else {
        &c.title
    };
    format!(
        "# {title}\n\n_{} · started {}_\n",
        c.conversation_id,
        rfc3339(c.create_time)
    )
}

/// One turn in Markdown, under who said it.
/// Every version of every turn is in the document, in the order written;
/// a later version says what it is.
pub fn markdown_turn(m: &MessageRow) -> String {
    let who = match (m.role == "user", m.another_version) {
        (true, false) => "You",
        (true, true) => "You (edited)",
        (false, false) => "Thought partner",
        (false, true) => "Thought partner (asked again)",
    };
    format!("\n## {who}\n\n{}\n", m.content.trim_end())
}

fn conversation_json(c: &ConversationRow) -> serde_json::Value {
    json!({
        "conversation_id": c.conversation_id,
        "title": c.title,
        "create_time": rfc3339(c.create_time),
        "update_time": rfc3339(c.update_time),
    })
}

fn message_json(m: &MessageRow) -> serde_json::Value {
    json!({
        "message_id": m.message_id,
        "parent_message_id": m.parent_id,
        "role": m.role,
        "content": m.content,
        "create_time": rfc3339(m.create_time),
    })
}

/// The organisation export's line for a conversation.
pub fn conversation_line(c: &ConversationRow) -> String {
    let mut line = json!({
        "type": "conversation",
        "conversation_id": c.conversation_id,
        "user_id": c.user_id,
        "title": c.title,
        "create_time": rfc3339(c.create_time),
        "update_time": rfc3339(c.update_time),
    })
    .to_string();
    line.push('\n');
    line
}

/// The organisation export's line for a message.
pub fn message_line(conversation_id: Uuid, m: &MessageRow) -> String {
    let mut line = json!({
        "type": "message",
        "conversation_id": conversation_id,
        "message_id": m.message_id,
        "parent_message_id": m.parent_id,
        "role": m.role,
        "content": m.content,
        "create_time": rfc3339(m.create_time),
    })
    .to_string();
    line.push('\n');
    line
}

/// Where an organisation export stands: every conversation before
/// `list_seq` is written; of that one, its line and the messages up to
/// `seq` (0: none yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Position {
    pub list_seq: i64,
    pub seq: i64,
}

impl Position {
    fn to_bytes(self) -> Vec<u8> {
        let mut bytes = self.list_seq.to_be_bytes().to_vec();
        bytes.extend_from_slice(&self.seq.to_be_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(Self {
            list_seq: i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?),
            seq: i64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?),
        })
        .filter(|_| bytes.len() == 16)
    }
}

fn with_binding<R>(tenant: TenantId, f: impl FnOnce(&[&[u8]]) -> R) -> R {
    let tenant = tenant.as_uuid();
    f(&[tenant.as_bytes(), b"export-tenant"])
}

pub fn resume_token(sealer: &TokenSealer, tenant: TenantId, at: Position) -> String {
    with_binding(tenant, |binding| sealer.seal(binding, &at.to_bytes()))
}

/// Where to resume: the start, or where `token` says the client got to.
pub fn resume_from(
    sealer: &TokenSealer,
    tenant: TenantId,
    token: &str,
) -> Result<Option<Position>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let refused = || {
        Status::invalid_argument(
            "resume_token was not issued for this organisation's export: pass the resume_token \
             of the last chunk received, or empty to start again",
        )
    };
    let bytes =
        with_binding(tenant, |binding| sealer.open(binding, token)).map_err(|_| refused())?;
    Position::from_bytes(&bytes).map(Some).ok_or_else(refused)
}

/// A streamed piece of an export, as its RPC declares it.
pub trait Chunk: Send + 'static {
    fn new(data: Vec<u8>, content_type: String, filename: String, resume_token: String) -> Self;
}

impl Chunk for pb::ExportConversationResponse {
    fn new(data: Vec<u8>, content_type: String, filename: String, _: String) -> Self {
        Self {
            data,
            content_type,
            filename,
        }
    }
}

impl Chunk for pb::ExportTenantResponse {
    fn new(data: Vec<u8>, content_type: String, filename: String, resume_token: String) -> Self {
        Self {
            data,
            content_type,
            filename,
            resume_token,
        }
    }
}

/// Collects rendered text into chunks and sends them, waiting while the
/// client is [`CHUNKS_IN_FLIGHT`] behind.
pub struct Chunker<C> {
    sender: mpsc::Sender<Result<C, Status>>,
    buffer: String,
    head: Option<(String, String)>,
}

/// The client went away: stop reading.
#[derive(Debug)]
pub struct Gone;

impl<C: Chunk> Chunker<C> {
    pub fn new(
        sender: mpsc::Sender<Result<C, Status>>,
        content_type: &str,
        filename: String,
    ) -> Self {
        Self {
            sender,
            buffer: String::with_capacity(CHUNK_BYTES + 16 * 1024),
            head: Some((content_type.to_owned(), filename)),
        }
    }

    /// Appends text; sends a chunk when one is full. `resume` is where the
    /// export stands after this text (organisation exports).
    pub async fn push(&mut self, text: &str, resume: impl FnOnce() -> String) -> Result<(), Gone> {
        self.buffer.push_str(text);
        if self.buffer.len() >= CHUNK_BYTES {
            self.flush(resume()).await?;
        }
        Ok(())
    }

    /// Sends what is buffered (and the head, if nothing was sent yet).
    pub async fn flush(&mut self, resume_token: String) -> Result<(), Gone> {
        if self.buffer.is_empty() && self.head.is_none() {
            return Ok(());
        }
        let (content_type, filename) = self.head.take().unwrap_or_default();
        let chunk = C::new(
            std::mem::take(&mut self.buffer).into_bytes(),
            content_type,
            filename,
            resume_token,
        );
        self.sender.send(Ok(chunk)).await.map_err(|_| Gone)
    }

    pub async fn fail(self, status: Status) {
        let _ = self.sender.send(Err(status)).await;
    }
}

/// Reads for exports: the caller's own conversation, or all of a tenant's.
#[derive(Clone)]
pub struct ExportStore {
    pool: Pool,
    timer: TxTimer,
}

impl ExportStore {
    pub fn new(pool: Pool, timer: TxTimer) -> Self {
        Self { pool, timer }
    }

    /// The tenant's conversations after `list_seq`, in creation order.
    pub async fn conversations_after(
        &self,
        tenant: TenantId,
        list_seq: i64,
    ) -> Result<Vec<ConversationRow>, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, tenant, op::EXPORT_CONVERSATIONS)
            .await?;
        let rows = sqlx::query_as::<_, ConversationRow>(
            "SELECT conversation_id, user_id, title, create_time, update_time, list_seq
               FROM conversation.conversations
              WHERE list_seq > $1
              ORDER BY list_seq LIMIT $2",
        )
        .bind(list_seq)
        .bind(CONVERSATION_PAGE)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// A conversation's messages after `seq`, oldest first, one page.
    pub async fn messages_after(
        &self,
        tenant: TenantId,
        conversation_id: Uuid,
        seq: i64,
    ) -> Result<Vec<MessageRow>, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, tenant, op::EXPORT_MESSAGES)
            .await?;
        let rows = sqlx::query_as::<_, MessageRow>(
            // Siblings by parent: first turns (no parent) among the
            // conversation's, others by the parent's index.
            "SELECT m.message_id, m.role, m.content, m.create_time, m.seq, m.parent_id,
                    CASE WHEN m.parent_id IS NULL THEN
                        EXISTS (SELECT 1 FROM conversation.messages s
                                 WHERE s.parent_id IS NULL AND s.conversation_id = m.conversation_id
                                   AND s.seq < m.seq)
                    ELSE
                        EXISTS (SELECT 1 FROM conversation.messages s
                                 WHERE s.parent_id = m.parent_id AND s.seq < m.seq)
                    END AS another_version
               FROM conversation.messages m
              WHERE m.conversation_id = $1 AND m.seq > $2
              ORDER BY m.seq LIMIT $3",
        )
        .bind(conversation_id)
        .bind(seq)
        .bind(MESSAGE_PAGE)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }
}

/// Writes one conversation in `format` into `out`.
pub async fn write_conversation(
    store: &ExportStore,
    ctx: &RequestContext,
    conversation: &ConversationRow,
    format: Format,
    out: &mut Chunker<pb::ExportConversationResponse>,
) -> Result<(), ExportError> {
    let id = conversation.conversation_id;
    let mut after = 0;
    let mut first = true;
    match format {
        Format::Markdown => out.push(&markdown_head(conversation), String::new).await?,
        Format::Json => {
            // The object is written in pieces: its head, each message, its tail.
            let open = format!(
                "{{\"conversation\":{},\"messages\":[",
                conversation_json(conversation)
            );
            out.push(&open, String::new).await?;
        }
    }
    loop {
        let page = store.messages_after(ctx.tenant_id, id, after).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for m in &page {
            let text = match format {
                Format::Markdown => markdown_turn(m),
                Format::Json => {
                    let separator = if first { "" } else { "," };
                    format!("{separator}{}", message_json(m))
                }
            };
            first = false;
            out.push(&text, String::new).await?;
        }
        if (page.len() as i64) < MESSAGE_PAGE {
            break;
        }
    }
    if format == Format::Json {
        out.push("]}\n", String::new).await?;
    }
    out.flush(String::new()).await?;
    Ok(())
}

/// Writes every conversation of the tenant from `from` on, as JSON Lines.
pub async fn write_tenant(
    store: &ExportStore,
    sealer: &TokenSealer,
    tenant: TenantId,
    from: Option<Position>,
    out: &mut Chunker<pb::ExportTenantResponse>,
) -> Result<(u64, u64), ExportError> {
    let (mut conversations, mut messages) = (0_u64, 0_u64);
    let mut at = from.unwrap_or_default();
    // Resuming inside a conversation: finish it first (unless it is gone).
    let mut pending: Vec<ConversationRow> = Vec::new();
    if from.is_some_and(|p| p.list_seq > 0) {
        pending = store
            .conversations_after(tenant, at.list_seq - 1)
            .await?
            .into_iter()
            .take(1)
            .filter(|c| c.list_seq == at.list_seq)
            .collect();
    }
    let mut resuming = !pending.is_empty();
    loop {
        if pending.is_empty() {
            pending = store.conversations_after(tenant, at.list_seq).await?;
            pending.reverse();
            if pending.is_empty() {
                break;
            }
        }
        let Some(conversation) = pending.pop() else {
            break;
        };
        if resuming {
            resuming = false;
        } else {
            at = Position {
                list_seq: conversation.list_seq,
                seq: 0,
            };
            let line = conversation_line(&conversation);
            out.push(&line, || resume_token(sealer, tenant, at)).await?;
            conversations += 1;
        }
        loop {
            let page = store
                .messages_after(tenant, conversation.conversation_id, at.seq)
                .await?;
            for m in &page {
                at.seq = m.seq;
                let line = message_line(conversation.conversation_id, m);
                out.push(&line, || resume_token(sealer, tenant, at)).await?;
                messages += 1;
            }
            if (page.len() as i64) < MESSAGE_PAGE {
                break;
            }
        }
    }
    out.flush(resume_token(sealer, tenant, at)).await?;
    Ok((conversations, messages))
}

/// Why an export stopped.
#[derive(Debug)]
pub enum ExportError {
    Gone,
    Store(ConversationError),
}

impl From<Gone> for ExportError {
    fn from(_: Gone) -> Self {
        Self::Gone
    }
}

impl From<ConversationError> for ExportError {
    fn from(e: ConversationError) -> Self {
        Self::Store(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> ConversationRow {
        ConversationRow {
            conversation_id: Uuid::from_u128(1),
            user_id: "ann".into(),
            title: "Hiring".into(),
            create_time: OffsetDateTime::UNIX_EPOCH,
            update_time: OffsetDateTime::UNIX_EPOCH,
            list_seq: 3,
        }
    }

    fn message(role: &str, content: &str) -> MessageRow {
        MessageRow {
            message_id: Uuid::from_u128(2),
            role: role.into(),
            content: content.into(),
            create_time: OffsetDateTime::UNIX_EPOCH,
            seq: 9,
            parent_id: None,
            another_version: false,
        }
    }

    #[test]
    fn formats_are_required_and_known() {
        assert_eq!(format(1).ok(), Some(Format::Markdown));
        assert_eq!(format(2).ok(), Some(Format::Json));
        for raw in [0, 3, -1] {
            let status = format(raw).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains("EXPORT_FORMAT_MARKDOWN"));
        }
    }

    #[test]
    fn markdown_names_the_speakers() {
        let head = markdown_head(&conversation());
        assert!(head.starts_with("# Hiring\n"), "{head}");
        assert_eq!(
            markdown_turn(&message("user", "We are 40.\n")),
            "\n## You\n\nWe are 40.\n"
        );
        assert!(markdown_turn(&message("assistant", "Why?")).contains("## Thought partner"));
        let edited = MessageRow {
            another_version: true,
            ..message("user", "We are 45.")
        };
        assert!(markdown_turn(&edited).starts_with("\n## You (edited)\n"));
        let again = MessageRow {
            another_version: true,
            ..message("assistant", "What for?")
        };
        assert!(markdown_turn(&again).contains("## Thought partner (asked again)"));
    }

    #[test]
    fn lines_are_one_json_object_each_even_with_newlines_in_content() {
        let line = message_line(
            Uuid::from_u128(1),
            &message("user", "two\nlines \"quoted\""),
        );
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let value: serde_json::Value = serde_json::from_str(line.trim_end()).expect("JSON");
        assert_eq!(value["type"], "message");
        assert_eq!(value["content"], "two\nlines \"quoted\"");
        assert!(
            value["parent_message_id"].is_null(),
            "a first turn has no parent"
        );
        let value: serde_json::Value =
            serde_json::from_str(conversation_line(&conversation()).trim_end()).expect("JSON");
        assert_eq!(value["user_id"], "ann");
    }

    #[test]
    fn resume_tokens_open_only_for_their_tenant() {
        let sealer = TokenSealer::new(&[3; 32]).expect("a key");
        let (a, b) = (
            TenantId::from(Uuid::from_u128(10)),
            TenantId::from(Uuid::from_u128(11)),
        );
        let at = Position {
            list_seq: 4,
            seq: 77,
        };
        let token = resume_token(&sealer, a, at);
        assert_eq!(resume_from(&sealer, a, &token).ok(), Some(Some(at)));
        assert_eq!(resume_from(&sealer, a, "").ok(), Some(None));
        for (tenant, token) in [(b, token.as_str()), (a, "s1.00.00"), (a, "garbage")] {
            let status = resume_from(&sealer, tenant, token).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains("resume_token"));
        }
    }
}
