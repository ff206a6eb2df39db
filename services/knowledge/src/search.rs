//! Search and retrieval over the corpus (held in memory: it only changes
//! with a deploy) and the tenant's documents (in Postgres, under RLS).

use std::collections::HashMap;
use std::sync::Arc;

use tp_context::TenantId;
use tp_store::Pool;

use uuid::Uuid;

use crate::store::{EntryHit, EntryRow, KnowledgeError, KnowledgeStore, PassageHit, SearchText};

/// The built-in corpus as loaded at start-up.
pub struct Catalog {
    entries: Vec<EntryRow>,
    /// Looked up ~27 times a retrieval (callgrind: with SipHash, ~9k
    /// instructions a call); keyed by the corpus's own ids, so foldhash.
    by_id: HashMap<String, usize, foldhash::fast::RandomState>,
    common_lexemes: Vec<String>,
}

impl Catalog {
    pub async fn load(pool: &Pool) -> Result<Self, sqlx::Error> {
        let mut connection = pool.acquire().await?;
        let entries = crate::store::load_entries(&mut connection).await?;
        let by_id = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.entry_id.clone(), i))
            .collect();
        let common_lexemes = crate::store::common_lexemes(&mut connection).await?;
        connection.release();
        Ok(Self {
            entries,
            by_id,
            common_lexemes,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&EntryRow> {
        self.by_id.get(id).map(|&i| &self.entries[i])
    }

    /// Frameworks in title order.
    pub fn frameworks(&self) -> impl Iterator<Item = &EntryRow> {
        self.entries.iter().filter(|e| e.kind == "framework")
    }

    /// What an entry cites: its sources, or itself for a source.
    pub fn cited_sources<'a>(&'a self, entry: &'a EntryRow) -> Vec<&'a EntryRow> {
        if entry.kind == "source" {
            return vec![entry];
        }
        entry.sources.iter().filter_map(|id| self.get(id)).collect()
    }
}

/// A corpus entry found by a search.
pub struct EntryResult {
    pub entry_id: String,
    pub snippet: String,
    pub score: f32,
}

/// A passage of a tenant document found by a search.
pub struct PassageResult {
    pub document_id: Uuid,
    pub document_title: String,
    pub heading: String,
    pub snippet: String,
    pub score: f32,
}

/// A search hit of either kind.
pub enum Hit {
    Entry(EntryResult),
    Passage(PassageResult),
}

/// A ranked hit, before its snippet.
enum Ranked {
    Entry(EntryHit),
    Passage(PassageHit),
}

impl Ranked {
    fn score(&self) -> f32 {
        match self {
            Ranked::Entry(hit) => hit.score,
            Ranked::Passage(hit) => hit.score,
        }
    }
}

/// A framework chosen to ground a reply.
pub struct Retrieved<'a> {
    pub framework: &'a EntryRow,
    pub score: f32,
    /// The topic it came through, when it did not match directly.
    pub via_topic: Option<&'a EntryRow>,
}

#[derive(Clone)]
pub struct Searcher {
    store: KnowledgeStore,
    catalog: Arc<Catalog>,
}

impl Searcher {
    pub fn new(store: KnowledgeStore, catalog: Arc<Catalog>) -> Self {
        Self { store, catalog }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn store(&self) -> &KnowledgeStore {
        &self.store
    }

    /// Corpus entries of `kinds` and, when `documents`, the tenant's
    /// passages, merged best first.
    pub async fn search(
        &self,
        tenant: TenantId,
        query: &str,
        kinds: &[&str],
        documents: bool,
        limit: usize,
    ) -> Result<Vec<Hit>, KnowledgeError> {
        let text = SearchText::new(query);
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        let common = &self.catalog.common_lexemes;
        // The corpus needs no tenant transaction, so both rankings run at
        // once, on two connections: latency is the slower, not the sum
        // (measured: one statement doing both, then the headlines, was
        // 1.2 ms slower at p50).
        let entries = async {
            if kinds.is_empty() {
                return Ok(Vec::new());
            }
            self.store
                .rank_entries(&text, common, kinds, limit_sql)
                .await
        };
        let passages = async {
            if !documents {
                return Ok(Vec::new());
            }
            self.store
                .rank_passages(tenant, &text, common, limit_sql)
                .await
        };
        let (entries, passages) = tokio::try_join!(entries, passages)?;
        let mut ranked: Vec<Ranked> = entries
            .into_iter()
            .map(Ranked::Entry)
            .chain(passages.into_iter().map(Ranked::Passage))
            .collect();
        ranked.sort_by(|a, b| b.score().total_cmp(&a.score()));
        ranked.truncate(limit);

        // Headlines only for the results returned; entries are headlined
        // from their summary (a whole entry body costs ~15 ms for ten).
        let texts: Vec<&str> = ranked
            .iter()
            .map(|hit| match hit {
                Ranked::Entry(hit) => self
                    .catalog
                    .get(&hit.entry_id)
                    .map_or("", |entry| entry.summary.as_str()),
                Ranked::Passage(hit) => hit.text.as_str(),
            })
            .collect();
        let snippets = self.store.headlines(&text, common, &texts).await?;
        Ok(ranked
            .into_iter()
            .zip(snippets)
            .map(|(hit, snippet)| match hit {
                Ranked::Entry(hit) => Hit::Entry(EntryResult {
                    entry_id: hit.entry_id,
                    snippet,
                    score: hit.score,
                }),
                Ranked::Passage(hit) => Hit::Passage(PassageResult {
                    document_id: hit.document_id,
                    document_title: hit.document_title,
                    heading: hit.heading,
                    snippet,
                    score: hit.score,
                }),
            })
            .collect())
    }

    /// Frameworks for one user turn: direct framework matches, and the
    /// frameworks linked from matching topics, best first, without repeats.
    pub async fn retrieve_frameworks(
        &self,
        query: &str,
        max: usize,
    ) -> Result<Vec<Retrieved<'_>>, KnowledgeError> {
        let hits = self
            .store
            .rank_entries(
                &SearchText::new(query),
                &self.catalog.common_lexemes,
                &["framework", "topic"],
                8,
            )
            .await?;
        let mut chosen: Vec<Retrieved<'_>> = Vec::new();
        for hit in hits {
            let Some(entry) = self.catalog.get(&hit.entry_id) else {
                continue;
            };
            let candidates: Vec<(&EntryRow, Option<&EntryRow>)> = if entry.kind == "topic" {
                entry
                    .frameworks
                    .iter()
                    .filter_map(|id| self.catalog.get(id))
                    .map(|framework| (framework, Some(entry)))
                    .collect()
            } else {
                vec![(entry, None)]
            };
            for (framework, via_topic) in candidates {
                if chosen.len() < max
                    && !chosen
                        .iter()
                        .any(|c| c.framework.entry_id == framework.entry_id)
                {
                    chosen.push(Retrieved {
                        framework,
                        score: hit.score,
                        via_topic,
                    });
                }
            }
        }
        Ok(chosen)
    }

    pub async fn retrieve_passages(
        &self,
        tenant: TenantId,
        query: &str,
        max: usize,
    ) -> Result<Vec<PassageResult>, KnowledgeError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let hits = self.search(tenant, query, &[], true, max).await?;
        Ok(hits
            .into_iter()
            .filter_map(|hit| match hit {
                Hit::Passage(passage) => Some(passage),
                Hit::Entry(_) => None,
            })
            .collect())
    }
}
