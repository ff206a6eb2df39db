//! `tp chat` in a real terminal: tmux runs it in a pseudo-terminal, the
//! test types as a person would and reads what the screen shows.

use std::time::{Duration, Instant};

use tp_e2e::TestApp;
use tp_e2e::fake_provider::{self, FakeReply, Wire};
use tp_e2e::tp_proto::v1 as pb;

/// A tmux server of the test's own, one session running a command.
struct Terminal {
    socket: String,
}

impl Terminal {
    fn tmux(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let output = std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .map_err(|e| {
                anyhow::anyhow!("tmux is needed for this test ({e}); deploy/local/test installs it")
            })?;
        Ok(output)
    }

    fn start(name: &str, command: &str) -> anyhow::Result<Self> {
        let terminal = Self {
            socket: format!("tp-test-{name}-{}", std::process::id()),
        };
        // The command's exit status stays on screen after it ends.
        let shell = format!("{command}; echo TP-EXITED-$?; sleep 30");
        let started = terminal.tmux(&["new-session", "-d", "-x", "140", "-y", "50", &shell])?;
        anyhow::ensure!(started.status.success(), "tmux: {:?}", started);
        Ok(terminal)
    }

    fn keys(&self, keys: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        self.tmux(&args)?;
        Ok(())
    }

    /// Types a line of text literally, then Enter.
    fn line(&self, text: &str) -> anyhow::Result<()> {
        self.tmux(&["send-keys", "-l", text])?;
        self.keys(&["Enter"])
    }

    fn screen(&self) -> anyhow::Result<String> {
        Ok(
            String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-S", "-200"])?.stdout)
                .into_owned(),
        )
    }

    /// The screen once `check` holds for it, within `limit`.
    async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.screen()?;
            if check(&screen) {
                return Ok(screen);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "waited {limit:?} for {what}; the screen shows:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

const FIRST_REPLY: &str = "What would success look like in six months?";
const SECOND_REPLY: &str = "Who owns the platform roadmap today?";

/// `tp chat` against the test stack, as a member.
fn tp_chat(app: &TestApp, token: &str) -> String {
    format!(
        "env TP_GATEWAY_ADDR={} TP_TOKEN={token} {} chat",
        app.gateway_addr,
        env!("CARGO_BIN_EXE_tp")
    )
}

#[tokio::test]
async fn a_chat_streams_replies_spins_while_waiting_keeps_history_and_resumes() -> anyhow::Result<()>
{
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![
            FakeReply::Late(Duration::from_millis(1500), vec![FIRST_REPLY.into()]),
            FakeReply::Text(vec![SECOND_REPLY.into()], 10, 5),
        ],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let tp = tp_chat(&app, &token);
    let patience = Duration::from_secs(10);

    let terminal = Terminal::start("chat", &tp)?;
    terminal
        // (tmux drops the prompt's trailing space.)
        .wait_for("the prompt", patience, |s| {
            s.lines().any(|l| l.starts_with("you>"))
        })
        .await?;
    let question = "We are 40 engineers and the platform team is a bottleneck.";
    terminal.line(question)?;
    // The model takes 1.5 s to its first token: the spinner turns meanwhile.
    terminal
        .wait_for("the spinner", Duration::from_millis(1400), |s| {
            s.contains("thinking…")
        })
        .await?;
    let screen = terminal
        .wait_for("the reply", patience, |s| {
            s.contains(&format!("partner> {FIRST_REPLY}"))
        })
        .await?;
    assert!(
        !screen.contains("thinking…"),
        "the spinner is cleared:\n{screen}"
    );

    // Up brings the last line back to the prompt.
    terminal.keys(&["Up"])?;
    terminal
        .wait_for("the line from history", patience, |s| {
            s.matches(&format!("you> {question}")).count() == 2
        })
        .await?;
    terminal.keys(&["C-u"])?;
    let listed = app
        .conversations(&token)
        .await?
        .list_conversations(pb::ListConversationsRequest::default())
        .await?
        .into_inner()
        .conversations;
    let id = listed
        .first()
        .map(|c| c.conversation_id.clone())
        .ok_or_else(|| anyhow::anyhow!("the chat created a conversation"))?;
    terminal.line("/id")?;
    terminal
        .wait_for("the conversation id", patience, |s| {
            s.lines().any(|line| line.trim() == id)
        })
        .await?;
    terminal.line("/quit")?;
    terminal
        .wait_for("a clean exit", patience, |s| s.contains("TP-EXITED-0"))
        .await?;
    drop(terminal);

    // Resumed: the earlier turns first, then the conversation goes on.
    let terminal = Terminal::start("resume", &format!("{tp} --conversation {id}"))?;
    terminal
        .wait_for("the earlier turns", patience, |s| {
            s.contains(&format!("you> {question}"))
                && s.contains(&format!("partner> {FIRST_REPLY}"))
                && s.contains(&format!("Conversation {id}"))
        })
        .await?;
    terminal.line("Nobody, really.")?;
    terminal
        .wait_for("the second reply", patience, |s| {
            s.contains(&format!("partner> {SECOND_REPLY}"))
        })
        .await?;
    terminal.keys(&["C-d"])?;
    terminal
        .wait_for("Ctrl-D ends it", patience, |s| s.contains("TP-EXITED-0"))
        .await?;
    assert_eq!(app.count_rows("conversation.messages").await?, 4);
    Ok(())
}

#[tokio::test]
async fn a_chat_asks_again_and_edits_the_last_turn_without_overwriting() -> anyhow::Result<()> {
    // The offline coach: it says when it was asked again.
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let tp = tp_chat(&app, &token);
    let patience = Duration::from_secs(10);
    let terminal = Terminal::start("branches", &tp)?;
    terminal
        .wait_for("the prompt", patience, |s| {
            s.lines().any(|l| l.starts_with("you>"))
        })
        .await?;
    terminal.line("/again")?;
    terminal
        .wait_for("nothing to answer again yet", patience, |s| {
            s.contains("no turn yet to answer again")
        })
        .await?;
    terminal.line("We are 40 engineers and the platform team is a bottleneck.")?;
    terminal
        .wait_for("the reply", patience, |s| s.contains("partner> "))
        .await?;
    terminal.line("/again")?;
    terminal
        .wait_for("another reply", patience, |s| {
            s.contains("partner> You asked again")
        })
        .await?;
    terminal.line("/edit We are 12 engineers and the platform team is a bottleneck.")?;
    terminal
        .wait_for("the reply to the edit", patience, |s| {
            s.matches("partner> ").count() == 3
        })
        .await?;
    terminal.line("/quit")?;
    terminal
        .wait_for("a clean exit", patience, |s| s.contains("TP-EXITED-0"))
        .await?;

    // Nothing overwritten: the first turn, two replies to it, the edit and
    // its reply; the active branch is the edit's.
    assert_eq!(app.count_rows("conversation.messages").await?, 5);
    let mut client = app.conversations(&token).await?;
    let id = client
        .list_conversations(pb::ListConversationsRequest::default())
        .await?
        .into_inner()
        .conversations
        .first()
        .map(|c| c.conversation_id.clone())
        .ok_or_else(|| anyhow::anyhow!("the chat created a conversation"))?;
    let branch = client
        .list_messages(pb::ListMessagesRequest {
            conversation_id: id,
            ..Default::default()
        })
        .await?
        .into_inner()
        .messages;
    assert_eq!(branch.len(), 2);
    assert_eq!(
        branch[0].content,
        "We are 12 engineers and the platform team is a bottleneck."
    );
    assert_eq!(branch[0].sibling_message_ids.len(), 1, "the first version");
    Ok(())
}
