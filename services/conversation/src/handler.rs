//! `thoughtpartner.v1.ConversationService`, served to the gateway.

use std::pin::Pin;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tp_proto::v1 as pb;
use tp_store::paging::Page;
use tracing::Instrument;

use crate::reply::{ReplyError, ReplyPipeline, WORDS_PER_DELTA, delta_event, deltas};
use crate::store::{ConversationRow, ConversationStore, KeptProfile, MessageRow};
use crate::validate;

pub struct ConversationHandler {
    store: ConversationStore,
    pipeline: ReplyPipeline,
}

impl ConversationHandler {
    pub fn new(store: ConversationStore, pipeline: ReplyPipeline) -> Self {
        Self { store, pipeline }
    }
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
        let record = tp_telemetry::CallRecord::of(&request).unwrap_or_default();
        let request = request.into_inner();
        let conversation_id = validate::conversation_id(&request.conversation_id)?;
        record.set_conversation(conversation_id);
        validate::content(&request.content)?;
        let key = validate::idempotency_key(&request.idempotency_key)?;

        // The user's turn is durable before anything streams back.
        let exchange = self
            .store
            .begin_exchange(&ctx, conversation_id, &request.content, key)
            .await?;

        let (events, receiver) = mpsc::channel(16);
        if let Some(reply) = exchange.existing_reply {
            tracing::info!(%conversation_id, "idempotent retry: replaying the stored reply");
            let task = replay(events, exchange.user_message, reply);
            tokio::spawn(task.instrument(tracing::Span::current()));
        } else {
            let store = self.store.clone();
            let pipeline = self.pipeline.clone();
            let task = async move {
                let last = match pipeline.respond(&ctx, &exchange, &events).await {
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
                            .complete_exchange(&ctx, &exchange.user_message, &reply)
                            .await;
                        if stored.is_ok() {
                            pipeline
                                .metrics()
                                .coach_reply(reply.responder, reply.violations.is_empty());
                        }
                        stored
                            .map(|assistant| completed_event(exchange.user_message, assistant))
                            .map_err(Status::from)
                    }
                    Err(ReplyError::ClientGone) => return,
                    Err(ReplyError::Provider(e)) => {
                        tracing::warn!(error = %e, "model provider failed; the user turn stays stored");
                        Err(Status::unavailable(format!(
                            "{e}; your message is saved: retry with the same idempotency_key"
                        )))
                    }
                };
                let _ = events.send(last).await;
            };
            tokio::spawn(task.instrument(tracing::Span::current()));
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let request = request.into_inner();
        let id = validate::conversation_id(&request.conversation_id)?;
        let page = Page::parse(request.page_size, &request.page_token).map_err(paging_status)?;
        let mut rows = self.store.list_messages(&ctx, id, &page).await?;
        let next_page_token = page.finish(&mut rows, |row| row.seq);
        Ok(Response::new(pb::ListMessagesResponse {
            messages: rows.into_iter().map(message_pb).collect(),
            next_page_token,
        }))
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

/// Streams a stored reply exactly as a fresh one would arrive.
async fn replay(
    events: mpsc::Sender<Result<pb::SendMessageResponse, Status>>,
    user: MessageRow,
    assistant: MessageRow,
) {
    for piece in deltas(&assistant.content, WORDS_PER_DELTA) {
        if events.send(Ok(delta_event(piece))).await.is_err() {
            return;
        }
    }
    let _ = events.send(Ok(completed_event(user, assistant))).await;
}
