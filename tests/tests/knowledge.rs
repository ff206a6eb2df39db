//! The knowledge API through the gateway: the built-in corpus, ranked
//! search with citations, and tenant documents that only their tenant sees.

use tonic::Code;
use tp_context::Role;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, TestDatabase};

fn markdown(title: &str, content: &str) -> pb::CreateDocumentRequest {
    pb::CreateDocumentRequest {
        title: title.to_owned(),
        content: content.as_bytes().to_vec(),
        content_type: pb::ContentType::Markdown.into(),
    }
}

const STRATEGY_DOC: &str = "# Our engineering strategy\n\nWe standardise on one deployment pipeline, Kestrel, for every service.\n\n## Reliability\n\nEvery tier-one service keeps an error budget and the quokka dashboard is retired.";

#[tokio::test]
async fn frameworks_are_listed_and_read_whole_with_citations() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut knowledge = app.knowledge(&token).await?;

    let list = knowledge
        .list_frameworks(pb::ListFrameworksRequest {})
        .await?
        .into_inner()
        .frameworks;
    let ids: Vec<&str> = list.iter().map(|f| f.framework_id.as_str()).collect();
    assert_eq!(list.len(), 7, "{ids:?}");
    for id in [
        "technical-coherence",
        "staff-archetypes",
        "trunk-and-branches",
        "engineer-manager-pendulum",
        "observability-driven-development",
        "engineering-strategy",
        "systems-dynamics",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    assert!(
        list.iter()
            .all(|f| f.body_markdown.is_empty() && !f.citations.is_empty())
    );

    let framework = knowledge
        .get_framework(pb::GetFrameworkRequest {
            framework_id: "staff-archetypes".into(),
        })
        .await?
        .into_inner()
        .framework
        .expect("a framework");
    assert_eq!(framework.author, "Will Larson");
    for section in [
        "## The model",
        "## Symptoms",
        "## Diagnostic questions",
        "## How to apply",
        "## Pitfalls and second-order effects",
        "## Example",
    ] {
        assert!(
            framework.body_markdown.contains(section),
            "{section} missing"
        );
    }
    assert!(
        framework
            .citations
            .iter()
            .all(|c| c.url.starts_with("https://"))
    );
    assert!(framework.diagnostic_question.ends_with('?'));

    let missing = knowledge
        .get_framework(pb::GetFrameworkRequest {
            framework_id: "topic-hiring".into(),
        })
        .await
        .expect_err("a topic is not a framework");
    assert_eq!(missing.code(), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn search_ranks_with_snippets_kinds_and_citations() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut knowledge = app.knowledge(&token).await?;

    let results = knowledge
        .search(pb::SearchRequest {
            query: "should I go back to being an IC after four years managing".into(),
            limit: 5,
            kinds: vec![],
        })
        .await?
        .into_inner()
        .results;
    assert!(!results.is_empty() && results.len() <= 5);
    let top = &results[0];
    assert_eq!(top.entry_id, "engineer-manager-pendulum");
    assert_eq!(top.kind, pb::EntryKind::Framework as i32);
    assert!(
        top.snippet.contains("**"),
        "matches are marked: {}",
        top.snippet
    );
    assert!(
        top.citations.iter().any(|c| c.url == "https://charity.wtf"),
        "{:?}",
        top.citations
    );
    assert!(
        results.windows(2).all(|w| w[0].score >= w[1].score),
        "best first"
    );

    let sources = knowledge
        .search(pb::SearchRequest {
            query: "observability book".into(),
            limit: 3,
            kinds: vec![pb::EntryKind::Source.into()],
        })
        .await?
        .into_inner()
        .results;
    assert!(!sources.is_empty());
    assert!(
        sources
            .iter()
            .all(|r| r.kind == pb::EntryKind::Source as i32)
    );

    // Bad input.
    for (query, limit, kinds, needle) in [
        ("", 0, vec![], "must not be empty"),
        ("   ", 0, vec![], "must not be empty"),
        (&*"q".repeat(1001), 0, vec![], "limit is 1000"),
        ("hiring", 51, vec![], "limit must be between"),
        ("hiring", 0, vec![99], "unknown kind"),
        ("hiring", 0, vec![0], "unknown kind"),
    ] {
        let status = knowledge
            .search(pb::SearchRequest {
                query: query.to_owned(),
                limit,
                kinds,
            })
            .await
            .expect_err("invalid search");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(needle), "{}", status.message());
    }
    Ok(())
}

