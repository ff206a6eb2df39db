//! `thoughtpartner.v1.ConversationService`, served to the gateway.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tp_proto::v1 as pb;
use tp_store::paging::Page;

use crate::export::{self, Chunker, ExportError, ExportStore};
use crate::reply::{EVENTS_IN_FLIGHT, ReplyError, ReplyPipeline, send_text};
use crate::search::{self, MessageSearch};
use crate::store::{
    Branch, BranchMessageRow, ConversationRow, ConversationStore, Exchange, KeptProfile,
    MessageRow, REPLY_LEASE, REPLY_LEASE_RENEW_EVERY, ReplyLease, ReplyOwner, Turn,
};
use crate::validate;
use tp_store::sealed::TokenSealer;
use uuid::Uuid;

pub struct ConversationHandler {
    store: ConversationStore,
    pipeline: ReplyPipeline,
    search: MessageSearch,
    exports: ExportStore,
    /// Seals SearchMessages' page tokens and ExportTenant's resume tokens.
    sealer: TokenSealer,
}

impl ConversationHandler {
    pub fn new(
        store: ConversationStore,
        pipeline: ReplyPipeline,
        search: MessageSearch,
        exports: ExportStore,
        sealer: TokenSealer,
    ) -> Self {
        Self {
            store,
            pipeline,
            search,
            exports,
            sealer,
        }
    }
}

impl ConversationHandler {
    /// Starts an exchange (the user's turn is durable when this returns)
    /// and streams the reply to it from a task of its own; returns when the
    /// reply's first event is ready.
    async fn stream_reply(
        &self,
        ctx: tp_context::RequestContext,
        record: tp_telemetry::CallRecord,
        turn: Turn<'_>,
    ) -> Result<impl Stream<Item = Result<pb::SendMessageResponse, Status>> + Send + 'static, Status>
    {
        let exchange = self
            .store
            .begin_exchange(&ctx, turn, self.pipeline.transcript_sides())
            .await?;
        record.set_conversation(exchange.user_message.conversation_id);
        let (events, receiver) = mpsc::channel(EVENTS_IN_FLIGHT);
        let task = respond(
            self.store.clone(),
            self.pipeline.clone(),
            ctx,
            record,
            exchange,
            events,
        );
        // The reply's work keeps the call's trace context (its call to
        // knowledge continues the trace; its log lines carry the trace id).
        tokio::spawn(tp_telemetry::in_current_call(task));
        // The response's headers wait for the reply's first event, so the
        // two leave in one write: sent apart, each hop on the way (the
        // gateway, a proxy) reads, wakes and writes twice before the
        // client sees a word. A reply that fails before its first event
        // fails the call with its status.
        let mut receiver = receiver;
        let first = match receiver.recv().await {
            Some(Err(status)) => return Err(status),
            first => first,
        };
        Ok(futures_util::stream::iter(first).chain(ReceiverStream::new(receiver)))
    }
}

type SendEvent = pb::send_message_response::Event;

/// SendMessage's event as the same event of another call that streams a
/// reply (EditMessage, RegenerateReply: the same oneof, another type).
macro_rules! relay_event {
    ($event:path) => {
        |event: SendEvent| {
            use $event as Event;
            match event {
                SendEvent::TextDelta(delta) => Event::TextDelta(delta),
                SendEvent::Completed(completed) => Event::Completed(completed),
            }
        }
    };
}

