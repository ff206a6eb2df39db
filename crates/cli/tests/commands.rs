//! The `tp` binary against the real stack: each command's text for people,
//! its `--output json` for scripts, and errors as sentences with the code.

use std::process::Output;

use tp_e2e::{TestApp, new_conversation, send};

/// Runs `tp` with `args` against the app's gateway as the holder of `token`.
async fn tp(app: &TestApp, token: &str, args: &[&str]) -> anyhow::Result<Output> {
    Ok(tokio::process::Command::new(env!("CARGO_BIN_EXE_tp"))
        .args(args)
        .env("TP_GATEWAY_ADDR", app.gateway_addr.to_string())
        .env("TP_TOKEN", token)
        .output()
        .await?)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn conversations_are_listed_shown_exported_and_deleted() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "Platform team split")
        .await?
        .conversation_id;
    let exchange = send(
        &mut client,
        &id,
        "I'm a director of 40 engineers; should I split the platform team?",
        "",
    )
    .await?;
    let reply = exchange.assistant().content.clone();

    let list = tp(&app, &token, &["conversations", "list"]).await?;
    assert!(list.status.success(), "{list:?}");
    assert!(stdout(&list).contains(&id) && stdout(&list).contains("Platform team split"));
    let list = tp(&app, &token, &["--output", "json", "conversations", "list"]).await?;
    let json: serde_json::Value = serde_json::from_slice(&list.stdout)?;
    assert_eq!(json[0]["conversation_id"], id.as_str());
    assert_eq!(json[0]["title"], "Platform team split");

    let show = tp(&app, &token, &["conversations", "show", &id]).await?;
    let text = stdout(&show);
    assert!(text.contains("[you]") && text.contains("split the platform team"));
    assert!(text.contains("[thought partner]") && text.contains(reply.trim()));

    let markdown = tp(&app, &token, &["conversations", "export", &id]).await?;
    let markdown = stdout(&markdown);
    assert!(
        markdown.starts_with("# Platform team split\n"),
        "{markdown}"
    );
    assert!(markdown.contains("\n## You\n\nI'm a director of 40 engineers"));
    assert!(markdown.contains("\n## Thought partner\n\n"));
    let exported = tp(
        &app,
        &token,
        &["conversations", "export", &id, "--format", "json"],
    )
    .await?;
    let json: serde_json::Value = serde_json::from_slice(&exported.stdout)?;
    assert_eq!(json["conversation"]["conversation_id"], id.as_str());
    assert_eq!(json["messages"][0]["role"], "user");
    assert_eq!(json["messages"][1]["role"], "assistant");
    assert_eq!(json["messages"][1]["content"], reply.as_str());

    let deleted = tp(&app, &token, &["conversations", "delete", &id]).await?;
    assert!(deleted.status.success());
    assert!(stdout(&deleted).contains(&format!("Deleted conversation {id}")));
    // Gone: the error is a sentence with the code, on stderr, exit 1.
    let gone = tp(&app, &token, &["conversations", "show", &id]).await?;
    assert_eq!(gone.status.code(), Some(1));
    let error = String::from_utf8_lossy(&gone.stderr);
    assert!(
        error.starts_with("tp: Not found: conversation") && error.contains("(NotFound)"),
        "{error}"
    );
    assert!(gone.stdout.is_empty());
    Ok(())
}

#[tokio::test]
async fn search_and_frameworks_for_people_and_scripts() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;

    let frameworks = tp(&app, &token, &["frameworks"]).await?;
    assert!(frameworks.status.success());
    assert!(stdout(&frameworks).contains("staff-archetypes"));
    let frameworks = tp(&app, &token, &["--output", "json", "frameworks"]).await?;
    let json: serde_json::Value = serde_json::from_slice(&frameworks.stdout)?;
    assert!(
        json.as_array()
            .is_some_and(|all| all.iter().any(|f| f["framework_id"] == "staff-archetypes"))
    );

    let found = tp(
        &app,
        &token,
        &["--output", "json", "search", "staff engineer archetypes"],
    )
    .await?;
    let json: serde_json::Value = serde_json::from_slice(&found.stdout)?;
    assert_eq!(json[0]["entry_id"], "staff-archetypes", "{json}");
    let found = tp(&app, &token, &["search", "staff engineer archetypes"]).await?;
    assert!(stdout(&found).contains("(staff-archetypes)"));

    // A broken token reads as a sentence, not a stack of errors.
    let refused = tp(&app, "not-a-token", &["frameworks"]).await?;
    assert_eq!(refused.status.code(), Some(1));
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.starts_with("tp: The gateway did not accept your token:")
            && error.contains("(Unauthenticated)"),
        "{error}"
    );
    Ok(())
}