#[tokio::test]
async fn tenant_documents_are_searchable_by_their_tenant_only() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (a, alice) = app.tenant_with_member("Tenant A", "alice").await?;
    let (_b, bob) = app.tenant_with_member("Tenant B", "bob").await?;
    let mut a_admin = app
        .knowledge(&app.token("alice-admin", Some(a), Role::Admin))
        .await?;

    let document = a_admin
        .create_document(markdown("Engineering strategy 2027", STRATEGY_DOC))
        .await?
        .into_inner()
        .document
        .expect("a document");
    assert_eq!(document.passage_count, 2);
    assert_eq!(document.created_by, "alice-admin");
    assert!(document.content.is_empty(), "create does not echo content");

    // Members of A find it; the heading labels the passage.
    let mut a_member = app.knowledge(&alice).await?;
    let found = a_member
        .search(pb::SearchRequest {
            query: "kestrel deployment pipeline".into(),
            limit: 5,
            kinds: vec![pb::EntryKind::Document.into()],
        })
        .await?
        .into_inner()
        .results;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].entry_id, document.document_id);
    assert_eq!(found[0].kind, pb::EntryKind::Document as i32);
    assert!(
        found[0].snippet.contains("**Kestrel**"),
        "{}",
        found[0].snippet
    );
    let by_heading = a_member
        .search(pb::SearchRequest {
            query: "quokka".into(),
            limit: 5,
            kinds: vec![],
        })
        .await?
        .into_inner()
        .results;
    assert_eq!(
        by_heading[0].title,
        "Engineering strategy 2027 — Reliability"
    );

    // Tenant B sees nothing of it.
    let mut b_member = app.knowledge(&bob).await?;
    let none = b_member
        .search(pb::SearchRequest {
            query: "kestrel quokka".into(),
            limit: 10,
            kinds: vec![],
        })
        .await?
        .into_inner()
        .results;
    assert!(
        none.iter()
            .all(|r| r.kind != pb::EntryKind::Document as i32),
        "{none:?}"
    );
    let foreign = b_member
        .get_document(pb::GetDocumentRequest {
            document_id: document.document_id.clone(),
        })
        .await
        .expect_err("B cannot read A's document");
    assert_eq!(foreign.code(), Code::NotFound);
    assert!(
        b_member
            .list_documents(pb::ListDocumentsRequest::default())
            .await?
            .into_inner()
            .documents
            .is_empty()
    );

    // A reads it whole, and lists it.
    let read = a_member
        .get_document(pb::GetDocumentRequest {
            document_id: document.document_id.clone(),
        })
        .await?
        .into_inner()
        .document
        .expect("a document");
    assert_eq!(read.content, STRATEGY_DOC);
    let listed = a_member
        .list_documents(pb::ListDocumentsRequest::default())
        .await?
        .into_inner();
    assert_eq!(listed.documents.len(), 1);

    // Members do not write; B's admin cannot delete A's document.
    let denied = a_member
        .create_document(markdown("Mine", "text"))
        .await
        .expect_err("members cannot add documents");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let mut b_admin = app
        .knowledge(&app.token("bob-admin", Some(_b), Role::Admin))
        .await?;
    let cross = b_admin
        .delete_document(pb::DeleteDocumentRequest {
            document_id: document.document_id.clone(),
        })
        .await
        .expect_err("B cannot delete A's document");
    assert_eq!(cross.code(), Code::NotFound);

    // Deleting removes the passages with it.
    assert_eq!(app.count_rows("knowledge.passages").await?, 2);
    a_admin
        .delete_document(pb::DeleteDocumentRequest {
            document_id: document.document_id,
        })
        .await?;
    assert_eq!(app.count_rows("knowledge.documents").await?, 0);
    assert_eq!(app.count_rows("knowledge.passages").await?, 0);
    Ok(())
}

#[tokio::test]
async fn bad_documents_are_refused_whole() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let tenant = app.create_tenant("Acme", 2, "root").await?;
    let mut admin = app
        .knowledge(&app.token("root", Some(tenant), Role::Admin))
        .await?;

    let mut invalid_utf8 = markdown("Bad bytes", "");
    invalid_utf8.content = b"# Title\n\nfine text then \xff\xfe broken".to_vec();
    let mut untyped = markdown("Untyped", "text");
    untyped.content_type = 0;
    let oversized = markdown("Huge", &"a".repeat(1024 * 1024 + 1));
    let cases = [
        (invalid_utf8, "not valid UTF-8"),
        (untyped, "content_type"),
        (oversized, "1 MiB"),
        (markdown("", "text"), "title"),
        (markdown("Blank", "\n \n"), "must not be empty"),
    ];
    for (request, needle) in cases {
        let status = admin
            .create_document(request)
            .await
            .expect_err("invalid document");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(needle), "{}", status.message());
    }
    let bad_id = admin
        .get_document(pb::GetDocumentRequest {
            document_id: "nope".into(),
        })
        .await
        .expect_err("not a uuid");
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    assert_eq!(app.count_rows("knowledge.documents").await?, 0);
    assert_eq!(app.count_rows("knowledge.passages").await?, 0);

    // The largest allowed document is accepted and split.
    let big = format!("# Big\n\n{}", "word ".repeat(200_000));
    assert!(big.len() <= 1024 * 1024);
    let document = admin
        .create_document(markdown("Big", &big))
        .await?
        .into_inner()
        .document
        .expect("doc");
    assert!(document.passage_count > 600, "{}", document.passage_count);
    Ok(())
}

#[tokio::test]
async fn the_corpus_is_loaded_idempotently_and_read_only_for_services() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    db.migrate().await?;
    let admin = TestDatabase::pool(&db.admin_url).await?;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM knowledge.entries")
            .fetch_one(&admin)
            .await
    };
    let before = count().await?;
    assert!(before >= 30, "frameworks, topics and sources: {before}");
    // A second migrate changes nothing, and repairs a tampered entry.
    sqlx::query(
        "UPDATE knowledge.entries SET title = 'tampered' WHERE entry_id = 'staff-archetypes'",
    )
    .execute(&admin)
    .await?;
    tp_knowledge::migrate(&db.owner_url).await?;
    assert_eq!(count().await?, before);
    let title: String = sqlx::query_scalar(
        "SELECT title FROM knowledge.entries WHERE entry_id = 'staff-archetypes'",
    )
    .fetch_one(&admin)
    .await?;
    assert_eq!(title, "Staff Archetypes");

    // The application role reads the corpus but cannot change it.
    let app_pool = TestDatabase::pool(&db.app_url).await?;
    let write = sqlx::query("UPDATE knowledge.entries SET title = 'x'")
        .execute(&app_pool)
        .await
        .expect_err("tp_app cannot write the corpus");
    assert!(write.to_string().contains("permission denied"), "{write}");
    let readable: i64 = sqlx::query_scalar("SELECT count(*) FROM knowledge.entries")
        .fetch_one(&app_pool)
        .await?;
    assert_eq!(readable, before);
    Ok(())
}
