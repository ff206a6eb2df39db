//! Postgres access for the knowledge service: loading the corpus (as the
//! schema owner, during `migrate`), full-text search, and tenant documents
//! (as the application role, in tenant-scoped transactions).

use sqlx::PgConnection;
use time::OffsetDateTime;
use tp_context::{RequestContext, TenantId};
use tp_store::paging::Page;
use tp_store::{Pool, TxTimer};
use uuid::Uuid;

use crate::corpus::Entry;
use crate::passages::Passage;

#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    #[error("document {0} not found")]
    DocumentNotFound(Uuid),
    #[error(transparent)]
    Store(#[from] tp_store::StoreError),
}

impl From<sqlx::Error> for KnowledgeError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<KnowledgeError> for tonic::Status {
    fn from(e: KnowledgeError) -> Self {
        match e {
            KnowledgeError::DocumentNotFound(id) => tonic::Status::not_found(format!(
                "document {id} not found (it may have been deleted, or belong to another tenant)"
            )),
            KnowledgeError::Store(e) => {
                tracing::error!(error = %e, "storage failure");
                tonic::Status::unavailable("storage is unavailable; retry shortly")
            }
        }
    }
}

/// Replaces the built-in corpus with `entries` in one transaction: edited
/// entries are updated, new ones inserted, removed ones deleted. Running it
/// twice changes nothing.
pub async fn sync_corpus(owner: &sqlx::PgPool, entries: &[Entry]) -> Result<(), sqlx::Error> {
    let mut tx = owner.begin().await?;
    for entry in entries {
        let f = &entry.front;
        sqlx::query(
            "INSERT INTO knowledge.entries
                (entry_id, kind, title, author, summary, body, url, source_type, keywords,
                 sources, frameworks, diagnostic_question, search)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                 setweight(to_tsvector('english', $3), 'A')
                 || setweight(to_tsvector('english', array_to_string($9::text[], ' ')), 'A')
                 || setweight(to_tsvector('english', $5), 'B')
                 || setweight(to_tsvector('english', $6), 'C'))
             ON CONFLICT (entry_id) DO UPDATE SET
                kind = EXCLUDED.kind, title = EXCLUDED.title, author = EXCLUDED.author,
                summary = EXCLUDED.summary, body = EXCLUDED.body, url = EXCLUDED.url,
                source_type = EXCLUDED.source_type, keywords = EXCLUDED.keywords,
                sources = EXCLUDED.sources, frameworks = EXCLUDED.frameworks,
                diagnostic_question = EXCLUDED.diagnostic_question, search = EXCLUDED.search",
        )
        .bind(&f.id)
        .bind(f.kind.as_str())
        .bind(&f.title)
        .bind(&f.author)
        .bind(&f.summary)
        .bind(&entry.body)
        .bind(&f.url)
        .bind(&f.source_type)
        .bind(&f.keywords)
        .bind(&f.sources)
        .bind(&f.frameworks)
        .bind(&f.diagnostic_question)
        .execute(&mut *tx)
        .await?;
    }
    let ids: Vec<&str> = entries.iter().map(|e| e.front.id.as_str()).collect();
    sqlx::query("DELETE FROM knowledge.entries WHERE entry_id <> ALL($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    sqlx::query("REFRESH MATERIALIZED VIEW knowledge.corpus_lexicon")
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// A corpus entry as served.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EntryRow {
    pub entry_id: String,
    pub kind: String,
    pub title: String,
    pub author: String,
    pub summary: String,
    pub body: String,
    pub url: String,
    pub sources: Vec<String>,
    pub frameworks: Vec<String>,
    pub diagnostic_question: String,
}

pub async fn load_entries(connection: &mut PgConnection) -> Result<Vec<EntryRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT entry_id, kind, title, author, summary, body, url, sources, frameworks,
                diagnostic_question
           FROM knowledge.entries ORDER BY title",
    )
    .fetch_all(connection)
    .await
}

