//! Public `thoughtpartner.v1.KnowledgeService`, served to the gateway.

use tonic::{Request, Response, Status};
use tp_context::{RequestContext, Role};
use tp_proto::v1 as pb;
use tp_store::paging::Page;
use uuid::Uuid;

use crate::passages;
use crate::search::{Hit, Searcher};
use crate::store::{DocumentRow, EntryRow};

const MAX_QUERY_CHARS: usize = 1000;
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: i32 = 50;
const MAX_TITLE_CHARS: usize = 200;
/// 1 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

pub struct KnowledgeHandler {
    searcher: Searcher,
}

impl KnowledgeHandler {
    pub fn new(searcher: Searcher) -> Self {
        Self { searcher }
    }

    fn citations(&self, entry: &EntryRow) -> Vec<pb::Citation> {
        self.searcher
            .catalog()
            .cited_sources(entry)
            .into_iter()
            .map(|s| pb::Citation {
                title: s.title.clone(),
                author: s.author.clone(),
                url: s.url.clone(),
            })
            .collect()
    }

    fn framework_pb(&self, entry: &EntryRow, with_body: bool) -> pb::Framework {
        pb::Framework {
            framework_id: entry.entry_id.clone(),
            title: entry.title.clone(),
            author: entry.author.clone(),
            summary: entry.summary.clone(),
            diagnostic_question: entry.diagnostic_question.clone(),
            body_markdown: if with_body {
                entry.body.clone()
            } else {
                String::new()
            },
            citations: self.citations(entry),
        }
    }
}

fn entry_kind(kind: &str) -> pb::EntryKind {
    match kind {
        "framework" => pb::EntryKind::Framework,
        "topic" => pb::EntryKind::Topic,
        "source" => pb::EntryKind::Source,
        _ => pb::EntryKind::Unspecified,
    }
}

/// Which corpus kinds to search, and whether to search tenant documents.
fn kinds(requested: &[i32]) -> Result<(Vec<&'static str>, bool), Status> {
    if requested.is_empty() {
        return Ok((vec!["framework", "topic", "source"], true));
    }
    let mut corpus = Vec::new();
    let mut documents = false;
    for &value in requested {
        match pb::EntryKind::try_from(value) {
            Ok(pb::EntryKind::Framework) => corpus.push("framework"),
            Ok(pb::EntryKind::Topic) => corpus.push("topic"),
            Ok(pb::EntryKind::Source) => corpus.push("source"),
            Ok(pb::EntryKind::Document) => documents = true,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "unknown kind {value}: use ENTRY_KIND_FRAMEWORK, _TOPIC, _SOURCE or _DOCUMENT, or none for all"
                )));
            }
        }
    }
    corpus.dedup();
    Ok((corpus, documents))
}

fn validate_query(query: &str) -> Result<(), Status> {
    if query.trim().is_empty() {
        return Err(Status::invalid_argument("query must not be empty"));
    }
    let chars = query.chars().count();
    if chars > MAX_QUERY_CHARS {
        return Err(Status::invalid_argument(format!(
            "query is {chars} characters; the limit is {MAX_QUERY_CHARS}"
        )));
    }
    Ok(())
}

fn document_id(raw: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(raw).map_err(|_| {
        Status::invalid_argument("document_id must be a UUID as returned by CreateDocument")
    })
}

fn require_admin(ctx: &RequestContext, method: &str) -> Result<(), Status> {
    if ctx.role == Role::Admin {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{method} needs a tenant admin"
        )))
    }
}