fn paging_status(e: tp_store::paging::PagingError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn conversation_pb(row: ConversationRow) -> pb::Conversation {
    pb::Conversation {
        conversation_id: row.conversation_id.to_string(),
        title: row.title,
        create_time: Some(tp_proto::timestamp(row.create_time)),
        update_time: Some(tp_proto::timestamp(row.update_time)),
    }
}

fn message_pb(row: MessageRow) -> pb::Message {
    let role = match row.role.as_str() {
        "user" => pb::MessageRole::User,
        "assistant" => pb::MessageRole::Assistant,
        _ => pb::MessageRole::Unspecified,
    };
    pb::Message {
        message_id: row.message_id.to_string(),
        conversation_id: row.conversation_id.to_string(),
        role: role.into(),
        content: row.content,
        create_time: Some(tp_proto::timestamp(row.create_time)),
        parent_message_id: row.parent_id.map(|id| id.to_string()).unwrap_or_default(),
        sibling_message_ids: Vec::new(),
    }
}

fn branch_message_pb(row: BranchMessageRow) -> pb::Message {
    pb::Message {
        sibling_message_ids: row.sibling_ids.iter().map(Uuid::to_string).collect(),
        ..message_pb(row.message)
    }
}

/// ListMessages' page tokens: where a page of a branch ended, sealed to the
/// tenant, the caller and the conversation, so the next page reads the
/// same branch however the conversation changed meanwhile, and a token
/// cannot be forged or taken elsewhere.
mod branch_token {
    use tonic::Status;
    use tp_context::RequestContext;
    use tp_store::sealed::{SealError, TokenSealer};
    use uuid::Uuid;

    fn binding<R>(ctx: &RequestContext, conversation_id: Uuid, f: impl FnOnce(&[&[u8]]) -> R) -> R {
        f(&[
            ctx.tenant_id.as_uuid().as_bytes(),
            ctx.user_id.as_bytes(),
            b"messages",
            conversation_id.as_bytes(),
        ])
    }

    /// The branch (its last message) and the depth the page ended at.
    pub fn seal(
        sealer: &TokenSealer,
        ctx: &RequestContext,
        conversation_id: Uuid,
        end: Uuid,
        depth: i32,
    ) -> String {
        let mut position = end.as_bytes().to_vec();
        position.extend_from_slice(&depth.to_be_bytes());
        binding(ctx, conversation_id, |b| sealer.seal(b, &position))
    }

    pub fn open(
        sealer: &TokenSealer,
        ctx: &RequestContext,
        conversation_id: Uuid,
        token: &str,
    ) -> Result<(Uuid, i32), Status> {
        let refused = |e: SealError| {
            Status::invalid_argument(format!(
                "{e} (a ListMessages page_token continues the listing of the conversation \
                 it came from)"
            ))
        };
        let position = binding(ctx, conversation_id, |b| sealer.open(b, token)).map_err(refused)?;
        let (end, depth) = position
            .split_first_chunk::<16>()
            .and_then(|(end, rest)| Some((Uuid::from_bytes(*end), <[u8; 4]>::try_from(rest).ok()?)))
            .ok_or_else(|| refused(SealError::NotIssuedHere))?;
        Ok((end, i32::from_be_bytes(depth)))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SendMessageResponse, Status>> + Send>>;

fn completed_event(user: MessageRow, assistant: MessageRow) -> pb::SendMessageResponse {
    pb::SendMessageResponse {
        event: Some(pb::send_message_response::Event::Completed(
            pb::MessageCompleted {
                user_message: Some(message_pb(user)),
                assistant_message: Some(message_pb(assistant)),
            },
        )),
    }
}

#[tonic::async_trait]
impl pb::conversation_service_server::ConversationService for ConversationHandler {
    async fn create_conversation(
        &self,
        request: Request<pb::CreateConversationRequest>,
    ) -> Result<Response<pb::CreateConversationResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let request = request.into_inner();
        validate::title(&request.title)?;
        let row = self.store.create(&ctx, &request.title).await?;
        tracing::info!(conversation_id = %row.conversation_id, "conversation created");
        Ok(Response::new(pb::CreateConversationResponse {
            conversation: Some(conversation_pb(row)),
        }))
    }

    async fn get_conversation(
        &self,
        request: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::GetConversationResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let id = validate::conversation_id(&request.get_ref().conversation_id)?;
        let row = self.store.get(&ctx, id).await?;
        Ok(Response::new(pb::GetConversationResponse {
            conversation: Some(conversation_pb(row)),
        }))
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token).map_err(paging_status)?;
        let mut rows = self.store.list(&ctx, &page).await?;
        let next_page_token = page.finish(&mut rows, |row| row.list_seq);
        Ok(Response::new(pb::ListConversationsResponse {
            conversations: rows.into_iter().map(conversation_pb).collect(),
            next_page_token,
        }))
    }

    type SendMessageStream = EventStream;

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<Self::SendMessageStream>, Status> {
        let ctx = tp_context::from_request(&request)?;
        // The canonical event's record: ids, responder and tokens, never text.
        let record = tp_telemetry::CallRecord::current().unwrap_or_default();
        let request = request.into_inner();
        let conversation_id = validate::conversation_id(&request.conversation_id)?;
        record.set_conversation(conversation_id);
        validate::content(&request.content)?;
        let key = validate::idempotency_key(&request.idempotency_key)?;
        let after = validate::optional_message_id("parent_message_id", &request.parent_message_id)?;
        let turn = Turn::Send {
            conversation_id,
            content: &request.content,
            key,
            after,
        };
        Ok(Response::new(Box::pin(
            self.stream_reply(ctx, record, turn).await?,
        )))
    }

    type EditMessageStream =
        Pin<Box<dyn Stream<Item = Result<pb::EditMessageResponse, Status>> + Send>>;

    async fn edit_message(
        &self,
        request: Request<pb::EditMessageRequest>,
    ) -> Result<Response<Self::EditMessageStream>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let record = tp_telemetry::CallRecord::current().unwrap_or_default();
        let request = request.into_inner();
        let message_id = validate::message_id("message_id", &request.message_id)?;
        validate::content(&request.content)?;
        let key = validate::idempotency_key(&request.idempotency_key)?;
        let turn = Turn::Edit {
            message_id,
            content: &request.content,
            key,
        };
        let events = self.stream_reply(ctx, record, turn).await?;
        Ok(Response::new(Box::pin(events.map(|event| {
            event.map(|e| pb::EditMessageResponse {
                event: e.event.map(relay_event!(pb::edit_message_response::Event)),
            })
        }))))
    }

    type RegenerateReplyStream =
        Pin<Box<dyn Stream<Item = Result<pb::RegenerateReplyResponse, Status>> + Send>>;

    async fn regenerate_reply(
        &self,
        request: Request<pb::RegenerateReplyRequest>,
    ) -> Result<Response<Self::RegenerateReplyStream>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let record = tp_telemetry::CallRecord::current().unwrap_or_default();
        let request = request.into_inner();
        let message_id = validate::message_id("message_id", &request.message_id)?;
        let key = validate::idempotency_key(&request.idempotency_key)?;
        let turn = Turn::Regenerate { message_id, key };
        let events = self.stream_reply(ctx, record, turn).await?;
        Ok(Response::new(Box::pin(events.map(|event| {
            event.map(|e| pb::RegenerateReplyResponse {
                event: e
                    .event
                    .map(relay_event!(pb::regenerate_reply_response::Event)),
            })
        }))))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let request = request.into_inner();
        let id = validate::conversation_id(&request.conversation_id)?;
        let page = Page::parse(request.page_size, "").map_err(paging_status)?;
        let named = validate::optional_message_id("branch_id", &request.branch_id)?;
        let (branch, after) = if request.page_token.is_empty() {
            (named.map_or(Branch::Active, Branch::Through), 0)
        } else {
            let (end, after) = branch_token::open(&self.sealer, &ctx, id, &request.page_token)?;
            if named.is_some_and(|named| named != end) {
                return Err(Status::invalid_argument(
                    "page_token continues another branch than branch_id names; send the \
                     same branch_id as for the first page, or none",
                ));
            }
            (Branch::EndingAt(end), after)
        };
        let listed = self
            .store
            .list_branch(&ctx, id, branch, after, page.fetch_limit())
            .await?;
        let mut rows = listed.rows;
        let next_page_token = match listed.end {
            Some(end) if rows.len() > usize::try_from(page.size).unwrap_or(usize::MAX) => {
                rows.truncate(usize::try_from(page.size).unwrap_or(usize::MAX));
                rows.last()
                    .map(|last| branch_token::seal(&self.sealer, &ctx, id, end, last.message.depth))
                    .unwrap_or_default()
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListMessagesResponse {
            messages: rows.into_iter().map(branch_message_pb).collect(),
            next_page_token,
            branch_id: listed.end.map(|end| end.to_string()).unwrap_or_default(),
        }))
    }

    async fn search_messages(
        &self,
        request: Request<pb::SearchMessagesRequest>,
    ) -> Result<Response<pb::SearchMessagesResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let (search, sealer) = (&self.search, &self.sealer);
        let query = search::parse(&ctx, sealer, request.get_ref())?;
        let Some(mut rows) = search.search(&ctx, &query).await? else {
            return Err(Status::invalid_argument(
                "query has no words to search for (only very common words such as `the` or \
                 `and`); add a more specific word",
            ));
        };
        let next_page_token = if rows.len() > query.page_size {
            rows.truncate(query.page_size);
            rows.last()
                .map(|last| search::next_token(&ctx, sealer, &query, last.position()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::SearchMessagesResponse {
            hits: rows.into_iter().map(search::HitRow::into_pb).collect(),
            next_page_token,
        }))
    }

    type ExportConversationStream = ReceiverStream<Result<pb::ExportConversationResponse, Status>>;

    async fn export_conversation(
        &self,
        request: Request<pb::ExportConversationRequest>,
    ) -> Result<Response<Self::ExportConversationStream>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let request = request.into_inner();
        let id = validate::conversation_id(&request.conversation_id)?;
        let format = export::format(request.format)?;
        // Not found is a status before the stream, not an error inside it.
        let conversation =
            export::ConversationRow::owned_by(self.store.get(&ctx, id).await?, &ctx.user_id);
        let (content_type, extension) = match format {
            export::Format::Markdown => (export::MARKDOWN, "md"),
            export::Format::Json => (export::JSON, "json"),
        };
        let (sender, receiver) = mpsc::channel(export::CHUNKS_IN_FLIGHT);
        let mut out = Chunker::new(
            sender,
            content_type,
            format!("conversation-{id}.{extension}"),
        );
        let store = self.exports.clone();
        tokio::spawn(tp_telemetry::in_current_call(async move {
            match export::write_conversation(&store, &ctx, &conversation, format, &mut out).await {
                Ok(()) => {}
                Err(ExportError::Gone) => tracing::info!("export abandoned by the client"),
                Err(ExportError::Store(e)) => out.fail(e.into()).await,
            }
        }));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    type ExportTenantStream = ReceiverStream<Result<pb::ExportTenantResponse, Status>>;

    async fn export_tenant(
        &self,
        request: Request<pb::ExportTenantRequest>,
    ) -> Result<Response<Self::ExportTenantStream>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let from =
            export::resume_from(&self.sealer, ctx.tenant_id, &request.get_ref().resume_token)?;
        let (sender, receiver) = mpsc::channel(export::CHUNKS_IN_FLIGHT);
        let date = time::OffsetDateTime::now_utc().date();
        let mut out = Chunker::new(
            sender,
            export::JSON_LINES,
            format!("thoughtpartner-{}-{date}.jsonl", ctx.tenant_id),
        );
        let (store, sealer) = (self.exports.clone(), self.sealer.clone());
        tokio::spawn(tp_telemetry::in_current_call(async move {
            match export::write_tenant(&store, &sealer, ctx.tenant_id, from, &mut out).await {
                Ok((conversations, messages)) => tracing::info!(
                    conversations,
                    messages,
                    resumed = from.is_some(),
                    "organisation export finished"
                ),
                Err(ExportError::Gone) => {
                    tracing::info!("organisation export abandoned by the client")
                }
                Err(ExportError::Store(e)) => out.fail(e.into()).await,
            }
        }));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn delete_conversation(
        &self,
        request: Request<pb::DeleteConversationRequest>,
    ) -> Result<Response<pb::DeleteConversationResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let id = validate::conversation_id(&request.get_ref().conversation_id)?;
        self.store.delete(&ctx, id).await?;
        tracing::info!(conversation_id = %id, "conversation deleted");
        Ok(Response::new(pb::DeleteConversationResponse {}))
    }

    async fn get_context_profile(
        &self,
        request: Request<pb::GetContextProfileRequest>,
    ) -> Result<Response<pb::GetContextProfileResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let kept = self.store.get_profile(&ctx).await?;
        Ok(Response::new(pb::GetContextProfileResponse {
            profile: Some(profile_pb(kept)),
        }))
    }

    async fn clear_context_profile(
        &self,
        request: Request<pb::ClearContextProfileRequest>,
    ) -> Result<Response<pb::ClearContextProfileResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        self.store.clear_profile(&ctx).await?;
        tracing::info!("context profile cleared");
        Ok(Response::new(pb::ClearContextProfileResponse {}))
    }
}