/// Lexemes that appear in more than half the corpus: they carry no signal
/// for ranking ("engineer", "team" in a leadership corpus), so queries drop
/// them.
pub async fn common_lexemes(connection: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT word FROM ts_stat('SELECT search FROM knowledge.entries')
          WHERE ndoc > (SELECT count(*) FROM knowledge.entries) / 2
          ORDER BY word",
    )
    .fetch_all(connection)
    .await
}

// The queries of one search, computed once per statement (MATERIALIZED:
// inlined, the planner's generic plan re-evaluated them for every row
// ranked, 10 ms against 2.9 ms for a tenant's 500 passages):
// - `query`: an OR of the lexemes of $1 (the query with synonyms expanded),
//   minus $2 (lexemes common to most of the corpus). Leaders ask in
//   sentences, and an AND of every word would match nothing; ranking then
//   favours rows that match more terms, in their title and keywords.
// - `passage_query`: the same, keeping only the $4 rarest lexemes (fewest
//   corpus entries first). Ranking cost is linear in the number of terms
//   (500 passages: 13 terms 1.6 ms, 6 terms 0.75 ms), and the common terms
//   of a long question barely change the order.
// - `all_terms`: `websearch_to_tsquery` of $3 (the query as typed): every
//   term, "quoted phrases" as phrases, -words absent. A row that satisfies
//   it ranks twice as high, so short keyword searches and search-box syntax
//   find what they name first (it ranks; it never filters out).
macro_rules! search_query_cte {
    () => {
        "WITH terms AS MATERIALIZED (
            SELECT t.lexeme, coalesce(c.ndoc, 0) AS ndoc
              FROM (SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', $1))
                     WHERE lexeme <> ALL($2::text[])) AS t
              LEFT JOIN knowledge.corpus_lexicon c ON c.word = t.lexeme
         ), q AS MATERIALIZED (
            SELECT (SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery FROM terms) AS query,
                   (SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery
                      FROM (SELECT lexeme FROM terms ORDER BY ndoc, lexeme LIMIT $4) AS rarest)
                       AS passage_query,
                   websearch_to_tsquery('english', $3) AS all_terms
         ) "
    };
}

/// How many of a query's terms rank tenant passages (see `passage_query`);
/// a typical question has 9 to 15 after stop words and synonyms.
pub const PASSAGE_TERMS: i32 = 8;

/// A search as typed, and with synonyms expanded.
pub struct SearchText {
    pub typed: String,
    pub expanded: String,
}

impl SearchText {
    pub fn new(typed: &str) -> Self {
        Self {
            typed: typed.to_owned(),
            expanded: crate::synonyms::expand(typed),
        }
    }
}

/// One ranked corpus entry.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EntryHit {
    pub entry_id: String,
    pub score: f32,
}

/// One ranked passage of a tenant document.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PassageHit {
    pub document_id: Uuid,
    pub document_title: String,
    pub heading: String,
    pub text: String,
    pub score: f32,
}

/// `db.operation.name` of each statement or transaction the service runs
/// for a request: one fixed name per store function.
pub mod op {
    /// Search and Retrieve: ranking the built-in corpus.
    pub const RANK_ENTRIES: &str = "rank_entries";
    /// Search and Retrieve: ranking the tenant's document passages.
    pub const RANK_PASSAGES: &str = "rank_passages";
    /// Search: the snippets of the hits.
    pub const HEADLINES: &str = "headlines";
    pub const CREATE_DOCUMENT: &str = "create_document";
    pub const LIST_DOCUMENTS: &str = "list_documents";
    pub const GET_DOCUMENT: &str = "get_document";
    pub const DELETE_DOCUMENT: &str = "delete_document";
}

#[derive(Clone)]
pub struct KnowledgeStore {
    pool: Pool,
    timer: TxTimer,
}

