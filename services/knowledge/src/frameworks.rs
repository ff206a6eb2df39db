//! `thoughtpartner.internal.knowledge.v1.FrameworkService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tp_proto::internal::knowledge::v1 as pb;

use crate::ranking::{FrameworkEntry, rank};

/// Longest query accepted: the conversation service sends one user turn.
const MAX_QUERY_BYTES: usize = 16 * 1024;
const DEFAULT_RESULTS: usize = 3;
const MAX_RESULTS: i32 = 10;

pub struct FrameworkHandler {
    corpus: Arc<Vec<FrameworkEntry>>,
}

impl FrameworkHandler {
    pub fn new(corpus: Vec<FrameworkEntry>) -> Self {
        Self {
            corpus: Arc::new(corpus),
        }
    }
}

#[tonic::async_trait]
impl pb::framework_service_server::FrameworkService for FrameworkHandler {
    #[tracing::instrument(skip_all, fields(matched = tracing::field::Empty))]
    async fn lookup_frameworks(
        &self,
        request: Request<pb::LookupFrameworksRequest>,
    ) -> Result<Response<pb::LookupFrameworksResponse>, Status> {
        let request = request.into_inner();
        if request.query.len() > MAX_QUERY_BYTES {
            return Err(Status::invalid_argument(format!(
                "query is {} bytes; the limit is {MAX_QUERY_BYTES}",
                request.query.len()
            )));
        }
        let max = match request.max_results {
            0 => DEFAULT_RESULTS,
            n @ 1..=MAX_RESULTS => n as usize,
            n => {
                return Err(Status::invalid_argument(format!(
                    "max_results must be between 0 and {MAX_RESULTS}, got {n}"
                )));
            }
        };
        let frameworks: Vec<pb::Framework> = rank(&self.corpus, &request.query, max)
            .into_iter()
            .map(|(entry, score)| pb::Framework {
                framework_id: entry.framework_id.clone(),
                name: entry.name.clone(),
                author: entry.author.clone(),
                summary: entry.summary.clone(),
                application: entry.application.clone(),
                diagnostic_question: entry.diagnostic_question.clone(),
                source_url: entry.source_url.clone(),
                score,
            })
            .collect();
        tracing::Span::current().record("matched", frameworks.len());
        Ok(Response::new(pb::LookupFrameworksResponse { frameworks }))
    }
}
