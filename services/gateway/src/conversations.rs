//! Public `ConversationService`: forwards each call (admitted by the
//! access layer) to the conversation service with the verified context in
//! metadata. The router sends only `SearchMessages` and `ExportTenant`
//! here; every other method is passed on undecoded by [`crate::forward`]
//! (its handler here does the same, typed). The gateway
//! adds nothing to the payload; validation belongs to the service that owns
//! the data. One decision is the gateway's: whether a search may cover the
//! whole organisation (its settings live here).

use tonic::{Request, Response, Status};
use tp_proto::v1 as pb;
use tp_proto::v1::conversation_service_client::ConversationServiceClient;

use tp_store::Pool;
use tp_store::TxTimer;

use crate::access::{caller, internal_request, storage_status};
use crate::audit::{self, Event};
use crate::policy::{Standing, decide_organisation_search};

/// The traced channel to `conversation`, which undecoded calls go
/// through as they are ([`crate::forward`]).
pub type UpstreamChannel = tp_server::InternalChannel;

pub type ConversationClient = ConversationServiceClient<UpstreamChannel>;

pub struct ConversationGateway {
    conversation: ConversationClient,
    /// For the audit entry of an organisation's export.
    pool: Pool,
    timer: TxTimer,
}

impl ConversationGateway {
    pub fn new(conversation: ConversationClient, pool: Pool, timer: TxTimer) -> Self {
        Self {
            conversation,
            pool,
            timer,
        }
    }

    /// The internal request, carrying the caller's verified context.
    async fn forward<T>(
        &self,
        request: Request<T>,
    ) -> Result<(Request<T>, ConversationClient), Status> {
        let ctx = caller(&request)?;
        Ok((internal_request(&ctx, request)?, self.conversation.clone()))
    }
}

#[tonic::async_trait]
impl pb::conversation_service_server::ConversationService for ConversationGateway {
    async fn create_conversation(
        &self,
        request: Request<pb::CreateConversationRequest>,
    ) -> Result<Response<pb::CreateConversationResponse>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.create_conversation(request).await
    }

    async fn get_conversation(
        &self,
        request: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::GetConversationResponse>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.get_conversation(request).await
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.list_conversations(request).await
    }

    type SendMessageStream = tonic::Streaming<pb::SendMessageResponse>;

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<Self::SendMessageStream>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.send_message(request).await
    }

    type EditMessageStream = tonic::Streaming<pb::EditMessageResponse>;

    async fn edit_message(
        &self,
        request: Request<pb::EditMessageRequest>,
    ) -> Result<Response<Self::EditMessageStream>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.edit_message(request).await
    }

    type RegenerateReplyStream = tonic::Streaming<pb::RegenerateReplyResponse>;

    async fn regenerate_reply(
        &self,
        request: Request<pb::RegenerateReplyRequest>,
    ) -> Result<Response<Self::RegenerateReplyStream>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.regenerate_reply(request).await
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.list_messages(request).await
    }

    async fn get_context_profile(
        &self,
        request: Request<pb::GetContextProfileRequest>,
    ) -> Result<Response<pb::GetContextProfileResponse>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.get_context_profile(request).await
    }

    async fn clear_context_profile(
        &self,
        request: Request<pb::ClearContextProfileRequest>,
    ) -> Result<Response<pb::ClearContextProfileResponse>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.clear_context_profile(request).await
    }

    async fn search_messages(
        &self,
        request: Request<pb::SearchMessagesRequest>,
    ) -> Result<Response<pb::SearchMessagesResponse>, Status> {
        if request.get_ref().scope == pb::SearchScope::Organisation as i32 {
            let ctx = caller(&request)?;
            let standing = request.extensions().get::<Standing>().ok_or_else(|| {
                Status::internal("tenant standing missing: AccessLayer is not installed")
            })?;
            decide_organisation_search(ctx.role, standing)?;
        }
        let (request, mut client) = self.forward(request).await?;
        client.search_messages(request).await
    }

    type ExportConversationStream = tonic::Streaming<pb::ExportConversationResponse>;

    async fn export_conversation(
        &self,
        request: Request<pb::ExportConversationRequest>,
    ) -> Result<Response<Self::ExportConversationStream>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.export_conversation(request).await
    }

    type ExportTenantStream = tonic::Streaming<pb::ExportTenantResponse>;

    /// Every member's transcripts leave the product: the audit log says who
    /// took them, and when, before the first byte goes out.
    async fn export_tenant(
        &self,
        request: Request<pb::ExportTenantRequest>,
    ) -> Result<Response<Self::ExportTenantStream>, Status> {
        let ctx = caller(&request)?;
        let resumed = !request.get_ref().resume_token.is_empty();
        audit::record_alone(
            &self.pool,
            &self.timer,
            "audit_export",
            ctx.tenant_id,
            Event {
                actor: &ctx.user_id,
                action: "tenant.exported",
                target: &ctx.tenant_id.to_string(),
                before: None,
                after: Some(serde_json::json!({ "resumed": resumed })),
            },
        )
        .await
        .map_err(storage_status)?;
        let (request, mut client) = self.forward(request).await?;
        client.export_tenant(request).await
    }

    async fn delete_conversation(
        &self,
        request: Request<pb::DeleteConversationRequest>,
    ) -> Result<Response<pb::DeleteConversationResponse>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.delete_conversation(request).await
    }
}