impl KnowledgeStore {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            timer: TxTimer::disabled(),
        }
    }

    /// Reports how long each statement and transaction took (the
    /// service's metrics).
    pub fn with_timer(mut self, timer: TxTimer) -> Self {
        self.timer = timer;
        self
    }

    /// Ranks corpus entries of the given kinds against every term of the
    /// (expanded) query.
    ///
    /// `ts_rank` with the default weights (A 1.0, B 0.4, C 0.2) and no
    /// length normalisation: entries share one structure and similar
    /// lengths, and on the labelled set (tests/relevance) normalising by
    /// length lowered recall@3 (0.91 against 0.94), as did cover density.
    pub async fn rank_entries(
        &self,
        query: &SearchText,
        common: &[String],
        kinds: &[&str],
        limit: i64,
    ) -> Result<Vec<EntryHit>, KnowledgeError> {
        let statement = sqlx::query_as(concat!(
            search_query_cte!(),
            "SELECT e.entry_id,
                    ts_rank(e.search, q.query, 0)
                        * CASE WHEN e.search @@ q.all_terms THEN 2.0::real ELSE 1.0::real END AS score
               FROM knowledge.entries e, q
              WHERE q.query IS NOT NULL AND e.search @@ q.query AND e.kind = ANY($5)
              ORDER BY score DESC, e.entry_id
              LIMIT $6"
        ))
        .bind(&query.expanded)
        .bind(common)
        .bind(&query.typed)
        .bind(PASSAGE_TERMS)
        .bind(kinds)
        .bind(limit);
        let ranked = async {
            let mut connection = self.pool.acquire().await?;
            let rows = statement.fetch_all(&mut *connection).await?;
            connection.release();
            Ok(rows)
        };
        Ok(self.timer.time(op::RANK_ENTRIES, ranked).await?)
    }

    /// Ranks the tenant's document passages by the query's rarest terms;
    /// row-level security keeps other tenants' passages out. Passages vary
    /// in length, so their rank is normalised by it (`ts_rank` flag 1);
    /// cover density (`ts_rank_cd`) cost 4x (10 ms against 2.6 ms for 500).
    pub async fn rank_passages(
        &self,
        tenant: TenantId,
        query: &SearchText,
        common: &[String],
        limit: i64,
    ) -> Result<Vec<PassageHit>, KnowledgeError> {
        let mut tx = self
            .timer
            .begin(&self.pool, tenant, op::RANK_PASSAGES)
            .await?;
        let hits = sqlx::query_as(concat!(
            search_query_cte!(),
            "SELECT p.document_id, d.title AS document_title, p.heading, p.text, p.score
               FROM (SELECT passages.*,
                            ts_rank(search, q.passage_query, 1)
                                * CASE WHEN search @@ q.all_terms THEN 2.0::real ELSE 1.0::real END AS score
                       FROM knowledge.passages, q
                      WHERE q.passage_query IS NOT NULL AND search @@ q.passage_query
                      ORDER BY score DESC, document_id, ordinal
                      LIMIT $5) AS p
               JOIN knowledge.documents d USING (document_id)
              ORDER BY p.score DESC, p.document_id, p.ordinal"
        ))
        .bind(&query.expanded)
        .bind(common)
        .bind(&query.typed)
        .bind(PASSAGE_TERMS)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        // Read only, so ending it by rollback loses nothing. The ROLLBACK
        // is sent in the background as the connection returns to the pool;
        // awaiting a COMMIT would put one more round trip before the
        // headlines.
        tx.close_read_only();
        Ok(hits)
    }

    /// A snippet of each of `texts`, in order: the best fragment with the
    /// query's terms marked (`ts_headline`, ~0.1 ms each). A computation on
    /// the texts given, so it needs no tenant.
    pub async fn headlines(
        &self,
        query: &SearchText,
        common: &[String],
        texts: &[&str],
    ) -> Result<Vec<String>, KnowledgeError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let statement = sqlx::query_scalar(concat!(
            search_query_cte!(),
            "SELECT coalesce(ts_headline('english', t.text, q.query,
                        'MaxFragments=1, MinWords=12, MaxWords=35, StartSel=**, StopSel=**'), '')
               FROM unnest($5::text[]) WITH ORDINALITY AS t(text, n), q
              ORDER BY t.n"
        ))
        .bind(&query.expanded)
        .bind(common)
        .bind(&query.typed)
        .bind(PASSAGE_TERMS)
        .bind(texts);
        let headlines = async {
            let mut connection = self.pool.acquire().await?;
            let rows = statement.fetch_all(&mut *connection).await?;
            connection.release();
            Ok(rows)
        };
        Ok(self.timer.time(op::HEADLINES, headlines).await?)
    }

    /// Stores a document and its passages in one transaction.
    pub async fn create_document(
        &self,
        ctx: &RequestContext,
        title: &str,
        content: &str,
        content_type: &str,
        passages: &[Passage],
    ) -> Result<DocumentRow, KnowledgeError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::CREATE_DOCUMENT)
            .await?;
        let document_id = Uuid::new_v4();
        let row: DocumentRow = sqlx::query_as(
            "INSERT INTO knowledge.documents
                (document_id, tenant_id, title, content_type, content, created_by)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING document_id, title, content_type, created_by, create_time, list_seq,
                       $7::int AS passage_count, NULL::text AS content",
        )
        .bind(document_id)
        .bind(ctx.tenant_id.as_uuid())
        .bind(title)
        .bind(content_type)
        .bind(content)
        .bind(&ctx.user_id)
        .bind(i32::try_from(passages.len()).unwrap_or(i32::MAX))
        .fetch_one(&mut *tx)
        .await?;
        let headings: Vec<&str> = passages.iter().map(|p| p.heading.as_str()).collect();
        let texts: Vec<&str> = passages.iter().map(|p| p.text.as_str()).collect();
        // One statement for all passages: a 1 MiB document is ~700 of them.
        sqlx::query(
            "INSERT INTO knowledge.passages (tenant_id, document_id, ordinal, heading, text, search)
             SELECT $1, $2, (p.ordinal - 1)::int, p.heading, p.text,
                    setweight(to_tsvector('english', p.heading), 'A')
                    || setweight(to_tsvector('english', p.text), 'C')
               FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS p(heading, text, ordinal)",
        )
        .bind(ctx.tenant_id.as_uuid())
        .bind(document_id)
        .bind(&headings)
        .bind(&texts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn list_documents(
        &self,
        ctx: &RequestContext,
        page: &Page,
    ) -> Result<Vec<DocumentRow>, KnowledgeError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::LIST_DOCUMENTS)
            .await?;
        let rows = sqlx::query_as(concat!(
            "SELECT ",
            document_columns!(),
            ", NULL::text AS content
                   FROM knowledge.documents d
                  WHERE ($1::bigint IS NULL OR d.list_seq > $1)
                  ORDER BY d.list_seq LIMIT $2"
        ))
        .bind(page.after)
        .bind(page.fetch_limit())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }

    pub async fn get_document(
        &self,
        ctx: &RequestContext,
        document_id: Uuid,
    ) -> Result<DocumentRow, KnowledgeError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::GET_DOCUMENT)
            .await?;
        let row = sqlx::query_as(concat!(
            "SELECT ",
            document_columns!(),
            ", d.content FROM knowledge.documents d WHERE d.document_id = $1"
        ))
        .bind(document_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.ok_or(KnowledgeError::DocumentNotFound(document_id))
    }

    /// Deletes the document and, by cascade, its passages, in one transaction.
    pub async fn delete_document(
        &self,
        ctx: &RequestContext,
        document_id: Uuid,
    ) -> Result<(), KnowledgeError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, op::DELETE_DOCUMENT)
            .await?;
        let deleted = sqlx::query("DELETE FROM knowledge.documents WHERE document_id = $1")
            .bind(document_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        if deleted == 0 {
            return Err(KnowledgeError::DocumentNotFound(document_id));
        }
        Ok(())
    }
}

// A document's columns (alias `d`), with its passage count.
macro_rules! document_columns {
    () => {
        "d.document_id, d.title, d.content_type, d.created_by, d.create_time, d.list_seq,
         (SELECT count(*)::int FROM knowledge.passages p WHERE p.document_id = d.document_id)
             AS passage_count"
    };
}
use document_columns;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DocumentRow {
    pub document_id: Uuid,
    pub title: String,
    pub content_type: String,
    pub created_by: String,
    pub create_time: OffsetDateTime,
    pub list_seq: i64,
    pub passage_count: i32,
    /// Only read by `get_document`.
    pub content: Option<String>,
}
