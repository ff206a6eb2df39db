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

    let found = tp(&app, &token, &["conversations", "search", "director"]).await?;
    let found = stdout(&found);
    assert!(
        found.contains(&id) && found.contains("[director]"),
        "{found}"
    );

    // After an edit, show follows the new branch and names the old turn;
    // --branch shows the old one.
    let old_turn = exchange.user().message_id.clone();
    tp_e2e::edit(&mut client, &old_turn, "We are 12 engineers now.", "").await?;
    let shown = stdout(&tp(&app, &token, &["conversations", "show", &id]).await?);
    assert!(
        shown.contains(&format!("[you] (other versions: {old_turn})"))
            && shown.contains("We are 12 engineers now."),
        "{shown}"
    );
    assert!(!shown.contains("split the platform team"));
    let old = tp(
        &app,
        &token,
        &["conversations", "show", &id, "--branch", &old_turn],
    )
    .await?;
    assert!(stdout(&old).contains("split the platform team"), "{old:?}");
    let json = tp(
        &app,
        &token,
        &["--output", "json", "conversations", "show", &id],
    )
    .await?;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    assert_eq!(json["messages"][0]["other_versions"][0], old_turn.as_str());

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

/// Runs `tp` with `args` and a chosen environment (no token from it).
async fn tp_env(app: &TestApp, env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tp"));
    command
        .args(args)
        .env("TP_GATEWAY_ADDR", app.gateway_addr.to_string())
        .env_remove("TP_TOKEN")
        .env_remove("TP_ADMIN_TOKEN")
        .env_remove("TP_OPERATOR_TOKEN");
    for (key, value) in env {
        command.env(key, value);
    }
    Ok(command.output().await?)
}

#[tokio::test]
async fn admins_manage_members_seats_and_read_usage_and_audit() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, member) = app.tenant_with_member("Acme", "alice").await?;
    let admin = app.token("alice-admin", Some(tenant), tp_context::Role::Admin);
    let as_admin = [("TP_ADMIN_TOKEN", admin.as_str())];

    let added = tp_env(&app, &as_admin, &["members", "add", "bob"]).await?;
    assert!(stdout(&added).contains("bob is a member."), "{added:?}");
    let promoted = tp_env(&app, &as_admin, &["members", "role", "bob", "admin"]).await?;
    assert!(stdout(&promoted).contains("bob is an admin."));
    let listed = tp_env(&app, &as_admin, &["--output", "json", "members", "list"]).await?;
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    let roles: Vec<(String, String)> = json
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["user_id"].as_str().unwrap_or_default().to_owned(),
                m["role"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(roles.contains(&("bob".into(), "admin".into())), "{roles:?}");
    assert!(
        roles.contains(&("alice".into(), "member".into())),
        "{roles:?}"
    );
    let removed = tp_env(&app, &as_admin, &["members", "remove", "bob"]).await?;
    assert!(stdout(&removed).contains("Removed bob"));

    let seats = tp_env(&app, &as_admin, &["seats", "set", "7"]).await?;
    assert!(stdout(&seats).contains("of 7 seats held"), "{seats:?}");
    let seats = tp_env(&app, &as_admin, &["--output", "json", "seats", "show"]).await?;
    let json: serde_json::Value = serde_json::from_slice(&seats.stdout)?;
    assert_eq!(json["seats"], 7);

    // One message by alice shows in the usage.
    let mut client = app.conversations(&member).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    send(&mut client, &id, "We are 12 engineers.", "").await?;
    let usage = tp_env(&app, &as_admin, &["--output", "json", "usage"]).await?;
    let json: serde_json::Value = serde_json::from_slice(&usage.stdout)?;
    let alice = json["members"]
        .as_array()
        .and_then(|all| all.iter().find(|m| m["user_id"] == "alice"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(alice["messages"], 1, "{json}");

    // Settings, and the organisation's export of alice's conversation.
    let set = tp_env(
        &app,
        &as_admin,
        &["settings", "set", "--retention-days", "30"],
    )
    .await?;
    assert!(stdout(&set).contains("kept for 30 days"), "{set:?}");
    let bad = tp_env(
        &app,
        &as_admin,
        &["settings", "set", "--retention-days", "2"],
    )
    .await?;
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("between 7 and 3650"));
    let shown = tp_env(&app, &as_admin, &["--output", "json", "settings", "show"]).await?;
    let json: serde_json::Value = serde_json::from_slice(&shown.stdout)?;
    assert_eq!(json["retention_days"], 30);
    let exported = tp_env(&app, &as_admin, &["export"]).await?;
    assert!(exported.status.success(), "{exported:?}");
    let lines: Vec<serde_json::Value> = stdout(&exported)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines[0]["type"], "conversation");
    assert_eq!(lines[0]["conversation_id"], id.as_str());
    assert_eq!(lines.len(), 3, "the conversation and its two turns");

    let audit = tp_env(&app, &as_admin, &["audit"]).await?;
    let audit = stdout(&audit);
    assert!(
        audit.contains("bob") && audit.contains("alice-admin"),
        "{audit}"
    );

    // A member is refused an admin's command, in a sentence.
    let refused = tp_env(
        &app,
        &[("TP_ADMIN_TOKEN", member.as_str())],
        &["members", "list"],
    )
    .await?;
    assert_eq!(refused.status.code(), Some(1));
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.starts_with("tp: You are not allowed to do that:")
            && error.contains("(PermissionDenied)"),
        "{error}"
    );
    Ok(())
}

