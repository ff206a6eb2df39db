//! `SearchMessages`: PostgreSQL full-text search over transcripts (a
//! generated `tsvector` per message under a GIN index, migration 0011),
//! ranked by `ts_rank_cd`, newest first among equals, with a snippet of
//! the best passage and where its matched words are.
//!
//! Row-level security keeps tenants apart; the `user_id` filter keeps a
//! member's search to their own conversations unless the gateway's policy
//! let an admin search the organisation's. Pages are keyset pages over
//! (rank, seq), and their tokens are sealed to the tenant, caller, scope and
//! query ([`tp_store::sealed`]), so a token edited or carried to another
//! query is refused, not read.

use time::OffsetDateTime;
use tonic::Status;
use tp_context::RequestContext;
use tp_proto::v1 as pb;
use tp_store::Pool;
use tp_store::TxTimer;
use tp_store::sealed::TokenSealer;
use uuid::Uuid;

use crate::error::ConversationError;

/// Longest query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 200;
pub const DEFAULT_PAGE_SIZE: usize = 20;
pub const MAX_PAGE_SIZE: usize = 50;

/// Marks around matched words in `ts_headline`'s output: private-use
/// characters, which user text has no business containing; they are turned
/// into [`pb::TextRange`]s and removed.
const MATCH_START: char = '\u{E000}';
const MATCH_END: char = '\u{E001}';

/// `db.operation.name` of the search transaction.
pub const OPERATION: &str = "search_messages";

/// Whose conversations a search covers, as the service applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Own,
    /// Every member's; the gateway's policy admitted it.
    Organisation,
}

/// Where the next page starts: after this rank and sequence number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Position {
    pub rank: f32,
    pub seq: i64,
}

impl Position {
    fn to_bytes(self) -> Vec<u8> {
        let mut bytes = self.rank.to_bits().to_be_bytes().to_vec();
        bytes.extend_from_slice(&self.seq.to_be_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let rank = f32::from_bits(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?));
        let seq = i64::from_be_bytes(bytes.get(4..12)?.try_into().ok()?);
        (bytes.len() == 12 && rank.is_finite()).then_some(Self { rank, seq })
    }
}

/// A checked search request.
#[derive(Debug)]
pub struct Query {
    pub text: String,
    pub scope: Scope,
    pub page_size: usize,
    pub after: Option<Position>,
}

/// Runs `f` with what a page token is bound to: tenant, caller, scope and
/// query.
fn with_binding<R>(
    ctx: &RequestContext,
    scope: Scope,
    text: &str,
    f: impl FnOnce(&[&[u8]]) -> R,
) -> R {
    let tenant = ctx.tenant_id.as_uuid();
    let scope: &[u8] = match scope {
        Scope::Own => b"own",
        Scope::Organisation => b"organisation",
    };
    f(&[
        tenant.as_bytes(),
        ctx.user_id.as_bytes(),
        scope,
        text.as_bytes(),
    ])
}

/// Checks a request; pure but for opening its page token.
pub fn parse(
    ctx: &RequestContext,
    sealer: &TokenSealer,
    request: &pb::SearchMessagesRequest,
) -> Result<Query, Status> {
    let text = request.query.trim();
    if text.is_empty() {
        return Err(Status::invalid_argument(
            "query is required: the words to look for in your conversations",
        ));
    }
    let chars = text.chars().count();
    if chars > MAX_QUERY_CHARS {
        return Err(Status::invalid_argument(format!(
            "query is {chars} characters; the limit is {MAX_QUERY_CHARS}"
        )));
    }
    let scope = match pb::SearchScope::try_from(request.scope) {
        Ok(pb::SearchScope::Unspecified | pb::SearchScope::Own) => Scope::Own,
        Ok(pb::SearchScope::Organisation) => Scope::Organisation,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "scope {} is not a SearchScope; use SEARCH_SCOPE_OWN or SEARCH_SCOPE_ORGANISATION",
                request.scope
            )));
        }
    };
    let page_size = match request.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n > 0 && (n as usize) <= MAX_PAGE_SIZE => n as usize,
        n => {
            return Err(Status::invalid_argument(format!(
                "page_size must be between 0 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE}), got {n}"
            )));
        }
    };
    let after = if request.page_token.is_empty() {
        None
    } else {
        let bytes = with_binding(ctx, scope, text, |binding| {
            sealer.open(binding, &request.page_token)
        })
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Some(Position::from_bytes(&bytes).ok_or_else(|| {
            Status::invalid_argument(tp_store::sealed::SealError::NotIssuedHere.to_string())
        })?)
    };
    Ok(Query {
        text: text.to_owned(),
        scope,
        page_size,
        after,
    })
}

