//! `thoughtpartner.internal.knowledge.v1.RetrievalService`: grounding for
//! the conversation service.

use tonic::{Request, Response, Status};
use tp_proto::internal::knowledge::v1 as pb;

use crate::search::Searcher;

const MAX_MESSAGE_BYTES: usize = 16 * 1024;
const DEFAULT_FRAMEWORKS: usize = 3;
const MAX_FRAMEWORKS: i32 = 10;
const MAX_PASSAGES: i32 = 10;

pub struct RetrievalHandler {
    searcher: Searcher,
}

impl RetrievalHandler {
    pub fn new(searcher: Searcher) -> Self {
        Self { searcher }
    }
}

/// The query: the user's turn, plus their role when known, which pulls in
/// the topic for their level ("first 90 days as VP") when it fits.
fn query(message: &str, context: Option<&pb::KnownContext>) -> String {
    match context.map(|c| c.role.trim()).filter(|r| !r.is_empty()) {
        Some(role) => format!("{message} {role}"),
        None => message.to_owned(),
    }
}

fn bounded(value: i32, default: usize, max: i32, field: &str) -> Result<usize, Status> {
    match value {
        0 => Ok(default),
        n if (1..=max).contains(&n) => Ok(n as usize),
        n => Err(Status::invalid_argument(format!(
            "{field} must be between 0 and {max}, got {n}"
        ))),
    }
}

#[tonic::async_trait]
impl pb::retrieval_service_server::RetrievalService for RetrievalHandler {
    async fn retrieve(
        &self,
        request: Request<pb::RetrieveRequest>,
    ) -> Result<Response<pb::RetrieveResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let request = request.into_inner();
        if request.message.len() > MAX_MESSAGE_BYTES {
            return Err(Status::invalid_argument(format!(
                "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                request.message.len()
            )));
        }
        let max_frameworks = bounded(
            request.max_frameworks,
            DEFAULT_FRAMEWORKS,
            MAX_FRAMEWORKS,
            "max_frameworks",
        )?;
        let max_passages = bounded(request.max_passages, 0, MAX_PASSAGES, "max_passages")?;
        let query = query(&request.message, request.context.as_ref());

        let catalog = self.searcher.catalog();
        let frameworks = self
            .searcher
            .retrieve_frameworks(&query, max_frameworks)
            .await?
            .into_iter()
            .map(|r| pb::Framework {
                framework_id: r.framework.entry_id.clone(),
                name: r.framework.title.clone(),
                author: r.framework.author.clone(),
                summary: r.framework.summary.clone(),
                diagnostic_question: r.framework.diagnostic_question.clone(),
                source_url: catalog
                    .cited_sources(r.framework)
                    .first()
                    .map(|s| s.url.clone())
                    .unwrap_or_default(),
                score: r.score,
                via_topic: r.via_topic.map(|t| t.entry_id.clone()).unwrap_or_default(),
            })
            .collect::<Vec<_>>();
        let passages = self
            .searcher
            .retrieve_passages(ctx.tenant_id, &request.message, max_passages)
            .await?
            .into_iter()
            .map(|p| pb::Passage {
                document_id: p.document_id.to_string(),
                document_title: p.document_title,
                heading: p.heading,
                snippet: p.snippet,
                score: p.score,
            })
            .collect::<Vec<_>>();
        // No span of its own: the call's server span covers it, and one
        // more span per SendMessage to convert and export was measurable.
        tracing::debug!(
            frameworks = frameworks.len(),
            passages = passages.len(),
            "retrieved"
        );
        Ok(Response::new(pb::RetrieveResponse {
            frameworks,
            passages,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_joins_the_query_when_known() {
        let ctx = pb::KnownContext {
            role: "VP of Engineering".into(),
            ..Default::default()
        };
        assert_eq!(query("help", Some(&ctx)), "help VP of Engineering");
        assert_eq!(query("help", Some(&pb::KnownContext::default())), "help");
        assert_eq!(query("help", None), "help");
    }

    #[test]
    fn bounds() {
        assert_eq!(bounded(0, 3, 10, "x").unwrap(), 3);
        assert_eq!(bounded(10, 3, 10, "x").unwrap(), 10);
        assert!(bounded(11, 3, 10, "x").is_err());
        assert!(bounded(-1, 3, 10, "x").is_err());
    }
}