#[tokio::test]
async fn operators_open_tenants_and_read_slo_status_with_budget_bars() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let operator = app.token("ops", None, tp_context::Role::Operator);
    let as_operator = [("TP_OPERATOR_TOKEN", operator.as_str())];
    let opened = tp_env(
        &app,
        &as_operator,
        &[
            "--output", "json", "tenants", "create", "Globex", "--seats", "3", "--admin", "gina",
        ],
    )
    .await?;
    let json: serde_json::Value = serde_json::from_slice(&opened.stdout)?;
    assert_eq!(json["display_name"], "Globex", "{opened:?}");
    assert!(json["tenant_id"].as_str().is_some_and(|id| id.len() == 36));

    let status = tp_env(&app, &as_operator, &["slo", "status"]).await?;
    assert!(status.status.success(), "{status:?}");
    let table = stdout(&status);
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.starts_with("SLO") && h.contains("budget left"))
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("send-message-availability") && l.contains("[############]")),
        "every SLO a row, a full budget a full bar:\n{table}"
    );
    let status = tp_env(&app, &as_operator, &["--output", "json", "slo", "status"]).await?;
    let json: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert!(json.as_array().is_some_and(|slos| slos.len() > 10));
    Ok(())
}

#[tokio::test]
async fn login_keeps_a_checked_token_for_later_commands_and_dev_token_mints_one()
-> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, _member) = app.tenant_with_member("Acme", "alice").await?;
    let config = std::env::temp_dir().join(format!("tp-login-{}", uuid::Uuid::new_v4()));
    let config_dir = config.to_string_lossy().into_owned();
    let tenant_id = tenant.to_string();
    let minted = tp_env(
        &app,
        &[("TP_JWT_HS256_SECRET", tp_e2e::JWT_SECRET)],
        &[
            "dev", "token", "--user", "alice", "--role", "member", "--tenant", &tenant_id,
        ],
    )
    .await?;
    let token = stdout(&minted).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {minted:?}");

    // Without a token anywhere: a sentence saying what to do.
    let none = tp_env(&app, &[("XDG_CONFIG_HOME", &config_dir)], &["frameworks"]).await?;
    assert!(String::from_utf8_lossy(&none.stderr).contains("run `tp login`"));
    // A token the gateway refuses is not kept.
    let bad = tp_env(
        &app,
        &[("XDG_CONFIG_HOME", &config_dir)],
        &["login", "--token", "garbage"],
    )
    .await?;
    assert_eq!(bad.status.code(), Some(1));
    assert!(!config.join("tp/login.json").exists());
    let login = tp_env(
        &app,
        &[("XDG_CONFIG_HOME", &config_dir)],
        &["login", "--token", &token],
    )
    .await?;
    assert!(stdout(&login).contains("Logged in"), "{login:?}");
    let kept = config.join("tp/login.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kept)?.permissions().mode() & 0o777,
        0o600
    );
    // Later commands need neither the token nor the gateway's address.
    let later = tokio::process::Command::new(env!("CARGO_BIN_EXE_tp"))
        .args(["frameworks"])
        .env("XDG_CONFIG_HOME", &config_dir)
        .env_remove("TP_GATEWAY_ADDR")
        .env_remove("TP_TOKEN")
        .output()
        .await?;
    assert!(stdout(&later).contains("staff-archetypes"), "{later:?}");
    std::fs::remove_dir_all(&config)?;
    Ok(())
}