fn profile_pb(kept: Option<KeptProfile>) -> pb::ContextProfile {
    let Some(kept) = kept else {
        return pb::ContextProfile::default();
    };
    pb::ContextProfile {
        role: kept.role.unwrap_or_default(),
        team_size: kept.team_size.unwrap_or(0),
        stage: kept.stage.unwrap_or_default(),
        update_time: Some(tp_proto::timestamp(kept.update_time)),
    }
}

/// The sending side of a SendMessage response stream.
type Events = mpsc::Sender<Result<pb::SendMessageResponse, Status>>;

/// How often releasing a reply lease is retried while the database is away.
const RELEASE_RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// How often a retry racing its original looks for the original's reply.
const AWAIT_REPLY_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Streams the reply to a stored user turn: writes it if this call holds
/// the turn's reply lease, replays it if it is stored, and otherwise (a
/// retry racing its original) waits for the original's reply, taking the
/// lease over if the original gives it up. So every caller of one
/// idempotency key streams the one reply that is stored.
async fn respond(
    store: ConversationStore,
    pipeline: ReplyPipeline,
    ctx: tp_context::RequestContext,
    record: tp_telemetry::CallRecord,
    mut exchange: Exchange,
    events: Events,
) {
    let mut owner = std::mem::replace(&mut exchange.reply, ReplyOwner::Another);
    loop {
        match owner {
            ReplyOwner::Stored(reply) => {
                tracing::info!(conversation_id = %exchange.user_message.conversation_id, "idempotent retry: replaying the stored reply");
                return replay(events, exchange.user_message, reply).await;
            }
            ReplyOwner::This(lease) => {
                return write_reply(store, pipeline, ctx, record, exchange, lease, events).await;
            }
            ReplyOwner::Another => {
                tokio::time::sleep(AWAIT_REPLY_EVERY).await;
                if events.is_closed() {
                    return;
                }
                owner = match store
                    .await_reply(&ctx, &exchange.user_message, &exchange.target)
                    .await
                {
                    Ok(owner) => owner,
                    Err(e) => {
                        let _ = events.send(Err(Status::from(e))).await;
                        return;
                    }
                };
            }
        }
    }
}