/// The token for the page after `last`.
pub fn next_token(
    ctx: &RequestContext,
    sealer: &TokenSealer,
    query: &Query,
    last: Position,
) -> String {
    with_binding(ctx, query.scope, &query.text, |binding| {
        sealer.seal(binding, &last.to_bytes())
    })
}

/// A snippet with its marks turned into ranges (code points).
pub fn highlights(marked: &str) -> (String, Vec<pb::TextRange>) {
    let mut snippet = String::with_capacity(marked.len());
    let mut ranges = Vec::new();
    let (mut chars, mut open) = (0_i32, None);
    for c in marked.chars() {
        match c {
            MATCH_START => open = Some(chars),
            MATCH_END => {
                if let Some(start) = open.take().filter(|start| *start < chars) {
                    ranges.push(pb::TextRange { start, end: chars });
                }
            }
            _ => {
                snippet.push(c);
                chars += 1;
            }
        }
    }
    (snippet, ranges)
}

#[derive(Debug, sqlx::FromRow)]
pub struct HitRow {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub title: String,
    pub user_id: String,
    pub role: String,
    pub create_time: OffsetDateTime,
    pub rank: f32,
    pub seq: i64,
    pub snippet: String,
}

impl HitRow {
    pub fn position(&self) -> Position {
        Position {
            rank: self.rank,
            seq: self.seq,
        }
    }

    pub fn into_pb(self) -> pb::MessageSearchHit {
        let (snippet, highlights) = highlights(&self.snippet);
        let role = match self.role.as_str() {
            "user" => pb::MessageRole::User,
            "assistant" => pb::MessageRole::Assistant,
            _ => pb::MessageRole::Unspecified,
        };
        pb::MessageSearchHit {
            message_id: self.message_id.to_string(),
            conversation_id: self.conversation_id.to_string(),
            conversation_title: self.title,
            user_id: self.user_id,
            role: role.into(),
            snippet,
            highlights,
            create_time: Some(tp_proto::timestamp(self.create_time)),
        }
    }
}

/// Runs searches for the service.
#[derive(Clone)]
pub struct MessageSearch {
    pool: Pool,
    timer: TxTimer,
}

impl MessageSearch {
    pub fn new(pool: Pool, timer: TxTimer) -> Self {
        Self { pool, timer }
    }

