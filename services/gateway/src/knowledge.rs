//! Public `KnowledgeService`: members read, tenant admins manage documents
//! (the access layer decides which); forwards to the knowledge service.

use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tp_proto::v1 as pb;
use tp_proto::v1::knowledge_service_client::KnowledgeServiceClient;
use tp_telemetry::TraceClient;

use crate::access::{caller, internal_request};

pub type KnowledgeClient = KnowledgeServiceClient<TraceClient<Channel>>;

pub struct KnowledgeGateway {
    knowledge: KnowledgeClient,
}

impl KnowledgeGateway {
    pub fn new(knowledge: KnowledgeClient) -> Self {
        Self { knowledge }
    }

    /// The internal request, carrying the caller's verified context.
    async fn forward<T>(
        &self,
        request: Request<T>,
    ) -> Result<(Request<T>, KnowledgeClient), Status> {
        let ctx = caller(&request)?;
        Ok((internal_request(&ctx, request)?, self.knowledge.clone()))
    }
}

#[tonic::async_trait]
impl pb::knowledge_service_server::KnowledgeService for KnowledgeGateway {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.search(request).await
    }

    async fn list_frameworks(
        &self,
        request: Request<pb::ListFrameworksRequest>,
    ) -> Result<Response<pb::ListFrameworksResponse>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.list_frameworks(request).await
    }

    async fn get_framework(
        &self,
        request: Request<pb::GetFrameworkRequest>,
    ) -> Result<Response<pb::GetFrameworkResponse>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.get_framework(request).await
    }

    async fn create_document(
        &self,
        request: Request<pb::CreateDocumentRequest>,
    ) -> Result<Response<pb::CreateDocumentResponse>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.create_document(request).await
    }

    async fn list_documents(
        &self,
        request: Request<pb::ListDocumentsRequest>,
    ) -> Result<Response<pb::ListDocumentsResponse>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.list_documents(request).await
    }

    async fn get_document(
        &self,
        request: Request<pb::GetDocumentRequest>,
    ) -> Result<Response<pb::GetDocumentResponse>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.get_document(request).await
    }

    async fn delete_document(
        &self,
        request: Request<pb::DeleteDocumentRequest>,
    ) -> Result<Response<pb::DeleteDocumentResponse>, Status> {
        let (request, mut client) = self.forward(request).await?;
        client.delete_document(request).await
    }
}