/// Produces the reply (this call holds the lease), streams it and stores
/// it; gives the lease up when it cannot finish, so a retry can.
async fn write_reply(
    store: ConversationStore,
    pipeline: ReplyPipeline,
    ctx: tp_context::RequestContext,
    record: tp_telemetry::CallRecord,
    exchange: Exchange,
    lease: ReplyLease,
    events: Events,
) {
    // Renewed while this call works on the reply, so that retries wait for
    // it; stopped (dropped) when it is done or gone, so that, if this
    // process dies, they wait one short lease at most.
    let renewing = AbortOnDrop(tokio::spawn(renew_lease(
        store.clone(),
        ctx.clone(),
        exchange.user_message.clone(),
        lease,
    )));
    // Retried until it holds: when the reply could not be stored because
    // the database was down, releasing fails too, and a lease left to
    // expire would hold the turn's retries for `REPLY_LEASE`.
    let release = |store: ConversationStore, ctx, user| async move {
        let give_up = tokio::time::Instant::now() + REPLY_LEASE;
        while let Err(e) = store.release_reply(&ctx, &user, lease).await {
            if tokio::time::Instant::now() >= give_up {
                tracing::warn!(error = %e, "could not release the reply lease; it expires by itself");
                return;
            }
            tokio::time::sleep(RELEASE_RETRY_EVERY).await;
        }
    };
    // The caller hears first; releasing the lease comes after, since with
    // the database down it waits out the pool's acquire timeout too (a
    // retry arriving before it waits on the lease, then takes it over).
    let (last, release_lease) = match pipeline.respond(&ctx, &exchange, &events).await {
        Ok(reply) => {
            record.set_responder(reply.responder);
            record.set_reply_quality(reply.grounded, reply.violations.len());
            if let Some(usage) = &reply.usage {
                record.add_tokens(
                    u64::from(usage.input_tokens),
                    u64::from(usage.output_tokens),
                );
            }
            let stored = store
                .complete_exchange(&ctx, &exchange.user_message, &exchange.target, &reply)
                .await;
            match stored {
                Ok(assistant) => {
                    pipeline
                        .metrics()
                        .coach_reply(reply.responder, reply.violations.is_empty());
                    (
                        Ok(completed_event(exchange.user_message.clone(), assistant)),
                        false,
                    )
                }
                Err(e) => (Err(Status::from(e)), true),
            }
        }
        Err(ReplyError::ClientGone) => {
            drop(renewing);
            return release(store, ctx, exchange.user_message).await;
        }
        Err(ReplyError::Provider(e)) => {
            tracing::warn!(error = %e, "model provider failed; the user turn stays stored");
            (
                Err(Status::unavailable(format!(
                    "{e}; your message is saved: retry with the same idempotency_key"
                ))),
                true,
            )
        }
    };
    let _ = events.send(last).await;
    // The stream ends when the sender is gone.
    drop(events);
    drop(renewing);
    if release_lease {
        release(store, ctx, exchange.user_message).await;
    }
}

/// Renews a reply lease every [`REPLY_LEASE_RENEW_EVERY`] until aborted.
async fn renew_lease(
    store: ConversationStore,
    ctx: tp_context::RequestContext,
    user: MessageRow,
    lease: ReplyLease,
) {
    let mut every = tokio::time::interval_at(
        tokio::time::Instant::now() + REPLY_LEASE_RENEW_EVERY,
        REPLY_LEASE_RENEW_EVERY,
    );
    loop {
        every.tick().await;
        match store.renew_reply(&ctx, &user, lease).await {
            Ok(true) => {}
            // A retry took over after the lease ran out (the database was
            // away for longer than a lease): the first reply stored wins.
            Ok(false) => {
                tracing::warn!("the reply lease was taken over by a retry");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "could not renew the reply lease"),
        }
    }
}

/// Aborts a spawned task when dropped: a task that must not outlive the
/// call that started it, however that call ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Streams a stored reply exactly as a fresh one would arrive.
async fn replay(events: Events, user: MessageRow, assistant: MessageRow) {
    if send_text(&events, &assistant.content, || ()).await.is_err() {
        return;
    }
    let _ = events.send(Ok(completed_event(user, assistant))).await;
}