    /// One page and one more row (to know whether another page exists).
    /// `Ok(None)`: the query has no searchable words.
    pub async fn search(
        &self,
        ctx: &RequestContext,
        query: &Query,
    ) -> Result<Option<Vec<HitRow>>, ConversationError> {
        let mut tx = self
            .timer
            .begin(&self.pool, ctx.tenant_id, OPERATION)
            .await?;
        // Only stop words ("the", "and"): nothing to match, and the client
        // should hear why rather than get an empty page.
        let lexemes: i32 =
            sqlx::query_scalar("SELECT numnode(websearch_to_tsquery('english', $1))")
                .bind(&query.text)
                .fetch_one(&mut *tx)
                .await?;
        if lexemes == 0 {
            tx.commit().await?;
            return Ok(None);
        }
        let owner = match query.scope {
            Scope::Own => Some(ctx.user_id.as_str()),
            Scope::Organisation => None,
        };
        // The page is chosen first and only its rows get a headline, which
        // reads the whole message.
        let rows = sqlx::query_as::<_, HitRow>(
            "WITH q AS MATERIALIZED (SELECT websearch_to_tsquery('english', $1) AS query),
             page AS (
               SELECT m.message_id, m.conversation_id, c.title, c.user_id, m.role,
                      m.create_time, m.seq, m.content, ts_rank_cd(m.search, q.query) AS rank
                 FROM q, conversation.messages m
                 JOIN conversation.conversations c
                   ON c.tenant_id = m.tenant_id AND c.conversation_id = m.conversation_id
                WHERE m.search @@ q.query
                  AND ($2::text IS NULL OR c.user_id = $2)
                  AND ($3::real IS NULL OR (ts_rank_cd(m.search, q.query), m.seq) < ($3, $4))
                ORDER BY rank DESC, m.seq DESC
                LIMIT $5)
             SELECT message_id, conversation_id, title, user_id, role, create_time, rank, seq,
                    ts_headline('english', content, (SELECT query FROM q),
                        'MaxFragments=1, MaxWords=30, MinWords=10, StartSel=\u{E000}, StopSel=\u{E001}')
                      AS snippet
               FROM page
              ORDER BY rank DESC, seq DESC",
        )
        .bind(&query.text)
        .bind(owner)
        .bind(query.after.map(|p| p.rank))
        .bind(query.after.map(|p| p.seq))
        .bind(i64::try_from(query.page_size + 1).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tp_context::{Role, TenantId};

    fn ctx(user: &str) -> RequestContext {
        RequestContext {
            tenant_id: TenantId::from(Uuid::from_u128(7)),
            user_id: user.into(),
            role: Role::Member,
        }
    }

    fn sealer() -> TokenSealer {
        TokenSealer::new(&[9; 32]).expect("a key")
    }

    fn request(query: &str, token: &str) -> pb::SearchMessagesRequest {
        pb::SearchMessagesRequest {
            query: query.into(),
            page_token: token.into(),
            ..Default::default()
        }
    }

    #[test]
    fn marks_become_ranges_in_code_points() {
        let (snippet, ranges) =
            highlights("Hiring é \u{E000}staff\u{E001} and \u{E000}engineers\u{E001}.");
        assert_eq!(snippet, "Hiring é staff and engineers.");
        assert_eq!(
            ranges,
            [
                pb::TextRange { start: 9, end: 14 },
                pb::TextRange { start: 19, end: 28 }
            ]
        );
        let chars: Vec<char> = snippet.chars().collect();
        assert_eq!(chars[9..14].iter().collect::<String>(), "staff");
        // Unbalanced or empty marks leave no range behind.
        assert_eq!(highlights("a\u{E001}b\u{E000}\u{E001}c\u{E000}").1, []);
    }

    #[test]
    fn requests_are_checked_with_actionable_messages() {
        let s = sealer();
        assert!(parse(&ctx("ann"), &s, &request("  ", "")).is_err());
        let long = "x".repeat(MAX_QUERY_CHARS + 1);
        let error = parse(&ctx("ann"), &s, &request(&long, "")).expect_err("too long");
        assert!(
            error.message().contains("limit is 200"),
            "{}",
            error.message()
        );
        let mut bad_size = request("hiring", "");
        bad_size.page_size = 51;
        assert!(parse(&ctx("ann"), &s, &bad_size).is_err());
        let mut bad_scope = request("hiring", "");
        bad_scope.scope = 9;
        assert!(parse(&ctx("ann"), &s, &bad_scope).is_err());
        let ok = parse(&ctx("ann"), &s, &request(" hiring ", "")).expect("valid");
        assert_eq!(
            (ok.text.as_str(), ok.scope, ok.page_size),
            ("hiring", Scope::Own, 20)
        );
    }

    #[test]
    fn a_page_token_serves_only_its_own_query_and_caller() {
        let s = sealer();
        let query = parse(&ctx("ann"), &s, &request("hiring", "")).expect("valid");
        let last = Position {
            rank: 0.25,
            seq: 42,
        };
        let token = next_token(&ctx("ann"), &s, &query, last);
        let next = parse(&ctx("ann"), &s, &request("hiring", &token)).expect("same query");
        assert_eq!(next.after, Some(last));
        for (who, text) in [("bob", "hiring"), ("ann", "firing")] {
            let error = parse(&ctx(who), &s, &request(text, &token)).expect_err(who);
            assert_eq!(error.code(), tonic::Code::InvalidArgument);
        }
        let mut organisation = request("hiring", &token);
        organisation.scope = pb::SearchScope::Organisation as i32;
        assert!(parse(&ctx("ann"), &s, &organisation).is_err());
    }
}