/// Checks a new document and returns its text and passages.
fn validate_document(
    request: &pb::CreateDocumentRequest,
) -> Result<(&str, &'static str, Vec<passages::Passage>), Status> {
    let title_chars = request.title.trim().chars().count();
    if title_chars == 0 || title_chars > MAX_TITLE_CHARS {
        return Err(Status::invalid_argument(format!(
            "title must be 1..={MAX_TITLE_CHARS} characters, not only whitespace"
        )));
    }
    let (content_type, markdown) = match pb::ContentType::try_from(request.content_type) {
        Ok(pb::ContentType::Markdown) => ("markdown", true),
        Ok(pb::ContentType::Text) => ("text", false),
        _ => {
            return Err(Status::invalid_argument(
                "content_type must be CONTENT_TYPE_MARKDOWN or CONTENT_TYPE_TEXT",
            ));
        }
    };
    if request.content.len() > MAX_DOCUMENT_BYTES {
        return Err(Status::invalid_argument(format!(
            "content is {} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes (1 MiB)",
            request.content.len()
        )));
    }
    let text = std::str::from_utf8(&request.content).map_err(|e| {
        Status::invalid_argument(format!(
            "content is not valid UTF-8 (first bad byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    let passages = passages::split(text, markdown);
    if passages.is_empty() {
        return Err(Status::invalid_argument(
            "content must not be empty or only whitespace",
        ));
    }
    Ok((text, content_type, passages))
}

fn document_pb(row: DocumentRow) -> pb::Document {
    let content_type = match row.content_type.as_str() {
        "markdown" => pb::ContentType::Markdown,
        "text" => pb::ContentType::Text,
        _ => pb::ContentType::Unspecified,
    };
    pb::Document {
        document_id: row.document_id.to_string(),
        title: row.title,
        content_type: content_type.into(),
        content: row.content.unwrap_or_default(),
        passage_count: row.passage_count,
        created_by: row.created_by,
        create_time: Some(tp_proto::timestamp(row.create_time)),
    }
}

#[tonic::async_trait]
impl pb::knowledge_service_server::KnowledgeService for KnowledgeHandler {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let request = request.into_inner();
        validate_query(&request.query)?;
        let limit = match request.limit {
            0 => DEFAULT_LIMIT,
            n if (1..=MAX_LIMIT).contains(&n) => n as usize,
            n => {
                return Err(Status::invalid_argument(format!(
                    "limit must be between 0 and {MAX_LIMIT}, got {n}"
                )));
            }
        };
        let (corpus_kinds, documents) = kinds(&request.kinds)?;
        let hits = self
            .searcher
            .search(
                ctx.tenant_id,
                &request.query,
                &corpus_kinds,
                documents,
                limit,
            )
            .await?;
        let catalog = self.searcher.catalog();
        let results = hits
            .into_iter()
            .filter_map(|hit| match hit {
                Hit::Entry(hit) => catalog.get(&hit.entry_id).map(|entry| pb::SearchResult {
                    kind: entry_kind(&entry.kind).into(),
                    entry_id: entry.entry_id.clone(),
                    title: entry.title.clone(),
                    snippet: hit.snippet,
                    score: hit.score,
                    citations: self.citations(entry),
                }),
                Hit::Passage(hit) => Some(pb::SearchResult {
                    kind: pb::EntryKind::Document.into(),
                    entry_id: hit.document_id.to_string(),
                    title: if hit.heading.is_empty() {
                        hit.document_title.clone()
                    } else {
                        format!("{} — {}", hit.document_title, hit.heading)
                    },
                    snippet: hit.snippet,
                    score: hit.score,
                    citations: vec![pb::Citation {
                        title: hit.document_title,
                        author: String::new(),
                        url: String::new(),
                    }],
                }),
            })
            .collect();
        Ok(Response::new(pb::SearchResponse { results }))
    }

    async fn list_frameworks(
        &self,
        _request: Request<pb::ListFrameworksRequest>,
    ) -> Result<Response<pb::ListFrameworksResponse>, Status> {
        let frameworks = self
            .searcher
            .catalog()
            .frameworks()
            .map(|entry| self.framework_pb(entry, false))
            .collect();
        Ok(Response::new(pb::ListFrameworksResponse { frameworks }))
    }

    async fn get_framework(
        &self,
        request: Request<pb::GetFrameworkRequest>,
    ) -> Result<Response<pb::GetFrameworkResponse>, Status> {
        let id = &request.get_ref().framework_id;
        let entry = self
            .searcher
            .catalog()
            .get(id)
            .filter(|e| e.kind == "framework")
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no framework `{id}`; ListFrameworks returns the valid framework_id values"
                ))
            })?;
        Ok(Response::new(pb::GetFrameworkResponse {
            framework: Some(self.framework_pb(entry, true)),
        }))
    }

    async fn create_document(
        &self,
        request: Request<pb::CreateDocumentRequest>,
    ) -> Result<Response<pb::CreateDocumentResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        require_admin(&ctx, "CreateDocument")?;
        let request = request.into_inner();
        let (text, content_type, passages) = validate_document(&request)?;
        let row = self
            .searcher
            .store()
            .create_document(&ctx, request.title.trim(), text, content_type, &passages)
            .await?;
        tracing::info!(document_id = %row.document_id, passages = passages.len(), "document created");
        Ok(Response::new(pb::CreateDocumentResponse {
            document: Some(document_pb(row)),
        }))
    }

    async fn list_documents(
        &self,
        request: Request<pb::ListDocumentsRequest>,
    ) -> Result<Response<pb::ListDocumentsResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut rows = self.searcher.store().list_documents(&ctx, &page).await?;
        let next_page_token = page.finish(&mut rows, |row| row.list_seq);
        Ok(Response::new(pb::ListDocumentsResponse {
            documents: rows.into_iter().map(document_pb).collect(),
            next_page_token,
        }))
    }

    async fn get_document(
        &self,
        request: Request<pb::GetDocumentRequest>,
    ) -> Result<Response<pb::GetDocumentResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        let id = document_id(&request.get_ref().document_id)?;
        let row = self.searcher.store().get_document(&ctx, id).await?;
        Ok(Response::new(pb::GetDocumentResponse {
            document: Some(document_pb(row)),
        }))
    }

    async fn delete_document(
        &self,
        request: Request<pb::DeleteDocumentRequest>,
    ) -> Result<Response<pb::DeleteDocumentResponse>, Status> {
        let ctx = tp_context::from_request(&request)?;
        require_admin(&ctx, "DeleteDocument")?;
        let id = document_id(&request.get_ref().document_id)?;
        self.searcher.store().delete_document(&ctx, id).await?;
        tracing::info!(document_id = %id, "document deleted");
        Ok(Response::new(pb::DeleteDocumentResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn doc(content: &[u8], content_type: pb::ContentType) -> pb::CreateDocumentRequest {
        pb::CreateDocumentRequest {
            title: "Strategy".into(),
            content: content.to_vec(),
            content_type: content_type.into(),
        }
    }

    #[test]
    fn documents_are_checked_before_anything_is_written() {
        let code = |r: &pb::CreateDocumentRequest| validate_document(r).err().map(|s| s.code());
        assert_eq!(code(&doc(b"# A\n\ntext", pb::ContentType::Markdown)), None);
        assert_eq!(
            code(&doc(b"text", pb::ContentType::Unspecified)),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            code(&doc(b"\xff\xfe", pb::ContentType::Text)),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            code(&doc(b"  \n\n ", pb::ContentType::Text)),
            Some(Code::InvalidArgument)
        );
        let big = vec![b'a'; MAX_DOCUMENT_BYTES + 1];
        let err = validate_document(&doc(&big, pb::ContentType::Text)).unwrap_err();
        assert!(err.message().contains("1 MiB"));
        let mut untitled = doc(b"text", pb::ContentType::Text);
        untitled.title = " ".into();
        assert_eq!(code(&untitled), Some(Code::InvalidArgument));
    }

    #[test]
    fn kinds_filter() {
        assert_eq!(
            kinds(&[]).unwrap(),
            (vec!["framework", "topic", "source"], true)
        );
        assert_eq!(
            kinds(&[pb::EntryKind::Topic as i32]).unwrap(),
            (vec!["topic"], false)
        );
        assert_eq!(
            kinds(&[pb::EntryKind::Document as i32]).unwrap(),
            (vec![], true)
        );
        assert_eq!(kinds(&[0]).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(kinds(&[42]).unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn queries_are_bounded() {
        assert!(validate_query("hiring").is_ok());
        assert!(validate_query("  ").is_err());
        assert!(validate_query(&"q".repeat(1001)).is_err());
    }
}
